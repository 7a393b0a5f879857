"""`tuneforge retrain promote` against a live server with a fake engine: the first step loads the
candidate and gives it 10%; a step is held until enough feedback arrived; good feedback moves it on;
bad feedback rolls the route back to what it was; every action is a row in `promotions` that
`tuneforge monitor` shows. Also the refusals of `retrain` that come before any training."""

from __future__ import annotations

import json

import pytest

from serve_fake import BASE, FakeEngine, live_server, make_adapter
from tuneforge.errors import TuneforgeError
from tuneforge.monitor.config import MonitorConfig
from tuneforge.monitor.promote import PromoteRequest, promote, shares
from tuneforge.monitor.retrain import RetrainRequest, candidate_name, retrain
from tuneforge.monitor.store import promotions, record_promotion
from tuneforge.serve.config import RouteConfig, ServeConfig, sha256_hex

ADMIN = "admin-secret"


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_shares_scale_the_others_and_sum_to_100():
    assert shares({"v1": 100.0}, "c", 10) == {"v1": 90.0, "c": 10.0}
    table = shares({"a": 70.0, "b": 30.0, "c": 0.0}, "c", 50)
    assert table == pytest.approx({"a": 35.0, "b": 15.0, "c": 50.0}) and sum(table.values()) == 100.0
    assert candidate_name("support", "runs/v2.1") == "support-v2-1"


def _traffic(live, users, score_for):
    """One chat per user on the route; feedback on each answer by the variant that gave it."""
    client = live.client()
    raw = client.with_options(max_retries=0)
    served = {}
    for i, user in enumerate(users):
        reply = raw.chat.completions.with_raw_response.create(
            model="support", user=user, messages=[{"role": "user", "content": f"ticket {i}"}])
        variant = reply.headers["x-tuneforge-variant"]
        served[variant] = served.get(variant, 0) + 1
        raw.post("/feedback", body={"id": reply.parse().id, "score": score_for(variant, i)}, cast_to=object)
    live.service.log.flush()
    return served


def test_promotion_steps_hold_advance_and_roll_back(tmp_path, tokenizer, run_cli):
    models = tmp_path / "models"
    incumbent, candidate = make_adapter(models / "v1"), make_adapter(models / "cand")
    db = tmp_path / "log.db"
    config = ServeConfig(log_db=db, models_dir=models, adapters={"v1": incumbent}, admin_key_sha256=sha256_hex(ADMIN),
                         routes={"support": RouteConfig(variants={"v1": 100})})
    engine = FakeEngine(tokenizer, adapters={"v1": str(incumbent)})
    cfg = MonitorConfig(min_feedback=3, promote_steps=[10, 50, 100])
    with live_server(config, engine) as live:
        with pytest.raises(TuneforgeError) as none:
            promote(PromoteRequest("support", db, live.url, ADMIN, cfg))
        assert none.value.problems[0].code == "nothing_to_promote"
        record_promotion(db, "support", "cand", "gate_passed", "candidate better: accuracy 0.9 vs 0.8",
                         run=str(candidate), percent=0.0, previous={"v1": 100.0})

        def step():
            return promote(PromoteRequest("support", db, live.url, ADMIN, cfg))

        first = step()
        assert first["action"] == "step" and first["percent"] == 10
        assert "cand" in engine.adapters and live.service.rollout.table()["support"] == {"v1": 90.0, "cand": 10.0}
        held = step()
        assert held["action"] == "held" and "0/3 scores" in held["why"]
        assert step().get("unchanged")  # the same hold is not written twice

        good = lambda variant, i: 4 + i % 2  # noqa: E731
        served = _traffic(live, [f"user-{i}" for i in range(80)], good)
        assert served.get("cand", 0) >= 3, served
        moved = step()
        assert moved["action"] == "step" and moved["percent"] == 50, moved
        assert live.service.rollout.table()["support"] == {"v1": 50.0, "cand": 50.0}

        bad = lambda variant, i: (1 + i % 2) if variant == "cand" else (4 + i % 2)  # noqa: E731
        _traffic(live, [f"other-{i}" for i in range(30)], bad)
        with pytest.raises(TuneforgeError) as rolled:
            step()
        problem = rolled.value.problems[0]
        assert rolled.value.exit_code == 1 and problem.code == "rolled_back"
        assert "ab_vs_control" in problem.message and "back to v1 100%" in problem.message
        assert live.service.rollout.table()["support"] == {"v1": 100.0}
        assert step()["done"]  # a finished promotion is left alone

        # the CLI: one line with a stable code and exit 1 for a rollback, the history in `monitor`
        record_promotion(db, "support", "cand", "gate_passed", "again", run=str(candidate), percent=0.0,
                         previous={"v1": 100.0})
        code, _, err = run_cli("retrain", "promote", "--route", "support", "--server", live.url, "--admin-key",
                               "wrong", "--db", str(db))
        assert code == 2 and err.startswith("--server: admin_key_rejected:")
        code, out, _ = run_cli("retrain", "promote", "--route", "support", "--server", live.url, "--admin-key",
                               ADMIN, "--db", str(db))
        assert code == 0 and "cand step (10%)" in out

    actions = [p["action"] for p in promotions(db, "support")]
    assert actions == ["gate_passed", "step", "held", "step", "rolled_back", "gate_passed", "step"]
    assert all(p["who"] and p["why"] for p in promotions(db, "support"))
    code, out, _ = run_cli("monitor", "--route", "support", "--db", str(db), "--json")
    report = json.loads(out)
    assert code == 0 and [p["action"] for p in report["promotions"]][-3:] == ["rolled_back", "gate_passed", "step"]


def test_retrain_refuses_before_training(tmp_path):
    from monitor_fake import fill_log, make_run

    run = make_run(tmp_path / "tickets")
    db = tmp_path / "log.db"
    fill_log(db, "support", "tickets", 10)
    request = dict(route="support", db=db, routes={"support": {BASE: 50.0, "tickets": 50.0}})
    with pytest.raises(TuneforgeError) as none:
        retrain(RetrainRequest(out=tmp_path / "r1", adapters={}, **request))
    assert none.value.problems[0].code == "no_adapter"
    with pytest.raises(TuneforgeError) as few:
        retrain(RetrainRequest(out=tmp_path / "r2", adapters={"tickets": run}, min_new=5, **request))
    assert few.value.problems[0].code == "not_enough_new" and few.value.exit_code == 3
    assert "has 0 logged chats" in few.value.problems[0].message
