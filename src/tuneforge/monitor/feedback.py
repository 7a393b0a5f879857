"""Feedback per variant of a route: the mean score with a 95% Student-t interval, its trend
(the window cut into equal time bins, each with its own interval, and a least-squares slope per
day with its p-value), and the A/B comparison between variants, which is serve/abtest.py's
Welch test (`tuneforge logs stats`) restricted to the route and window.
"""

from __future__ import annotations

from typing import Any

from tuneforge.monitor import stats
from tuneforge.serve import abtest

BINS = 4
DAY = 86400.0


def trend(scored: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """`scored` holds (interaction time, score) pairs of one variant."""
    scores = [s for _, s in scored]
    result: dict[str, Any] = {"feedback": len(scores)}
    ci = stats.mean_ci(scores)
    if scores:
        result["mean_score"] = sum(scores) / len(scores)
    if ci:
        result.update(score_ci_low=ci["low"], score_ci_high=ci["high"])
    width = max(end - start, 1e-9) / BINS
    bins = []
    for i in range(BINS):
        inside = [s for t, s in scored if start + i * width <= t < start + (i + 1) * width or
                  (i == BINS - 1 and t >= end)]
        ci_bin = stats.mean_ci(inside)
        bins.append({"from": start + i * width, "to": start + (i + 1) * width, "n": len(inside),
                     "mean": sum(inside) / len(inside) if inside else None,
                     "low": ci_bin["low"] if ci_bin else None, "high": ci_bin["high"] if ci_bin else None})
    result["bins"] = bins
    fit = stats.slope([t / DAY for t, _ in scored], scores)
    if fit:
        result.update(score_slope_per_day=fit["slope"], score_slope_p=fit["p"])
    return result


def ab(db, route: str, since: float, control: str | None = None) -> list[dict[str, Any]]:
    """serve.abtest's comparisons (each variant vs `control`, else the busiest) for this route and window."""
    return abtest.stats(db, control, since=since, route=route)["comparisons"]
