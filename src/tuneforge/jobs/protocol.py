"""OpenAI request and response models for /v1/files and /v1/fine_tuning/jobs.

Field names, order and `object` values follow the OpenAI API reference (the openai client's
`types/file_object.py` and `types/fine_tuning/*.py`). Requests are parsed strictly, as the
serve stage's are (tuneforge.serve.protocol): an unknown field or a wrong type is a 400.

tuneforge's one extension: `tuneforge_method` in any hyperparameters object picks the tuning
method (lora, qlora, dora, full, ia3, prefix, prompt; default lora). How the rest maps onto
the train stage's config is in tuneforge.jobs.spec.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tuneforge.train.config import Method as TuneMethod

Auto = Literal["auto"]
SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_METADATA = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _auto_or(kind: type, low: float, high: float):
    """A before-validator: "auto", or a JSON value of `kind` in [low, high] (above low for a
    float), as one error named by the field alone (a plain union would name each member)."""
    words = (f"a whole number from {low:g} to {high:g}" if kind is int
             else f"a number above {low:g} and at most {high:g}")

    def check(value: Any) -> Any:
        if value is None or value == "auto":
            return value
        fits = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else kind)
        if not fits or not (low <= value <= high if kind is int else low < value <= high):
            raise PydanticCustomError("auto_or", "expected {words}, or \"auto\"", {"words": words})
        return float(value) if kind is float else value

    return check


class Hyperparameters(_Request):
    """OpenAI's hyperparameters (top level, or under method.supervised / method.dpo)."""

    batch_size: Union[Auto, int, None] = None
    learning_rate_multiplier: Union[Auto, float, None] = None
    n_epochs: Union[Auto, int, None] = None
    tuneforge_method: TuneMethod | None = Field(None, description="tuneforge: lora|qlora|dora|full|ia3|prefix|prompt")

    _batch = field_validator("batch_size", mode="before")(_auto_or(int, 1, 256))
    _epochs = field_validator("n_epochs", mode="before")(_auto_or(int, 1, 50))
    _multiplier = field_validator("learning_rate_multiplier", mode="before")(_auto_or(float, 0, 10))


class DpoHyperparameters(Hyperparameters):
    beta: Union[Auto, float, None] = None

    _beta = field_validator("beta", mode="before")(_auto_or(float, 0, 2))


class SupervisedMethod(_Request):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(_Request):
    hyperparameters: DpoHyperparameters | None = None


class Method(_Request):
    type: Literal["supervised", "dpo", "reinforcement"]
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None
    supervised: SupervisedMethod | None = None

    @model_validator(mode="after")
    def _matching(self) -> "Method":
        if self.type == "reinforcement":
            raise ValueError("type 'reinforcement' is not supported by this server; use supervised or dpo")
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None:
            raise ValueError(f"'{other}' settings were given for a method of type '{self.type}'")
        return self

    def hyperparameters(self) -> Hyperparameters | None:
        section = self.dpo if self.type == "dpo" else self.supervised
        return section.hyperparameters if section is not None else None


class JobCreate(_Request):
    """POST /v1/fine_tuning/jobs."""

    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    hyperparameters: Hyperparameters | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: Method | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    suffix: str | None = None
    validation_file: str | None = None

    @field_validator("integrations")
    @classmethod
    def _no_integrations(cls, value):
        if value:
            raise ValueError("integrations (Weights and Biases) are not supported by this server; tuneforge's own "
                             "metrics are in the job's events and checkpoints")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value):
        if value is None:
            return value
        if len(value) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} keys")
        bad = [k for k, v in value.items() if len(k) > 64 or len(v) > 512]
        if bad:
            raise ValueError(f"keys are at most 64 characters and values at most 512 ({', '.join(bad[:3])})")
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value):
        if value is not None and value != "" and not SUFFIX.match(value):
            raise ValueError("a suffix is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value or None


# ---- responses: shapes as the openai client's types expect ----

class FileObject(BaseModel):
    id: str
    bytes: int
    created_at: int
    filename: str
    object: Literal["file"] = "file"
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    deleted: bool
    object: Literal["file"] = "file"


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class HyperparametersOut(BaseModel):
    batch_size: Union[Auto, int, None] = None
    learning_rate_multiplier: Union[Auto, float, None] = None
    n_epochs: Union[Auto, int, None] = None
    tuneforge_method: str | None = None


class DpoHyperparametersOut(HyperparametersOut):
    beta: Union[Auto, float, None] = None


class MethodOut(BaseModel):
    type: Literal["supervised", "dpo"]
    dpo: dict[str, DpoHyperparametersOut] | None = None
    supervised: dict[str, HyperparametersOut] | None = None


class Job(BaseModel):
    id: str
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: HyperparametersOut
    model: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: MethodOut | None = None
    user_provided_suffix: str | None = None


class Event(BaseModel):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] = "message"


class CheckpointMetrics(BaseModel):
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None


class Checkpoint(BaseModel):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    step_number: int


class Page(BaseModel):
    """A cursor page: the client asks for the next one with after=<last id> while has_more."""

    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
