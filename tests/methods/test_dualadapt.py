"""DualAdapt's framework-free core (vvk.methods.federate): FedAvg on hand-made states,
the feature statistics (fit, wire format, validation), the client losses, what the client and
server steps may change, and a tiny run of every method on real digits (MNIST -> USPS)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from vvk.errors import VvkError
from vvk.methods.federate import rounds
from vvk.methods.federate.dualadapt import (
    _MixtureTable,
    client_adapt,
    client_feature_stats,
    information_maximisation_loss,
    server_step,
)
from vvk.methods.federate.memory import measure
from vvk.methods.federate.models import DigitNet, accuracy, build_model, fedavg, state_nbytes
from vvk.methods.federate.rounds import PRESETS, run_rounds
from vvk.methods.federate.stats import BadFeatureStats, FeatureStats, fit_feature_stats

# --- FedAvg and bytes -----------------------------------------------------------------------


def test_fedavg_weights_by_sample_count():
    a = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(10)}
    b = {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(21)}
    out = fedavg([(a, 1), (b, 3)])
    # (1 * [1, 2] + 3 * [3, 6]) / 4 = [2.5, 5]; (10 + 63) / 4 = 18.25 -> 18
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0]))
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert out["bn.num_batches_tracked"].item() == 18


def test_fedavg_keeps_dtype_ignores_zero_weights_and_refuses_mismatches():
    half = {"w": torch.tensor([1.0], dtype=torch.float16)}
    other = {"w": torch.tensor([100.0], dtype=torch.float16)}
    out = fedavg([(half, 2), (other, 0)])
    assert out["w"].dtype == torch.float16 and out["w"].item() == 1.0
    with pytest.raises(VvkError, match="different entries"):
        fedavg([(half, 1), ({"v": torch.zeros(1)}, 1)])
    with pytest.raises(VvkError, match="shapes"):
        fedavg([(half, 1), ({"w": torch.zeros(2)}, 1)])
    with pytest.raises(VvkError, match="positive sum"):
        fedavg([(half, 0)])


def test_state_nbytes():
    state = {
        "a": torch.zeros(3),
        "b": torch.zeros(2, dtype=torch.int64),
        "c": torch.zeros(4, dtype=torch.half),
    }
    assert state_nbytes(state) == 3 * 4 + 2 * 8 + 4 * 2


# --- feature statistics ---------------------------------------------------------------------


def _gaussian_classes(means, stds, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    for c, (m, s) in enumerate(zip(means, stds, strict=True)):
        m, s = torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
        feats.append(m + s * torch.randn(n, len(m), generator=gen, dtype=torch.float64))
        labels.append(torch.full((n,), c))
    return torch.cat(feats).float(), torch.cat(labels)


def test_fit_recovers_known_means_and_variances():
    means = [[0.0, 1.0, -2.0], [5.0, 5.0, 5.0], [-3.0, 0.0, 2.0]]
    stds = [[1.0, 0.5, 2.0], [0.2, 0.2, 0.2], [3.0, 1.0, 0.1]]
    x, y = _gaussian_classes(means, stds, n=20000)
    stats = fit_feature_stats(x, y, num_classes=4, min_variance=0.0)  # class 3 has no sample
    assert stats.means.shape == (4, 1, 3) and stats.variances.shape == (4, 1, 3)
    np.testing.assert_allclose(stats.means[:3, 0], means, atol=0.05)
    np.testing.assert_allclose(stats.variances[:3, 0], np.square(stds), rtol=0.05)
    np.testing.assert_array_equal(stats.counts, [20000, 20000, 20000, 0])
    np.testing.assert_array_equal(stats.weights[:, 0], [1, 1, 1, 0])
    stats.validate(4, 3)


def test_fit_mixture_recovers_two_modes_and_their_weights():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3000, 2, generator=gen) * 0.5 + torch.tensor([-4.0, 0.0])
    b = torch.randn(7000, 2, generator=gen) * 0.5 + torch.tensor([4.0, 1.0])
    stats = fit_feature_stats(torch.cat([a, b]), torch.zeros(10000, dtype=torch.long), 1, components=2)
    order = np.argsort(stats.means[0, :, 0])
    np.testing.assert_allclose(stats.means[0, order], [[-4, 0], [4, 1]], atol=0.05)
    np.testing.assert_allclose(stats.weights[0, order], [0.3, 0.7], atol=0.01)
    np.testing.assert_allclose(stats.variances[0, order], 0.25, rtol=0.1)


def test_fit_full_covariance():
    gen = torch.Generator().manual_seed(2)
    mix = torch.tensor([[1.0, 0.0], [0.8, 0.6]])  # cov = mix @ mix.T = [[1, .8], [.8, 1]]
    x = torch.randn(20000, 2, generator=gen) @ mix.T
    stats = fit_feature_stats(x, torch.zeros(20000, dtype=torch.long), 1, diagonal=False, min_variance=0.0)
    assert stats.variances.shape == (1, 1, 2, 2) and not stats.diagonal
    np.testing.assert_allclose(stats.variances[0, 0], [[1.0, 0.8], [0.8, 1.0]], atol=0.03)
    stats.validate(1, 2)


def test_fit_with_fewer_samples_than_components():
    stats = fit_feature_stats(torch.tensor([[1.0, 2.0]]), torch.tensor([0]), 2, components=3)
    np.testing.assert_array_equal(stats.weights, [[1, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(stats.means[0, 0], [1, 2])
    stats.validate(2, 2)


def _stats() -> FeatureStats:
    x, y = _gaussian_classes([[0.0, 0.0], [3.0, 3.0], [-3.0, 3.0]], [[1.0, 1.0]] * 3, n=50)
    return fit_feature_stats(x, y, 3, components=2)


def test_stats_round_trip_through_arrays():
    stats = _stats()
    arrays = stats.to_arrays()
    assert set(arrays) == {"means", "variances", "weights", "counts"}
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    back = FeatureStats.from_arrays({k: a.copy() for k, a in arrays.items()})
    for k in arrays:
        np.testing.assert_array_equal(getattr(back, k), arrays[k])
        assert getattr(back, k).dtype == arrays[k].dtype
    # 3 classes x 2 components x 2 dims, float32 means and variances; float32 weights; int64 counts
    assert stats.nbytes == back.nbytes == 4 * (12 + 12 + 6) + 8 * 3
    assert back.validate(3, 2) is back


def _set(stats: FeatureStats, name: str, index, value) -> FeatureStats:
    arrays = {k: a.copy() for k, a in stats.to_arrays().items()}
    arrays[name][index] = value
    return FeatureStats.from_arrays(arrays)


@pytest.mark.parametrize(
    "make, num_classes, dim, message",
    [
        (lambda s: s, 10, 2, r"means has shape \(3, 2, 2\), expected \(10, 2, 2\)"),
        (lambda s: s, 3, 128, r"means has shape \(3, 2, 2\), expected \(3, 2, 128\)"),
        (lambda s: _set(s, "means", (1, 0, 1), np.nan), 3, 2, "means holds NaN or inf"),
        (lambda s: _set(s, "variances", (0, 1, 0), np.inf), 3, 2, "variances holds NaN or inf"),
        (lambda s: _set(s, "variances", (2, 0, 1), -0.5), 3, 2, "variances has negative values"),
        (lambda s: _set(s, "weights", (0, slice(None)), [1.5, -0.5]), 3, 2, "weights has negative values"),
        (lambda s: _set(s, "counts", 1, -4), 3, 2, "counts has negative values"),
        (lambda s: _set(s, "weights", (1, 0), 0.0), 3, 2, "weights sum to"),
        (lambda s: dataclasses.replace(s, weights=s.weights[:, :1]), 3, 2, "weights has shape"),
    ],
)
def test_validate_rejects(make, num_classes, dim, message):
    with pytest.raises(BadFeatureStats, match=message):
        make(_stats()).validate(num_classes, dim)


def test_validate_rejects_a_covariance_that_is_not_one():
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    stats = fit_feature_stats(x, torch.zeros(100, dtype=torch.long), 1, diagonal=False)
    with pytest.raises(BadFeatureStats, match="not symmetric"):
        _set(stats, "variances", (0, 0, 0, 1), 5.0).validate(1, 2)
    with pytest.raises(BadFeatureStats, match="variances has negative values"):
        _set(stats, "variances", (0, 0), [[1.0, 2.0], [2.0, 1.0]]).validate(1, 2)  # eigenvalue -1


def test_from_arrays_names_what_is_missing_or_not_numeric():
    arrays = _stats().to_arrays()
    with pytest.raises(BadFeatureStats, match="missing counts"):
        FeatureStats.from_arrays({k: v for k, v in arrays.items() if k != "counts"})
    with pytest.raises(BadFeatureStats, match="weights has dtype"):
        FeatureStats.from_arrays(arrays | {"weights": np.array(["a", "b"])})


def test_sampled_features_come_from_the_labels_class():
    means = np.zeros((3, 1, 2), np.float32)
    means[:, 0] = [[0, 0], [10, 10], [-10, 5]]
    tight = FeatureStats(means, np.full((3, 1, 2), 1e-10, np.float32), np.array([[1], [1], [0]], np.float32),
                         np.array([4, 2, 0]))  # fmt: skip
    table = _MixtureTable([tight, tight], torch.device("cpu"))
    feats, found = table.sample(torch.tensor([1, 0, 2, 1]), torch.Generator().manual_seed(0))
    expected = torch.tensor([[10.0, 10.0], [0.0, 0.0], [10.0, 10.0]])
    torch.testing.assert_close(feats[[0, 1, 3]], expected, atol=1e-3, rtol=0)  # std 1e-5
    assert found.tolist() == [True, True, False, True]  # no client saw class 2


# --- client losses and steps ----------------------------------------------------------------


def test_information_maximisation_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = [.5, .5] and [.75, .25]
    h1, h2 = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    h_mean = -(0.625 * math.log(0.625) + 0.375 * math.log(0.375))  # mean p = [.625, .375]
    assert information_maximisation_loss(logits).item() == pytest.approx((h1 + h2) / 2 - h_mean, abs=1e-6)
    assert information_maximisation_loss(logits, diversity_weight=0).item() == pytest.approx((h1 + h2) / 2)


def _tiny_model(seed=0) -> DigitNet:
    torch.manual_seed(seed)
    return DigitNet(num_classes=10, feature_dim=16, width=4).eval()


def _images(n=24, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_self_training_trains_only_on_confident_pseudo_labels():
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"method": "self-training", "steps": 3, "batch_size": 8, "lr": 0.1, "seed": 0}
    nothing = client_adapt(model, _images(), confidence=1.0, **kwargs)
    assert nothing.metrics["confident_fraction"] == 0.0 and math.isnan(nothing.metrics["loss"])
    assert set(nothing.state) == {k for k in before if k.startswith("features.")}
    assert _same(nothing.state, {k: before[k] for k in nothing.state})  # BN buffers included
    assert nothing.stats is not None and nothing.stats.validate(10, 16)
    trained = client_adapt(model, _images(), confidence=0.0, **kwargs)
    assert trained.metrics["confident_fraction"] == 1.0
    assert not torch.equal(trained.state["features.0.weight"], before["features.0.weight"])
    assert _same(model.state_dict(), before)  # the global model is left alone


@pytest.mark.parametrize("method", ["entropy", "both"])
def test_entropy_methods_train_without_confident_labels(method):
    model = _tiny_model()
    update = client_adapt(
        model, _images(), method=method, steps=2, batch_size=8, lr=0.1, seed=0, confidence=1.0
    )
    assert not torch.equal(update.state["features.0.weight"], model.state_dict()["features.0.weight"])
    assert update.nbytes == state_nbytes(update.state) + update.stats.nbytes


def test_client_training_the_whole_model_sends_all_of_it():
    model = _tiny_model()
    update = client_adapt(model, _images(), method="entropy", steps=1, batch_size=8, lr=0.1, seed=0,
                          trains="model", stats=False)  # fmt: skip
    assert update.state.keys() == model.state_dict().keys() and update.stats is None
    assert update.seconds > 0 and update.peak_memory_bytes > 0


# --- the server step ------------------------------------------------------------------------


def _server_inputs(model):
    X, y = _images(40, seed=1), torch.arange(40) % 10
    stats = [client_feature_stats(model, _images(30, seed=s)) for s in (2, 3)]
    return X, y, stats


def test_server_mixup_step_trains_only_the_classifier():
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X, y, stats = _server_inputs(model)
    losses = server_step(model, X, y, stats, steps=3, batch_size=16, lr=0.1, mixup_alpha=1.0, seed=0)
    assert losses["mixed_loss"] > 0 and losses["source_loss"] > 0
    after = model.state_dict()
    features = [k for k in before if k.startswith("features.")]
    assert _same({k: after[k] for k in features}, {k: before[k] for k in features})  # bit-identical
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])


def test_server_step_on_the_whole_model_moves_the_features():
    model = _tiny_model()
    before = model.features[0].weight.clone()
    X, y, stats = _server_inputs(model)
    server_step(model, X, y, stats, steps=2, batch_size=16, lr=0.1, mixup_alpha=0.5, seed=0, trains="model")
    assert not torch.equal(model.features[0].weight, before)


def test_server_step_refuses_bad_statistics():
    model = _tiny_model()
    X, y, stats = _server_inputs(model)
    with pytest.raises(BadFeatureStats, match="NaN"):
        server_step(model, X, y, [_set(stats[0], "means", (0, 0, 0), np.nan)], steps=1, batch_size=8, lr=0.1,
                    mixup_alpha=1.0, seed=0)  # fmt: skip


def test_accuracy_and_build_model():
    model = _tiny_model()
    X = _images(20)
    pred = model(X).argmax(1)
    assert accuracy(model, X, pred, batch_size=7) == 1.0
    assert accuracy(model, X, (pred + 1) % 10) == 0.0
    assert isinstance(build_model("digit-cnn", 10), DigitNet)
    # image backbones: tests/methods/test_federate_models.py
    with pytest.raises(VvkError, match="backbone=resnet18: unknown model"):
        build_model("resnet18", 10)


# --- rounds on real digits ------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(shared_data):
    from vvk.data.domains import load_domain, split

    source = split(load_domain("mnist", size=32), test=300, seed=0)[1]  # 300 items, every class
    target = split(load_domain("usps", size=32), test=200, seed=0)[1]
    return source, target


def _bytes(method, model_state, features_state, stats_nbytes):
    return {
        "dualadapt": state_nbytes(features_state) + stats_nbytes,
        "fedavg-st": state_nbytes(features_state),
        "server-only": stats_nbytes,
        "oracle": state_nbytes(model_state),
    }[method]


@pytest.mark.parametrize("method", ["dualadapt", "fedavg-st", "server-only", "oracle", "source-only"])
def test_run_rounds_on_mnist_to_usps(digits, method):
    source, target = digits
    seen = []
    records = run_rounds(method, source, [target], rounds=2, clients_per_round=2, seed=0, preset="tiny",
                         clients_per_target=2, on_round=seen.append)  # fmt: skip
    assert seen == records
    assert [r.round for r in records] == ([0] if method == "source-only" else [0, 1, 2])
    model = build_model("digit-cnn", 10, feature_dim=PRESETS["tiny"].feature_dim)
    full = model.state_dict()
    feats = {k: v for k, v in full.items() if k.startswith("features.")}
    stats_nbytes = 4 * (10 * 16 * 2 + 10) + 8 * 10  # means, variances, weights; counts
    for r in records:
        assert set(r.accuracy) == {"usps"} and 0.0 <= r.accuracy["usps"] <= 1.0
        assert r.to_dict()["mean_accuracy"] == r.accuracy["usps"]
        if r.round == 0:
            assert r.clients == [] and r.server_seconds > 0
            continue
        assert r.clients == ["usps-0", "usps-1"] and r.dropped == []
        assert r.bytes_down == [state_nbytes(full)] * 2
        assert r.bytes_up == [_bytes(method, full, feats, stats_nbytes)] * 2
        assert all(s > 0 for s in r.client_seconds) and all(b > 0 for b in r.client_peak_bytes)


def test_methods_can_share_one_pretraining(digits):
    """``pretrained=``: the same run as pretraining itself; the shared model is left as it was."""
    source, target = digits
    shared = rounds.pretrained_model(source, PRESETS["tiny"], seed=3)
    before = {k: v.clone() for k, v in shared[0].state_dict().items()}
    kwargs = {"rounds": 2, "clients_per_round": 1, "seed": 3, "preset": "tiny"}
    alone = run_rounds("dualadapt", source, [target], **kwargs)
    reused = run_rounds("dualadapt", source, [target], pretrained=shared, **kwargs)
    assert [r.accuracy for r in reused] == [r.accuracy for r in alone]
    assert [r.bytes_up for r in reused] == [r.bytes_up for r in alone]
    assert all(torch.equal(v, before[k]) for k, v in shared[0].state_dict().items())
    assert shared[1].accuracy == {}  # round 0's record is copied, not filled in


def test_a_client_with_bad_statistics_is_dropped_for_the_round(digits, monkeypatch, caplog):
    source, target = digits
    clients = rounds.make_clients([target], clients_per_target=2)
    model = build_model("digit-cnn", 10, feature_dim=16)
    real, sent = rounds.client_work, {}

    def poisoned(method, model, client, preset, *, seed, device=None):
        update = sent[client.name] = real(method, model, client, preset, seed=seed, device=device)
        if client.name == "usps-1":
            update.stats = _set(update.stats, "means", (0, 0, 0), np.nan)
            update.state = {k: torch.full_like(v, 1e9) for k, v in update.state.items()}
        return update

    monkeypatch.setattr(rounds, "client_work", poisoned)
    record = rounds.federated_round(
        "dualadapt", model, source.tensors(), clients, PRESETS["tiny"], round=1, seed=0
    )
    assert record.dropped == ["usps-1"] and "client usps-1 dropped for the round" in caplog.text
    # FedAvg of the one client kept is that client's extractor; the server step moved the classifier
    state = model.state_dict()
    assert _same({k: state[k] for k in sent["usps-0"].state}, sent["usps-0"].state)
    assert torch.isfinite(state["classifier.weight"]).all()


def test_full_covariance_samples_have_that_covariance():
    cov = np.array([[[[1.0, 0.8], [0.8, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]], np.float32)  # the 2nd singular
    stats = FeatureStats(np.zeros((2, 1, 2), np.float32), cov, np.ones((2, 1), np.float32), np.array([5, 5]))
    table = _MixtureTable([stats.validate(2, 2)], torch.device("cpu"))
    for c in (0, 1):
        feats, _ = table.sample(torch.full((20000,), c), torch.Generator().manual_seed(c))
        np.testing.assert_allclose(np.cov(feats.T.numpy()), cov[c, 0], atol=0.05)


def test_peak_memory_counts_the_tensors_a_block_allocates():
    outside = torch.zeros(256 * 1024)  # 1 MiB held before: an input, not counted
    with measure(torch.device("cpu")) as usage:
        a = torch.empty(256 * 1024)  # 1 MiB
        a.add_(1)  # in place: no new storage
        view = outside[:10]  # a view of an input: none either
        del a, view
        b = torch.empty(512 * 1024)  # 2 MiB, after a was freed
        c = b * 2  # + 2 MiB: the peak, 4 MiB
        del b, c
        d = outside + 1  # 1 MiB
        del d
    assert usage.peak_bytes == 4 * 2**20 and usage.seconds > 0
