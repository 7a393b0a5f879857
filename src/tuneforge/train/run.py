"""The train stage: prepared dataset -> run folder with adapter, metrics and summary.

    tuneforge train --data data/tickets --method lora --out runs/tickets
    tuneforge train examples/train-lora.yaml --set lora.r=8
    tuneforge train examples/train-lora.yaml --resume

Reads top to bottom: resolve data and `auto` settings, build the model, run the
loop (train/loop.py), export the best weights with the tokenizer and chat
template, write summary.json and loss.png.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.outdir import DISK_FULL, disk_full
from tuneforge.train import data as datasets
from tuneforge.train.config import PROMPT_METHODS, TrainConfig

log = logging.getLogger(__name__)
LEARNING_RATES = {"lora": 2e-4, "dora": 2e-4, "qlora": 2e-4, "full": 2e-5, "ia3": 5e-3, "prefix": 1e-2,
                  "prompt": 3e-2}
MIN_EXAMPLES_SEEN, MAX_EXAMPLES_SEEN, MAX_AUTO_EPOCHS = 2000, 25000, 8
# with `epochs: auto` the count is an upper bound: the run stops once this many validation
# losses in a row failed to beat the best (the best checkpoint is what the run keeps anyway)
AUTO_EPOCHS_PATIENCE = 3
# int8_base auto needs int8 GEMMs this much faster than float32: the base products are about
# 60% of a float32 step and the rounding adds about 10%, so 1.5x leaves a step about 10% faster
INT8_MIN_SPEEDUP = 1.5
INT8_SAMPLES = 64  # train examples (the first, so a resumed run rebuilds the same base) int8_base is smoothed on


def auto_epochs(n: int) -> int:
    """Like hosted fine-tuning services: small sets get more passes, large ones fewer."""
    if n * 3 < MIN_EXAMPLES_SEEN:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / max(n, 1)))
    if n * 3 > MAX_EXAMPLES_SEEN:
        return max(1, MAX_EXAMPLES_SEEN // n)
    return 3


def peak_rss_mb() -> int:
    """This process's peak resident memory. VmHWM, not getrusage: Linux carries ru_maxrss
    over exec, so a child of a big process would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def bf16_supported(device: str) -> bool:
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def int8_gemm_preferred(device: str) -> bool:
    """An x86 CPU with AVX2 but no bf16 where PyTorch's int8 GEMM is measured faster than
    float32 (ARM and older x86 keep float32 without measuring)."""
    return (device == "cpu" and not bf16_supported(device) and " avx2" in _cpu_flags()
            and int8_gemm_speedup() >= INT8_MIN_SPEEDUP)


@functools.lru_cache(maxsize=None)
def int8_gemm_speedup() -> float:
    """How many times float32's rate `torch._int_mm` runs at here, at a short-example step's
    shape, the weight column-major as `Int8Weight` holds it. Measured because the CPU flags
    do not tell: with VNNI it ran 2.2x float32 (AVX2 kernels forced on an AVX512-BF16 EPYC),
    on an AVX2-only EPYC without VNNI it fell back to a kernel about 30x slower than float32
    (3-5 GOP/s against 84-155 GFLOP/s, benchmarks/int8_gemm.py). About 0.1 s there."""
    import torch

    x = torch.randint(-127, 128, (64, 576), dtype=torch.int8)
    w = torch.randint(-127, 128, (576, 576), dtype=torch.int8)
    xf, wf = x.float(), w.float()

    def best(fn, calls: int) -> float:
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append(time.perf_counter() - start)
        return min(times) / calls

    return best(lambda: xf @ wf.t(), 8) / best(lambda: torch._int_mm(x, w.t()), 2)


def load_records(cfg: TrainConfig) -> tuple[list[dict], list[dict], str, list[dict[str, Any]]]:
    sources = [(cfg.data, 1.0)] if cfg.data is not None else [(d.path, d.weight) for d in cfg.datasets]
    parts, val_parts, tasks, reports = [], [], [], []
    for folder, weight in sources:
        report, train, val = datasets.read_prepared(Path(folder))
        parts.append((train, weight))
        val_parts.append(val)
        tasks.append(report["task"])
        reports.append({"path": str(folder), "task": report["task"], "train": len(train), "val": len(val)})
    train = parts[0][0] if len(parts) == 1 else datasets.mix(parts, cfg.seed)
    # interleave so that eval_limit keeps a share of every dataset, not only the first
    vals = [row for group in itertools.zip_longest(*val_parts) for row in group if row is not None]
    task = tasks[0] if len(set(tasks)) == 1 else "mixed"
    return train, vals, task, reports


