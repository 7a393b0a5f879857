"""OpenAI request and response models for /v1/chat/completions, /v1/completions, /v1/models.

Fields appear in the OpenAI API reference's order. Requests are parsed strictly from JSON
(`parse`), so "max_tokens": "10" is a type error, not a silent conversion. What a request may
carry, and why:

- honoured: model, messages / prompt, max_tokens, max_completion_tokens (wins over max_tokens),
  n, seed (choice i samples with seed + i), stop, stream, stream_options.include_usage,
  temperature, top_p, user (also the rollout key; safety_identifier is used when user is absent).
- accepted and without effect, because they never change an answer: metadata, store,
  service_tier, prompt_cache_key, prompt_cache_retention, prompt_cache_options,
  parallel_tool_calls, stream_options.include_obfuscation, a message's name.
- spec fields this server cannot honour (penalties, logit_bias, logprobs, tools, response
  formats, audio, reasoning): accepted at their neutral value only (frequency_penalty 0,
  logprobs false, tools [], response_format {"type": "text"}, ...), else 400
  `unsupported_parameter`. Ignoring them would hand back an answer the caller did not ask for.
- anything else: 400 `unknown_parameter` ("Unrecognized request argument supplied"), as OpenAI
  answers; vLLM-style extras such as top_k are refused, not guessed at.

A "developer" message is rendered as a "system" one (what OpenAI does for models without a
developer role); content parts must be text and are joined with newlines.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer,
                      model_validator)
from pydantic_core import PydanticCustomError

MAX_N = 16  # choices per request: each is a full generation, so n multiplies the cost
MAX_STOP = 4  # OpenAI's limit on stop sequences
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # /v1/completions without max_tokens, as in the spec


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# field -> the values that mean "not used"; None (absent) is always neutral
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "audio": (), "frequency_penalty": (0, 0.0), "function_call": ("none",), "functions": ([],),
    "logit_bias": ({},), "logprobs": (False,), "modalities": (["text"],), "moderation": (),
    "prediction": (), "presence_penalty": (0, 0.0), "reasoning_effort": (), "response_format": ({"type": "text"},),
    "tool_choice": ("none",), "tools": ([],), "top_logprobs": (0,), "verbosity": (), "web_search_options": (),
    "best_of": (1,), "echo": (False,), "suffix": ("",),
}


def _neutral_only(value: Any, info: ValidationInfo) -> Any:
    allowed = NEUTRAL[info.field_name]
    if value is not None and value not in allowed:
        unique = [v for i, v in enumerate(allowed) if v not in allowed[:i]]  # 0 and 0.0 read the same
        shown = " or ".join(repr(v) for v in unique)
        raise PydanticCustomError(
            "unsupported_parameter",
            "Unsupported parameter: '{param}' is not supported by this server{only}.",
            {"param": info.field_name, "only": f" (only {shown} is accepted)" if allowed else ""})
    return value


class StreamOptions(_Request):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # OpenAI pads chunks against side channels; not done here


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    # assistant-message fields of the spec that a text-only server cannot take
    refusal: str | None = None
    tool_calls: list[Any] | None = None
    function_call: Any = None
    audio: Any = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind is not None and kind != "text":
                    raise PydanticCustomError("unsupported_parameter",
                                              "Unsupported content part type '{kind}': this server takes text only.",
                                              {"kind": kind})
        return value

    @model_validator(mode="after")
    def _plain_turn(self) -> "ChatMessage":
        if self.tool_calls or self.function_call is not None or self.audio is not None:
            raise PydanticCustomError("unsupported_parameter",
                                      "Unsupported message field: tool calls, function calls and audio are not "
                                      "supported by this server.")
        if self.content is None:
            raise ValueError("content is required (this server does not take tool calls)")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content or [])

    def as_turn(self) -> dict[str, str]:
        """The message as tuneforge's template module takes it."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class _Sampling(_Request):
    """Fields shared by both generation endpoints."""

    frequency_penalty: float | None = None
    logit_bias: dict[str, int] | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    presence_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = None

    _neutral = field_validator("frequency_penalty", "presence_penalty", "logit_bias")(_neutral_only)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("a stop sequence cannot be empty")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    audio: Any = None
    function_call: Any = None
    functions: list[Any] | None = None
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    moderation: Any = None
    parallel_tool_calls: bool | None = None
    prediction: Any = None
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    reasoning_effort: str | None = None
    response_format: dict[str, Any] | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    tool_choice: Any = None
    tools: list[Any] | None = None
    top_logprobs: int | None = None
    verbosity: str | None = None
    web_search_options: Any = None

    _unsupported = field_validator(
        "audio", "function_call", "functions", "logprobs", "modalities", "moderation", "prediction",
        "reasoning_effort", "response_format", "tool_choice", "tools", "top_logprobs", "verbosity",
        "web_search_options")(_neutral_only)

    def completion_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def rollout_key(self) -> str | None:
        return self.user or self.safety_identifier


class CompletionRequest(_Sampling):
    model: str
    prompt: str | list[str]
    best_of: int | None = None
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None
    max_tokens: int | None = Field(None, ge=1)  # absent: 16, the legacy endpoint's default in the spec

    _unsupported = field_validator("best_of", "echo", "suffix")(_neutral_only)

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value is not None:
            raise PydanticCustomError("unsupported_parameter",
                                      "Unsupported parameter: 'logprobs' is not supported by this server.")
        return value

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("give at least one prompt")
        if any(not p for p in prompts):
            raise ValueError("a prompt cannot be empty")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def completion_budget(self) -> int | None:
        return self.max_tokens

    def rollout_key(self) -> str | None:
        return self.user


# ---- responses: plain models, dumped as JSON; shapes as the openai client's types expect ----

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _present(self) -> dict[str, str]:
        # a delta carries only what changed: the closing chunk's delta is {}
        return {k: v for k, v in (("role", self.role), ("content", self.content)) if v is not None}


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    """Both the legacy completion and its stream chunks: the same object, "text_completion"."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "tuneforge"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Feedback(_Request):
    """POST /v1/feedback: a judgement on one logged completion (tuneforge's own route)."""

    id: str = Field(min_length=1, description="the completion's id (chatcmpl-... or cmpl-...)")
    score: float | None = None
    label: str | None = None
    correction: str | None = None

    @model_validator(mode="after")
    def _something(self) -> "Feedback":
        if self.score is None and self.label is None and self.correction is None:
            raise ValueError("give at least one of score, label or correction")
        return self


class AdapterLoad(_Request):
    """POST /v1/adapters: load a run folder (under the server's models_dir) as `name`."""

    name: str
    path: str


class RouteUpdate(_Request):
    """PUT /v1/routes/{name}: the route's new percentages."""

    variants: dict[str, float]
