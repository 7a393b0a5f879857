"""The prepare stage's typed config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneforge.config import Strict
from tuneforge.data.formats import FormatName
from tuneforge.models.resolve import DEFAULT_MODEL

Task = Literal["auto", "classification", "extraction", "generation", "sql", "preference", "pretraining"]


class PrepareConfig(Strict):
    inputs: list[Path] = Field(min_length=1, description="data files (.jsonl, .json, .csv, .parquet)")
    out: Path = Field(description="folder for train/val/test.jsonl and the report")
    model: str = Field(DEFAULT_MODEL, description="tokenizer and chat template used to count tokens")
    format: FormatName = "auto"
    input_col: str | None = None
    output_col: str | None = None
    system: str | None = Field(None, description="system prompt added to chat records that have none")
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    max_seq_len: int = Field(2048, ge=16)
    redact_pii: bool = False
    near_dup_threshold: float = Field(0.9, gt=0.0, le=1.0)
    drop_near_dups: bool = False
    drop_outliers: bool = False
    on_error: Literal["fail", "drop"] = "fail"
    on_contradiction: Literal["drop", "keep_first", "keep"] = "drop"
    task: Task = "auto"
    val: list[Path] = Field(default_factory=list, description="given validation files (skip the random val split)")
    test: list[Path] = Field(default_factory=list, description="given test files (skip the random test split)")
    memorisation_check: bool = True
    memorisation_samples: int = Field(50, ge=1)

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v < 0 for v in value) or abs(sum(value) - 1.0) > 1e-6 or value[0] <= 0:
            raise ValueError("give three non-negative shares TRAIN,VAL,TEST that sum to 1, e.g. 0.8,0.1,0.1")
        return value

    @model_validator(mode="after")
    def _columns_together(self) -> "PrepareConfig":
        if self.output_col and not self.input_col:
            raise ValueError("--output-col needs --input-col too")
        return self
