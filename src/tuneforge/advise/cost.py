"""`tuneforge advise cost`: an API against a fine-tuned model, month by month.

    tuneforge advise cost --requests-per-month 100000 --api-cost-per-request 0.05 \\
        --ft-cost-per-request 0.005 --upfront 22000
    tuneforge advise cost --requests-per-month 100000 --tokens-per-request 600 --api-price-per-mtok 5 \\
        --gpu-hourly 2.5 --throughput-from runs/eval --upfront 22000

The arithmetic (N requests a month, H the horizon in months, 12 by default):

    api_monthly      = N * api_cost_per_request
    ft_monthly       = N * ft_cost_per_request
    api_first_year   = 12 * api_monthly                 the API has no up-front cost
    ft_first_year    = upfront + 12 * ft_monthly        building the fine-tune is paid once
    first_year_savings = api_first_year - ft_first_year (negative: fine-tuning costs more)
    breakeven_months = upfront / (api_monthly - ft_monthly), None when ft_monthly >= api_monthly
    api_total, ft_total, total_savings: the same over H months

Per request, from tokens (one blended price for input and output tokens):

    api_cost_per_request = tokens_per_request * api_price_per_mtok / 1e6
    ft_cost_per_request  = tokens_per_request / throughput_tokens_per_s / 3600 * gpu_hourly

The second line charges only the seconds the GPU is busy with the request: it holds for a
machine kept full (batched traffic) or billed per second; an always-on GPU that idles costs
its hourly price whatever the traffic. The throughput is given, or read from an eval.json
(`tokens_per_s`, measured by `tuneforge eval` with batched generation on its machine).

One guide gets its worked example wrong twice: 10,000 requests a month at $0.05 is $500 a
month, not $5,000, and the $22,000 up-front cost belongs to the fine-tuned side only. Its
monthly figures ($5,000 vs $500, i.e. 100,000 requests) give $60,000 vs $28,000 in the first
year and break-even after 22000 / 4500 = 4.9 months; its per-request figures (10,000
requests) give $6,000 vs $22,600 and break-even after 48.9 months: not within the year.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import Field

from tuneforge.advise import build, flag
from tuneforge.advise.reports import eval_report, metric
from tuneforge.config import Strict
from tuneforge.errors import Problem, TuneforgeError

HOURS_PER_SECOND = 1 / 3600


class CostConfig(Strict):
    requests_per_month: float = Field(..., ge=0, description="requests the model answers a month")
    api_cost_per_request: Optional[float] = Field(None, ge=0, description="what one API request costs")
    ft_cost_per_request: Optional[float] = Field(None, ge=0, description="what one request to the fine-tune costs")
    upfront: float = Field(0.0, ge=0, description="one-off cost of building the fine-tune (data, training, people)")
    months: int = Field(12, ge=1, description="horizon in months")
    tokens_per_request: Optional[float] = Field(None, gt=0, description="tokens per request, in and out")
    api_price_per_mtok: Optional[float] = Field(None, ge=0, description="API price per million tokens")
    gpu_hourly: Optional[float] = Field(None, ge=0, description="hourly price of the machine serving the fine-tune")
    throughput_tokens_per_s: Optional[float] = Field(None, gt=0, description="tokens/s that machine serves")
    throughput_from: Optional[Path] = Field(None, description="eval.json (or its folder) with a measured tokens_per_s")
    variant: Optional[str] = Field(None, description="which eval variant's throughput [the first adapter]")


def _one_of(values: dict[str, Any], direct: str, token_keys: tuple[str, ...], side: str) -> list[Problem]:
    """A side's cost per request is given directly or from tokens, never both, never neither."""
    tokens = [k for k in token_keys if k in values]
    if direct in values and tokens:
        return [Problem("conflicting_flags", f"give {flag(direct)} or {', '.join(map(flag, tokens))}, not both",
                        flag(direct))]
    if direct not in values and not tokens:
        return [Problem("missing_flag", f"the {side} cost per request is needed: give {flag(direct)}, or "
                        f"{' and '.join(map(flag, token_keys))} with --tokens-per-request", flag(direct))]
    return []


def combination(values: dict[str, Any]) -> list[Problem]:
    problems = _one_of(values, "api_cost_per_request", ("api_price_per_mtok",), "API")
    problems += _one_of(values, "ft_cost_per_request", ("gpu_hourly",), "fine-tuned")
    if "gpu_hourly" in values and "ft_cost_per_request" not in values:
        measured = [k for k in ("throughput_tokens_per_s", "throughput_from") if k in values]
        if len(measured) != 1:
            problems.append(Problem("missing_flag" if not measured else "conflicting_flags",
                                    "--gpu-hourly needs one throughput: --throughput-tokens-per-s or "
                                    "--throughput-from EVAL_DIR", "--gpu-hourly"))
    token_form = any(k in values for k in ("api_price_per_mtok", "gpu_hourly"))
    if token_form and "tokens_per_request" not in values:
        problems.append(Problem("missing_flag", "the token-based form needs --tokens-per-request",
                                "--tokens-per-request"))
    if "variant" in values and "throughput_from" not in values:
        problems.append(Problem("conflicting_flags", "--variant picks a variant of --throughput-from's eval.json; "
                                "give that too", "--variant"))
    return problems


