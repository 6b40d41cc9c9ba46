"""DualAdapt, without a framework: the pieces of one federated multi-target adaptation round.

FMTDA (Yao, Gong, Qi, Cui, Zhu, Yang, "Federated Multi-Target Domain Adaptation", WACV 2022;
arXiv 2108.07792): a server holds one labelled source domain, clients hold unlabelled data of
other domains; DualAdapt adapts on both sides and keeps client compute and traffic low. Only the
abstract could be read here and no code is public, so **the method below is a reconstruction**
(reference/tracking_federated_texture_kernels.md §2.1, itself marked unverified):

- verified (abstract): labelled source on the server, unlabelled multi-domain clients,
  adaptation on both sides, low communication and client compute;
- recalled, unverified: clients self-train and send per-class Gaussian-mixture statistics of
  their features; the server samples them and mixes them with source features (MixUp in feature
  space) to adapt the classifier;
- chosen here (each a parameter, to be measured; none is from the paper):
  * the split of work. Clients adapt the feature extractor with the classifier frozen (SHOT,
    Liang et al. 2020: adapting features to a fixed source hypothesis keeps entropy
    minimisation from drifting); the server adapts the classifier. ``trains=`` changes either.
  * client losses: cross-entropy on pseudo-labels that the *received* model gives with
    probability strictly above ``confidence`` (fixed for the round, so the round's teacher is
    the global model), information maximisation (SHOT: mean entropy minus the entropy of the
    mean prediction), or both summed.
  * statistics: per class (by the adapted model's argmax) a diagonal Gaussian, or a K-component
    mixture fitted by EM, of the adapted client's features; the server uses them with the
    averaged extractor, an approximation (the paper's handling of this staleness is unknown).
  * the server's MixUp: a source feature of class c and a feature sampled from the clients'
    class-c Gaussians (client by its class-c count, component by weight), mixed by
    lam ~ Beta(alpha, alpha) per sample, labelled c. Same-class mixing keeps hard labels and
    moves along the source-to-target path of each class; cross-class soft labels would mostly
    regularise the boundary instead. A class no client reported keeps the source feature.
  * the server's source cross-entropy (and its mixed loss) train the classifier only by
    default; the extractor stays what the clients averaged, with its BN statistics.

A round (``federated_round``), for ``method``:

- ``dualadapt``: clients adapt and fit statistics -> FedAvg of the adapted parts -> server step;
- ``fedavg-st``: clients self-train -> FedAvg (no statistics, no server step);
- ``server-only``: clients fit statistics of the global model's features -> server step;
- ``oracle``: clients train on their true labels -> FedAvg (an upper bound, federated);
- ``source-only``: no round; the model pretrained on the source, which every method starts from.

What a round records (``RoundRecord``): accuracy per target after it; per client, bytes down
(the whole state dict: clients keep nothing between rounds) and up (the state entries it trained
plus its statistics' arrays; payload only, no framing), wall seconds, and the peak of the tensor
memory its work allocated (``_measure``).

The model interface: ``features(x) -> (B, d)``, ``classifier`` an ``nn.Linear``, ``forward`` their
composition. Everything that crosses the wire is a state dict of tensors or ``FeatureStats``
arrays, so a Flower ``ServerApp``/``ClientApp`` can wrap these functions unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vvk.errors import VvkError

logger = logging.getLogger("vvk.federate")

METHODS = ("dualadapt", "source-only", "fedavg-st", "server-only", "oracle")
CLIENT_METHODS = ("self-training", "entropy", "both")
CLIENT_TRAINS = ("features", "model")
SERVER_TRAINS = ("classifier", "model")
STATS_KEYS = ("means", "variances", "weights", "counts")
_MIN_BN_BATCH = 2  # BatchNorm in train mode needs two samples per batch


class BadFeatureStats(VvkError):
    """Feature statistics that cannot be used (wrong shape, not finite, negative variance...): the
    Flower layer drops the sending client for the round."""


# --- the model ------------------------------------------------------------------------------


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


def build_model(kind: str, num_classes: int, *, feature_dim: int = 128) -> nn.Module:
    """The network for ``kind``: ``digit-cnn`` (``DigitNet``). vvk image backbones (for
    Office-Caltech) are not wrapped yet, and asking for one is an error, not a stand-in."""
    if kind == "digit-cnn":
        return DigitNet(num_classes=num_classes, feature_dim=feature_dim)
    raise VvkError(
        f"kind={kind}: DualAdapt builds only digit-cnn so far",
        hint="wrapping a vvk image backbone (features + linear classifier) for Office-Caltech is to come",
        params=("kind",),
    )


# --- feature statistics ---------------------------------------------------------------------


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


class _MixtureTable:
    """All clients' components in one table, to sample class-c features in one call."""

    def __init__(self, stats: Sequence[FeatureStats], device: torch.device):
        if len({s.diagonal for s in stats}) > 1:
            raise BadFeatureStats("feature statistics: clients mix diagonal and full covariances")
        num_classes, k = stats[0].weights.shape
        means = np.concatenate([s.means.reshape(num_classes * k, -1) for s in stats])  # (M, d)
        mass = np.concatenate([(s.weights * s.counts[:, None]).reshape(-1) for s in stats])  # (M,)
        classes = np.tile(np.repeat(np.arange(num_classes), k), len(stats))  # (M,)
        var = torch.from_numpy(np.concatenate([s.variances.reshape(num_classes * k, *s.variances.shape[2:])
                                               for s in stats]))  # fmt: skip
        # the scale that maps N(0, I) to each component: std, or V sqrt(L) of the eigendecomposition
        # (not Cholesky, which fails on the singular covariances that validate lets through)
        self.scale = (var.sqrt() if stats[0].diagonal else _sqrt_psd(var)).to(device)
        self.means = torch.from_numpy(means).to(device)
        by_class = (classes[None, :] == np.arange(num_classes)[:, None]) * mass[None, :]  # (C, M)
        self.found = torch.from_numpy(by_class.sum(1) > 0).to(device)  # (C,)
        by_class[by_class.sum(1) == 0] = 1  # drawn, then ignored: mixed with lam = 1
        self.probs = torch.from_numpy(by_class / by_class.sum(1, keepdims=True)).float()

    def sample(self, labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """A feature of each label's class: (B,) -> ((B, d), found (B,) bool)."""
        rows = torch.multinomial(self.probs[labels.cpu()], 1, generator=gen).squeeze(1)  # (B,)
        z = torch.randn(len(rows), self.means.shape[1], generator=gen).to(self.means)  # (B, d)
        rows = rows.to(self.means.device)
        scale = self.scale[rows]
        noise = scale * z if scale.ndim == 2 else (scale @ z[..., None]).squeeze(-1)
        return self.means[rows] + noise, self.found[labels]


def _sqrt_psd(cov: Tensor) -> Tensor:
    """S with S S^T = cov, for (M, d, d) symmetric PSD matrices."""
    eigval, eigvec = torch.linalg.eigh(cov.double())
    return (eigvec * eigval.clamp_min(0).sqrt()[..., None, :]).float()


# --- losses and batches ---------------------------------------------------------------------


def information_maximisation_loss(logits: Tensor, diversity_weight: float = 1.0) -> Tensor:
    """SHOT's IM loss (Liang et al., ICML 2020): mean_i H(p_i) - w * H(mean_i p_i). Confident
    predictions lower the first term; the second (diversity) keeps them from one class."""
    p = logits.softmax(1)  # (B, C)
    log_p = logits.log_softmax(1)
    entropy = -(p * log_p).sum(1).mean()
    p_mean = p.mean(0)  # (C,)
    diversity = -(p_mean * (p_mean + 1e-8).log()).sum()
    return entropy - diversity_weight * diversity


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterator[Tensor]:
    """``steps`` index batches of min(batch_size, n), through fresh permutations epoch by epoch."""
    b = min(batch_size, n)
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + b > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos : pos + b]
        pos += b


