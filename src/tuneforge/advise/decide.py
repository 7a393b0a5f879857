"""`tuneforge advise decide`: should this task be fine-tuned at all?

    tuneforge advise decide --examples 300 --baseline-accuracy 0.7 --target-accuracy 0.9
    tuneforge advise decide --report runs/data --eval-report runs/eval --target-accuracy 0.9

Walks the decision tree the fine-tuning guides share, in this order, and keeps every reason
that led to the answer:

1. Can prompting do it? A baseline (--baseline-accuracy, else the best base variant of
   --eval-report, usually base-few-shot) at or above --target-accuracy: no custom behaviour is
   needed -> `prompting`.
2. Is it about knowledge (--knowledge-task) or does the information change often
   (--changes-often)? Fine-tuning teaches behaviour and format, not facts that must stay
   current -> `rag`.
3. How many examples? (the report's train split, near duplicates counted once; else --examples)
   fewer than 100 -> `few-shot`; 100-499 -> `fine-tune-with-care`; 500 or more -> `fine-tune`;
   unknown -> `unknown`.
4. Economics: a latency budget under 100 ms or more than 1M requests a month is where a small
   fine-tuned model pays off; said as a reason (with too few examples: collect them).
5. Evidence from eval: the gap between the baseline and the target, and, when the eval scored
   a fine-tune, its gain over the best baseline (5 points or more justifies fine-tuning).

Scores are the task's main metric (accuracy for classification; field F1, ROUGE-L or execution
accuracy otherwise), as fractions. A prepare report also adds warnings the guides warn about:
too few examples, imbalanced labels, contradictions, duplicates, dropped records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import Field

from tuneforge.advise import build
from tuneforge.advise.reports import eval_report, metric, prepare_report
from tuneforge.config import Strict
from tuneforge.errors import Problem, TuneforgeError

FEW_SHOT_BELOW = 100  # the guides' floor for fine-tuning
FINE_TUNE_FROM = 500  # "500+ quality examples"
FAST_MS = 100  # latency budgets under this favour a small fine-tuned model
MANY_REQUESTS = 1_000_000  # a month; above this a fine-tuned model pays off
MIN_GAIN = 0.05  # five points of the main metric: a gain worth a fine-tune
IMBALANCE = 5  # largest class over smallest, as prepare warns
FEW_PER_LABEL = 10
CONTRADICTION_SHARE = 0.02
DUPLICATE_SHARE = 0.10

TITLES = {
    "prompting": "Prompting is enough: do not fine-tune",
    "rag": "Use retrieval (RAG), not fine-tuning",
    "few-shot": "Use few-shot prompting and collect more examples",
    "fine-tune-with-care": "Fine-tuning is possible, with care",
    "fine-tune": "Fine-tune (LoRA)",
    "unknown": "Not enough to decide: count your examples",
}
NEXT_STEPS = {
    "prompting": "keep the prompt; re-check with `tuneforge eval` when the task changes",
    "rag": "index the documents and retrieve them into the prompt; fine-tune only for format or tone",
    "few-shot": "put your best examples in the prompt (`tuneforge eval --shots N` scores that) and collect "
                f"at least {FEW_SHOT_BELOW}",
    "fine-tune-with-care": "LoRA with a small rank and few epochs; compare with base-few-shot on held-out data "
                           "(`tuneforge eval`)",
    "fine-tune": "`tuneforge advise method` for the hardware, then `tuneforge train`",
    "unknown": "pass --report PREPARED_DIR/report.json or --examples N",
}


class DecideConfig(Strict):
    report: Optional[Path] = Field(None, description="prepare report.json (or its folder)")
    eval_report: Optional[Path] = Field(None, description="eval.json (or its folder)")
    examples: Optional[int] = Field(None, ge=0, description="labelled examples you have")
    baseline_accuracy: Optional[float] = Field(None, ge=0, le=1, description="what prompting scores now")
    target_accuracy: Optional[float] = Field(None, ge=0, le=1, description="what the task needs")
    knowledge_task: bool = Field(False, description="the answers depend on facts to look up")
    changes_often: bool = Field(False, description="the information behind the answers changes often")
    latency_ms: Optional[float] = Field(None, gt=0, description="latency budget per answer")
    requests_per_month: Optional[float] = Field(None, ge=0, description="expected traffic")


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def data_facts(report: dict[str, Any]) -> dict[str, Any]:
    """Counts and rates from a prepare report; near duplicates left in count once."""
    train, out = report["splits"]["train"], report["records_out"]
    near = 0 if report["duplicates"].get("near_dropped") else report["duplicates"]["near"]
    facts = {
        "examples": round(train * (1 - _share(near, out))), "train_split": train,
        "records_in": report["records_in"], "records_out": out,
        "exact_duplicate_rate": round(_share(report["duplicates"]["exact"], report["records_in"]), 4),
        "near_duplicate_rate": round(_share(report["duplicates"]["near"], out), 4),
        "contradiction_rate": round(_share(report["contradiction_records"], report["records_in"]), 4),
        "bad_records": report.get("bad_records", 0),
    }
    labels = report["labels"]
    if labels:
        big, small = max(labels, key=labels.get), min(labels, key=labels.get)
        facts["labels"] = {"classes": len(labels), "largest": [big, labels[big]], "smallest": [small, labels[small]],
                           "ratio": round(labels[big] / max(labels[small], 1), 2)}
    return facts


def data_warnings(facts: dict[str, Any]) -> list[str]:
    found = []
    n = facts["examples"]
    if n < FEW_SHOT_BELOW:
        found.append(f"only {n} training examples: the guides put the floor for fine-tuning at {FEW_SHOT_BELOW} "
                     f"and reliable gains at {FINE_TUNE_FROM}+")
    labels = facts.get("labels")
    if labels and labels["ratio"] > IMBALANCE:
        (big, nb), (small, ns) = labels["largest"], labels["smallest"]
        found.append(f"labels are imbalanced: {big} has {nb} records, {small} {ns} ({labels['ratio']:g}x); the model "
                     "will lean to the large classes: collect more of the small ones and watch macro-F1")
    elif labels and labels["smallest"][1] < FEW_PER_LABEL:
        found.append(f"label {labels['smallest'][0]} has only {labels['smallest'][1]} examples "
                     f"(fewer than {FEW_PER_LABEL}): too few to learn it")
    if facts["contradiction_rate"] > 0:
        level = "many" if facts["contradiction_rate"] >= CONTRADICTION_SHARE else "some"
        found.append(f"{level} records contradict each other ({facts['contradiction_rate']:.1%} of the input: same "
                     "input, different answers): fix those labels, a model cannot learn both")
    if facts["exact_duplicate_rate"] >= DUPLICATE_SHARE or facts["near_duplicate_rate"] >= DUPLICATE_SHARE:
        found.append(f"{facts['exact_duplicate_rate']:.0%} exact and {facts['near_duplicate_rate']:.0%} near "
                     "duplicates: the data is less varied than its size suggests")
    if facts["bad_records"]:
        found.append(f"{facts['bad_records']} malformed records were left out by prepare")
    return found


def eval_facts(result: dict[str, Any]) -> dict[str, Any]:
    """The baseline (best base variant, few-shot when it scored) and the best fine-tune, if any."""
    name = result["main_metric"]
    scores = {v: metric(values, name) for v, values in result["variants"].items()}
    scores = {v: s for v, s in scores.items() if s is not None}
    base = {v: s for v, s in scores.items() if v.startswith("base-")}
    tuned = {v: s for v, s in scores.items() if not v.startswith("base-")}
    facts: dict[str, Any] = {"metric": name, "task": result["task"]}
    if base:
        best = max(base, key=base.get)
        facts.update(baseline=base[best], baseline_variant=best, few_shot=base.get("base-few-shot"))
    if tuned:
        best = max(tuned, key=tuned.get)
        facts.update(tuned=tuned[best], tuned_variant=best)
    return facts


def gather(cfg: DecideConfig) -> dict[str, Any]:
    """Every fact the tree uses, with where it came from; all report problems at once."""
    problems: list[Problem] = []
    facts: dict[str, Any] = {"examples": cfg.examples, "examples_source": "--examples" if cfg.examples is not None
                             else None, "warnings": [], "notes": []}
    if cfg.report is not None:
        report, found = prepare_report(cfg.report)
        problems += found
        if report is not None:
            data = data_facts(report)
            facts["data"] = data
            if cfg.examples is not None and cfg.examples != data["examples"]:
                facts["notes"].append(f"--examples {cfg.examples} is replaced by the report's count")
            adjusted = data["examples"] != data["train_split"]
            facts.update(examples=data["examples"], examples_source="report's train split" + (
                f" of {data['train_split']}, near duplicates counted once" if adjusted else ""))
            facts["warnings"] += data_warnings(data)
    if cfg.eval_report is not None:
        result, found = eval_report(cfg.eval_report)
        problems += found
        if result is not None:
            facts["eval"] = eval_facts(result)
    if problems:
        raise TuneforgeError(problems)
    scored = facts.get("eval", {})
    facts["baseline"], facts["baseline_source"] = cfg.baseline_accuracy, "--baseline-accuracy"
    if cfg.baseline_accuracy is None and "baseline" in scored:
        facts["baseline"], facts["baseline_source"] = scored["baseline"], scored["baseline_variant"] + " (eval)"
    return facts


def _pct(x: float) -> str:
    return f"{x:.1%}" if x < 1 else "100%"


def walk(cfg: DecideConfig, facts: dict[str, Any]) -> tuple[str, list[str]]:
    """The decision and the reasons, in the order the tree asks its questions."""
    reasons: list[str] = []
    base, target = facts["baseline"], cfg.target_accuracy
    pays = []
    if cfg.latency_ms is not None and cfg.latency_ms < FAST_MS:
        pays.append(f"a {cfg.latency_ms:g} ms latency budget (under {FAST_MS} ms) needs a small model without long "
                    "prompts")
    if cfg.requests_per_month is not None and cfg.requests_per_month > MANY_REQUESTS:
        pays.append(f"{cfg.requests_per_month:,.0f} requests a month (over 1M) make a small model's lower cost per "
                    "request add up (`tuneforge advise cost`)")

    # 1. can prompting do it?
    if base is not None and target is not None and base >= target:
        reasons.append(f"prompting already reaches the target: {_pct(base)} ({facts['baseline_source']}) >= "
                       f"{_pct(target)}, so no custom behaviour is needed")
        reasons += [f"{p}; a fine-tuned smaller model could still be cheaper or faster" for p in pays]
        return "prompting", reasons
    if base is not None and target is not None:
        reasons.append(f"prompting falls short: {_pct(base)} ({facts['baseline_source']}) against a target of "
                       f"{_pct(target)}, {100 * (target - base):.1f} points to close")
    elif base is not None:
        reasons.append(f"prompting scores {_pct(base)} ({facts['baseline_source']}); without --target-accuracy "
                       "whether that is enough is not judged")
    else:
        reasons.append("no baseline score, so custom behaviour is assumed to be needed (score the base model "
                       "with `tuneforge eval` to see whether prompting already does it)")

    # 2. knowledge, or information that changes: retrieval
    if cfg.knowledge_task:
        reasons.append("the task is about knowledge: fine-tuning does not add facts reliably, retrieval does")
    if cfg.changes_often:
        reasons.append("the information changes often: a fine-tune is stale after each change, retrieval is not")
    if cfg.knowledge_task or cfg.changes_often:
        if (facts["examples"] or 0) >= FINE_TUNE_FROM:
            reasons.append(f"with {facts['examples']} examples, a fine-tune on top can still teach the answer's "
                           "format or tone if retrieval alone misses the target")
        return "rag", reasons

    # 3. how many examples
    n, source = facts["examples"], facts["examples_source"]
    if n is None:
        reasons.append("the number of examples is unknown, and it decides between few-shot and fine-tuning")
        decision = "unknown"
    elif n < FEW_SHOT_BELOW:
        reasons.append(f"{n} examples ({source}): fewer than {FEW_SHOT_BELOW} is too few to fine-tune without "
                       "overfitting; they work as few-shot examples")
        decision = "few-shot"
    elif n < FINE_TUNE_FROM:
        reasons.append(f"{n} examples ({source}): between {FEW_SHOT_BELOW} and {FINE_TUNE_FROM}, fine-tuning can "
                       "work with care (small rank, few epochs, a held-out comparison with few-shot)")
        decision = "fine-tune-with-care"
    else:
        reasons.append(f"{n} examples ({source}): {FINE_TUNE_FROM} or more, enough to fine-tune")
        decision = "fine-tune"

    # 4. economics
    for p in pays:
        tail = "fine-tuning pays off" if decision.startswith("fine-tune") else \
            f"fine-tuning would pay off once you have {FEW_SHOT_BELOW}+ examples"
        reasons.append(f"{p}: {tail}")

    # 5. what eval measured
    reasons += eval_reasons(facts, target)
    return decision, reasons


def eval_reasons(facts: dict[str, Any], target: float | None) -> list[str]:
    scored = facts.get("eval", {})
    base = facts["baseline"]
    found = []
    if "tuned" in scored and "baseline" in scored:
        gain = scored["tuned"] - scored["baseline"]
        head = (f"your fine-tune {scored['tuned_variant']} scores {_pct(scored['tuned'])} {scored['metric']}, "
                f"{100 * gain:+.1f} points over {scored['baseline_variant']}")
        if gain >= MIN_GAIN:
            found.append(f"{head}: the measured gain justifies fine-tuning")
        else:
            found.append(f"{head}: less than {100 * MIN_GAIN:.0f} points, so it does not yet justify fine-tuning; "
                         "look at the data's quality before training more")
        if target is not None:
            found.append(f"the fine-tune {'reaches' if scored['tuned'] >= target else 'misses'} the target of "
                         f"{_pct(target)}")
    elif base is not None and target is not None and base < target:
        gap = target - base
        if gap >= MIN_GAIN:
            found.append(f"a gap of {100 * gap:.1f} points is the kind fine-tuning closes: it is worth a try")
        else:
            found.append(f"the gap is small ({100 * gap:.1f} points, under {100 * MIN_GAIN:.0f}): better prompts or "
                         "more shots may close it first")
    return found


def decide(cfg: DecideConfig) -> dict[str, Any]:
    facts = gather(cfg)
    decision, reasons = walk(cfg, facts)
    result = {"recommendation": decision, "title": TITLES[decision], "reasons": reasons,
              "warnings": facts["warnings"], "notes": facts["notes"], "next": NEXT_STEPS[decision],
              "examples": facts["examples"], "examples_source": facts["examples_source"],
              "baseline": facts["baseline"], "baseline_source": facts["baseline_source"] if facts["baseline"]
              is not None else None, "target": cfg.target_accuracy}
    for key in ("data", "eval"):
        if key in facts:
            result[key] = facts[key]
    return result


def advise_decide(values: dict[str, Any]) -> dict[str, Any]:
    return decide(build(DecideConfig, values, lambda raw: []))


def text(r: dict[str, Any]) -> str:
    lines = [f"recommendation: {r['title']} [{r['recommendation']}]", "because:"]
    lines += [f"  - {reason}" for reason in r["reasons"]]
    if r["warnings"]:
        lines.append("warnings:")
        lines += [f"  - {w}" for w in r["warnings"]]
    lines += [f"note: {n}" for n in r["notes"]]
    lines.append(f"next: {r['next']}")
    return "\n".join(lines)
