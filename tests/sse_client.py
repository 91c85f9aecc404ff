"""A raw-socket HTTP/1.1 SSE client for the tests: full control over reading, stalling and hanging up.

It speaks just enough HTTP: one GET, the status line and headers, then the chunked body decoded into
SSE frames by the package's own parser (``lurestream.sse.FrameParser``, strict UTF-8: bytes that are not
UTF-8 fail the test). ``close()`` drops the TCP connection the way a browser tab closing does.
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

from lurestream.sse import Frame, FrameParser

__all__ = ["Frame", "SSEClient"]


class SSEClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.raw = b""  # the decoded body so far, for byte-exact assertions
        self._parser = FrameParser(errors="strict")
        self._frames: collections.deque[Frame] = collections.deque()
        self._body_done = False

    @classmethod
    async def open(
        cls, port: int, path: str, headers: dict[str, str] | None = None, host: str = "127.0.0.1", timeout: float = 10.0
    ) -> SSEClient:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        client.status = int(status_line.split()[1])
        for line in header_lines:
            if ":" in line:
                k, _, v = line.partition(":")
                client.headers[k.strip().lower()] = v.strip()
        return client

    async def body(self, timeout: float = 10.0) -> bytes:
        """The whole body of a non-streaming response."""
        if "content-length" in self.headers:
            return await asyncio.wait_for(self._read_chunk(), timeout) or b""
        chunks = []
        while True:
            chunk = await asyncio.wait_for(self._read_chunk(), timeout)
            if chunk is None:
                return b"".join(chunks)
            chunks.append(chunk)

    async def json(self, timeout: float = 10.0) -> Any:
        return json.loads(await self.body(timeout))

    async def _read_chunk(self) -> bytes | None:
        if "content-length" in self.headers:  # a complete response (e.g. the `unavailable` answer): one chunk
            if self._body_done:
                return None
            self._body_done = True
            return await self.reader.readexactly(int(self.headers["content-length"]))
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            await self.reader.readuntil(b"\r\n")
            self._body_done = True
            return None
        data = await self.reader.readexactly(size)
        await self.reader.readexactly(2)
        return data

    async def next_frame(self, timeout: float = 5.0) -> Frame:
        """The next SSE frame; raises EOFError when the server ends the response."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._frames:
            if self._body_done:
                raise EOFError("stream ended")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"no frame within {timeout}s")
            try:
                chunk = await asyncio.wait_for(self._read_chunk(), remaining)
            except asyncio.IncompleteReadError:
                raise EOFError("connection closed") from None
            if chunk is None:
                continue
            self.raw += chunk
            self._frames.extend(self._parser.feed(chunk))
        return self._frames.popleft()

    async def next_event(self, timeout: float = 5.0) -> Frame:
        """The next frame that is not a keepalive comment."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.next_frame(max(deadline - loop.time(), 0.001))
            if not frame.is_keepalive:
                return frame

    async def unavailable(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The data of the server's "retry later" answer (200, ``retry:``, ``event: unavailable``, end of the
        response: a refusal that clears on its own), or None when this response is not one."""
        if self.status != 200 or "content-length" not in self.headers:
            return None
        frames = []
        while True:
            try:
                frames.append(await self.next_frame(timeout))
            except EOFError:
                break
        assert frames and frames[0].retry is not None, frames
        assert frames[-1].event == "unavailable", frames
        data: dict[str, Any] = frames[-1].json()
        assert int(frames[0].retry) == data["retry_ms"], (frames, data)
        return data

    async def start_stream(self, timeout: float = 5.0) -> Frame:
        """Read the opening keepalive and return the snapshot frame."""
        assert self.status == 200, f"expected 200, got {self.status}"
        first = await self.next_frame(timeout)
        assert first.is_keepalive, f"first frame should be the keepalive comment, got {first}"
        snapshot = await self.next_frame(timeout)
        assert snapshot.event == "snapshot", f"second frame should be the snapshot, got {snapshot}"
        return snapshot

    async def expect_silence(self, seconds: float) -> None:
        """Assert no event (keepalives aside) arrives within ``seconds``."""
        try:
            frame = await self.next_event(seconds)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"expected no event, got {frame}")

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
