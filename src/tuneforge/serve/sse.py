"""Server-Sent Events, and stopping work the moment a client leaves.

Starlette's StreamingResponse notices a vanished client only at its next write (and then
raises out of the app); a slow model could run a whole answer for nobody. Here a listener
waits for the ASGI `http.disconnect` message beside the work and cancels it at once: the
cancellation runs the generators' `finally` blocks, which close the engine's iterators, and
the engine frees the request's slot at its next step. Other requests are untouched: each
request has its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.responses import Response

from tuneforge.serve.errors import ClientGone

T = TypeVar("T")


def event(data: Any) -> bytes:
    """One SSE event: `data: <json>` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode("utf-8")


DONE = b"data: [DONE]\n\n"


async def _disconnected(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _race(work: asyncio.Future, receive) -> bool:
    """Wait for `work` or the client's disconnect; True when the client left first (work cancelled)."""
    listener = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({work, listener}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server itself is cancelling us (forced shutdown)
        work.cancel()
        raise
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    if work.done():
        return False
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return True


async def until_done_or_gone(receive, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientGone (work cancelled) if the client disconnects first.
    Call it after the request body has been read: from then on `receive` only reports a disconnect."""
    task = asyncio.ensure_future(work)
    if await _race(task, receive):
        raise ClientGone()
    return task.result()


class EventStream(Response):
    """A response streaming `events` (already-encoded SSE bytes). A Response subclass only so
    FastAPI passes it through untouched; it sends everything itself."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str] | None = None,
                 on_close: Callable[[], Awaitable[None]] | None = None):
        self.events = events
        self.on_close = on_close  # awaited once the stream is over, whichever way it ended
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await _race(asyncio.ensure_future(self._pump(send)), receive)
        if self.background is not None:
            await self.background()

    async def _pump(self, send) -> None:
        try:
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection broke during a write: same as a disconnect
            return
        finally:
            close = getattr(self.events, "aclose", None)
            if close is not None:
                await close()
            if self.on_close is not None:
                await self.on_close()
