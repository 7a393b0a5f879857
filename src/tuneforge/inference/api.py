"""What the serve stage asks of a generation engine, and what it gets back.

The server (tuneforge.serve) renders prompts and speaks HTTP; an engine turns prompt ids
into tokens. The real engine (`inference.scheduler.Scheduler`) batches requests
continuously over one base model with many LoRA adapters; tests use a fake engine with
the same methods, so route tests are fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from tuneforge.errors import Problem, TuneforgeError


@dataclass
class GenRequest:
    model: str  # a served model name: the base or a loaded adapter (after rollout routing)
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0  # 0: greedy, the same answer eval gives
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # strings that end the answer (not included)
    request_id: str = ""


@dataclass
class GenEvent:
    """A piece of one answer: new text, and on the last event why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (end of turn or a stop string), "length", or None


def answer_room(request: GenRequest, vocab: int, context: int | None) -> int:
    """How many tokens the answer may have (max_tokens, capped by the model's context); refuses
    (TuneforgeError) an empty prompt, ids outside the vocabulary, max_tokens below 1 and a
    prompt that leaves no room in the context. The engines' shared admission checks."""
    ids = request.prompt_ids
    where = request.request_id or request.model
    if not ids:
        raise TuneforgeError(Problem("invalid_value", "the prompt has no tokens", where))
    if min(ids) < 0 or max(ids) >= vocab:
        raise TuneforgeError(Problem("invalid_token_id", f"prompt token ids must be in 0..{vocab - 1}", where))
    if not isinstance(request.max_tokens, int) or request.max_tokens < 1:
        raise TuneforgeError(Problem("invalid_value", f"max_tokens must be >= 1, got {request.max_tokens!r}",
                                     where))
    room = request.max_tokens if context is None else context - len(ids)
    if room < 1:
        raise TuneforgeError(Problem(
            "context_length_exceeded", f"the prompt has {len(ids)} tokens; the model reads at most "
            f"{context}, answer included; shorten the prompt", where))
    return min(request.max_tokens, room)


def unknown_model(model: str, served: list[str]) -> TuneforgeError:
    return TuneforgeError(Problem("model_not_found", f"no model named '{model}' is served here; served: "
                                  f"{', '.join(served)}", model))


class QueueFull(Exception):
    """The bounded queue is full: the server answers 429."""


class ShuttingDown(Exception):
    """The engine is closing: the server answers 503."""


class Engine(Protocol):
    base: str  # the base model's served name

    def models(self) -> list[str]:
        """Served model names: the base first, then the loaded adapters."""

    def tokenizer(self, model: str) -> Any:
        """The tokenizer (with chat template) `model` was trained with, for rendering prompts."""

    def generate(self, request: GenRequest) -> AsyncIterator[GenEvent]:
        """Events of one answer as they are decoded; the caller may stop iterating (client gone)
        and the engine then frees the request's slot at the next step. Raises QueueFull or
        ShuttingDown before the first event; an unknown model is a TuneforgeError."""

    def load_adapter(self, name: str, path: str) -> None:
        """Load a run folder's adapter under `name` (admin); KeyError-free: raises TuneforgeError."""

    def unload_adapter(self, name: str) -> None: ...

    def stats(self) -> dict[str, Any]:
        """Gauges for /metrics: queue depth, running requests, adapters held, tokens generated."""

    async def close(self) -> None:
        """Finish what is running, refuse new requests."""
