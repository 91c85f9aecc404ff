"""The ``lurestream`` command: ``serve``, ``init-db``, ``init-nats``, ``demo``, and the operator tools
``tail``, ``publish`` and ``mint-token``.

Configuration errors end the command with exit status 2 and one line naming the setting.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from collections.abc import Sequence

from lurestream import __version__
from lurestream.config import Config, ConfigError, add_flags, load_config
from lurestream.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lurestream", description="SSE streams of live deception-network events.")
    parser.add_argument("--version", action="version", version=f"lurestream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the server",
        description="Run the SSE server. Every flag is also an environment variable: --port is LURESTREAM_PORT.",
    )
    add_flags(serve)
    init_db = sub.add_parser("init-db", help="create the MongoDB indexes (idempotent)")
    for name in ("mongo_uri", "mongo_db", "mongo_driver"):
        init_db.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar="VALUE")
    init_nats = sub.add_parser(
        "init-nats",
        help="create or update the JetStream stream (LURESTREAM_JETSTREAM) used for event ids and resume",
        description="Create or update the JetStream stream over attacker.>, attribution.>, topology.> and "
        "decky.> with the retention set by LURESTREAM_JETSTREAM_MAX_AGE/_MAX_BYTES/_MAX_MSGS. Idempotent.",
    )
    for name in (
        "nats_url",
        "jetstream",
        "jetstream_max_age",
        "jetstream_max_bytes",
        "jetstream_max_msgs",
        "jetstream_replicas",
    ):
        init_nats.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar="VALUE")
    _add_tail(sub)
    publish = sub.add_parser(
        "publish",
        help="publish one well-formed event envelope on NATS (LURESTREAM_NATS_URL)",
        description="Wrap a JSON object payload in an envelope {v, id, topic, type, ts, payload} and publish it.",
    )
    publish.add_argument("subject", help="NATS subject, e.g. attacker.observation.ja3")
    publish.add_argument("payload", help='the payload as a JSON object, e.g. \'{"attacker_uuid": "..."}\'')
    publish.add_argument("--type", dest="type_", default="", help="the envelope's type field")
    publish.add_argument("--nats-url", dest="nats_url", default=None, metavar="VALUE")
    mint = sub.add_parser(
        "mint-token",
        help="DEVELOPMENT ONLY: mint an access token with LURESTREAM_JWT_SECRET",
        description="DEVELOPMENT ONLY. Mints an HS* access token for an existing user with the server's secret "
        "(LURESTREAM_JWT_SECRET, issuer, audience and type settings). Refuses without a real secret. "
        "Production tokens come from your identity service (DECNET's API).",
    )
    mint.add_argument("--user", required=True, help="the user's uuid (must exist in the users collection)")
    mint.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    demo = sub.add_parser("demo", help="run a self-contained demo: local NATS, MongoDB-wire, data, publisher, server")
    demo.add_argument("--port", type=int, default=8700, help="HTTP port (default 8700; 0 = any free port)")
    demo.add_argument("--rate", type=float, default=3.0, help="simulated events per second (default 3)")
    demo.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: until Ctrl-C)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        if args.command == "serve":
            return _serve(load_config(flags=flags))
        if args.command == "init-db":
            return _init_db(flags)
        if args.command == "init-nats":
            return _init_nats(flags)
        if args.command == "tail":
            return _tail(args)
        if args.command == "publish":
            return _publish(args)
        if args.command == "mint-token":
            return _mint_token(args)
        if args.command == "demo":
            from lurestream.demo import run_demo

            return run_demo(port=args.port, rate=args.rate, duration=args.duration)
    except ConfigError as exc:
        print(f"lurestream: configuration error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def _serve(config: Config) -> int:
    from lurestream.listening import StartupError

    setup_logging(config.log_level, config.log_format)
    try:
        if config.processes != 1:  # before anything imports prometheus-client (see workers)
            from lurestream.workers import run_workers

            return run_workers(config)
        from lurestream.server import serve

        asyncio.run(serve(config))
    except StartupError as exc:
        print(f"lurestream: {exc}", file=sys.stderr)
        return 1
    return 0


def _tool_config(flags: dict[str, str | None]) -> Config:
    """The config of a set-up command, which needs no JWT secret."""
    import os

    env = dict(os.environ)
    env["LURESTREAM_DEV_INSECURE"] = "true"
    return load_config(env=env, flags=flags)


def _init_nats(flags: dict[str, str | None]) -> int:
    config = _tool_config(flags)
    if not config.jetstream:
        raise ConfigError(
            "LURESTREAM_JETSTREAM", "is not set: name the stream to create (e.g. LURESTREAM_JETSTREAM=decnet)"
        )
    if not config.nats_url:
        raise ConfigError("LURESTREAM_NATS_URL", "is empty: init-nats needs a NATS server")
    from nats.js import api

    from lurestream.jetstream import connect_once, ensure_stream
    from lurestream.redact import redact

    async def run() -> tuple[str, api.StreamInfo]:
        nc = await connect_once(config.nats_url, "lurestream init-nats", config=config)
        try:
            return await ensure_stream(nc.jetstream(), config)
        finally:
            await nc.close()

    try:
        action, info = asyncio.run(run())
    except Exception as exc:  # unreachable server, JetStream not enabled, subjects taken by another stream
        print(f"lurestream init-nats: {type(exc).__name__}: {exc} (NATS at {redact(config.nats_url)})", file=sys.stderr)
        return 1
    cfg = info.config
    print(
        f"stream {cfg.name} {action}: subjects {', '.join(cfg.subjects or [])}; max age {config.jetstream_max_age}s, "
        f"max bytes {config.jetstream_max_bytes}, max msgs {cfg.max_msgs}, replicas {cfg.num_replicas}"
    )
    return 0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text}")
    return value


def _add_tail(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``lurestream tail <kind> [<id>]``: the kind is a word, as ``tail attacker <uuid>`` has always been, and
    what narrows a stream is a flag (``--decky``, ``--search``...); one spelling for each thing."""
    from lurestream.commands import TAIL_KINDS
    from lurestream.kinds import KINDS

    id_kinds = {kind.name for kind in KINDS if kind.has_id}
    tail = sub.add_parser(
        "tail",
        help="print a stream in the terminal, reconnecting (and resuming) until Ctrl-C",
        description="Follow one stream, one line per frame: an attacker's or a topology's (give its id), a "
        "firehose (identities, campaigns, orchestrator [--decky UUID]) or the live log feed (logs [--search "
        "TEXT] [--start-time T] [--end-time T]). It reconnects with Last-Event-ID, waits as the server asks "
        "(retry:, the waiting answer), and stops on Ctrl-C, after --max-events, or when the server signs the "
        "token out (exit status 1). The token comes from --token or LURESTREAM_TOKEN.",
        epilog="examples: lurestream tail attacker 2f1c…;  lurestream tail orchestrator --decky 9a0e…;  "
        "lurestream tail logs --search 'service:ssh' --max-events 20 (or: lurestream tail --logs --search …)",
    )
    tail.add_argument("kind", nargs="?", choices=TAIL_KINDS, help="what to follow: %(choices)s")
    tail.add_argument("id", nargs="?", default=None, help="the attacker uuid or topology id (those two kinds only)")
    flags = tail.add_argument_group("or name the kind with a flag (the same streams: `--logs` is `logs`)")
    for kind in TAIL_KINDS:
        if kind in id_kinds:
            flags.add_argument(f"--{kind}", dest=f"flag_{kind}", default=None, metavar="ID", help=f"tail {kind} ID")
        else:
            flags.add_argument(f"--{kind}", dest=f"flag_{kind}", action="store_true", help=f"tail {kind}")
    tail.add_argument("--decky", default=None, metavar="UUID", help="orchestrator: only this decky's events")
    tail.add_argument("--search", default=None, metavar="TEXT", help="logs: DECNET's search, e.g. 'service:ssh'")
    tail.add_argument("--start-time", default=None, metavar="ISO8601", help="logs: rows at or after this time")
    tail.add_argument("--end-time", default=None, metavar="ISO8601", help="logs: rows at or before this time")
    tail.add_argument("--url", default=None, help="server base URL (default http://LURESTREAM_HOST:LURESTREAM_PORT)")
    tail.add_argument("--token", default=None, help="access token (default: $LURESTREAM_TOKEN)")
    tail.add_argument(
        "--max-events",
        type=_count,
        default=0,
        metavar="N",
        help="exit (status 0) after N live events — a log feed's rows count one each; snapshots, stats and "
        "histograms do not (default 0: never)",
    )
    tail.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="reconnect after this long without a byte, not even a keepalive (default 60: four of the "
        "server's default 15 s keepalives)",
    )


