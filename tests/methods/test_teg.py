"""TeG: time alignment of the short clip on the long one, interpolated positives, the
fine-grained loss's positive and negative sets, the persistent loss and heads as CVRL's, shapes,
and the tiny preset (with CVRL's colour views) on real clips."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vvk.data.samplers import LongShortClips
from vvk.errors import VvkError
from vvk.methods import cvrl, teg
from vvk.methods.cvrl.loss import global_loss
from vvk.methods.losses import nt_xent
from vvk.methods.teg.loss import fine_grained_loss, interpolate_steps
from vvk.methods.teg.model import short_steps_on_long
from vvk.testing import link_videos, twelve_real_videos


def test_short_steps_land_at_the_same_absolute_time_on_the_long_clip():
    sampler = LongShortClips(long_frames=16, long_stride=4, short_frames=16, short_stride=1)
    for seed in range(20):
        plan = sampler(200, np.random.default_rng(seed))
        long_pos, short_pos = plan.views["video"], plan.views["video_short"]
        index_map = torch.from_numpy(plan.extras["index_map"])[None]
        for s in (1, 2):
            where = short_steps_on_long(index_map, temporal_stride=s, steps=16 // s)[0]
            # Long step tau stands for long frame s * tau, at grid position long[0] + s * tau * stride;
            # short step k stands for short frame s * k.
            on_grid = long_pos[0] + where.numpy() * s * sampler.long_stride
            np.testing.assert_allclose(on_grid, short_pos[::s][: 16 // s])


def test_short_steps_on_a_constructed_map():
    # Short clip at half the long stride, starting on long frame 2.
    index_map = torch.tensor([[2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5]])
    assert short_steps_on_long(index_map, temporal_stride=1, steps=8).tolist() == [index_map[0].tolist()]
    # Stride 2: steps stand for short frames 0, 2, 4, 6 -> long frames 2, 3, 4, 5 -> long steps / 2.
    assert short_steps_on_long(index_map, temporal_stride=2, steps=4).tolist() == [[1.0, 1.5, 2.0, 2.5]]
    with pytest.raises(ValueError):
        short_steps_on_long(index_map, temporal_stride=2, steps=5)


def test_interpolated_positive_is_the_mean_of_the_neighbouring_steps():
    long = torch.randn(2, 6, 5)
    where = torch.tensor([[2.5, 3.0, 0.25], [5.0, 4.5, 0.0]])
    got = interpolate_steps(long, where)
    torch.testing.assert_close(got[0, 0], (long[0, 2] + long[0, 3]) / 2)
    torch.testing.assert_close(got[0, 1], long[0, 3])
    torch.testing.assert_close(got[0, 2], 0.75 * long[0, 0] + 0.25 * long[0, 1])
    torch.testing.assert_close(got[1, 0], long[1, 5])  # the last step, no step beyond it
    torch.testing.assert_close(got[1, 1], (long[1, 4] + long[1, 5]) / 2)
    torch.testing.assert_close(
        interpolate_steps(long, torch.tensor([[9.0], [-1.0]]))[:, 0], long[[0, 1], [5, 0]]
    )


def _materialised_fine_grained(short, long, where, temperature):
    """The fine-grained loss written as explicit positive / negative lists, row by row."""
    b, k, _ = short.shape
    t = long.shape[1]
    positive = interpolate_steps(long, where)
    losses = []
    for i in range(b):
        for j in range(k):
            q = F.normalize(short[i, j], dim=0)
            keys = [positive[i, j]]
            keys += [long[i, s] for s in range(t) if abs(s - float(where[i, j])) >= 1]
            for other in range(b):
                if other != i:
                    keys += list(long[other]) + list(positive[other])
            logits = torch.stack([q @ F.normalize(key, dim=0) for key in keys]) / temperature
            losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses).mean()


def test_fine_grained_loss_equals_the_materialised_sets():
    torch.manual_seed(0)
    short, long = torch.randn(3, 4, 8, dtype=torch.float64), torch.randn(3, 6, 8, dtype=torch.float64)
    where = torch.tensor([[0.0, 0.5, 1.0, 1.5], [2.0, 2.25, 2.5, 2.75], [3.0, 4.0, 5.0, 4.5]])
    expected = _materialised_fine_grained(short.float(), long.float(), where, 0.2)
    torch.testing.assert_close(fine_grained_loss(short, long, where, 0.2), expected, rtol=1e-5, atol=1e-5)


def _one_hot_clips(where: torch.Tensor):
    """Every long step of every video a distinct axis; each query equals its interpolated positive."""
    b, t = where.shape[0], 6
    long = torch.eye(b * t, 32)[: b * t].view(b, t, 32).clone()
    return interpolate_steps(long, where).clone(), long


@pytest.mark.parametrize("tau", [2.0, 2.5])
def test_fine_grained_positive_is_the_same_time_and_its_support_is_no_negative(tau):
    where = torch.tensor([[tau], [1.0]])
    short, long = _one_hot_clips(where)
    # The steps the positive is read from (at tau = 2 one of them is the positive itself) are not
    # negatives: with them in the denominator the loss would be at least log 2.
    assert fine_grained_loss(short, long, where, 0.05) < 1e-6


@pytest.mark.parametrize("tau", [2.0, 2.5])
def test_fine_grained_negatives_are_other_times_and_other_videos(tau):
    where = torch.tensor([[tau], [1.0]])
    for video, step in [(0, 5), (0, 0), (1, 3)]:  # same video one+ step away; another video
        short, long = _one_hot_clips(where)
        long[video, step] = short[0, 0]  # a negative that matches the query as well as the positive
        loss = fine_grained_loss(short, long, where, 0.05)
        # Row 0 now has two logits at 1/τ: its loss is log 2; row 1 is unaffected (about 0).
        assert float(loss) == pytest.approx(math.log(2) / 2, abs=1e-4), (video, step)


@pytest.mark.parametrize("short_frames", [8, 4])  # one backbone batch, or two (other lengths)
def test_shapes_and_losses_of_the_tiny_model(short_frames):
    preset = dataclasses.replace(teg.PRESETS["tiny"], short_frames=short_frames)
    model = teg.build(preset).train()
    assert model.temporal_stride == 1
    b, frames, side = 3, preset.long_frames, preset.size
    rng = np.random.default_rng(0)
    plans = [teg.sampler(preset)(64, rng) for _ in range(b)]
    batch = {
        "video": torch.randint(0, 256, (b, 3, frames, side, side), dtype=torch.uint8),
        "video_short": torch.randint(0, 256, (b, 3, preset.short_frames, side, side), dtype=torch.uint8),
        "index_map": torch.from_numpy(np.stack([p.extras["index_map"] for p in plans])),
    }
    global_emb, dense = model.embed(model.augment_long(batch["video"]))
    assert global_emb.shape == (b, preset.embed_dim)
    assert dense.shape == (b, frames, preset.embed_dim)  # res5 keeps every frame at stride 1
    global_out = []
    model.global_head.register_forward_hook(lambda module, args, out: global_out.append(out))
    out = model(batch)
    assert set(out) == {"loss", "persistent", "fine_grained"}
    assert all(torch.isfinite(v) for v in out.values())
    torch.testing.assert_close(out["loss"], out["persistent"] + preset.fine_weight * out["fine_grained"])
    # The persistent loss is CVRL's global loss (both directions summed: twice the NT-Xent mean)
    # on the long clips' and the short clips' global embeddings.
    g_long, g_short = torch.cat(global_out).chunk(2)
    torch.testing.assert_close(out["persistent"], global_loss(g_long, g_short, preset.temperature))
    torch.testing.assert_close(out["persistent"], 2 * nt_xent(g_long, g_short, preset.temperature))
    out["loss"].backward()
    assert model.dense_head.net[0].weight.grad.abs().sum() > 0


def test_paper_preset_shapes_on_the_meta_device():
    with torch.device("meta"):
        model = teg.build(teg.PRESETS["paper"]).train()
        global_emb, dense = model.embed(torch.empty(2, 3, 16, 224, 224))
    assert global_emb.shape == (2, 128) and dense.shape == (2, 16, 128)  # all 16 steps kept at res5
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.backbone) == 31_672_128  # CVRL's R3D-50 (reference: 31.67M)
    assert count(model.global_head) == count(model.dense_head) == 12_857_472  # CVRL's head shape
    # and CVRL's head batch norm (Keras momentum 0.997), not its backbone's (0.9).
    with torch.device("meta"):
        cvrl_head = cvrl.build(cvrl.PRESETS["paper"]).head
    norms = lambda m: {(n.momentum, n.eps) for n in m.modules() if isinstance(n, nn.BatchNorm1d)}  # noqa: E731
    assert norms(model.global_head) == norms(model.dense_head) == norms(cvrl_head) == {(0.003, 1e-5)}


def test_a_backbone_that_subsamples_time_too_much_is_refused():
    preset = dataclasses.replace(teg.PRESETS["tiny"], stem_temporal_stride=4)
    with pytest.raises(VvkError, match="stem_temporal_stride"):
        teg.build(preset)


def _early_and_late(run) -> tuple[dict[str, float], dict[str, float]]:
    """Means of the first and the last 5 logged values of each loss (checked finite)."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curves = {name: [line[name] for line in lines] for name in ("loss", "persistent", "fine_grained")}
    assert all(math.isfinite(v) for curve in curves.values() for v in curve)
    return tuple(
        {k: float(np.mean(v[sl])) for k, v in curves.items()} for sl in (slice(0, 5), slice(-5, None))
    )