def _sgd(params: Sequence[Tensor], lr: float) -> torch.optim.Optimizer:
    # New each call: a Flower client keeps nothing between rounds, so neither does the loop.
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)


def _part(model: nn.Module, trains: str) -> nn.Module:
    return model if trains == "model" else getattr(model, trains)


def _check(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise VvkError(f"{name}={value}: must be one of {', '.join(choices)}", params=(name,))


def _device(model: nn.Module, device) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


@torch.no_grad()
def predict(model: nn.Module, X: Tensor, *, batch_size: int = 128, device=None) -> tuple[Tensor, Tensor]:
    """``(features (N, d), probabilities (N, C))`` of ``X`` in eval mode, on the CPU."""
    device = _device(model, device)
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


# --- measuring a client ---------------------------------------------------------------------


@dataclass
class _Usage:
    seconds: float = 0.0
    peak_bytes: int = 0


@contextlib.contextmanager
def _measure(device: torch.device) -> Iterator[_Usage]:
    """Wall seconds and peak memory of the block: the most tensor bytes it held at once of
    those it allocated (its inputs, such as the client's data, not counted).

    On CUDA, ``torch.cuda.max_memory_allocated`` over what was allocated before. On the CPU,
    ``_TensorPeak``, which follows the storages the block's operators create. Not tracemalloc,
    which does not see torch's allocator, nor ``resource``'s ru_maxrss, which cannot be reset
    between clients; nor the resident set, which misses memory the allocator reuses (measured:
    0 bytes for a whole local training run after an earlier one in the same process). The CPU
    tracker runs a little Python per operator: about 10% more seconds for the digit CNN here.
    """
    usage, cuda = _Usage(), device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    with contextlib.nullcontext() if cuda else _TensorPeak() as tracker:
        yield usage
    if cuda:
        torch.cuda.synchronize(device)
        usage.peak_bytes = torch.cuda.max_memory_allocated(device) - base
    else:
        usage.peak_bytes = tracker.peak
    usage.seconds = time.perf_counter() - start


class _TensorPeak(TorchDispatchMode):
    """The peak of live bytes of the CPU tensor storages that operators create inside the mode.

    An output whose storage is an input's (a view, an in-place op) is not a new allocation. A
    storage's Python object lives as long as the storage itself (PyTorch keeps the two
    together), so a finalizer on it sees the free. Storages made outside the operators (a
    ``deepcopy`` of a model) are not counted.
    """

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self._live: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = id(storage)
                if key not in inputs and key not in self._live:
                    self._add(storage, key)
        return out

    def _add(self, storage, key: int) -> None:
        nbytes = storage.nbytes()
        self._live.add(key)
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self._live.discard(key)
        self.current -= nbytes


# --- client side ----------------------------------------------------------------------------


@dataclass
class ClientUpdate:
    """What a client sends back after a round, and what its work cost.

    Attributes:
        state: the state-dict entries of the part the client trained (parameters and buffers,
            CPU tensors); empty when it sends statistics only.
        num_samples: its local samples: the FedAvg weight.
        stats: its ``FeatureStats``, or None.
        seconds: wall time of its work (local steps and statistics).
        peak_memory_bytes: peak memory of that work over the process's before it (see ``_measure``).
        metrics: ``loss`` (mean over steps) and ``confident_fraction`` where they apply.
    """

    state: dict[str, Tensor]
    num_samples: int
    stats: FeatureStats | None
    seconds: float
    peak_memory_bytes: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes up: the state's tensors and the statistics' arrays (payload, no framing)."""
        return state_nbytes(self.state) + (self.stats.nbytes if self.stats is not None else 0)


def client_adapt(
    model: nn.Module,
    X_unlabelled: Tensor,
    *,
    method: str,
    steps: int,
    batch_size: int,
    lr: float,
    confidence: float = 0.9,
    seed: int,
    trains: str = "features",
    diversity_weight: float = 1.0,
    stats: bool = True,
    components: int = 1,
    diagonal: bool = True,
    device=None,
) -> ClientUpdate:
    """Adapt a copy of ``model`` (left unchanged) to ``X_unlabelled`` (N, 3, S, S) and fit the
    statistics of its features.

    ``method``: ``self-training`` (cross-entropy on the received model's pseudo-labels whose
    probability is strictly above ``confidence``; batches drawn from those samples only, so
    ``confidence=1.0`` trains nothing), ``entropy`` (``information_maximisation_loss`` on every
    sample), or ``both`` (their sum; the cross-entropy term masked to the confident samples of
    each batch). ``trains``: ``features`` (classifier frozen, as in SHOT) or ``model``.
    """
    _check("method", method, CLIENT_METHODS)
    _check("trains", trains, CLIENT_TRAINS)
    device, gen = _device(model, device), torch.Generator().manual_seed(seed)
    with _measure(device) as usage:
        local, params = _local_copy(model, trains)
        _, probs = predict(local, X_unlabelled, device=device)
        conf, pseudo = probs.max(1)  # (N,): the received model's labels, fixed for the round
        confident = conf > confidence
        pseudo_d, confident_d = pseudo.to(device), confident.to(device)

        def loss_fn(logits: Tensor, rows: Tensor) -> Tensor:
            loss = logits.new_zeros(())
            if method != "entropy":
                mask = confident_d[rows].float()  # (B,)
                ce = F.cross_entropy(logits, pseudo_d[rows], reduction="none")
                loss = loss + (ce * mask).sum() / mask.sum().clamp_min(1)
            if method != "self-training":
                loss = loss + information_maximisation_loss(logits, diversity_weight)
            return loss

        all_rows = torch.arange(len(X_unlabelled))
        pool = all_rows[confident] if method == "self-training" else all_rows
        loss = _local_steps(local, params, X_unlabelled, pool, loss_fn, steps, batch_size, lr, gen, device)
        gmm = {"components": components, "diagonal": diagonal}
        fitted = client_feature_stats(local, X_unlabelled, seed=seed, **gmm) if stats else None
    metrics = {"loss": loss, "confident_fraction": float(confident.float().mean())}
    state = _state_of(local, trains)
    return ClientUpdate(state, len(X_unlabelled), fitted, usage.seconds, usage.peak_bytes, metrics)


def client_supervised(
    model: nn.Module, X: Tensor, y: Tensor, *, steps: int, batch_size: int, lr: float, seed: int,
    trains: str = "model", device=None,
) -> ClientUpdate:  # fmt: skip
    """The oracle's client: cross-entropy on the true labels ``y`` (N,), on a copy of ``model``."""
    _check("trains", trains, CLIENT_TRAINS)
    device, gen = _device(model, device), torch.Generator().manual_seed(seed)
    y_d = y.to(device)
    with _measure(device) as usage:
        local, params = _local_copy(model, trains)

        def loss_fn(logits: Tensor, rows: Tensor) -> Tensor:
            return F.cross_entropy(logits, y_d[rows])

        pool = torch.arange(len(X))
        loss = _local_steps(local, params, X, pool, loss_fn, steps, batch_size, lr, gen, device)
    state = _state_of(local, trains)
    return ClientUpdate(state, len(X), None, usage.seconds, usage.peak_bytes, {"loss": loss})


def client_feature_stats(
    model: nn.Module, X: Tensor, *, components: int = 1, diagonal: bool = True, confidence: float = 0.0,
    seed: int = 0, device=None,
) -> FeatureStats:  # fmt: skip
    """``fit_feature_stats`` of ``model``'s features of ``X``, grouped by its argmax, over the
    samples whose top probability is strictly above ``confidence`` (0: all of them)."""
    feats, probs = predict(model, X, device=device)  # (N, d), (N, C)
    conf, labels = probs.max(1)
    keep = conf > confidence
    return fit_feature_stats(
        feats[keep], labels[keep], probs.shape[1], components=components, diagonal=diagonal, seed=seed
    )


def client_stats(
    model: nn.Module, X: Tensor, *, components: int = 1, diagonal: bool = True, seed: int = 0, device=None
) -> ClientUpdate:
    """The ``server-only`` client: no training, statistics of the global model's features only."""
    with _measure(_device(model, device)) as usage:
        gmm = {"components": components, "diagonal": diagonal}
        fitted = client_feature_stats(model, X, seed=seed, device=device, **gmm)
    return ClientUpdate({}, len(X), fitted, usage.seconds, usage.peak_bytes)


def _local_copy(model: nn.Module, trains: str) -> tuple[nn.Module, list[Tensor]]:
    local = copy.deepcopy(model)
    local.requires_grad_(False)  # the frozen part costs no gradient
    part = _part(local, trains).requires_grad_(True)
    return local, list(part.parameters())


def _local_steps(
    local: nn.Module, params, X: Tensor, pool: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: int, batch_size: int, lr: float, gen: torch.Generator, device: torch.device,
) -> float:  # fmt: skip
    """``steps`` SGD steps on batches of ``X[pool]``; the mean loss (nan when nothing trained).
    Fewer than two samples in the pool train nothing: BatchNorm needs two per batch."""
    if steps <= 0 or len(pool) < _MIN_BN_BATCH:
        return float("nan")
    opt, total = _sgd(params, lr), 0.0
    local.train()
    for idx in _batches(len(pool), batch_size, steps, gen):
        rows = pool[idx]
        loss = loss_fn(local(X[rows].to(device)), rows.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
    local.eval()
    return total / steps


def _state_of(model: nn.Module, trains: str) -> dict[str, Tensor]:
    prefix = "" if trains == "model" else trains + "."
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


# --- server side ----------------------------------------------------------------------------


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


def server_step(
    model: nn.Module,
    X_source: Tensor,
    y_source: Tensor,
    client_stats: Sequence[FeatureStats],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    mixup_alpha: float,
    seed: int,
    trains: str = "classifier",
    mixed_weight: float = 1.0,
    device=None,
) -> dict[str, float]:
    """Train ``model`` in place on the labelled source and on source features mixed with features
    sampled from ``client_stats`` (the module docstring gives the MixUp chosen); without
    statistics, on the source alone (the pretraining). The mean losses and seconds.

    ``trains="classifier"``: the extractor is frozen in eval mode (bit-identical, BN statistics
    included) and the source features are computed once. ``trains="model"``: the source
    cross-entropy trains the whole model, the mixed loss still only the classifier (source
    features detached), since the statistics describe the clients' feature space, not a moving one.
    """
    _check("trains", trains, SERVER_TRAINS)
    if client_stats and not mixup_alpha > 0:
        raise VvkError(f"mixup_alpha={mixup_alpha}: must be > 0", params=("mixup_alpha",))
    device, start = _device(model, device), time.perf_counter()
    num_classes, dim = model.classifier.out_features, model.classifier.in_features
    checked = [s.validate(num_classes, dim) for s in client_stats]
    table = _MixtureTable(checked, device) if checked else None
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    frozen = trains == "classifier"
    f_source = predict(model, X_source, device=device)[0].to(device) if frozen else None  # (N, d)
    opt = _sgd(list(_part(model, trains).parameters()), lr)
    model.train(not frozen)
    sums = {"source_loss": 0.0, "mixed_loss": 0.0}
    for idx in _batches(len(y_source), batch_size, steps, gen):
        y = y_source[idx].to(device)
        f = f_source[idx] if frozen else model.features(X_source[idx].to(device))  # (B, d)
        loss = F.cross_entropy(model.classifier(f), y)
        sums["source_loss"] += loss.item()
        if table is not None:
            mixed = F.cross_entropy(model.classifier(_mix(f.detach(), y, table, mixup_alpha, gen, rng)), y)
            sums["mixed_loss"] += mixed.item()
            loss = loss + mixed_weight * mixed
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return {k: v / max(steps, 1) for k, v in sums.items()} | {"seconds": time.perf_counter() - start}


def _mix(f_source: Tensor, y: Tensor, table: _MixtureTable, alpha: float, gen, rng) -> Tensor:
    """lam * f_source + (1 - lam) * f_target, f_target drawn from class y's Gaussians: (B, d)."""
    f_target, found = table.sample(y, gen)  # (B, d), (B,)
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=len(y))).to(f_source)  # (B,)
    lam = torch.where(found, lam, torch.ones_like(lam))  # no client saw the class: source alone
    return lam[:, None] * f_source + (1 - lam[:, None]) * f_target


