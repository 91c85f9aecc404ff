"""Each assumption ``lurestream/tornado_internals.py`` makes about Tornado's private parts, checked against the
installed Tornado (setup.py pins the range they hold for). A Tornado release that moves one fails here, not
in production as a wrong status or a stream that never ends."""

from __future__ import annotations

import inspect
import socket

import pytest
import tornado
import tornado.http1connection
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.iostream import IOStream

from lurestream import tornado_internals


def test_the_checked_tornado_release():
    assert (6, 4) <= tornado.version_info[:2] < (6, 7), tornado.version  # setup.py: tornado>=6.4,<6.7


def _compact(source: str) -> str:
    return "".join(source.split()).replace('"', "'")  # repr() quotes bytes with '


def test_a_request_head_is_read_up_to_this_pattern():
    source = _compact(inspect.getsource(tornado.http1connection))
    assert _compact(f"self.stream.read_until_regex({tornado_internals.HEAD_END_PATTERN!r}") in source, (
        "HTTP1Connection reads heads with another pattern: edge.GuardedStream would not time them"
    )


def test_an_unparseable_head_is_answered_with_these_bytes():
    source = _compact(inspect.getsource(tornado.http1connection))
    assert _compact(f"self.stream.write({tornado_internals.BARE_BAD_REQUEST!r})") in source, (
        "Tornado answers a malformed head otherwise: edge.GuardedStream would not turn it into JSON"
    )


@pytest.mark.gen_test
async def test_iostream_keeps_what_it_read_ahead_in_its_read_buffer():
    left, right = socket.socketpair()
    stream = IOStream(left)
    right.sendall(b"GET /" + b"x" * 100 + b" HTTP/1.1\r\n")
    assert await stream.read_bytes(3) == b"GET"
    await stream.read_bytes(1, partial=True)  # reads more from the socket than it hands out
    assert tornado_internals.buffered_prefix(stream, 10) == b"x" * 10 or tornado_internals.buffered_prefix(
        stream, 10
    ).startswith(b"/x")
    stream.close()
    right.close()


def test_the_server_keeps_its_header_timeout_in_its_connection_parameters():
    server = HTTPServer(lambda request: None)
    assert hasattr(server.conn_params, "header_timeout")
    tornado_internals.disable_header_timeout(server)
    assert server.conn_params.header_timeout is None


@pytest.mark.gen_test
async def test_a_registered_listener_is_stopped_and_closed_by_stop():
    server = HTTPServer(lambda request: None)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stopped = []
    handle = tornado_internals.connection_handler(server)
    assert callable(handle) and list(inspect.signature(handle).parameters) == ["connection", "address"]
    tornado_internals.register_listener(server, listener, lambda: stopped.append(True))
    server.stop()
    assert stopped == [True] and listener.fileno() == -1, "stop() calls the stopper and closes the socket"


def _handler() -> tornado.web.RequestHandler:
    app = tornado.web.Application()
    start = RequestStartLine("GET", "/", "HTTP/1.1")
    request = HTTPServerRequest(headers=HTTPHeaders({"Host": "x"}), connection=_Conn(), start_line=start)
    return tornado.web.RequestHandler(app, request)


class _Conn:
    def set_close_callback(self, callback: object) -> None:
        pass


def test_a_handlers_headers_finish_flag_and_reason_are_where_they_are_read():
    handler = _handler()
    handler.set_header("X-A", "1")
    handler.set_status(429)
    assert ("X-A", "1") in tornado_internals.response_headers(handler)
    assert tornado_internals.reason(handler) == "Too Many Requests"
    assert tornado_internals.is_finished(handler) is False
    handler._finished = True  # what finish() and detach() set
    assert tornado_internals.is_finished(handler) is True
