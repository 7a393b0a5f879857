"""The prepare report: `report.json` for programs, `report.md` for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def token_stats(lengths: np.ndarray) -> dict[str, int]:
    if len(lengths) == 0:
        return {"min": 0, "p50": 0, "p95": 0, "max": 0}
    p50, p95 = np.percentile(lengths, [50, 95])
    return {"min": int(lengths.min()), "p50": int(p50), "p95": int(p95), "max": int(lengths.max())}


def histogram(lengths: np.ndarray, bins: int = 12, width: int = 40) -> list[str]:
    if len(lengths) == 0:
        return ["(no records)"]
    lo, hi = int(lengths.min()), int(lengths.max())
    counts, edges = np.histogram(lengths, bins=bins if hi > lo else 1, range=(lo, max(hi, lo + 1)))
    top = max(int(counts.max()), 1)
    rows = []
    for count, left, right in zip(counts, edges[:-1], edges[1:]):
        bar = "#" * int(round(width * count / top))
        rows.append(f"{int(left):>7}-{int(right):<7} {bar} {count}")
    return rows


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def render_markdown(report: dict[str, Any], lengths: np.ndarray) -> str:
    lines = ["# Dataset report", ""]
    status = report.get("status", "ok")
    lines += [
        f"- status: **{status}**",
        f"- records in: {report['records_in']}, out: {report['records_out']}",
        f"- task: {report['task']}",
        f"- splits: " + ", ".join(f"{k} {v}" for k, v in report["splits"].items()),
        f"- duplicates removed: {report['duplicates']['exact']} exact; "
        f"near duplicates found: {report['duplicates']['near']} (kept in one split"
        + (", dropped" if report["settings"]["drop_near_dups"] else "") + ")",
        f"- contradictions: {len(report['contradictions'])} groups "
        f"({report['contradiction_records']} records, policy: {report['settings']['on_contradiction']})",
        f"- length outliers: {report['outliers']['count']}"
        + (" (dropped)" if report["settings"]["drop_outliers"] else " (flagged, use --drop-outliers to remove)"),
        f"- PII redacted: " + (", ".join(f"{k} {v}" for k, v in report["pii"].items()) or "none"),
    ]
    mem = report.get("memorisation", {})
    if mem.get("checked"):
        lines.append(f"- memorisation: {mem['reproduced']} of {mem['checked']} sampled records "
                     "reproduced by the base model from their first 16 tokens")
    for warning in report.get("warnings", []):
        lines.append(f"- warning: {warning}")
    lines += ["", "## Token lengths", "", "min {min}, p50 {p50}, p95 {p95}, max {max}".format(**report["token_lengths"]),
              "", "```", *histogram(lengths), "```", ""]
    if report.get("labels"):
        total = sum(report["labels"].values())
        top = max(report["labels"].values())
        lines += ["## Labels", "", "| label | n | share | |", "|---|---:|---:|---|"]
        for label, n in sorted(report["labels"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {label} | {n} | {n / total:.1%} | {'#' * int(round(30 * n / top))} |")
        lines.append("")
    if report["error_counts"]:
        lines += ["## Problems", "", "| code | n |", "|---|---:|"]
        lines += [f"| {code} | {n} |" for code, n in sorted(report["error_counts"].items())]
        lines += ["", "First problems:", ""]
        lines += [f"- `{e['file']}:{e['line']}` {e['code']}: {e['message']}" for e in report["errors"][:30]]
        lines.append("")
    return "\n".join(lines)
