"""The feature statistics a DualAdapt client sends instead of data: per-class Gaussians or
Gaussian mixtures of its features (``FeatureStats``), their wire format and validation, and their
fit (``fit_feature_stats``: closed form, or EM for several components)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vvk.errors import VvkError

STATS_KEYS = ("means", "variances", "weights", "counts")


class BadFeatureStats(VvkError):
    """Feature statistics that cannot be used (wrong shape, not finite, negative variance...): the
    Flower layer drops the sending client for the round."""


@dataclass
class FeatureStats:
    """Per-class Gaussian mixtures of one client's features: what it sends instead of data.

    Attributes:
        means: (C, K, d) float32.
        variances: (C, K, d) diagonal variances, or (C, K, d, d) full covariances.
        weights: (C, K) mixture weights, summing to 1 over K for each class with a count.
        counts: (C,) int64, the client's samples (pseudo-)labelled as each class.
    """

    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray
    counts: np.ndarray

    @property
    def diagonal(self) -> bool:
        return self.variances.ndim == 3

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.to_arrays().values())

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in STATS_KEYS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> FeatureStats:
        """From ``to_arrays``' dict; a missing or non-numeric entry is ``BadFeatureStats``.
        Values are not checked here: call ``validate``."""
        missing = [k for k in STATS_KEYS if k not in arrays]
        if missing:
            raise BadFeatureStats(f"feature statistics: missing {', '.join(missing)}")
        out = {}
        for k in STATS_KEYS:
            a = np.asarray(arrays[k])
            if not (np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating)):
                raise BadFeatureStats(f"feature statistics: {k} has dtype {a.dtype}, not real numbers")
            out[k] = a.astype(np.int64 if k == "counts" else np.float32, copy=False)
        return cls(**out)

    def validate(self, num_classes: int, dim: int) -> FeatureStats:
        """``self`` if usable by a server with ``num_classes`` classes and ``dim`` features, else
        ``BadFeatureStats`` naming what is wrong."""
        c, k = num_classes, (self.means.shape[1] if self.means.ndim == 3 else -1)
        expected = {"means": (c, k, dim), "weights": (c, k), "counts": (c,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise _bad(f"{name} has shape {getattr(self, name).shape}, expected {shape}", c, dim)
        if self.variances.shape not in ((c, k, dim), (c, k, dim, dim)):
            shape = self.variances.shape
            raise _bad(f"variances has shape {shape}, expected {(c, k, dim)} or {(c, k, dim, dim)}", c, dim)
        for name, a in self.to_arrays().items():
            if not np.all(np.isfinite(a)):
                raise BadFeatureStats(f"feature statistics: {name} holds NaN or inf")
            if name != "means" and np.any(self._spread(name, a) < 0):
                raise BadFeatureStats(f"feature statistics: {name} has negative values")
        sums = self.weights.sum(1)[self.counts > 0]
        if not np.allclose(sums, 1, atol=1e-3):
            raise BadFeatureStats(f"feature statistics: weights sum to {sums.min():g}..{sums.max():g}, not 1")
        return self

    def _spread(self, name: str, a: np.ndarray) -> np.ndarray:
        if name == "variances" and not self.diagonal:
            a = a.astype(np.float64)
            if not np.allclose(a, a.swapaxes(-1, -2), atol=1e-5):
                raise BadFeatureStats("feature statistics: covariances are not symmetric")
            return np.linalg.eigvalsh(a) + 1e-6 * np.abs(a).max()  # a PSD matrix, to rounding
        return a


def _bad(what: str, num_classes: int, dim: int) -> BadFeatureStats:
    return BadFeatureStats(f"feature statistics: {what} (server: {num_classes} classes, {dim} features)")


def fit_feature_stats(
    features: Tensor,
    pseudo_labels: Tensor,
    num_classes: int,
    *,
    components: int = 1,
    diagonal: bool = True,
    min_variance: float = 1e-4,
    iterations: int = 25,
    seed: int = 0,
) -> FeatureStats:
    """Per-class Gaussian (``components=1``, closed form) or Gaussian mixture (EM, initialised on
    random samples of the class) of ``features`` (N, d) grouped by ``pseudo_labels`` (N,).

    ``min_variance`` is added to every variance (diagonal) so that a tight class does not sample
    as a point. A class with fewer samples than ``components`` fits one component per sample and
    gives the rest weight 0; a class with no sample gets weight 0 and count 0.
    """
    if components < 1:
        raise VvkError(f"components={components}: must be >= 1", params=("components",))
    x = features.detach().to("cpu", torch.float64)
    n, d = x.shape
    means = torch.zeros(num_classes, components, d, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    variances = torch.ones_like(means) if diagonal else eye.expand(num_classes, components, d, d).clone()
    weights = torch.zeros(num_classes, components, dtype=torch.float64)
    labels = pseudo_labels.to("cpu")
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
    gen = torch.Generator().manual_seed(seed)
    for c in range(num_classes):
        xc = x[labels == c]  # (n_c, d)
        if len(xc) == 0:
            continue
        k = min(components, len(xc))
        mu, var, w = _em(xc, k, diagonal=diagonal, iterations=iterations, min_variance=min_variance, gen=gen)
        means[c, :k], variances[c, :k], weights[c, :k] = mu, var, w
        means[c, k:] = xc.mean(0)
    return FeatureStats(
        means=means.float().numpy(),
        variances=variances.float().numpy(),
        weights=weights.float().numpy(),
        counts=counts.numpy().astype(np.int64),
    )


def _em(x: Tensor, k: int, *, diagonal: bool, iterations: int, min_variance: float, gen) -> tuple:
    """EM for a k-component Gaussian mixture of x (n, d): (means (k, d), variances (k, d) or
    (k, d, d), weights (k,)). k = 1 is the closed form."""
    n, d = x.shape
    reg = min_variance if diagonal else min_variance * torch.eye(d, dtype=x.dtype)
    if k == 1:
        diff = x - x.mean(0)
        var = (diff**2).mean(0) if diagonal else diff.T @ diff / n
        return x.mean(0, keepdim=True), (var + reg)[None], torch.ones(1, dtype=x.dtype)
    means = x[torch.randperm(n, generator=gen)[:k]].clone()  # (k, d)
    var0 = x.var(0, unbiased=False) + min_variance
    variances = var0.expand(k, d).clone() if diagonal else torch.diag_embed(var0).expand(k, d, d).clone()
    log_w = torch.full((k,), -math.log(k), dtype=x.dtype)
    for _ in range(iterations):
        resp = (log_w + _log_gauss(x, means, variances)).softmax(1)  # (n, k)
        nk = resp.sum(0)  # (k,)
        alive = nk > 1e-8  # an emptied component keeps its last parameters, with weight ~0
        log_w = (nk / n).clamp_min(1e-300).log()
        safe = nk.clamp_min(1e-8)
        means = torch.where(alive[:, None], resp.T @ x / safe[:, None], means)
        diff = x[:, None] - means  # (n, k, d)
        if diagonal:
            new = (resp[..., None] * diff**2).sum(0) / safe[:, None] + reg
            variances = torch.where(alive[:, None], new, variances)
        else:
            new = torch.einsum("nk,nki,nkj->kij", resp, diff, diff) / safe[:, None, None] + reg
            variances = torch.where(alive[:, None, None], new, variances)
    return means, variances, log_w.exp() / log_w.exp().sum()


def _log_gauss(x: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """log N(x_n | mean_k, var_k): x (n, d) -> (n, k)."""
    if variances.ndim == 2:
        z = (x[:, None] - means) ** 2 / variances  # (n, k, d)
        return -0.5 * (z + variances.log() + math.log(2 * math.pi)).sum(-1)
    dist = torch.distributions.MultivariateNormal(means, covariance_matrix=variances)
    return dist.log_prob(x[:, None])