# --- rounds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DualAdaptPreset:
    """The settings of a run; ``run_rounds`` is where they become arguments. ``digits`` is sized
    for MNIST -> USPS / MNIST-M at 32x32 in minutes on a CPU; the paper's settings are unknown
    here, so none of these is the paper's. ``tiny`` runs a round in about a second, for tests.
    ``client_trains`` applies to ``dualadapt`` and ``fedavg-st``; the oracle trains the model."""

    model: str = "digit-cnn"
    feature_dim: int = 128
    pretrain_steps: int = 400
    client_method: str = "both"
    client_steps: int = 50
    client_lr: float = 0.01
    client_trains: str = "features"
    confidence: float = 0.9
    server_steps: int = 100
    server_lr: float = 0.01
    server_trains: str = "classifier"
    mixup_alpha: float = 1.0
    components: int = 1
    diagonal: bool = True
    batch_size: int = 64


PRESETS = {
    "digits": DualAdaptPreset(),
    "tiny": DualAdaptPreset(feature_dim=16, pretrain_steps=4, client_steps=2, server_steps=2, batch_size=16),
}


@dataclass
class Client:
    """One client's data: ``X`` (N, 3, S, S), and ``y`` (N,) which only the oracle reads."""

    name: str
    X: Tensor
    y: Tensor


