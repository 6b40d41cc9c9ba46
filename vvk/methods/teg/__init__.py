"""TeG: temporal granularity (Qian et al., "Exploring Temporal Granularity in Self-Supervised
Video Representation Learning", arXiv 2112.04480).

No code was published (reference/video_ssl.md §6); only the abstract is public. This follows
its description and the reference's suggested design, on the CVRL recipe the authors share::

    long clip ──augment──► backbone ─res5─┬─ GAP ─► global MLP ─► g_long ──┐ persistent loss
    short clip (inside) ─► backbone ─res5─┼─ GAP ─► global MLP ─► g_short ─┘ (CVRL's loss)
                                          └─ spatial mean ─► per-step MLP ─► dense (B, T', D)
    (clips of the same length go through the backbone as one batch of 2B, as CVRL's views do)

    fine-grained loss: short step k  ⟷  long embedding at the same absolute time
    total = persistent + fine_weight · fine-grained

Time alignment: ``LongShortClips`` gives ``index_map[j]``, the position of short frame j on the
long clip's frame axis. The backbone subsamples time by ``s`` (res5 ``temporal_stride``) with
centred ("same") kernels, so feature step i stands for input frame ``s·i``: short step k sits at
long step ``index_map[s·k] / s``, generally fractional, and its positive is the long clip's
dense embedding linearly interpolated there.
"""

from vvk.methods.teg.preset import PRESETS, TegPreset, build, dataset_options, sampler

__all__ = ["PRESETS", "TegPreset", "build", "dataset_options", "sampler"]