def resolve(cfg: TrainConfig, n_train: int, longest: int, device: str, objective: str | None = None) -> dict[str, Any]:
    """Concrete values for every `auto` key; explicit values always win. `objective` is the
    resolved one (`auto` becomes dpo on preference data)."""
    objective = objective or cfg.objective
    lr = cfg.learning_rate if cfg.learning_rate != "auto" else LEARNING_RATES[cfg.method] * (
        0.25 if objective == "dpo" else 1.0)
    bf16 = cfg.bf16 if cfg.bf16 != "auto" else bf16_supported(device) and cfg.int8_base is not True
    int8 = cfg.int8_base if cfg.int8_base != "auto" else (
        not bf16 and cfg.method == "lora" and objective != "dpo" and not cfg.lora.dropout
        and int8_gemm_preferred(device))
    return {
        "epochs": cfg.epochs if cfg.epochs != "auto" else auto_epochs(n_train),
        "learning_rate": lr,
        "warmup": cfg.warmup if cfg.warmup != "auto" else 0.05,
        "max_seq_len": cfg.max_seq_len if cfg.max_seq_len != "auto" else min(2048, longest),
        "packing": cfg.packing if cfg.packing != "auto" else cfg.method not in PROMPT_METHODS,
        "bf16": bf16,
        "int8_base": int8,
    }


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator
    from transformers import AutoTokenizer, GenerationConfig, get_scheduler

    from tuneforge.models import resolve_model
    from tuneforge.models.resolve import check_model
    from tuneforge.models.template import check_tokenizer
    from tuneforge.train import loop, preflight
    from tuneforge.train.checkpoint import Checkpoints, load_trainable
    from tuneforge.train.collate import Encoder
    from tuneforge.train.methods import build_model, count_params
    from tuneforge.train.track import Tracker, plot_losses

    # the cheap checks first: a bad --out or a broken model file fails before data or model loads
    preflight.check_out(cfg.out)
    check_model(cfg.model)
    train_rows, val_rows, task, sources = load_records(cfg)
    objective = cfg.objective if cfg.objective != "auto" else datasets.OBJECTIVE_FOR_TASK.get(task, "sft")
    if objective == "dpo" and cfg.method in PROMPT_METHODS:
        raise TuneforgeError(Problem("invalid_value", f"the data is preference pairs (objective dpo), which method "
                                     f"{cfg.method} does not support; use lora or full", "method"))
    if objective != "pretrain":
        datasets.check_objective(objective, {datasets.record_kind(r) for r in train_rows + val_rows})
    out = cfg.out
    fingerprint = preflight.fingerprint(cfg)
    ckpts = Checkpoints(out / "checkpoints", cfg.save_total_limit, fingerprint)
    if not cfg.resume and ckpts.complete():
        raise TuneforgeError(Problem("run_exists", "this run folder has checkpoints; pass --resume to continue it "
                                     "or choose another --out", str(out)))
    latest = ckpts.latest() if cfg.resume else None
    if cfg.resume and latest is None:
        raise TuneforgeError(Problem("no_checkpoint", "nothing to resume: no complete checkpoint here; "
                                     "run without --resume", str(out)))
    if latest is not None:
        preflight.check_resume(latest, fingerprint)
        cfg = _keep_resolved_precision(cfg, out)

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device.type
    if cfg.int8_base is True and device != "cpu":
        raise TuneforgeError(Problem("invalid_value", f"int8_base is for CPUs without bf16; on {device} use bf16 "
                                     "(drop int8_base)", "int8_base"))
    model_path = str(resolve_model(cfg.model))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    check_tokenizer(tokenizer, cfg.model)

    # encode once without a limit: the longest example decides an `auto` max_seq_len
    limit = cfg.max_seq_len if cfg.max_seq_len != "auto" else (2048 if objective == "pretrain" else 10**9)
    encoder = Encoder(tokenizer, limit, cfg.train_on_inputs)
    train_items = datasets.encode(train_rows, objective, encoder)
    longest = max((datasets.longest(x) for x in train_items), default=16)
    settings = resolve(cfg, len(train_rows), longest, device, objective)
    if cfg.int8_base is True and objective == "dpo":
        raise TuneforgeError(Problem("invalid_value", "int8_base does not work with preference data (objective "
                                     "dpo: the reference model would run in float32); drop int8_base", "int8_base"))
    train_items = datasets.truncate(train_items, settings["max_seq_len"], encoder.stats)
    val_items = datasets.encode(val_rows[: cfg.eval_limit], objective, Encoder(tokenizer, settings["max_seq_len"]))
    if not train_items:
        raise TuneforgeError(Problem("no_examples", "no training example has a trained token", str(cfg.data)))

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, model_path, device, settings["bf16"], settings["packing"])
    if cfg.compile:
        model = torch.compile(model)
    trainable, total = count_params(model)
    # fused: one kernel over all parameters, where the default loops over them one by one
    # (LoRA has hundreds of small ones; HF Trainer's default is fused too)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings["learning_rate"],
                                  weight_decay=cfg.weight_decay, fused=device in ("cpu", "cuda"))
    steps_per_epoch, total_steps = loop.steps_for(len(train_items), cfg.batch_size, cfg.grad_accum,
                                                  accelerator.num_processes, settings["epochs"])
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps) if cfg.epochs != "auto" else cfg.max_steps
    scheduler = get_scheduler(cfg.lr_scheduler if cfg.lr_scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=int(round(settings["warmup"] * total_steps)),
                              num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    eval_steps = cfg.eval_steps if cfg.eval_steps != "auto" else loop.auto_eval_steps(
        total_steps, train_items, val_items, cfg.batch_size * cfg.grad_accum)
    save_steps = cfg.save_steps if cfg.save_steps != "auto" else eval_steps
    patience = cfg.early_stopping_patience
    if patience is None and cfg.epochs == "auto" and val_items:
        patience = AUTO_EPOCHS_PATIENCE
    resolved = {**json.loads(cfg.model_dump_json()), **settings, "objective": objective, "eval_steps": eval_steps,
                "save_steps": save_steps, "total_steps": total_steps, "early_stopping_patience": patience}

    out.mkdir(parents=True, exist_ok=True)
    ckpts.clean_partial()
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    tracker = Tracker(out, cfg.tracking, resolved, resume_step=None if latest is None else int(latest.name[5:]),
                      enabled=accelerator.is_main_process)
    plan = loop.Plan(
        model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator, objective=objective,
        train=train_items, val=val_items, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
        total_steps=total_steps, steps_per_epoch=steps_per_epoch, seed=cfg.seed, packing=settings["packing"],
        pad_id=tokenizer.pad_token_id, bf16=settings["bf16"], shared_prefix=cfg.shared_prefix,
        max_grad_norm=cfg.max_grad_norm,
        eval_steps=eval_steps, save_steps=save_steps, patience=patience,
        virtual_tokens=cfg.virtual.num_virtual_tokens if cfg.method == "prompt" else 0, beta=cfg.dpo.beta,
        checkpoints=ckpts, best_path=out / "checkpoints" / "best.pt", log=tracker.log)
    if settings["int8_base"]:
        from tuneforge.train.fused_lora import quantize_base

        if cfg.int8_base is True and int8_gemm_speedup() < 1:  # measured: CPUs without VNNI, for one
            log.warning("warning: int8_base: this CPU runs int8 GEMMs at %.2fx float32's rate, so training "
                        "will be slower than in float32; drop int8_base", int8_gemm_speedup())
        quantize_base(accelerator.unwrap_model(model), lambda: loop.forward_only(plan, train_items[:INT8_SAMPLES]))
    if objective == "dpo":
        plan.ref_logps = loop.reference_logps(plan, train_items)
        plan.val_ref_logps = loop.reference_logps(plan, val_items)
    if latest is not None:
        loop.restore_checkpoint(plan, latest)

    bar = _progress_bar(total_steps, plan.state.step) if progress and accelerator.is_main_process else None
    plan.progress = bar[1] if bar else None
    try:
        state = loop.run(plan)
    except KeyboardInterrupt:
        raise TuneforgeError(_resume_problem(ckpts, "interrupted"), exit_code=130) from None
    except (torch.OutOfMemoryError, MemoryError):
        raise TuneforgeError(_resume_problem(ckpts, "out of memory: lower batch_size or max_seq_len, or enable "
                                                    "gradient_checkpointing, then"), exit_code=3) from None
    except RuntimeError as exc:
        raise TuneforgeError(_resume_problem(ckpts, f"training crashed ({exc})"), exit_code=3) from None
    except TuneforgeError as exc:
        if exc.problems[0].code == "disk_full":  # add where to resume
            exc.problems.append(_resume_problem(ckpts, "no space left on device"))
        raise
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        raise TuneforgeError([disk_full(exc.filename or out), _resume_problem(ckpts, "no space left on device")])
    finally:
        if bar:
            bar[0].stop()
        tracker.close()

    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    if plan.best_path.exists() and state.best_step is not None:
        load_trainable(model, torch.load(plan.best_path, map_location="cpu", weights_only=True))
    summary = None
    if accelerator.is_main_process:
        artifact = _export(model, tokenizer, model_path, out, cfg.method)
        GenerationConfig.from_pretrained(model_path).save_pretrained(artifact)
        plot_losses(out / "metrics.jsonl", out / "loss.png")
        summary = {
            "method": cfg.method, "objective": objective, "task": task, "model": cfg.model,
            "artifact": str(artifact.relative_to(out)), "sources": sources,
            "train_examples": len(train_items), "val_examples": len(val_items),
            "truncated_examples": encoder.stats.truncated, "dropped_no_target": encoder.stats.dropped_no_target,
            "steps": state.step, "epochs": round(state.step / steps_per_epoch, 3),
            "train_tokens": state.real_tokens, "trained_target_tokens": state.target_tokens,
            "train_seconds": round(state.train_seconds, 2),
            "tokens_per_second": round(state.real_tokens / max(state.train_seconds, 1e-9), 1),
            "best_eval_loss": state.best_eval, "best_step": state.best_step, "final_eval_loss": state.last_eval,
            "stopped_early": state.stopped_early,
            "peak_rss_mb": peak_rss_mb(),
            "trainable_params": trainable, "total_params": total, "processes": accelerator.num_processes,
            "settings": {k: resolved[k] for k in ("epochs", "learning_rate", "warmup", "max_seq_len", "packing",
                                                  "bf16", "int8_base", "batch_size", "grad_accum",
                                                  "total_steps")},
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return summary or {}


def _keep_resolved_precision(cfg: TrainConfig, out: Path) -> TrainConfig:
    """A resumed run keeps the bf16 and int8_base its start resolved `auto` to (config.yaml):
    they depend on the CPU, and int8_base on a timing, which another machine or a busy
    moment could answer differently."""
    try:
        started = yaml.safe_load((out / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return cfg
    keep = {k: started[k] for k in ("bf16", "int8_base")
            if getattr(cfg, k) == "auto" and isinstance(started.get(k), bool)}
    return cfg.model_copy(update=keep) if keep else cfg


def _export(model, tokenizer, model_path: str, out: Path, method: str) -> Path:
    """adapter/ in PEFT format (or model/ for full fine-tuning), with the tokenizer and chat
    template, so every consumer formats prompts exactly as training did."""
    target = out / ("model" if method == "full" else "adapter")
    tmp = out / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if method != "full":
        (tmp / "tuneforge.json").write_text(json.dumps({"base_model": model_path, "method": method}) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def _resume_problem(ckpts, what: str) -> Problem:
    latest = ckpts.latest()
    where = f"resume from {latest} with --resume" if latest else "no checkpoint was written yet; start again"
    return Problem("training_stopped", f"{what}; {where}", str(ckpts.folder.parent))


def _progress_bar(total: int, start: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeRemainingColumn(), transient=False)
    task = bar.add_task("train", total=total, completed=start, info="")
    bar.start()

    def update(state, row):
        info = f"loss {row['loss']:.4f}  {row['tokens_per_s']:.0f} tok/s"
        if "eval_loss" in row:
            info += f"  eval {row['eval_loss']:.4f}"
        bar.update(task, completed=state.step, info=info)

    return bar, update
