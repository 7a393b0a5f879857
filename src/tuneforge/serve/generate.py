"""From a validated request to engine work, and from engine events to OpenAI answers.

A `Call` is one API request after routing: its prompts (token ids), sampling settings and
who serves it. `open_streams` submits every choice (n per prompt) to the engine at once, so
they batch together, and waits for each one's first event: a full queue (429), a closing
engine (503) or a bad request surfaces here, before any response byte is sent. Then
`complete` gathers the answers for a plain response and `sse` turns them into stream chunks.

The request timeout covers everything from submission to the last token. When it passes,
or the client leaves, the engine's iterators are closed; the engine drops the request at
its next step, and nothing else in flight notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from tuneforge.errors import TuneforgeError
from tuneforge.inference.api import GenEvent, GenRequest, QueueFull, ShuttingDown
from tuneforge.serve import protocol as p
from tuneforge.serve.errors import ApiError, from_problems, model_not_found, queue_full, shutting_down, timed_out
from tuneforge.serve.log import Interaction
from tuneforge.serve.sse import DONE, event

log = logging.getLogger("tuneforge.serve")


@dataclass
class Target:
    requested: str  # what the request's `model` named: a route, the base or an adapter
    served: str  # the base or adapter that answers
    route: str | None = None


@dataclass
class Choice:
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None


@dataclass
class Call:
    id: str
    endpoint: str  # "chat" | "completions"
    target: Target
    prompts: list[list[int]]
    prompt_log: str  # JSON: the chat turns, or the list of prompts
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    user: str | None
    timeout_s: float
    include_usage: bool = False
    stream: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    arrived: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None

    @property
    def deadline(self) -> float:
        return self.started + self.timeout_s

    def requests(self) -> list[GenRequest]:
        """One engine request per choice; choice k = prompt k // n, sample k % n."""
        return [GenRequest(model=self.target.served, prompt_ids=ids, max_tokens=self.max_tokens,
                           temperature=self.temperature, top_p=self.top_p,
                           seed=None if self.seed is None else self.seed + j,  # n samples, n distinct draws
                           stop=list(self.stop), request_id=f"{self.id}/{i * self.n + j}")
                for i, ids in enumerate(self.prompts) for j in range(self.n)]

    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompts)

    def usage(self, choices: list[Choice]) -> p.Usage:
        completion = sum(c.tokens for c in choices)
        return p.Usage(prompt_tokens=self.prompt_tokens(), completion_tokens=completion,
                       total_tokens=self.prompt_tokens() + completion)

    def interaction(self, status: int, choices: list[Choice], error: str | None = None) -> Interaction:
        return Interaction(
            id=self.id, time=self.arrived, endpoint=self.endpoint, status=status, model=self.target.requested,
            route=self.target.route, variant=self.target.served, user=self.user, prompt=self.prompt_log,
            completion=choices[0].text if choices else None,
            choices=json.dumps([c.text for c in choices], ensure_ascii=False) if len(choices) > 1 else None,
            finish_reason=choices[0].finish_reason if choices else None, error=error,
            latency_ms=(time.monotonic() - self.started) * 1000.0, prompt_tokens=self.prompt_tokens(),
            completion_tokens=sum(c.tokens for c in choices), stream=self.stream)


Primed = list[tuple[GenEvent, AsyncIterator[GenEvent]]]


async def _close(stream) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


def translate(exc: BaseException, engine, served: str) -> BaseException:
    """The engine's refusals as the statuses the API promises."""
    if isinstance(exc, QueueFull):
        return queue_full()
    if isinstance(exc, ShuttingDown):
        return shutting_down()
    if isinstance(exc, TuneforgeError):
        if served not in engine.models():  # unloaded between routing and submission
            return model_not_found(served)
        return from_problems(exc)  # context_length_exceeded, invalid_value, ...: 400
    return exc


async def _open(engine, request: GenRequest) -> tuple[GenEvent, AsyncIterator[GenEvent]]:
    stream = engine.generate(request)
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        first = GenEvent("", [], "stop")
    except BaseException:
        await _close(stream)
        raise
    return first, stream


async def open_streams(call: Call, engine) -> Primed:
    """Submit every choice and wait for each first event; all or nothing."""
    requests = call.requests()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(_open(engine, r) for r in requests), return_exceptions=True),
            timeout=max(call.deadline - time.monotonic(), 0.001))
    except asyncio.TimeoutError:
        raise timed_out(call.timeout_s) from None
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        for r in results:
            if not isinstance(r, BaseException):
                await _close(r[1])
        raise translate(failed[0], engine, call.target.served)
    call.first_token_s = time.monotonic() - call.started
    return list(results)


