"""``LURESTREAM_PROCESSES=N``: N worker processes sharing one listening socket, supervised.

Each worker binds its own listening socket on the port with ``SO_REUSEPORT``, so the kernel spreads
new connections evenly over the workers (with one shared socket, whichever worker wakes first takes
most of them and can hit its open-files limit alone). The parent checks the port first, forks the
workers (each then builds its own hub, NATS connection and MongoDB client inside its own event loop),
forwards SIGTERM/SIGINT to them, and replaces a worker that dies unexpectedly. Nothing a stream
needs is held by one worker alone: the per-user cap lives in a JetStream key-value bucket
(``LURESTREAM_CAP_BUCKET``, protocol §13), tickets and sessions in MongoDB, event ids in the stream.
Metrics: the parent points prometheus-client's multiprocess mode at a private directory (unless
``PROMETHEUS_MULTIPROC_DIR`` is already set) before any worker imports it, so every worker's
``/metrics`` shows the whole server; a dead worker's live gauges are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import time
from typing import Any

from lurestream.config import Config

log = logging.getLogger("lurestream.workers")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # lurestream.metrics reads it; not imported here (see _metrics_dir)


def _worker(config: Config, port: int, index: int) -> None:
    from lurestream.listening import listen
    from lurestream.server import serve

    # The parent's handlers were inherited; a signal pending since the fork now ends us by default
    # until serve() installs its own handlers.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    code = 0
    try:
        sockets = listen(config.host, port, reuse_port=True)
        asyncio.run(serve(config, sockets))
    except BaseException:  # the parent restarts us; say why first
        log.exception("worker %d crashed", index)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _metrics_dir() -> str | None:
    """Set up prometheus-client's multiprocess directory; returns it if we created it (to remove).

    prometheus-client picks its value store when first imported, so this runs before anything imports it.
    """
    if os.environ.get(MULTIPROC_ENV):
        return None
    path = tempfile.mkdtemp(prefix="lurestream-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def run_workers(config: Config) -> int:
    """Fork and supervise the workers until a signal asks everyone to stop."""
    created = _metrics_dir()
    try:
        return _supervise(config)
    finally:
        if created:
            shutil.rmtree(created, ignore_errors=True)


def _supervise(config: Config) -> int:
    from prometheus_client import multiprocess

    count = config.processes or os.cpu_count() or 1
    from lurestream.listening import listen

    probe = listen(config.host, config.port, reuse_port=True)  # fails early if the port is taken
    port = probe[0].getsockname()[1]
    for sock in probe:
        sock.close()
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        # Block stop signals across the fork so none lands between fork() and the child's own
        # handlers, or before the parent has recorded the child's pid for forwarding.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _worker(config, port, index)
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
    log.info("supervising %d workers on port %d", count, port)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        index = children.pop(pid)
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        if stopping:
            continue
        log.warning(
            "worker %d (pid %d) exited with status %d; restarting", index, pid, os.waitstatus_to_exitcode(status)
        )
        time.sleep(0.2)
        spawn(index)
    return 0
