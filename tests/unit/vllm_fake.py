"""A minimal stand-in for the few vLLM classes `inference.vllm_engine` uses, so its request
translation and lifecycle can be tested where vLLM cannot be installed (no GPU).

It checks what OUR code sends and does with what comes back; it says nothing about vLLM
itself. Each class keeps the names, fields and behaviour of the vLLM v1 API the engine
relies on (vllm/v1/engine/async_llm.py, sampling_params.py, lora/request.py,
engine/arg_utils.py), reduced to what matters here:

- `AsyncEngineArgs`, `SamplingParams`, `LoRARequest`: keyword fields with vLLM's names and
  defaults (an unknown keyword is a TypeError, as with the real classes), and the checks
  vLLM makes on the values the engine passes (top_p in (0, 1], temperature >= 0,
  max_tokens >= 1, lora_int_id >= 1, max_lora_rank among vLLM's ranks);
- `AsyncLLM.from_engine_args(args)`: loads the tokenizer from `args.model`, as vLLM does,
  and has `model_config.max_model_len`;
- `AsyncLLM.generate(prompt, sampling_params, request_id, *, lora_request=None)`: an async
  generator of `RequestOutput`s, one token per step, decoded with skip_special_tokens; it
  stops on `stop_token_ids` (the token is in `token_ids`, not in the text), on a stop string
  (not in the text; the text that could still begin one is held back, as vLLM does) and at
  max_tokens ("length"); DELTA outputs carry only what is new, CUMULATIVE ones everything;
  on GeneratorExit or cancellation it aborts the request, as vLLM's generate does;
- `abort(request_id)`, `shutdown()`: recorded.

What the fake "model" answers is scripted: `answers[lora_path or None]` token ids.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass(kw_only=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int | None = 16
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self):
        self.stop = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if any(not s for s in self.stop):
            raise ValueError("stop cannot contain an empty string.")


@dataclass(kw_only=True)
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""

    def __post_init__(self):
        if self.lora_int_id < 1:
            raise ValueError(f"lora_int_id must be > 0, got {self.lora_int_id}")
        assert self.lora_path, "lora_path cannot be empty"


@dataclass(kw_only=True)
class AsyncEngineArgs:
    model: str
    tokenizer: str | None = None
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None

    def __post_init__(self):
        if self.max_lora_rank not in LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {LORA_RANKS}, got {self.max_lora_rank}")


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class Call:
    prompt: dict
    params: SamplingParams
    request_id: str
    lora_request: LoRARequest | None


@dataclass
class AsyncLLM:
    args: AsyncEngineArgs
    tokenizer: Any
    model_config: Any
    answers: dict[str | None, list[int]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    paused: bool = False  # while True, running requests wait before their next token
    finish_with: str | None = None  # force this finish_reason on the first output ("abort", "error")
    refuse: Exception | None = None  # raise this from add_request, as vLLM's input validation does
    shut_down: bool = False

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True, usage_context=None,
                         stat_loggers=None) -> "AsyncLLM":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(engine_args.tokenizer or engine_args.model)
        return cls(engine_args, tokenizer, SimpleNamespace(max_model_len=engine_args.max_model_len or 512))

    async def generate(self, prompt, sampling_params: SamplingParams, request_id: str, *, lora_request=None,
                       **kw):
        assert isinstance(sampling_params, SamplingParams) and isinstance(prompt, dict)
        assert lora_request is None or isinstance(lora_request, LoRARequest)
        try:
            if self.refuse is not None:
                raise self.refuse
            self.calls.append(Call(prompt, sampling_params, request_id, lora_request))
            self.running.add(request_id)
            answer = self.answers[None if lora_request is None else lora_request.lora_path]
            params, ids, sent = sampling_params, [], ""
            hold = max((len(s) for s in params.stop), default=1) - 1
            for token in answer:
                for _ in range(20_000):  # bounded: a test that forgets to unpause still ends
                    if not self.paused:
                        break
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0)  # one engine step
                ids.append(token)
                text = self.tokenizer.decode(ids, skip_special_tokens=params.skip_special_tokens)
                finish = self.finish_with
                cut = [text.find(s) for s in params.stop if s in text]
                if token in params.stop_token_ids:
                    finish = "stop"
                elif cut:
                    text, finish = text[:min(cut)], "stop"
                elif len(ids) >= params.max_tokens:
                    finish = "length"
                shown = text if finish else text[:max(len(sent), len(text) - hold)]
                delta = params.output_kind == RequestOutputKind.DELTA
                new_ids = [token] if delta else list(ids)
                piece = CompletionOutput(0, shown[len(sent):] if delta else shown, new_ids, finish_reason=finish)
                sent = shown
                yield RequestOutput(request_id, None, list(prompt["prompt_token_ids"]), None, [piece],
                                    finish is not None)
                if finish:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id)
            raise
        finally:
            self.running.discard(request_id)

    async def abort(self, request_id: str, internal: bool = False) -> None:
        self.aborted.append(request_id)

    def shutdown(self, timeout: float | None = None) -> None:
        self.shut_down = True


def fake_vllm() -> SimpleNamespace:
    """The names `tuneforge.inference.vllm_engine.import_vllm()` returns, faked."""
    return SimpleNamespace(AsyncLLM=AsyncLLM, AsyncEngineArgs=AsyncEngineArgs, SamplingParams=SamplingParams,
                           RequestOutputKind=RequestOutputKind, LoRARequest=LoRARequest)
