"""The tests the monitor runs, in plain Python and numpy (no scipy): two-sample
Kolmogorov-Smirnov, chi-square of homogeneity, a permutation test on hashed n-gram
profiles, and a Student-t confidence interval. Student's t tail comes from serve/abtest.py,
which already computes it for the A/B test.
"""

from __future__ import annotations

import math
import statistics
import zlib

import numpy as np

from tuneforge.serve.abtest import t_two_sided_p


def ks_2samp(a: list[float], b: list[float]) -> dict[str, float]:
    """Two-sample KS: D = the largest gap between the two empirical CDFs, p from the
    asymptotic Kolmogorov distribution with the effective size n*m/(n+m) and Stephens'
    small-sample correction (Numerical Recipes 14.3)."""
    x, y = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([x, y])
    d = float(np.max(np.abs(np.searchsorted(x, grid, "right") / len(x) - np.searchsorted(y, grid, "right") / len(y))))
    ne = len(x) * len(y) / (len(x) + len(y))
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    return {"statistic": d, "p": kolmogorov_q(lam)}


def kolmogorov_q(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution: 2 sum_k (-1)^(k-1) exp(-2 k^2 lam^2)."""
    if lam < 1e-3:
        return 1.0
    total, sign = 0.0, 1.0
    for k in range(1, 101):
        term = sign * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
        sign = -sign
    return min(1.0, max(0.0, 2.0 * total))


def _gamma_q(a: float, x: float) -> float:
    """Q(a, x), the regularised upper incomplete gamma function (series or continued fraction)."""
    if x <= 0:
        return 1.0
    front = math.exp(-x + a * math.log(x) - math.lgamma(a))
    if x < a + 1.0:  # series for P, then 1 - P
        term = total = 1.0 / a
        n = a
        for _ in range(1000):
            n += 1.0
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - front * total)
    b, c, d = x + 1.0 - a, 1e300, 1.0 / (x + 1.0 - a)  # Lentz's continued fraction for Q
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = b + an / c
        c = c if abs(c) > 1e-300 else 1e-300
        h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return min(1.0, front * h)


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with `df` degrees of freedom."""
    return _gamma_q(df / 2.0, x / 2.0)


def chi2_homogeneity(a: dict[str, int], b: dict[str, int]) -> dict[str, float] | None:
    """Do two count tables (category -> count) come from one distribution? Pearson's chi-square
    on the 2 x K table; categories empty on both sides are left out. None with fewer than 2."""
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, 0) + b.get(k, 0) > 0]
    na, nb = sum(a.get(k, 0) for k in keys), sum(b.get(k, 0) for k in keys)
    if len(keys) < 2 or na == 0 or nb == 0:
        return None
    stat = 0.0
    for k in keys:
        col = a.get(k, 0) + b.get(k, 0)
        for side, n in ((a, na), (b, nb)):
            expected = col * n / (na + nb)
            stat += (side.get(k, 0) - expected) ** 2 / expected
    df = len(keys) - 1
    return {"statistic": stat, "df": df, "p": chi2_sf(stat, df)}


def hashed_profile(texts: list[str], buckets: int = 1024, char_n: int = 3) -> np.ndarray:
    """One row per text: its character n-grams and lowercased words hashed (crc32, stable across
    runs, unlike hash()) into `buckets` counts, scaled to unit length."""
    rows = np.zeros((len(texts), buckets), dtype=np.float32)
    for i, text in enumerate(texts):
        folded = " ".join(text.lower().split())
        grams = [folded[j:j + char_n] for j in range(max(1, len(folded) - char_n + 1))]
        grams += ["w:" + w for w in folded.split()]
        for gram in grams:
            rows[i, zlib.crc32(gram.encode("utf-8")) % buckets] += 1.0
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def permutation_test(reference: np.ndarray, current: np.ndarray, permutations: int = 1000,
                     seed: int = 0) -> dict[str, float]:
    """Is `current` drawn like `reference`? The statistic is the squared distance between the two
    groups' mean profiles (an MMD with a linear kernel); its null distribution comes from
    reshuffling which rows are "current". Rows, not n-grams, are the units, so the many n-grams
    of one prompt do not count as independent evidence. p = (1 + #{perm >= observed}) / (1 + perms)."""
    pooled = np.concatenate([reference, current]).astype(np.float64)
    n, m = len(pooled), len(current)
    total = pooled.sum(axis=0)

    def stat(current_sum: np.ndarray) -> np.ndarray:
        diff = current_sum / m - (total - current_sum) / (n - m)
        return np.sum(diff * diff, axis=-1)

    observed = float(stat(current.sum(axis=0)))
    rng = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, permutations, 200):  # in blocks, so memory stays small on big training sets
        k = min(200, permutations - start)
        picks = np.argsort(rng.random((k, n)), axis=1)[:, :m]
        mask = np.zeros((k, n))
        np.put_along_axis(mask, picks, 1.0, axis=1)
        exceed += int(np.sum(stat(mask @ pooled) >= observed - 1e-12))
    return {"statistic": observed, "p": (1 + exceed) / (1 + permutations), "permutations": permutations}


def t_quantile(p_two_sided: float, df: float) -> float:
    """The t with P(|T| >= t) = p_two_sided, by bisection on serve.abtest's t tail."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > p_two_sided:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if t_two_sided_p(mid, df) > p_two_sided:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, float] | None:
    """Mean with a Student-t confidence interval; None for fewer than 2 values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = t_quantile(1.0 - level, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}


def slope(times: list[float], values: list[float]) -> dict[str, float] | None:
    """Least-squares slope of values over times with its two-sided p (t with n-2 df)."""
    n = len(values)
    if n < 3:
        return None
    t, v = np.asarray(times, float), np.asarray(values, float)
    tc = t - t.mean()
    sxx = float(np.sum(tc * tc))
    if sxx == 0:
        return None
    b = float(np.sum(tc * (v - v.mean())) / sxx)
    residual = v - v.mean() - b * tc
    se2 = float(np.sum(residual * residual)) / (n - 2) / sxx
    if se2 == 0:
        return {"slope": b, "p": 0.0 if b else 1.0}
    return {"slope": b, "p": t_two_sided_p(b / math.sqrt(se2), n - 2)}
