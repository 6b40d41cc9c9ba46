"""A real deployment on 127.0.0.1: ``flower-superlink``, three ``flower-supernode``s (each holding a
third of USPS, named by its node config) and ``flwr run`` of the app ``write_app`` writes, for
two rounds of MNIST -> USPS. Each SuperNode starts a ClientApp process per message, so this
takes minutes on one core; the small form uses 16x16 digits, VVK_TEST_FULL=1 32x32."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vvk.federated.deploy import write_app
from vvk.methods.federate.rounds import run_rounds

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on {port} after {seconds} s:\n{log.read_text()[-2000:]}")


@contextlib.contextmanager
def _started(commands: list[tuple[list[str], Path]], env: dict):
    """Start each command in a session of its own (its ClientApp and ServerApp processes join
    it), and end each session at the end: SIGTERM, then SIGKILL after 30 s."""
    procs = []
    try:
        for args, log in commands:
            with open(log, "w") as f:
                procs.append(subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True))  # fmt: skip
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.mark.slow
def test_a_superlink_and_three_supernodes_run_two_rounds(tmp_path, shared_data, full_scale):
    from vvk.data.domains import load_domain

    size = 32 if full_scale else 16
    home, out = tmp_path / "flwr-home", tmp_path / "run"
    env = os.environ | {"FLWR_HOME": str(home), "OMP_NUM_THREADS": "1", "VVK_TEST_DATA": str(shared_data)}
    link = _free_port()
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    config = {"source": "mnist", "targets": "usps", "clients-per-target": 3, "clients-per-round": 3,
              "rounds": 2, "preset": "tiny", "size": size, "out": str(out), "node-timeout": 120.0,
              "reply-timeout": 300.0}  # fmt: skip
    app = write_app(tmp_path / "vvk-federate", config)
    superlink = [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                 "--host", "127.0.0.1", "--port", str(link)]  # fmt: skip
    nodes = [[str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}", "--port",
              str(_free_port()), "--node-config", f'target="usps" part={k}'] for k in range(3)]  # fmt: skip
    logs = [tmp_path / "superlink.log", *(tmp_path / f"supernode-{k}.log" for k in range(3))]
    start = time.perf_counter()
    with _started([(superlink, logs[0])], env) as (link_proc,):
        _wait_for_port(link, link_proc, logs[0])
        with _started(list(zip(nodes, logs[1:], strict=True)), env):
            flwr_run = [str(BIN / "flwr"), "run", str(app), "test", "--stream"]
            run = subprocess.run(flwr_run, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    took = time.perf_counter() - start
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (out / "records.json").is_file(), run.stdout[-3000:] + logs[0].read_text()[-3000:]
    records = json.loads((out / "records.json").read_text())
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records[1:]:
        assert r["clients"] == ["usps-0", "usps-1", "usps-2"] and r["dropped"] == []
        assert all(s > 0 for s in r["client_seconds"]) and all(b > 0 for b in r["bytes_up"])
    assert "round 2: mean accuracy" in run.stdout + run.stderr  # the server's log reaches `flwr run`
    # the same run in this process, single-threaded as the deployed processes are
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mnist, usps = load_domain("mnist", size=size), load_domain("usps", size=size)
        expected = run_rounds("dualadapt", mnist, [usps], rounds=2, clients_per_round=3, clients_per_target=3,
                              seed=0, preset="tiny")  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert [r["accuracy"] for r in records] == [r.accuracy for r in expected]
    print(f"deployment of 2 rounds: {took:.0f} s")
