"""The request log of `tuneforge serve`: every request logged, feedback attached, corrected and
well-scored chats exported as training data that `tuneforge prepare` accepts, and the A/B
statistics (Welch's t-test against reference values). Also the serve config's own checks and
the CLI's refusal of --backend vllm without vLLM or a GPU."""

from __future__ import annotations

import json

import openai
import pytest

from serve_fake import BASE, FakeEngine, live_server, make_adapter
from tuneforge.errors import TuneforgeError
from tuneforge.serve.abtest import percentile, t_two_sided_p, welch
from tuneforge.serve.config import RouteConfig, ServeConfig, load_serve_config
from tuneforge.serve.log import connect

QUESTIONS = ["My card was charged twice", "The app crashes on start", "How do I reset my password?",
             "Please add a dark mode", "Where is my invoice?", "I cannot log in"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_feedback_export_round_trip_passes_prepare(tokenizer, tiny_model, tmp_path, run_cli):
    engine = FakeEngine(tokenizer, adapters={"v2": str(make_adapter(tmp_path / "v2"))})
    db = tmp_path / "log.db"
    config = ServeConfig(log_db=db, routes={"support": RouteConfig(variants={BASE: 50, "v2": 50})})
    with live_server(config, engine) as live:
        client = live.client()
        ids = []
        for i, question in enumerate(QUESTIONS):
            messages = [{"role": "system", "content": "Classify the ticket."}, {"role": "user", "content": question}]
            ids.append(client.chat.completions.create(model="support", messages=messages, user=f"u{i}").id)
        plain = client.completions.create(model=BASE, prompt="Once upon a time", max_tokens=5).id
        post = client.with_options(max_retries=0).post

        def feedback(**body):
            return post("/feedback", body=body, cast_to=object)

        assert feedback(id=ids[0], correction="billing")["completion_id"] == ids[0]
        assert feedback(id=ids[1], score=5, label="good")["object"] == "feedback"
        feedback(id=ids[2], score=1)
        feedback(id=ids[3], score=4.5, correction="feature_request")
        feedback(id=plain, correction="there was a king")  # a bare prompt is not a chat: not exported
        with pytest.raises(openai.NotFoundError):
            feedback(id="chatcmpl-unknown", score=3)
        with pytest.raises(openai.BadRequestError):
            feedback(id=ids[4])  # says nothing
        with pytest.raises(openai.BadRequestError):
            feedback(id=ids[4], score="great")
        live.service.log.flush()

    conn = connect(db, readonly=True)
    rows = {r["id"]: r for r in conn.execute("SELECT * FROM interactions")}
    conn.close()
    logged = rows[ids[0]]
    assert logged["endpoint"] == "chat" and logged["status"] == 200 and logged["route"] == "support"
    assert logged["variant"] in (BASE, "v2") and logged["user"] == "u0" and logged["latency_ms"] > 0
    assert json.loads(logged["prompt"])[1] == {"role": "user", "content": QUESTIONS[0]}
    assert logged["completion"].startswith(f"Hello from {logged['variant']}") and logged["completion_tokens"] > 0
    refused = [r for r in rows.values() if r["status"] == 400]
    assert len(refused) == 0  # feedback errors are not completions; only the two endpoints are logged

    out = tmp_path / "export.jsonl"
    code, stdout, _ = run_cli("logs", "export", "--db", db, "--out", out, "--min-score", "4")
    assert code in (0, None) and "wrote 3 chats" in stdout and "1 /v1/completions" in stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    answers = {r["messages"][1]["content"]: r["messages"][-1] for r in records}
    assert answers[QUESTIONS[0]] == {"role": "assistant", "content": "billing"}  # the correction is the answer
    assert answers[QUESTIONS[3]]["content"] == "feature_request"
    assert answers[QUESTIONS[1]]["content"].startswith("Hello from")  # well scored: the model's own answer
    assert QUESTIONS[2] not in answers  # scored 1
    code, stdout, _ = run_cli("logs", "export", "--db", db, "--out", out)
    assert "wrote 2 chats" in stdout  # without --min-score: corrections only

    code, stdout, stderr = run_cli("prepare", out, "--out", tmp_path / "data", "--model", tiny_model,
                                   "--split", "1,0,0", "--no-memorisation-check")
    assert code in (0, None), stderr
    prepared = [json.loads(line) for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    assert len(prepared) == 2


def test_feedback_sent_while_its_stream_is_still_running_is_kept(tokenizer, tmp_path):
    engine = FakeEngine(tokenizer, delay_s=0.2)
    db = tmp_path / "log.db"
    with live_server(ServeConfig(log_db=db), engine) as live:
        client = live.client()
        stream = client.chat.completions.create(model=BASE, stream=True,
                                                messages=[{"role": "user", "content": QUESTIONS[0]}])
        first = next(iter(stream))
        engine.paused = True  # the answer waits until the feedback is in
        assert first.id in live.service.streaming
        sent = client.post("/feedback", body={"id": first.id, "score": 5, "correction": "billing"}, cast_to=object)
        assert sent["completion_id"] == first.id
        engine.paused = False
        rest = list(stream)
        assert rest[-1].choices[0].finish_reason == "stop"
        live.service.log.flush()
        with pytest.raises(openai.NotFoundError):  # once the stream ended, an unknown id is still unknown
            client.post("/feedback", body={"id": "chatcmpl-nope", "score": 1}, cast_to=object)

    conn = connect(db, readonly=True)
    joined = conn.execute("SELECT i.status, f.score, f.correction FROM feedback f JOIN interactions i "
                          "ON i.id = f.interaction_id WHERE i.id = ?", (first.id,)).fetchall()
    conn.close()
    assert [tuple(r) for r in joined] == [(200, 5.0, "billing")]


def test_logs_stats_reports_variants_and_welch_test(tokenizer, tmp_path, run_cli):
    engine = FakeEngine(tokenizer, adapters={"v2": str(make_adapter(tmp_path / "v2"))})
    db = tmp_path / "log.db"
    config = ServeConfig(log_db=db, routes={"support": RouteConfig(variants={BASE: 50, "v2": 50})})
    with live_server(config, engine) as live:
        client = live.client()
        post = client.post
        for i in range(40):
            reply = client.chat.completions.with_raw_response.create(
                model="support", user=f"user{i}", messages=[{"role": "user", "content": f"question {i}"}])
            variant = reply.headers["x-tuneforge-variant"]
            score = (4 + i % 2) if variant == "v2" else (2 + i % 3)  # v2 clearly better
            post("/feedback", body={"id": reply.parse().id, "score": score}, cast_to=object)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        live.service.log.flush()
    code, stdout, _ = run_cli("logs", "stats", "--db", db, "--json", "--control", BASE)
    result = json.loads(stdout)
    by = {(v["route"], v["variant"]): v for v in result["variants"]}
    assert by[("support", BASE)]["requests"] + by[("support", "v2")]["requests"] == 40
    assert by[("-", "nope")]["errors"] == 1
    assert by[("support", "v2")]["p50_ms"] is not None and by[("support", "v2")]["feedback"] > 2
    [comparison] = result["comparisons"]
    assert (comparison["control"], comparison["variant"]) == (BASE, "v2")
    assert comparison["verdict"] == "significant" and comparison["p"] < 0.001 and comparison["diff"] > 1.0
    code, stdout, _ = run_cli("logs", "stats", "--db", db)
    assert "Welch" in stdout and "support" in stdout and "significant" in stdout


def test_welch_and_t_distribution_match_reference_values():
    # two-sided p of Student's t (from tables): t=2.228, df=10 -> 0.05; t=12.706, df=1 -> 0.05; t=2, df=10 -> 0.0734
    assert t_two_sided_p(2.228, 10) == pytest.approx(0.05, abs=2e-4)
    assert t_two_sided_p(12.706, 1) == pytest.approx(0.05, abs=2e-4)
    assert t_two_sided_p(2.0, 10) == pytest.approx(0.07339, abs=1e-4)
    assert t_two_sided_p(1.959964, 1e9) == pytest.approx(0.05, abs=1e-5)
    # scipy.stats.ttest_ind([1,2,3,4,5], [2,3,4,5,9], equal_var=False): t=1.142857, df=6.4521, p=0.29373
    result = welch([1, 2, 3, 4, 5], [2, 3, 4, 5, 9])
    assert result["t"] == pytest.approx(1.142857, abs=1e-6) and result["df"] == pytest.approx(6.45213, abs=1e-4)
    assert result["p"] == pytest.approx(0.29373, abs=1e-4)
    assert welch([1], [2, 3]) is None
    assert welch([3, 3], [3, 3])["p"] == 1.0
    assert percentile([10, 20, 30, 40], 50) == 20 and percentile([10, 20, 30, 40], 95) == 40


def test_serve_config_checks(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("routes:\n  r: {variants: {a: 60, b: 60}}\napi_keys:\n  - {key: plain}\nportt: 1\n")
    with pytest.raises(TuneforgeError) as caught:
        load_serve_config(path)
    lines = "\n".join(p.line() for p in caught.value.problems)
    assert "sum to 120" in lines and "sha256" in lines and "'portt' is not a known key" in lines
    config = load_serve_config(None, ["max_queue=3"], {"port": 9000}, api_keys=["k1"], admin_key="adm")
    assert config.max_queue == 3 and config.port == 9000 and config.host == "127.0.0.1"
    assert config.api_keys[0].sha256 != "k1" and len(config.admin_key_sha256) == 64  # never held in plain


def test_serve_with_vllm_backend_fails_clearly_without_vllm_or_gpu(run_cli, tmp_path):
    code, _, stderr = run_cli("serve", "--backend", "vllm", "--log-db", tmp_path / "log.db")
    assert code == 2 and "vllm_unavailable" in stderr and "vllm is not installed" in stderr
    assert "internal_error" not in stderr
