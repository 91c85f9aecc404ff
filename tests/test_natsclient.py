"""What ``lurestream.natsclient`` relies on inside nats.py (checked against the pinned range in setup.py):
if a nats.py release moves any of it, this fails before a poisoned message can blind a process."""

from __future__ import annotations

import inspect

from nats.aio.client import Client
from nats.aio.client import __version__ as nats_version

from lurestream.natsclient import GuardedClient


def test_the_nats_py_internals_the_guard_overrides_are_where_it_expects_them():
    assert nats_version.startswith("2.16."), nats_version  # setup.py: nats-py>=2.16,<2.17
    assert list(inspect.signature(Client._build_message).parameters) == [
        "self",
        "sid",
        "subject",
        "reply",
        "data",
        "headers",
    ]
    assert list(inspect.signature(Client._process_msg).parameters) == [
        "self",
        "sid",
        "subject",
        "reply",
        "data",
        "headers",
    ]
    assert inspect.iscoroutinefunction(Client._process_headers)
    assert inspect.iscoroutinefunction(Client._process_op_err)
    client = GuardedClient()
    assert hasattr(client, "_reading_task") and hasattr(client, "_subs")
    assert not client.read_loop_alive, "not connected: no read loop"


def test_a_subject_that_is_not_utf8_becomes_a_message_not_an_exception():
    msg = GuardedClient()._build_message(1, b"attacker.observation.\xff", b"r.\xfe", b"{}", None)
    assert msg.subject == "attacker.observation.\udcff" and msg.reply == "r.\udcfe"
