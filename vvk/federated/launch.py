"""Starting and stopping the Flower processes of a deployment (``vvk federate server|client``,
tests/federated/test_deploy.py), so that no process outlives the command that started it.

::

    with running() as procs:                      # whatever ends the block, every one is stopped
        link = procs.start([console_script("flower-superlink"), ...], output=log)
        wait_for_port("127.0.0.1", 9091, link, seconds=60, log=log)
        ...

Why it is done this way:

- each process starts in a session of its own (``Processes.start``): Ctrl-C in a terminal
  reaches vvk alone, which then stops every process and waits for them, instead of the
  terminal's SIGINT reaching each process at once while vvk exits before they do; the
  processes Flower starts in turn (a SuperNode its SuperExec and one ClientApp per message)
  join the group, so one signal to it reaches them, even those whose parent has already gone;
- every process carries a marker in its environment, which the processes it starts inherit:
  that finds those that left the group (a SuperLink starts its SuperExec, and so the ServerApp,
  in a session of its own) and those whose parent died (``Processes.left``, Linux);
- stopping (``Processes.stop``) sends SIGTERM to them all (Flower's processes shut down cleanly
  on it), waits ``grace`` seconds for them to end, then SIGKILLs what is left; a second Ctrl-C
  while waiting SIGKILLs at once;
- ``wait_for_port`` polls with TCP connections: Flower 1.42 has no "ready" signal, and a
  SuperLink takes a second or more to listen;
- the console scripts are those beside this Python (``console_script``), so the processes run
  the installation vvk runs from, whatever is first on ``PATH``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from vvk.errors import VvkError

GRACE_S = 20.0  # between SIGTERM and SIGKILL: a SuperLink or SuperNode stops in a second or two
_POLL_S = 0.2


def console_script(name: str) -> str:
    """The path of the console script ``name`` (``flower-superlink``, ``flwr``...) of this
    Python's environment, else the one on ``PATH``; ``VvkError`` when there is none."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise VvkError(f"{name}: not found beside {sys.executable} nor on PATH",
                       hint="pip install 'vvk[federate]'")  # fmt: skip
    return found


def parse_address(value: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT`` for an IPv6 address) as ``(host, port)``; a one-line
    ``VvkError`` naming ``flag`` when it is not one, or when HOST does not resolve."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # an IPv6 address without brackets: its last group would pass as a port
        sep = ""
    if not sep or not host:
        raise VvkError(f"{flag} {value}: expected HOST:PORT, e.g. 127.0.0.1:9091 or [::1]:9091")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise VvkError(f"{flag} {value}: the port must be a number from 1 to 65535")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise VvkError(f"{flag} {value}: unknown host {host} ({e.args[-1]})") from None
    return host, int(port)


def join_address(host: str, port: int) -> str:
    """``HOST:PORT`` as Flower's ``--superlink`` and ``address`` want it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_host(host: str) -> str:
    """Where to connect to reach a server bound to ``host``: a wildcard address (``0.0.0.0``,
    ``::``) means this machine."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_unspecified:
            return "::1" if ":" in host else "127.0.0.1"
    return host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port of ``host`` that nothing listens on (the system picks it). Another process may
    take it before the one it is meant for: fine for a local port chosen just before the start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int, flag: str) -> None:
    """``VvkError`` naming ``flag`` unless this machine can listen on ``host:port`` now: a
    server started on a taken port would exit, but ``wait_for_port`` would first find the
    other listener and go on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            raise VvkError(f"{flag} {join_address(host, port)}: cannot listen there ({e.strerror or e})",
                           hint="choose another port, or stop what uses it") from None  # fmt: skip


def listening(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts a TCP connection on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Processes:
    """The processes one command starts (``start``), stopped together (``stop``, ``running``).

    Each carries an environment variable of its own, ``marker``, which every process it starts
    inherits: on Linux, ``left`` finds them all by it in ``/proc``, wherever they are (a
    SuperLink starts its SuperExec in a session of its own, out of reach of a signal to the
    SuperLink's group; a process whose parent died is no longer anyone's descendant). Without
    ``/proc``, the groups of the processes started here are what is stopped."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.marker = f"VVK_LAUNCH_{uuid.uuid4().hex[:16]}"

    def start(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        output=None,
    ) -> subprocess.Popen:
        """Start ``args`` in a new session (the module docstring says why). ``output``: where
        its stdout and stderr go (a file, a file descriptor, or ``subprocess.PIPE`` for text
        lines to read); None: this process's own. ``PATH`` begins with the folder of this
        Python's console scripts: Flower starts its own processes by name (a SuperLink its
        ``flower-superexec``, which ``flwr-serverapp``), which fails when vvk runs from a
        virtual environment that is not activated."""
        env = dict(os.environ if env is None else env)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
        env[self.marker] = "1"
        piped = output is subprocess.PIPE
        proc = subprocess.Popen(
            list(args), env=env, cwd=cwd, stdout=output,
            stderr=subprocess.STDOUT if output is not None else None, text=piped,
            bufsize=1 if piped else -1, start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def left(self) -> list[int]:
        """The processes started here, or by them at any depth, that are still running (not
        zombies); without ``/proc``, the leaders of groups that still have a process."""
        found = {p.pid for p in self.procs if p.poll() is None}
        marked = _marked(self.marker)
        if marked is None:
            return sorted(found | {p.pid for p in self.procs if _group_alive(p.pid)})
        return sorted(found | marked)

    def stop(self, grace: float = GRACE_S) -> None:
        """SIGTERM to the groups started here and to every process left (Flower's processes shut
        down cleanly on it), also to those that appear meanwhile (one that was starting, whose
        environment was not readable yet); then SIGKILL to what is still there after ``grace``
        seconds, or at once on a second Ctrl-C or SIGTERM (which then goes on). Every leader is
        reaped."""
        deadline = time.monotonic() + grace
        signalled: set[int] = set()
        try:
            self._signal(signal.SIGTERM, ())
            while (left := set(self.left())) and time.monotonic() < deadline:
                self._signal(signal.SIGTERM, left - signalled, groups=False)
                signalled |= left
                time.sleep(_POLL_S)
        finally:
            self._signal(signal.SIGKILL, self.left())
            for p in self.procs:
                p.wait()
                if p.stdout is not None:
                    p.stdout.close()

    def _signal(self, signum: int, pids: Iterable[int], *, groups: bool = True) -> None:
        """``signum`` to ``pids`` and, with ``groups``, to the group of each process started here
        (which reaches its members where there is no ``/proc``)."""
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        for p in self.procs if groups else ():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signum)