def _tail_kind(args: argparse.Namespace) -> tuple[str, str | None]:
    """The kind and id named either way (``tail logs`` or ``tail --logs``, ``tail attacker X`` or
    ``tail --attacker X``); exactly one kind, else ValueError."""
    from lurestream.commands import TAIL_KINDS

    flagged = [(kind, getattr(args, f"flag_{kind}")) for kind in TAIL_KINDS if getattr(args, f"flag_{kind}")]
    named = [(args.kind, args.id)] if args.kind else []
    if not named and args.id:
        raise ValueError(f"unexpected {args.id!r}")
    chosen = named + [(kind, value if isinstance(value, str) else None) for kind, value in flagged]
    if len(chosen) != 1:
        raise ValueError(f"name one kind to follow: one of {', '.join(TAIL_KINDS)} (or --{TAIL_KINDS[0]} ...)")
    return chosen[0]


def _tail(args: argparse.Namespace) -> int:
    import os

    from lurestream.commands import OutputClosed, check_url, tail, target

    config = _tool_config({})  # a bad LURESTREAM_* is main's "configuration error", not a misuse of tail
    try:
        kind, resource_id = _tail_kind(args)
        followed = target(
            kind, resource_id, decky=args.decky, search=args.search, start_time=args.start_time, end_time=args.end_time
        )
        url = check_url(args.url or f"http://{config.host}:{config.port}")
    except ValueError as exc:
        print(f"lurestream tail: {exc}", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("LURESTREAM_TOKEN", "")
    if not token:
        print("lurestream tail: no token: pass --token or set LURESTREAM_TOKEN", file=sys.stderr)
        return 2
    if isinstance(sys.stdout, io.TextIOWrapper):  # a character the terminal's encoding lacks is shown escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return asyncio.run(tail(url, followed, token, max_events=args.max_events, idle_timeout=args.idle_timeout))
    except KeyboardInterrupt:  # Ctrl-C: the user is done; asyncio has closed the connection
        return 0
    except OutputClosed:  # `lurestream tail … | head`: the reader is done too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush finds a sink
        return 0


def _publish(args: argparse.Namespace) -> int:
    from lurestream.commands import parse_payload, publish
    from lurestream.redact import redact

    config = _tool_config({"nats_url": args.nats_url})
    if not config.nats_url:
        raise ConfigError("LURESTREAM_NATS_URL", "is empty: publish needs a NATS server")
    try:
        payload = parse_payload(args.payload)
    except ValueError as exc:
        print(f"lurestream publish: {exc}", file=sys.stderr)
        return 2
    try:
        print(asyncio.run(publish(config, args.subject, payload, args.type_)))
    except Exception as exc:
        print(f"lurestream publish: {type(exc).__name__}: {exc} (NATS at {redact(config.nats_url)})", file=sys.stderr)
        return 1
    return 0


def _mint_token(args: argparse.Namespace) -> int:
    from lurestream.tokens import mint_token

    config = load_config()
    if config.jwt_secret_ephemeral or not config.jwt_secret:
        raise ConfigError("LURESTREAM_JWT_SECRET", "is not set: mint-token signs with the server's real secret")
    if not config.jwt_algorithms[0].startswith("HS"):
        raise ConfigError("LURESTREAM_JWT_ALGORITHMS", "mint-token only signs HS* tokens (no private keys here)")
    print("DEVELOPMENT ONLY: a token signed with the server's secret; real ones come from DECNET", file=sys.stderr)
    print(mint_token(config, args.user, ttl=args.ttl))
    return 0


def _init_db(flags: dict[str, str | None]) -> int:
    config = _tool_config(flags)
    from lurestream.store.mongo import MongoStore

    async def run() -> list[str]:
        store = MongoStore(config.mongo_uri, config.mongo_db, config.mongo_driver, config.mongo_timeout_ms)
        try:
            return await store.init_indexes()
        finally:
            await store.close()

    from lurestream.store import StoreUnavailable

    try:
        names = asyncio.run(run())
    except StoreUnavailable as exc:
        print(f"lurestream init-db: {exc} at {config.mongo_uri}", file=sys.stderr)
        return 1
    for name in names:
        print(f"index ready: {name}")
    return 0
