"""Operator commands as a user runs them: ``lurestream tail``, ``publish`` and ``mint-token``.

``tail`` runs as a child process against a real server (the test's app, or ``lurestream serve`` processes
for restarts), and every test reads its stdout, stderr and exit status as a user's terminal or script would.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
import nats
import pytest
from harness import ATTACKER_A, SECRET, TOPOLOGY_1, VIEWER, bus_up, envelope, standalone
from processes import lurestream_env

from lurestream.commands import LOG_FEED_PATH, TAIL_KINDS, describe, describe_log_feed, target
from lurestream.config import config_from
from lurestream.kinds import KINDS
from lurestream.sse import Frame
from lurestream.tokens import mint_token

A = ATTACKER_A["_id"]
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)


def run(*args: str, **settings: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lurestream", *args],
        capture_output=True,
        text=True,
        env=lurestream_env(**settings),
        timeout=60,
    )


@pytest.mark.parametrize("command", ["tail", "publish", "mint-token", "init-nats"])
def test_every_ops_command_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and "usage: lurestream " + command in result.stdout


def test_mint_token_refuses_without_the_secret_and_is_labelled_dev_only():
    refused = run("mint-token", "--user", VIEWER)
    assert refused.returncode == 2 and "LURESTREAM_JWT_SECRET" in refused.stderr
    refused_dev = run("mint-token", "--user", VIEWER, dev_insecure="true")
    assert refused_dev.returncode == 2 and "LURESTREAM_JWT_SECRET" in refused_dev.stderr
    minted = run("mint-token", "--user", VIEWER, "--ttl", "120", jwt_secret=SECRET)
    assert minted.returncode == 0 and "DEVELOPMENT ONLY" in minted.stderr
    claims = jwt.decode(minted.stdout.strip(), SECRET, algorithms=["HS256"], audience="decnet-dashboard")
    assert claims["uuid"] == VIEWER and claims["exp"] - claims["iat"] == 120 and claims["typ"] == "access"


@pytest.mark.gen_test(timeout=60)
async def test_publish_sends_one_well_formed_envelope(nats_service):
    nc = await nats.connect(nats_service.url)
    received: asyncio.Queue = asyncio.Queue()
    await nc.subscribe("attacker.scored", cb=received.put)
    await nc.flush()
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(
        None,
        lambda: run(
            "publish", "attacker.scored", json.dumps({"attacker_uuid": A}), "--type", "score", nats_url=nats_service.url
        ),
    )
    assert result.returncode == 0, result.stderr
    assert "published to attacker.scored" in result.stdout
    body = json.loads((await asyncio.wait_for(received.get(), 10)).data)
    assert body["topic"] == "attacker.scored" and body["type"] == "score" and body["v"] == 1
    assert body["payload"] == {"attacker_uuid": A} and isinstance(body["ts"], float) and body["id"]
    await nc.close()


@pytest.mark.parametrize("payload", ["not json", "[1, 2]", '"text"'])
def test_publish_rejects_a_payload_that_is_not_an_object(payload):
    result = run("publish", "attacker.scored", payload, nats_url="nats://127.0.0.1:1")
    assert result.returncode == 2 and "payload" in result.stderr and "Traceback" not in result.stderr


# -- tail --------------------------------------------------------------------------------------------------
async def start_tail(port: int, *args: str, **settings: object) -> asyncio.subprocess.Process:
    """``lurestream tail <args>`` against the server on ``port``, with extra settings (``token=``...)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lurestream",
        "tail",
        *args,
        "--url",
        f"http://127.0.0.1:{port}",
        env=lurestream_env(**settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def line_of(proc: asyncio.subprocess.Process, timeout: float = 20.0) -> str:
    """The next line tail prints on stdout (the snapshot line tells that it is connected)."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    assert line, f"tail ended early: {(await proc.communicate())[1].decode()}"
    return line.decode()


async def finish(proc: asyncio.subprocess.Process, timeout: float = 20.0) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.gen_test(timeout=60)
async def test_tail_prints_the_snapshot_and_events(ls):
    proc = await start_tail(ls.port, "attacker", A, "--max-events", "2", token=ls.token())
    await ls.wait_for(lambda: ls.hub.subscription_count == 1, 20, "tail to connect")
    await ls.publish("attacker.scored", {"attacker_uuid": A, "score": 42.5})
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "value": "<b>x</b>"})
    code, out, err = await finish(proc)
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert "snapshot" in lines[0] and "observations" in lines[0]
    assert "attacker.scored" in lines[1] and '"score":42.5' in lines[1]
    assert "observation" in lines[2] and "<b>x</b>" in lines[2]
    assert len(lines) == 3


def _seed_firehoses(db: Any) -> None:
    db.identities.insert_one({"_id": "i-1", "updated_at": T0})
    db.campaigns.insert_many([{"_id": "c-1", "updated_at": T0}, {"_id": "c-2", "updated_at": T0}])
    db.orchestrator_events.insert_many(
        [{"_id": f"e{n}", "ts": T0, "decky_uuid": f"decky-{n % 2}", "kind": "file"} for n in range(5)]
    )


BUS_KINDS = [  # the command line, the snapshot it must show, a subject to publish and its event name
    (["attacker", A], "0 observations", "attacker.scored", "attacker.scored"),
    (["topology", TOPOLOGY_1["_id"]], "0 in_flight", f"topology.{TOPOLOGY_1['_id']}.status", "status"),
    (["identities"], "1 identities", "identity.formed", "formed"),
    (["campaigns"], "2 campaigns", "campaign.identity.assigned", "identity.assigned"),
    (["orchestrator", "--decky", "decky-1"], "2 events", "orchestrator.traffic.decky-1", "traffic"),
]


def test_the_bus_kinds_tested_are_every_kind_the_server_declares():
    assert sorted(args[0] for args, *_ in BUS_KINDS) == sorted(kind.name for kind in KINDS)
    assert set(TAIL_KINDS) == {kind.name for kind in KINDS} | {"logs"}


@pytest.mark.parametrize(
    "words, flags",
    [
        (["logs"], ["--logs"]),
        (["identities"], ["--identities"]),
        (["orchestrator", "--decky", "d-1"], ["--orchestrator", "--decky", "d-1"]),
        (["attacker", A], ["--attacker", A]),
        (["topology", "t/1"], ["--topology", "t/1"]),
    ],
)
def test_a_kind_is_a_word_or_a_flag(words, flags):
    """``tail logs`` and ``tail --logs`` name the same stream (issue #18 spells it as a flag)."""
    from lurestream.cli import _parser, _tail_kind

    def path(argv: list[str]) -> str:
        args = _parser().parse_args(["tail", *argv])
        kind, resource_id = _tail_kind(args)
        return target(kind, resource_id, decky=args.decky).path

    assert path(words) == path(flags)


@pytest.mark.parametrize("argv", [[], ["--logs", "--identities"], ["logs", "--campaigns"], ["x-1"]])
def test_tail_needs_exactly_one_kind(argv):
    from lurestream.cli import _parser, _tail_kind

    parsed = None
    try:
        parsed = _parser().parse_args(["tail", *argv])
    except SystemExit as exc:  # argparse's own refusal (an unknown word as the kind): status 2
        assert exc.code == 2
    if parsed is not None:
        with pytest.raises(ValueError, match="name one kind|unexpected"):
            _tail_kind(parsed)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("args, snapshot, subject, name", BUS_KINDS, ids=[a[0][0] for a in BUS_KINDS])
async def test_tail_follows_each_kind_and_exits_0_after_max_events(ls, args, snapshot, subject, name):
    _seed_firehoses(ls.db)
    proc = await start_tail(ls.port, *args, "--max-events", "1", token=ls.token())
    first = await line_of(proc)
    assert " snapshot " in first and snapshot in first, first
    if args[0] == "orchestrator":  # another decky's event is not this stream's
        await ls.publish("orchestrator.traffic.decky-0", {"decky_uuid": "decky-0", "n": "other"})
    await ls.publish(subject, {"attacker_uuid": A, "topology_id": TOPOLOGY_1["_id"], "n": subject})
    code, out, err = await finish(proc)
    assert (code, err) == (0, ""), f"exit {code}, stderr:\n{err}"
    [line] = out.splitlines()
    assert re.match(rf"\d\d:\d\d:\d\d  {re.escape(name)} +\{{.*\"n\":\"{re.escape(subject)}\"", line), line


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(log_poll_seconds=0.1)
async def test_tail_of_the_live_log_feed_prints_a_line_per_row(ls):
    probe = await ls.fetch("GET", LOG_FEED_PATH)  # without credentials: 401 when the route is there
    if probe.code == 404:
        pytest.skip("the live log feed (GET /api/v1/stream) is not served yet")
    ls.db.deckies.insert_many([{"_id": "d1", "state": "running"}, {"_id": "d2", "state": "stopped"}])
    ls.db.logs.insert_one(_row(1, "ssh"))
    # a stream starts at the feed's position, which trails the store by up to a poll: once the feed has
    # read row 1, it is the past (the stats count it), not a live row
    await ls.wait_for(lambda: ls.services.logs.position >= 1, 10, "the feed to read row 1")
    proc = await start_tail(ls.port, "--logs", "--search", "service:ssh", "--max-events", "2", token=ls.token())
    stats, histogram = await line_of(proc), await line_of(proc)
    assert re.search(r" stats +total_logs=1, unique_attackers=1, active_deckies=1, deployed_deckies=2$", stats)
    assert " histogram " in histogram and "1 matching rows in 1 buckets" in histogram, histogram
    await ls.wait_for(lambda: ls.services.logs.stream_count == 1, 10, "the feed to be live")
    ls.db.logs.insert_many(
        [_row(2, "http"), _row(3, "ssh", raw_line="Failed password \x1b[2J for root"), _row(4, "ssh")]
    )
    code, out, err = await finish(proc)
    assert (code, err) == (0, ""), err
    rows = out.splitlines()
    assert len(rows) == 2, "two rows, and --max-events 2 stops there"
    assert re.search(r" log +2026-12-05T12:03:00\+00:00 web-01 ssh login 203\.0\.113\.10  ", rows[0]), rows[0]
    assert rows[0].endswith("Failed password \\u001b[2J for root  #3"), "the row's id; an escape shown, not obeyed"
    assert rows[1].endswith("#4") and "line 4" in rows[1]


def _row(n: int, service: str, **extra: Any) -> dict[str, Any]:
    row = {
        "_id": n,
        "timestamp": T0 + timedelta(minutes=n),
        "decky": "web-01",
        "service": service,
        "event_type": "login",
        "attacker_ip": "203.0.113.10",
        "raw_line": f"line {n}",
    }
    return {**row, **extra}


@pytest.mark.gen_test(timeout=60)
async def test_tail_with_a_bad_token_says_why_and_exits(ls):
    proc = await start_tail(ls.port, "attacker", A, "--token", "nope")
    code, out, err = await finish(proc)
    assert (code, out) == (1, "")
    assert err == "lurestream tail: 401 Could not validate credentials\n"


@pytest.mark.gen_test(timeout=60)
async def test_tail_of_an_unknown_attacker_says_404_and_exits_1(ls):
    proc = await start_tail(ls.port, "attacker", "no-such-attacker", token=ls.token())
    assert await finish(proc) == (1, "", "lurestream tail: 404 Attacker not found\n")


@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(auth_sweep_seconds=0.5)
async def test_tail_stops_when_the_server_signs_the_token_out(ls):
    """``event: end``: the credential no longer holds, so a reconnect would be a 401. Exit status 1, as for a
    401 at connect: the same cause, whenever it comes; a script must tell it from ``--max-events`` done."""
    proc = await start_tail(ls.port, "identities", token=ls.token(ttl=2))
    assert " snapshot " in await line_of(proc)
    code, out, err = await finish(proc)
    assert (code, out) == (1, "")
    assert err == "lurestream tail: signed out by the server (expired): the token no longer holds; not reconnecting\n"


@pytest.mark.gen_test(timeout=60)
async def test_ctrl_c_exits_0_quietly(ls):
    proc = await start_tail(ls.port, "campaigns", token=ls.token())
    assert " snapshot " in await line_of(proc)
    proc.send_signal(signal.SIGINT)
    assert await finish(proc) == (0, "", "")


@pytest.mark.gen_test(timeout=120)
async def test_ctrl_c_stops_tail_while_events_pour_in(ls):
    """Ctrl-C as reads complete: asyncio's own handling (one cancellation of the main task) can be lost in
    ``asyncio.wait_for`` up to Python 3.11, and tail read on; here every Ctrl-C ends it."""
    stop = asyncio.Event()

    async def pour() -> None:
        n = 0
        while not stop.is_set():
            await ls.publish("identity.formed", {"n": n})
            n += 1
            await asyncio.sleep(0)

    pouring = asyncio.ensure_future(pour())
    try:
        for round_ in range(8):
            proc = await start_tail(ls.port, "identities", token=ls.token())
            assert " snapshot " in await line_of(proc)
            for _ in range(5 + round_ * 7):  # interrupted at a different point of the flow each round
                await line_of(proc)
            proc.send_signal(signal.SIGINT)
            code, _out, err = await finish(proc)
            assert (code, err) == (0, ""), f"round {round_}: exit {code}, stderr:\n{err}"
    finally:
        stop.set()
        await pouring


@pytest.mark.gen_test(timeout=60)
async def test_tail_into_a_pipe_that_closes_exits_0_quietly(ls):
    """``lurestream tail … | head -n 1``: the reader leaves; tail notices at its next line and goes quietly."""
    shell = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f"set -o pipefail; {sys.executable} -m lurestream tail identities --url http://127.0.0.1:{ls.port} | head -n 1",
        env=lurestream_env(token=ls.token()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert " snapshot " in await line_of(shell)
    await ls.wait_for(lambda: ls.hub.subscription_count == 1, 20, "tail to connect")
    for n in range(3):
        await ls.publish("identity.formed", {"n": n})
    assert await finish(shell) == (0, "", "")


@pytest.mark.gen_test(timeout=90)
async def test_tail_waits_as_the_server_asks_then_follows(private_mongo, nats_service):
    """The store down: the server answers 200 + ``retry:`` + ``event: unavailable`` (protocol §16); tail waits
    that long, not less, says so on stderr, and follows once the store is back."""
    settings = {"retry_ms": 600, "mongo_timeout_ms": 400, "auth_cache_seconds": 0}
    async with standalone(nats_service.url, private_mongo.url, "d", settings=settings) as ls:
        assert await bus_up(ls.hub, 10)
        token = ls.token()
        private_mongo.stop()
        proc = await start_tail(ls.port, "attacker", A, "--max-events", "1", token=token)
        assert proc.stderr is not None
        note = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        waited = re.fullmatch(
            r"-- the server asks to wait \(503 Store unavailable\); reconnecting in (\d+\.\d)s\n", note
        )
        assert waited and 0.4 <= float(waited[1]) <= 0.9, f"the hint (600 ms ± 25 %), never less: {note!r}"
        private_mongo.start()
        from pymongo import MongoClient

        with MongoClient(private_mongo.url) as client:  # its data lived in memory: put it back
            client.d.users.insert_one({"_id": VIEWER, "role": "viewer", "must_change_password": False})
            client.d.attackers.insert_one(dict(ATTACKER_A))
        assert " snapshot " in await line_of(proc, 40)
        await ls.publish("attacker.scored", {"attacker_uuid": A, "score": 1})
        code, out, err = await finish(proc)
        assert code == 0 and "attacker.scored" in out, (code, out, err)
        assert "Traceback" not in err and all(line.startswith("-- ") for line in err.splitlines()), err


@pytest.mark.gen_test(timeout=120)
async def test_tail_resumes_across_a_server_restart_with_last_event_id(start_server, js_stream, nats_service):
    """A server restarting (drained with a ``retry:`` hint, then down, then up): tail reconnects, sends its last
    id, and gets exactly the event it missed — no snapshot again, no duplicate."""
    fast = dict(jetstream=js_stream, drain_seconds=0, retry_ms=300)
    server = start_server(**fast)
    token = mint_token(config_from({"jwt_secret": SECRET}), VIEWER)
    nc = await nats.connect(nats_service.url)
    js = nc.jetstream()

    async def publish(n: int) -> None:
        subject = "attacker.observation.ja3"
        await js.publish(subject, envelope(subject, {"attacker_uuid": A, "n": n}))

    try:
        proc = await start_tail(server.port, "attacker", A, "--max-events", "3", token=token)
        assert " snapshot " in await line_of(proc)
        await publish(1)
        assert '"n":1' in await line_of(proc)
        assert server.stop() == 0
        await publish(2)  # stored by JetStream while no server is up
        server = start_server(port=server.port, **fast)
        resumed = await line_of(proc, 40)
        assert re.search(r" resumed +after #\S+: 1 missed events follow$", resumed), resumed
        assert '"n":2' in await line_of(proc)
        await publish(3)
        code, out, err = await finish(proc)
        assert code == 0 and '"n":3' in out and out.count("\n") == 1, (code, out, err)
        assert "reconnecting" in err and "Traceback" not in err, err
    finally:
        await nc.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["attacker"], "attacker needs an id: lurestream tail attacker <id>"),
        (["identities", "x"], "identities takes no id (got 'x')"),
        (["attacker", A, "--decky", "d"], "--decky is for orchestrator, not attacker"),
        (["topology", "t", "--search", "ssh"], "--search is for logs, not topology"),
        (["orchestrator", "--start-time", "2026-01-01"], "--start-time is for logs, not orchestrator"),
        (["identities", "--url", "ftp://x"], "--url must be an http:// or https:// URL with a host, got 'ftp://x'"),
        (["identities", "--url", "http://"], "--url must be an http:// or https:// URL with a host, got 'http://'"),
        (
            ["identities", "--url", "http://h:x"],
            "--url must be an http:// or https:// URL with a host, got 'http://h:x'",
        ),
    ],
)
def test_tail_misuse_is_exit_2_with_one_line(args, message):
    result = run("tail", *args, token="t")
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"lurestream tail: {message}\n")


