"""The train stage's typed config. Every key is documented here; `auto` values are
resolved from the dataset size once the data is read (see `resolve_auto`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from tuneforge.config import Strict
from tuneforge.models.resolve import DEFAULT_MODEL

Method = Literal["lora", "qlora", "dora", "full", "prefix", "prompt", "ia3"]
Objective = Literal["auto", "sft", "pretrain", "dpo"]
Auto = Literal["auto"]
Positive = Annotated[int, Field(ge=1)]
PROMPT_METHODS = ("prefix", "prompt")


class LoraSection(Strict):
    r: int = Field(16, ge=1, description="rank of the update matrices")
    alpha: float = Field(32, gt=0, description="scaling numerator; the update is scaled by alpha/r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input (0 skips a random "
                           "mask per layer, a third of a CPU step)")
    target_modules: Union[list[str], Literal["all-linear"]] = Field(
        "all-linear", description="module names to adapt, or all-linear (every linear layer but the head)")


class VirtualTokensSection(Strict):
    num_virtual_tokens: int = Field(20, ge=1, description="prefix/prompt tuning: number of virtual tokens")
    init_text: str = Field("Read the conversation and give the answer the task asks for.",
                           description="prompt tuning: text the virtual tokens start from")


class DpoSection(Strict):
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference model")


class DatasetEntry(Strict):
    path: Path
    weight: float = Field(1.0, gt=0, description="share of training examples drawn from this dataset")


class TrainConfig(Strict):
    model: str = DEFAULT_MODEL
    data: Path | None = Field(None, description="prepared dataset folder (from tuneforge prepare)")
    datasets: list[DatasetEntry] = Field(default_factory=list, description="multi-task mix instead of data")
    out: Path = Field(Path("runs/train"), description="run folder")
    method: Method = "lora"
    objective: Objective = Field("auto", description="auto picks from the dataset task")
    epochs: Union[Positive, Auto] = Field("auto", description="auto: from the dataset size, as hosted services do")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(8, ge=1, description="examples per optimizer step (before grad_accum)")
    grad_accum: int = Field(1, ge=1)
    learning_rate: Union[float, Auto] = "auto"
    warmup: Union[float, Auto] = Field("auto", description="share of steps for linear warm-up (0..0.5)")
    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    max_seq_len: Union[Annotated[int, Field(ge=16)], Auto] = Field(
        "auto", description="auto: the longest example, capped at 2048")
    packing: Union[bool, Auto] = Field("auto", description="concatenate examples without cross-attention")
    shared_prefix: bool = Field(True, description="packed batches: compute the untrained prefix a step's examples "
                                "share (e.g. the system prompt) once instead of once per example; same maths")
    train_on_inputs: bool = Field(False, description="also learn the prompt tokens, not only the answers")
    bf16: Union[bool, Auto] = "auto"
    int8_base: Union[bool, Auto] = Field(
        "auto", description="lora on a CPU: the frozen base weights in int8 (smoothed per input channel) and "
        "their products as int8 GEMMs, faster than float32 without bf16; auto: on for plain lora where an x86 "
        "CPU has AVX2 but no bf16")
    gradient_checkpointing: bool = False
    compile: bool = Field(False, description="torch.compile the model: pays off on long runs only (on a 2-core "
                          "AVX2 CPU the compile took 6 minutes to make a step 10% faster)")
    eval_steps: Union[Positive, Auto] = Field("auto", description="validation loss every N steps (auto: ~10 "
                                              "per run, fewer where one costs over a tenth of the steps "
                                              "between them; at least 3)")
    save_steps: Union[Positive, Auto] = Field("auto", description="checkpoint every N steps (auto: = eval_steps)")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept (the best is kept too)")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after N evals without improvement (epochs auto: 3)")
    eval_limit: int = Field(200, ge=1, description="validation examples used for eval loss")
    lora: LoraSection = LoraSection()
    virtual: VirtualTokensSection = VirtualTokensSection()
    dpo: DpoSection = DpoSection()
    tracking: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])
    resume: bool = Field(False, description="continue from the last complete checkpoint in out")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        problems = self.combination_problems(self.model_dump())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @staticmethod
    def combination_problems(values: dict[str, Any]) -> list[str]:
        """Checks across keys, on raw values too, so they are reported with field errors."""
        get = values.get
        method, objective, packing = get("method", "lora"), get("objective", "auto"), get("packing", "auto")
        problems = []
        if (get("data") is None) == (not get("datasets")):
            problems.append("give exactly one of data (a prepared folder) or datasets (a weighted list)")
        if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
            problems.append("method qlora needs bitsandbytes: pip install bitsandbytes")
        if method in PROMPT_METHODS and packing is True:
            problems.append(f"packing does not work with method {method} (virtual tokens); set packing: false")
        if method == "prefix" and get("gradient_checkpointing"):
            problems.append("gradient_checkpointing does not work with method prefix (PEFT's prefix cache); "
                            "set gradient_checkpointing: false")
        if objective == "dpo" and method in PROMPT_METHODS:
            problems.append(f"objective dpo is not supported with method {method}; use lora or full")
        lora = get("lora") or {}
        dropout = lora.get("dropout") if isinstance(lora, dict) else getattr(lora, "dropout", 0)
        if get("int8_base") is True and (method != "lora" or get("bf16") is True or dropout or objective == "dpo"):
            problems.append("int8_base works with method lora, lora.dropout 0, bf16 off and objective sft (it "
                            "replaces bf16 where the CPU has none); drop int8_base or change those")
        warmup, lr = get("warmup", "auto"), get("learning_rate", "auto")
        if isinstance(warmup, (int, float)) and not 0 <= warmup <= 0.5:
            problems.append("warmup must be a share of steps between 0 and 0.5, or auto")
        if isinstance(lr, (int, float)) and not 0 < lr < 1:
            problems.append("learning_rate must be between 0 and 1, or auto")
        for missing in ("mlflow", "wandb"):
            if missing in (get("tracking") or []) and importlib.util.find_spec(missing) is None:
                problems.append(f"tracking {missing} is configured but not installed: pip install {missing}")
        return problems
