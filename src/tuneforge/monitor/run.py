"""The monitor: one route's health over a window of the server's request log.

    tuneforge monitor --route support --config serve.yaml [--since 7d] [--json] \\
        [--fail-if "tickets.input_ngram_p < 0.01 or support.failed_checks > 0"]

Reads top to bottom: which variants the route has and which run folder each adapter came
from; the logged requests in the window; per variant, input drift and output drift
(monitor/drift.py) and feedback (monitor/feedback.py); the A/B comparison (serve/abtest.py);
the checks against the thresholds in the serve config's `monitor:` section; the promotion
history. Every number is also written to the log DB's `monitor_signals` table, which the
server's /metrics exposes as `tuneforge_monitor_signal{route,variant,signal}` gauges (and
`tuneforge_monitor_failed_checks`), so a Prometheus alert fires on what this computed: run it
from cron at the rate you want alerts to follow.

The names usable in --fail-if are `VARIANT.SIGNAL` (a served model of the route) and
`ROUTE.SIGNAL` (route-wide), listed in VARIANT_SIGNALS and ROUTE_SIGNALS.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.monitor import drift, feedback, store
from tuneforge.monitor.config import MonitorConfig, parse_duration
from tuneforge.serve.log import _latest_feedback, connect

VARIANT_SIGNALS = ("requests", "errors", "input_length_p", "input_ngram_p", "input_similarity", "input_drift",
                   "invalid_rate", "label_p", "feedback", "mean_score", "score_ci_low", "score_ci_high",
                   "score_slope_per_day", "ab_diff", "ab_p", "share", "failed_checks")
ROUTE_SIGNALS = ("requests", "feedback", "failed_checks", "promotion_percent")


@dataclass
class Request:
    """What `tuneforge monitor` was asked: the serve config gives the route, adapters and thresholds."""

    route: str
    db: Path
    config: MonitorConfig = field(default_factory=MonitorConfig)
    routes: dict[str, dict[str, float]] = field(default_factory=dict)  # the serve config's routes
    adapters: dict[str, Path] = field(default_factory=dict)  # served name -> run folder
    since: str | None = None
    start: float | None = None  # unix seconds: the window's start, instead of `since` (a promotion step's start)
    control: str | None = None  # the A/B control (default: the busiest variant)
    now: float | None = None
    write: bool = True  # push the signals into the log DB for /metrics


def since_seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise TuneforgeError(Problem("invalid_duration", str(exc), "--since")) from None


def monitor(req: Request) -> dict[str, Any]:
    cfg = req.config
    now = req.now if req.now is not None else time.time()
    start = req.start if req.start is not None else now - since_seconds(req.since or cfg.since)
    window = now - start
    history = store.promotions(req.db, req.route)
    runs = dict(req.adapters)
    for entry in history:  # a retrained candidate is served under a name the serve config may not have
        if entry["run"]:
            runs.setdefault(entry["candidate"], Path(entry["run"]))
    rows = _interactions(req.db, req.route, start)
    variants = _variants(req, rows, history)
    if not variants:
        raise TuneforgeError(Problem("route_not_found", f"no route named {req.route!r} in the serve config, the "
                                     "request log or the promotions; routes in the config: "
                                     f"{', '.join(sorted(req.routes)) or '(none)'}", "--route"))
    shares = _shares(req, history)
    comparisons = feedback.ab(req.db, req.route, start, req.control)
    report: dict[str, Any] = {"route": req.route, "since": start, "until": now, "window_s": window,
                              "db": str(req.db), "variants": {}, "comparisons": comparisons}
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        entry: dict[str, Any] = {"requests": len(mine), "errors": sum(r["status"] != 200 for r in mine),
                                 "share": shares.get(name), "run": str(runs[name]) if name in runs else None}
        ref = _reference(runs[name]) if name in runs else None
        if isinstance(ref, str):
            entry["input"] = {"status": ref}
        elif ref is not None:
            prompts = [p for p in (drift.logged_prompt(r["endpoint"], r["prompt"]) for r in mine) if p is not None]
            answers = [r["completion"] for r in mine if r["status"] == 200 and r["completion"] is not None]
            entry["input"] = drift.input_drift(ref, prompts, cfg)
            entry["output"] = drift.output_drift(ref, answers, cfg)
        entry["feedback"] = feedback.trend([(r["time"], r["score"]) for r in mine if r["score"] is not None],
                                           start, now)
        report["variants"][name] = entry
    report["checks"] = checks(report, cfg)
    report["signals"] = signals(report)
    report["promotions"] = history[-20:]
    if req.write:
        store.write_signals(req.db, req.route, report["signals"])
    return report


def _reference(run: Path) -> drift.Reference | str:
    """The adapter's training reference, or why there is none (the other signals still count)."""
    try:
        return drift.reference(run)
    except TuneforgeError as exc:
        return "; ".join(p.line() for p in exc.problems)


def _interactions(db: Path, route: str, start: float) -> list[dict[str, Any]]:
    conn = connect(db, readonly=True)
    scores = {k: v["score"] for k, v in _latest_feedback(conn).items()}
    rows = [dict(r) | {"score": scores.get(r["id"])} for r in conn.execute(
        "SELECT id, time, endpoint, variant, prompt, completion, status FROM interactions "
        "WHERE route = ? AND time >= ? ORDER BY time", (route, start))]
    conn.close()
    return rows


