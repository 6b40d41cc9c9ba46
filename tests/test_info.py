"""`vvk info`: versions, devices, kernel backends, decoders."""

from __future__ import annotations

import json

import torch


def test_info_json_reports_environment(cli):
    result = cli("info", "--json")
    assert result.code == 0, result.stderr
    (report,) = [json.loads(line) for line in result.stdout.splitlines()]
    for key in (
        "vvk",
        "python",
        "packages",
        "cuda_available",
        "devices",
        "kernel_backends",
        "video_decoders",
    ):
        assert key in report
    for pkg in ("torch", "torchvision", "triton", "av", "open_clip"):
        assert pkg in report["packages"]
    assert report["packages"]["torch"] == torch.__version__.split("+")[0] or report["packages"]["torch"] in (
        torch.__version__
    )
    assert report["cuda_available"] == torch.cuda.is_available()
    assert report["kernel_backends"]["reference"]["usable"] is True
    assert report["kernel_backends"]["cuda"]["usable"] == (
        torch.cuda.is_available() and report["kernel_backends"]["cuda"]["usable"]
    )
    assert report["video_decoders"]["pyav"]["usable"] is True


def test_triton_interpreter_is_reported_usable_on_cpu(monkeypatch):
    from vvk.kernels.backends import available_backends

    if torch.cuda.is_available():
        return
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert available_backends()["triton"]["usable"] is True
    monkeypatch.delenv("TRITON_INTERPRET")
    status = available_backends()["triton"]
    assert status["usable"] is False and "TRITON_INTERPRET" in status["detail"]


def test_info_table_goes_to_stdout(cli):
    result = cli("info")
    assert result.code == 0
    assert "kernel:reference" in result.stdout
