"""``vvk info``: versions, devices, kernel backends and video decoders of this machine."""

from __future__ import annotations

from vvk.commands._options import JsonOpt
from vvk.commands._output import Output


def info(json_output: JsonOpt = False) -> None:
    """Show versions, CUDA devices, usable kernel backends and video decoders.

    EXAMPLES: vvk info  ·  vvk info --json | jq .kernel_backends
    """
    from vvk.env import environment_report

    report = environment_report()
    out = Output(json_output)
    if json_output:
        out.record(report)
        return
    rows = [{"item": "vvk", "value": report["vvk"]}, {"item": "python", "value": report["python"]}]
    rows += [
        {"item": name, "value": version or "not installed"} for name, version in report["packages"].items()
    ]
    devices = ", ".join(report["devices"]) or "none"
    rows.append({"item": "cuda", "value": f"{report['cuda_available']} (devices: {devices})"})
    for group in ("kernel_backends", "video_decoders"):
        for name, status in report[group].items():
            mark = "usable" if status["usable"] else "unavailable"
            rows.append({"item": f"{group.split('_')[0]}:{name}", "value": f"{mark}: {status['detail']}"})
    out.table(rows, [("item", "item"), ("value", "value")], title="vvk environment")
