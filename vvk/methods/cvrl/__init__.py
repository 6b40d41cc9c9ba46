"""CVRL: contrastive video representation learning (Qian et al., CVPR 2021), the baseline of
ConST-CL and of the 3D ResNet-RS backbones (``tensorflow/models: official/projects/video_ssl``;
reference/video_ssl.md §4)::

    video ──TwoViews──► clip a, clip b (gap from a linearly decreasing density)
    clip a ─ view augment 1 ─┐                                          ┌─ z_a ─┐
    clip b ─ view augment 2 ─┴─ backbone (2B clips, one batch) ─ GAP(res5) ─ MLP ─┴─ z_b ─┴─ NT-Xent, τ = 0.1

Both views go through the backbone as one batch of 2B clips, so batch-norm statistics mix the
views as in the reference (which concatenates them along the batch axis). Works with any 3D
backbone that returns ``res5``: ``r3d-50`` (the reference), ``r3d-rs-*``, ``r3d-tiny``.
"""

from vvk.methods.cvrl.preset import PRESETS, CvrlPreset, build, dataset_options, sampler

__all__ = ["PRESETS", "CvrlPreset", "build", "dataset_options", "sampler"]
