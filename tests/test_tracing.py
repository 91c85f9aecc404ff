"""OpenTelemetry: a span per stream request with auth, existence and snapshot children, the stream's
kind, key and outcome as attributes, an end event with the reason — and never a credential."""

from __future__ import annotations

import json

import pytest
from harness import ATTACKER_A

A = ATTACKER_A["_id"]


def _by_name(exporter):
    return {span.name: span for span in exporter.get_finished_spans()}


def _all_attribute_text(exporter) -> str:
    parts = []
    for span in exporter.get_finished_spans():
        parts.append(json.dumps(dict(span.attributes or {}), default=str))
        parts.extend(json.dumps(dict(e.attributes or {}), default=str) for e in span.events)
        parts.append(span.name)
    return "\n".join(parts)


@pytest.mark.gen_test(timeout=60)
async def test_stream_request_span_with_children_and_end_event(ls, span_exporter):
    token = ls.token()
    client = await ls.open(f"/api/v1/attackers/{A}/events", token=token)
    await client.start_stream()
    client.close()
    await ls.wait_for(lambda: "lurestream.stream" in _by_name(span_exporter), what="the stream span to end")
    spans = _by_name(span_exporter)
    root = spans["lurestream.stream"]
    assert root.attributes["lurestream.stream.kind"] == "attacker"
    assert root.attributes["lurestream.stream.key"] == A
    assert root.attributes["http.response.status_code"] == 200
    for child in ("lurestream.auth", "lurestream.load", "lurestream.snapshot"):
        assert spans[child].parent.span_id == root.context.span_id, child
        assert spans[child].attributes["lurestream.outcome"] in ("ok", "found"), child
    (end,) = [e for e in root.events if e.name == "stream.end"]
    assert end.attributes["reason"] == "client_closed"
    assert token not in _all_attribute_text(span_exporter)


@pytest.mark.gen_test(timeout=60)
async def test_refused_and_missing_streams_are_traced_without_credentials(ls, span_exporter):
    bad_token = ls.token() + "x"
    refused = await ls.open(f"/api/v1/attackers/{A}/events", token=bad_token)
    assert refused.status == 401
    ticket = await ls.ticket()
    missing = await ls.open("/api/v1/attackers/no-such-attacker/events", query={"ticket": ticket})
    assert missing.status == 404
    await ls.wait_for(
        lambda: len([s for s in span_exporter.get_finished_spans() if s.name == "lurestream.stream"]) == 2
    )
    outcomes = sorted(
        str(s.attributes["lurestream.outcome"])
        for s in span_exporter.get_finished_spans()
        if s.name in ("lurestream.auth", "lurestream.load")
    )
    assert outcomes == ["not_found", "ok", "refused_401"], outcomes
    text = _all_attribute_text(span_exporter)
    assert bad_token not in text and ticket not in text and "token=" not in text
