"""Retrain on what the server logged, and keep the result only if it is better.

    tuneforge retrain --route support --out runs/support-v2 --config serve.yaml [--min-new 20] [--margin 0.02]

Reads top to bottom, each step through the stage that owns it:
1. the incumbent: the route's adapter variant with the largest share, and its run folder;
2. fresh examples: the route's logged chats with a correction or a good score
   (serve/log.py `export`); fewer than --min-new stops here (`not_enough_new`, exit 3);
3. the dataset (prepare stage, into RUN/data): the incumbent's original train split plus 70% of the
   fresh examples; its val split; a test split made of its original test split plus the other 30%
   of the fresh examples; with validation, dedup (no near duplicate leaks across splits) and PII
   redaction;
4. the candidate (train stage, into RUN): the incumbent's own config (config.yaml) on the new data;
   `--set` overrides keys (e.g. max_steps);
5. the gate (eval stage, into RUN/eval): incumbent (`current`) and candidate on that test split;
   the candidate must beat the incumbent on the task's main metric by --margin, else the run
   stops (`candidate_not_better`, exit 1) saying by how much. Scores on the fresh examples alone are
   reported too. RUN/retrain.json holds the figures, and the log DB's `promotions` table a
   `gate_passed` or `refused` row (who, when, why).
Promotion (monitor/promote.py) starts from the `gate_passed` row.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneforge import outdir
from tuneforge.errors import Problem, TuneforgeError
from tuneforge.monitor import store
from tuneforge.monitor.config import MonitorConfig

FRESH_TEST_SHARE = 0.3
EXIT_REFUSED, EXIT_NOTHING_NEW = 1, 3


@dataclass
class RetrainRequest:
    route: str
    out: Path
    db: Path
    config: MonitorConfig = field(default_factory=MonitorConfig)
    routes: dict[str, dict[str, float]] = field(default_factory=dict)
    adapters: dict[str, Path] = field(default_factory=dict)
    min_new: int | None = None
    margin: float | None = None
    name: str | None = None  # the candidate's served name
    overrides: list[str] = field(default_factory=list)  # --set for the train stage
    seed: int = 0


def candidate_name(route: str, out: Path) -> str:
    """A served name that --fail-if can also write (letters, digits, _ and -)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", f"{route}-{Path(out).name}").strip("-")[:64]


def incumbent(route: str, variants: dict[str, float], adapters: dict[str, Path]) -> tuple[str, Path]:
    """The route's adapter variant with the largest share, and its run folder."""
    known = [(share, name) for name, share in variants.items() if name in adapters]
    if not known:
        raise TuneforgeError(Problem("no_adapter", f"route {route!r} has no variant with a known run folder "
                                     f"(variants: {', '.join(variants) or 'none'}); list the adapter under the serve "
                                     "config's adapters", "--route"))
    name = max(known)[1]
    return name, Path(adapters[name])


def route_variants(db: Path, route: str, routes: dict[str, dict[str, float]]) -> dict[str, float]:
    """The route's percentages as last set by a promotion, else as in the serve config, else each
    variant's share of the route's logged requests."""
    from tuneforge.serve.log import connect

    history = store.promotions(db, route) if Path(db).is_file() else []
    for entry in reversed(history):
        if entry["variants"]:
            return entry["variants"]
    if route in routes:
        return routes[route]
    if not Path(db).is_file():
        return {}
    conn = connect(db, readonly=True)
    counts = dict(conn.execute("SELECT variant, COUNT(*) FROM interactions WHERE route = ? AND variant IS NOT NULL "
                               "GROUP BY variant", (route,)).fetchall())
    conn.close()
    total = sum(counts.values()) or 1
    return {name: 100.0 * n / total for name, n in counts.items()}


def promoted_runs(db: Path, route: str) -> dict[str, Path]:
    """Run folders of the route's earlier candidates, by served name."""
    history = store.promotions(db, route) if Path(db).is_file() else []
    return {e["candidate"]: Path(e["run"]) for e in history if e["run"]}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.is_file() else []


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _user(rec: dict) -> str:
    from tuneforge.monitor.drift import last_user

    return last_user(rec.get("messages") or [])


def build_dataset(req: RetrainRequest, current_run: Path, fresh: list[dict]) -> tuple[Path, set[str]]:
    """RUN/data through the prepare stage; returns it and the fresh test prompts."""
    from tuneforge.data.config import PrepareConfig
    from tuneforge.data.pii import redact
    from tuneforge.data.prepare import prepare
    from tuneforge.monitor.drift import _run_sources

    summary, data = _run_sources(current_run)
    rng = random.Random(req.seed)
    rows = list(fresh)
    rng.shuffle(rows)
    n_test = max(1, round(len(rows) * FRESH_TEST_SHARE))
    work = req.out / "fresh"
    work.mkdir(parents=True, exist_ok=True)
    fresh_train = _write_jsonl(work / "train.jsonl", rows[n_test:])
    old_test = _jsonl(data / "test.jsonl")
    test_file = _write_jsonl(work / "test-all.jsonl", old_test + rows[:n_test])
    val = [data / "val.jsonl"] if (data / "val.jsonl").is_file() else []
    report_task = json.loads((data / "report.json").read_text()).get("task", "auto")
    cfg = PrepareConfig(inputs=[data / "train.jsonl", fresh_train], val=val, test=[test_file], out=req.out / "data",
                        model=summary.get("model") or PrepareConfig.model_fields["model"].default, redact_pii=True,
                        memorisation_check=False, on_error="drop", task=report_task, seed=req.seed)
    report = prepare(cfg)
    if report["splits"].get("test", 0) == 0:
        raise TuneforgeError(Problem("empty_test_split", "prepare left no test examples to compare on", str(cfg.out)))
    # the fresh test prompts as prepare wrote them (PII redacted, as every split was)
    fresh_prompts = {redact(_user(r))[0] for r in rows[:n_test]} & {_user(r) for r in _jsonl(cfg.out / "test.jsonl")}
    return cfg.out, fresh_prompts


