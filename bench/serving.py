"""What the bench scripts share: the JWT secret they sign with, and starting ``lurestream serve``."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import IO, Any

from lurestream.localservices import wait_port

SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def serve(
    port: int,
    nats_url: str,
    mongo_url: str,
    db: str,
    log: IO[bytes] | None = None,
    pythonpath: str | None = None,
    **settings: Any,
) -> Any:
    """``lurestream serve`` on ``port`` with the bench's secret, quiet logs and extra ``LURESTREAM_*``
    settings (``queue_max=1024`` → ``LURESTREAM_QUEUE_MAX``); returns the process once it listens.
    ``pythonpath``: run the ``lurestream`` package found there (another checkout) instead of this one —
    started from that directory, since ``python -m`` puts the working directory first on ``sys.path``."""
    values = dict(
        port=port, nats_url=nats_url, mongo_uri=mongo_url, mongo_db=db, jwt_secret=SECRET, log_level="warning"
    )
    values.update(settings)
    env = dict(os.environ, **{"LURESTREAM_" + k.upper(): str(v) for k, v in values.items()})
    cwd = None
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
        cwd = pythonpath
    proc = subprocess.Popen([sys.executable, "-m", "lurestream", "serve"], env=env, stdout=log, stderr=log, cwd=cwd)
    wait_port(port, 30, proc)
    return proc
