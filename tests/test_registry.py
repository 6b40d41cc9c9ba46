"""The model registry: registration rules, building, listing."""

from __future__ import annotations

import json

import pytest
from torch import nn

from vvk.errors import VvkError
from vvk.models import build, count_params, get_entry, list_models, register
from vvk.models.registry import ARCH_ATTR, unregister


@pytest.fixture
def toy_model():
    name = "test-toy-mlp"

    @register(name, task="image-backbone", default_input=(8,), source="tests")
    def toy(width: int = 4):
        return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 2))

    yield name
    unregister(name)


def test_duplicate_name_raises(toy_model):
    with pytest.raises(ValueError, match="already registered"):
        register(toy_model, task="image-backbone", default_input=(8,))(lambda: nn.Identity())


def test_build_records_architecture(toy_model):
    model = build(toy_model, width=6)
    assert getattr(model, ARCH_ATTR) == {"name": toy_model, "kwargs": {"width": 6}}
    assert count_params(model) == 8 * 6 + 6 + 6 * 2 + 2


def test_unknown_name_suggests_close_match(toy_model):
    with pytest.raises(VvkError, match="did you mean test-toy-mlp"):
        get_entry("test-toy-mpl")


def test_bad_builder_kwargs_are_a_vvk_error(toy_model):
    with pytest.raises(VvkError, match="test-toy-mlp"):
        build(toy_model, depth=3)


def test_list_filters(toy_model):
    assert toy_model in list_models("test-toy-*")
    assert toy_model in list_models(task="image-backbone")
    assert toy_model not in list_models(task="detection")


def test_models_list_command_counts_params(cli, toy_model):
    result = cli("models", "list", "test-toy-*", "--json")
    assert result.code == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row == {
        "name": toy_model,
        "task": "image-backbone",
        "params": 8 * 4 + 4 + 4 * 2 + 2,
        "default_input": [8],
        "source": "tests",
        "weights": [],
    }
