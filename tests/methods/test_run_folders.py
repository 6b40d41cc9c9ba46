"""The run-folder helpers every training command shares (``vvk.methods.runs``)."""

from pathlib import Path

import pytest

from vvk.errors import VvkError
from vvk.methods.runs import recorded_preset


def test_a_resumed_run_keeps_its_preset():
    run, record = Path("runs/a"), {"preset": "tiny"}
    assert recorded_preset(record, None, run, presets=("tiny", "paper"), what="tracker") == "tiny"
    assert recorded_preset(record, "tiny", run, presets=("tiny",), what="tracker") == "tiny"
    with pytest.raises(VvkError, match=r"preset=paper: runs/a was trained with preset tiny") as given:
        recorded_preset(record, "paper", run, presets=("tiny", "paper"), what="tracker")
    assert given.value.params == ("preset",)
    with pytest.raises(VvkError, match="runs/a: its preset 'tiny' is not a detection preset any more"):
        recorded_preset(record, None, run, presets=("paper",), what="detection")