async def merged(call: Call, primed: Primed) -> AsyncIterator[tuple[int, GenEvent]]:
    """(choice index, event) from every stream as they come, until each has finished."""
    queue: asyncio.Queue = asyncio.Queue()

    async def feed(k: int, first: GenEvent, stream: AsyncIterator[GenEvent]) -> None:
        try:
            item = first
            queue.put_nowait((k, item))
            while item.finish_reason is None:
                try:
                    item = await stream.__anext__()
                except StopAsyncIteration:  # ended without a reason: treat as a natural stop
                    item = GenEvent("", [], "stop")
                queue.put_nowait((k, item))
        except Exception as exc:  # an engine failure mid-answer reaches the consumer, not the void
            queue.put_nowait((k, exc))
        finally:
            await _close(stream)

    feeders = [asyncio.ensure_future(feed(k, first, stream)) for k, (first, stream) in enumerate(primed)]
    try:
        running = len(feeders)
        while running:
            remaining = call.deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                k, item = await asyncio.wait_for(queue.get(), timeout=remaining)
            except asyncio.TimeoutError:
                raise timed_out(call.timeout_s) from None
            if isinstance(item, BaseException):
                raise item
            yield k, item
            if item.finish_reason is not None:
                running -= 1
    finally:
        # on a timeout, a disconnect or an error: abandon the other choices too
        for task in feeders:
            task.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)


async def complete(call: Call, engine) -> list[Choice]:
    """Every choice's full text (a plain, non-streamed response)."""
    primed = await open_streams(call, engine)
    choices = [Choice() for _ in primed]
    async with contextlib.aclosing(merged(call, primed)) as events:
        async for k, ev in events:
            _add(choices[k], ev)
    return choices


def _add(choice: Choice, ev: GenEvent) -> None:
    choice.text += ev.text
    choice.tokens += len(ev.token_ids)
    if ev.finish_reason is not None:
        choice.finish_reason = ev.finish_reason


def chat_response(call: Call, choices: list[Choice]) -> p.ChatCompletion:
    return p.ChatCompletion(
        id=call.id, created=call.created, model=call.target.served, usage=call.usage(choices),
        choices=[p.ChatChoice(index=k, message=p.AssistantMessage(content=c.text), finish_reason=c.finish_reason)
                 for k, c in enumerate(choices)])


def completion_response(call: Call, choices: list[Choice]) -> p.Completion:
    return p.Completion(
        id=call.id, created=call.created, model=call.target.served, usage=call.usage(choices),
        choices=[p.TextChoice(index=k, text=c.text, finish_reason=c.finish_reason) for k, c in enumerate(choices)])


def _chunk(call: Call, index: int, text: str | None, finish: str | None, role: bool = False) -> bytes:
    if call.endpoint == "chat":
        delta = p.Delta(role="assistant" if role else None, content=text)
        body = p.ChatCompletionChunk(id=call.id, created=call.created, model=call.target.served,
                                     choices=[p.ChunkChoice(index=index, delta=delta, finish_reason=finish)])
    else:
        body = p.Completion(id=call.id, created=call.created, model=call.target.served,
                            choices=[p.TextChoice(index=index, text=text or "", finish_reason=finish)])
    return event(body.model_dump_json())


def _usage_chunk(call: Call, choices: list[Choice]) -> bytes:
    usage = call.usage(choices)
    if call.endpoint == "chat":
        body = p.ChatCompletionChunk(id=call.id, created=call.created, model=call.target.served, choices=[],
                                     usage=usage)
    else:
        body = p.Completion(id=call.id, created=call.created, model=call.target.served, choices=[], usage=usage)
    return event(body.model_dump_json())


def sse(call: Call, primed: Primed, finish) -> tuple[AsyncIterator[bytes], Callable[[], Awaitable[None]]]:
    """The stream's SSE bytes, and `abandon`, for the response to await once streaming is over
    however it ended. `finish(call, status, choices, error)` is told exactly once how it ended:
    200, the error's status, or 499 when the client left (also when it left before the first
    chunk was pulled, which `abandon` covers by closing the engine's streams itself)."""
    ended = False

    def end(status: int, choices: list[Choice], error: str | None) -> None:
        nonlocal ended
        if not ended:
            ended = True
            finish(call, status, choices, error)

    async def abandon() -> None:
        for _, stream in primed:  # no-ops when the events generator ran: merged() closed them
            await _close(stream)
        end(499, [], "client closed the connection")

    return _events(call, primed, end), abandon


async def _events(call: Call, primed: Primed, end) -> AsyncIterator[bytes]:
    choices = [Choice() for _ in primed]
    status, error = 499, "client closed the connection"
    try:
        if call.endpoint == "chat":  # OpenAI opens each chat choice with the role
            for k in range(len(primed)):
                yield _chunk(call, k, "", None, role=True)
        # aclosing: if this generator is closed at a yield (the client left during a write), the
        # engine streams close now, not whenever the garbage collector finalises `merged`
        async with contextlib.aclosing(merged(call, primed)) as events:
            async for k, ev in events:
                _add(choices[k], ev)
                if ev.text:
                    yield _chunk(call, k, ev.text, None)
                if ev.finish_reason is not None:
                    yield _chunk(call, k, None if call.endpoint == "chat" else "", ev.finish_reason)
        if call.include_usage:
            yield _usage_chunk(call, choices)
        yield DONE
        status, error = 200, None
    except ApiError as exc:  # headers are gone: the error travels as an SSE event, as OpenAI sends it
        status, error = exc.status, exc.message
        yield event(exc.body())
    except Exception as exc:
        status, error = 500, f"{type(exc).__name__}: {exc}"
        log.exception("stream %s failed", call.id)
        yield event(ApiError(500, "The server had an internal error while generating.", code="internal_error").body())
    finally:
        end(status, choices, error)
