"""Reading an A/B test from the request log: `tuneforge logs stats --db serve.db`.

Per route and variant: requests, errors, latency p50/p95, tokens, and the feedback scores'
count and mean. Within a route, every variant is compared with the control (`control`, else
the variant with the most requests: the incumbent of a gradual rollout) by Welch's t-test on feedback scores (unequal variances and sizes, the usual case
when 10% of traffic goes to a new adapter); the p-value comes from Student's t distribution,
computed here through the regularised incomplete beta function, so no scipy is needed.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from tuneforge.serve.log import _latest_feedback, connect

ALPHA = 0.05


def _nz(value: float) -> float:
    return value if abs(value) > 1e-300 else 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 / _nz(1.0 - qab * x / qap)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))  # even step
        d, c = 1.0 / _nz(1.0 + aa * d), _nz(1.0 + aa / c)
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))  # odd step
        d, c = 1.0 / _nz(1.0 + aa * d), _nz(1.0 + aa / c)
        h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    if df > 1e7:  # the normal limit, where the beta form loses precision
        return math.erfc(abs(t) / math.sqrt(2.0))
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def welch(a: list[float], b: list[float]) -> dict[str, float] | None:
    """Welch's t-test of mean(b) - mean(a); None when either side has fewer than 2 scores."""
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = mb - ma
    if va + vb == 0:  # identical constant scores on both sides, or a sure difference
        return {"diff": diff, "t": 0.0 if diff == 0 else math.copysign(math.inf, diff), "df": len(a) + len(b) - 2,
                "p": 1.0 if diff == 0 else 0.0}
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return {"diff": diff, "t": t, "df": df, "p": t_two_sided_p(t, df)}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def stats(db, control: str | None = None, since: float | None = None, route: str | None = None) -> dict[str, Any]:
    """{"variants": [...per (route, variant)...], "comparisons": [...per route, variant vs control...]};
    `since` (unix seconds) and `route` keep only the requests that arrived from then, for that route."""
    conn = connect(db, readonly=True)
    feedback = _latest_feedback(conn)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    order: dict[str, list[str]] = {}
    where, args = ["time >= ?"], [since if since is not None else float("-inf")]
    if route is not None:
        where.append("route = ?")
        args.append(route)
    for row in conn.execute("SELECT id, route, variant, model, status, latency_ms, completion_tokens "
                            f"FROM interactions WHERE {' AND '.join(where)} ORDER BY time", args):
        route = row["route"] or "-"
        variant = row["variant"] or row["model"] or "-"
        group = groups.setdefault((route, variant), {"latency": [], "requests": 0, "errors": 0, "tokens": 0,
                                                     "scores": []})
        if variant not in order.setdefault(route, []):
            order[route].append(variant)
        group["requests"] += 1
        if row["status"] != 200:
            group["errors"] += 1
            continue
        group["latency"].append(row["latency_ms"] or 0.0)
        group["tokens"] += row["completion_tokens"] or 0
        fb = feedback.get(row["id"])
        if fb and fb["score"] is not None:
            group["scores"].append(fb["score"])
    conn.close()
    variants = []
    for (route, variant), g in groups.items():
        latency = sorted(g["latency"])
        variants.append({"route": route, "variant": variant, "requests": g["requests"], "errors": g["errors"],
                         "p50_ms": percentile(latency, 50), "p95_ms": percentile(latency, 95),
                         "completion_tokens": g["tokens"], "feedback": len(g["scores"]),
                         "mean_score": statistics.fmean(g["scores"]) if g["scores"] else None})
    comparisons = []
    for route, names in order.items():
        if route == "-" or len(names) < 2:
            continue
        base = control if control in names else max(sorted(names), key=lambda n: groups[(route, n)]["requests"])
        for other in [n for n in names if n != base]:
            result = welch(groups[(route, base)]["scores"], groups[(route, other)]["scores"])
            entry = {"route": route, "control": base, "variant": other}
            if result is None:
                entry.update(verdict="not enough feedback (2+ scores on each side)")
            else:
                entry.update(result, verdict="significant" if result["p"] < ALPHA else "not significant")
            comparisons.append(entry)
    return {"variants": variants, "comparisons": comparisons, "alpha": ALPHA}
