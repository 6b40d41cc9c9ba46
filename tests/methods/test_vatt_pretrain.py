"""VATT pretraining: FAC head, the two-sided NCE / MIL-NCE against plain formulas, masks and
their rescaling, DropToken token counts of the paper preset, its colour jitter, captions, and
the tiny preset on real clips with and without audio and captions. (Named apart from
tests/models/test_vatt.py: tests/ has no __init__ files.)"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vvk.errors import VvkError
from vvk.methods import vatt
from vvk.methods.vatt.heads import FACHead
from vvk.methods.vatt.loss import asymmetric_nce
from vvk.methods.vatt.model import add_waveform_noise, fit_waveform, pick_captions
from vvk.methods.vatt.preset import audio_samples, video_augment, video_grid
from vvk.models.backbones.vatt import UniversalVatt
from vvk.testing import link_videos


def test_fac_head_dimensions_and_layers():
    # The paper's widths: ViT-Medium video 1024, WaT-Base audio 768, T5-Small text 512.
    head = FACHead(video_dim=1024, audio_dim=768, text_dim=512).train()
    z = head(torch.randn(4, 1024), torch.randn(4, 768), torch.randn(4 * 5, 512))
    assert [tuple(t.shape) for t in z] == [(4, 512), (4, 256), (4, 512), (20, 256)]
    # Dense layers into BN carry no bias; audio and text projections do (bridge.py::FACHead).
    assert sum(p.numel() for p in head.parameters()) == (
        1024 * 512
        + 2 * 512
        + 512 * 512
        + 2 * 512
        + 512 * 256
        + 2 * 256
        + (768 * 512 + 512)
        + (512 * 256 + 256)
    )
    # z_vt is computed from z_va itself (fine-to-coarse), through a ReLU that must not modify it.
    z_va = head.video_to_va(torch.randn(4, 1024))
    before = z_va.clone()
    torch.testing.assert_close(head.va_to_vat(z_va), head.va_to_vat[2](head.va_to_vat[1](before.relu())))
    torch.testing.assert_close(z_va, before)


def _plain_per_clip(anchors, candidates, valid, temperature):
    """The reference's per-clip loss written out: explicit numerator and two-sided denominator
    over the valid candidates (None for a clip without any)."""
    v, c = F.normalize(anchors, dim=-1).double(), F.normalize(candidates, dim=-1).double()
    b, slots = valid.shape
    s = lambda x, y: x @ y / temperature  # noqa: E731
    losses = []
    for i in range(b):
        if not valid[i].any():
            losses.append(None)
            continue
        pos = [s(v[i], c[i, k]) for k in range(slots) if valid[i, k]]
        local_to_all = [s(v[i], c[j, k]) for j in range(b) for k in range(slots) if valid[j, k]]
        all_to_local = [s(v[j], c[i, k]) for j in range(b) for k in range(slots) if valid[i, k]]
        den = torch.logsumexp(torch.stack(local_to_all + all_to_local), 0)
        losses.append(float(den - torch.logsumexp(torch.stack(pos), 0)))
    return losses


def _plain_two_sided(anchors, candidates, valid, temperature):
    """Per-clip losses combined as the reference does: ``mean(loss * mask * size / #valid)``."""
    losses = _plain_per_clip(anchors, candidates, valid, temperature)
    mask = torch.tensor([loss is not None for loss in losses], dtype=torch.float64)
    scale = len(losses) / mask.sum() if mask.sum() > 0 else 0.0
    return float(torch.mean(torch.tensor([loss or 0.0 for loss in losses]) * mask * scale))


def test_two_sided_mil_nce_equals_the_materialised_formula():
    torch.manual_seed(0)
    anchors, candidates = torch.randn(5, 8), torch.randn(5, 3, 8)
    valid = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    got = asymmetric_nce(anchors, candidates, valid, 0.07)
    assert float(got) == pytest.approx(_plain_two_sided(anchors, candidates, valid, 0.07), rel=1e-5)


def test_nce_counts_the_positive_in_both_halves_of_the_denominator():
    torch.manual_seed(1)
    v, a = torch.randn(6, 16), torch.randn(6, 16)
    sim = F.normalize(v, dim=1) @ F.normalize(a, dim=1).T / 0.07  # (video, audio)
    rows = F.cross_entropy(sim, torch.arange(6), reduction="none")  # local video vs all audio
    cols = F.cross_entropy(sim.T, torch.arange(6), reduction="none")  # all video vs local audio
    expected = torch.logaddexp(rows, cols).mean()
    got = asymmetric_nce(v, a[:, None], torch.ones(6, 1, dtype=torch.bool), 0.07)
    torch.testing.assert_close(got, expected)
    # Counted once, the loss would be smaller (by up to log 2): the reference counts it twice.
    once = torch.logsumexp(torch.cat([sim, sim.T - 1e9 * torch.eye(6)], 1), 1) - sim.diag()
    assert float(got) > float(once.mean()) + 0.01


def test_mil_nce_with_one_candidate_equals_nce():
    torch.manual_seed(2)
    v, a = torch.randn(5, 8), torch.randn(5, 8)
    ones = torch.ones(5, 1, dtype=torch.bool)
    nce = asymmetric_nce(v, a[:, None], ones, 0.07)
    # MIL-NCE over 4 slots of which only the first holds a candidate: the empty slots vanish.
    padded = torch.cat([a[:, None], torch.randn(5, 3, 8)], dim=1)
    only_first = torch.zeros(5, 4, dtype=torch.bool)
    only_first[:, 0] = True
    torch.testing.assert_close(asymmetric_nce(v, padded, only_first, 0.07), nce)


def test_a_clip_without_audio_contributes_nothing_and_the_rest_is_rescaled():
    torch.manual_seed(3)
    v = torch.randn(4, 8)
    a = torch.randn(4, 1, 8, requires_grad=True)
    has_audio = torch.tensor([[True], [False], [True], [True]])
    loss = asymmetric_nce(v, a, has_audio, 0.07)
    loss.backward()
    assert a.grad[1].abs().max() == 0  # its audio is neither a positive nor a negative
    other = a.detach().clone()
    other[1] = torch.randn(1, 8) * 100
    torch.testing.assert_close(asymmetric_nce(v, other, has_audio, 0.07), loss.detach())
    # Rescaled by #all / #valid: the mean over the three clips that have audio.
    assert float(loss.detach()) == pytest.approx(_plain_two_sided(v, a.detach(), has_audio, 0.07), rel=1e-5)
    nothing = torch.zeros(4, 1, dtype=torch.bool)
    empty = asymmetric_nce(v.requires_grad_(), a, nothing, 0.07)
    empty.backward()
    assert float(empty.detach()) == 0 and torch.isfinite(v.grad).all() and v.grad.abs().max() == 0


def test_paper_preset_geometry_and_droptoken_on_the_meta_device():
    preset = vatt.PRESETS["paper"]
    assert video_grid(preset) == (8, 14, 14)
    assert audio_samples(preset) == 153_600  # 3.2 s at 48 kHz, 1200 patches of 128
    with torch.device("meta"):
        model = vatt.build(preset).train()
        video = model.backbone(torch.empty(1, 3, 32, 224, 224))["tokens"]
        audio = model.audio(torch.empty(1, 153_600))["tokens"]
    assert video.shape == (1, 784, 1024)  # 1568 tokens, half dropped
    assert audio.shape == (1, 600, 768)  # 1200 tokens, half dropped
    assert model.head.text_to_vat.in_features == 512


def test_paper_preset_jitters_colour_in_four_clips_of_five_and_tiny_not_at_all():
    # The reference's pretraining loader applies DMVR's color_default_augm with p 0.8 (through
    # its dataset factory's color_augmentation=True) and no colour drop. Crop, flip and resize
    # leave a flat colour flat, so a changed clip is a jittered one.
    torch.manual_seed(0)
    clips = torch.tensor([200, 60, 30], dtype=torch.uint8).view(1, 3, 1, 1, 1).expand(400, 3, 2, 24, 24)
    flat = clips[:, :, :, :16, :16].float() / 255 * 2 - 1

    def jittered(preset) -> float:
        out = video_augment(dataclasses.replace(preset, crop=16))(clips)
        return float((out - flat).abs().amax(dim=(1, 2, 3, 4)).gt(0.01).float().mean())

    assert 0.72 < jittered(vatt.PRESETS["paper"]) < 0.88  # 0.8 ± 4 standard deviations (0.02)
    assert jittered(vatt.PRESETS["tiny"]) == 0.0


def test_tiny_model_shapes_with_separate_and_shared_backbones():
    base = vatt.PRESETS["tiny"]
    b = 4
    batch = {
        "video": torch.randint(0, 256, (b, 3, base.frames, base.size, base.size), dtype=torch.uint8),
        "audio": torch.randn(b, audio_samples(base) - 100) * 0.1,  # cut short: padded back
        "audio_mask": torch.tensor([True, False, True, False]),
        "text": [["a dog walks", "a child rides"], [], ["one", "two", "three"], []],
    }
    for shared in (False, True):
        model = vatt.build(dataclasses.replace(base, shared_backbone=shared)).train()
        assert isinstance(model.backbone, UniversalVatt) == shared and (model.audio is None) == shared
        out = model(batch)
        assert all(torch.isfinite(v) for v in out.values())
        assert float(out["audio_clips"]) == 0.5 and float(out["text_clips"]) == 0.5
        torch.testing.assert_close(out["loss"], (out["vidaud_loss"] + out["vidtxt_loss"]) / 2)
        out["loss"].backward()
    with pytest.raises(VvkError, match="shared_backbone"):
        vatt.build(dataclasses.replace(base, backbone="vatt-ut-tiny"))


def test_caption_slots_audio_fitting_and_noise():
    torch.manual_seed(0)
    texts, valid = pick_captions([["a", "b", "c", "d"], ["x"], []], 2)
    assert valid.tolist() == [[True, True], [True, False], [False, False]]
    assert texts[2:] == ["x", "", "", ""]
    assert texts[:2] in (["a", "b"], ["b", "c"], ["c", "d"])  # a run of neighbouring captions
    wave = torch.arange(10.0).view(1, 10)
    assert fit_waveform(wave, 4).tolist() == [[0.0, 1.0, 2.0, 3.0]]
    assert fit_waveform(wave, 12).tolist() == [[*range(10), 0.0, 0.0]]
    loud, silent = torch.full((1, 20_000), 0.5), torch.zeros(1, 20_000)
    noisy = add_waveform_noise(torch.cat([loud, silent]), 0.01)
    assert float((noisy[0] - 0.5).std()) == pytest.approx(0.005, rel=0.05)
    assert noisy[1].abs().max() == 0


def test_captions_from_a_table_or_subtitles_next_to_the_videos(tmp_path, shared_data):
    table = shared_data / "video" / "activitynet" / "captions.tsv"
    options = vatt.dataset_options(dataclasses.replace(vatt.PRESETS["tiny"], captions=str(table)))
    assert options["audio_rate"] == 16000
    assert len(options["captions"]["v_GGSY1Qvo990"]) == 6
    (tmp_path / "clip.srt").write_text("1\n00:00:01,500 --> 00:00:03,000\nA dog <i>runs</i>\n\n")
    options = vatt.dataset_options(dataclasses.replace(vatt.PRESETS["tiny"], captions=str(tmp_path)))
    (caption,) = options["captions"]["clip"]
    assert (caption.text, caption.start, caption.end) == ("A dog runs", 1.5, 3.0)


def test_tiny_preset_learns_on_real_clips_with_and_without_audio_and_captions(tmp_path, shared_data):
    from vvk.methods.pretrain import pretrain
    from vvk.models import load

    video = shared_data / "video"
    # 2 videos with audio and captions, 4 silent ones without captions; the batch of 6 is one
    # epoch, so every step sees each video once.
    silent = [video / "kinetics" / "arm_wrestling.mp4", *sorted((video / "ucf24").glob("*.mp4"))[:3]]
    data = link_videos(tmp_path / "videos", [*sorted((video / "activitynet").glob("*.mp4")), *silent])
    run = tmp_path / "run"
    captions = video / "activitynet" / "captions.tsv"
    # 100 steps (the tiny preset's 1000 are a user's run) take the losses well below chance.
    first = pretrain("vatt", data=data, preset="tiny", steps=100, out=run, captions=captions, progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curves = {k: [line[k] for line in lines] for k in ("loss", "vidaud_loss", "vidtxt_loss")}
    assert all(math.isfinite(v) for curve in curves.values() for v in curve)
    early, late = ({k: np.mean(v[sl]) for k, v in curves.items()} for sl in (slice(0, 10), slice(-10, None)))
    assert late["loss"] < early["loss"] - 0.5, curves["loss"]
    assert late["vidaud_loss"] < early["vidaud_loss"] - 0.2, curves["vidaud_loss"]
    assert late["vidtxt_loss"] < early["vidtxt_loss"] - 0.2, curves["vidtxt_loss"]
    # Both masks are exercised: 2 of 6 clips have audio; at most those 2 have captions.
    assert all(line["audio_clips"] == pytest.approx(2 / 6) for line in lines)
    assert 0 < np.mean([line["text_clips"] for line in lines]) <= 2 / 6 + 1e-6
    backbone = load(first.backbone_path)
    assert backbone.keep_tokens == 32  # the exported video transformer, sized to the tiny clips
    resumed = pretrain(
        "vatt", data=data, preset="tiny", out=run, captions=captions, resume=True, steps=first.step + 4,
        progress=False,
    )  # fmt: skip
    assert resumed.step == first.step + 4


def _distributed_case(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(20 + rank)
    valid = torch.tensor([[[1, 1], [1, 0], [0, 0]], [[0, 1], [1, 1], [1, 1]]], dtype=torch.bool)[rank]
    return torch.randn(3, 8, generator=gen), torch.randn(3, 2, 8, generator=gen), valid


def _distributed_worker(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    loss = asymmetric_nce(*_distributed_case(rank), 0.07)  # picks up the default group itself
    torch.save(loss, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_see_every_clip_as_a_negative_and_rescale_per_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    cases = [_distributed_case(r) for r in range(2)]
    anchors, candidates, valid = (torch.cat([c[i] for c in cases]) for i in range(3))
    # Per clip, the global two-sided loss; each process averages over its own valid clips
    # (the reference's per-replica #all / #valid), here 2 of 3 and 3 of 3.
    per_clip = _plain_per_clip(anchors, candidates, valid, 0.07)
    for rank, rows in enumerate((per_clip[:3], per_clip[3:])):
        expected = np.mean([loss for loss in rows if loss is not None])
        assert float(torch.load(tmp_path / f"rank{rank}.pt")) == pytest.approx(expected, rel=1e-5)
