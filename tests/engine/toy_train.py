"""A tiny but complete training run for the subprocess tests (kill/resume, torchrun).

Real video files, data-loader workers, the two-view sampler, kornia augmentation (global RNG),
dropout, SGD with momentum, warm-up + cosine, gradient accumulation and clipping, EMA.

    python tests/engine/toy_train.py --videos DIR --run-dir RUN --out-dir OUT --steps N [--resume]
        [--hang-at STEP]   # block inside optimizer step STEP (1-based), for a SIGKILL test
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from vvk.data.datasets import BadFiles, ClipDataset
from vvk.data.index import build_index
from vvk.data.samplers import TwoViews
from vvk.data.sources import scan_folder
from vvk.data.video_transforms import VideoAugment
from vvk.engine import TrainConfig, train

GRAD_ACCUM = 2


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(3, 4, 3, stride=2),
            nn.BatchNorm3d(4),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Linear(4, 8),
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(a), self.net(b)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=Path, required=True)
    parser.add_argument("--run-dir", dest="run", type=Path, required=True)
    parser.add_argument("--out-dir", dest="out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hang-at", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)  # the same initial weights in every process
    model = Toy()
    source = scan_folder(args.videos)
    index = build_index([i.path for i in source.items], decoder="pyav", workers=1)
    data = ClipDataset(
        source.items,
        index,
        sampler=TwoViews(frames=4, stride=2),
        decoder="pyav",
        size=24,
        bad_files=BadFiles(),
    )
    augment = VideoAugment(size=16)
    seen: list[int] = []
    calls = 0

    def step_fn(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        if args.hang_at and calls > (args.hang_at - 1) * GRAD_ACCUM:
            (args.out / "hanging").touch()
            while True:  # wait here for SIGKILL
                time.sleep(1)
        seen.extend(batch["index"].tolist())
        za, zb = net(augment(batch["video"]), augment(batch["video_b"]))
        align = (za - zb).pow(2).mean()
        return {"loss": align + (za.norm(dim=1) - 1).pow(2).mean(), "align": align}

    config = TrainConfig(
        steps=args.steps,
        batch_size=2,
        grad_accum=GRAD_ACCUM,
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-3,
        warmup_steps=2,
        grad_clip=5.0,
        ema_decay=0.9,
        checkpoint_every=args.checkpoint_every,
        num_workers=args.workers,
        seed=3,
        log_every=1,
        progress=False,
    )
    result = train(
        model=model,
        step_fn=step_fn,
        data=data,
        config=config,
        run_dir=args.run,
        method="toy",
        resume=args.resume,
    )
    torch.save(model.state_dict(), args.out / f"final-rank{rank}.pt")
    (args.out / f"seen-rank{rank}.json").write_text(json.dumps({"status": result.status, "seen": seen}))


if __name__ == "__main__":
    main()