@dataclass
class RoundRecord:
    """One round: per-target accuracy after it, and per-client traffic and compute, in the order
    of ``clients``. Round 0 is the source-pretrained model (its server_seconds the pretraining)."""

    round: int
    accuracy: dict[str, float] = field(default_factory=dict)
    clients: list[str] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)
    client_seconds: list[float] = field(default_factory=list)
    client_peak_bytes: list[int] = field(default_factory=list)
    server_seconds: float = 0.0
    dropped: list[str] = field(default_factory=list)

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean(list(self.accuracy.values()))) if self.accuracy else float("nan")

    def to_dict(self) -> dict:
        return asdict(self) | {"mean_accuracy": self.mean_accuracy}


def make_clients(targets: Sequence, *, clients_per_target: int = 1, seed: int = 0) -> list[Client]:
    """Each target domain (a ``DomainDataset``) as ``clients_per_target`` clients (iid parts)."""
    from vvk.data.domains import partition

    clients = []
    for domain in targets:
        parts = [domain] if clients_per_target == 1 else partition(domain, clients_per_target, seed=seed)
        for k, part in enumerate(parts):
            name = domain.name if clients_per_target == 1 else f"{domain.name}-{k}"
            clients.append(Client(name, *part.tensors()))
    return clients


def client_work(method: str, model: nn.Module, client: Client, preset: DualAdaptPreset, *, seed: int,
                device=None) -> ClientUpdate:  # fmt: skip
    """What one client of ``method`` does in a round, from the global ``model`` (left unchanged)."""
    p = preset
    train = {"steps": p.client_steps, "batch_size": p.batch_size, "lr": p.client_lr}
    train |= {"seed": seed, "device": device}
    gmm = {"components": p.components, "diagonal": p.diagonal}
    if method == "dualadapt":
        return client_adapt(model, client.X, method=p.client_method, confidence=p.confidence,
                            trains=p.client_trains, **train, **gmm)  # fmt: skip
    if method == "fedavg-st":
        return client_adapt(model, client.X, method="self-training", confidence=p.confidence,
                            trains=p.client_trains, stats=False, **train)  # fmt: skip
    if method == "server-only":
        return client_stats(model, client.X, seed=seed, device=device, **gmm)
    if method == "oracle":
        return client_supervised(model, client.X, client.y, trains="model", **train)
    raise VvkError(f"method={method}: no client work (one of {', '.join(METHODS[2:])} or dualadapt)",
                   params=("method",))  # fmt: skip


