"""VATT: video-audio-text transformers (Akbari et al., NeurIPS 2021), as implemented in
``google-research/google-research: vatt/`` (reference/video_ssl.md §7).

::

    clip (T x H x W) ──augment──► video ViT ─AGG─┐
    its audio (3.2 s raw wave) ─► audio WaT ─AGG─┼─► FAC head ─► z_va, z_vt | z_av | z_tv
    L captions overlapping it ──► text T5  ──AGG─┘
    (or one modality-agnostic transformer for all three: ``shared_backbone``)

    loss = (w_va · NCE(z_va, z_av) + w_vt · MIL-NCE(z_vt, z_tv)) / (w_va + w_vt)

DropToken keeps half the video and audio tokens in training. Clips without audio or captions
are masked out of the corresponding loss (``vatt_heads.asymmetric_nce``). The exported
backbone is the video transformer (or the shared one).

Captions come from an ActivityNet-style table or from ``.srt``/``.vtt`` subtitle files next to
the videos (preset field ``captions``: the table, or the folder; ``vvk.data.subtitles``), and
are tokenised with open_clip's BPE (``vvk.models.backbones.vatt_text.tokenize``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vvk.data.augment import VideoAugment
from vvk.data.samplers import AudioVisualClip
from vvk.data.subtitles import read_caption_source
from vvk.engine import TrainConfig
from vvk.errors import VvkError
from vvk.methods.base import PretrainModel, laptop_train
from vvk.methods.vatt_heads import FACHead, asymmetric_nce
from vvk.models import build as build_model
from vvk.models.backbones.vatt_text import tokenize

NAME = "vatt"
_UT_PREFIX, _VIDEO_PREFIX = "vatt-ut-", "vatt-video-"


@dataclass(frozen=True)
class VattPreset:
    """VATT hyperparameters; the defaults are the ``paper`` preset, each with its source in
    ``google-research/google-research: vatt/configs/`` (reference/video_ssl.md §7)."""

    # multimodal.py::TxBackboneConfig: vit_medium, wat_base, t5_small.
    backbone: str = "vatt-video-medium"  # the exported video transformer
    audio_backbone: str = "vatt-audio-base"
    text_backbone: str = "vatt-text-small"
    # unified.py / UnifiedTxFACModel: one vatt-ut-<size> for all modalities, the size taken
    # from `backbone` (vatt-video-medium -> vatt-ut-medium); `--shared-backbone` sets it.
    shared_backbone: bool = False
    # dataset.py::Pretrain: 32 frames at a reference 10 fps (3.2 s), stride 1, 224² crops.
    frames: int = 32
    stride: int = 1
    fps: float = 10.0
    size: int = 224  # decoded short side: the reference's min_resize = 224 ("VGG" crop style)
    crop: int = 224
    video_patch: tuple[int, int, int] = (4, 16, 16)  # video.py::ViTBase: 4 x 16 x 16 voxels
    # Raw waveform at 48 kHz (dataloaders.py REF_SR), 128-sample patches (audio.py::WaTBase);
    # the clip's 153,600 samples are 1200 tokens.
    audio_rate: int = 48000
    audio_patch: int = 128
    audio_noise: float = 0.01  # dataset.py::Pretrain.audio_noise: std 0.01 · max|x|
    drop_token_rate: float = 0.5  # video.py / audio.py: patch_sampling_rate
    # Text: 16 words per sentence, the clip's sentence plus max_context_sentences = 4.
    captions: str | None = None  # a caption table (.tsv/.csv) or a folder of .srt/.vtt files
    captions_per_clip: int = 5
    words_per_caption: int = 16
    # head.py::FACBridge: video-audio space 512, video-audio-text space 256.
    va_dim: int = 512
    vat_dim: int = 256
    # loss.py::AsymmetricNCE: τ 0.07, vid-aud 1, vid-txt 1 (aud-txt 0 is not implemented).
    temperature: float = 0.07
    vid_aud_weight: float = 1.0
    vid_txt_weight: float = 1.0
    # "VGG" crops: scale jitter of each axis in [0.8, 1.2] (DMVR scale_jitter_augm) then the
    # full short side, i.e. crops of aspect 0.67..1.5 covering 67-100 % of the square frame;
    # colour jitter with p = 0.8 (DMVR color_default_augm: saturation/contrast 0.6..1.4, which
    # SimCLR strength 0.5 matches; its brightness 0.4 and hue 0.1 differ from DMVR's 0.125, 0.2).
    crop_scale: tuple[float, float] = (0.67, 1.0)
    crop_ratio: tuple[float, float] = (0.67, 1.5)
    color_strength: float = 0.5  # 0: no colour jitter
    # experiment.py::Pretrain: Adam (no weight decay anywhere in the config), β 0.9 / 0.999,
    # 5k linear warm-up to 1e-4, then cosine to 5e-5 at 500k steps; 8 clips per replica
    # (dataset.py batch_size). Adam's epsilon is 1e-7 there, 1e-8 here.
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            steps=500_000,
            batch_size=8,
            lr=1e-4,
            optimizer="adamw",
            momentum=0.9,
            betas2=0.999,
            weight_decay=0.0,
            warmup_steps=5000,
            schedule="cosine",
            min_lr_ratio=0.5,
            precision="bf16",
        )
    )


PRESETS: dict[str, VattPreset] = {
    "paper": VattPreset(),
    # A laptop CPU: the zoo's tiny transformers, 8 frames (0.8 s) at 32², 16 kHz audio in
    # 400-sample patches (32 tokens), two caption slots, small FAC spaces, no colour jitter
    # (crop and flip only), Adam at 3e-3: about 100 steps to fall well below chance.
    "tiny": VattPreset(
        backbone="vatt-video-tiny",
        audio_backbone="vatt-audio-tiny",
        text_backbone="vatt-text-tiny",
        frames=8,
        size=40,
        crop=32,
        video_patch=(2, 8, 8),
        audio_rate=16000,
        audio_patch=400,
        captions_per_clip=2,
        va_dim=128,
        vat_dim=64,
        color_strength=0.0,
        train=laptop_train(steps=100, batch_size=6, lr=3e-3, weight_decay=0.0, num_workers=0),
    ),
}


def sampler(preset: VattPreset) -> AudioVisualClip:
    return AudioVisualClip(frames=preset.frames, stride=preset.stride, fps=preset.fps)


def dataset_options(preset: VattPreset) -> dict[str, Any]:
    options: dict[str, Any] = {"audio_rate": preset.audio_rate}
    if preset.captions is not None:
        options["captions"] = read_caption_source(preset.captions)
    return options


def audio_samples(preset: VattPreset) -> int:
    """Waveform samples per clip, a whole number of audio patches (153,600 in the paper)."""
    seconds = preset.frames * preset.stride / preset.fps
    return max(1, round(seconds * preset.audio_rate / preset.audio_patch)) * preset.audio_patch


def video_grid(preset: VattPreset) -> tuple[int, int, int]:
    """Video tokens per axis, which sizes the position tables (8 x 14 x 14 in the paper), so
    DropToken keeps half of the tokens the clip actually has."""
    pt, ph, pw = preset.video_patch
    if preset.frames % pt or preset.crop % ph or preset.crop % pw:
        raise VvkError(
            f"vatt: frames={preset.frames} and crop={preset.crop} must be multiples of "
            f"video_patch={preset.video_patch}"
        )
    return preset.frames // pt, preset.crop // ph, preset.crop // pw


def build(preset: VattPreset) -> VattModel:
    encoders = _encoders(preset)
    # The UT's one output shape serves all three modalities.
    widths = [(m or encoders["backbone"]).output_shape()["pooled"].channels for m in encoders.values()]
    head = FACHead(
        video_dim=widths[0],
        audio_dim=widths[1],
        text_dim=widths[2],
        va_dim=preset.va_dim,
        vat_dim=preset.vat_dim,
    )
    augment = VideoAugment(
        size=preset.crop, crop_scale=preset.crop_scale, crop_ratio=preset.crop_ratio,
        jitter=0.8 if preset.color_strength > 0 else 0.0, strength=preset.color_strength,
        grayscale=0.0, blur=0.0, solarize=0.0,
    )  # fmt: skip
    return VattModel(
        **encoders,
        head=head,
        augment=augment,
        audio_samples=audio_samples(preset),
        audio_noise=preset.audio_noise,
        captions_per_clip=preset.captions_per_clip,
        words_per_caption=preset.words_per_caption,
        temperature=preset.temperature,
        vid_aud_weight=preset.vid_aud_weight,
        vid_txt_weight=preset.vid_txt_weight,
    )


def _encoders(preset: VattPreset) -> dict[str, nn.Module | None]:
    """The transformers, their position tables sized to the preset's clips and waveforms."""
    grid, audio_tokens = video_grid(preset), audio_samples(preset) // preset.audio_patch
    drop = {"drop_token_rate": preset.drop_token_rate}
    if preset.shared_backbone:
        shared = build_model(
            _shared_name(preset.backbone),
            video_patch=tuple(preset.video_patch),
            video_buckets=grid,
            audio_patch=preset.audio_patch,
            audio_buckets=audio_tokens,
            text_buckets=preset.words_per_caption,
            **drop,
        )
        return {"backbone": shared, "audio": None, "text": None}
    if preset.backbone.startswith(_UT_PREFIX):
        raise VvkError(
            f"vatt: backbone={preset.backbone} is the modality-agnostic model",
            hint="set shared_backbone=true",
        )
    return {
        "backbone": build_model(preset.backbone, patch=tuple(preset.video_patch), buckets=grid, **drop),
        "audio": build_model(
            preset.audio_backbone, patch=(preset.audio_patch,), buckets=(audio_tokens,), **drop
        ),
        "text": build_model(preset.text_backbone),
    }


