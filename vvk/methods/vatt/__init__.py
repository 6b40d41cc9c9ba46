"""VATT: video-audio-text transformers (Akbari et al., NeurIPS 2021), as implemented in
``google-research/google-research: vatt/`` (reference/video_ssl.md §7).

::

    clip (T x H x W) ──augment──► video ViT ─AGG─┐
    its audio (3.2 s raw wave) ─► audio WaT ─AGG─┼─► FAC head ─► z_va, z_vt | z_av | z_tv
    L captions overlapping it ──► text T5  ──AGG─┘
    (or one modality-agnostic transformer for all three: ``shared_backbone``)

    loss = (w_va · NCE(z_va, z_av) + w_vt · MIL-NCE(z_vt, z_tv)) / (w_va + w_vt)

DropToken keeps half the video and audio tokens in training. Clips without audio or captions
are masked out of the corresponding loss (``loss.asymmetric_nce``). The exported
backbone is the video transformer (or the shared one).

Captions come from an ActivityNet-style table or from ``.srt``/``.vtt`` subtitle files next to
the videos (preset field ``captions``: the table, or the folder; ``vvk.data.subtitles``), and
are tokenised with open_clip's BPE (``vvk.models.backbones.vatt_text.tokenize``).
"""

from vvk.methods.vatt.preset import PRESETS, VattPreset, build, dataset_options, sampler

__all__ = ["PRESETS", "VattPreset", "build", "dataset_options", "sampler"]
