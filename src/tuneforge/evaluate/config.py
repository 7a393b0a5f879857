"""The evaluate stage's typed config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from tuneforge.config import Strict
from tuneforge.models.resolve import DEFAULT_MODEL

EvalTask = Literal["auto", "classification", "extraction", "generation", "sql"]
JudgeMode = Literal["rubric", "pairwise"]
# keys that only mean something with judge_url (judge_key may also come from TUNEFORGE_JUDGE_KEY)
JUDGE_KEYS = ("judge_model", "judge_key", "judge_mode", "rubric", "judge_timeout_s", "judge_concurrency")


class EvalConfig(Strict):
    data: Path = Field(description="prepared folder (its test split) or a JSONL file of chat records")
    model: str = Field(DEFAULT_MODEL, description="base model of the baselines")
    adapters: dict[str, Path] = Field(default_factory=dict, description="variant name -> run folder or model folder")
    baselines: list[Literal["zero-shot", "few-shot"]] = Field(default_factory=lambda: ["zero-shot", "few-shot"])
    shots: int = Field(5, ge=1, le=64, description="examples shown to base-few-shot, stratified by label")
    task: EvalTask = "auto"
    sql_db: Path | None = Field(None, description="SQLite file the sql task runs queries on (read-only)")
    limit: int | None = Field(None, ge=1, description="evaluate N examples drawn with `seed` (stratified by label "
                              "for classification)")
    out: Path = Path("runs/eval")
    fail_if: str | None = Field(None, description='e.g. "tuned.accuracy < base-few-shot.accuracy + 0.05"')
    general: bool = Field(False, description="also run the general-knowledge forgetting check")
    batch_size: int = Field(16, ge=1)
    max_new_tokens: Union[int, Literal["auto"]] = Field("auto", description="auto: longest reference + 8 tokens")
    bf16: Union[bool, Literal["auto"]] = Field("auto", description="auto: where the device supports it")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
    constrained: bool = Field(True, description="classification: also pick the likeliest label (never invalid)")
    latency_samples: int = Field(8, ge=0, description="examples timed one at a time for latency")
    seed: int = Field(0, description="few-shot examples and the --limit sample")
    # the LLM judge (evaluate/judge.py): any OpenAI-compatible chat endpoint scores the answers
    judge_url: str | None = Field(None, description="base URL of an OpenAI-compatible API, as the openai client "
                                  "takes it (e.g. http://127.0.0.1:8000/v1); turns the judge on")
    judge_model: str | None = Field(None, description="the judge's model name at judge_url")
    judge_key: SecretStr | None = Field(None, description="bearer key for judge_url (default: $TUNEFORGE_JUDGE_KEY)")
    judge_mode: JudgeMode = Field("rubric", description="rubric: a 1-5 score per answer; pairwise: each adapter "
                                  "against the best baseline, asked in both orders")
    rubric: Path | None = Field(None, description="text file with the grading rubric (default: a built-in one)")
    judge_timeout_s: float = Field(60.0, gt=0, le=3600, description="seconds per judge request")
    judge_concurrency: int = Field(4, ge=1, le=64, description="judge requests in flight at once")

    @field_validator("judge_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL such as http://127.0.0.1:8000/v1, got {value!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("the URL holds a user or password, which would be written to eval.json: pass the key "
                             "with --judge-key (or $TUNEFORGE_JUDGE_KEY) instead")
        return value.strip()

    @model_validator(mode="after")
    def _judge_keys(self) -> "EvalConfig":
        problems = self.combination_problems({k: getattr(self, k) for k in self.model_fields_set})
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @staticmethod
    def combination_problems(values: dict[str, Any]) -> list[str]:
        """Checks across keys, on raw values too, so they are reported with field errors."""
        if values.get("judge_url") is None:
            given = [k for k in JUDGE_KEYS if values.get(k) is not None]
            return [f"{', '.join(given)}: only used with judge_url (--judge-url); set it too, or drop them"] if given \
                else []
        if not values.get("judge_model"):
            return ["judge_model (--judge-model) is required with judge_url: the judge's model name there"]
        return []
