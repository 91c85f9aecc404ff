"""The pickers' JSON lists and the dashboard's static page."""

from __future__ import annotations

import json

import pytest
from harness import ATTACKER_A, ATTACKER_B, TOPOLOGY_1, TOPOLOGY_2


@pytest.mark.gen_test
async def test_lists_need_credentials_and_return_the_stored_items(ls):
    assert (await ls.fetch("GET", "/api/v1/attackers")).code == 401
    attackers = await ls.fetch("GET", "/api/v1/attackers", bearer=ls.token())
    assert attackers.code == 200
    items = json.loads(attackers.body)["items"]
    assert {i["uuid"] for i in items} == {ATTACKER_A["_id"], ATTACKER_B["_id"]}
    assert {"uuid", "ip", "identity_id"} == set(items[0])
    topologies = json.loads((await ls.fetch("GET", f"/api/v1/topologies?token={ls.token()}")).body)["items"]
    assert {t["id"] for t in topologies} == {TOPOLOGY_1["_id"], TOPOLOGY_2["_id"]}
    one = json.loads((await ls.fetch("GET", "/api/v1/attackers?limit=1", bearer=ls.token())).body)["items"]
    assert len(one) == 1


@pytest.mark.gen_test
@pytest.mark.parametrize("limit", ["0", "201", "x", "-1"])
async def test_bad_limit_is_a_clear_400(ls, limit):
    response = await ls.fetch("GET", f"/api/v1/attackers?limit={limit}", bearer=ls.token())
    assert response.code == 400
    assert "limit" in json.loads(response.body)["detail"]


@pytest.mark.gen_test
async def test_dashboard_page_is_served_with_a_strict_policy(ls):
    page = await ls.fetch("GET", "/")
    assert page.code == 200 and b"dashboard.js" in page.body
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    script = await ls.fetch("GET", "/static/dashboard.js")
    assert script.code == 200 and b"textContent" in script.body
    assert b"innerHTML" not in script.body, "the page never renders values as HTML"
    assert (await ls.fetch("GET", "/static/../config.py")).code in (403, 404)
