"""vvk.federated.wire: models, tasks and client updates as Flower records, and what the server
does with a reply it cannot use (hand-made malicious ones): a ClientFailure, never an exception."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from vvk.federated.wire import (
    METRICS,
    STATE,
    STATS,
    Task,
    decode_reply,
    decode_task,
    decode_update,
    encode_task,
    encode_update,
    record_nbytes,
    state_record,
)
from vvk.methods.federate.dualadapt import client_adapt
from vvk.methods.federate.models import DigitNet, state_nbytes
from vvk.methods.federate.rounds import PRESETS, ClientFailure
from vvk.methods.federate.stats import BadFeatureStats


def _model() -> DigitNet:
    torch.manual_seed(0)
    return DigitNet(num_classes=4, feature_dim=8, width=4).eval()


@pytest.fixture(scope="module")
def update():
    X = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return client_adapt(_model(), X, method="both", steps=2, batch_size=8, lr=0.1, seed=0)


def _features(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


def test_a_state_dict_round_trips_bit_exactly_and_counts_its_payload():
    state = _model().state_dict()
    record = state_record(state)
    assert list(record) == list(state)  # the order too
    assert record_nbytes(record) == state_nbytes(state)  # payload, as run_rounds counts it
    back = record.to_torch_state_dict()
    assert all(torch.equal(back[k], state[k]) and back[k].dtype == state[k].dtype for k in state)


def test_a_task_round_trips_with_a_preset_made_in_python():
    preset = dataclasses.replace(PRESETS["tiny"], client_lr=0.05, components=2, diagonal=False)
    state = _model().state_dict()
    task = Task("dualadapt", 3, 123456789, preset, 4, ("a", "b", "c", "d"))
    got_state, got = decode_task(encode_task(state_record(state), task))
    assert got == task
    assert all(torch.equal(got_state[k], state[k]) for k in state)


def test_an_update_round_trips(update):
    model = _model()
    back = decode_update(encode_update(update), _features(model), stats=True)
    assert back.state.keys() == update.state.keys()
    assert all(torch.equal(back.state[k], update.state[k]) for k in update.state)
    for k, a in update.stats.to_arrays().items():
        np.testing.assert_array_equal(getattr(back.stats, k), a)
    assert (back.num_samples, back.seconds, back.peak_memory_bytes) == (
        update.num_samples, update.seconds, update.peak_memory_bytes)  # fmt: skip
    assert back.metrics == pytest.approx(update.metrics) and back.nbytes == update.nbytes


# --- malicious replies --------------------------------------------------------------------------


def _tampered(update, *, state=None, stats=None, metrics=None, drop=()) -> RecordDict:
    """The honest reply's content with some entries replaced (None: keep) and records dropped."""
    content = encode_update(update)
    records = dict(content)
    if state is not None:
        records[STATE] = ArrayRecord(dict(records[STATE]) | state)
    if stats is not None:
        records[STATS] = ArrayRecord(dict(records[STATS]) | stats)
    if metrics is not None:
        records[METRICS] = MetricRecord(dict(records[METRICS]) | metrics)
    return RecordDict({k: v for k, v in records.items() if k not in drop})


def _arr(a) -> Array:
    return Array(np.asarray(a))


def _without(record_key, entry):
    def make(update):
        content = dict(encode_update(update))
        content[record_key] = ArrayRecord({k: v for k, v in content[record_key].items() if k != entry})
        return RecordDict(content)

    return make


