"""`tuneforge serve --backend vllm`: the same Engine over vLLM's async engine and its LoRA support.

    engine = VllmEngine("smollm2-135m", adapters={"tickets": "runs/lora"}, max_batch=32)
    async for event in engine.generate(GenRequest(model="tickets", prompt_ids=ids, max_tokens=64)):
        print(event.text, end="")
    await engine.close()

It implements `inference.api.Engine` like `inference.scheduler.Scheduler`, so the server,
its routes, limits, logs and rollouts are the same; only the generation runs elsewhere:
vLLM's `AsyncLLM` (continuous batching, paged KV cache, CUDA graphs, punica LoRA kernels)
on a CUDA GPU.

Translation, request by request:
- the engine: `AsyncEngineArgs(model=<the base's resolved HF folder>, enable_lora=True,
  max_loras=max_adapters, max_lora_rank=<largest rank of the adapters given at start, at
  least 16, rounded up to a rank vLLM accepts>, max_num_seqs=max_batch)`;
- the prompt: `{"prompt_token_ids": ids}` (the server renders the chat template itself,
  with the tokenizer the adapter was trained with, as for the CPU engine);
- sampling: `SamplingParams(max_tokens, temperature, top_p, seed, stop, stop_token_ids=
  template.stop_ids of the adapter's tokenizer, output_kind=DELTA)`, so each output carries
  only the new text and tokens; stop strings are not included in the text, a stop token is
  in `token_ids` (as `Scheduler` sends it);
- an adapter: `LoRARequest(lora_name, lora_int_id, lora_path)`, one per load with a fresh
  id (from 1) and a name of its own (`tickets#3`), so an adapter loaded again under the
  same name never shares vLLM's cache entry with the weights its running requests use;
- finish reasons: vLLM's "stop" and "repetition" -> "stop", "length" -> "length"; "abort"
  or "error" (vLLM ended the request itself) is raised as an error from the iteration.

Lifecycle: a request counts as in flight from admission to its last event; more than
max_batch + max_queue in flight raises QueueFull (vLLM itself queues without bound). When
the consumer stops iterating (client gone, timeout, cancelled) the generator's `finally`
aborts the request in vLLM. `close()` refuses new requests (ShuttingDown), waits for those
in flight, then shuts vLLM down.

Adapters are checked with the CPU engine's file checks (`adapters.check_adapter_files`,
`adapters.adapter_tokenizer`): not_a_model, not_an_adapter, adapter_not_mixable (anything
but plain LoRA), base_mismatch, tokenizer_mismatch, invalid_name; an adapter loaded at run
time whose rank exceeds the engine's max_lora_rank is refused (adapter_rank_too_large).
vLLM reads an adapter's weights at its first request, not at load, so a weights file that
does not fit the base fails that request instead; unloading stops new requests for it and
vLLM evicts the weights from its cache when it needs the room.

Written against vLLM's v1 API (vllm/v1/engine/async_llm.py, sampling_params.py,
lora/request.py, engine/arg_utils.py) but not yet run on a GPU: the unit tests drive it
with a fake of those few classes (tests/unit/test_vllm_engine.py), and
tests/integration/test_gpu.py runs it for real where vLLM and CUDA are present.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.inference.adapters import adapter_tokenizer, check_adapter_files, check_adapter_name
from tuneforge.inference.api import GenEvent, GenRequest, QueueFull, ShuttingDown, answer_room, unknown_model
from tuneforge.models import template

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM's LoRAConfig accepts
FINISH = {"stop": "stop", "repetition": "stop", "length": "length"}  # vLLM's finish_reason -> ours


def import_vllm() -> SimpleNamespace:
    """The parts of vLLM this engine uses (tests pass a fake with the same names)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    try:
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError:  # older releases: the same interface under its old name
        from vllm import AsyncLLMEngine as AsyncLLM
    return SimpleNamespace(AsyncLLM=AsyncLLM, AsyncEngineArgs=AsyncEngineArgs, SamplingParams=SamplingParams,
                           RequestOutputKind=RequestOutputKind, LoRARequest=LoRARequest)


@dataclass(eq=False)
class _Lora:
    name: str  # the served name
    folder: Path
    tokenizer: Any
    stop_ids: list[int]
    request: Any  # vllm LoRARequest


