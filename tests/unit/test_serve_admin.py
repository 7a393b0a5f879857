"""Run-time administration of `tuneforge serve` on a live server: adapters loaded and unloaded
(paths confined to models_dir), rollout routes split by user and changed without a restart,
config reloads, and the metrics and health endpoints."""

from __future__ import annotations

import http.client
import json
import os
from collections import Counter

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serve_fake import BASE, FakeEngine, live_server, make_adapter, wait_for
from tuneforge.serve.config import RouteConfig, ServeConfig, load_serve_config, sha256_hex
from tuneforge.serve.log import connect
from tuneforge.serve.rollout import Rollout, position

ASK = [{"role": "user", "content": "Where is my refund?"}]
ADMIN = {"authorization": "Bearer admin-secret"}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def call(url: str, method: str, path: str, payload=None, headers=None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        body = None if payload is None else json.dumps(payload).encode()
        conn.request(method, path, body=body, headers={"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        conn.close()


@pytest.fixture
def admin_server(tokenizer, tmp_path):
    models = tmp_path / "models"
    make_adapter(models / "good")
    make_adapter(tmp_path / "outside")
    os.symlink(tmp_path / "outside", models / "escape")
    engine = FakeEngine(tokenizer, adapters={"v2": str(make_adapter(models / "v2"))})
    config = ServeConfig(log_db=tmp_path / "log.db", models_dir=models, admin_key_sha256=sha256_hex("admin-secret"),
                         routes={"support": RouteConfig(variants={BASE: 90, "v2": 10})})
    with live_server(config, engine) as live:
        yield live, tmp_path


def test_adapters_load_and_unload_at_run_time(admin_server):
    live, tmp = admin_server
    client = live.client("admin-secret")
    status, card = call(live.url, "POST", "/v1/adapters", {"name": "a1", "path": "good"}, ADMIN)
    assert status == 201 and card["id"] == "a1" and card["path"] == str((tmp / "models" / "good").resolve())
    assert "a1" in [m.id for m in client.models.list().data]
    reply = client.chat.completions.with_raw_response.create(model="a1", messages=ASK)
    assert reply.headers["x-tuneforge-variant"] == "a1" and "Hello from a1" in reply.parse().choices[0].message.content
    status, listing = call(live.url, "GET", "/v1/adapters", headers=ADMIN)
    assert [a["id"] for a in listing["data"]] == ["v2", "a1"]
    status, _ = call(live.url, "POST", "/v1/adapters", {"name": "a1", "path": "good"}, ADMIN)
    assert status == 409  # a name is loaded once
    status, body = call(live.url, "DELETE", "/v1/adapters/a1", headers=ADMIN)
    assert status == 200 and body["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="a1", messages=ASK)
    assert call(live.url, "DELETE", "/v1/adapters/a1", headers=ADMIN)[0] == 404
    assert call(live.url, "DELETE", "/v1/adapters/v2", headers=ADMIN)[0] == 409  # a route still sends users there
    assert call(live.url, "DELETE", f"/v1/adapters/{BASE}", headers=ADMIN)[0] == 400


@pytest.mark.parametrize("path, code", [
    ("../outside", "path_outside_models_dir"),
    ("good/../../outside", "path_outside_models_dir"),
    ("escape", "path_outside_models_dir"),  # a symlink inside models_dir that points out
    ("missing", "adapter_not_found"),
    ("", "invalid_value"),
])
def test_adapter_paths_outside_models_dir_are_refused(admin_server, path, code):
    live, _ = admin_server
    status, body = call(live.url, "POST", "/v1/adapters", {"name": "bad", "path": path}, ADMIN)
    assert status == 400 and body["error"]["code"] == code and body["error"]["param"] == "path"
    assert "bad" not in live.engine.adapters


def test_absolute_path_outside_and_non_admin_callers_are_refused(admin_server):
    live, tmp = admin_server
    status, body = call(live.url, "POST", "/v1/adapters", {"name": "bad", "path": str(tmp / "outside")}, ADMIN)
    assert status == 400 and body["error"]["code"] == "path_outside_models_dir"
    status, body = call(live.url, "POST", "/v1/adapters", {"name": "ok", "path": str(tmp / "models" / "good")},
                        ADMIN)
    assert status == 201  # an absolute path inside models_dir is fine
    for headers in ({}, {"authorization": "Bearer wrong"}):
        assert call(live.url, "POST", "/v1/adapters", {"name": "x", "path": "good"}, headers)[0] == 401
    status, body = call(live.url, "POST", "/v1/adapters", {"name": "../x", "path": "good"}, ADMIN)
    assert status == 400 and body["error"]["param"] == "name"


def _variants(client, users) -> dict[str, str]:
    chosen = {}
    for user in users:
        reply = client.chat.completions.with_raw_response.create(model="support", messages=ASK, user=user,
                                                                 max_tokens=1)
        chosen[user] = reply.headers["x-tuneforge-variant"]
        assert reply.parse().model == chosen[user]
    return chosen


def test_rollout_splits_400_users_by_percentage_stably_and_changes_without_restart(admin_server):
    live, _ = admin_server
    client = live.client("admin-secret")
    users = [f"user-{i}" for i in range(400)]
    before = _variants(client, users)
    counts = Counter(before.values())
    assert set(counts) == {BASE, "v2"} and 22 <= counts["v2"] <= 58  # 10% +- 3 sd of a binomial
    assert _variants(client, users[:50]) == {u: before[u] for u in users[:50]}  # a user keeps a variant
    status, route = call(live.url, "PUT", "/v1/routes/support", {"variants": {BASE: 50, "v2": 50}}, ADMIN)
    assert status == 200 and route["variants"] == {BASE: 50, "v2": 50}
    after = _variants(client, users)
    assert 170 <= Counter(after.values())["v2"] <= 230
    # the growing, last-listed variant only gains users: nobody on v2 is moved back
    assert all(after[u] == "v2" for u in users if before[u] == "v2")
    live.service.log.flush()
    conn = connect(live.service.config.log_db, readonly=True)
    # in time order, so each user's last row (the 50/50 run) is the one kept
    logged = dict(conn.execute("SELECT user, variant FROM interactions WHERE route = 'support' ORDER BY time, rowid")
                  .fetchall())
    conn.close()
    assert logged == after  # the served variant is logged with the user


def test_route_updates_are_validated(admin_server):
    live, _ = admin_server
    for variants, code in (({BASE: 50, "v2": 40}, "invalid_value"), ({BASE: 50, "nope": 50}, "unknown_variant"),
                           ({}, "invalid_value")):
        status, body = call(live.url, "PUT", "/v1/routes/support", {"variants": variants}, ADMIN)
        assert status == 400 and body["error"]["code"] == code, body
    status, body = call(live.url, "PUT", f"/v1/routes/{BASE}", {"variants": {"v2": 100}}, ADMIN)
    assert status == 400 and body["error"]["code"] == "route_shadows_model"
    status, _ = call(live.url, "PUT", "/v1/routes/canary", {"variants": {"v2": 100}}, ADMIN)
    assert status == 200 and "canary" in [m.id for m in live.client("admin-secret").models.list().data]
    assert call(live.url, "DELETE", "/v1/routes/canary", headers=ADMIN)[0] == 200
    assert call(live.url, "GET", "/v1/routes", headers=ADMIN)[1]["data"] == [
        {"id": "support", "object": "route", "variants": {BASE: 90, "v2": 10}}]


def test_config_reload_by_admin_route_and_by_sighup_flag(tokenizer, tmp_path):
    path = tmp_path / "serve.yaml"
    data = {"log_db": str(tmp_path / "log.db"), "admin_key_sha256": sha256_hex("admin-secret"),
            "routes": {"support": {"variants": {BASE: 100, "v2": 0}}}}
    path.write_text(yaml.safe_dump(data))
    engine = FakeEngine(tokenizer, adapters={"v2": str(make_adapter(tmp_path / "v2"))})

    def load():
        return load_serve_config(path)

    with live_server(load(), engine, reload=load) as live:
        client = live.client("admin-secret")
        assert set(_variants(client, [f"u{i}" for i in range(20)]).values()) == {BASE}
        data["routes"]["support"]["variants"] = {BASE: 0, "v2": 100}
        data["max_queue"] = 7
        path.write_text(yaml.safe_dump(data))
        status, body = call(live.url, "POST", "/admin/reload", headers=ADMIN)
        assert status == 200 and body["routes"] == {"support": {BASE: 0, "v2": 100}}
        assert body["restart_required"] == ["max_queue"]
        assert set(_variants(client, [f"u{i}" for i in range(20)]).values()) == {"v2"}
        data["routes"]["support"]["variants"] = {BASE: 100, "v2": 0}
        path.write_text(yaml.safe_dump(data))
        live.server.reload_requested = True  # what the SIGHUP handler sets; the server's tick applies it
        wait_for(lambda: live.service.rollout.table()["support"] == {BASE: 100, "v2": 0}, what="the reload")
        data["routes"]["support"]["variants"] = {BASE: 60, "v2": 60}
        path.write_text(yaml.safe_dump(data))
        status, body = call(live.url, "POST", "/admin/reload", headers=ADMIN)
        assert status == 400 and "sum to 120" in body["error"]["message"]
        assert live.service.rollout.table()["support"] == {BASE: 100, "v2": 0}  # a bad file changes nothing


def test_metrics_and_health(admin_server):
    live, _ = admin_server
    client = live.client("admin-secret")
    client.chat.completions.create(model=BASE, messages=ASK)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=ASK)
    status, health = call(live.url, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["models"] == [BASE, "v2"]
    host, port = live.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    assert response.status == 200 and response.getheader("content-type").startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("tuneforge_requests_total", endpoint="chat", model=BASE, variant=BASE, status="200") == 1
    assert value("tuneforge_requests_total", endpoint="chat", model="nope", variant="", status="404") == 1
    assert value("tuneforge_request_latency_seconds_count", endpoint="chat", model=BASE, variant=BASE) == 1
    assert value("tuneforge_completion_tokens_total", model=BASE, variant=BASE) > 0
    assert value("tuneforge_tokens_per_second") > 0
    assert value("tuneforge_engine_running") == 0 and value("tuneforge_engine_adapters_loaded") == 1
    assert value("tuneforge_draining") == 0


def test_rollout_positions_are_uniform_and_fixed():
    rollout = Rollout({"r": RouteConfig(variants={"a": 25, "b": 25, "c": 50})})
    counts = Counter(rollout.pick("r", f"user{i}") for i in range(20_000))
    assert abs(counts["a"] - 5000) < 300 and abs(counts["c"] - 10_000) < 400
    assert position("r", "alice") == position("r", "alice") != position("other", "alice")
    assert Counter(rollout.pick("r", None) for _ in range(2000))["c"] > 800  # no user: random, same shares