def _variants(req: Request, rows: list[dict], history: list[dict]) -> list[str]:
    names = list(req.routes.get(req.route, {}))
    if history and history[-1]["variants"]:
        names += list(history[-1]["variants"])
    names += [r["variant"] for r in rows if r["variant"]]
    return list(dict.fromkeys(names))


def _shares(req: Request, history: list[dict]) -> dict[str, float]:
    """The route's percentages as last set: by a promotion step, else the serve config."""
    if history and history[-1]["variants"]:
        return history[-1]["variants"]
    return req.routes.get(req.route, {})


def checks(report: dict[str, Any], cfg: MonitorConfig) -> list[dict[str, Any]]:
    """Each threshold of the `monitor:` config applied where there is data: {variant, check, ok, why}."""
    found = []

    def add(variant: str, check: str, ok: bool, why: str) -> None:
        found.append({"variant": variant, "check": check, "ok": ok, "why": why})

    for name, v in report["variants"].items():
        inp, outp, fb = v.get("input") or {}, v.get("output") or {}, v["feedback"]
        if inp.get("status") == "tested":
            add(name, "input_drift", not inp["drifted"],
                f"length p={inp['length_p']:.3g}, n-gram p={inp['ngram_p']:.3g} (flagged below {cfg.drift_p / 2:g})")
        if "invalid_rate" in outp and outp["answers"] >= cfg.min_requests:
            add(name, "invalid_rate", outp["invalid_rate"] <= cfg.max_invalid_rate,
                f"{outp['invalid']}/{outp['answers']} invalid = {outp['invalid_rate']:.1%} "
                f"(limit {cfg.max_invalid_rate:.1%})")
        if "label_p" in outp:
            add(name, "label_drift", not outp["label_drifted"],
                f"chi-square p={outp['label_p']:.3g} vs {outp['reference']} (flagged below {cfg.label_drift_p:g})")
        if cfg.min_mean_score is not None and fb["feedback"] >= 2:
            add(name, "mean_score", fb["mean_score"] >= cfg.min_mean_score,
                f"mean {fb['mean_score']:.3f} over {fb['feedback']} scores (minimum {cfg.min_mean_score:g})")
    for c in report["comparisons"]:
        if "p" in c:
            worse = c["diff"] < 0 and c["p"] < cfg.ab_alpha
            add(c["variant"], "ab_vs_control", not worse,
                f"{c['diff']:+.3f} vs {c['control']}, Welch p={c['p']:.3g} (fails when worse at p < {cfg.ab_alpha:g})")
    return found


def signals(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{variant or route: {signal: number}}: what --fail-if reads and /metrics shows."""
    out: dict[str, dict[str, float]] = {}
    ab = {c["variant"]: c for c in report["comparisons"] if "p" in c}
    for name, v in report["variants"].items():
        inp, outp, fb = v.get("input") or {}, v.get("output") or {}, v["feedback"]
        values = {"requests": v["requests"], "errors": v["errors"], "share": v["share"],
                  "input_length_p": inp.get("length_p"), "input_ngram_p": inp.get("ngram_p"),
                  "input_similarity": inp.get("mean_similarity"),
                  "input_drift": float(inp["drifted"]) if "drifted" in inp else None,
                  "invalid_rate": outp.get("invalid_rate"), "label_p": outp.get("label_p"),
                  "feedback": fb["feedback"], "mean_score": fb.get("mean_score"),
                  "score_ci_low": fb.get("score_ci_low"), "score_ci_high": fb.get("score_ci_high"),
                  "score_slope_per_day": fb.get("score_slope_per_day"),
                  "ab_diff": ab[name]["diff"] if name in ab else None, "ab_p": ab[name]["p"] if name in ab else None,
                  "failed_checks": sum(not c["ok"] for c in report["checks"] if c["variant"] == name)}
        out[name] = {k: float(x) for k, x in values.items() if x is not None and math.isfinite(float(x))}
    last = report.get("promotions") or []
    route = {"requests": sum(v["requests"] for v in report["variants"].values()),
             "feedback": sum(v["feedback"]["feedback"] for v in report["variants"].values()),
             "failed_checks": sum(not c["ok"] for c in report["checks"])}
    if last and last[-1]["percent"] is not None:
        route["promotion_percent"] = last[-1]["percent"]
    out[report["route"]] = {k: float(x) for k, x in route.items()}
    return out


def fail_if(expr: str, report: dict[str, Any]) -> bool:
    """eval's --fail-if over the monitor's signals: names are checked against every signal the
    monitor can produce; one that has no value in this window (too little data) is an error."""
    from tuneforge.evaluate.fail_if import check, references, validate

    groups = {name: VARIANT_SIGNALS for name in report["variants"]} | {report["route"]: ROUTE_SIGNALS}
    validate(expr, groups)
    missing = [f"{g}.{s}" for g, s in references(expr) if s not in report["signals"].get(g, {})]
    if missing:
        raise TuneforgeError(Problem("no_data", f"{', '.join(missing)} has no value in this window (too few "
                                     "requests or scores); widen --since or wait for traffic", "--fail-if"))
    return check(expr, report["signals"])


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)
