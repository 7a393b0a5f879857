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
