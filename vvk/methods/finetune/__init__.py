"""Supervised video classification: the 3D ResNet-RS recipe from scratch, or fine-tuning a
pretrained backbone (ConST-CL, CVRL, TeG, VATT), with multi-view testing::

    clips ─ random resized crop, flip ─ backbone ─ pooled feature ─ dropout ─ Linear ─ smoothed CE
    test: T clips x S crops ─ softmax ─ mean over views ─ top-1 / top-5 per view scheme (1x1, TxS)

``preset`` holds the recipes with their sources, ``model`` the classifier and its training
step, ``train`` the run (plan, train on the one loop, export, test), ``evaluate`` the test.
"""

from vvk.methods.finetune.evaluate import EvalProtocol, evaluate
from vvk.methods.finetune.model import VideoClassifier, load_classifier
from vvk.methods.finetune.preset import PRESETS, FinetunePreset
from vvk.methods.finetune.train import FinetunePlan, FinetuneResult, finetune, plan_finetune, run_finetune

__all__ = [
    "PRESETS", "EvalProtocol", "FinetunePlan", "FinetunePreset", "FinetuneResult", "VideoClassifier",
    "evaluate", "finetune", "load_classifier", "plan_finetune", "run_finetune",
]  # fmt: skip
