"""ConST-CL's training module: CVRL's global branch plus the local instance branch."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vvk.data.video_transforms import VideoAugment
from vvk.methods.constcl.boxes import FileBoxes, RandomBoxes
from vvk.methods.constcl.local import InstanceReconstructor
from vvk.methods.constcl.loss import instance_loss
from vvk.methods.cvrl.loss import contrastive_accuracy, global_loss
from vvk.methods.cvrl.model import CvrlModel
from vvk.models.heads.projection import ProjectionMLP

GLOBAL_FEATURE, LOCAL_FEATURE = "res5", "res5_1"


class ConstclModel(CvrlModel):
    """The training module: ``forward(batch)`` -> {"loss", "global", "local", "accuracy"}, with
    ``loss = global + local_weight · local`` (the two parts logged unweighted).

    Args:
        backbone: a Y-shaped 3D ResNet (``res5`` and ``res5_1``).
        head: the global MLP; reconstructor: the local head.
        boxes: where the region instances come from (``RandomBoxes`` or ``FileBoxes``).
        augment_a, augment_b, temperature: the global branch, as in ``CvrlModel``.
        local_temperature, local_weight: the local loss's τ and weight.
    """

    def __init__(
        self,
        *,
        backbone,
        head: ProjectionMLP,
        reconstructor: InstanceReconstructor,
        boxes: RandomBoxes | FileBoxes,
        augment_a: VideoAugment,
        augment_b: VideoAugment,
        temperature: float,
        local_temperature: float,
        local_weight: float,
    ):
        super().__init__(backbone=backbone, head=head, augment_a=augment_a, augment_b=augment_b,
                         temperature=temperature)  # fmt: skip
        self.reconstructor = reconstructor
        self.boxes = boxes
        self.local_temperature, self.local_weight = local_temperature, local_weight
        self.time_stride = self.backbone.output_shape()[LOCAL_FEATURE].temporal_stride

    def outputs(self, views: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """Backbone and both heads on 2B views (view a first) with their boxes (2B, N, S, 4):
        the backbone's maps, ``embedding`` (2B, embed_dim) and the reconstructor's outputs."""
        features = self.backbone(views)
        local = self.reconstructor(features[LOCAL_FEATURE], boxes)
        return {**features, **local, "embedding": self.embed(features)}

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        views = self.views(batch)
        steps = self.reconstructor.pooled_steps(-(-views.shape[2] // self.time_stride))
        # Feature step k stands for input frame stride · k (centred temporal kernels).
        boxes = self.boxes(batch, (self.augment_a, self.augment_b), [self.time_stride * k for k in steps])
        out = self.outputs(views, boxes)
        z_a, z_b = out["embedding"].chunk(2)
        global_part = global_loss(z_a, z_b, self.temperature)
        local_part = instance_loss(out["regions"], out["translated"], self.local_temperature)
        return {
            "loss": global_part + self.local_weight * local_part,
            "global": global_part,
            "local": local_part,
            "accuracy": contrastive_accuracy(z_a, z_b),
        }
