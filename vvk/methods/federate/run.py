"""``vvk federate``'s run: read the domains, settle the settings, run the Flower simulation.

::

    result = federate("mnist", ["usps", "mnist-m"], method="dualadapt", rounds=10, out="runs/fed")
    result.records[-1].accuracy      # {"usps": 0.91, "mnist-m": 0.36}

Domains are ``vvk.data.domains.load_domain`` specs: ``mnist``, ``usps``, ``mnist-m``,
``sklearn-digits``, ``FILE.mat:X,Y`` or a folder ``DIR/<class>/<image>``; every one is read at
``size`` x ``size`` (default: 32 for the digit CNN, 128 for an image backbone) and must have the
source's classes. Each target is one client (``clients_per_target`` splits it into iid parts);
``clients_per_round`` of them (default: all) take part in a round. The run folder ``out`` holds
the server's checkpoints and records (``vvk.federated.checkpoints``); a run restarted with the
same folder and settings resumes after its last complete round.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vvk.errors import VvkError
from vvk.methods.federate.dualadapt import CLIENT_METHODS, check_choice
from vvk.methods.federate.models import build_model
from vvk.methods.federate.rounds import METHODS, PRESETS, DualAdaptPreset, RoundRecord

DIGIT_SIZE, IMAGE_SIZE = 32, 128


@dataclass
class FederateResult:
    """A finished run: its folder, settings and one record per round (round 0: the source model)."""

    out: Path
    method: str
    preset: DualAdaptPreset
    size: int
    records: list[RoundRecord]

    def summary(self) -> dict[str, Any]:
        """The JSON summary: accuracy per target before and after, traffic and compute per round."""
        first, last = self.records[0], self.records[-1]
        rounds = self.records[1:]
        return {
            "out": str(self.out),
            "method": self.method,
            "rounds": len(rounds),
            "accuracy": last.accuracy,
            "mean_accuracy": last.mean_accuracy,
            "source_only_accuracy": first.accuracy,
            "bytes_up_per_client_round": _mean([b for r in rounds for b in r.bytes_up]),
            "bytes_down_per_client_round": _mean([b for r in rounds for b in r.bytes_down]),
            "client_seconds_per_round": _mean([s for r in rounds for s in r.client_seconds]),
            "client_peak_bytes": max((b for r in rounds for b in r.client_peak_bytes), default=None),
            "dropped": sorted({name for r in rounds for name in r.dropped}),
            "size": self.size,
            "preset": self.preset.__dict__,
        }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def resolve_settings(
    preset: str | DualAdaptPreset = "digits",
    overrides: Sequence[str] = (),
    *,
    backbone: str | None = None,
    client_method: str | None = None,
) -> DualAdaptPreset:
    """The preset with its ``KEY=VALUE`` overrides, then ``backbone`` (the ``model`` field) and
    ``client_method``, which win over the overrides."""
    from vvk.methods.overrides import apply_overrides

    if isinstance(preset, str):
        if preset not in PRESETS:
            raise VvkError(
                f"preset={preset}: not a federate preset ({', '.join(PRESETS)})", params=("preset",)
            )
        preset = PRESETS[preset]
    settings = apply_overrides(preset, list(overrides))
    if client_method is not None:
        check_choice("client_method", client_method, CLIENT_METHODS)
        settings = replace(settings, client_method=client_method)
    if backbone is not None:
        settings = replace(settings, model=backbone)
    return settings


def read_domains(source: str | os.PathLike, targets: Sequence[str | os.PathLike], *, size: int) -> tuple:
    """``(source, [targets])`` as ``DomainDataset``s, checked: at least one target, the source's
    classes in every target, no two domains of one name."""
    from vvk.data.domains import load_domain

    def load(spec, param: str):
        try:
            return load_domain(spec, size=size)
        except VvkError as e:  # said of the parameter the caller knows: source= or targets=
            if "spec" in e.params:
                e.message, e.params = e.message.replace("spec=", f"{param}=", 1), (param,)
            raise

    if not targets:
        raise VvkError("targets=: give at least one target domain", params=("targets",))
    src = load(source, "source")
    tgts = []
    for spec in targets:
        domain = load(spec, "targets")
        if list(domain.classes) != list(src.classes):
            raise VvkError(
                f"targets={spec}: its classes ({_few(domain.classes)}) are not the source's "
                f"({_few(src.classes)})",
                params=("targets",),
            )
        if domain.name in [src.name, *(t.name for t in tgts)]:
            raise VvkError(f"targets={spec}: a second domain named {domain.name!r}", params=("targets",))
        tgts.append(domain)
    return src, tgts


def _few(names: Sequence[str]) -> str:
    return ", ".join(names[:4]) + (f", ... {len(names)} in all" if len(names) > 4 else "")


def federate(
    source: str | os.PathLike,
    targets: Sequence[str | os.PathLike],
    *,
    method: str = "dualadapt",
    rounds: int = 10,
    clients_per_round: int | None = None,
    clients_per_target: int = 1,
    preset: str | DualAdaptPreset = "digits",
    overrides: Sequence[str] = (),
    backbone: str | None = None,
    client_method: str | None = None,
    size: int | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> FederateResult:
    """Run ``method`` (``METHODS``) from ``source`` to ``targets`` as a Flower simulation on this
    machine (``vvk.federated.simulate``); see the module docstring."""
    from vvk.paths import default_run_dir

    check_choice("method", method, METHODS)
    if rounds < 0 or clients_per_target < 1 or (clients_per_round is not None and clients_per_round < 1):
        raise VvkError(f"rounds={rounds}, clients_per_target={clients_per_target}, clients_per_round="
                       f"{clients_per_round}: rounds >= 0, the others >= 1")  # fmt: skip
    settings = resolve_settings(preset, overrides, backbone=backbone, client_method=client_method)
    size = size or (DIGIT_SIZE if settings.model == "digit-cnn" else IMAGE_SIZE)
    src, tgts = read_domains(source, targets, size=size)
    build_model(settings.model, len(src.classes), feature_dim=settings.feature_dim)  # a bad name fails now
    clients = len(tgts) * clients_per_target
    if clients_per_round is not None and clients_per_round > clients:
        raise VvkError(f"clients_per_round={clients_per_round}: there are {clients} clients",
                       params=("clients_per_round",))  # fmt: skip
    out = Path(out) if out is not None else default_run_dir(f"federate-{method}")
    try:
        from vvk.federated import simulate
    except ImportError as e:
        raise VvkError(f"Flower is not installed ({e})", hint="pip install 'vvk[federate]'") from None

    records = simulate(
        method, src, tgts, rounds=rounds, clients_per_round=clients_per_round or clients,
        clients_per_target=clients_per_target, seed=seed, preset=settings, out=out, on_round=on_round,
    )  # fmt: skip
    return FederateResult(out, method, settings, size, records)
