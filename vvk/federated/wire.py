"""What crosses the wire between the DualAdapt server and its clients, as Flower records.

A train message (server -> client) is a ``RecordDict`` of

- ``model``: ``ArrayRecord``, the whole global state dict (clients keep nothing between rounds);
- ``task``: ``ConfigRecord``: ``method``, ``round``, ``seed`` (this client's seed for the round),
  ``num-classes``, ``classes`` (names, which the client checks against its data's) and every
  ``DualAdaptPreset`` field as ``preset.<field>``, so a preset made in Python reaches the client
  without the client knowing its name.

A reply (client -> server) is a ``RecordDict`` of

- ``state``: ``ArrayRecord``, the state entries the client trained (empty for statistics only);
- ``stats``: ``ArrayRecord``, ``FeatureStats.to_arrays()``, for the methods that send statistics;
- ``metrics``: ``MetricRecord``: ``num-samples``, ``seconds``, ``peak-memory-bytes`` and the
  update's own metrics as ``metric.<name>``.

The server trusts nothing in a reply: ``decode_reply`` turns an error reply, a missing one or
malformed content (a missing or extra state entry, a wrong shape or dtype, NaN, statistics
without their arrays) into a ``ClientFailure``, which ``server_round`` logs and drops for the
round; statistics of the wrong class count or dimension fail ``FeatureStats.validate`` there.
Nothing a client sends can raise out of the server's loop or reach the global model unchecked.
(A client can still lie within the rules, e.g. claim many samples to weigh more in FedAvg: plain
FedAvg cannot tell.)

Bytes are counted as in ``run_rounds``: the payload of the arrays (product of shape times item
size), not the ``.npy`` headers Flower wraps each array in nor the message framing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from torch import Tensor

from vvk.errors import VvkError
from vvk.methods.federate.dualadapt import ClientUpdate
from vvk.methods.federate.rounds import ClientFailure, DualAdaptPreset
from vvk.methods.federate.stats import BadFeatureStats, FeatureStats

MODEL, TASK = "model", "task"
STATE, STATS, METRICS = "state", "stats", "metrics"
_PRESET_PREFIX, _METRIC_PREFIX = "preset.", "metric."
_MAX_REASON = 300  # characters of a client's error kept in the log line


class BadReply(VvkError):
    """A reply whose content the server cannot use; its client is dropped for the round."""


# --- arrays ------------------------------------------------------------------------------------


def state_record(state: Mapping[str, Tensor]) -> ArrayRecord:
    """A state dict as an ``ArrayRecord`` (CPU numpy copies, in the state's order)."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in state.items()})


def record_nbytes(record: ArrayRecord) -> int:
    """Payload bytes of the arrays in ``record``, from their dtype and shape (``len(data)`` for an
    array whose dtype is not one numpy knows: a malformed one still counts what arrived)."""
    total = 0
    for a in record.values():
        try:
            total += np.dtype(a.dtype).itemsize * math.prod(a.shape)
        except (TypeError, ValueError):
            total += len(a.data)
    return total


def content_nbytes(content: RecordDict) -> int:
    """Payload bytes of every ``ArrayRecord`` in ``content``."""
    return sum(record_nbytes(r) for r in content.values() if isinstance(r, ArrayRecord))


def _numpy(array: Array, what: str) -> np.ndarray:
    try:
        a = array.numpy()
    except Exception as e:  # noqa: BLE001 - any decoding failure of a client's bytes is the client's
        raise BadReply(f"{what} does not decode ({type(e).__name__}: {e})") from None
    if not isinstance(a, np.ndarray):
        raise BadReply(f"{what} is not an array")
    return a


def _tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(a if a.flags.writeable else a.copy())


# --- server -> client --------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """What a client is asked to do in a round (the ``task`` record)."""

    method: str
    round: int
    seed: int
    preset: DualAdaptPreset
    num_classes: int
    classes: tuple[str, ...]


def encode_task(model: ArrayRecord, task: Task) -> RecordDict:
    """A train message's content. ``model`` is shared, not copied, between the messages of a round
    (its ``Array`` objects hold immutable bytes)."""
    config = {"method": task.method, "round": task.round, "seed": task.seed, "num-classes": task.num_classes,
              "classes": list(task.classes)}  # fmt: skip
    config |= {_PRESET_PREFIX + k: v for k, v in asdict(task.preset).items()}
    return RecordDict({MODEL: ArrayRecord(dict(model)), TASK: ConfigRecord(config)})


def decode_task(content: RecordDict) -> tuple[dict[str, Tensor], Task]:
    """The global state and the task of a train message. The client trusts its server: anything
    missing is an error, which Flower sends back as the client's error reply."""
    model, config = content.get(MODEL), content.get(TASK)
    if not isinstance(model, ArrayRecord) or not isinstance(config, ConfigRecord):
        raise VvkError(f"train message: expected records {MODEL} and {TASK}, got {sorted(content)}")
    names = {f.name for f in fields(DualAdaptPreset)}
    preset = {k[len(_PRESET_PREFIX) :]: v for k, v in config.items() if k.startswith(_PRESET_PREFIX)}
    if set(preset) != names:
        raise VvkError(f"train message: preset fields {sorted(set(preset) ^ names)} missing or unknown")
    state = {k: _tensor(_numpy(a, f"model entry {k}")) for k, a in model.items()}
    task = Task(method=str(config["method"]), round=int(config["round"]), seed=int(config["seed"]),
                preset=DualAdaptPreset(**preset), num_classes=int(config["num-classes"]),
                classes=tuple(config["classes"]))  # fmt: skip
    return state, task


# --- client -> server --------------------------------------------------------------------------


def encode_update(update: ClientUpdate) -> RecordDict:
    """A reply's content: the update's state, statistics and costs."""
    metrics = {"num-samples": int(update.num_samples), "seconds": float(update.seconds),
               "peak-memory-bytes": int(update.peak_memory_bytes)}  # fmt: skip
    metrics |= {_METRIC_PREFIX + k: float(v) for k, v in update.metrics.items()}
    records = {STATE: state_record(update.state), METRICS: MetricRecord(metrics)}
    if update.stats is not None:
        records[STATS] = ArrayRecord(
            {k: Array(np.ascontiguousarray(a)) for k, a in update.stats.to_arrays().items()}
        )
    return RecordDict(records)


def decode_update(content: RecordDict, expected: Mapping[str, Tensor], *, stats: bool) -> ClientUpdate:
    """The ``ClientUpdate`` in a reply, checked against ``expected``, the global model's entries
    that the client was to train (exactly those keys, their shapes and dtypes, finite values).
    ``stats``: whether the method sends statistics (their values are checked by
    ``FeatureStats.validate`` in ``server_round``; their presence and types here).
    ``BadReply`` or ``BadFeatureStats`` for anything else."""
    state_rec, metrics = content.get(STATE), content.get(METRICS)
    if not isinstance(state_rec, ArrayRecord) or not isinstance(metrics, MetricRecord):
        raise BadReply(f"reply: expected records {STATE} (arrays) and {METRICS}, got {sorted(content)}")
    got, want = set(state_rec), set(expected)
    if got != want:
        extra, missing = sorted(got - want), sorted(want - got)
        raise BadReply(
            f"state: {len(missing)} entries missing {missing[:3]}, {len(extra)} unexpected {extra[:3]}"
        )
    state = {}
    for k, ref in expected.items():
        a = _numpy(state_rec[k], f"state entry {k}")
        ref_dtype = ref.detach().cpu().numpy().dtype
        if a.shape != tuple(ref.shape) or a.dtype != ref_dtype:
            raise BadReply(f"state entry {k}: {a.dtype} {a.shape}, expected {ref_dtype} {tuple(ref.shape)}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise BadReply(f"state entry {k} holds NaN or inf")
        state[k] = _tensor(a)
    fitted = None
    if stats:
        rec = content.get(STATS)
        if not isinstance(rec, ArrayRecord):
            raise BadFeatureStats("feature statistics: missing from the reply")
        fitted = FeatureStats.from_arrays({k: _numpy(a, f"statistics {k}") for k, a in rec.items()})
    n = _metric(metrics, "num-samples", integer=True)
    if n < 1:
        raise BadReply(f"num-samples={n}: must be >= 1 (the FedAvg weight)")
    seconds, peak = _metric(metrics, "seconds"), _metric(metrics, "peak-memory-bytes", integer=True)
    own = {k[len(_METRIC_PREFIX) :]: float(v) for k, v in metrics.items()
           if k.startswith(_METRIC_PREFIX) and isinstance(v, (int, float))}  # fmt: skip
    return ClientUpdate(state, int(n), fitted, float(seconds), int(peak), own)


def _metric(metrics: MetricRecord, key: str, *, integer: bool = False) -> float:
    v = metrics.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise BadReply(f"metrics: {key} is {v!r}, expected {'an integer' if integer else 'a number'}")
    if not math.isfinite(v) or v < 0:
        raise BadReply(f"metrics: {key}={v} must be finite and >= 0")
    return v


def decode_reply(
    reply: Message | None, expected: Mapping[str, Tensor], *, stats: bool, timeout: float | None
) -> tuple[ClientUpdate | ClientFailure, int]:
    """``(update or failure, payload bytes that arrived)`` for one chosen client's reply, or for
    its absence (``reply=None``). Never raises: whatever is wrong with the reply becomes the
    ``ClientFailure`` reason that ``server_round`` logs."""
    if reply is None:
        waited = f" within {timeout:g} s" if timeout is not None else ""
        return ClientFailure(f"no reply{waited} (the client died, or timed out)"), 0
    if reply.has_error():
        reason = last_line(reply.error.reason)
        return ClientFailure(f"replied with error {reply.error.code}: {reason}"), 0
    content = reply.content
    try:
        nbytes = content_nbytes(content)
    except Exception:  # noqa: BLE001 - a record that cannot even be measured is still the client's fault
        nbytes = 0
    try:
        return decode_update(content, expected, stats=stats), nbytes
    except VvkError as e:
        return ClientFailure(e.message, nbytes), nbytes
    except Exception as e:  # noqa: BLE001 - malformed content must drop the client, not end the run
        return ClientFailure(f"malformed reply ({type(e).__name__}: {e})", nbytes), nbytes


def last_line(reason: str | None) -> str:
    """The informative end of a Flower error reason: ``<class 'T'>:<'text'>``, where the text is
    one line (the exception's message) or, from a Ray actor, a whole remote traceback."""
    text = (reason or "").strip()
    kind = ""
    if m := re.fullmatch(r"<class '([^']+)'>:<'(.*)'>", text, re.S):
        kind, text = m.group(1).rsplit(".", 1)[-1], m.group(2)
    lines = [line.strip() for line in text.splitlines() if line.strip()] or ["(no reason given)"]
    text = f"{kind}: {lines[0]}" if kind and len(lines) == 1 else lines[-1]
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."
