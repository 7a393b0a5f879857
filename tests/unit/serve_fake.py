"""A fake generation engine and a live server, for fast route tests of `tuneforge serve`.

`FakeEngine` implements `tuneforge.inference.api.Engine` (like nanochat's MockModel): it
answers every prompt with a canned sentence, tokenised by the real tiny-model tokenizer and
streamed one token per event, honouring max_tokens, stop strings and the queue limit. It
records what it was asked, what finished and what was abandoned, and can be slowed
(`delay_s`) or paused so tests can hold requests in flight.

`live_server` runs the real app under uvicorn on 127.0.0.1 (an OS-chosen free port) in a
background thread, so tests talk to it with the real `openai` client over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.inference.api import GenEvent, GenRequest, QueueFull, ShuttingDown
from tuneforge.serve.config import ServeConfig
from tuneforge.serve.runner import GracefulServer, make_server

BASE = "tiny"


def reply_for(request: GenRequest) -> str:
    """The canned answer: says who answered, how long the prompt was, and the seed if any."""
    seed = "" if request.seed is None else f" Seed {request.seed}."
    return f"Hello from {request.model}. Your prompt had {len(request.prompt_ids)} tokens.{seed} Goodbye."


class FakeEngine:
    def __init__(self, tokenizer, adapters: dict[str, str] | None = None, max_queue: int = 64,
                 delay_s: float = 0.0):
        self.base = BASE
        self._tokenizer = tokenizer
        self.adapters = dict(adapters or {})
        self.max_queue = max_queue
        self.delay_s = delay_s
        self.paused = False  # while True, running requests wait before their next token
        self.closing = False
        self.active: set[str] = set()
        self.requests: list[GenRequest] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.emitted: dict[str, int] = {}
        self.tokens_generated = 0

    def models(self) -> list[str]:
        return [self.base, *self.adapters]

    def tokenizer(self, model: str):
        if model not in self.models():
            raise TuneforgeError(Problem("model_not_found", f"no model named '{model}'", model))
        return self._tokenizer

    def _answer(self, request: GenRequest) -> tuple[list[int], str]:
        text = reply_for(request)
        cut = [text.find(s) for s in request.stop if s in text]
        finish = "stop"
        if cut:
            text = text[:min(cut)]
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > request.max_tokens:
            ids, finish = ids[:request.max_tokens], "length"
        return ids, finish

    async def generate(self, request: GenRequest):
        # an async generator: like the real engine, refusals surface at the first iteration
        if self.closing:
            raise ShuttingDown("closing")
        if request.model not in self.models():
            raise TuneforgeError(Problem("model_not_found", f"no model named '{request.model}'", request.model))
        if len(self.active) >= self.max_queue:
            raise QueueFull("full")
        rid = request.request_id
        self.active.add(rid)
        self.requests.append(request)
        self.emitted[rid] = 0
        done = False
        try:
            ids, finish = self._answer(request)
            if not ids:
                done = True
                yield GenEvent("", [], finish)
                return
            for i, token in enumerate(ids):
                for _ in range(100_000):  # bounded: a test that forgets to unpause still ends
                    if not self.paused:
                        break
                    await asyncio.sleep(0.005)
                await asyncio.sleep(self.delay_s)
                text = self._tokenizer.decode(ids[:i + 1])[len(self._tokenizer.decode(ids[:i])):]
                last = i == len(ids) - 1
                self.emitted[rid] += 1
                self.tokens_generated += 1
                if last:
                    done = True  # closing the iterator after the final event is not an abandonment
                yield GenEvent(text, [token], finish if last else None)
        finally:
            self.active.discard(rid)
            (self.finished if done else self.cancelled).append(rid)

    def load_adapter(self, name: str, path: str) -> None:
        if not (Path(path) / "adapter_config.json").is_file():
            raise TuneforgeError(Problem("not_an_adapter", "no adapter_config.json here", path))
        self.adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise TuneforgeError(Problem("model_not_found", f"no adapter '{name}'", name))
        del self.adapters[name]

    def stats(self) -> dict:
        return {"queue_depth": 0, "running": len(self.active), "adapters_loaded": len(self.adapters),
                "tokens_generated": self.tokens_generated}

    async def close(self) -> None:
        self.closing = True
        for _ in range(2000):
            if not self.active:
                return
            await asyncio.sleep(0.005)


def make_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


@dataclass
class Live:
    server: GracefulServer
    url: str
    engine: FakeEngine

    @property
    def service(self):
        return self.server.service

    def client(self, api_key: str = "none", **kw):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=kw.pop("timeout", 20), **kw)


def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def live_server(config: ServeConfig, engine: FakeEngine, reload=None):
    server = make_server(config, engine, reload, log_level="warning")
    # proto IPPROTO_TCP, as asyncio's own listeners have: only then does asyncio set TCP_NODELAY on
    # accepted connections (with proto 0 every response waits ~40 ms on Nagle and delayed ACKs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), what="the server to start")
        assert server.started, "the server did not start"
        yield Live(server, f"http://127.0.0.1:{sock.getsockname()[1]}", engine)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"