def lora_rank(config: dict[str, Any]) -> int:
    """The largest rank in an adapter_config.json (`r` and any per-module `rank_pattern`)."""
    ranks = [config.get("r") or 8, *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


class VllmEngine:
    """An `Engine` over vLLM's AsyncLLM for one base model (`model`: a built-in name, a folder
    or a hub id) with the adapters of `adapters` ({served name: run folder}) loaded at start.

    name: the base's served name (default: `model`). max_batch: vLLM's max_num_seqs.
    max_queue: requests past max_batch that may wait before QueueFull. max_adapters: vLLM's
    max_loras (adapters in one batch). vllm: the vLLM classes to use (`import_vllm()`'s
    names; tests inject a fake).
    """

    def __init__(self, model: str, adapters: Mapping[str, str | Path] | None = None, *, name: str | None = None,
                 max_batch: int = 32, max_queue: int = 256, max_adapters: int = 8,
                 vllm: SimpleNamespace | None = None):
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        from tuneforge.models.resolve import resolve_model

        for key, value in (("max_batch", max_batch), ("max_queue", max_queue), ("max_adapters", max_adapters)):
            if not isinstance(value, int) or value < 1:
                raise TuneforgeError(Problem("invalid_value", f"must be a whole number >= 1, got {value!r}", key))
        self.folder = resolve_model(model)
        tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        template.check_tokenizer(tokenizer, model)
        config = AutoConfig.from_pretrained(str(self.folder))
        self._rows = config.vocab_size
        self._eos = GenerationConfig.from_model_config(config).eos_token_id
        if (self.folder / "generation_config.json").exists():
            self._eos = GenerationConfig.from_pretrained(str(self.folder)).eos_token_id

        self.base = name or model
        self.max_batch, self.max_queue = max_batch, max_queue
        self._tokenizer = tokenizer
        self._stops = template.stop_ids(tokenizer, self._eos)
        self._vllm = vllm or import_vllm()
        self._lora_ids = itertools.count(1)  # vLLM's adapter ids start at 1 (0 means no adapter)
        self._request_ids = itertools.count()
        self.adapters: dict[str, _Lora] = {}
        self._in_flight = 0
        self._closing = False
        self._counts = {"tokens_generated": 0, "requests_finished": 0}

        checked = [self._check(n, str(p)) for n, p in (adapters or {}).items()]  # refused before the GPU is taken
        wanted = max([16, *(lora_rank(config) for _, config in checked)])
        if wanted > LORA_RANKS[-1]:
            raise TuneforgeError(Problem("adapter_rank_too_large", f"an adapter has LoRA rank {wanted}; vLLM serves "
                                         f"ranks up to {LORA_RANKS[-1]}", "adapters"))
        self.max_lora_rank = next(r for r in LORA_RANKS if r >= wanted)
        self.engine_args = dict(model=str(self.folder), enable_lora=True, max_loras=max_adapters,
                                max_lora_rank=self.max_lora_rank, max_num_seqs=max_batch)
        self._llm = self._vllm.AsyncLLM.from_engine_args(self._vllm.AsyncEngineArgs(**self.engine_args))
        context = getattr(getattr(self._llm, "model_config", None), "max_model_len", None)
        self.context = context or getattr(config, "max_position_embeddings", None)
        self.adapters = {lora.name: lora for lora, _ in checked}

    # -- the Engine interface ------------------------------------------------------------

    def models(self) -> list[str]:
        return [self.base, *self.adapters]

    def tokenizer(self, model: str) -> Any:
        lora = self._lora_for(model)
        return self._tokenizer if lora is None else lora.tokenizer

    def generate(self, request: GenRequest) -> AsyncIterator[GenEvent]:
        return self._stream(request)

    def load_adapter(self, name: str, path: str) -> None:
        lora, config = self._check(name, path)
        if lora_rank(config) > self.max_lora_rank:
            raise TuneforgeError(Problem(
                "adapter_rank_too_large", f"the adapter's LoRA rank is {lora_rank(config)} but this vLLM engine "
                f"was started with max_lora_rank {self.max_lora_rank}; restart the server with this adapter "
                "among those loaded at start (--adapter), so the engine is sized for it", str(path)))
        # a new dict, not an update: the event loop may be iterating the old one (this runs in a worker thread);
        # requests already running keep the LoRARequest they started with
        self.adapters = {**self.adapters, name: lora}

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise TuneforgeError(Problem("model_not_found", f"no adapter named '{name}' is loaded", name))
        self.adapters = {n: lora for n, lora in self.adapters.items() if n != name}

    def stats(self) -> dict[str, Any]:
        running = min(self._in_flight, self.max_batch)  # vLLM schedules; this is the admitted count split
        return {"queue_depth": self._in_flight - running, "running": running, "max_batch": self.max_batch,
                "max_queue": self.max_queue, "adapters_loaded": len(self.adapters), **self._counts}

    async def close(self) -> None:
        self._closing = True
        while self._in_flight:
            await asyncio.sleep(0.05)
        shutdown = getattr(self._llm, "shutdown", None)
        if shutdown is not None:
            shutdown()

    # -- requests ------------------------------------------------------------------------

    async def _stream(self, request: GenRequest) -> AsyncIterator[GenEvent]:
        request_id, prompt, params, lora = self._admit(request)
        self._in_flight += 1
        outputs = self._llm.generate(prompt, params, request_id, lora_request=lora)
        finished, started, last = False, False, None
        try:
            while True:
                try:
                    out = await outputs.__anext__()
                except StopAsyncIteration:
                    break
                except ValueError as exc:  # vLLM refused the request before its first output: a 400, as ours are
                    if started:
                        raise
                    raise TuneforgeError(Problem("invalid_value", f"vLLM refused the request: {exc}",
                                                 request.request_id or request.model)) from None
                started = True
                piece = out.outputs[0]
                if piece.finish_reason is not None and piece.finish_reason not in FINISH:
                    raise RuntimeError(f"vLLM ended request {request_id} with finish_reason '{piece.finish_reason}'")
                event = GenEvent(piece.text, list(piece.token_ids), FINISH.get(piece.finish_reason))
                self._counts["tokens_generated"] += len(event.token_ids)
                if event.finish_reason is not None:
                    last = event  # vLLM's stream ends right after its finished output: let it end on its own
                elif event.text or event.token_ids:
                    yield event
            if last is None:
                raise RuntimeError(f"vLLM ended request {request_id} without a finish reason")
            finished = True
            self._in_flight -= 1  # now, not when the consumer gets round to closing this generator
            self._counts["requests_finished"] += 1
            yield last
        finally:
            if not finished:  # the consumer left, or vLLM failed: free the request's slot in vLLM now
                self._in_flight -= 1
                with contextlib.suppress(Exception):  # best effort: a dead engine has nothing left to free
                    await self._llm.abort(request_id)
                with contextlib.suppress(Exception):
                    await outputs.aclose()

    def _admit(self, request: GenRequest) -> tuple[str, dict[str, Any], Any, Any]:
        if self._closing:
            raise ShuttingDown("the engine is shutting down")
        lora = self._lora_for(request.model)
        max_tokens = answer_room(request, self._rows, self.context)
        limit = self.max_batch + self.max_queue
        if self._in_flight >= limit:
            raise QueueFull(f"{self._in_flight} requests are already in flight (max_batch + max_queue = {limit})")
        try:
            params = self._vllm.SamplingParams(
                max_tokens=max_tokens, temperature=request.temperature or 0.0,
                top_p=1.0 if request.top_p is None else request.top_p, seed=request.seed,
                stop=list(request.stop), stop_token_ids=list(self._stops if lora is None else lora.stop_ids),
                output_kind=self._vllm.RequestOutputKind.DELTA)
        except ValueError as exc:  # vLLM's own checks (top_p in (0, 1], temperature, ...)
            raise TuneforgeError(Problem("invalid_value", str(exc), request.request_id or request.model)) from None
        request_id = f"{request.request_id or 'tuneforge'}#{next(self._request_ids)}"  # unique in vLLM
        prompt = {"prompt_token_ids": list(request.prompt_ids)}
        return request_id, prompt, params, None if lora is None else lora.request

    def _lora_for(self, model: str) -> _Lora | None:
        if model == self.base:
            return None
        lora = self.adapters.get(model)
        if lora is None:
            raise unknown_model(model, self.models())
        return lora

    def _check(self, name: str, path: str) -> tuple[_Lora, dict[str, Any]]:
        check_adapter_name(name, self.base, str(path))
        files = check_adapter_files(path, self.folder)
        tokenizer, stops = adapter_tokenizer(files.folder, self._rows, self._eos, str(path))
        lora_id = next(self._lora_ids)
        request = self._vllm.LoRARequest(lora_name=f"{name}#{lora_id}", lora_int_id=lora_id,
                                         lora_path=str(files.folder))
        return _Lora(name, files.folder, tokenizer, stops, request), files.config
