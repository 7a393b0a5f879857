"""What a fine-tuning job asks for, and how it maps onto tuneforge's prepare and train stages.

OpenAI's request                          tuneforge
----------------------------------------  ------------------------------------------------------
model                                     the served base model (train's `model`)
training_file / validation_file           prepare's input / its --val file (split 1,0,0: every
                                          training record is trained on, as the hosted service does)
hyperparameters.n_epochs                  train `epochs` ("auto": from the data size, train's rule)
hyperparameters.batch_size                train `batch_size` ("auto": train's default, 8)
hyperparameters.learning_rate_multiplier  x train's default learning rate for the method (lora 2e-4,
                                          full 2e-5, ...; a quarter of it for DPO); "auto" = 1
method.type supervised | dpo              train `objective` sft | dpo (dpo needs preference pairs)
method.dpo.hyperparameters.beta           train `dpo.beta` ("auto": 0.1)
hyperparameters.tuneforge_method          train `method` (tuneforge's extension; default lora)
seed                                      prepare's and train's `seed` (a random one when absent)
suffix                                    the model name: ft:<base>:<suffix>:<job id>

The same hyperparameters may be given at the top level (OpenAI's older form) or under
`method.<type>.hyperparameters`; both are merged, and a value given differently in the two
places is an error rather than a silent pick.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Literal, Union

from pydantic import BaseModel

from tuneforge.jobs import protocol as p

LR_FIELDS = ("n_epochs", "batch_size", "learning_rate_multiplier", "tuneforge_method")
DEFAULT_BETA = 0.1
DEFAULT_BATCH = 8


class SpecError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class JobSpec(BaseModel):
    model: str  # as the client named it (the served base)
    train_model: str  # what the train stage loads: the server's base model
    training_file: str
    validation_file: str | None = None
    method: Literal["supervised", "dpo"] = "supervised"
    tuneforge_method: str = "lora"
    n_epochs: Union[Literal["auto"], int] = "auto"
    batch_size: Union[Literal["auto"], int] = "auto"
    learning_rate_multiplier: Union[Literal["auto"], float] = "auto"
    beta: Union[Literal["auto"], float] = "auto"
    suffix: str | None = None
    seed: int
    metadata: dict[str, str] | None = None

    def model_name(self, job_id: str) -> str:
        """The fine-tuned model's name, as the hosted service forms it (without an organisation).
        Only letters, digits and . _ - : appear in it (a base served under a path is shortened)."""
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", self.model.rsplit("/", 1)[-1]).strip("-") or "model"
        return f"ft:{base}:{self.suffix or ''}:{job_id}"

    def train_values(self) -> dict[str, Any]:
        """The train stage's config keys (tuneforge.train.config.TrainConfig) for this job."""
        from tuneforge.train.run import LEARNING_RATES  # in the job's process (it imports torch)

        values: dict[str, Any] = {
            "model": self.train_model, "method": self.tuneforge_method,
            "objective": "dpo" if self.method == "dpo" else "sft", "epochs": self.n_epochs,
            "batch_size": DEFAULT_BATCH if self.batch_size == "auto" else self.batch_size, "seed": self.seed,
            "dpo": {"beta": DEFAULT_BETA if self.beta == "auto" else self.beta}, "tracking": [],
        }
        if self.learning_rate_multiplier != "auto":
            base = LEARNING_RATES[self.tuneforge_method] * (0.25 if self.method == "dpo" else 1.0)
            values["learning_rate"] = base * self.learning_rate_multiplier
        return values

    def hyperparameters(self, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
        """As the job object shows them: "auto" replaced by the value used once training has begun."""
        resolved = resolved or {}
        shown = {"batch_size": resolved.get("batch_size", self.batch_size),
                 "learning_rate_multiplier": resolved.get("learning_rate_multiplier", self.learning_rate_multiplier),
                 "n_epochs": resolved.get("n_epochs", self.n_epochs), "tuneforge_method": self.tuneforge_method}
        if self.method == "dpo":
            shown["beta"] = DEFAULT_BETA if self.beta == "auto" and resolved else self.beta
        return shown

    def method_out(self, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"type": self.method, self.method: {"hyperparameters": self.hyperparameters(resolved)}}


def from_request(body: p.JobCreate, served_base: str, train_model: str) -> JobSpec:
    """The job's spec; SpecError (a 400 naming the param) for what cannot be honoured."""
    if body.model not in (served_base, train_model):
        raise SpecError(f"Model {body.model} is not available for fine-tuning or does not exist. This server "
                        f"fine-tunes its base model, {served_base}.", "model")
    method = body.method.type if body.method is not None else "supervised"
    top = body.hyperparameters
    nested = body.method.hyperparameters() if body.method is not None else None
    merged: dict[str, Any] = {}
    for name in (*LR_FIELDS, "beta"):
        a = getattr(top, name, None) if top is not None else None
        b = getattr(nested, name, None) if nested is not None else None
        if a is not None and b is not None and a != b:
            raise SpecError(f"hyperparameters.{name} is {a!r} but method.{method}.hyperparameters.{name} is {b!r}; "
                            "give it once (under method is the current form)", f"method.{method}.hyperparameters")
        value = b if b is not None else a
        if value is not None:
            merged[name] = value
    if "beta" in merged and method != "dpo":
        raise SpecError("beta is a DPO hyperparameter; use it with method type dpo", "hyperparameters.beta")
    if method == "dpo" and merged.get("tuneforge_method") in ("prefix", "prompt"):
        raise SpecError(f"method dpo does not work with tuneforge_method {merged['tuneforge_method']}; use lora or "
                        "full", "hyperparameters.tuneforge_method")
    return JobSpec(model=served_base, train_model=train_model, training_file=body.training_file,
                   validation_file=body.validation_file or None, method=method, suffix=body.suffix,
                   seed=body.seed if body.seed is not None else secrets.randbelow(2**31), metadata=body.metadata,
                   **merged)
