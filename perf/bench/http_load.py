"""A lean HTTP/1.1 client for the benchmark's API load: keep-alive connections, one call each.

The load generator shares the 2-core machine with the broker, the API and the worker it
measures. Driven with aiohttp's client, the harness process took 34% of a core at 1,000
calls/s (``top``, one run), CPU the API and the worker it measured did not get; with this
client, 18–20%. It writes pre-built request bytes on
persistent connections and reads the status line, the headers it needs and the body:
the same calls, the same caller-side latency (from before the request is written to the
whole answer read), a fraction of the CPU.

It speaks only what the benchmark needs: ``POST`` with a body, answers with
``Content-Length`` (what aiohttp's server sends), keep-alive. Not a general client.

>>> request = build_request("127.0.0.1:6070", "/v1/score", "k", b'{"a": 1}')
>>> request.split(b"\\r\\n")[0], request.endswith(b'\\r\\n\\r\\n{"a": 1}')
(b'POST /v1/score HTTP/1.1', True)
>>> parse_head(b"HTTP/1.1 200 OK\\r\\nContent-Length: 12\\r\\nConnection: keep-alive\\r\\n\\r\\n")
(200, 12, True)
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class HttpError(Exception):
    """An answer the client could not read (the connection is dropped)."""


def build_request(host: str, path: str, key: str, body: bytes) -> bytes:
    """The bytes of one ``POST path`` with a JSON body and a bearer key."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, content length, whether the connection stays open) from a response head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status, length, keep = int(parts[1]), -1, parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            keep = value.strip().lower() == b"keep-alive"
    if length < 0:
        raise HttpError("the answer has no Content-Length")
    return status, length, keep


class KeepAliveClient:
    """Calls ``POST url`` on a pool of at most ``limit`` keep-alive connections."""

    def __init__(self, url: str, key: str, limit: int = 256, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.authority, self.path, self.key = parts.netloc, parts.path or "/", key
        self.timeout_s = timeout_s
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(limit)

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """One call: (status, body). Raises on a connection error or the timeout."""
        async with self.slots:
            conn = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
            reader, writer = conn
            try:
                writer.write(build_request(self.authority, self.path, self.key, body))
                async with asyncio.timeout(self.timeout_s):
                    status, length, keep = parse_head(await reader.readuntil(b"\r\n\r\n"))
                    answer = await reader.readexactly(length)
            except BaseException:
                writer.close()
                raise
            if keep:
                self.idle.append(conn)
            else:
                writer.close()
            return status, answer

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()
