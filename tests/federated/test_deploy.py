"""A real deployment on 127.0.0.1 through the command line: ``vvk federate server`` (Flower's
SuperLink and ``flwr run`` of the app ``write_app`` writes) and three ``vvk federate client``s
(SuperNodes, each holding a third of USPS), for two rounds of MNIST -> USPS; a server stopped
mid-run; and the process machinery of ``vvk.federated.launch`` they rest on. Each SuperNode
starts a ClientApp process per message, so the deployment takes minutes on one core; the small
form uses 16x16 digits, VVK_TEST_FULL=1 32x32."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vvk.errors import VvkError
from vvk.federated import launch
from vvk.methods.federate.rounds import run_rounds

VVK = [sys.executable, "-m", "vvk", "federate"]


def _env(shared_data: Path) -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "VVK_TEST_DATA": str(shared_data)}


def _server(port: int, out: Path, *, size: int, rounds: int) -> list[str]:
    return [*VVK, "server", "--source", "mnist", "--targets", "usps", "--clients-per-target", "3",
            "--clients-per-round", "3", "--rounds", str(rounds), "--preset", "tiny", "--size", str(size),
            "--address", f"127.0.0.1:{port}", "--insecure", "--out", str(out), "--node-timeout", "120",
            "--reply-timeout", "300"]  # fmt: skip


def _on_port(port: int) -> str:
    """The command lines of the server's processes: those given ``port`` as theirs (the server,
    its SuperLink) or as their SuperLink's (its SuperExec, the ServerApp); not the clients'."""
    pattern = f"(--port |-address 127.0.0.1:){port}( |$)"
    return subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_a_server_and_three_clients_run_two_rounds(tmp_path, shared_data, full_scale):
    from vvk.data.domains import load_domain

    size, port, out = 32 if full_scale else 16, launch.free_port(), tmp_path / "run"
    logs = [tmp_path / "server.log", *(tmp_path / f"client-{k}.log" for k in range(3))]
    start = time.perf_counter()
    with launch.running() as servers, launch.running() as clients:
        with open(logs[0], "w") as log:
            server = servers.start(_server(port, out, size=size, rounds=2), env=_env(shared_data), output=log)
        nodes = []
        for k in range(3):
            with open(logs[1 + k], "w") as log:
                args = [*VVK, "client", "--data", "usps", "--part", str(k), "--server", f"127.0.0.1:{port}",
                        "--insecure"]  # fmt: skip
                nodes.append(clients.start(args, env=_env(shared_data), output=log))
        code = server.wait(timeout=900)
        took = time.perf_counter() - start
        said = logs[0].read_text()
        assert code == 0, said[-3000:] + logs[1].read_text()[-2000:]
        assert servers.left() == [] and _on_port(port) == ""  # the SuperLink and its processes stopped
        assert [node.poll() for node in nodes] == [None] * 3  # a client gives a server 30 s to come back
        for node in nodes:
            node.send_signal(signal.SIGTERM)
        assert [node.wait(timeout=120) for node in nodes] == [130] * 3
        assert clients.left() == []  # no SuperNode, SuperExec nor ClientApp of theirs is left
    assert "round 2: mean accuracy" in said and f"run: {out}" in said  # the run's log, streamed
    records = json.loads((out / "records.json").read_text())
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records[1:]:
        assert r["clients"] == ["usps-0", "usps-1", "usps-2"] and r["dropped"] == []
        assert all(s > 0 for s in r["client_seconds"]) and all(b > 0 for b in r["bytes_up"])
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
    print(f"deployment of 2 rounds through the CLI: {took:.0f} s")


def test_a_server_stopped_mid_run_exits_130_and_leaves_no_process(tmp_path, shared_data):
    port, log = launch.free_port(), tmp_path / "server.log"
    with launch.running() as servers:
        with open(log, "w") as f:
            server = servers.start(_server(port, tmp_path / "run", size=16, rounds=2), env=_env(shared_data),
                                   output=f)  # fmt: skip
        deadline = time.monotonic() + 300
        while "round 0: mean accuracy" not in log.read_text():  # the ServerApp runs, waiting for clients
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert "flower-superexec" in _on_port(port)  # the SuperLink's, in a session of its own
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 130
        assert servers.left() == [] and _on_port(port) == ""
    assert log.read_text().splitlines()[-1] == "vvk: error: interrupted"
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()  # round 0: the same command resumes


# --- vvk.federated.launch ------------------------------------------------------------------------


def test_addresses():
    assert launch.parse_address("127.0.0.1:9091", "--address") == ("127.0.0.1", 9091)
    assert launch.parse_address("[::1]:9091", "--address") == ("::1", 9091)
    assert launch.join_address("::1", 9091) == "[::1]:9091"
    assert launch.connect_host("0.0.0.0") == "127.0.0.1" and launch.connect_host("10.0.0.1") == "10.0.0.1"
    for value, said in [("127.0.0.1", "expected HOST:PORT"), ("::1", "expected HOST:PORT"),
                        (":9091", "expected HOST:PORT"), ("localhost:port", "the port must be a number"),
                        ("localhost:70000", "the port must be a number")]:  # fmt: skip
        with pytest.raises(VvkError, match=f"^--server {value}: {said}"):
            launch.parse_address(value, "--server")


def test_node_config_quotes_what_flower_can_split():
    from flwr.common.config import parse_config_args

    values = {"target": "a b's/c", "part": 2, "size": 16}
    assert parse_config_args([launch.node_config(values, "--data")]) == values
    assert parse_config_args([launch.node_config({"target": 'x "y"'}, "--data")]) == {"target": 'x "y"'}
    with pytest.raises(VvkError, match="--data a'\""):
        launch.node_config({"target": "a'\""}, "--data")


def test_the_command_timeouts_are_the_apps():
    from vvk.commands import federate
    from vvk.federated.server import RUN_CONFIG_DEFAULTS

    spelt_out = (federate.NODE_TIMEOUT_S, federate.REPLY_TIMEOUT_S)
    assert spelt_out == (RUN_CONFIG_DEFAULTS["node-timeout"], RUN_CONFIG_DEFAULTS["reply-timeout"])


def test_stopping_reaches_a_process_in_a_session_of_its_own(tmp_path):
    """A SuperLink starts its SuperExec in a new session: a signal to the SuperLink's group
    misses it, the marker in its environment finds it."""
    sleep = "import time; time.sleep(600)"
    script = (f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {sleep!r}], "
              "start_new_session=True)\nprint('started', flush=True)\ntime.sleep(600)\n")  # fmt: skip
    with launch.running(grace=5) as procs:
        parent = procs.start([sys.executable, "-c", script], output=subprocess.PIPE)
        assert parent.stdout.readline() == "started\n"
        deadline = time.monotonic() + 10  # a process that is starting shows no environment yet
        while len(procs.left()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(procs.left()) == 2 and parent.pid in procs.left()
    assert procs.left() == [] and parent.returncode == -signal.SIGTERM


def test_waiting_for_a_port_ends_when_the_process_does(tmp_path):
    log = tmp_path / "log"
    log.write_text("starting\nno such certificate\n")
    with launch.running() as procs:
        quitter = procs.start([sys.executable, "-c", "raise SystemExit(3)"])
        with pytest.raises(
            VvkError, match=r"exited \(code 3\) before listening on 127.0.0.1:\d+: no such cert"
        ):
            launch.wait_for_port("127.0.0.1", launch.free_port(), quitter, log=log)
