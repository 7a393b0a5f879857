"""The evaluate stage: the same held-out examples through every variant, scored with
the task's own metrics.

    tuneforge eval --data runs/tickets-data --adapter tuned=runs/tickets

Variants: `base-zero-shot` (the prompt as in training), `base-few-shot` (K solved
training examples shown first, stratified by label) and each adapter or model given.
Reads top to bottom: the metric names, few-shot demonstrations, the variants, one
variant's run (generation, label scoring, perplexity, latency), scoring, and writing
eval.json, predictions.jsonl and the reports. Loading and checking the examples is in
examples.py; --fail-if's names are checked before inference, its value after (by the CLI).
With --judge-url, an LLM judge (judge.py) also scores the answers once every variant has run;
its endpoint is checked before the first model loads.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tuneforge import outdir
from tuneforge.errors import Problem, TuneforgeError
from tuneforge.evaluate import judge, metrics
from tuneforge.evaluate.config import EvalConfig
from tuneforge.evaluate.examples import Examples, load_examples, split_record  # noqa: F401 (Examples re-exported)

MAIN_METRIC = {"classification": "accuracy", "extraction": "field_f1", "generation": "rouge_l",
               "sql": "exec_accuracy"}


def metric_names(task: str, cfg: EvalConfig | None = None, variant: str | None = None) -> tuple[str, ...]:
    """The numbers every variant of `task` gets (with `cfg`: only those this config measures, and the
    judge's for `variant`), from the names declared on the metric functions; --fail-if is checked
    against these before inference."""
    names = list(metrics.TASK_METRICS[task])
    if task == "classification" and (cfg is None or cfg.constrained):
        names += metrics.CONSTRAINED_METRICS
    names += [m for m in metrics.RUN_METRICS if not (m == "latency_ms_p50" and cfg and cfg.latency_samples == 0)]
    names += judge.metric_names(cfg, variant)
    return tuple(dict.fromkeys(names))


ALL_METRICS = frozenset(name for task in MAIN_METRIC for name in metric_names(task)) | judge.ALL_METRICS


def pick_shots(ex: Examples, k: int, seed: int) -> list[tuple[str, str]]:
    """(user text, answer) demonstrations; round-robin over labels for classification."""
    rng = random.Random(seed)
    pool = []
    for rec in ex.train:
        try:
            prompt, answer = split_record(rec, "train")
        except TuneforgeError:
            continue
        users = [m["content"] for m in prompt if m["role"] == "user"]
        if users:
            pool.append((users[-1], answer))
    rng.shuffle(pool)
    if ex.task != "classification":
        return pool[:k]
    by_label: dict[str, list[tuple[str, str]]] = {}
    for item in pool:
        by_label.setdefault(item[1], []).append(item)
    picked: list[tuple[str, str]] = []
    while len(picked) < k and any(by_label.values()):
        for label in sorted(by_label):
            if by_label[label] and len(picked) < k:
                picked.append(by_label[label].pop())
    rng.shuffle(picked)
    return picked


def with_shots(prompt: list[dict], shots: list[tuple[str, str]]) -> list[dict]:
    head = [m for m in prompt[:1] if m["role"] == "system"]
    demos = [m for user, answer in shots for m in ({"role": "user", "content": user},
                                                    {"role": "assistant", "content": answer})]
    return head + demos + prompt[len(head):]


@dataclass
class Variant:
    name: str
    load: Callable[[], tuple[Any, Any]]
    few_shot: bool = False


def variant_names(cfg: EvalConfig) -> list[str]:
    return [f"base-{b}" for b in cfg.baselines] + list(cfg.adapters)


def variants(cfg: EvalConfig) -> list[Variant]:
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.models.tuned import load_tuned

    found = []
    loaded: list = []

    def base():  # zero-shot and few-shot share one loaded base model
        if not loaded:
            loaded.append((load_model(cfg.model), load_tokenizer(cfg.model)))
        return loaded[0]

    if "zero-shot" in cfg.baselines:
        found.append(Variant("base-zero-shot", base))
    if "few-shot" in cfg.baselines:
        found.append(Variant("base-few-shot", base, few_shot=True))
    for name, path in cfg.adapters.items():
        found.append(Variant(name, lambda path=path: load_tuned(Path(path))))
    if not found:
        raise TuneforgeError(Problem("no_variants", "nothing to evaluate: give --adapter or keep a baseline",
                                     "--baselines"))
    return found


def _encode(tokenizer, messages: list[dict]) -> list[int]:
    from tuneforge.models.template import encode_prompt

    return encode_prompt(tokenizer, messages)


def _answer_ids(tokenizer, text: str, stop: int) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [stop]


def run_variant(variant: Variant, ex: Examples, cfg: EvalConfig, shots, bf16: bool, progress=None,
                device: str = "cpu") -> dict[str, Any]:
    from tuneforge.evaluate import engine
    from tuneforge.models.template import turn_end_id

    model, tokenizer = variant.load()
    if not getattr(model, "is_quantized", False):  # quantized weights are placed when loaded
        model.to(device)  # in place, so a base model shared by two baselines moves once
    stop = turn_end_id(tokenizer)
    messages = [with_shots(p, shots) if variant.few_shot else p for p in ex.prompts]
    prompts = [_encode(tokenizer, m) for m in messages]
    answers = [_answer_ids(tokenizer, r, stop) for r in ex.references]
    budget = cfg.max_new_tokens if cfg.max_new_tokens != "auto" else min(512, max(map(len, answers)) + 8)
    prefix = engine.SharedPrefix.of(model, prompts, bf16)  # the system prompt (and shots), computed once
    constrained = ex.task == "classification" and cfg.constrained
    options = [_answer_ids(tokenizer, label, stop) for label in ex.labels] if constrained else None
    # the labels are scored from generation's own prompt pass
    gen = engine.generate(model, tokenizer, prompts, budget, cfg.batch_size, bf16, progress, prefix, options)
    scored = score(ex, gen.texts, cfg)
    result: dict[str, Any] = dict(scored["metrics"])
    logps = None
    if constrained:
        table = gen.scores
        picks = [ex.labels[int(i)] for i in table.argmax(-1)]
        result["accuracy_constrained"] = sum(p == r for p, r in zip(picks, ex.references)) / len(picks)
        result["macro_f1_constrained"] = metrics.classification(picks, ex.references, ex.labels)["macro_f1"]
        logps = _reference_logprobs(table, options, ex)
    if logps is None:
        logps = engine.answer_logprobs(model, prompts, answers, tokenizer.pad_token_id, cfg.batch_size, bf16,
                                       prefix)
    total, count = sum(lp for lp, _ in logps), sum(n for _, n in logps)
    # a model sure of the wrong tokens can have a loss past exp's range; cap it (JSON has no inf)
    result["perplexity"] = math.exp(min(-total / max(count, 1), 709.0))
    result["latency_ms_p50"] = _latency(model, tokenizer, prompts[: cfg.latency_samples], budget, bf16)
    result["tokens_per_s"] = round(gen.new_tokens / max(gen.seconds, 1e-9), 1)
    result["examples_per_s"] = round(len(prompts) / max(gen.seconds, 1e-9), 2)
    general = _general(model, tokenizer, bf16, cfg.batch_size) if cfg.general else None
    del model
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
    return {"metrics": result, "outputs": gen.texts, "scores": scored["scores"], "confusion": scored.get("confusion"),
            "general": general}


def _reference_logprobs(table, options: list[list[int]], ex: Examples) -> list[tuple[float, int]] | None:
    """Each reference's (log-prob, tokens) read from the option scores when every reference
    is one of the labels: its answer tokens are that option's, so scoring them again
    would repeat the work."""
    index = {label: j for j, label in enumerate(ex.labels)}
    if not all(r in index for r in ex.references):
        return None
    return [(float(table[i, index[r]]), len(options[index[r]])) for i, r in enumerate(ex.references)]


def _latency(model, tokenizer, prompts: list[list[int]], budget: int, bf16: bool) -> float | None:
    from tuneforge.evaluate import engine

    times = []
    for prompt in prompts:
        start = time.perf_counter()
        engine.generate(model, tokenizer, [prompt], budget, 1, bf16)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1) if times else None


def _general(model, tokenizer, bf16: bool, batch_size: int) -> float:
    from tuneforge.evaluate import engine
    from tuneforge.evaluate.general import load_general, score_general

    items = load_general()
    prompts = [_encode(tokenizer, [{"role": "user", "content": q["question"] + " Answer briefly."}]) for q in items]
    out = engine.generate(model, tokenizer, prompts, 24, batch_size, bf16)
    return sum(score_general(p, q["answers"]) for p, q in zip(out.texts, items)) / len(items)


def score(ex: Examples, preds: list[str], cfg: EvalConfig) -> dict[str, Any]:
    refs = ex.references
    if ex.task == "classification":
        matched = [metrics.match_label(p, ex.labels) for p in preds]
        found = metrics.classification(matched, refs, ex.labels)
        confusion = found.pop("confusion")
        found.pop("per_class", None)
        scores = [float(m == r) for m, r in zip(matched, refs)]
        return {"metrics": found, "scores": scores, "confusion": confusion}
    if ex.task == "extraction":
        return {"metrics": metrics.extraction(preds, refs),
                "scores": [metrics.example_score("extraction", p, r) for p, r in zip(preds, refs)]}
    if ex.task == "sql":
        found = metrics.sql(preds, refs, cfg.sql_db)
        per = found.pop("per_example", [])
        return {"metrics": found, "scores": [float(x["correct"]) for x in per]}
    return {"metrics": metrics.generation(preds, refs),
            "scores": [metrics.example_score("generation", p, r) for p, r in zip(preds, refs)]}


def evaluate(cfg: EvalConfig, variant_list: list[Variant] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every variant; returns the eval.json content (and writes the run folder).

    What can be checked without a model is checked first (the examples, their task, the database,
    the names in --fail-if against that task's metrics, the output folder, that each model's
    tokenizer can mark where an answer ends, and the judge's rubric and endpoint), so a mistake
    costs seconds, not a run."""
    problems = outdir.check_out(Path(cfg.out))
    if problems:
        raise TuneforgeError(problems)
    ex = load_examples(cfg)
    variant_list = variant_list or variants(cfg)
    _check_tokenizers(cfg)
    if cfg.fail_if:
        from tuneforge.evaluate.fail_if import validate

        validate(cfg.fail_if, {v.name: metric_names(ex.task, cfg, v.name) for v in variant_list})
    plan = judge.plan(cfg, [v.name for v in variant_list]) if cfg.judge_url else None
    runs = run_all(cfg, ex, variant_list, progress)
    judged = judge_all(plan, ex, runs, progress) if plan else None
    return assemble(cfg, ex, runs, judged)


def _check_tokenizers(cfg: EvalConfig) -> None:
    from transformers import AutoTokenizer

    from tuneforge.models import load_tokenizer
    from tuneforge.models.template import check_tokenizer
    from tuneforge.models.tuned import artifact_dir

    if cfg.baselines:
        check_tokenizer(load_tokenizer(cfg.model), cfg.model)
    for name, path in cfg.adapters.items():
        check_tokenizer(AutoTokenizer.from_pretrained(str(artifact_dir(Path(path)))), f"{name}={path}")


def eval_device(cfg: EvalConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TuneforgeError(Problem("no_cuda", "no CUDA device is available here; use --set device=cpu or auto",
                                     "device"))
    return cfg.device


def run_all(cfg: EvalConfig, ex: Examples, variant_list: list[Variant], progress: bool = True) -> dict[str, Any]:
    from tuneforge.train.run import bf16_supported

    few = any(v.few_shot for v in variant_list)
    shots = pick_shots(ex, cfg.shots, cfg.seed) if few else []
    if few and not shots:
        where = Path(cfg.data) / "train.jsonl" if Path(cfg.data).is_dir() else cfg.data
        raise TuneforgeError(Problem("no_shots", "few-shot needs a train split to draw examples from; pass a "
                                     "prepared folder or --baselines zero-shot", str(where)))
    device = eval_device(cfg)
    bf16 = cfg.bf16 if cfg.bf16 != "auto" else bf16_supported(device)
    runs = {}
    bar = _progress(progress)
    with bar:
        for variant in variant_list:
            task_id = bar.add_task(variant.name, total=len(ex.prompts)) if bar.enabled else None
            step = (lambda n, t=task_id: bar.update(t, advance=n)) if bar.enabled else None
            runs[variant.name] = run_variant(variant, ex, cfg, shots, bf16, step, device)
    return runs


def judge_all(plan: judge.Plan, ex: Examples, runs: dict[str, dict[str, Any]], progress: bool = True) -> dict:
    """The judge's metrics into each variant's, its verdicts into runs[name]["judge"]; returns its summary."""
    outputs = {name: r["outputs"] for name, r in runs.items()}
    main = {name: r["metrics"].get(MAIN_METRIC[ex.task]) for name, r in runs.items()}
    bar = _progress(progress)
    with bar:
        task_id = bar.add_task("judge", total=judge.calls_planned(plan, outputs)) if bar.enabled else None
        step = (lambda n: bar.update(task_id, advance=n)) if bar.enabled else None
        found, entries, summary = judge.judge(plan, ex.prompts, ex.references, outputs, main, step)
    for name, values in found.items():
        runs[name]["metrics"].update(values)
        runs[name]["judge"] = entries[name]
    return summary


def assemble(cfg: EvalConfig, ex: Examples, runs: dict[str, dict[str, Any]], judged: dict | None = None
             ) -> dict[str, Any]:
    from tuneforge.evaluate.report import write_reports

    result: dict[str, Any] = {"task": ex.task, "n": len(ex.references), "data": ex.source,
                              "main_metric": MAIN_METRIC[ex.task],
                              "variants": {name: r["metrics"] for name, r in runs.items()}}
    if ex.task == "classification":
        result["labels"] = ex.labels
        result["confusion"] = {name: r["confusion"] for name, r in runs.items()}
    if any(r["general"] is not None for r in runs.values()):
        result["general"] = {name: r["general"] for name, r in runs.items()}
    if judged is not None:
        result["judge"] = judged
    predictions = [{"index": i, "input": ex.prompts[i][-1]["content"], "reference": ex.references[i],
                    "outputs": {name: r["outputs"][i] for name, r in runs.items()},
                    "scores": {name: r["scores"][i] for name, r in runs.items()}}
                   for i in range(len(ex.references))]
    for name, r in runs.items():
        for p, entry in zip(predictions, r.get("judge") or []):
            p.setdefault("judge", {})[name] = entry
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    write_reports(out, result, predictions)
    return result


class _NoBar:
    enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("eval {task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar.enabled = True
    return bar
