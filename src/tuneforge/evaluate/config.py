"""The evaluate stage's typed config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

from pydantic import Field

from tuneforge.config import Strict
from tuneforge.models.resolve import DEFAULT_MODEL

EvalTask = Literal["auto", "classification", "extraction", "generation", "sql"]


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
