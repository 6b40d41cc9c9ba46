"""The tiny variants on real data: a COCO photo and its captions, a Kinetics clip, ActivityNet audio."""

from __future__ import annotations

import json

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vvk.models import build
from vvk.models.backbones.vatt_text import tokenize
from vvk.models.heads import build_retinanet


def _frames(path, count: int, size: int) -> torch.Tensor:
    """The first ``count`` frames, resized to size×size, as a (1, 3, T, H, W) clip in [0, 1]."""
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
            if len(frames) == count:
                break
    clip = torch.stack(frames).permute(3, 0, 1, 2).float() / 255  # (T, H, W, 3) -> (3, T, H, W)
    return F.interpolate(clip, size=(size, size), mode="bilinear", antialias=True).unsqueeze(0)


def test_coco_photo_through_spinenet_with_retinanet_head(shared_data):
    torch.manual_seed(0)
    path = sorted((shared_data / "coco" / "tiny_coco" / "train2017").glob("*.jpg"))[0]
    image = np.array(Image.open(path).convert("RGB").resize((256, 256)))
    x = torch.from_numpy(image).permute(2, 0, 1).float().unsqueeze(0) / 255  # (H, W, 3) -> (1, 3, H, W)
    model = build_retinanet("spinenet-tiny", num_classes=80).eval()
    feats = model.backbone(x)
    assert {k: v.shape[-1] for k, v in feats.items()} == {"P3": 32, "P4": 16, "P5": 8, "P6": 4, "P7": 2}
    logits, deltas = model.head.flatten(model.head(feats))
    assert logits.shape == (1, 9 * sum(32**2 // 4**i for i in range(5)), 80)
    assert torch.isfinite(logits).all() and torch.isfinite(deltas).all()
    # Untrained, the classifier sits at the focal-loss prior (p = 0.01) on a real image too.
    assert abs(logits.sigmoid().mean().item() - 0.01) < 0.005


def test_coco_captions_through_the_text_backbone(shared_data):
    torch.manual_seed(0)
    records = json.loads(
        (shared_data / "coco" / "tiny_coco" / "annotations" / "captions_train2017.json").read_text()
    )
    captions = [a["caption"] for a in records["annotations"][:6]]
    ids = tokenize(captions, context_length=16)
    out = build("vatt-text-tiny").eval()(ids)
    assert out["tokens"].shape == (6, 16, 32) and torch.isfinite(out["pooled"]).all()
    assert torch.cdist(out["pooled"], out["pooled"]).triu(1)[0, 1:].min() > 0  # distinct sentences differ


def test_kinetics_clip_through_the_video_backbones(shared_data):
    torch.manual_seed(0)
    clip = _frames(shared_data / "video" / "kinetics" / "arm_wrestling.mp4", count=8, size=64)
    r3d = build("r3d-tiny", stem_temporal_stride=1).eval()(clip)
    assert r3d["res5"].shape == (1, 256, 8, 2, 2) and torch.isfinite(r3d["res5"]).all()
    vit = build("vatt-video-tiny").eval()(clip)  # 4x8x8 tokens from a table built for 2x4x4
    assert vit["tokens"].shape == (1, 256, 32) and torch.isfinite(vit["pooled"]).all()


def test_activitynet_audio_through_the_waveform_transformer(shared_data):
    with av.open(str(shared_data / "video" / "activitynet" / "v_GGSY1Qvo990.mp4")) as container:
        chunks, total = [], 0
        for frame in container.decode(audio=0):
            samples = frame.to_ndarray().astype(np.float32)
            chunks.append(samples.mean(axis=0) if samples.ndim == 2 else samples)
            total += chunks[-1].size
            if total >= 2048:
                break
    wave = torch.from_numpy(np.concatenate(chunks)[:2048]).unsqueeze(0)
    assert wave.abs().max() > 0  # real sound, not silence
    out = build("vatt-audio-tiny").eval()(wave)
    assert out["tokens"].shape == (1, 2048 // 16, 32) and torch.isfinite(out["pooled"]).all()