STEPS = 60  # the tiny preset's length is a user's (1000 steps); 60 show the losses falling


def test_tiny_preset_learns_on_real_clips(tmp_path, shared_data):
    from vvk.methods.pretrain import pretrain
    from vvk.models import load

    # 12 videos: two batches of 6 per epoch, so no batch holds one video twice.
    data = link_videos(tmp_path / "videos", twelve_real_videos(shared_data))
    run = tmp_path / "run"
    first = pretrain("teg", data=data, preset="tiny", steps=STEPS, out=run, progress=False)
    assert first.step == STEPS
    early, late = _early_and_late(run)
    # With CVRL's colour views every loss falls within the 60 steps (seeds 0-2: total by
    # 1.6-2.1, persistent by 1.0-1.7 to about chance, fine-grained by 0.3-0.6) ...
    assert late["loss"] < early["loss"] - 0.8, (early, late)
    assert late["persistent"] < early["persistent"] - 0.5, (early, late)
    assert late["fine_grained"] < early["fine_grained"] - 0.2, (early, late)
    backbone = load(first.backbone_path)
    assert backbone.output_shape()["res5"].temporal_stride == 1
    resumed = pretrain(
        "teg", data=data, preset="tiny", out=run, resume=True, steps=first.step + 4, progress=False
    )
    assert resumed.step == first.step + 4
    # ... and without them, when nothing hides the clips' colours, the same 60 steps take the
    # persistent loss far below chance, 2·log(2B - 1) (CVRL's two directions: seeds 0-2 end at
    # 1.2-2.2 against 4.8): the global embeddings tell the batch's videos apart.
    plain = tmp_path / "plain"
    pretrain("teg", data=data, preset="tiny", steps=STEPS, out=plain, overrides=["color_augment=false"],
             progress=False)  # fmt: skip
    early, late = _early_and_late(plain)
    chance = 2 * math.log(2 * teg.PRESETS["tiny"].train.batch_size - 1)
    assert late["persistent"] < chance - 1.5, (early, late)
    assert late["fine_grained"] < early["fine_grained"] - 0.3, (early, late)


def _distributed_case(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(10 + rank)
    where = torch.tensor([[0.0, 0.5, 1.0], [2.5, 3.0, 3.5]]) + rank
    return torch.randn(2, 3, 8, generator=gen), torch.randn(2, 6, 8, generator=gen), where


def _distributed_worker(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    short, long, where = _distributed_case(rank)
    short.requires_grad_()
    loss = fine_grained_loss(short, long, where, 0.2)  # picks up the default group itself
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": short.grad}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_give_the_loss_of_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    cases = [_distributed_case(r) for r in range(2)]
    short = torch.cat([c[0] for c in cases]).requires_grad_()
    loss = fine_grained_loss(short, torch.cat([c[1] for c in cases]), torch.cat([c[2] for c in cases]), 0.2)
    loss.backward()
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach())
    # Each rank's graph reaches the other's rows through the gathered keys: the summed
    # gradients are world_size times the single-process ones.
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]), 2 * short.grad)
