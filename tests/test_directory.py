"""The pickers' JSON lists — the attacker list searchable by ip or uuid, most recently active first — and the
dashboard's static page."""

from __future__ import annotations

import json
import urllib.parse
from datetime import datetime, timedelta, timezone

import pytest
from harness import ATTACKER_A, ATTACKER_B, TOPOLOGY_1, TOPOLOGY_2

A, B = ATTACKER_A["_id"], ATTACKER_B["_id"]
V6 = "eeeeeeee-0000-4000-8000-00000000000e"
TEXT_SEEN = "ffffffff-0000-4000-8000-00000000000f"


@pytest.mark.gen_test
async def test_lists_need_credentials_and_return_the_stored_items(ls):
    assert (await ls.fetch("GET", "/api/v1/attackers")).code == 401
    attackers = await ls.fetch("GET", "/api/v1/attackers", bearer=ls.token())
    assert attackers.code == 200
    items = json.loads(attackers.body)["items"]
    assert {i["uuid"] for i in items} == {ATTACKER_A["_id"], ATTACKER_B["_id"]}
    assert {"uuid", "ip", "identity_id", "score", "last_seen"} == set(items[0])
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


async def _attackers(ls, **query: str) -> list[dict]:
    response = await ls.fetch("GET", "/api/v1/attackers?" + urllib.parse.urlencode(query), bearer=ls.token())
    assert response.code == 200, response.body
    return list(json.loads(response.body)["items"])


def _seed_activity(db) -> datetime:
    """A seen an hour ago, B a minute ago, an IPv6 attacker never, one whose last_seen a writer stored as text."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    # replaced, not $set: the MongoDB-wire server stores a $set date as text
    db.attackers.replace_one({"_id": A}, dict(ATTACKER_A, last_seen=now - timedelta(hours=1), score=12.5))
    db.attackers.replace_one({"_id": B}, dict(ATTACKER_B, last_seen=now - timedelta(minutes=1), score=99))
    db.attackers.insert_many(
        [
            {"_id": V6, "ip": "2001:db8::7", "score": True},
            {"_id": TEXT_SEEN, "ip": "198.51.100.1", "last_seen": "2026-12-05 10:00:00", "score": "high"},
        ]
    )
    return now


@pytest.mark.gen_test
async def test_attackers_come_most_recently_active_first_with_score_and_last_seen(ls):
    now = _seed_activity(ls.db)
    items = await _attackers(ls)
    assert [i["uuid"] for i in items[:2]] == [B, A] and items[-1]["uuid"] == V6, "never seen: last"
    assert items[0] == {
        "uuid": B,
        "ip": ATTACKER_B["ip"],
        "identity_id": ATTACKER_B["identity_id"],
        "score": 99,
        "last_seen": (now - timedelta(minutes=1)).isoformat(),
    }
    by_uuid = {i["uuid"]: i for i in items}
    assert by_uuid[V6]["score"] is None and by_uuid[V6]["last_seen"] is None, "a boolean is no score"
    assert by_uuid[TEXT_SEEN]["last_seen"] == "2026-12-05T10:00:00+00:00", "text without an offset is UTC"
    assert by_uuid[TEXT_SEEN]["score"] is None
    assert [i["uuid"] for i in await _attackers(ls, limit="2")] == [B, A]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "q, expected",
    [
        ("203.0.113.1", [A]),  # a prefix of A's ip (203.0.113.10), not of B's (203.0.113.20)
        ("203.0.113", [B, A]),  # both, most recently active first
        ("BBBBBBBB", [B]),  # a uuid prefix, in any case
        ("0000-4000-8000-00000000000", [B, A, TEXT_SEEN, V6]),  # a uuid substring
        ("db8::", [V6]),
        (".", [B, A, TEXT_SEEN]),  # a literal dot, not "any character": the IPv6 attacker has none
        ("  113.20 ", [B]),  # spaces around are dropped
        ("10.0.0.1", []),
        ("", [B, A, TEXT_SEEN, V6]),
    ],
)
async def test_q_finds_attackers_by_ip_or_uuid_prefix_or_substring(ls, q, expected):
    _seed_activity(ls.db)
    assert [i["uuid"] for i in await _attackers(ls, q=q)] == expected


@pytest.mark.gen_test
@pytest.mark.parametrize("q", ["a" * 65, "a*", ".*", "(a)", "a b", "a%00", "é", "[0-9]", "a\\d", "a|b"])
async def test_a_bad_q_is_a_clear_400(ls, q):
    response = await ls.fetch("GET", "/api/v1/attackers?q=" + urllib.parse.quote(q), bearer=ls.token())
    assert response.code == 400
    assert "q must be at most 64 characters" in json.loads(response.body)["detail"]


@pytest.mark.gen_test
async def test_dashboard_page_is_served_with_a_strict_policy(ls):
    page = await ls.fetch("GET", "/")
    assert page.code == 200 and b"dashboard.js" in page.body
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    script = await ls.fetch("GET", "/static/dashboard.js")
    assert script.code == 200 and b"textContent" in script.body
    for name in ("dashboard.js", "stream.js", "format.js", "chart.js"):  # every script of the page
        module = await ls.fetch("GET", f"/static/{name}")
        assert module.code == 200 and "javascript" in module.headers["Content-Type"], name
        for unsafe in (b"innerHTML", b"outerHTML", b"insertAdjacentHTML", b"document.write", b"eval("):
            assert unsafe not in module.body, f"{name}: the page never renders values as HTML ({unsafe!r})"
        for remote in (b"http://", b"https://", b"//cdn"):
            assert remote not in module.body.replace(b"http://www.w3.org/2000/svg", b""), f"{name}: no remote load"
    assert (await ls.fetch("GET", "/static/../config.py")).code in (403, 404)
