"""Configuration: one frozen dataclass built from ``LURESTREAM_*`` env vars and same-named flags.

Every setting is declared once in ``SETTINGS``; the env var, the ``serve`` flag, the default and the
parser all come from that declaration, so they cannot drift apart. Flags win over the environment.
A bad value raises :class:`ConfigError` whose message names the setting (SPEC §9).
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
    Setting("host", "127.0.0.1", _str, "address to listen on"),
    Setting("port", "8700", _int(0, 65535), "port to listen on"),
    Setting("processes", "1", _int(0, 1024), "worker processes sharing the port (0 = one per CPU)"),
    Setting(
        "nats_url", "nats://127.0.0.1:4222", _nats_url, "NATS server URL(s), comma-separated; empty disables the bus"
    ),
    Setting("mongo_uri", "mongodb://127.0.0.1:27017", _mongo_uri, "MongoDB connection URI"),
    Setting("mongo_db", "decnet", _str, "MongoDB database name"),
    Setting("mongo_driver", "pymongo", _choice("pymongo", "motor"), "pymongo (async API) or motor"),
    Setting("mongo_timeout_ms", "2000", _int(100), "how long a MongoDB call may wait for a server before 503"),
    Setting("jwt_secret", "", _str, "HMAC secret for HS* tokens (at least 32 characters)"),
    Setting("jwt_algorithms", "HS256", _algorithms, "accepted JWT algorithms, comma-separated"),
    Setting("jwt_public_key_file", "", _str, "PEM public key file for RS*/ES* tokens"),
    Setting("jwt_issuer", "decnet", _str, "required iss claim"),
    Setting("jwt_audience", "decnet-dashboard", _str, "required aud claim"),
    Setting("jwt_type", "access", _str, "required typ claim"),
    Setting("stream_roles", "viewer,admin", _csv, "roles allowed to open streams, comma-separated"),
    Setting("sse_max_per_user", "5", _int(1), "open streams per user per process"),
    Setting("keepalive_seconds", "15", _float(0), "idle time before a keepalive comment"),
    Setting("send_timeout_seconds", "10", _float(0), "a write that does not complete within this closes the stream"),
    Setting("queue_max", "256", _int(1), "events buffered per connection"),
    Setting("jetstream", "", _stream_name, "JetStream stream name: event ids and resume (empty = off)"),
    Setting(
        "jetstream_max_age", "24h", _scaled(_DURATION_UNITS, "a duration", "3600, 90m, 24h or 7d"), "stream retention"
    ),
    Setting(
        "jetstream_max_bytes", "1GiB", _scaled(_SIZE_UNITS, "a size", "1GiB or 500MB"), "stream size bound (oldest go)"
    ),
    Setting("jetstream_max_msgs", "0", _int(0), "stream message bound, oldest go (0 = unbounded)"),
    Setting("jetstream_replicas", "1", _int(1, 5), "stream replicas in a NATS cluster"),
    Setting("replay_max", "10000", _int(0), "most stream messages a resume may scan before it gives a snapshot"),
    Setting("replay_memory", "-1", _int(-1), "recent events kept in memory for resumes (-1 = LURESTREAM_REPLAY_MAX)"),
    Setting("retry_ms", "3000", _int(0), "reconnect hint sent before the server closes a stream (jittered)"),
    Setting("drain_seconds", "30", _float(0, inclusive=True), "on SIGTERM, close streams spread over this long"),
    Setting("auth_cache_seconds", "5", _float(0, inclusive=True), "cache user and revocation look-ups (0-10 s)"),
    Setting("ticket_ttl_seconds", "60", _int(1, 3600), "lifetime of a stream ticket"),
    Setting("allow_query_token", "true", _bool, "accept ?token=<JWT> on stream endpoints"),
    Setting("cors_origins", "", _csv, "origins allowed to open streams, comma-separated (* for any)"),
    Setting("trust_proxy_headers", "false", _bool, "take the client address from X-Forwarded-For / X-Real-IP"),
    Setting("log_level", "info", _choice("debug", "info", "warning", "error"), "log level"),
    Setting("log_format", "text", _choice("text", "json"), "text, or json for one object a line"),
    Setting("dev_insecure", "false", _bool, "DEV ONLY: accept a short JWT secret, or run with a random one"),
    # SPEC §11: what a client or a bus message may cost
    Setting("max_header_bytes", "16KiB", _size(1024), "request line + headers, at most (else 431)"),
    Setting("max_url_bytes", "8KiB", _size(256), "path + query, at most (else 414)"),
    Setting("max_id_length", "128", _int(1, 4096), "longest attacker or topology id looked up (longer: 404)"),
    Setting("max_body_bytes", "4KiB", _size(0), "request body, at most (else 413 before it is read)"),
    Setting("header_timeout_seconds", "10", _float(0), "complete request headers (and body) within this"),
    Setting("idle_timeout_seconds", "60", _float(0), "close a kept-alive connection idle this long"),
    Setting("max_connections_per_ip", "0", _int(0), "open connections per client address (0 = no bound)"),
    Setting("max_message_bytes", "1MiB", _size(1024), "bus messages larger than this are malformed"),
    Setting("stream_buffer_bytes", "1MiB", _size(4096), "bytes queued for one stream before it is closed as lagging"),
    Setting("replay_memory_bytes", "64MiB", _size(0), "bytes of recent events kept for resumes, at most"),
    Setting("mint_rate", "30/60s", _rate, "ticket and session mints per user per process (N/<duration>)"),
    # SPEC §12: credentials for the whole life of a stream, browser sessions
    Setting("auth_sweep_seconds", "5", _float(0), "how often open streams' users and jtis are checked again"),
    Setting("session_max_seconds", "43200", _int(60), "longest life of a browser session (capped by the JWT's exp)"),
    Setting("cookie_secure", "true", _bool, "mark the session cookie Secure (only sent over HTTPS)"),
    # SPEC §13: one cap across processes and hosts
    Setting(
        "cap_bucket",
        "lurestream_caps",
        _bucket_name,
        "JetStream KV bucket of the cross-process cap (empty = per process)",
    ),
    Setting("cap_lease_seconds", "30", _float(0), "a dead process's slots free within this long"),
)


@dataclass(frozen=True)
class Config:
    """The validated settings of one server process (see SETTINGS for meanings)."""

    host: str = "127.0.0.1"
    port: int = 8700
    processes: int = 1
    nats_url: str = "nats://127.0.0.1:4222"
    mongo_uri: str = "mongodb://127.0.0.1:27017"
    mongo_db: str = "decnet"
    mongo_driver: str = "pymongo"
    mongo_timeout_ms: int = 2000
    jwt_secret: str = ""
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_public_key_file: str = ""
    jwt_issuer: str = "decnet"
    jwt_audience: str = "decnet-dashboard"
    jwt_type: str = "access"
    stream_roles: tuple[str, ...] = ("viewer", "admin")
    sse_max_per_user: int = 5
    keepalive_seconds: float = 15.0
    send_timeout_seconds: float = 10.0
    queue_max: int = 256
    jetstream: str = ""
    jetstream_max_age: int = 86400
    jetstream_max_bytes: int = 2**30
    jetstream_max_msgs: int = 0
    jetstream_replicas: int = 1
    replay_max: int = 10000
    replay_memory: int = -1
    retry_ms: int = 3000
    drain_seconds: float = 30.0
    auth_cache_seconds: float = 5.0
    ticket_ttl_seconds: int = 60
    allow_query_token: bool = True
    cors_origins: tuple[str, ...] = ()
    trust_proxy_headers: bool = False
    log_level: str = "info"
    log_format: str = "text"
    dev_insecure: bool = False
    max_header_bytes: int = 16 * 1024
    max_url_bytes: int = 8 * 1024
    max_id_length: int = 128
    max_body_bytes: int = 4 * 1024
    header_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 60.0
    max_connections_per_ip: int = 0
    max_message_bytes: int = 2**20
    stream_buffer_bytes: int = 2**20
    replay_memory_bytes: int = 64 * 2**20
    mint_rate: tuple[int, float] = (30, 60.0)
    auth_sweep_seconds: float = 5.0
    session_max_seconds: int = 43200
    cookie_secure: bool = True
    cap_bucket: str = "lurestream_caps"
    cap_lease_seconds: float = 30.0
    jwt_public_key: str = field(default="", repr=False)
    jwt_secret_ephemeral: bool = False

    def __repr__(self) -> str:  # never print the secret
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("jwt_secret", "jwt_public_key")}
        return f"Config({shown}, jwt_secret={'***' if self.jwt_secret else ''!r})"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per setting; defaults stay None so the environment can fill the gaps."""
    for s in SETTINGS:
        parser.add_argument(
            s.flag, dest=s.name, default=None, metavar="VALUE", help=f"{s.help} [{s.env}, default {s.default!r}]"
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
        raise ConfigError("LURESTREAM_AUTH_CACHE_SECONDS", "must be at most 10 (SPEC §5 allows 10 s of staleness)")
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
