"""``LURESTREAM_PROCESSES=N``: N worker processes sharing one listening socket, supervised.

The parent binds the socket, forks the workers (each then builds its own hub, NATS connection and
MongoDB client inside its own event loop), forwards SIGTERM/SIGINT to them, and replaces a worker that
dies unexpectedly. Per-user caps are per process; tickets work across processes (they live in MongoDB).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from tornado.netutil import bind_sockets

from lurestream.config import Config

log = logging.getLogger("lurestream.workers")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _worker(config: Config, sockets: list[Any], index: int) -> None:
    from lurestream.server import serve

    # The parent's handlers were inherited; a signal pending since the fork now ends us by default
    # until serve() installs its own handlers.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    code = 0
    try:
        asyncio.run(serve(config, sockets))
    except BaseException:  # the parent restarts us; say why first
        log.exception("worker %d crashed", index)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def run_workers(config: Config) -> int:
    """Fork and supervise the workers until a signal asks everyone to stop."""
    count = config.processes or os.cpu_count() or 1
    sockets = bind_sockets(config.port, config.host)
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        # Block stop signals across the fork so none lands between fork() and the child's own
        # handlers, or before the parent has recorded the child's pid for forwarding.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _worker(config, sockets, index)
            children[pid] = index
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        log.info("worker %d started (pid %d)", index, pid)

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(count):
        spawn(index)
    log.info("supervising %d workers on port %d", count, sockets[0].getsockname()[1])
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        index = children.pop(pid)
        if stopping:
            continue
        log.warning(
            "worker %d (pid %d) exited with status %d; restarting", index, pid, os.waitstatus_to_exitcode(status)
        )
        time.sleep(0.2)
        spawn(index)
    return 0