def measured_throughput(path: Path, variant: str | None) -> tuple[float, str]:
    """tokens_per_s of one variant of an eval.json: the one named, else the first adapter
    (a LoRA adapter serves as fast as its base), else the base model."""
    data, problems = eval_report(path)
    if data is None:
        raise TuneforgeError(problems)
    variants = data["variants"]
    names = [variant] if variant else [n for n in variants if not n.startswith("base-")] + sorted(variants)
    for name in names:
        speed = metric(variants.get(name) or {}, "tokens_per_s")
        if speed:
            return speed, f"{name} in {path}"
    what = f"variant '{variant}' has" if variant else "no variant has"
    raise TuneforgeError(Problem("no_throughput", f"{what} a measured tokens_per_s (variants: "
                                 f"{', '.join(variants)}); pass --throughput-tokens-per-s", str(path)))


def per_request(cfg: CostConfig) -> dict[str, Any]:
    """Each side's cost per request and where it came from."""
    found: dict[str, Any] = {}
    if cfg.api_cost_per_request is not None:
        found["api_cost_per_request"] = cfg.api_cost_per_request
    else:
        found["api_cost_per_request"] = cfg.tokens_per_request * cfg.api_price_per_mtok / 1e6
    if cfg.ft_cost_per_request is not None:
        found["ft_cost_per_request"] = cfg.ft_cost_per_request
        return found
    speed, source = cfg.throughput_tokens_per_s, "given"
    if speed is None:
        speed, source = measured_throughput(cfg.throughput_from, cfg.variant)
    found["ft_cost_per_request"] = cfg.tokens_per_request / speed * HOURS_PER_SECOND * cfg.gpu_hourly
    found.update(throughput_tokens_per_s=speed, throughput_source=source,
                 gpu_seconds_per_request=round(cfg.tokens_per_request / speed, 4))
    return found


def compare(cfg: CostConfig) -> dict[str, Any]:
    """Monthly, first-year and horizon costs of both sides, and the month fine-tuning pays back."""
    prices = per_request(cfg)
    n = cfg.requests_per_month
    api_monthly = n * prices["api_cost_per_request"]
    ft_monthly = n * prices["ft_cost_per_request"]
    saved = api_monthly - ft_monthly
    breakeven = cfg.upfront / saved if saved > 0 else None

    def money(x: float) -> float:
        return round(x, 2)

    return {
        "requests_per_month": n, **prices, "upfront": cfg.upfront,
        "api_monthly": money(api_monthly), "ft_monthly": money(ft_monthly), "monthly_savings": money(saved),
        "api_first_year": money(12 * api_monthly), "ft_first_year": money(cfg.upfront + 12 * ft_monthly),
        "first_year_savings": money(12 * saved - cfg.upfront),
        "horizon_months": cfg.months, "api_total": money(cfg.months * api_monthly),
        "ft_total": money(cfg.upfront + cfg.months * ft_monthly), "total_savings": money(cfg.months * saved - cfg.upfront),
        "breakeven_months": None if breakeven is None else round(breakeven, 1),
        "pays_back_within_horizon": breakeven is not None and breakeven <= cfg.months,
    }


def advise_cost(values: dict[str, Any]) -> dict[str, Any]:
    return compare(build(CostConfig, values, combination))


def _usd(x: float) -> str:
    sign = "-" if x < 0 else ""
    whole = abs(x) >= 100 or float(x).is_integer()
    return f"{sign}${abs(x):,.0f}" if whole else f"{sign}${abs(x):,.2f}"


def _price(x: float) -> str:
    """A price per request: small, so four significant digits rather than cents."""
    return f"${x:.4g}"


def verdict(r: dict[str, Any]) -> str:
    """The plain sentence on whether and when fine-tuning pays back."""
    months, upfront = r["horizon_months"], _usd(r["upfront"])
    if r["breakeven_months"] is None:
        return ("fine-tuning never pays back: it costs at least as much per month as the API "
                f"({_usd(r['ft_monthly'])} vs {_usd(r['api_monthly'])}), so the {upfront} up front is never recovered")
    when = (f"break-even after {r['breakeven_months']:.1f} months ({upfront} up front / "
            f"{_usd(r['monthly_savings'])} saved a month)")
    if r["pays_back_within_horizon"]:
        return f"{when}: fine-tuning pays back within the {months}-month horizon"
    return (f"{when}: fine-tuning does NOT pay back within the {months}-month horizon "
            f"(it costs {_usd(-r['total_savings'])} more over {months} months)")


def text(r: dict[str, Any]) -> str:
    rows = [("", "API", "fine-tuned"),
            ("per request", _price(r["api_cost_per_request"]), _price(r["ft_cost_per_request"])),
            ("per month", _usd(r["api_monthly"]), _usd(r["ft_monthly"])),
            ("first year", _usd(r["api_first_year"]), _usd(r["ft_first_year"]) + f" (incl. {_usd(r['upfront'])} "
             "up front)")]
    if r["horizon_months"] != 12:
        rows.append((f"{r['horizon_months']} months", _usd(r["api_total"]), _usd(r["ft_total"])))
    lines = [f"{a:<12} {b:>12}   {c}" for a, b, c in rows]
    if "throughput_source" in r:
        lines.append(f"fine-tuned per request: {r['gpu_seconds_per_request']} GPU-seconds at "
                     f"{r['throughput_tokens_per_s']:g} tokens/s ({r['throughput_source']}), busy time only")
    savings = r["first_year_savings"]
    lines.append(f"first-year savings with fine-tuning: {_usd(savings)}" if savings >= 0
                 else f"first-year cost of fine-tuning over the API: {_usd(-savings)} more")
    lines.append(verdict(r))
    return "\n".join(lines)
