"""Promote a retrained candidate through its route, one step per call (run it from cron):

    tuneforge retrain promote --route support --server http://127.0.0.1:8000 --admin-key $ADMIN

Each call reads the route's last promotion record (the log DB's `promotions` table) and takes at
most one step, through the server's admin API (POST /v1/adapters, PUT /v1/routes/{name}):
- after `gate_passed`: load the candidate on the server (its run folder must lie in the server's
  models_dir) and give it the first share (monitor.promote_steps, 10% by default), the other
  variants scaled down to make room;
- during a step: run the monitor over the requests since the step began, with the incumbent as the
  A/B control. Any failed check on the candidate (invalid outputs, drift, mean score, worse than the
  incumbent by Welch's test) rolls back at once: the route gets its variants from before the
  promotion (`rolled_back`, exit 1). Fewer than monitor.min_feedback scores on the candidate holds
  the step (`held`). Otherwise the next share; after the last (100%), `promoted`.
Every action is a row with who, when and why, shown by `tuneforge monitor`. No process stays
running between steps, so a restart loses nothing.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.monitor import store
from tuneforge.monitor.config import MonitorConfig
from tuneforge.monitor.run import Request, monitor

FINAL = ("promoted", "rolled_back", "refused")


@dataclass
class PromoteRequest:
    route: str
    db: Path
    server: str
    admin_key: str
    config: MonitorConfig = field(default_factory=MonitorConfig)
    adapters: dict[str, Path] = field(default_factory=dict)
    timeout_s: float = 300.0


def admin_call(server: str, key: str, method: str, path: str, body: dict | None = None,
               timeout_s: float = 300.0) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one admin API call; unreachable -> TuneforgeError."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.rstrip("/") + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read() or b"{}")
        except json.JSONDecodeError:
            payload = {}
        return exc.code, payload
    except (urllib.error.URLError, OSError) as exc:
        raise TuneforgeError(Problem("server_unreachable", f"cannot reach {server} ({getattr(exc, 'reason', exc)}); "
                                     "is `tuneforge serve` running there?", "--server")) from None


def _ok(status: int, payload: dict, what: str) -> dict:
    if status >= 400:
        error = payload.get("error") or {}
        code = {401: "admin_key_rejected", 403: "admin_forbidden"}.get(status, error.get("code") or "server_refused")
        raise TuneforgeError(Problem(code, f"{what}: HTTP {status}: {error.get('message', payload)}", "--server"))
    return payload


def shares(previous: dict[str, float], candidate: str, percent: float) -> dict[str, float]:
    """The route with `candidate` at `percent` and the other variants scaled to fill the rest."""
    others = {k: v for k, v in previous.items() if k != candidate}
    total = sum(others.values()) or 1.0
    table = {k: v * (100.0 - percent) / total for k, v in others.items()}
    table[candidate] = percent
    # exact sum of 100 despite float rounding: the last share takes the remainder
    last = next(reversed(table))
    table[last] = 100.0 - sum(v for k, v in table.items() if k != last)
    return table


def _set_route(req: PromoteRequest, variants: dict[str, float]) -> None:
    _ok(*admin_call(req.server, req.admin_key, "PUT", f"/v1/routes/{req.route}", {"variants": variants},
                    req.timeout_s), f"PUT /v1/routes/{req.route}")


def _live_route(req: PromoteRequest) -> dict[str, float]:
    routes = _ok(*admin_call(req.server, req.admin_key, "GET", "/v1/routes", None, req.timeout_s), "GET /v1/routes")
    for entry in routes.get("data", []):
        if entry["id"] == req.route:
            return entry["variants"]
    raise TuneforgeError(Problem("route_not_found", f"the server has no route {req.route!r}", "--route"))


def _load(req: PromoteRequest, name: str, run: str) -> None:
    status, payload = admin_call(req.server, req.admin_key, "POST", "/v1/adapters", {"name": name, "path": run},
                                 req.timeout_s)
    if status == 409 and (payload.get("error") or {}).get("code") == "name_taken":
        return  # loaded by an earlier call that failed later
    _ok(status, payload, f"loading {name} from {run}")


def promote(req: PromoteRequest) -> dict[str, Any]:
    """Take one step; returns the promotion row written (or the state, when there is nothing to do)."""
    history = store.promotions(req.db, req.route) if req.db.is_file() else []
    starts = [i for i, e in enumerate(history) if e["action"] in ("gate_passed", "refused")]
    if not starts or history[starts[-1]]["action"] == "refused":
        raise TuneforgeError(Problem("nothing_to_promote", f"route {req.route!r} has no candidate that passed the "
                                     "retrain gate; run `tuneforge retrain` first", "--route"))
    episode = history[starts[-1]:]
    first, last = episode[0], episode[-1]
    name, run = first["candidate"], first["run"]
    if last["action"] in FINAL:
        return {**last, "done": True}
    steps = req.config.promote_steps
    if last["action"] == "gate_passed":
        previous = _live_route(req)
        _load(req, name, run)
        variants = shares(previous, name, steps[0])
        _set_route(req, variants)
        return store.record_promotion(req.db, req.route, name, "step", f"gate passed ({first['why']}); first step",
                                      run=run, percent=steps[0], variants=variants, previous=previous)
    previous = next(e["previous"] for e in episode if e["previous"] is not None)
    step_start = max(e["time"] for e in episode if e["action"] == "step")
    percent = last["percent"]
    control = max(previous, key=previous.get) if previous else None
    report = monitor(Request(route=req.route, db=req.db, config=req.config, start=step_start, control=control,
                             routes={req.route: last["variants"] or {}},
                             adapters={**req.adapters, name: Path(run)}, write=True))
    failed = [c for c in report["checks"] if c["variant"] == name and not c["ok"]]
    if failed:
        _set_route(req, previous)
        why = "; ".join(f"{c['check']}: {c['why']}" for c in failed)
        store.record_promotion(req.db, req.route, name, "rolled_back", f"at {percent:g}%: {why}", run=run,
                               percent=0.0, variants=previous)
        raise TuneforgeError(Problem("rolled_back", f"{name} rolled back from {percent:g}% of route {req.route}: "
                                     f"{why}; the route is back to {_show(previous)}", "--route"), exit_code=1)
    scores = report["variants"].get(name, {}).get("feedback", {}).get("feedback", 0)
    need = req.config.min_feedback
    if scores < need:
        why = f"held at {percent:g}%: {scores}/{need} scores on {name} since the step began"
        if last["action"] == "held" and last["why"] == why:
            return {**last, "unchanged": True}
        return store.record_promotion(req.db, req.route, name, "held", why, run=run, percent=percent,
                                      variants=last["variants"])
    passed = f"{scores} scores, no failed check at {percent:g}% ({_feedback(report, name)})"
    if percent >= 100:
        return store.record_promotion(req.db, req.route, name, "promoted", passed, run=run, percent=100.0,
                                      variants=last["variants"])
    following = next(s for s in steps if s > percent)
    variants = shares(previous, name, following)
    _set_route(req, variants)
    return store.record_promotion(req.db, req.route, name, "step", f"{passed}; next step", run=run,
                                  percent=following, variants=variants)


def _feedback(report: dict[str, Any], name: str) -> str:
    fb = report["variants"][name]["feedback"]
    if "score_ci_low" in fb:
        return f"mean {fb['mean_score']:.2f} [{fb['score_ci_low']:.2f}, {fb['score_ci_high']:.2f}]"
    return f"mean {fb.get('mean_score', float('nan')):.2f}"


def _show(variants: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}%" for k, v in variants.items())
