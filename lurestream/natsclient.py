"""Every NATS connection lurestream makes, and nats.py hardened against what a publisher can send.

**Why a subclass.** nats.py (checked: 2.16) turns each ``MSG``/``HMSG`` from the server into a
:class:`~nats.aio.msg.Msg` inside its read loop, and any exception raised there ends the read loop for
good — the connection then looks connected, receives nothing, and never reconnects (protocol §16, "the bus").
A publisher controls three things that reach that code:

- the **subject and reply bytes**: nats-server relays any bytes but whitespace, and nats.py decodes them
  as strict UTF-8 (``_build_message``): one ``PUB attacker.observation.\\xff`` stopped every process for
  minutes, and again each time JetStream redelivered it. Here they are decoded with ``surrogateescape``
  (never raises; the hub then finds the subject is not UTF-8 and skips the message as malformed).
- the **headers**: a status line the client takes for the server's own (``NATS/1.0 100 Idle Heartbeat``)
  made nats.py treat a stored message as a control message, so its ordered consumer never advanced past it
  and reset onto it forever (nats-server 2.9.10 delivers such publisher headers as stored; 2.14 does not).
  A message JetStream delivered (reply ``$JS.ACK.…``) is never a control message: its status line is
  dropped before nats.py looks. Headers nats.py cannot parse at all are dropped (the message is kept).
- anything else that still raises while a message is processed is caught, counted and logged
  (rate-limited) — the read loop never sees it.

Upstream (nats-py 2.16): ``_build_message`` decodes strictly and ``_read_loop`` stops on any exception
other than a protocol or OS error; no release handles either. ``setup.py`` pins the range these overrides
were checked against; ``tests/test_integrity.py`` runs each case against a real server (2.14 and Debian's 2.9.10), and
``tests/test_natsclient.py`` checks the internals these overrides rely on.

The client also records when each subscription last received anything (data, heartbeats, flow control —
but not a heartbeat saying the consumer is stalled on flow control), so readiness can tell a consumer that
stopped making progress (protocol §16, "Readiness tells the truth"). And it refuses to speak in the clear
when TLS was asked for: nats.py upgrades to TLS only when the server asks, so a server (or a man in the
middle) that does not ask would get the credentials in plain text.
"""

from __future__ import annotations

import logging
import ssl
import time
import weakref
from collections.abc import Callable
from typing import Any

from nats import errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from lurestream.logs import Throttled

log = logging.getLogger("lurestream.nats")

_STATUS_HEADER_PREFIX = b"NATS/1.0 "  # a status line: "NATS/1.0 100 Idle Heartbeat"
_PLAIN_HEADER_LINE = b"NATS/1.0\r\n"
_JETSTREAM_DELIVERY = b"$JS.ACK."
_STALLED = b"Nats-Consumer-Stalled"  # a heartbeat of a consumer waiting for a flow-control reply

# Pings: nats.py's defaults (every 120 s, 2 outstanding) leave a paused or partitioned server for ~6 minutes.
# Every second with 2 outstanding, a silent server is left after ~3 s (protocol §16: within 10 s, with the
# reconnect and a new consumer), then the client moves to another URL of the cluster.
PING_INTERVAL_SECONDS = 1.0
MAX_OUTSTANDING_PINGS = 2


