"""`tuneforge monitor`'s tables (the CLI prints these; --json prints the report itself)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _num(value, fmt: str = "{:.3g}") -> str:
    return "-" if value is None else fmt.format(value)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def print_report(report: dict[str, Any], out: Console) -> None:
    hours = report["window_s"] / 3600
    table = Table(title=f"route {report['route']}: {_when(report['since'])} .. {_when(report['until'])} "
                        f"({hours:.1f} h)")
    for col in ("variant", "share %", "requests", "input drift", "invalid", "feedback", "mean score [95% CI]"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, v in report["variants"].items():
        inp, outp, fb = v.get("input") or {}, v.get("output") or {}, v["feedback"]
        drift = ("DRIFT" if inp["drifted"] else "no") if "drifted" in inp else \
            ("too few" if inp.get("status", "").startswith("not enough") else "no reference" if inp else "no run")
        ci = f"{_num(fb.get('mean_score'), '{:.2f}')} [{_num(fb.get('score_ci_low'), '{:.2f}')}, " \
             f"{_num(fb.get('score_ci_high'), '{:.2f}')}]" if fb["feedback"] else "-"
        table.add_row(name, _num(v["share"], "{:g}"), str(v["requests"]), escape(drift),
                      _num(outp.get("invalid_rate"), "{:.1%}"), str(fb["feedback"]), ci)
    out.print(table)
    out.print("(p-values, label drift and trends: the checks below and --json)", markup=False)
    for name, v in report["variants"].items():
        unlike = (v.get("input") or {}).get("most_unlike") or []
        if unlike and v["input"]["drifted"]:
            out.print(f"{name}: the logged prompts that differ most from its training data (similarity to the "
                      "nearest training prompt):", markup=False)
            for item in unlike:
                out.print(f"  {item['similarity']:.3f}  {item['prompt'][:120]!r}", markup=False)
    if report["comparisons"]:
        ab = Table(title="feedback vs control (serve.abtest, Welch t-test)")
        for col in ("control", "variant", "diff", "p", "verdict"):
            ab.add_column(col)
        for c in report["comparisons"]:
            ab.add_row(c["control"], c["variant"], _num(c.get("diff"), "{:+.3f}"), _num(c.get("p"), "{:.4f}"),
                       c["verdict"])
        out.print(ab)
    if report["checks"]:
        checks = Table(title="checks (thresholds: the serve config's monitor: section)")
        for col in ("variant", "check", "result", "why"):
            checks.add_column(col)
        for c in report["checks"]:
            checks.add_row(c["variant"], c["check"], "ok" if c["ok"] else "FAIL", escape(c["why"]))
        out.print(checks)
    if report["promotions"]:
        history = Table(title="promotions")
        for col in ("when", "candidate", "action", "share %", "who", "why"):
            history.add_column(col)
        for p in report["promotions"]:
            history.add_row(_when(p["time"]), p["candidate"], p["action"], _num(p["percent"], "{:g}"), p["who"],
                            escape(p["why"]))
        out.print(history)