W = "features.0.weight"  # (4, 3, 3, 3) float32
JUNK = Array("float32", (4, 3, 3, 3), "numpy.ndarray", b"junk")
MALICIOUS = {
    "nan in the state": (
        lambda u: _tampered(u, state={W: _arr(np.full((4, 3, 3, 3), np.nan, np.float32))}),
        f"state entry {W} holds NaN or inf",
    ),
    "wrong shape": (
        lambda u: _tampered(u, state={W: _arr(np.zeros((4, 3, 3), np.float32))}),
        rf"state entry {W}: float32 \(4, 3, 3\), expected float32 \(4, 3, 3, 3\)",
    ),
    "wrong dtype": (
        lambda u: _tampered(u, state={W: _arr(np.zeros((4, 3, 3, 3), np.float64))}),
        f"state entry {W}: float64",
    ),
    "a missing entry": (_without(STATE, W), rf"1 entries missing \['{W}'\]"),
    "an extra entry": (
        lambda u: _tampered(u, state={"classifier.weight": _arr(np.zeros((4, 8), np.float32))}),
        r"1 unexpected \['classifier.weight'\]",
    ),
    "bytes that are no array": (lambda u: _tampered(u, state={W: JUNK}), f"state entry {W} does not decode"),
    "no statistics": (lambda u: _tampered(u, drop=(STATS,)), "feature statistics: missing from the reply"),
    "statistics without counts": (_without(STATS, "counts"), "feature statistics: missing counts"),
    "text for statistics": (
        lambda u: _tampered(u, stats={"means": _arr(np.array(["x", "y"]))}),
        "means has dtype <U1, not real numbers",
    ),
    "no sample": (lambda u: _tampered(u, metrics={"num-samples": 0}), r"num-samples=0: must be >= 1"),
    "negative samples": (lambda u: _tampered(u, metrics={"num-samples": -5}), "num-samples=-5"),
    "fractional samples": (lambda u: _tampered(u, metrics={"num-samples": 2.5}), "num-samples is 2.5"),
    "no metrics": (lambda u: _tampered(u, drop=(METRICS,)), "expected records state"),
    "a config record for the state": (
        lambda u: RecordDict(dict(encode_update(u)) | {STATE: ConfigRecord({"x": 1})}),
        "expected records state",
    ),
}


@pytest.fixture
def message(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    sent = Message(RecordDict(), dst_node_id=7, message_type="train", group_id="1")
    sent.metadata.__dict__["_message_id"] = "m1"
    return sent


@pytest.mark.parametrize("case", MALICIOUS)
def test_a_malformed_reply_is_a_failure_naming_the_fault(update, message, case):
    make, reason = MALICIOUS[case]
    content = make(update)
    got, nbytes = decode_reply(Message(content, reply_to=message), _features(_model()), stats=True, timeout=5)
    assert isinstance(got, ClientFailure)
    assert re.search(reason, got.reason), got.reason
    assert nbytes == got.nbytes >= 0


def test_statistics_of_another_model_decode_and_fail_validation_later(update, message):
    """Class count and dimension are the server's model's business: ``server_round`` validates
    them (and drops the client); decoding lets them through."""
    five = {k: _arr(np.concatenate([a, a[:1]])) for k, a in update.stats.to_arrays().items()}  # 5 classes
    got, _ = decode_reply(Message(_tampered(update, stats=five), reply_to=message), _features(_model()),
                          stats=True, timeout=5)  # fmt: skip
    with pytest.raises(BadFeatureStats, match=r"means has shape \(5, 1, 8\), expected \(4, 1, 8\)"):
        got.stats.validate(4, 8)


def test_no_reply_and_an_error_reply_are_failures(message):
    got, nbytes = decode_reply(None, {}, stats=False, timeout=30)
    assert got.reason == "no reply within 30 s (the client died, or timed out)" and nbytes == 0
    reason = (
        "<class 'ray.exceptions.RayTaskError'>:<'Traceback...\n  File x\nException occurred. Message: boom'>"
    )
    got, _ = decode_reply(
        Message(Error(code=2, reason=reason), reply_to=message), {}, stats=False, timeout=None
    )
    assert got.reason == "replied with error 2: Exception occurred. Message: boom"


def test_statistics_are_ignored_for_methods_that_send_none(update, message):
    got, nbytes = decode_reply(Message(encode_update(update), reply_to=message), _features(_model()),
                               stats=False, timeout=5)  # fmt: skip
    assert got.stats is None and not math.isnan(got.seconds)
    assert nbytes == update.nbytes  # what arrived, statistics included
