"""BaseHandler: credentials, JSON errors and CORS, shared by every endpoint.

Auth runs once in ``prepare()`` for handlers that set ``auth_required``; every error leaves through
``write_error`` as ``{"detail": ...}`` JSON (401s with ``WWW-Authenticate: Bearer``). The process's
``Services`` arrive through ``initialize()`` from the route table, never by import, and handlers reach
each one through a typed property (as jupyter_server does over ``self.settings``): a misspelt service is a
type error, not a failure at request time.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import tornado.web

from lurestream import replies, tornado_internals
from lurestream.auth import INVALID_CREDENTIALS, NOT_AUTHENTICATED, Authenticator, AuthError, Identity
from lurestream.config import Config
from lurestream.metrics import Metrics
from lurestream.redact import redact, redact_url
from lurestream.services import Services
from lurestream.store import Store, StoreUnavailable

log = logging.getLogger("lurestream.handlers")

STORE_UNAVAILABLE = "Store unavailable"
SESSION_COOKIE = "lurestream_session"


class ApiError(tornado.web.HTTPError):
    """An error answered as ``{"detail": detail}`` with ``status``.

    ``retry_after`` (seconds) marks a refusal that clears on its own (the store unreachable, slots of a
    process that died): JSON answers carry ``Retry-After``, and a stream endpoint answers a client that
    asked for ``text/event-stream`` with a retry instead of a status a native EventSource would treat as
    final (``StreamHandler.write_error``).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        log_message: str | None = None,
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, log_message=redact(log_message or detail).replace("%", "%%"))
        self.detail = detail
        self.headers = headers or {}
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers.setdefault("Retry-After", str(max(1, math.ceil(retry_after))))


