"""`vvk models list --flops`."""

from __future__ import annotations

import json

import pytest


def test_flops_adds_macs_in_json_and_table(cli):
    result = cli("models", "list", "r3d-rs-50", "--flops", "--json")
    assert result.code == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["params"] == pytest.approx(47.31e6, rel=0.005)
    assert row["macs"] == pytest.approx(88.0e9, rel=0.005)
    table = cli("models", "list", "spinenet-mobile-4*", "--flops")
    assert table.code == 0, table.stderr
    assert "MACs" in table.stdout and "785.08M" in table.stdout and "spinenet-mobile-49xs" in table.stdout


def test_without_flops_no_macs_are_counted(cli, monkeypatch):
    def forbidden(*_a, **_k):
        raise AssertionError("MACs counted without --flops")

    monkeypatch.setattr("vvk.models.profile.count_macs_by_name", forbidden)
    result = cli("models", "list", "vatt-*-tiny", "--json")
    assert result.code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["name"] for r in rows] == [
        "vatt-audio-tiny",
        "vatt-text-tiny",
        "vatt-ut-tiny",
        "vatt-video-tiny",
    ]
    assert all("macs" not in r for r in rows)


def test_weights_column_names_the_entries_of_each_model(cli, monkeypatch):
    from vvk.weights import Source, WeightsEntry

    def entry(name: str, architecture: str) -> WeightsEntry:
        return WeightsEntry(
            name=name,
            architecture=architecture,
            task="video-backbone",
            source=Source(kind="url", url=f"https://example.org/{name}.safetensors"),
            file=f"{name}.safetensors",
            sha256="0" * 64,
            license="MIT",
            paper="https://example.org",
            metrics={},
        )

    registry = {
        e.name: e
        for e in (
            entry("r3d-tiny.a", "r3d-tiny"),
            entry("r3d-tiny.b", "r3d-tiny"),
            entry("tv.x", "torchvision:r3d_18"),
        )
    }
    monkeypatch.setattr("vvk.weights.load_registry", lambda path=None: registry)
    result = cli("models", "list", "r3d-*tiny", "--json")
    assert result.code == 0, result.stderr
    weights = {row["name"]: row["weights"] for row in map(json.loads, result.stdout.splitlines())}
    assert weights == {"r3d-tiny": ["r3d-tiny.a", "r3d-tiny.b"], "r3d-y-tiny": []}
    table = cli("models", "list", "r3d-*tiny")
    assert table.code == 0, table.stderr
    assert "r3d-tiny.a, r3d-tiny.b" in table.stdout and "weights" in table.stdout
