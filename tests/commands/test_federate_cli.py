"""``vvk federate``: flags reach the run, one line per round, a JSON summary, the run folder; and
one real Flower simulation on the shared digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vvk.methods.federate.rounds import RoundRecord
from vvk.methods.federate.run import FederateResult, resolve_settings


def _records(rounds: int) -> list[RoundRecord]:
    first = RoundRecord(0, {"usps": 0.5, "mnist-m": 0.25})
    later = [
        RoundRecord(r, {"usps": 0.5 + r / 10, "mnist-m": 0.25}, clients=["usps", "mnist-m"],
                    bytes_up=[2_000_000, 1_000_000], bytes_down=[3_000_000] * 2, client_seconds=[1.0, 3.0],
                    client_peak_bytes=[10, 30], server_seconds=0.5, dropped=["mnist-m"] * (r == 2))
        for r in range(1, rounds + 1)
    ]  # fmt: skip
    return [first, *later]


def test_the_choices_are_the_librarys():
    from vvk.commands import federate as command
    from vvk.methods import federate as library

    assert command.METHODS == library.METHODS
    assert command.CLIENT_METHODS == library.dualadapt.CLIENT_METHODS
    assert tuple(library.PRESETS) == command.PRESETS


def test_flags_reach_the_run_and_each_round_is_one_line(cli, monkeypatch, tmp_path):
    seen = {}

    def fake(source, targets, **kwargs):
        seen.update(kwargs, source=source, targets=targets)
        records = _records(2)
        for record in records:
            kwargs["on_round"](record)
        settings = resolve_settings(kwargs["preset"], kwargs["overrides"], backbone=kwargs["backbone"])
        return FederateResult(tmp_path / "run", "fedavg-st", settings, 32, records)

    monkeypatch.setattr("vvk.methods.federate.run.federate", fake)
    result = cli(
        "federate", "--source", "mnist", "--targets", "usps", "mnist-m", "--method", "fedavg-st",
        "--rounds", "2", "--clients-per-round", "1", "--clients-per-target", "2", "--preset", "tiny",
        "--set", "client_steps=3", "--client-method", "entropy", "--backbone", "digit-cnn", "--size", "28",
        "--seed", "5", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert (seen["source"], seen["targets"], seen["method"], seen["rounds"]) == (
        "mnist", ["usps", "mnist-m"], "fedavg-st", 2)  # fmt: skip
    assert (seen["clients_per_round"], seen["clients_per_target"], seen["preset"], seen["overrides"]) == (
        1, 2, "tiny", ["client_steps=3"])  # fmt: skip
    assert (seen["client_method"], seen["backbone"], seen["size"], seen["seed"], seen["out"]) == (
        "entropy", "digit-cnn", 28, 5, tmp_path / "run")  # fmt: skip
    lines = result.stderr.splitlines()
    assert "source model: usps 0.500  mnist-m 0.250  mean 0.375" in lines
    # per client: (2 + 1) MB / 2 up, 3 MB down, (1 + 3) s / 2
    assert any(line.startswith("round 1/2: usps 0.600") and "up 1.50 MB, down 3.00 MB, 2.0 s" in line
               and "server 0.5 s" in line and "dropped" not in line for line in lines)  # fmt: skip
    assert any(line.startswith("round 2/2") and line.endswith("dropped: mnist-m") for line in lines)
    assert f"run: {tmp_path / 'run'}" in result.stderr


def test_json_is_a_line_per_round_then_the_summary(cli, monkeypatch, tmp_path):
    def fake(source, targets, **kwargs):
        records = _records(1)
        for record in records:
            kwargs["on_round"](record)
        return FederateResult(tmp_path, "dualadapt", resolve_settings("tiny"), 32, records)

    monkeypatch.setattr("vvk.methods.federate.run.federate", fake)
    result = cli("federate", "--source", "mnist", "usps", "--json")  # a target may follow as an argument
    assert result.code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row.get("round") for row in rows[:2]] == [0, 1]
    summary = rows[2]
    assert summary["accuracy"] == {"usps": 0.6, "mnist-m": 0.25}
    assert summary["source_only_accuracy"] == {"usps": 0.5, "mnist-m": 0.25}
    assert summary["bytes_up_per_client_round"] == 1_500_000
    assert summary["client_peak_bytes"] == 30 and summary["rounds"] == 1


def test_domains_are_checked_before_any_training(shared_data, tmp_path):
    from vvk.errors import VvkError
    from vvk.methods.federate.run import federate

    office = shared_data / "domains" / "office_caltech10"
    with pytest.raises(VvkError, match=r"targets=.*dslr: its classes \(backpack, bike"):
        federate("sklearn-digits", [office / "dslr"], out=tmp_path / "run")
    with pytest.raises(VvkError, match="targets=sklearn-digits: a second domain named 'sklearn-digits'"):
        federate("usps", ["sklearn-digits", "sklearn-digits"], out=tmp_path / "run")
    with pytest.raises(VvkError, match="clients_per_round=3: there are 2 clients"):
        federate("usps", ["sklearn-digits"], clients_per_target=2, clients_per_round=3, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_real_simulation_on_the_shared_digits(cli, shared_data, tmp_path):
    """Flower's simulation, end to end: MNIST's 2,000 digits -> USPS and scikit-learn's digits,
    one round of the tiny preset; the run folder holds what the lines said."""
    out = tmp_path / "run"
    result = cli("federate", "--source", "mnist", "--targets", "usps", "sklearn-digits", "--preset", "tiny",
                 "--rounds", "1", "--out", str(out), "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row.get("round") for row in rows[:-1]] == [0, 1]
    summary = rows[-1]
    assert set(summary["accuracy"]) == {"usps", "sklearn-digits"}
    assert all(0.0 <= a <= 1.0 for a in summary["accuracy"].values())
    assert summary["bytes_up_per_client_round"] > 0 and summary["bytes_down_per_client_round"] > 0
    saved = json.loads((out / "records.json").read_text())
    records = saved["records"] if isinstance(saved, dict) else saved
    assert [r["round"] for r in records] == [0, 1]
    assert records[-1]["accuracy"] == rows[1]["accuracy"]
    assert Path(summary["out"]) == out
