"""Every place lurestream relies on a part of Tornado that is not its public API — here, and only here.

lurestream puts an HTTP edge in front of Tornado's HTTP/1.1 parser (``edge.py``) and takes a stream's
socket away from Tornado once its response has begun (``writer.py``): both need a few of Tornado's private
parts. Each one is a function or constant below, with what it stands for; ``tests/test_tornado_internals.py``
checks every assumption against the installed Tornado, and ``setup.py`` pins the range they were checked on
(``tornado>=6.4,<6.7``; checked on 6.6.1). When Tornado moves one, that test fails before a promise breaks.

What is deliberately *not* supported, because the live writer owns each stream's socket: TLS and HTTP/2
(terminate them at the reverse proxy: docs/operations.md). ``EdgeServer`` refuses ``ssl_options``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.tcpserver import TCPServer

# ``HTTP1Connection._read_message`` reads each request head with ``read_until_regex`` of this pattern.
HEAD_END_PATTERN = b"\r?\n\r?\n"
# ``HTTP1ServerConnection._server_request_loop`` answers a head it cannot parse with exactly these bytes.
BARE_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"


def buffered_prefix(stream: IOStream, limit: int) -> bytes:
    """Up to ``limit`` bytes IOStream has read from the socket and not yet handed out (its read buffer):
    what a client sent of a head Tornado gave up on. Empty if IOStream ever keeps it elsewhere."""
    buffered = getattr(stream, "_read_buffer", b"")
    return bytes(memoryview(buffered)[:limit])


def disable_header_timeout(server: HTTPServer) -> None:
    """Tornado times a whole connection's heads with one ``header_timeout`` (its connection parameters);
    the edge times first heads and kept-alive heads differently itself."""
    server.conn_params.header_timeout = None


def connection_handler(server: TCPServer) -> Callable[[socket.socket, Any], None]:
    """``TCPServer._handle_connection``: the step after ``accept()`` (the IOStream, then ``handle_stream``).
    The edge runs its own accept loop (it rests instead of spinning out of descriptors) and calls it."""
    handle: Callable[[socket.socket, Any], None] = server._handle_connection
    return handle


def register_listener(server: TCPServer, sock: socket.socket, stop_accepting: Callable[[], None]) -> None:
    """Register a listening socket as ``TCPServer.add_sockets`` does — in ``_sockets`` (fd → socket) and
    ``_handlers`` (fd → what stops accepting), which ``TCPServer.stop`` reads to stop and close it."""
    server._sockets[sock.fileno()] = sock
    server._handlers[sock.fileno()] = stop_accepting


def response_headers(handler: tornado.web.RequestHandler) -> list[tuple[str, str]]:
    """The headers the handler has set so far (``RequestHandler._headers``), to write the response head
    ourselves when the stream leaves Tornado."""
    return list(handler._headers.get_all())


def is_finished(handler: tornado.web.RequestHandler) -> bool:
    """Whether the handler's response is over: finished, or detached (``RequestHandler._finished``)."""
    return bool(handler._finished)


def reason(handler: tornado.web.RequestHandler) -> str:
    """The reason phrase of the handler's status (``RequestHandler._reason``)."""
    return str(handler._reason or "")


def connection_socket(handler: tornado.web.RequestHandler) -> socket.socket:
    """The client socket under a request (``HTTP1Connection.stream``'s socket), before it is detached."""
    stream: Any = getattr(handler.request.connection, "stream", None)
    if not isinstance(stream, IOStream) or stream.socket is None:
        raise OSError("the request has no socket of its own")
    return stream.socket