@contextlib.contextmanager
def running(grace: float = GRACE_S) -> Iterator[Processes]:
    """``Processes`` to start commands with; at the end, however it comes (a return, an
    error, Ctrl-C), every process left is stopped (``Processes.stop``)."""
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop(grace)


def _marked(marker: str) -> set[int] | None:
    """The processes whose environment holds ``marker`` (Linux: ``/proc/PID/environ``, empty for
    a zombie); None where there is no ``/proc``."""
    if not os.path.isdir("/proc/self"):
        return None
    needle = f"\0{marker}=".encode()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "environ"), "rb") as f:
                if needle in b"\0" + f.read():
                    found.add(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_port(
    host: str,
    port: int,
    proc: subprocess.Popen | None = None,
    *,
    seconds: float | None = 60.0,
    log: Path | None = None,
) -> None:
    """Return once ``host:port`` accepts a TCP connection; ``VvkError`` when ``proc`` (the
    process meant to listen there, None for another machine's) exits first, or after
    ``seconds`` (None: never), with the last line of ``log`` (``proc``'s output)."""
    name = Path(proc.args[0]).name if proc is not None else "the server"
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        if proc is not None and proc.poll() is not None:
            raise VvkError(f"{name} exited (code {proc.returncode}) before listening on "
                           f"{join_address(host, port)}{_last_line(log)}")  # fmt: skip
        if listening(host, port):
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise VvkError(f"{name}: nothing listens on {join_address(host, port)} after {seconds:g} s"
                           f"{_last_line(log)}")  # fmt: skip
        time.sleep(_POLL_S if proc is not None else 1.0)


def watch(proc: subprocess.Popen, host: str, port: int, *, gone_after: float, every: float = 2.0) -> bool:
    """Wait while ``proc`` runs and ``host:port`` listens: True once nothing has listened there
    for ``gone_after`` seconds (a SuperNode whose SuperLink has gone retries for ever, and one
    given ``--max-wait-time`` gives up but does not exit), False when ``proc`` exits."""
    seen = time.monotonic()
    while proc.poll() is None:
        if listening(host, port):
            seen = time.monotonic()
        elif time.monotonic() - seen >= gone_after:
            return True
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=every)
    return False


def _last_line(log: Path | None) -> str:
    if log is None or not log.is_file():
        return ""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return f": {lines[-1][-300:]} (its log: {log})" if lines else f" (its log: {log})"


def flwr_home(folder: str | os.PathLike, name: str, address: str, *, root_certificates: str | None) -> Path:
    """Write ``folder``/config.toml, a ``FLWR_HOME`` whose SuperLink connection ``name`` is
    ``address`` (``flwr run APP NAME`` reads it): TLS checked with ``root_certificates``, or
    none at all when it is None. A folder of vvk's own leaves the user's ``~/.flwr`` alone."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tls = (f"root-certificates = {_toml_string(str(Path(root_certificates).resolve()))}"
           if root_certificates is not None else "insecure = true")  # fmt: skip
    text = (f"[superlink]\ndefault = {_toml_string(name)}\n\n"
            f"[superlink.{name}]\naddress = {_toml_string(address)}\n{tls}\n")  # fmt: skip
    (folder / "config.toml").write_text(text, encoding="utf-8")
    return folder


def node_config(values: Mapping[str, str | int], flag: str) -> str:
    """``values`` as a SuperNode's ``--node-config`` (``target='usps' part=0``). Flower splits
    it with a pattern that ends a quoted string at the next quote of its kind, so a string is
    quoted with a kind it does not hold; ``VvkError`` naming ``flag`` for one that holds both."""
    pairs = []
    for key, value in values.items():
        if isinstance(value, str):
            if "'" in value and '"' in value:
                raise VvkError(f"{flag} {value}: Flower cannot pass on a name with both ' and \" in it")
            value = f"'{value}'" if "'" not in value else json.dumps(value)
        pairs.append(f"{key}={value}")
    return " ".join(pairs)


def _toml_string(value: str) -> str:
    """A TOML literal string (no escapes: Windows paths stay as they are), or a basic one."""
    if "'" not in value and "\n" not in value:
        return f"'{value}'"
    return json.dumps(value)