def federated_round(
    method: str, model: nn.Module, source: tuple[Tensor, Tensor], clients: Sequence[Client],
    preset: DualAdaptPreset, *, round: int, seed: int, device=None,
) -> RoundRecord:  # fmt: skip
    """One round of ``method`` on ``model`` (updated in place), without evaluation: clients work
    from the global model, statistics that fail ``FeatureStats.validate`` drop their client for
    the round (logged), FedAvg merges the rest, then the server step where the method has one."""
    down = state_nbytes(model.state_dict())  # clients keep nothing between rounds: all of it
    updates = [client_work(method, model, c, preset, seed=_derive(seed, i), device=device)
               for i, c in enumerate(clients)]  # fmt: skip
    start = time.perf_counter()
    num_classes, dim = model.classifier.out_features, model.classifier.in_features
    kept, dropped = [], []
    for c, u in zip(clients, updates, strict=True):
        try:
            kept.append(u if u.stats is None else replace(u, stats=u.stats.validate(num_classes, dim)))
        except BadFeatureStats as e:
            logger.warning(f"round {round}: client {c.name} dropped for the round: {e}")
            dropped.append(c.name)
    if kept and method in ("dualadapt", "fedavg-st", "oracle"):
        merged = model.state_dict() | fedavg([(u.state, u.num_samples) for u in kept])
        model.load_state_dict(merged)
    if method in ("dualadapt", "server-only"):
        p = preset
        server_step(model, *source, [u.stats for u in kept], steps=p.server_steps, batch_size=p.batch_size,
                    lr=p.server_lr, mixup_alpha=p.mixup_alpha, seed=_derive(seed, "server"),
                    trains=p.server_trains, device=device)  # fmt: skip
    return RoundRecord(
        round=round,
        clients=[c.name for c in clients],
        bytes_up=[u.nbytes for u in updates],
        bytes_down=[down] * len(clients),
        client_seconds=[u.seconds for u in updates],
        client_peak_bytes=[u.peak_memory_bytes for u in updates],
        server_seconds=time.perf_counter() - start,
        dropped=dropped,
    )


