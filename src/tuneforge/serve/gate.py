"""The first thing every HTTP request meets (a plain ASGI middleware, ahead of routing):

- while the server drains for shutdown, new requests get 503 (health and metrics still answer,
  so a load balancer sees the drain);
- a body over `max_body_bytes` gets 413: at once when Content-Length says so, else as soon as
  the bytes read pass the limit (chunked uploads);
- requests in flight are counted, so a shutdown can wait for them;
- each request's arrival is noted in its state (`request.state.started`, `.info`), for the
  request log and latency metrics.

A refused body is read and discarded (up to DRAIN_CAP) before the 413 goes out: HTTP clients
send the whole body before reading the answer, and closing on unread bytes resets the
connection, which the client would report as a network error instead of the 413.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import anyio

from tuneforge.serve.errors import ApiError, envelope, shutting_down, too_large

EXEMPT = ("/health", "/metrics")
DRAIN_CAP = 64 * 1024 * 1024
DRAIN_SECONDS = 10.0


@dataclass
class Lifecycle:
    draining: bool = False
    in_flight: int = 0

    def start_drain(self) -> None:
        self.draining = True


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        error = too_large(limit)
        super().__init__(error.status, error.message, error.param, error.code)


async def send_error(send, error: ApiError) -> None:
    body = json.dumps(envelope(error.status, error.message, error.param, error.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _discard(receive, more: bool = True) -> None:
    seen = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        while more and seen < DRAIN_CAP:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            more = message.get("more_body", False)


class Gate:
    def __init__(self, app, life: Lifecycle, max_body_bytes, on_refused=None):
        self.app, self.life = app, life
        self.max_body_bytes = max_body_bytes  # path -> limit, a callable so a config reload could change it
        self.on_refused = on_refused

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.life.draining:
            await self._refuse(scope, send, shutting_down())
            return
        limit = self.max_body_bytes(path)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _discard(receive)
            await self._refuse(scope, send, too_large(limit) if length.isdigit() else
                               ApiError(400, "Content-Length is not a number.", code="invalid_header"))
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    await _discard(receive, message.get("more_body", False))
                    raise BodyTooLarge(limit)  # surfaces where the route reads its body: a 413 envelope
            return message

        state = scope.setdefault("state", {})
        state["started"], state["info"] = time.monotonic(), {"arrived": time.time()}
        self.life.in_flight += 1
        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.life.in_flight -= 1

    async def _refuse(self, scope, send, error: ApiError) -> None:
        if self.on_refused is not None:
            self.on_refused(scope.get("path", ""), error)
        await send_error(send, error)
