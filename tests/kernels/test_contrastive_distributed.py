"""Two gloo processes, each with half the batch, give the single-process loss on the whole batch.

Each rank scores its own rows against all ranks' keys (gathered with gradients). Averaging the
ranks' losses (what DDP's gradient averaging amounts to) must give the plain formula on the
concatenated batch; each rank's feature gradients, summed over all ranks' graphs by the
all-gather's backward, must be ``world_size ×`` the single-process gradient of its slice; the
ranks' temperature gradients must average to the single-process one.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vvk.kernels import contrastive_loss
from vvk.kernels.contrastive.reference import plain_contrastive_loss

WORLD = 2
N = 12  # rows of q per rank
D = 8


def _local_cases(rank: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, dict]]:
    """Per rank: (q, k or None for k = q, keyword arguments with rank-local indices and groups)."""
    gen = torch.Generator().manual_seed(100 + rank)
    feats = lambda n: torch.randn(n, D, generator=gen, dtype=torch.float64)  # noqa: E731
    milnce_pos = torch.arange(3 * N).view(N, 3)
    milnce_pos[::2, 2] = -1
    return {
        "clip": (feats(N), feats(N), {"symmetric": True}),
        "simclr": (feats(N), None, {"positives": (torch.arange(N) + N // 2) % N, "exclude_self": True}),
        "milnce": (feats(N), feats(3 * N), {"positives": milnce_pos}),
        "constcl": (feats(N), feats(N), {"groups": torch.arange(N) // 4, "symmetric": True}),
    }


def _global_kwargs(name: str, per_rank: list[dict], k_rows: int) -> dict:
    """The same pairing on the concatenated batch: indices shifted, group ids made distinct."""
    kwargs = dict(per_rank[0])
    if "positives" in kwargs:
        shifted = [
            torch.where(kw["positives"] >= 0, kw["positives"] + r * k_rows, -1)
            for r, kw in enumerate(per_rank)
        ]
        kwargs["positives"] = torch.cat(shifted)
    if "groups" in kwargs:
        kwargs["groups"] = torch.cat([kw["groups"] + r * 1000 for r, kw in enumerate(per_rank)])
    return kwargs


def _worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    results = {}
    for name, (q, k, kwargs) in _local_cases(rank).items():
        q = q.requires_grad_()
        k = q if k is None else k.requires_grad_()
        temperature = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
        loss = contrastive_loss(q, k, temperature, process_group=dist.group.WORLD, block_size=5, **kwargs)
        loss.backward()
        results[name] = {"loss": loss.detach(), "dq": q.grad, "dk": k.grad, "dt": temperature.grad}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    cases = [_local_cases(r) for r in range(WORLD)]
    for name in cases[0]:
        q = torch.cat([c[name][0] for c in cases]).requires_grad_()
        k_parts = [c[name][1] for c in cases]
        k = q if k_parts[0] is None else torch.cat(k_parts).requires_grad_()
        kwargs = _global_kwargs(name, [c[name][2] for c in cases], k.shape[0] // WORLD)
        temperature = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
        loss = plain_contrastive_loss(q, k, temperature, **kwargs)
        loss.backward()
        torch.testing.assert_close(sum(r[name]["loss"] for r in ranks) / WORLD, loss.detach(), msg=name)
        torch.testing.assert_close(sum(r[name]["dt"] for r in ranks) / WORLD, temperature.grad, msg=name)
        dq = torch.cat([r[name]["dq"] for r in ranks])
        torch.testing.assert_close(dq, WORLD * q.grad, msg=name)
        if k is not q:
            dk = torch.cat([r[name]["dk"] for r in ranks])
            torch.testing.assert_close(dk, WORLD * k.grad, msg=name)