def _shared_name(backbone: str) -> str:
    name = backbone.replace(_VIDEO_PREFIX, _UT_PREFIX, 1) if backbone.startswith(_VIDEO_PREFIX) else backbone
    if not name.startswith(_UT_PREFIX):
        raise VvkError(f"vatt: shared_backbone needs a vatt-video-* or vatt-ut-* backbone, not {backbone}")
    return name


class VattModel(PretrainModel):
    """The training module: ``forward(batch)`` -> {"loss", "vidaud_loss", "vidtxt_loss",
    "audio_clips", "text_clips"} (the parts weighted as in the reference's logs; the last two
    are the fractions of clips with audio / captions).

    Args:
        backbone: the video transformer, or the modality-agnostic one when ``audio`` and
            ``text`` are None.
        audio, text: the audio and text transformers (None with a shared backbone).
        head: the FAC head.
        augment: the video augmentation (float output in [-1, 1]).
        audio_samples: waveform length the audio model was sized for; longer clips are cut,
            shorter ones padded with zeros.
        audio_noise: Gaussian noise of std ``audio_noise · max|x|`` per clip in training.
        captions_per_clip: L, the candidate captions of a clip (MIL-NCE positives).
        words_per_caption: tokens per caption (CLIP BPE ids, truncated).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        audio: nn.Module | None,
        text: nn.Module | None,
        head: FACHead,
        augment: VideoAugment,
        audio_samples: int,
        audio_noise: float,
        captions_per_clip: int,
        words_per_caption: int,
        temperature: float,
        vid_aud_weight: float,
        vid_txt_weight: float,
    ):
        super().__init__()
        if vid_aud_weight + vid_txt_weight <= 0:
            raise VvkError("vatt: vid_aud_weight + vid_txt_weight must be positive")
        self.backbone, self.audio, self.text = backbone, audio, text
        self.head, self.augment = head, augment
        self.audio_samples, self.audio_noise = audio_samples, audio_noise
        self.captions_per_clip, self.words_per_caption = captions_per_clip, words_per_caption
        self.temperature = temperature
        self.weights = {"vidaud_loss": vid_aud_weight, "vidtxt_loss": vid_txt_weight}

    def encode(self, video: Tensor, audio: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pooled (AGG) features of the clips (B, ...), waveforms (B, S) and captions (B*L, W)."""
        if self.audio is None:
            out = self.backbone({"video": video, "audio": audio, "text": ids})
            return out["video.pooled"], out["audio.pooled"], out["text.pooled"]
        return self.backbone(video)["pooled"], self.audio(audio)["pooled"], self.text(ids)["pooled"]

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        video = self.augment(batch["video"])
        audio = fit_waveform(batch["audio"].float(), self.audio_samples)
        if self.training and self.audio_noise > 0:
            audio = add_waveform_noise(audio, self.audio_noise)
        texts, text_valid = pick_captions(batch["text"], self.captions_per_clip)
        ids = tokenize(texts, context_length=self.words_per_caption).to(video.device)
        z = self.head(*self.encode(video, audio, ids))
        b = video.shape[0]
        audio_valid = batch["audio_mask"].bool().view(b, 1)
        text_valid = text_valid.to(video.device)
        parts = {
            "vidaud_loss": asymmetric_nce(
                z.video_to_audio, z.audio_to_video.unsqueeze(1), audio_valid, self.temperature
            ),
            "vidtxt_loss": asymmetric_nce(
                z.video_to_text,
                z.text_to_video.view(b, self.captions_per_clip, -1),
                text_valid,
                self.temperature,
            ),
        }
        weighted = {name: self.weights[name] * loss for name, loss in parts.items() if self.weights[name] > 0}
        total = sum(weighted.values()) / sum(self.weights[name] for name in weighted)
        fractions = {
            "audio_clips": audio_valid.float().mean(),
            "text_clips": text_valid.any(1).float().mean(),
        }
        return {"loss": total, **weighted, **fractions}


