"""The serve engine: continuous batching over one base model with many LoRA adapters.

    engine = Scheduler("smollm2-135m", adapters={"tickets": "runs/lora"}, max_batch=32)
    ids = template.encode_prompt(engine.tokenizer("tickets"), messages)
    async for event in engine.generate(GenRequest(model="tickets", prompt_ids=ids, max_tokens=64)):
        print(event.text, end="")           # event.finish_reason is set on the last one
    await engine.close()                     # running requests finish, new ones get ShuttingDown

It implements `inference.api.Engine`, the interface `tuneforge serve` speaks to.

How a request runs. `generate` admits it (or raises QueueFull / ShuttingDown / a
TuneforgeError for an unknown model or a prompt that does not fit) into a bounded queue.
One engine thread loops: it takes waiting requests into the free slots of the batch (up
to `max_batch` rows, prefilled together under a `prefill_tokens` budget), prefills them
and appends their caches to the running batch (`kvcache.KVBatch`: left-padded, explicit
positions per row), then runs one decode step for every row. A request whose answer ended
(a stop token, a stop string, `max_tokens`) or whose consumer went away (stopped
iterating, was cancelled, its event loop closed) leaves the batch at once, so the slot is
free at the next step. Events cross to asyncio with `loop.call_soon_threadsafe` into the
request's own asyncio.Queue, one call per event loop per step.

The same greedy answer as `tuneforge eval`. Weights are float32 (bf16 autocast where
`bf16_supported` says the device has it, as in eval and training); temperature 0 takes
the arg-max; stop tokens are `template.stop_ids` of the tokenizer the adapter was trained
with; a row's padding is masked and its positions are its own, so in float32 a row gives
the tokens it gives alone, whoever joins or leaves the batch around it (tested).

Mixed batches, not grouping. Rows for different adapters (and the base) share one batch:
the base weights run once for all rows, and each wrapped layer adds every row's own LoRA
terms with two matmuls over all held adapters' stacked matrices (`inference.lora`).
Grouping by adapter would run one base forward per adapter group at every step, so each
extra adapter in flight would cost a full step of the base model, and a rarely used
adapter would wait for, or starve, the busy ones; mixing keeps one cache, one queue and
FIFO admission. The price is that only plain LoRA adapters can be served (see `adapters`).

Events: `GenEvent.text` is new text (whole characters, never part of a stop string);
`token_ids` are the tokens decoded since the previous event, the end-of-turn token
included on the last event of an answer that ended on one (so their sum is the
completion's token count); `finish_reason` is "stop" (end of turn or a stop string) or
"length" (max_tokens, or the model's context) on the last event. A failure inside the
model (out of memory, ...) is raised from the iteration of every request in that step.

Errors (TuneforgeError codes, for the server to map): model_not_found (404),
context_length_exceeded, invalid_value, invalid_token_id (400); loading adapters:
not_a_model, not_an_adapter, adapter_not_mixable, base_mismatch, tokenizer_mismatch,
adapter_load_failed, invalid_name.

`load_adapter` and `unload_adapter` block until the current step ends (they change the
model the engine thread is running); from async code call them with `asyncio.to_thread`.

Not done: chunked prefill (a long prompt's prefill delays one step of everyone else) and
prefix caching; a batch's cache grows to its longest row, so memory is bounded by
`max_batch` x the model's context.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.inference.adapters import Adapter, AdapterSet, check_adapter_name
from tuneforge.inference.api import GenEvent, GenRequest, QueueFull, ShuttingDown, answer_room, unknown_model
from tuneforge.inference.kvcache import KVBatch, check_model
from tuneforge.inference.sampling import Sampling, next_tokens
from tuneforge.inference.tensors import autocast, left_pad, positions
from tuneforge.inference.text import AnswerText
from tuneforge.models import template


@dataclass(eq=False)
class _Request:
    request: GenRequest
    adapter: Adapter | None  # None: the base model
    stops: frozenset[int]
    max_tokens: int
    sampling: Sampling
    answer: AnswerText
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    produced: int = 0
    unsent: list[int] = field(default_factory=list)  # tokens decoded since the last event
    next_token: int = -1  # sampled, not yet in the cache
    cancelled: bool = False  # the consumer went away (set from its thread; read by the engine's)
    done: bool = False  # the last event (or an error) was sent


class Scheduler:
    """An `Engine` over one base model (`model`: a built-in name, a folder, a .gguf) with
    the adapters of `adapters` ({served name: run folder}) loaded at start.

    name: the base's served name (default: `model`). device: "auto" (CUDA when present),
    "cpu" or "cuda". bf16: autocast in bf16 (None: where the device has it; weights stay
    float32 either way). max_batch: rows decoded together. max_queue: requests waiting for
    a slot before QueueFull. max_adapters: adapters holding weights (LRU; the others reload
    on demand). prefill_tokens: padded prompt tokens prefilled in one forward.
    """

    def __init__(self, model: str, adapters: Mapping[str, str | Path] | None = None, *, name: str | None = None,
                 device: str = "auto", bf16: bool | None = None, max_batch: int = 32, max_queue: int = 256,
                 max_adapters: int = 8, prefill_tokens: int = 4096):
        import torch
        from transformers import AutoTokenizer

        from tuneforge.models.load import load_model
        from tuneforge.models.resolve import resolve_model
        from tuneforge.train.run import bf16_supported

        for key, value in (("max_batch", max_batch), ("max_queue", max_queue), ("max_adapters", max_adapters),
                           ("prefill_tokens", prefill_tokens)):
            if not isinstance(value, int) or value < 1:
                raise TuneforgeError(Problem("invalid_value", f"must be a whole number >= 1, got {value!r}", key))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise TuneforgeError(Problem("invalid_value", f"must be auto, cpu or cuda, got {device!r}", "device"))
        if device == "cuda" and not torch.cuda.is_available():
            raise TuneforgeError(Problem("no_cuda", "no CUDA device is available here; use device auto or cpu",
                                         "device"))
        folder = resolve_model(model)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        template.check_tokenizer(tokenizer, model)
        self._model = load_model(model, dtype="float32", device=device)
        check_model(self._model, model)

        self.base = name or model
        self.device = torch.device(device)
        self.bf16 = bf16_supported(device) if bf16 is None else bf16
        self.max_batch, self.max_queue, self.prefill_tokens = max_batch, max_queue, prefill_tokens
        self.context = getattr(self._model.config, "max_position_embeddings", None)
        self._vocab = self._model.get_input_embeddings().num_embeddings
        self._tokenizer = tokenizer
        self._decoder = copy.deepcopy(tokenizer)  # the engine thread's own (see Adapter.decoder)
        self._stops = frozenset(template.stop_ids(tokenizer, self._model.generation_config.eos_token_id))
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.adapters = AdapterSet(self._model, folder, max_adapters)

        self._lock = threading.Lock()  # the model and the batch: held for each step and for adapter changes
        self._cond = threading.Condition()  # the queue and `_closing`
        self._waiting: deque[_Request] = deque()
        self._joining: list[_Request] = []  # taken from the queue, being prefilled
        self._rows: list[_Request] = []  # the running batch, in `_batch` order
        self._batch = KVBatch()
        self._closing = False
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[_Request, Any]]] = {}
        self._counts = {"tokens_generated": 0, "requests_finished": 0, "steps": 0}

        for adapter_name, path in (adapters or {}).items():
            self.load_adapter(adapter_name, str(path))
        self._thread = threading.Thread(target=self._run, name="tuneforge-engine", daemon=True)
        self._thread.start()

    # -- the Engine interface ------------------------------------------------------------

    def models(self) -> list[str]:
        return [self.base, *self.adapters.known]

    def tokenizer(self, model: str) -> Any:
        adapter = self._adapter_for(model)
        return self._tokenizer if adapter is None else adapter.tokenizer

    def generate(self, request: GenRequest) -> AsyncIterator[GenEvent]:
        return self._stream(request)

    def load_adapter(self, name: str, path: str) -> None:
        check_adapter_name(name, self.base, str(path))
        adapter = self.adapters.check(name, path)  # files only: no need to stop the engine for this
        with self._lock:
            self.adapters.load(adapter, self._busy())  # the weights load now, so a bad adapter fails here
            self.adapters.add(adapter)
            self.adapters.shrink(self._busy())

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            self.adapters.remove(name)
            self.adapters.shrink(self._busy())  # weights go now unless rows in flight still use them

    def stats(self) -> dict[str, Any]:
        return {"queue_depth": len(self._waiting), "running": len(self._rows) + len(self._joining),
                "max_batch": self.max_batch, "max_queue": self.max_queue,
                "adapters_loaded": len(self.adapters.known), "adapters_held": len(self.adapters.held),
                **self._counts}

    async def close(self) -> None:
        self._begin_close()
        await asyncio.to_thread(self._thread.join)

    def shutdown(self) -> None:
        """`close` for code without an event loop: blocks until what runs has finished."""
        self._begin_close()
        self._thread.join()

    # -- the asyncio side ------------------------------------------------------------------

    async def _stream(self, request: GenRequest) -> AsyncIterator[GenEvent]:
        active = self._admit(request)
        try:
            while True:
                item = await active.events.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:  # the consumer stopped early, was cancelled, or the answer ended
            if not active.done:
                self._abandon(active)

    def _admit(self, request: GenRequest) -> _Request:
        if self._closing:
            raise ShuttingDown("the engine is shutting down")
        adapter = self._adapter_for(request.model)
        max_tokens = answer_room(request, self._vocab, self.context)
        decoder = self._decoder if adapter is None else adapter.decoder
        active = _Request(
            request=request, adapter=adapter, stops=self._stops if adapter is None else frozenset(adapter.stop_ids),
            max_tokens=max_tokens, answer=AnswerText(decoder, request.stop),
            sampling=Sampling.of(request.temperature or 0.0, 1.0 if request.top_p is None else request.top_p,
                                 request.seed),
            loop=asyncio.get_running_loop())
        with self._cond:
            if self._closing:
                raise ShuttingDown("the engine is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue})")
            self._waiting.append(active)
            self._cond.notify()
        return active

    def _adapter_for(self, model: str) -> Adapter | None:
        if model == self.base:
            return None
        adapter = self.adapters.known.get(model)
        if adapter is None:
            raise unknown_model(model, self.models())
        return adapter

    def _abandon(self, active: _Request) -> None:
        active.cancelled = True  # a running row leaves at the engine's next step
        with self._cond:
            if active in self._waiting:
                self._waiting.remove(active)

    def _begin_close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    # -- the engine thread -------------------------------------------------------------

    def _run(self) -> None:
        import torch

        while True:
            with self._cond:
                while not (self._waiting or self._rows or self._closing):
                    self._cond.wait()
                if self._closing and not self._waiting and not self._rows:
                    return
                self._joining = self._take()
            with self._lock, torch.inference_mode():
                try:
                    self._step(self._joining)
                except Exception as exc:  # the batch's state is unknown now: end every row in it
                    self._fail(self._rows + self._joining, exc)
                    self._rows, self._batch = [], KVBatch()
                finally:
                    self._joining = []
                try:
                    self.adapters.shrink(self._busy())
                except Exception:  # noqa: BLE001 - a failed eviction is retried at the next step
                    pass
            self._flush()

    def _take(self) -> list[_Request]:
        """Waiting requests for the free slots, first come first served, as many as fit the
        prefill budget (a longer prompt than the budget still goes, alone)."""
        free = self.max_batch - len(self._rows)
        taken: list[_Request] = []
        width = 0
        while self._waiting and len(taken) < free:
            wider = max(width, len(self._waiting[0].request.prompt_ids))
            if taken and wider * (len(taken) + 1) > self.prefill_tokens:
                break
            taken.append(self._waiting.popleft())
            width = wider
        return taken

    def _step(self, joining: list[_Request]) -> None:
        self._sweep()  # rows whose consumers left since the last step
        joining = [r for r in joining if not r.cancelled]
        if joining:
            self._prefill(joining)
        if self._rows:
            self._decode()

    def _prefill(self, group: list[_Request]) -> None:
        busy = self._busy() | {r.adapter.key for r in group if r.adapter is not None}
        for adapter in {r.adapter for r in group if r.adapter is not None}:
            try:
                self.adapters.load(adapter, busy)  # evicted since admission: load it again
            except TuneforgeError as exc:
                self._fail([r for r in group if r.adapter is adapter], exc)
        group = [r for r in group if not r.done]
        if not group:
            return
        ids, mask = left_pad([r.request.prompt_ids for r in group], self._pad_id, self.device)
        model = self.adapters.forward([r.adapter for r in group])
        with autocast(self.bf16, self.device):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True,
                        logits_to_keep=1)
        self._batch.join(out.cache, mask)
        self._rows.extend(group)
        self._accept(group, out.logits[:, -1])

    def _decode(self) -> None:
        import torch

        rows = self._rows
        ids = torch.tensor([[r.next_token] for r in rows], device=self.device)
        mask = self._batch.step_mask()
        model = self.adapters.forward([r.adapter for r in rows])
        with autocast(self.bf16, self.device):
            out = model(input_ids=ids, attention_mask=mask, position_ids=self._batch.next_positions(),
                        cache=self._batch.cache, use_cache=True)
        self._batch.stepped(mask)
        self._counts["steps"] += 1
        self._accept(rows, out.logits[:, -1])

    def _accept(self, rows: list[_Request], logits) -> None:
        """Each row's next token: end the answer, or keep the token for the next step."""
        for r, token in zip(rows, next_tokens(logits, [r.sampling for r in rows])):
            if r.cancelled:
                continue
            r.produced += 1
            r.unsent.append(token)
            self._counts["tokens_generated"] += 1
            if token in r.stops:
                self._finish(r, "stop")
                continue
            r.next_token = token
            piece = r.answer.push(token)
            if r.answer.stopped:
                self._finish(r, "stop", piece)
            elif r.produced >= r.max_tokens:
                self._finish(r, "length", piece)
            elif piece:
                self._send(r, GenEvent(piece, r.unsent))
                r.unsent = []
        self._sweep()

    def _finish(self, r: _Request, reason: str, piece: str = "") -> None:
        r.done = True
        self._send(r, GenEvent(piece + r.answer.finish(), r.unsent, reason))
        r.unsent = []
        self._counts["requests_finished"] += 1

    def _fail(self, rows: list[_Request], exc: BaseException) -> None:
        for r in rows:
            if not r.done:
                r.done = True
                self._send(r, exc)

    def _sweep(self) -> None:
        """Drop finished and abandoned rows from the batch."""
        keep = [i for i, r in enumerate(self._rows) if not (r.done or r.cancelled)]
        if len(keep) < len(self._rows):
            self._batch.keep(keep)
            self._rows = [self._rows[i] for i in keep]

    def _busy(self) -> set[str]:
        return {r.adapter.key for r in self._rows if r.adapter is not None}

    def _send(self, r: _Request, item: Any) -> None:
        self._outbox.setdefault(r.loop, []).append((r, item))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody is listening any more
                for r, _ in items:
                    r.cancelled = True


def _deliver(items: list[tuple[_Request, Any]]) -> None:
    for r, item in items:
        r.events.put_nowait(item)
