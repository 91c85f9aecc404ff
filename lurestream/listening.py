"""Binding the listening sockets, and the error that stops start-up with one line.

Kept free of heavy imports: the multi-process supervisor binds (to fail early on a busy port) before
prometheus-client may be imported (see ``workers``).
"""

from __future__ import annotations

import socket

from tornado.netutil import bind_sockets

# Tornado's default accept backlog is 128: a reconnect storm overflows it, dropped SYNs are retried after
# 1, 3, 7… s, and connects take tens of seconds. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096


class StartupError(RuntimeError):
    """A problem that stops start-up; the command prints its message as one line and exits 1."""


def listen(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    try:
        return bind_sockets(port, host, reuse_port=reuse_port, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
