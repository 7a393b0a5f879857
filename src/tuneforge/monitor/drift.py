"""Drift: are the prompts an adapter sees now like the ones it was trained on, and are its
answers like the ones it gave in its eval?

Input drift, per adapter variant of a route, against the train split of the data folder its
run folder names (summary.json `sources`):
- prompt length (characters of the last user turn): two-sample Kolmogorov-Smirnov;
- content: hashed character 3-grams and words per prompt, compared by a permutation test on
  the two groups' mean profiles (prompts, not n-grams, are the units);
- the logged prompts that carry the difference (largest witness <profile, mean logged profile - mean
  training profile>), each with its cosine similarity to the nearest training prompt, to show what changed.
Drift is flagged when either p-value is below `drift_p / 2` (Bonferroni over the two tests).

Output drift, for a classification adapter: the label distribution of its logged answers vs
the reference (the adapter's own answers in RUN/eval/predictions.jsonl when retrain or the user
wrote one there, as variant `candidate` or `tuned`; else the training labels), chi-square of
homogeneity; and the share of invalid answers (not one of the labels; for extraction, not a
JSON object or array).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.monitor import stats
from tuneforge.monitor.config import MonitorConfig

TRAIN_SAMPLE = 2000  # training prompts compared at most (drawn with a fixed seed)
EVAL_NAMES = ("candidate", "tuned")  # which variant of RUN/eval is the adapter itself


@dataclass
class Reference:
    """What an adapter was trained on, read from its run folder and data folder."""

    run: Path
    task: str
    prompts: list[str]
    labels: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # the reference answers for output drift
    outputs_from: str = "train"


def last_user(messages: list[dict]) -> str:
    users = [m.get("content") or "" for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


def logged_prompt(endpoint: str, prompt: str | None) -> str | None:
    """The text a logged request asked about: chat -> the last user turn, completions -> the prompt."""
    if not prompt:
        return None
    try:
        value = json.loads(prompt)
    except json.JSONDecodeError:
        return prompt
    if endpoint == "chat" and isinstance(value, list):
        return last_user(value)
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def _run_sources(run: Path) -> tuple[dict[str, Any], Path]:
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise TuneforgeError(Problem("not_a_run", "no summary.json here; give the run folder `tuneforge train` "
                                     "wrote", str(run)))
    summary = json.loads(summary_path.read_text())
    sources = summary.get("sources") or []
    if len(sources) != 1:
        raise TuneforgeError(Problem("no_training_data", "the run names no single data folder in summary.json "
                                     "(sources); drift needs the data it was trained on", str(summary_path)))
    return summary, Path(sources[0]["path"])


def reference(run: Path) -> Reference:
    from tuneforge.train.data import read_prepared

    summary, data = _run_sources(Path(run))
    if not data.is_absolute() and not data.exists():
        data = Path(run) / data
    report, train, _ = read_prepared(data)
    prompts, answers = [], []
    for rec in train:
        messages = rec.get("messages") or []
        if messages and messages[-1].get("role") == "assistant":
            prompts.append(last_user(messages[:-1]))
            answers.append(messages[-1].get("content") or "")
    task = report.get("task") or summary.get("task", "generation")
    labels = sorted(report.get("labels") or {}) if task == "classification" else []
    ref = Reference(run=Path(run), task=task, prompts=prompts, labels=labels, outputs=answers)
    predictions = Path(run) / "eval" / "predictions.jsonl"
    if predictions.is_file():
        rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
        name = next((n for n in EVAL_NAMES if rows and n in rows[0].get("outputs", {})), None)
        if name:
            ref.outputs, ref.outputs_from = [r["outputs"][name] for r in rows], f"eval ({predictions})"
    return ref


def input_drift(ref: Reference, logged: list[str], cfg: MonitorConfig) -> dict[str, Any]:
    """Length KS test, n-gram permutation test, and the logged prompts most unlike training."""
    result: dict[str, Any] = {"logged": len(logged), "train": len(ref.prompts)}
    if len(logged) < cfg.min_requests or len(ref.prompts) < 2:
        result["status"] = f"not enough data ({len(logged)} logged prompts, {cfg.min_requests} needed)"
        return result
    rng = np.random.default_rng(0)
    train = ref.prompts if len(ref.prompts) <= TRAIN_SAMPLE else \
        [ref.prompts[i] for i in rng.choice(len(ref.prompts), TRAIN_SAMPLE, replace=False)]
    length = stats.ks_2samp([len(t) for t in train], [len(t) for t in logged])
    a = stats.hashed_profile(train, cfg.ngram_buckets)
    b = stats.hashed_profile(logged, cfg.ngram_buckets)
    ngram = stats.permutation_test(a, b, cfg.permutations)
    nearest = (b @ a.T).max(axis=1)  # rows have unit length: cosine similarity to the closest training prompt
    # the prompts that carry the difference: largest witness <x, mean(logged) - mean(train)> of the
    # test's statistic (short prompts merely have few n-grams; this ranks by what moved the means)
    witness = b @ (b.mean(axis=0) - a.mean(axis=0))
    order = np.argsort(-witness)[: cfg.examples]
    result.update(
        status="tested", length_ks=length["statistic"], length_p=length["p"],
        mean_length_train=float(np.mean([len(t) for t in train])),
        mean_length_logged=float(np.mean([len(t) for t in logged])),
        ngram_statistic=ngram["statistic"], ngram_p=ngram["p"], permutations=ngram["permutations"],
        mean_similarity=float(nearest.mean()),
        drifted=bool(min(length["p"], ngram["p"]) < cfg.drift_p / 2),
        most_unlike=[{"prompt": logged[i][:300], "witness": round(float(witness[i]), 4),
                      "similarity": round(float(nearest[i]), 4)} for i in order])
    return result


def output_drift(ref: Reference, completions: list[str], cfg: MonitorConfig) -> dict[str, Any]:
    """Invalid-answer rate, and for classification the label distribution now vs the reference."""
    from tuneforge.evaluate.metrics import match_label

    result: dict[str, Any] = {"task": ref.task, "answers": len(completions)}
    if ref.task not in ("classification", "extraction") or not completions:
        result["status"] = "not checked" if completions else "no answers"
        return result
    if ref.task == "extraction":
        invalid = sum(not _is_json(c) for c in completions)
        result.update(status="tested", invalid=invalid, invalid_rate=invalid / len(completions))
        return result
    now = [match_label(c, ref.labels) for c in completions]
    before = [match_label(c, ref.labels) for c in ref.outputs]
    counts_now = _counts(l for l in now if l is not None)
    counts_before = _counts(l for l in before if l is not None)
    invalid = sum(l is None for l in now)
    result.update(status="tested", invalid=invalid, invalid_rate=invalid / len(completions),
                  labels_now=counts_now, labels_reference=counts_before, reference=ref.outputs_from)
    test = stats.chi2_homogeneity(counts_before, counts_now) if len(completions) >= cfg.min_requests else None
    if test is not None:
        result.update(label_chi2=test["statistic"], label_df=test["df"], label_p=test["p"],
                      label_drifted=bool(test["p"] < cfg.label_drift_p))
    return result


def _counts(items) -> dict[str, int]:
    found: dict[str, int] = {}
    for item in items:
        found[item] = found.get(item, 0) + 1
    return found


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), (dict, list))
    except (json.JSONDecodeError, TypeError):
        return False
