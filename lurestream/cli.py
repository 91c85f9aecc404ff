"""The ``lurestream`` command: ``serve``, ``init-db``, ``init-nats``, ``demo``, and the operator tools
``tail``, ``publish`` and ``mint-token``.

Configuration errors end the command with exit status 2 and one line naming the setting.
"""

from __future__ import annotations

import argparse
import asyncio
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
    tail = sub.add_parser(
        "tail",
        help="print a stream in the terminal, reconnecting (and resuming) until Ctrl-C",
        description="Follow an attacker or topology stream. The token comes from --token or LURESTREAM_TOKEN.",
    )
    tail.add_argument("kind", choices=("attacker", "topology"))
    tail.add_argument("id", help="attacker uuid or topology id")
    tail.add_argument("--url", default=None, help="server base URL (default http://LURESTREAM_HOST:LURESTREAM_PORT)")
    tail.add_argument("--token", default=None, help="access token (default: $LURESTREAM_TOKEN)")
    tail.add_argument("--max-events", type=int, default=0, help="exit after this many live events (default: never)")
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


def _tail(args: argparse.Namespace) -> int:
    import os

    from lurestream.commands import tail

    token = args.token or os.environ.get("LURESTREAM_TOKEN", "")
    if not token:
        print("lurestream tail: no token: pass --token or set LURESTREAM_TOKEN", file=sys.stderr)
        return 2
    config = _tool_config({})
    url = args.url or f"http://{config.host}:{config.port}"
    try:
        return asyncio.run(tail(url, args.kind, args.id, token, max_events=args.max_events))
    except KeyboardInterrupt:
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
