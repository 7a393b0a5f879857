"""`tuneforge monitor`: the statistics against reference values, drift flagged on shifted traffic
and not on unshifted, invalid outputs and feedback, the checks and --fail-if, the signals in the
log DB and on the server's /metrics."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from monitor_fake import LABELS, fill_log, make_run, recipe, ticket
from tuneforge.errors import TuneforgeError
from tuneforge.monitor import stats
from tuneforge.monitor.config import MonitorConfig
from tuneforge.monitor.run import Request, fail_if, monitor
from tuneforge.monitor.store import record_promotion


def test_reference_values():
    # chi-square, Kolmogorov and t quantiles from statistical tables
    assert stats.chi2_sf(3.841459, 1) == pytest.approx(0.05, abs=1e-6)
    assert stats.chi2_sf(11.0705, 5) == pytest.approx(0.05, abs=1e-5)
    assert stats.chi2_sf(0.0, 3) == 1.0
    assert stats.kolmogorov_q(1.3581) == pytest.approx(0.05, abs=1e-4)
    assert stats.t_quantile(0.05, 10) == pytest.approx(2.228139, abs=1e-5)
    ci = stats.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert ci["mean"] == 3.0 and ci["high"] - 3.0 == pytest.approx(2.776445 * (2.5 ** 0.5) / 5 ** 0.5, abs=1e-5)
    # a 2x2 table: 20/30 vs 30/20 gives chi2 = 4.0 (Pearson, no continuity correction)
    test = stats.chi2_homogeneity({"a": 20, "b": 30}, {"a": 30, "b": 20})
    assert test["statistic"] == pytest.approx(4.0) and test["df"] == 1
    assert stats.chi2_homogeneity({"a": 3}, {"a": 4}) is None
    fit = stats.slope([0, 1, 2, 3], [1, 3, 5, 7])
    assert fit["slope"] == pytest.approx(2.0) and fit["p"] == 0.0


def test_ks_and_permutation_tests_separate_same_from_different():
    rng = np.random.default_rng(0)
    same = stats.ks_2samp(rng.normal(0, 1, 300).tolist(), rng.normal(0, 1, 80).tolist())
    moved = stats.ks_2samp(rng.normal(0, 1, 300).tolist(), rng.normal(1, 1, 80).tolist())
    assert same["p"] > 0.05 and moved["p"] < 1e-6
    assert stats.ks_2samp([1, 2, 3], [1, 2, 3]) == {"statistic": 0.0, "p": 1.0}
    r = random.Random(0)
    train = stats.hashed_profile([ticket(r)[0] for _ in range(300)], 256)
    like = stats.hashed_profile([ticket(r)[0] for _ in range(40)], 256)
    unlike = stats.hashed_profile([ticket(r)[0] for _ in range(20)] + [recipe(r) for _ in range(20)], 256)
    assert stats.permutation_test(train, like, 500)["p"] > 0.05
    assert stats.permutation_test(train, unlike, 500)["p"] == pytest.approx(1 / 501)
    # crc32, not hash(): the same text lands in the same buckets in every process
    assert np.array_equal(stats.hashed_profile(["abc def"], 64), stats.hashed_profile(["abc def"], 64))


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "tickets")


def _monitor(db, run, **kw):
    cfg = MonitorConfig(**kw.pop("config", {}))
    return monitor(Request(route="support", db=db, config=cfg, adapters={"tickets": run},
                           routes={"support": {"base": 50.0, "tickets": 50.0}}, **kw))


def test_traffic_that_shifts_halfway_is_flagged_and_unshifted_is_not(tmp_path, run):
    steady, shifting = tmp_path / "steady.db", tmp_path / "shift.db"
    fill_log(steady, "support", "tickets", 40)
    fill_log(shifting, "support", "tickets", 40, shifted_from=20)
    calm = _monitor(steady, run)["variants"]["tickets"]["input"]
    moved = _monitor(shifting, run)["variants"]["tickets"]["input"]
    assert calm["status"] == "tested" and not calm["drifted"]
    assert calm["ngram_p"] > 0.05 and calm["length_p"] > 0.05
    assert moved["drifted"] and moved["ngram_p"] < 0.005
    # the examples shown as most unlike training are the recipes
    assert all("tomato" in e["prompt"] or "oven" in e["prompt"] or "eggs" in e["prompt"]
               for e in moved["most_unlike"])
    report = _monitor(shifting, run)
    assert {"variant": "tickets", "check": "input_drift", "ok": False} == \
        {k: v for k, v in report["checks"][0].items() if k != "why"}
    assert report["signals"]["tickets"]["input_drift"] == 1.0 and report["signals"]["support"]["failed_checks"] >= 1


def test_too_few_requests_are_not_tested(tmp_path, run):
    db = tmp_path / "log.db"
    fill_log(db, "support", "tickets", 5)
    inp = _monitor(db, run)["variants"]["tickets"]["input"]
    assert inp["status"].startswith("not enough data") and "drifted" not in inp


def test_invalid_outputs_and_label_drift(tmp_path, run):
    db = tmp_path / "log.db"
    fill_log(db, "support", "tickets", 40, invalid_every=4)
    report = _monitor(db, run)
    out = report["variants"]["tickets"]["output"]
    assert out["invalid"] == 10 and out["invalid_rate"] == 0.25
    assert set(out["labels_now"]) <= set(LABELS) and out["reference"] == "train"
    failed = [c for c in report["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == ["invalid_rate"] and "10/40 invalid" in failed[0]["why"]
    # a model that answers one label only has drifted from the training labels
    skewed = tmp_path / "skewed.db"
    from tuneforge.serve.log import InteractionLog, Interaction

    log = InteractionLog(skewed)
    for i in range(40):
        log.record(Interaction(id=f"c{i}", time=1e9 + i, endpoint="chat", status=200, route="support",
                               variant="tickets", prompt=json.dumps([{"role": "user", "content": "x"}]),
                               completion="billing"))
    log.close()
    out = _monitor(skewed, run, now=1e9 + 100)["variants"]["tickets"]["output"]
    assert out["label_p"] < 1e-6 and out["labels_now"] == {"billing": 40}


def test_feedback_trend_ab_checks_and_fail_if(tmp_path, run):
    db = tmp_path / "log.db"
    fill_log(db, "support", "base", 30, seed=2, score=lambda i: 4 + (i % 2))
    fill_log(db, "support", "tickets", 30, seed=3, score=lambda i: 1 + (i % 2) if i < 24 else None)
    report = _monitor(db, run, config={"min_mean_score": 3.0})
    fb = report["variants"]["tickets"]["feedback"]
    assert fb["feedback"] == 24 and fb["mean_score"] == 1.5
    assert fb["score_ci_low"] < 1.5 < fb["score_ci_high"] and len(fb["bins"]) == 4
    ab = report["comparisons"]
    assert len(ab) == 1 and ab[0]["diff"] == pytest.approx(-3.0) and ab[0]["verdict"] == "significant"
    failed = {(c["variant"], c["check"]) for c in report["checks"] if not c["ok"]}
    assert failed == {("tickets", "mean_score"), ("tickets", "ab_vs_control")}
    assert fail_if("tickets.mean_score < 2 or support.failed_checks > 5", report)
    assert not fail_if("base.mean_score < 4", report)
    with pytest.raises(TuneforgeError) as bad:
        fail_if("tickets.bogus < 1", report)
    assert bad.value.problems[0].code == "invalid_fail_if" and "input_ngram_p" in bad.value.problems[0].message
    with pytest.raises(TuneforgeError) as none:
        fail_if("base.input_ngram_p < 0.01", report)  # the base has no training data: no drift figure
    assert none.value.problems[0].code == "no_data"


def test_unknown_route_and_bad_window_are_one_line_errors(tmp_path, run, run_cli):
    db = tmp_path / "log.db"
    fill_log(db, "support", "tickets", 3)
    code, _, err = run_cli("monitor", "--route", "nope", "--db", str(db))
    assert code == 2 and err.strip().startswith("--route: route_not_found:")
    code, _, err = run_cli("monitor", "--route", "support", "--db", str(db), "--since", "7 days")
    assert code == 2 and err.strip().startswith("--since: invalid_duration:")
    code, _, err = run_cli("monitor", "--route", "support", "--db", str(tmp_path / "missing.db"))
    assert code == 2 and "file_not_found" in err and "Traceback" not in err


def test_cli_prints_pushes_signals_and_metrics_show_them(tmp_path, run, run_cli, tiny_model):
    db = tmp_path / "log.db"
    fill_log(db, "support", "tickets", 40, shifted_from=20, score=lambda i: 5)
    record_promotion(db, "support", "tickets", "step", "feedback 20/20 and no check failed", run=str(run),
                     percent=50.0, variants={"base": 50.0, "tickets": 50.0})
    config = tmp_path / "serve.yaml"
    config.write_text(json.dumps({"log_db": str(db), "adapters": {"tickets": str(run)},
                                  "monitor": {"min_requests": 10}}))
    code, out, _ = run_cli("monitor", "--route", "support", "--config", str(config), "--fail-if",
                           "tickets.input_drift > 0")
    assert code == 1 and "DRIFT" in out and "promotions" in out and "20/20" in out, out
    code, out, _ = run_cli("monitor", "--route", "support", "--config", str(config), "--json")
    report = json.loads(out)
    assert code == 0 and report["variants"]["tickets"]["input"]["drifted"]
    assert report["promotions"][0]["who"] and report["variants"]["tickets"]["share"] == 50.0

    from transformers import AutoTokenizer

    from serve_fake import FakeEngine, live_server
    from tuneforge.serve.config import ServeConfig

    engine = FakeEngine(AutoTokenizer.from_pretrained(tiny_model))
    with live_server(ServeConfig(log_db=db), engine) as live:
        import urllib.request

        text = urllib.request.urlopen(f"{live.url}/metrics").read().decode()
    assert 'tuneforge_monitor_signal{route="support",signal="input_drift",variant="tickets"} 1.0' in text
    assert 'tuneforge_monitor_updated_seconds{route="support"}' in text


def test_monitor_config_rejects_unknown_keys_and_bad_steps():
    from tuneforge.serve.config import ServeConfig

    with pytest.raises(ValueError, match="extra"):
        ServeConfig(monitor={"drift": 0.1})
    with pytest.raises(ValueError, match="end at 100"):
        MonitorConfig(promote_steps=[10, 50])
    with pytest.raises(ValueError, match="duration"):
        MonitorConfig(since="a week")
