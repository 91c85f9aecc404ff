"""Operator commands as a user runs them: ``lurestream tail``, ``publish`` and ``mint-token``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import jwt
import nats
import pytest
from harness import ATTACKER_A, SECRET, VIEWER
from processes import lurestream_env

A = ATTACKER_A["_id"]


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


async def start_tail(ls, *args: str, **settings: object) -> asyncio.subprocess.Process:
    """``lurestream tail attacker A`` against the test's server, with extra flags and settings."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lurestream",
        "tail",
        "attacker",
        A,
        "--url",
        f"http://127.0.0.1:{ls.port}",
        *args,
        env=lurestream_env(**settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.gen_test(timeout=60)
async def test_tail_prints_the_snapshot_and_events(ls):
    proc = await start_tail(ls, "--max-events", "2", token=ls.token())
    await ls.wait_for(lambda: ls.hub.subscription_count == 1, 20, "tail to connect")
    await ls.publish("attacker.scored", {"attacker_uuid": A, "score": 42.5})
    await ls.publish("attacker.observation.ja3", {"attacker_uuid": A, "value": "<b>x</b>"})
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert "snapshot" in lines[0] and "observations" in lines[0]
    assert "attacker.scored" in lines[1] and '"score":42.5' in lines[1]
    assert "observation" in lines[2] and "<b>x</b>" in lines[2]


@pytest.mark.gen_test(timeout=60)
async def test_tail_with_a_bad_token_says_why_and_exits(ls):
    proc = await start_tail(ls, "--token", "nope")
    _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert "401" in err.decode() and "Could not validate credentials" in err.decode()
