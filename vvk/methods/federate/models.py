"""DualAdapt's network and what is done with a whole model: ``DigitNet`` and ``build_model``, its
predictions and accuracy, FedAvg of state dicts and their bytes.

The model interface: ``features(x) -> (B, d)``, ``classifier`` an ``nn.Linear``, ``forward`` their
composition; the server trains the classifier on features alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.models.detectors.common import IMAGE_MEAN, IMAGE_STD
from vvk.models.registry import build, get_entry


class DigitNet(nn.Module):
    """A small CNN for 32x32 3-channel digits, split at the features so that the server can
    train the classifier on features alone::

        x (B, 3, S, S)
          -> [conv3x3 - BN - ReLU - maxpool2] x 3     (B, 4w, S/8, S/8)
          -> adaptive avg pool to 4x4, flatten       (B, 16 * 4w)
          -> Linear - BN1d          = features       (B, d)
          -> Linear                 = classifier     (B, num_classes)

    The features end in BN without a ReLU (SHOT's bottleneck): roughly Gaussian, which is what
    the clients' per-class Gaussians assume.
    """

    def __init__(self, *, num_classes: int = 10, feature_dim: int = 128, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(
            *layers,
            nn.AdaptiveAvgPool2d(4),  # any input side >= 8 gives the same head
            nn.Flatten(),  # (B, 4w, 4, 4) -> (B, 64w)
            nn.Linear(16 * c_in, feature_dim),
            nn.BatchNorm1d(feature_dim),
        )
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# The zoo's SpineNets keep the TF reference's batch-norm decay (0.997: PyTorch momentum 0.003),
# made for runs of 100k+ steps. DualAdapt's runs are a few hundred steps: the running statistics
# would still be mostly their initial values, and eval-mode predictions collapsed to a few classes
# (eff-spinenet-tiny on Office-Caltech's amazon: 0.5 batch accuracy in train mode, chance in eval).
SHORT_RUN_BN_MOMENTUM = 0.1  # PyTorch's default


class BackboneNet(nn.Module):
    """A vvk image backbone (``vvk models list``, task ``image-backbone``) with ``DigitNet``'s
    head, for image domains such as Office-Caltech::

        x (B, 3, S, S) in [0, 1] -> ImageNet normalisation -> backbone   {level: (B, C, h, w)}
          -> its deepest level, global average pool                      (B, C)
          -> Linear - BN1d        = features                             (B, d)
          -> Linear               = classifier                           (B, num_classes)

    The backbone is part of ``features``, so a client that adapts the features adapts it.
    """

    def __init__(self, backbone: str, *, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        try:
            task = get_entry(backbone).task
        except VvkError as e:  # said of the parameter: "backbone=x: unknown model (did you mean ...?)"
            raise VvkError(f"backbone={backbone}: unknown model", hint=e.hint, params=("backbone",)) from None
        if task != "image-backbone":
            raise VvkError(
                f"backbone={backbone}: a {task} model, not an image backbone", params=("backbone",)
            )
        net = build(backbone)
        for module in net.modules():  # see SHORT_RUN_BN_MOMENTUM
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = SHORT_RUN_BN_MOMENTUM
        shapes = net.output_shape()
        level = max(shapes, key=lambda name: shapes[name].stride)  # the deepest, coarsest level
        self.features = nn.Sequential(
            _PooledLevel(net, level),
            nn.Linear(shapes[level].channels, feature_dim),
            nn.BatchNorm1d(feature_dim),
        )
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _PooledLevel(nn.Module):
    """(B, 3, S, S) in [0, 1] -> (B, C): one level of a backbone's outputs, averaged over space."""

    def __init__(self, backbone: nn.Module, level: str):
        super().__init__()
        self.backbone, self.level = backbone, level
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        # SpineNets take sides that are multiples of 2**max_block_level (128): pad the bottom and
        # right with the mean colour (0 once normalised) rather than refuse other sizes
        m = 2 ** getattr(self.backbone, "max_block_level", 0)
        x = F.pad(x, (0, -x.shape[-1] % m, 0, -x.shape[-2] % m))
        return self.backbone(x)[self.level].mean(dim=(-2, -1))


def build_model(kind: str, num_classes: int, *, feature_dim: int = 128) -> nn.Module:
    """The network for ``kind``: ``digit-cnn`` (``DigitNet``) or the name of a vvk image
    backbone (``BackboneNet``)."""
    if kind == "digit-cnn":
        return DigitNet(num_classes=num_classes, feature_dim=feature_dim)
    return BackboneNet(kind, num_classes=num_classes, feature_dim=feature_dim)


def model_device(model: nn.Module, device) -> torch.device:
    """``device`` as a ``torch.device``, or where ``model``'s parameters are when it is None."""
    return torch.device(device) if device is not None else next(model.parameters()).device


@torch.no_grad()
def predict(model: nn.Module, X: Tensor, *, batch_size: int = 128, device=None) -> tuple[Tensor, Tensor]:
    """``(features (N, d), probabilities (N, C))`` of ``X`` in eval mode, on the CPU."""
    device = model_device(model, device)
    was_training = model.training
    model.eval()
    feats, probs = [], []
    for i in range(0, len(X), batch_size):
        f = model.features(X[i : i + batch_size].to(device))
        feats.append(f.float().cpu())
        probs.append(model.classifier(f).float().softmax(1).cpu())
    model.train(was_training)
    return torch.cat(feats), torch.cat(probs)


def accuracy(model: nn.Module, X: Tensor, y: Tensor, batch_size: int = 128, *, device=None) -> float:
    """Top-1 accuracy of ``model`` on ``(X, y)``, in [0, 1]."""
    _, probs = predict(model, X, batch_size=batch_size, device=device)
    return float((probs.argmax(1) == y.cpu()).float().mean())


def fedavg(states: Sequence[tuple[Mapping[str, Tensor], int]]) -> dict[str, Tensor]:
    """Sample-weighted average of client state dicts (FedAvg, McMahan et al. 2017):
    sum_i n_i s_i / sum_i n_i, key by key.

    Floating tensors (parameters, BN running means and variances) are summed in float64 and cast
    back. Integer tensors (BN's ``num_batches_tracked``: a count of batches, whose exact mean is
    seldom an integer) get the weighted mean rounded half to even; booleans must agree.
    """
    if not states:
        raise VvkError("fedavg: no client states")
    keys, total = list(states[0][0]), sum(n for _, n in states)
    if any(n < 0 for _, n in states) or total <= 0:
        raise VvkError(f"fedavg: sample counts {[n for _, n in states]} must be >= 0 with a positive sum")
    for state, _ in states[1:]:
        if set(state) != set(keys):
            raise VvkError(f"fedavg: clients send different entries ({sorted(set(state) ^ set(keys))[:3]})")
    out = {}
    for k in keys:
        ref = states[0][0][k]
        values = [s[k] for s, _ in states]
        if any(v.shape != ref.shape for v in values):
            raise VvkError(f"fedavg: {k} has shapes {sorted({tuple(v.shape) for v in values})}")
        if ref.dtype == torch.bool:
            if any(not torch.equal(v, ref) for v in values):
                raise VvkError(f"fedavg: {k} is a boolean that clients disagree on")
            out[k] = ref.clone()
            continue
        mean = sum(n * v.detach().cpu().double() for v, (_, n) in zip(values, states, strict=True)) / total
        out[k] = (mean if ref.is_floating_point() else mean.round()).to(ref.dtype)
    return out


def state_nbytes(state: Mapping[str, Tensor]) -> int:
    """Bytes of a state dict's tensors: the payload of sending it (no framing)."""
    return sum(t.numel() * t.element_size() for t in state.values())
