"""A tiny asyncio HTTP/1.1 server for /metrics and /health.

Only GET (and HEAD) of a fixed set of paths, one request per connection
(`Connection: close`), request heads capped at 8 KiB and read with a timeout: it
serves Prometheus scrapers and load-balancer probes, nothing else, so it needs no
framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("dpproxy.http")

MAX_HEAD = 8192
READ_TIMEOUT = 5.0

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Response:
    """What a route answers."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[], Awaitable[Response]]


class HttpServer:
    """Serves fixed GET routes on one address."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound (host, port)."""
        self._server = await asyncio.start_server(self._handle, host, port)
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
                await self._send(writer, "GET", Response(400, "bad request\n"))
                return
            if len(head) > MAX_HEAD:
                await self._send(writer, "GET", Response(400, "request head too large\n"))
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3:
                await self._send(writer, "GET", Response(400, "bad request\n"))
                return
            method, target, _version = parts
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._send(writer, method, Response(405, "only GET\n"))
                return
            handler = self.routes.get(path)
            if handler is None:
                await self._send(writer, method, Response(404, f"try {', '.join(sorted(self.routes))}\n"))
                return
            try:
                resp = await handler()
            except Exception:  # a failing route answers 503; the traceback text stays out
                log.exception("HTTP handler for %s failed", path)
                resp = Response(503, "internal error\n")
            await self._send(writer, method, resp)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()
                await writer.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, method: str, resp: Response) -> None:
        body = resp.body.encode()
        head = (
            f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}\r\n"
            f"Content-Type: {resp.content_type}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head + (b"" if method == "HEAD" else body))
        await writer.drain()