def fit_waveform(wave: Tensor, samples: int) -> Tensor:
    """(B, S) -> (B, samples): cut at the end or padded with zeros (silence) at the end."""
    if wave.shape[1] >= samples:
        return wave[:, :samples]
    return torch.nn.functional.pad(wave, (0, samples - wave.shape[1]))


def add_waveform_noise(wave: Tensor, scale: float) -> Tensor:
    """The reference's ``add_gaussian``: noise of std ``scale · max|x|`` per clip (silence stays silent)."""
    peak = wave.abs().amax(dim=1, keepdim=True)  # (B, 1)
    return wave + torch.randn_like(wave) * (scale * peak)


def pick_captions(texts: list[list[str]], slots: int) -> tuple[list[str], Tensor]:
    """Each clip's captions in ``slots`` candidate slots: a random run of ``slots`` consecutive
    captions when it has more (the reference takes a sentence with its neighbours), empty
    strings in the unused slots. Returns B·slots strings (clip-major) and (B, slots) validity."""
    flat: list[str] = []
    valid = torch.zeros(len(texts), slots, dtype=torch.bool)
    for i, captions in enumerate(texts):
        first = int(torch.randint(len(captions) - slots + 1, ())) if len(captions) > slots else 0
        chosen = list(captions[first : first + slots])
        valid[i, : len(chosen)] = True
        flat += chosen + [""] * (slots - len(chosen))
    return flat, valid