class BaseHandler(tornado.web.RequestHandler):
    """Shared request plumbing; subclasses declare ``auth_required`` and ``accept_ticket``."""

    auth_required = False
    refusal: str | None = None  # why a request was refused, for its access line
    accept_ticket = False
    accept_session = False  # the browser session cookie (protocol §12): streams and picker lists only
    accept_query_token = False
    fresh_credentials = False  # read the user and revocation from the store, not the cache (minting)

    def initialize(self, services: Services) -> None:
        self.services = services
        self.identity: Identity | None = None

    # -- the process's services ----------------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self.services.config

    @property
    def auth(self) -> Authenticator:
        return self.services.auth

    @property
    def metrics(self) -> Metrics:
        return self.services.metrics

    @property
    def store(self) -> Store:
        return self.services.store

    # -- CORS and the headers every response carries ----------------------------------------------
    def set_default_headers(self) -> None:
        cors = replies.cors_headers(self.settings.get("cors_origins", ()), self.request.headers.get("Origin"))
        for name, value in {**replies.COMMON_HEADERS, **cors}.items():
            self.set_header(name, value)

    def options(self, *args: Any) -> None:
        """CORS preflight: answered without credentials (the real request still needs them), allowing the
        methods this path implements (a hard-coded list left out ``DELETE`` of the session)."""
        self.set_header("Access-Control-Allow-Methods", ", ".join(allowed_methods(self)))
        self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)

    # -- auth -----------------------------------------------------------------------------------
    async def prepare(self) -> None:
        self.track()
        if self.request.method not in allowed_methods(self):  # 405 before auth: it reveals nothing
            raise tornado.web.HTTPError(405)
        if not self.auth_required or self.request.method == "OPTIONS":
            return
        try:
            self.identity = await self._authenticate()
        except AuthError as exc:
            self.metrics.auth_failure(exc.status, exc.reason)
            raise ApiError(exc.status, exc.detail, f"auth refused: {exc.reason}") from None

    def store_unavailable(self, exc: StoreUnavailable) -> ApiError:
        """The one answer to a store that did not answer: 503, and retry (it clears on its own)."""
        return ApiError(503, STORE_UNAVAILABLE, str(exc), retry_after=self.config.retry_ms / 1000)

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """Tornado's decoding, but its 400 for bytes that are not UTF-8 quoted the first 40 bytes of the
        value in the log line — a ticket's or token's (no ``=`` left for redaction to find)."""
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"Invalid unicode in {name or 'url'}") from None

    async def _authenticate(self) -> Identity:
        """Credentials in protocol §5.1/§12 order: Bearer header, ?ticket=, the session cookie, ?token=."""
        header = self.request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError(401, INVALID_CREDENTIALS, "malformed Authorization header")
            return await self.auth.authenticate_token(token.strip(), fresh=self.fresh_credentials)
        if self.accept_ticket:
            ticket: str | None = self.get_query_argument("ticket", None)
            if ticket:
                return await self.auth.redeem_ticket(ticket)
        if self.accept_session:
            session = self.get_cookie(SESSION_COOKIE)
            if session:
                return await self.auth.authenticate_session(session)
        if self.accept_query_token and self.config.allow_query_token:
            query_token: str | None = self.get_query_argument("token", None)
            if query_token:
                return await self.auth.authenticate_token(query_token)
        raise AuthError(401, NOT_AUTHENTICATED, "no credentials")

    # -- responses ------------------------------------------------------------------------------
    def write_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error, once: a ``StoreUnavailable`` anywhere in a handler is the 503 of
        ``store_unavailable`` (Tornado's idiom: exceptions rise to here, no try/except per call site)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StoreUnavailable):
            exc = self.store_unavailable(exc)
            status_code = exc.status_code
            self.set_status(status_code)
        if status_code == 503 and isinstance(exc, ApiError) and exc.retry_after:
            self.metrics.http_refused.labels("store_unavailable").inc()
        self.write_api_error(status_code, exc if isinstance(exc, ApiError) else None)

    def write_api_error(self, status_code: int, error: ApiError | None) -> None:
        write_json_error(self, status_code, error)

    # -- in-flight requests (a drain waits for them) --------------------------------------------------
    _tracked = False

    def track(self) -> None:
        if not self._tracked:
            self._tracked = True
            self.services.requests.count += 1

    def untrack(self) -> None:
        """The request is done with its handler: answered (``on_finish``) or handed to the live writer."""
        if self._tracked:
            self._tracked = False
            self.services.requests.count -= 1

    def on_finish(self) -> None:
        self.untrack()

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        """A refused request (an HTTPError, or the store not answering) is said once, on its access line
        (``refusal``); anything else is Tornado's error with its traceback."""
        if isinstance(value, StoreUnavailable):
            self.refusal = f"{STORE_UNAVAILABLE}: {value}"
            return
        if isinstance(value, tornado.web.HTTPError):
            message = value.get_message() or ""
            self.refusal = message if value.args else message.replace("%%", "%")  # see ApiError
            return
        super().log_exception(typ, value, tb)

    def _request_summary(self) -> str:
        # Tornado's warning/error lines print the URI; keep credentials out of them.
        return f"{self.request.method} {redact_url(self.request.uri or '')} ({self.request.remote_ip})"


def allowed_methods(handler: tornado.web.RequestHandler) -> list[str]:
    """The methods a handler class implements (for a 405's ``Allow``)."""
    cls = type(handler)
    base = tornado.web.RequestHandler
    return [m for m in cls.SUPPORTED_METHODS if getattr(cls, m.lower()) is not getattr(base, m.lower())]


def write_json_error(handler: tornado.web.RequestHandler, status_code: int, exc: ApiError | None = None) -> None:
    """Every error leaves as ``{"detail": ...}`` JSON (protocol §1); a 405 names what is allowed."""
    detail = exc.detail if exc is not None else (tornado_internals.reason(handler) or "Internal Server Error")
    if status_code == 401:
        handler.set_header("WWW-Authenticate", "Bearer")
    if status_code == 405:
        handler.set_header("Allow", ", ".join(allowed_methods(handler)))
    if exc is not None:
        for name, value in exc.headers.items():
            handler.set_header(name, value)
    handler.set_header("Content-Type", "application/json")
    for name, value in replies.COMMON_HEADERS.items():
        handler.set_header(name, value)
    handler.finish(replies.error_body(detail))


class NotFoundHandler(BaseHandler):
    """Unknown paths get the same JSON error shape as everything else."""

    def prepare(self) -> None:  # type: ignore[override]
        raise ApiError(404, "Not Found")
