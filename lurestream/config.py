"""Configuration: one frozen dataclass built from ``LURESTREAM_*`` env vars and same-named flags.

Every setting is declared once in ``SETTINGS``; the env var, the ``serve`` flag, the default and the
parser all come from that declaration, so they cannot drift apart. Flags win over the environment.
A bad value raises :class:`ConfigError` whose message names the setting (protocol §9).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

MIN_SECRET_LENGTH = 32
SUPPORTED_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


class ConfigError(ValueError):
    """A setting has a bad value; the message starts with the setting's env var name."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return parse


def _float(low: float, inclusive: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {raw!r}")
        if inclusive and value < low:
            raise ValueError(f"must be at least {low:g}, got {value:g}")
        if not inclusive and not value > low:
            raise ValueError(f"must be greater than {low:g}, got {value:g}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _str(raw: str) -> str:
    return raw.strip()


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _algorithms(raw: str) -> tuple[str, ...]:
    algs = tuple(a.upper() for a in _csv(raw))
    if not algs:
        raise ValueError("at least one algorithm is required")
    for alg in algs:
        if alg not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"unsupported algorithm {alg!r} (supported: {', '.join(SUPPORTED_ALGORITHMS)})")
    return algs


def _nats_url(raw: str) -> str:
    value = raw.strip()
    for url in filter(None, (u.strip() for u in value.split(","))):
        if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ValueError(f"expected nats://host:port (or empty to disable the bus), got {url!r}")
    return value


def _stream_name(raw: str) -> str:
    value = raw.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", value):
        raise ValueError(f"a JetStream stream name uses letters, digits, '-' and '_' only, got {raw!r}")
    return value


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _scaled(units: dict[str, int], what: str, example: str) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", raw)
        if not match or match.group(2).lower() not in units:
            raise ValueError(f"expected {what} such as {example}, got {raw!r}")
        value = int(match.group(1)) * units[match.group(2).lower()]
        if value <= 0:
            raise ValueError(f"must be greater than 0, got {raw!r}")
        return value

    return parse


def _readable_file(raw: str) -> str:
    """A path that can be read now (empty: unset), so a typo stops start-up instead of every connect."""
    path = raw.strip()
    if path and not os.access(path, os.R_OK):
        raise ValueError(f"cannot read {path!r}")
    return path


def _bucket_name(raw: str) -> str:
    value = raw.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise ValueError(f"a bucket name uses letters, digits, '-' and '_' only, got {raw!r}")
    return value


def _size(low: int) -> Callable[[str], int]:
    """A byte count: ``4096``, ``4KiB``, ``1MiB``, ``500MB``; at least ``low``."""
    parse_scaled = _scaled(_SIZE_UNITS, "a size", "4096, 16KiB or 1MiB")

    def parse(raw: str) -> int:
        value = 0 if raw.strip() == "0" else parse_scaled(raw)
        if value < low:
            raise ValueError(f"must be at least {low} bytes, got {raw!r}")
        return value

    return parse


def _rate(raw: str) -> tuple[int, float]:
    """``N/<duration>`` (``30/60s``, ``100/1m``): at most N events in any window of that duration."""
    count, slash, window = raw.strip().partition("/")
    if not slash or not count.strip().isdigit() or int(count) < 1:
        raise ValueError(f"expected N/<duration> such as 30/60s, got {raw!r}")
    return int(count), float(_scaled(_DURATION_UNITS, "a duration", "60s or 1m")(window))


def _mongo_uri(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError(f"expected a mongodb:// URI, got {raw!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """One configuration knob: its field name, default (as the env var would spell it) and parser."""

    name: str
    default: str
    parse: Callable[[str], Any]
    help: str

    @property
    def env(self) -> str:
        return "LURESTREAM_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "127.0.0.1", _str, "the address to listen on"),
    Setting("port", "8700", _int(0, 65535), "the port to listen on"),
    Setting(
        "processes",
        "1",
        _int(0, 1024),
        (
            "worker processes sharing the port (`0` = one per CPU); each has its own NATS connection and MongoDB "
            "client; the per-user cap holds across them (with JetStream)"
        ),
    ),
    Setting("nats_url", "nats://127.0.0.1:4222", _nats_url, "NATS server(s), comma-separated; empty disables the bus"),
    Setting(
        "mongo_uri",
        "mongodb://127.0.0.1:27017",
        _mongo_uri,
        "the store: a `mongodb://` URI (replica set, pool options)",
    ),
    Setting("mongo_db", "decnet", _str, "the store's database"),
    Setting("mongo_driver", "pymongo", _choice("pymongo", "motor"), "`pymongo` (PyMongo's async API) or `motor`"),
    Setting(
        "mongo_timeout_ms",
        "2000",
        _int(100),
        "how long a MongoDB call may wait for a server before the request gets 503",
    ),
    Setting("jwt_secret", "", _str, "HMAC secret, at least 32 characters; required for HS* algorithms"),
    Setting(
        "jwt_algorithms", "HS256", _algorithms, "accepted algorithms (HS256/384/512, RS256/384/512, ES256/384/512)"
    ),
    Setting("jwt_public_key_file", "", _str, "PEM public key for RS*/ES*"),
    Setting("jwt_issuer", "decnet", _str, "required `iss` claim"),
    Setting("jwt_audience", "decnet-dashboard", _str, "required `aud` claim"),
    Setting("jwt_type", "access", _str, "required `typ` claim"),
    Setting("stream_roles", "viewer,admin", _csv, "roles that may open streams and mint tickets"),
    Setting(
        "sse_max_per_user",
        "5",
        _int(1),
        (
            "open streams per user, across every process and host (see `LURESTREAM_CAP_BUCKET`; per process without"
            " JetStream)"
        ),
    ),
    Setting("keepalive_seconds", "15", _float(0), "idle time before a `: keepalive` comment"),
    Setting("send_timeout_seconds", "10", _float(0), "a write not flushed within this closes the connection"),
    Setting("queue_max", "256", _int(1), "events buffered per connection"),
    Setting(
        "jetstream",
        "",
        _stream_name,
        (
            "JetStream stream name: event ids and resume (empty = off); created by `lurestream init-nats`, or by "
            "the server if missing"
        ),
    ),
    Setting(
        "jetstream_max_age",
        "24h",
        _scaled(_DURATION_UNITS, "a duration", "3600, 90m, 24h or 7d"),
        "retention by age (`3600`, `90m`, `24h`, `7d`)",
    ),
    Setting(
        "jetstream_max_bytes",
        "1GiB",
        _scaled(_SIZE_UNITS, "a size", "1GiB or 500MB"),
        "retention by size (`500MB`, `1GiB`); oldest messages go first",
    ),
    Setting("jetstream_max_msgs", "0", _int(0), "retention by count (`0` = no bound)"),
    Setting("jetstream_replicas", "1", _int(1, 5), "stream replicas in a NATS cluster (`3` for a resilient cluster)"),
    Setting("replay_max", "10000", _int(0), "most stream messages one resume may scan; a longer gap gets a snapshot"),
    Setting(
        "replay_memory",
        "-1",
        _int(-1),
        (
            "recent events each process keeps in memory to serve resumes without reading JetStream (`-1` = "
            "`LURESTREAM_REPLAY_MAX`; `0` = always read JetStream)"
        ),
    ),
    Setting("retry_ms", "3000", _int(0), "reconnect hint sent before the server closes a stream (jittered ±50%)"),
    Setting(
        "drain_seconds",
        "30",
        _float(0, inclusive=True),
        "on SIGTERM, close open streams spread over this long (`0` = at once)",
    ),
    Setting(
        "auth_cache_seconds",
        "5",
        _float(0, inclusive=True),
        (
            "per-process cache of user and revocation look-ups (0–10; `0` = off): a revocation or role change takes"
            " effect within this long"
        ),
    ),
    Setting("ticket_ttl_seconds", "60", _int(1, 3600), "stream ticket lifetime"),
    Setting("allow_query_token", "true", _bool, "accept `?token=<JWT>`"),
    Setting("cors_origins", "", _csv, "origins allowed to call the API from a browser, comma-separated (`*` = any)"),
    Setting(
        "trust_proxy_headers",
        "false",
        _bool,
        (
            "behind a reverse proxy: log the client address from `X-Forwarded-For`/`X-Real-IP` (off, so a direct "
            "client cannot forge it)"
        ),
    ),
    Setting("log_level", "info", _choice("debug", "info", "warning", "error"), "`debug`, `info`, `warning` or `error`"),
    Setting("log_format", "text", _choice("text", "json"), "`text`, or `json` for one object a line"),
    Setting(
        "dev_insecure",
        "false",
        _bool,
        "development only: accept a short JWT secret, or start without one (a random secret, logged as such)",
    ),
    # protocol §11: what a client or a bus message may cost
    Setting(
        "max_header_bytes",
        "16KiB",
        _size(1024),
        "request line + headers, at most: else 431 (414 when the request line alone is too long)",
    ),
    Setting("max_url_bytes", "8KiB", _size(256), "path + query, at most: else 414"),
    Setting(
        "max_id_length",
        "128",
        _int(1, 4096),
        "a longer attacker or topology id is unknown: 404 after auth, no store query",
    ),
    Setting(
        "max_body_bytes",
        "4KiB",
        _size(0),
        "request body, at most: else 413, answered before the body is read; `Transfer-Encoding` on a request → 411",
    ),
    Setting(
        "header_timeout_seconds",
        "10",
        _float(0),
        (
            "a connection must send complete request headers (and body) this soon after it opens, or after the "
            "first byte of a kept-alive request: else 408 and closed"
        ),
    ),
    Setting(
        "idle_timeout_seconds", "60", _float(0), "a kept-alive connection idle between requests this long is closed"
    ),
    Setting(
        "max_connections_per_ip",
        "0",
        _int(0),
        (
            "open connections per client address (`0` = no bound; behind a proxy every client has the proxy's "
            "address); over it → 429 and closed"
        ),
    ),
    Setting(
        "max_message_bytes",
        "1MiB",
        _size(1024),
        "a bigger bus message is malformed (skipped, counted, logged rate-limited)",
    ),
    Setting(
        "stream_buffer_bytes",
        "1MiB",
        _size(4096),
        (
            "bytes waiting for one stream (queued + unsent + a resume's replay); past it the stream is closed as "
            "lagging with a `retry:` hint"
        ),
    ),
    Setting("replay_memory_bytes", "64MiB", _size(0), "bytes of recent events a process keeps for resumes, at most"),
    Setting(
        "mint_rate",
        "30/60s",
        _rate,
        "ticket and session mints per user per process; beyond → 429 `Too many ticket requests` with `Retry-After`",
    ),
    # protocol §12: credentials for the whole life of a stream, browser sessions
    Setting(
        "auth_sweep_seconds",
        "5",
        _float(0),
        (
            "how often the users and jtis of open streams are read again: a revoked token, a moved "
            "`tokens_valid_from`, a deleted user (`end` `revoked`) or a role that may no longer stream (`end` "
            "`forbidden`) ends its streams within this (`0` = never; expiry is checked every second regardless)"
        ),
    ),
    Setting(
        "session_max_seconds",
        "43200",
        _int(60),
        "longest life of a browser session cookie (it never outlives the JWT it was minted from)",
    ),
    Setting(
        "cookie_secure",
        "true",
        _bool,
        "mark the session cookie `Secure` (sent over HTTPS only; `false` for plain-HTTP development)",
    ),
    # protocol §13: one cap across processes and hosts
    Setting(
        "cap_bucket",
        "lurestream_caps",
        _bucket_name,
        (
            "with JetStream on, the per-user cap counts a user's streams on every process and host sharing the NATS"
            " cluster, through this key-value bucket (each process watches it, so admission costs no round trip); "
            "empty = per process"
        ),
    ),
    Setting(
        "cap_lease_seconds",
        "10",
        _float(0),
        (
            "the slots of a process that dies without stopping (SIGKILL, a lost host) are free everywhere within "
            "this long; meanwhile a reconnecting EventSource is told to retry, not refused"
        ),
    ),
    # NATS credentials (protocol §16): how real clusters authenticate; see docs/operations.md for permissions
    Setting(
        "nats_user", "", _str, "NATS user name (with `LURESTREAM_NATS_PASSWORD`); credentials can also be in the URL"
    ),
    Setting("nats_password", "", _str, "NATS password (never logged)"),
    Setting("nats_token", "", _str, "NATS authentication token (never logged)"),
    Setting(
        "nats_creds_file",
        "",
        _readable_file,
        "NATS credentials file (user JWT + NKey seed, a `.creds` file): decentralised auth",
    ),
    Setting("nats_nkey_seed_file", "", _readable_file, "NATS NKey seed file (nkey authentication)"),
    Setting(
        "nats_tls_ca_file",
        "",
        _readable_file,
        "CA certificate(s) that sign the NATS servers' certificates (PEM); set it (or a `tls://` URL) to require TLS",
    ),
    Setting("nats_tls_cert_file", "", _readable_file, "client certificate for NATS mutual TLS (PEM)"),
    Setting("nats_tls_key_file", "", _readable_file, "the client certificate's private key (PEM)"),
    # protocol §15: the live log feed
    Setting("log_batch", "50", _int(1, 1000), "rows a frame of the live log feed carries at most"),
    Setting(
        "log_poll_seconds",
        "1",
        _float(0),
        "how often each process reads the rows inserted into `logs` (one query, whatever the number of viewers)",
    ),
    Setting(
        "log_stats_seconds",
        "10",
        _float(0),
        "how often stats are read and stats and histograms sent again while rows arrive",
    ),
    Setting("log_histogram_minutes", "15", _int(1, 10080), "the live log feed's histogram buckets, in minutes"),
    Setting(
        "log_replay_max",
        "10000",
        _int(0),
        "rows a resume of the live log feed scans at most; a longer gap is announced (`gap`), not replayed",
    ),
    Setting(
        "log_search_max_length",
        "1024",
        _int(1, 8192),
        "characters of a live log feed `search` at most (else 400)",
    ),
    Setting(
        "log_histogram_filters",
        "256",
        _int(0),
        "distinct filters (search, start_time, end_time) a process keeps a histogram for; a stream with "
        "another gets an empty histogram marked `truncated`",
    ),
    Setting(
        "nats_inbox_prefix",
        "_INBOX",
        _str,
        "the subject prefix of this connection's reply inboxes (`lurestream publish` as a publisher allowed only "
        "its own inboxes, e.g. `_INBOX_decnet`; see docs/operations.md)",
    ),
)


@dataclass(frozen=True)
class Config:
    """The validated settings of one server process. Meanings and defaults live in SETTINGS, once: build
    a Config with ``load_config`` or ``config_from``, never field by field."""

    host: str
    port: int
    processes: int
    nats_url: str
    mongo_uri: str
    mongo_db: str
    mongo_driver: str
    mongo_timeout_ms: int
    jwt_secret: str
    jwt_algorithms: tuple[str, ...]
    jwt_public_key_file: str
    jwt_issuer: str
    jwt_audience: str
    jwt_type: str
    stream_roles: tuple[str, ...]
    sse_max_per_user: int
    keepalive_seconds: float
    send_timeout_seconds: float
    queue_max: int
    jetstream: str
    jetstream_max_age: int
    jetstream_max_bytes: int
    jetstream_max_msgs: int
    jetstream_replicas: int
    replay_max: int
    replay_memory: int
    retry_ms: int
    drain_seconds: float
    auth_cache_seconds: float
    ticket_ttl_seconds: int
    allow_query_token: bool
    cors_origins: tuple[str, ...]
    trust_proxy_headers: bool
    log_level: str
    log_format: str
    dev_insecure: bool
    max_header_bytes: int
    max_url_bytes: int
    max_id_length: int
    max_body_bytes: int
    header_timeout_seconds: float
    idle_timeout_seconds: float
    max_connections_per_ip: int
    max_message_bytes: int
    stream_buffer_bytes: int
    replay_memory_bytes: int
    mint_rate: tuple[int, float]
    auth_sweep_seconds: float
    session_max_seconds: int
    cookie_secure: bool
    cap_bucket: str
    cap_lease_seconds: float
    nats_user: str
    nats_password: str = field(repr=False)
    nats_token: str = field(repr=False)
    nats_creds_file: str
    nats_nkey_seed_file: str
    nats_tls_ca_file: str
    nats_tls_cert_file: str
    nats_tls_key_file: str
    nats_inbox_prefix: str
    log_batch: int
    log_poll_seconds: float
    log_stats_seconds: float
    log_histogram_minutes: int
    log_replay_max: int
    log_search_max_length: int
    log_histogram_filters: int
    jwt_public_key: str = field(repr=False)
    jwt_secret_ephemeral: bool = False

    def __repr__(self) -> str:  # never print the secret
        hidden = ("jwt_secret", "jwt_public_key", "nats_password", "nats_token")
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in hidden}
        return f"Config({shown}, jwt_secret={'***' if self.jwt_secret else ''!r})"


def settings_markdown() -> str:
    """The README's configuration table, from SETTINGS (``python -m lurestream.config`` prints it;
    tests/test_readme.py checks the README holds exactly this)."""
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "empty"
        lines.append(f"| `{s.env}` | {default} | {s.help} |")
    return "\n".join(lines)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per setting; defaults stay None so the environment can fill the gaps."""
    for s in SETTINGS:
        text = s.help.replace("%", "%%")  # argparse formats help with %
        parser.add_argument(
            s.flag, dest=s.name, default=None, metavar="VALUE", help=f"{text} [{s.env}, default {s.default!r}]"
        )


def load_config(env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None) -> Config:
    """Build and validate the Config from the environment and parsed flags (flags win)."""
    env = os.environ if env is None else env
    flags = flags or {}
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = flags.get(s.name)
        if raw is None:
            raw = env.get(s.env, s.default)
        try:
            values[s.name] = s.parse(str(raw))
        except ValueError as exc:
            raise ConfigError(s.env, str(exc)) from None
    values["jwt_public_key"] = _read_public_key(values["jwt_public_key_file"])
    if values["auth_cache_seconds"] > 10:
        raise ConfigError("LURESTREAM_AUTH_CACHE_SECONDS", "must be at most 10 (protocol §5 allows 10 s of staleness)")
    config = Config(**values)
    _check_keys(config)
    if config.dev_insecure and not config.jwt_secret and any(a.startswith("HS") for a in config.jwt_algorithms):
        # Dev mode without a secret: a random one lets the server start; no outside token will verify.
        config = replace(config, jwt_secret=secrets.token_urlsafe(48), jwt_secret_ephemeral=True)
    return config


def _read_public_key(path: str) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="ascii") as fh:
            key = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("LURESTREAM_JWT_PUBLIC_KEY_FILE", f"cannot read {path!r}: {exc}") from None
    if "BEGIN" not in key:
        raise ConfigError("LURESTREAM_JWT_PUBLIC_KEY_FILE", f"{path!r} is not a PEM public key")
    return key


def _check_keys(config: Config) -> None:
    hmac_algs = [a for a in config.jwt_algorithms if a.startswith("HS")]
    asym_algs = [a for a in config.jwt_algorithms if not a.startswith("HS")]
    if asym_algs and not config.jwt_public_key:
        raise ConfigError(
            "LURESTREAM_JWT_PUBLIC_KEY_FILE", f"required for {', '.join(asym_algs)} in LURESTREAM_JWT_ALGORITHMS"
        )
    if hmac_algs and not config.dev_insecure:
        if not config.jwt_secret:
            raise ConfigError(
                "LURESTREAM_JWT_SECRET", "is required (set LURESTREAM_DEV_INSECURE=true only for development)"
            )
        if len(config.jwt_secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                "LURESTREAM_JWT_SECRET",
                f"is too weak: {len(config.jwt_secret)} characters, at least {MIN_SECRET_LENGTH} required",
            )


def config_from(overrides: Mapping[str, Any] | None = None) -> Config:
    """Config from defaults plus keyword overrides given as env-style strings (used by tests and the demo)."""
    env: dict[str, str] = {}
    for key, value in (overrides or {}).items():
        env["LURESTREAM_" + key.upper()] = value if isinstance(value, str) else _render(value)
    return load_config(env=env)


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


if __name__ == "__main__":
    print(settings_markdown())
