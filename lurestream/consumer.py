"""The process's one JetStream consumer, and the truth about the stream it reads (protocol §7, §16).

:class:`StreamConsumer` owns the ordered consumer over the retained stream and keeps checking what it
depends on, so that nothing can make the process blind without it saying so:

- **The stream's identity (epoch).** Every check (every ``CHECK_SECONDS``, and at once after a reconnect
  or a silent consumer) reads the stream's info. A stream deleted and re-created, or lost with its store
  and re-created, has a new creation time, hence a new epoch (``eventids``): the consumer is replaced by
  one that reads the new stream from its first message, and every message it carries reaches the streams
  live (sequences restart at 1: an old position must not swallow them). Ids of the old stream are never
  resumed from the new one (``replay``). A missing stream is re-created with the configured limits.
- **Progress.** The ordered consumer gets a heartbeat every second when idle; nothing at all for
  ``STALL_SECONDS`` means it is stuck (a reset that failed while the stream was away, a paused node): it is
  replaced from the last position, and readiness says so meanwhile.
- **Storage.** A full disk does not make JetStream unavailable (nats-server 2.14 keeps answering and
  refuses each store; 2.9 stops answering): every ``PROBE_SECONDS`` the process stores a small message in
  a probe stream of its own (``<stream>_probe``, one message per process kept) on the same servers; a
  refused or unanswered store means events published now are lost to every dashboard.
- **Readiness.** :attr:`problem` names what is wrong now (``stream missing``, ``jetstream unavailable``,
  ``consumer stalled``, ``jetstream not storing``), or is None; ``/readyz`` reports it (503) and clears on its
  own on recovery.

The consumer hands every message to the hub (``Hub.dispatch``); messages of a replaced consumer that were
still queued are dropped by generation, never dispatched twice or under the wrong epoch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NoStreamResponseError, NotFoundError

from lurestream import eventids
from lurestream.natsclient import GuardedClient
from lurestream.routing import SUBJECT_FAMILIES

if TYPE_CHECKING:
    from lurestream.hub import Hub

log = logging.getLogger("lurestream.consumer")

CHECK_SECONDS = 2.0  # stream info read this often (a re-creation is noticed within ~2 s)
STALL_SECONDS = 10.0  # protocol §16: no message or heartbeat this long: the consumer has stopped (readiness)
REPLACE_SECONDS = 3.0  # three heartbeats missed: replace the consumer (again each pass until it works)
IDLE_HEARTBEAT_SECONDS = 1.0
INFO_TIMEOUT_SECONDS = 2.0

PROBE_SECONDS = 5.0
PROBE_BYTES = 4096  # more than a filesystem page: a full disk refuses it at once (a few bytes fit in a page's slack)
STREAM_MISSING = "stream missing"
JETSTREAM_UNAVAILABLE = "jetstream unavailable"
CONSUMER_STALLED = "consumer stalled"
NOT_STORING = "jetstream not storing"
NOT_CHECKED = "jetstream not checked yet"


class StreamConsumer:
    """One per process; see the module docstring."""

    def __init__(self, hub: Hub, name: str, stream_config: api.StreamConfig | None) -> None:
        self.hub = hub
        self.name = name
        self.stream_config = stream_config  # creates the stream when it is missing
        self.problem: str | None = NOT_CHECKED
        self.generation = 0  # bumped each time the consumer is replaced: older deliveries are dropped
        self.recreations = 0  # epochs after the first (re-created streams noticed)
        self.js: JetStreamContext | None = None
        self._nc: GuardedClient | None = None
        self._sub: JetStreamContext.PushSubscription | None = None
        self._subscribed_at = 0.0
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False  # set by close(): the watch ends at its next turn, cancelled or not
        self._check_now = asyncio.Event()
        self._replace = False  # the consumer is to be replaced (after a reconnect)
        self._next_probe = 0.0
        self._probe_failures = 0
        self.store_problem: str | None = None
        self.on_open: Callable[[], Awaitable[None]] | None = None  # a late start succeeded

    # -- life --------------------------------------------------------------------------------------------
    async def start(self, nc: GuardedClient) -> bool:
        """Read the stream (creating it if missing), begin its epoch and subscribe; False when JetStream
        cannot be used now — the hub then serves live events without ids meanwhile, and the watch keeps
        trying (a NATS server whose JetStream starts seconds after it accepts connections, a stream
        created later by ``init-nats``) and calls ``on_open`` once it succeeds."""
        self._nc = nc
        # API calls time out in 2 s, not nats.py's 5: a retry on the next pass is quicker than a long wait
        self.js = nc.jetstream(timeout=INFO_TIMEOUT_SECONDS)
        opened = await self._open(fresh_process=True)
        self._watcher = asyncio.ensure_future(self._watch())
        return opened

    @property
    def open(self) -> bool:
        return self._sub is not None

    async def _open(self, fresh_process: bool) -> bool:
        try:
            info = await asyncio.wait_for(self._info(create=True), INFO_TIMEOUT_SECONDS)
            self._begin(info, fresh_process=fresh_process)
            await self._subscribe()
        except Exception as exc:
            problem = f"{JETSTREAM_UNAVAILABLE}: {type(exc).__name__}"
            if problem != self.problem:
                log.error(
                    "JetStream stream %r unusable (%s): serving live events without ids or resume until it is; "
                    "run `lurestream init-nats`",
                    self.name,
                    exc,
                )
            self.problem = problem
            return False
        self.problem = None
        return True

    def check_soon(self) -> None:
        """Read the stream's info at the next tick (after a reconnect: JetStream may not be back yet)."""
        self.problem = self.problem or NOT_CHECKED
        self._check_now.set()

    def reconnected(self) -> None:
        """The connection moved (a server restarted, paused or partitioned): the ordered consumer nats.py
        restored may have lived on the server that went away, and nats.py would notice only after its
        heartbeats stop. The watch replaces it at once, from the last position (no gap; a repeat is
        dropped by sequence) — not here: nats.py waits for its reconnect callback."""
        self._replace = True
        self.check_soon()

    async def close(self) -> None:
        """End the watch, then the consumer. The flag, not only the cancellation: a ``check_soon`` in the
        same tick as the close completes the watch's ``asyncio.wait_for`` as it is cancelled, and Python ≤
        3.11 then drops the cancellation (gh-86296) — the watch ran on, and shutdown waited for ever."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        await self._unsubscribe()

    # -- the epoch ---------------------------------------------------------------------------------------
    async def _info(self, create: bool) -> api.StreamInfo:
        assert self.js is not None
        try:
            return await self.js.stream_info(self.name)
        except NotFoundError:
            if not create or self.stream_config is None:
                raise
        info = await self.js.add_stream(self.stream_config)
        log.info("created JetStream stream %s over %s", self.name, ", ".join(self.stream_config.subjects or ()))
        return info

    def _begin(self, info: api.StreamInfo, fresh_process: bool) -> None:
        """Count sequences of the stream ``info`` describes. A process that just started reads up to the
        replay memory's depth of history into the memory only; a stream noticed as re-created is read from
        its first message, all of it live (nobody has seen any of it)."""
        state = info.state
        first, last = int(state.first_seq or 0), int(state.last_seq or 0)
        memory = self.hub.memory
        max_msgs = info.config.max_msgs
        if max_msgs is not None and max_msgs > 0:
            memory.max_events = min(memory.max_events, int(max_msgs))
        subjects = list(info.config.subjects or [])
        missing = [f for f in SUBJECT_FAMILIES if f not in subjects]
        if missing:
            log.warning(
                "JetStream stream %s does not carry %s: those events cannot reach any stream; "
                "run `lurestream init-nats` to add them",
                self.name,
                ", ".join(missing),
            )
        # a filter only when the stream carries more than our families (JetStream refuses a filter that
        # matches none of its subjects, and an unfiltered consumer costs the server less)
        ours = [f for f in SUBJECT_FAMILIES if f in subjects]
        self.hub.filters = self.hub.replayer.filters = None if set(subjects) <= set(ours) else ours
        if fresh_process:
            start = max(first, last - memory.max_events + 1, 1)
            live_from = last + 1
        else:
            start = live_from = max(first, 1)
        self.hub.begin_epoch(eventids.stream_epoch(self.name, info.created), start, live_from)

    async def _subscribe(self) -> None:
        assert self.js is not None
        self.generation += 1
        start = (self.hub.position or 0) + 1
        self._sub = await self.js.subscribe(
            "",
            stream=self.name,
            cb=functools.partial(self._message, self.generation),
            ordered_consumer=True,
            idle_heartbeat=IDLE_HEARTBEAT_SECONDS,  # a consumer lost with a NATS restart is re-created within ~2 s
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                filter_subjects=self.hub.filters,
            ),
        )
        self._subscribed_at = time.monotonic()

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        self.generation += 1
        if sub is not None:
            try:  # cancels nats.py's heartbeat and flow-control tasks of the ordered consumer
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("error closing the JetStream consumer: %s", exc)

    async def _message(self, generation: int, msg: Msg) -> None:
        if generation != self.generation:
            return  # queued for a consumer that has been replaced
        try:
            seq = int(msg.metadata.sequence.stream)
        except Exception:  # not a JetStream delivery: nothing to stamp, nothing to resume from
            seq = 0
        self.hub.dispatch(msg.subject, msg.data, seq)

    # -- the watch ---------------------------------------------------------------------------------------
    async def _watch(self) -> None:
        next_check = time.monotonic() + CHECK_SECONDS
        while True:
            try:
                await asyncio.wait_for(self._check_now.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
            if self._closing:
                return
            now = time.monotonic()
            silent = self._silent_for(now)
            waiting = (self._sub is None or self._replace or silent > REPLACE_SECONDS) and bool(self.hub.epoch)
            if self._check_now.is_set() or now >= next_check or waiting or silent > 2.5 * IDLE_HEARTBEAT_SECONDS:
                self._check_now.clear()
                next_check = now + CHECK_SECONDS
                try:
                    await self.check()
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let the watch end: it is what notices everything else
                    log.exception("JetStream check failed")

    def _silent_for(self, now: float) -> float:
        """Seconds since the consumer last received anything (a message, a heartbeat)."""
        if self._sub is None or self._nc is None:
            return 0.0
        heard = self._nc.last_inbound(self._sub._sub)
        return now - max(heard or 0.0, self._subscribed_at)

    async def check(self) -> None:
        """Read the stream's info; act on a new epoch, a missing stream, a stalled consumer."""
        nc = self._nc
        if nc is None or not nc.is_connected or self.js is None:
            return  # the bus state says it (readiness); checked again after the reconnect
        if self._sub is None and not self.hub.epoch:  # JetStream was unusable when the bus came up
            if await self._open(fresh_process=True) and self.on_open is not None:
                await self.on_open()
            return
        try:
            info = await asyncio.wait_for(self._info(create=True), INFO_TIMEOUT_SECONDS)
        except NotFoundError:
            self._set_problem(STREAM_MISSING)
            return
        except (asyncio.TimeoutError, Exception) as exc:
            self._set_problem(f"{JETSTREAM_UNAVAILABLE}: {type(exc).__name__}")
            return
        if time.monotonic() >= self._next_probe:
            self._next_probe = time.monotonic() + PROBE_SECONDS
            await self._probe(info)
        # Only the creation time tells a new stream: a replica that is behind (a leader change in a cluster)
        # reports a last sequence below ours for the same stream.
        epoch = eventids.stream_epoch(self.name, info.created)
        try:
            if epoch != self.hub.epoch:
                log.warning(
                    "JetStream stream %s was re-created (epoch %s, was %s): reading it from its first message; "
                    "ids of the old stream are not resumed",
                    self.name,
                    epoch,
                    self.hub.epoch,
                )
                self.recreations += 1
                await self._unsubscribe()
                self._begin(info, fresh_process=False)
                await self._subscribe()
            elif self._sub is None or self._replace:  # after a reconnect, or a replacement that failed
                self._replace = False
                await self._unsubscribe()
                await self._subscribe()
            elif (silent := self._silent_for(time.monotonic())) > REPLACE_SECONDS:
                # a consumer whose server went away (a paused node led the stream): nats.py's own reset
                # waits on the same JetStream; try a new one every pass, and say so once it is long
                if silent > STALL_SECONDS:
                    self._set_problem(CONSUMER_STALLED)
                log.warning("JetStream consumer silent for %.1fs; replacing it", silent)
                await self._unsubscribe()
                await self._subscribe()
                return
        except Exception as exc:  # JetStream not fully back (no leader yet): the next pass tries again
            self._set_problem(f"{JETSTREAM_UNAVAILABLE}: {type(exc).__name__}")
            return
        self._set_problem(None)

    async def _probe(self, info: api.StreamInfo) -> None:
        """Store a message (see the module docstring, "Storage"); ``store_problem`` says if it was refused."""
        assert self.js is not None and self._nc is not None
        name = f"{self.name}_probe"
        subject = f"lurestream.probe.{self.name}.{self._nc.client_id or 0}"
        error = None
        try:
            try:
                await self.js.publish(subject, bytes(PROBE_BYTES), stream=name, timeout=INFO_TIMEOUT_SECONDS)
            except NoStreamResponseError:
                await self.js.add_stream(
                    api.StreamConfig(
                        name=name,
                        subjects=[f"lurestream.probe.{self.name}.>"],
                        storage=api.StorageType.FILE,
                        max_msgs_per_subject=1,
                        max_bytes=2**20,  # one message a process, each replaced by the next
                        discard=api.DiscardPolicy.OLD,
                        num_replicas=info.config.num_replicas or 1,
                    )
                )
                await self.js.publish(subject, bytes(PROBE_BYTES), stream=name, timeout=INFO_TIMEOUT_SECONDS)
        except Exception as exc:
            error = f"{NOT_STORING}: {type(exc).__name__}: {str(exc)[:120]}"
        # one refusal may be a moment's (the probe stream created by another process an instant ago, a
        # leader election): try again in a second, and say so when the second attempt fails too
        self._probe_failures = self._probe_failures + 1 if error else 0
        if error and self._probe_failures < 2:
            self._next_probe = time.monotonic() + 1.0
            return
        if error != self.store_problem:
            if error:
                log.warning("JetStream stream %s: %s", self.name, error)
            else:
                log.info("JetStream stream %s: storing again", self.name)
        self.store_problem = error

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.problem and problem is not None:
            log.warning("JetStream stream %s: %s", self.name, problem)
        elif problem is None and self.problem not in (None, NOT_CHECKED):
            log.info("JetStream stream %s usable again", self.name)
        self.problem = problem
