"""VATT's training module: video, audio and text encoders, the FAC head, NCE and MIL-NCE."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vvk.data.video_transforms import VideoAugment
from vvk.errors import VvkError
from vvk.methods.base import PretrainModel, augment_views
from vvk.methods.vatt.heads import FACHead
from vvk.methods.vatt.loss import asymmetric_nce
from vvk.models.backbones.vatt_text import tokenize


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
        video = augment_views(self.augment, batch["video"], batch.get("frame_size"))
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
