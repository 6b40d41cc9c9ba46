"""ConST-CL: contextualized spatio-temporal contrastive learning (Yuan et al., CVPR 2022), as
implemented in ``tensorflow/models: official/projects/const_cl`` (reference/video_ssl.md §5)::

    clip a, clip b ─ CVRL views ─ R3D-50-Y (2B clips) ─┬─ res5 ─ GAP ─ MLP ─ NT-Xent (τ 0.1): global
                                                       └─ res5_1 ─ reconstructor ─ InfoNCE (τ 0.2): local
    total = global + 0.001 · local   (the reference's L2 of 1e-6 is ``train.weight_decay``)

The global branch is CVRL's (``vvk.methods.cvrl``). The local branch (``local``) pools
N region instances per view (random boxes, or detected people from a file: ``boxes``)
on the key frame of ``res5_1`` (or as tubes over the context frames), translates each view's
instances into the other view's context with a shared transformer decoder, and contrasts them
with the other view's instances (positive: the feature argmax; negatives: other videos only).

Where the reference is ambiguous (the learning rate, the random boxes' seed, sync batch
norm), the choices and their evidence are in ``docs/notes/constcl.md``.
"""

from vvk.methods.constcl.preset import PRESETS, ConstclPreset, build, dataset_options, sampler

__all__ = ["PRESETS", "ConstclPreset", "build", "dataset_options", "sampler"]
