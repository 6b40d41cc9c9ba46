"""DualAdapt, without a framework: the client and server steps of a federated multi-target
adaptation round.

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

How the steps make a round, and the baselines' rounds: ``vvk.methods.federate.rounds``; the
statistics: ``vvk.methods.federate.stats``; the model and FedAvg: ``vvk.methods.federate.models``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.methods.federate.memory import measure
from vvk.methods.federate.models import model_device, predict, state_nbytes
from vvk.methods.federate.stats import BadFeatureStats, FeatureStats, fit_feature_stats

CLIENT_METHODS = ("self-training", "entropy", "both")
CLIENT_TRAINS = ("features", "model")
SERVER_TRAINS = ("classifier", "model")
_MIN_BN_BATCH = 2  # BatchNorm in train mode needs two samples per batch


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


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """``VvkError`` naming parameter ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise VvkError(f"{name}={value}: must be one of {', '.join(choices)}", params=(name,))


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
        peak_memory_bytes: peak memory of that work over the process's before it (see ``memory.measure``).
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
    check_choice("method", method, CLIENT_METHODS)
    check_choice("trains", trains, CLIENT_TRAINS)
    device, gen = model_device(model, device), torch.Generator().manual_seed(seed)
    with measure(device) as usage:
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
    check_choice("trains", trains, CLIENT_TRAINS)
    device, gen = model_device(model, device), torch.Generator().manual_seed(seed)
    y_d = y.to(device)
    with measure(device) as usage:
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
    with measure(model_device(model, device)) as usage:
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
    check_choice("trains", trains, SERVER_TRAINS)
    if client_stats and not mixup_alpha > 0:
        raise VvkError(f"mixup_alpha={mixup_alpha}: must be > 0", params=("mixup_alpha",))
    device, start = model_device(model, device), time.perf_counter()
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