class GuardedClient(Client):
    """nats.py's client; a message it cannot take is skipped and counted, never fatal (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0  # messages nats.py could not process (counted, logged rate-limited)
        self.on_skipped: Callable[[str], None] | None = None
        self._last_inbound: weakref.WeakKeyDictionary[Subscription, float] = weakref.WeakKeyDictionary()
        self._skip_log = Throttled(log)
        self._tried: set[str] = set()  # servers tried since the connection was lost (the lost one first)

    # -- what readiness asks -----------------------------------------------------------------------------
    def last_inbound(self, sub: Subscription) -> float | None:
        """``time.monotonic()`` when ``sub`` last received anything (heartbeats included), or None."""
        return self._last_inbound.get(sub)

    @property
    def read_loop_alive(self) -> bool:
        """False when the connection is up but nats.py's read loop has ended (it would receive nothing)."""
        task = self._reading_task
        return task is not None and not task.done()

    async def recover(self) -> None:
        """Reconnect a connection whose read loop has ended (it would look connected and hear nothing):
        nats.py's own path for a broken connection, which restores every subscription."""
        log.warning("NATS read loop ended on a live connection; reconnecting")
        await self._process_op_err(errors.UnexpectedEOF())

    # -- leaving a server that stopped answering ---------------------------------------------------------
    async def _attempt_reconnect(self) -> None:
        current = self._current_server
        self._tried = {current.uri.netloc} if current is not None and current.uri is not None else set()
        await super()._attempt_reconnect()

    def choose_server(self, servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
        """nats.py's ``reconnect_to_server_handler``: a server not yet tried since the connection was lost
        — never the one just left first. nats.py's own choice could be that very server (it shuffles the
        whole pool), and a paused server costs a full connect timeout before the next is tried."""
        fresh = [s for s in servers if s.uri is None or s.uri.netloc not in self._tried]
        if not fresh:  # every server tried: start over, after the usual wait
            self._tried.clear()
            return servers[0], float(self.options["reconnect_time_wait"])
        choice = fresh[0]  # nats.py shuffled the pool: spread over the cluster
        if choice.uri is not None:
            self._tried.add(choice.uri.netloc)
        return choice, 0.0

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        """Before any credential is sent: a server that does not require TLS is refused when TLS was asked
        for (``LURESTREAM_NATS_TLS_*`` or a ``tls://`` URL)."""
        if initial_connection and self.wants_tls and not info.get("tls_required"):
            raise errors.Error("nats: TLS required by this client, but the server does not offer it")
        await super()._process_info(info, initial_connection)

    @property
    def wants_tls(self) -> bool:
        return "tls" in self.options or any(s.uri is not None and s.uri.scheme == "tls" for s in self._server_pool)

    # -- the overrides -------------------------------------------------------------------------------------
    def _build_message(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: dict[str, str] | None
    ) -> Msg:
        return self.msg_class(
            subject=subject.decode("utf-8", "surrogateescape"),
            reply=reply.decode("utf-8", "surrogateescape"),
            data=data,
            headers=headers,
            _client=self,
            _sid=sid,
        )

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        try:
            parsed: dict[str, str] | None = await super()._process_headers(headers)
        except Exception as exc:  # a status that is not ASCII, a header block nats.py cannot split
            self._skip("unparseable headers", exc)
            return None
        return parsed

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        sub = self._subs.get(sid)
        if sub is not None and not (headers and _STALLED in headers):
            self._last_inbound[sub] = time.monotonic()
        if headers and reply.startswith(_JETSTREAM_DELIVERY) and headers.startswith(_STATUS_HEADER_PREFIX):
            # A stored message: its status line came from a publisher, not the server (module docstring).
            end = headers.find(b"\r\n")
            headers = _PLAIN_HEADER_LINE + headers[end + 2 :] if end >= 0 else b""
        try:
            await super()._process_msg(sid, subject, reply, data, headers)
        except Exception as exc:
            self._skip(f"message on {subject[:128]!r}", exc)

    def _skip(self, what: str, exc: BaseException) -> None:
        self.skipped += 1
        if self.on_skipped is not None:
            self.on_skipped(what)
        self._skip_log.warning(
            "skipped a NATS %s nats.py could not process (%s: %s)", what, type(exc).__name__, str(exc)[:200]
        )


def tls_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext | None:
    """A client TLS context from the NATS TLS settings (None when none is set: the URL's scheme decides)."""
    if not (ca_file or cert_file):
        return None
    context = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        context.load_cert_chain(cert_file, key_file or None)
    return context


def auth_options(config: Any) -> dict[str, Any]:
    """nats.py ``connect`` keywords for the credentials in ``config`` (the ``LURESTREAM_NATS_*`` settings)."""
    options: dict[str, Any] = {}
    if getattr(config, "nats_creds_file", ""):
        options["user_credentials"] = config.nats_creds_file
    if getattr(config, "nats_nkey_seed_file", ""):
        options["nkeys_seed"] = config.nats_nkey_seed_file
    if getattr(config, "nats_user", ""):
        options["user"] = config.nats_user
        options["password"] = getattr(config, "nats_password", "")
    if getattr(config, "nats_token", ""):
        options["token"] = config.nats_token
    if getattr(config, "nats_inbox_prefix", ""):  # a publisher allowed only its own inboxes (docs/operations.md)
        options["inbox_prefix"] = config.nats_inbox_prefix
    tls = tls_context(
        getattr(config, "nats_tls_ca_file", ""),
        getattr(config, "nats_tls_cert_file", ""),
        getattr(config, "nats_tls_key_file", ""),
    )
    if tls is not None:
        options["tls"] = tls
    return options


def servers_of(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


async def connect(url: str, name: str, config: Any = None, **options: Any) -> GuardedClient:
    """A connected :class:`GuardedClient` to the servers of ``url`` with ``config``'s credentials.

    ``options`` are nats.py ``connect`` keywords (callbacks, reconnect policy); the ping policy that
    leaves a silent server within 10 s is the default.
    """
    client = GuardedClient()
    options.setdefault("ping_interval", PING_INTERVAL_SECONDS)
    options.setdefault("max_outstanding_pings", MAX_OUTSTANDING_PINGS)
    options.setdefault("reconnect_to_server_handler", client.choose_server)
    await client.connect(servers=servers_of(url), name=name, **(auth_options(config) if config else {}), **options)
    return client