def train_candidate(req: RetrainRequest, current_run: Path, data: Path) -> dict[str, Any]:
    """The train stage with the incumbent's config (its config.yaml) on the new data."""
    from tuneforge.config import build_config
    from tuneforge.train.config import TrainConfig
    from tuneforge.train.run import train

    source = current_run / "config.yaml"
    if not source.is_file():
        raise TuneforgeError(Problem("no_train_config", "the incumbent's run folder has no config.yaml to train the "
                                     "candidate with", str(source)))
    resolved = yaml.safe_load(source.read_text()) or {}
    values = {k: v for k, v in resolved.items() if k in TrainConfig.model_fields}
    # where it reads and writes; the settings resolved from the old data's size and length are resolved
    # again from the new data (sequence length, eval and checkpoint intervals)
    values.update(data=data, datasets=[], out=req.out, resume=False, max_seq_len="auto", eval_steps="auto",
                  save_steps="auto")
    cfg = build_config(TrainConfig, None, req.overrides, values)
    return train(cfg, progress=False)


def gate(req: RetrainRequest, current_run: Path, data: Path, fresh_prompts: set[str], margin: float
         ) -> dict[str, Any]:
    """Incumbent vs candidate on RUN/data's test split (eval stage); the verdict and figures."""
    from tuneforge.evaluate.config import EvalConfig
    from tuneforge.evaluate.run import evaluate

    cfg = EvalConfig(data=data, adapters={"current": current_run, "candidate": req.out}, baselines=[],
                     out=req.out / "eval", latency_samples=0, seed=req.seed)
    result = evaluate(cfg, progress=False)
    metric = result["main_metric"]
    current, candidate = result["variants"]["current"][metric], result["variants"]["candidate"][metric]
    predictions = _jsonl(req.out / "eval" / "predictions.jsonl")
    fresh = [p for p in predictions if p["input"] in fresh_prompts]
    diff = candidate - current
    verdict = {"metric": metric, "current_score": current, "candidate_score": candidate, "diff": diff, "margin": margin,
               "accepted": diff > 0 and diff >= margin, "test_examples": result["n"], "fresh_examples": len(fresh)}
    if fresh:
        for name in ("current", "candidate"):
            verdict[f"fresh_{name}"] = sum(p["scores"][name] for p in fresh) / len(fresh)
    return verdict


def retrain(req: RetrainRequest, say=lambda line: None) -> dict[str, Any]:
    from tuneforge.serve.log import export

    cfg = req.config
    min_new = req.min_new if req.min_new is not None else cfg.min_new
    margin = req.margin if req.margin is not None else cfg.margin
    problems = outdir.check_out(req.out)
    if (req.out / "summary.json").exists() or (req.out / "retrain.json").exists():
        problems.append(Problem("run_exists", "this folder already holds a run; choose a new --out", str(req.out)))
    if problems:
        raise TuneforgeError(problems)
    variants = route_variants(req.db, req.route, req.routes)
    current_name, current_run = incumbent(req.route, variants, {**promoted_runs(req.db, req.route), **req.adapters})
    name = req.name or candidate_name(req.route, req.out)
    req.out.mkdir(parents=True, exist_ok=True)
    counts = export(req.db, req.out / "fresh.jsonl", min_score=cfg.good_score, route=req.route)
    fresh = _jsonl(req.out / "fresh.jsonl")
    if len(fresh) < min_new:
        raise TuneforgeError(Problem("not_enough_new", f"route {req.route!r} has {len(fresh)} logged chats with a "
                                     f"correction or a score of at least {cfg.good_score} ({counts['corrected']} "
                                     f"corrected, {counts['scored']} scored); {min_new} are needed", "--min-new"),
                             exit_code=EXIT_NOTHING_NEW)
    say(f"retrain: {len(fresh)} fresh examples ({counts['corrected']} corrected, {counts['scored']} well scored); "
        f"incumbent {current_name} ({current_run})")
    data, fresh_prompts = build_dataset(req, current_run, fresh)
    say(f"retrain: dataset {data}; training the candidate")
    summary = train_candidate(req, current_run, data)
    say(f"retrain: trained {summary.get('steps')} steps; evaluating current vs candidate")
    verdict = gate(req, current_run, data, fresh_prompts, margin)
    result = {"route": req.route, "incumbent": current_name, "incumbent_run": str(current_run), "candidate": name,
              "run": str(req.out), "fresh": counts, **verdict}
    (req.out / "retrain.json").write_text(json.dumps(result, indent=2) + "\n")
    m = verdict["metric"]
    figures = f"{m} {verdict['candidate_score']:.4f} vs {verdict['current_score']:.4f} ({verdict['diff']:+.4f}; " \
              f"margin {margin:g})"
    if not verdict["accepted"]:
        short = margin - verdict["diff"]
        why = f"candidate not better by the margin: {figures}, " + (
            f"short by {short:.4f}" if short > 0 else "no better than the incumbent")
        store.record_promotion(req.db, req.route, name, "refused", why, run=str(req.out.resolve()))
        raise TuneforgeError(Problem("candidate_not_better", why + f"; see {req.out / 'eval' / 'report.html'}",
                                     str(req.out)), exit_code=EXIT_REFUSED)
    store.record_promotion(req.db, req.route, name, "gate_passed", f"candidate better: {figures}",
                           run=str(req.out.resolve()), percent=0.0, previous=variants)
    return result
