"""The one training loop (``train``), its configuration, and what it leaves in a run folder.

    from vvk.engine import TrainConfig, train

See ``vvk.engine.loop`` for the contract a method fulfils (a model, a batch -> dict-of-losses
step, a dataset, a preset ``TrainConfig``).
"""

from vvk.engine.config import TrainConfig
from vvk.engine.hooks import Every
from vvk.engine.loop import NonFiniteLoss, TrainResult, autocast, train
from vvk.engine.state import RunDir

__all__ = ["Every", "NonFiniteLoss", "RunDir", "TrainConfig", "TrainResult", "autocast", "train"]
