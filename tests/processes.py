"""Run ``lurestream`` as a real child process (a second server, the CLI, the demo)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from lurestream.localservices import free_port, wait_port


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
