"""NATS JetStream: the retained stream that gives every event an id and lets a reconnect resume (protocol §7).

Three uses, all through nats.py's public JetStream API:
- ``ensure_stream`` (``lurestream init-nats``, and ``serve`` when the stream is missing) creates or
  updates the stream over the four subject families with bounded retention;
- the hub consumes it with one ordered consumer per process, starting just after the stream's last
  sequence, so its frames carry ``id: <epoch>-<stream sequence>`` (``eventids``);
- ``Scan`` reads a bounded range of retained messages for one resume through a short-lived pull
  consumer (no acks, in memory, removed by the server once idle), in batches, and says afterwards
  whether it saw the whole range (a timeout or a cut consumer is never taken for the end).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from lurestream import natsclient
from lurestream.config import Config
from lurestream.eventids import stream_epoch
from lurestream.routing import SUBJECT_FAMILIES

log = logging.getLogger("lurestream.jetstream")

SCAN_BATCH = 500


@dataclass(frozen=True)
class StreamState:
    """What a resume needs to know about the retained range."""

    first_seq: int
    last_seq: int
    max_msgs: int = -1  # the stream's count bound (-1: none)
    epoch: str = ""  # the stream's identity: changes when it is deleted and re-created (eventids)


def stream_config(config: Config) -> api.StreamConfig:
    """The stream ``init-nats`` declares: our four families, file storage, oldest discarded first."""
    return api.StreamConfig(
        name=config.jetstream,
        description="lurestream: DECNET security events, retained for resume",
        subjects=list(SUBJECT_FAMILIES),
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        storage=api.StorageType.FILE,
        max_age=float(config.jetstream_max_age),
        max_bytes=config.jetstream_max_bytes,
        max_msgs=config.jetstream_max_msgs or -1,
        num_replicas=config.jetstream_replicas,
        allow_direct=True,
    )


async def connect_once(url: str, name: str, timeout: float = 5.0, config: Config | None = None) -> NATS:
    """A NATS connection for a one-shot command: fails within ``timeout`` instead of retrying
    (nats.py keeps retrying an unreachable server on its own, logging each attempt); with ``config``'s
    NATS credentials."""

    async def quiet(exc: Exception) -> None:
        log.debug("NATS: %s", exc)

    try:
        return await asyncio.wait_for(
            natsclient.connect(url, name, config, connect_timeout=timeout, error_cb=quiet, max_reconnect_attempts=1),
            timeout,
        )
    except asyncio.TimeoutError:
        raise ConnectionError(f"no NATS server answered within {timeout:g}s") from None


async def ensure_stream(js: JetStreamContext, config: Config) -> tuple[str, api.StreamInfo]:
    """Create the stream, or update its limits and add the families it lacks (an upgrade that brings new
    families: protocol §14), keeping any subject an operator added; returns ("created"|"updated", info)."""
    wanted = stream_config(config)
    try:
        current = await js.stream_info(config.jetstream)
    except NotFoundError:
        return "created", await js.add_stream(wanted)
    have = list(current.config.subjects or [])
    wanted.subjects = have + [f for f in SUBJECT_FAMILIES if f not in have]
    return "updated", await js.update_stream(wanted)


async def stream_state(js: JetStreamContext, name: str) -> StreamState:
    info = await js.stream_info(name)
    state = info.state
    max_msgs = info.config.max_msgs if info.config.max_msgs is not None else -1
    return StreamState(
        first_seq=int(state.first_seq),
        last_seq=int(state.last_seq),
        max_msgs=int(max_msgs),
        epoch=stream_epoch(name, info.created),
    )


class Scan:
    """The retained messages with ``first <= sequence <= last``, in order (``async for``); afterwards
    :attr:`complete` says whether the range was seen to its end.

    Complete means: the message at ``last`` (or past it) arrived, or the server said nothing further is
    pending for our subjects (the rest of the range holds none of them). A fetch that times out — a
    stalled server, a consumer cut as slow — leaves it incomplete, whatever came before.
    """

    def __init__(
        self,
        js: JetStreamContext,
        name: str,
        first: int,
        last: int,
        timeout: float = 5.0,
        filters: list[str] | None = None,
    ) -> None:
        self.js = js
        self.filters = filters  # None: every subject of the stream
        self.name = name
        self.first = first
        self.last = last
        self.timeout = timeout
        self.complete = last < first
        self.reached = first - 1  # the greatest sequence seen

    def __aiter__(self) -> AsyncIterator[Msg]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Msg]:
        if self.complete:
            return
        consumer = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.first,
            ack_policy=api.AckPolicy.NONE,
            filter_subjects=self.filters,
            inactive_threshold=10.0,
            mem_storage=True,
            num_replicas=1,
        )
        psub = await self.js.pull_subscribe("", stream=self.name, config=consumer)
        try:
            while True:
                try:
                    msgs = await psub.fetch(min(SCAN_BATCH, self.last - self.reached), timeout=self.timeout)
                except asyncio.TimeoutError:
                    return  # incomplete: never taken for the end of the range
                for msg in msgs:
                    meta = msg.metadata
                    seq = int(meta.sequence.stream)
                    if seq > self.last:
                        self.complete = True
                        return
                    self.reached = seq
                    yield msg
                    if seq == self.last or not meta.num_pending:
                        self.complete = True
                        return
        finally:
            try:
                await psub.unsubscribe()
            except Exception as exc:  # the server drops the idle consumer by itself anyway
                log.debug("scan consumer unsubscribe failed: %s", exc)