def run_rounds(
    method: str,
    source,
    targets: Sequence,
    *,
    rounds: int,
    clients_per_round: int,
    seed: int,
    preset: str | DualAdaptPreset = "digits",
    clients_per_target: int = 1,
    eval_targets: Sequence | None = None,
    device="cpu",
    on_round: Callable[[RoundRecord], None] | None = None,
) -> list[RoundRecord]:
    """Pretrain on ``source`` and run ``rounds`` rounds of ``method`` in this process.

    ``source`` and ``targets`` are ``DomainDataset``s with the same classes; accuracy is measured
    per ``eval_targets`` domain (default: the targets themselves, the transductive protocol of
    unsupervised adaptation). Every method starts from the same pretrained model for a ``seed``;
    ``source-only`` stops there (one record). ``on_round`` sees each record as it is made.
    """
    _check("method", method, METHODS)
    preset = _preset(preset)
    if rounds < 0:
        raise VvkError(f"rounds={rounds}: must be >= 0", params=("rounds",))
    device = torch.device(device)
    clients = make_clients(targets, clients_per_target=clients_per_target, seed=seed)
    if not 1 <= clients_per_round <= len(clients):
        raise VvkError(f"clients_per_round={clients_per_round}: must be 1..{len(clients)} (the clients)",
                       params=("clients_per_round",))  # fmt: skip
    evals = _eval_sets(source, eval_targets if eval_targets is not None else targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(preset.model, len(source.classes), feature_dim=preset.feature_dim).to(device)
    xy = source.tensors()
    pretrain = server_step(model, *xy, [], steps=preset.pretrain_steps, batch_size=preset.batch_size,
                           lr=preset.server_lr, mixup_alpha=preset.mixup_alpha, seed=_derive(seed, "pre"),
                           trains="model", device=device)  # fmt: skip
    records = [RoundRecord(0, _evaluate(model, evals, device), server_seconds=pretrain["seconds"])]
    if on_round is not None:
        on_round(records[0])
    rng = np.random.default_rng(_derive(seed, "clients"))
    for r in range(1, (rounds if method != "source-only" else 0) + 1):
        chosen = np.sort(rng.choice(len(clients), clients_per_round, replace=False))
        record = federated_round(method, model, xy, [clients[i] for i in chosen], preset, round=r,
                                 seed=_derive(seed, r), device=device)  # fmt: skip
        record.accuracy = _evaluate(model, evals, device)
        records.append(record)
        if on_round is not None:
            on_round(record)
    return records


def _preset(preset: str | DualAdaptPreset) -> DualAdaptPreset:
    if isinstance(preset, DualAdaptPreset):
        return preset
    if preset not in PRESETS:
        raise VvkError(f"preset={preset}: must be one of {', '.join(PRESETS)}", params=("preset",))
    return PRESETS[preset]


def _eval_sets(source, domains: Sequence) -> dict[str, tuple[Tensor, Tensor]]:
    sets = {}
    for d in domains:
        if list(d.classes) != list(source.classes):
            raise VvkError(f"{d.name}: its classes differ from the source's ({source.name})")
        if d.name in sets:
            raise VvkError(f"{d.name}: two evaluation domains share this name")
        sets[d.name] = d.tensors()
    return sets


def _evaluate(model: nn.Module, evals: Mapping[str, tuple[Tensor, Tensor]], device) -> dict[str, float]:
    return {name: accuracy(model, X, y, device=device) for name, (X, y) in evals.items()}


def _derive(seed: int, *keys: int | str) -> int:
    """A seed of its own for each (seed, round, client...), stable across runs."""
    words = [seed, *(k if isinstance(k, int) else int.from_bytes(k.encode()[:8], "little") for k in keys)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])
