"""The deployed apps' configuration: which data a SuperNode holds by its node config, the
server's plan from the run config, and the app folder for ``flwr run`` (checked by Flower's own
validation). scikit-learn's digits stand in for a domain: no shared data needed."""

from __future__ import annotations

import pytest
import tomli
import torch
from flwr.app import Context, RecordDict
from flwr.common.config import validate_config

from vvk.data.domains import load_domain
from vvk.errors import VvkError
from vvk.federated import simulate
from vvk.federated.client import _LOADED, NodeDomains
from vvk.federated.deploy import write_app
from vvk.federated.server import RUN_CONFIG_DEFAULTS, plan_from_run_config
from vvk.methods.federate.rounds import make_clients, run_rounds

RUN = {"targets": "sklearn-digits", "clients-per-target": 3, "seed": 5, "size": 8}


def _context(node_config: dict, run_config: dict = RUN) -> Context:
    return Context(run_id=1, node_id=9, node_config=node_config, state=RecordDict(), run_config=run_config)


@pytest.mark.parametrize("node", [{"target": "sklearn-digits", "part": 1}, {"partition-id": 1}])
def test_a_node_holds_what_make_clients_gives_that_client(node):
    held = NodeDomains()(_context(node))
    client = make_clients([load_domain("sklearn-digits", size=8)], clients_per_target=3, seed=5)[1]
    assert held.client.name == client.name == "sklearn-digits-1"
    assert torch.equal(held.client.X, client.X) and torch.equal(held.client.y, client.y)
    assert held.classes == tuple(str(d) for d in range(10))
    assert NodeDomains()(_context(node)) is held  # loaded once per process


@pytest.mark.parametrize(
    "node, message",
    [
        ({}, "node config: give target=SPEC"),
        ({"target": "sklearn-digits", "part": 3}, "part=3: the run splits each target into 3 parts"),
        ({"partition-id": 3}, r"partition-id=3: the run has 3 clients \(1 targets x 3\)"),
        ({"partition-id": -1}, "partition-id=-1: expected a non-negative integer"),
    ],
)
def test_a_node_config_that_names_no_client_is_an_error(node, message):
    with pytest.raises(VvkError, match=message):
        NodeDomains()(_context(node))


def test_the_server_plans_its_run_from_the_run_config():
    config = {"source": "sklearn-digits", "targets": "sklearn-digits", "clients-per-target": 2, "size": 8,
              "rounds": 4, "clients-per-round": 2, "preset": "tiny", "reply-timeout": 0.0}  # fmt: skip
    plan = plan_from_run_config(config)
    assert plan.clients == ("sklearn-digits-0", "sklearn-digits-1") and plan.rounds == 4
    assert list(plan.evals) == ["sklearn-digits"] and plan.reply_timeout is None  # 0: wait for ever
    assert plan.preset.pretrain_steps == 4 and plan.out is None
    with pytest.raises(VvkError, match="clients_per_round=3: must be 1..2"):
        plan_from_run_config(config | {"clients-per-round": 3})


def test_the_app_folder_passes_flowers_validation(tmp_path):
    folder = write_app(tmp_path / "vvk-federate", {"rounds": 3, "out": "/runs/a b", "reply-timeout": 60})
    config = tomli.loads((folder / "pyproject.toml").read_text())
    assert validate_config(config, check_module=True, project_dir=folder)[:2] == (True, [])
    run_config = config["tool"]["flwr"]["app"]["config"]
    assert run_config == RUN_CONFIG_DEFAULTS | {"rounds": 3, "out": "/runs/a b", "reply-timeout": 60.0}
    with pytest.raises(VvkError, match="unknown key round"):
        write_app(tmp_path / "vvk-federate", {"round": 3})
    with pytest.raises(VvkError, match="letter, then letters, digits, hyphens"):
        write_app(tmp_path / "vvk_federate")


def test_source_only_simulates_without_starting_ray(domains, monkeypatch):
    import flwr.simulation

    monkeypatch.setattr(flwr.simulation, "run_simulation", None)  # would fail if called
    source, targets = domains
    kw = {"rounds": 3, "clients_per_round": 1, "seed": 0, "preset": "tiny"}
    records = simulate("source-only", source, targets, **kw)
    expected = run_rounds("source-only", source, targets, **kw)
    assert [r.accuracy for r in records] == [r.accuracy for r in expected] and len(records) == 1


@pytest.fixture(autouse=True)
def _fresh_cache():
    _LOADED.clear()
    yield
    _LOADED.clear()
