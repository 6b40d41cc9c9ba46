"""Linear probe: a linear classifier on frozen, multi-clip-averaged backbone features.

Each video is embedded as the mean of ``num_clips`` evenly spaced centre-cropped clips. The
classifier is multinomial logistic regression on centred, scaled features, fitted full-batch with
L-BFGS and an L2 penalty. Without a separate validation set, a stratified hold-out of the
labelled videos is used (seeded).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.data.sources import Data, describe
from vvk.errors import VvkError
from vvk.eval.features import ClipReader


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, *, l2: float = 1e-3, steps: int = 200) -> nn.Linear:
    """Multinomial logistic regression, full-batch L-BFGS (deterministic)."""
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y) + l2 * model.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def topk_accuracy(logits: Tensor, y: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    ranked = logits.argsort(dim=1, descending=True)
    return {
        k: float((ranked[:, : min(k, logits.shape[1])] == y[:, None]).any(dim=1).float().mean()) for k in ks
    }


def stratified_split(labels: Tensor, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, val): ``holdout`` of each class (at least one when a class has two or more)."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        n_val = min(len(members) - 1, max(1, round(holdout * len(members)))) if len(members) > 1 else 0
        val.append(members[:n_val])
        train.append(members[n_val:])
    return torch.cat(train), torch.cat(val)


def linear_probe(
    backbone: nn.Module,
    data: Data,
    *,
    val: Data | None = None,
    holdout: float = 0.5,
    reader: ClipReader = ClipReader(),
    num_clips: int = 4,
    l2: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1 / top-5 of a linear classifier on frozen features of labelled videos (``progress``:
    a bar of the videos embedded on stderr)."""
    train_x, train_y, classes = _features(backbone, data, reader, num_clips, progress=progress)
    if val is not None:
        val_x, val_y, _ = _features(backbone, val, reader, num_clips, param="val", progress=progress)
    else:
        train_idx, val_idx = stratified_split(train_y, holdout, seed)
        if len(val_idx) == 0:
            raise VvkError(
                f"data={describe(data)}: too few videos per class for a hold-out",
                hint="pass val=VIDEOS",
                params=("data", "val"),
            )
        train_x, val_x, train_y, val_y = (
            train_x[train_idx],
            train_x[val_idx],
            train_y[train_idx],
            train_y[val_idx],
        )
    # Centre per dimension but scale by one number: per-dimension variances estimated from a
    # handful of videos would blow up the dimensions that happen to agree on the training set.
    mean = train_x.mean(0)
    std = (train_x - mean).std().clamp_min(1e-6)
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    classifier = fit_logistic((train_x - mean) / std, train_y, num_classes, l2=l2)
    with torch.no_grad():
        accuracy = topk_accuracy(classifier((val_x - mean) / std), val_y)
    return {
        "top1": accuracy[1],
        "top5": accuracy[5],
        "train_videos": len(train_y),
        "val_videos": len(val_y),
        "classes": classes or num_classes,
        "chance": 1.0 / num_classes,
        "clips": {**vars(reader.clips), "num_clips": num_clips},
    }


def _features(
    backbone: nn.Module,
    data: Data,
    reader: ClipReader,
    num_clips: int,
    *,
    param: str = "data",
    progress: bool = False,
) -> tuple[Tensor, Tensor, int]:
    dataset = reader.dataset(data, num_clips=num_clips)
    z, labels = reader.embed(backbone, dataset, progress=f"{param} features" if progress else None)
    if (labels < 0).any():
        raise VvkError(
            f"{param}={describe(data)}: the linear probe needs labels (class subfolders, or a list "
            "with labels)",
            params=(param,),
        )
    return z.mean(dim=1), labels, len(dataset.classes)  # multi-clip averaging: (N, clips, D) -> (N, D)