def test_each_kind_is_tailed_at_the_path_the_server_declares():
    for kind in KINDS:
        followed = target(kind.name, "x/y" if kind.has_id else None)
        assert re.fullmatch(kind.path, followed.path.replace("%2F", "-")), (kind.name, followed.path)
    assert target("orchestrator", decky="d 1").path == "/api/v1/orchestrator/events/stream?decky=d+1"
    logs = target("logs", search="service:ssh", start_time="2026-12-05", end_time="")
    assert logs.path == "/api/v1/stream?search=service%3Assh&start_time=2026-12-05" and logs.is_log_feed


def test_text_an_attacker_chose_cannot_drive_the_terminal():
    """C1 controls (CSI), bidi overrides and lone surrogates pass through JSON as they are; tail escapes them
    (a surrogate could not even be written as UTF-8)."""
    payload = {"topic": "t", "type": "", "ts": 1.0, "payload": {"v": "\u009b2J \u202egnp.exe \ud800"}}
    [line] = describe(Frame("attacker.login", json.dumps(payload, ensure_ascii=False)))
    assert "\\u009b2J \\u202egnp.exe \\ud800" in line
    line.encode("utf-8")


def test_the_log_feed_frames_each_read_as_one_plain_line():
    def frame(kind: str, data: Any, event_id: str | None = None) -> list[str]:
        return describe_log_feed(Frame("message", json.dumps({"type": kind, "data": data}), event_id))

    [histogram] = frame("histogram", [{"time": "2026-12-05T12:00:00+00:00", "count": 3}, {"time": "x", "count": 4}])
    assert histogram.endswith(
        "histogram                    7 matching rows in 2 buckets, 2026-12-05T12:00:00+00:00 to x"
    )
    assert frame("histogram", [])[0].endswith("no matching rows")
    [gap] = frame("gap", {"after": "10", "resumed_at": 10011})
    assert gap.endswith(
        "gap                          rows after #10 were too many to replay and are NOT shown; going on from #10011"
    )
    rows = frame("logs", [{"id": 5, "decky": "d", "raw_line": "a\nb"}, {"id": 6}], "6")
    assert [r[10:] for r in rows] == [
        "log                          - d - - -  a\\u000ab  #5",
        "log                          - - - - -  -  #6",
    ]
