"""/healthz, /readyz, unknown paths and CORS (protocol §1, §9)."""

from __future__ import annotations

import json

import pytest
from harness import ATTACKER_A


@pytest.mark.gen_test
async def test_healthz_and_readyz(ls):
    response = await ls.fetch("GET", "/healthz")
    assert response.code == 200 and json.loads(response.body) == {"status": "ok"}
    response = await ls.fetch("GET", "/readyz")
    assert response.code == 200
    assert json.loads(response.body) == {
        "store": "ok",
        "bus": "connected",
        "events": "off",
        "cap": "local",
        "status": "ready",
    }


@pytest.mark.gen_test
async def test_unknown_path_and_method_are_json(ls):
    response = await ls.fetch("GET", "/api/v1/nothing-here")
    assert response.code == 404
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.body) == {"detail": "Not Found"}
    response = await ls.fetch("GET", "/api/v1/auth/sse-ticket", bearer=ls.token())
    assert response.code == 405
    assert "detail" in json.loads(response.body)


@pytest.mark.gen_test
@pytest.mark.lurestream(cors_origins="https://dash.example")
async def test_cors_for_configured_origins_only(ls):
    path = f"/api/v1/attackers/{ATTACKER_A['_id']}/events"
    client = await ls.open(path, token=ls.token(), headers={"Origin": "https://dash.example"})
    await client.start_stream()
    assert client.headers["access-control-allow-origin"] == "https://dash.example"
    other = await ls.open(path, token=ls.token(), headers={"Origin": "https://evil.example"})
    await other.start_stream()
    assert "access-control-allow-origin" not in other.headers
    preflight = await ls.fetch(
        "OPTIONS",
        "/api/v1/auth/sse-ticket",
        headers={
            "Origin": "https://dash.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    # errors carry the CORS header too, so the dashboard can read the 401 body
    denied = await ls.fetch("POST", "/api/v1/auth/sse-ticket", headers={"Origin": "https://dash.example"})
    assert denied.code == 401
    assert denied.headers["Access-Control-Allow-Origin"] == "https://dash.example"
