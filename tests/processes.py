"""Run ``lurestream`` as a real child process (a second server, the CLI, the demo)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from lurestream.localservices import free_port, wait_port


def _tcp_address(address: str, port: int) -> str:
    """An IPv4 address and port as ``/proc/net/tcp`` writes them (``0100007F:1F90`` for 127.0.0.1:8080)."""
    packed = bytes(int(part) for part in address.split("."))
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def unread_by_server(client: socket.socket) -> int | None:
    """Bytes ``client`` sent that the server at its other end has not read yet (the receive queue of the
    server's socket in ``/proc/net/tcp``), or None when that socket is not listed (closed, or not IPv4)."""
    local, peer = client.getsockname(), client.getpeername()
    server_end, client_end = _tcp_address(peer[0], peer[1]), _tcp_address(local[0], local[1])
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == server_end and fields[2] == client_end:
                return int(fields[4].split(":")[1], 16)
    return None


async def read_by_server(client: socket.socket, timeout: float = 10.0) -> None:
    """Wait until the server process has read everything ``client`` sent (its socket's receive queue is
    empty): a request is in the server's hands, not in a kernel buffer."""
    deadline = time.monotonic() + timeout
    while unread_by_server(client) != 0:
        assert time.monotonic() < deadline, f"the server did not read the request in {timeout} s"
        await asyncio.sleep(0.01)


async def refusing(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Wait until nothing listens on ``port`` any more (a stopping server closes its listener first)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return
        writer.close()
        assert time.monotonic() < deadline, f"{host}:{port} still accepts connections after {timeout} s"
        await asyncio.sleep(0.02)


def lurestream_env(**settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LURESTREAM_")}
    for key, value in settings.items():
        env["LURESTREAM_" + key.upper()] = str(value)
    return env


def wait_ready(
    port: int, timeout: float, proc: subprocess.Popen[Any] | None = None, log: Callable[[], str] = str
) -> None:
    """Until ``/readyz`` on ``port`` answers 200; an AssertionError with ``log()`` once ``timeout`` has
    passed or ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() >= deadline or (proc is not None and proc.poll() is not None):
            raise AssertionError(f"server on {port} not ready; log:\n{log()}")
        time.sleep(0.1)


class ServerProcess:
    """``python -m lurestream serve`` with the given settings; its log lands in ``log_path``."""

    def __init__(self, log_path: str, **settings: Any) -> None:
        self.port = int(settings.pop("port", 0)) or free_port()
        self.settings = dict(settings, port=self.port)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lurestream", "serve"],
                env=lurestream_env(**self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_port(self.port, timeout, self.proc, "lurestream")
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_ready(self.port, timeout, self.proc, self.log)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None
