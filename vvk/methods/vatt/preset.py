"""VATT presets and the assembly of its training module from a preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from vvk.data.samplers import AudioVisualClip
from vvk.data.subtitles import read_caption_source
from vvk.data.video_transforms import VideoAugment
from vvk.engine import TrainConfig
from vvk.engine.config import check, check_ranges
from vvk.errors import VvkError
from vvk.methods.base import laptop_train
from vvk.methods.vatt.heads import FACHead
from vvk.methods.vatt.model import VattModel
from vvk.models import build as build_model

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
    # "VGG" crops: DMVR's scale_jitter_augm resizes each axis by its own factor in [0.8, 1.2]
    # (p 0.8), then a crop of `crop` pixels is cut. On a square frame that is a crop of aspect
    # 0.67..1.5 covering 69-100 % of it, which this area-based crop of the whole frame draws;
    # on wider frames DMVR's crop covers a smaller part of the frame than this one (a
    # deviation, docs/notes/vatt.md).
    crop_scale: tuple[float, float] = (0.67, 1.0)
    crop_ratio: tuple[float, float] = (0.67, 1.5)
    # Colour jitter with p = 0.8, as DMVR color_default_augm (saturation/contrast 0.6..1.4,
    # which SimCLR strength 0.5 matches; its brightness 0.4 and hue 0.1 differ from DMVR's
    # 0.125, 0.2). The pretraining loader applies it through its dataset factory:
    # dataloaders.py::PreTrainLoader passes no colour flag, so the factory's default rules,
    # and the one released factory (datasets/toy_dataset.py::ToyFactory._build) defaults
    # color_augmentation=True into processing.add_vision (docs/notes/vatt.md).
    color_strength: float = 0.5  # 0: no colour jitter
    # experiment.py::Pretrain: Adam (no weight decay anywhere in the config), β 0.9 / 0.999,
    # 5k linear warm-up to 1e-4, then cosine to 5e-5 at 500k steps; Adam's epsilon is 1e-7
    # there, 1e-8 here. The reference's batch_size is the global batch, split across the
    # replicas (data/loading.py::BaseLoader.dataset_fn), each replica's loss divided by their
    # number (experiments/base.py), i.e. DDP's mean. Its default, 8 (dataset.py::Dataset, not
    # set by Pretrain), is the global batch of a run without overrides; the paper's is 2048
    # (recalled, not verified: reference §7.4). train.batch_size is per process, the global
    # batch batch_size x processes: 32 gives 2048 on 64 processes; on N processes set 2048 / N,
    # or use grad_accum (docs/notes/vatt.md).
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            steps=500_000,
            batch_size=32,
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

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "> 0": ("fps", "temperature", "crop_scale", "crop_ratio"),
                ">= 0": ("audio_noise", "color_strength", "vid_aud_weight", "vid_txt_weight"),
                ">= 1": ("frames", "stride", "size", "crop", "video_patch", "audio_rate", "audio_patch",
                         "captions_per_clip", "words_per_caption", "va_dim", "vat_dim"),
                "in [0, 1]": ("crop_scale",),
                "in [0, 1)": ("drop_token_rate",),
            },
        )  # fmt: skip
        check(self, "crop", self.crop <= self.size, f"<= size = {self.size} (the crop is cut from the frame)")
        for name in ("crop_scale", "crop_ratio"):
            low, high = getattr(self, name)
            check(self, name, low <= high, "a (low, high) range")
        weights = self.vid_aud_weight + self.vid_txt_weight
        check(self, "vid_txt_weight", weights > 0, "> 0 when vid_aud_weight is 0 (one loss must count)")


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
        train=laptop_train(batch_size=6, lr=3e-3, weight_decay=0.0, num_workers=0),
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


def video_augment(preset: VattPreset) -> VideoAugment:
    """The pretraining loader's video augmentation: "VGG" crop and flip, then DMVR's
    color_default_augm (p 0.8, no colour drop) unless ``color_strength`` is 0."""
    return VideoAugment(
        size=preset.crop, crop_scale=preset.crop_scale, crop_ratio=preset.crop_ratio,
        jitter=0.8 if preset.color_strength > 0 else 0.0, strength=preset.color_strength,
        grayscale=0.0, blur=0.0, solarize=0.0,
    )  # fmt: skip


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
    return VattModel(
        **encoders,
        head=head,
        augment=video_augment(preset),
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
