"""The LLM judge of `tuneforge eval` against tuneforge's own OpenAI-compatible server on 127.0.0.1.

The judge is the real server (uvicorn in a thread, see serve_fake.live_server) over a fake engine
whose answer is a function of the rendered prompt, so each test decides what the judge says: fair
scores, garbage, a judge that always prefers the first answer. The evaluated model is the tiny
random model. Nothing leaves loopback; every wait is bounded.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Callable

import pytest

from serve_fake import BASE, FakeEngine, live_server, wait_for
from tuneforge.errors import TuneforgeError
from tuneforge.evaluate import judge
from tuneforge.evaluate.config import EvalConfig
from tuneforge.evaluate.run import ALL_METRICS, Variant, evaluate, metric_names
from tuneforge.serve.config import ApiKey, ServeConfig, sha256_hex

KEY = "sk-judge-right"


class JudgeEngine(FakeEngine):
    """FakeEngine whose answer is `policy(prompt text)`; keeps every prompt it was given."""

    def __init__(self, tokenizer, policy: Callable[[str], str] | None = None):
        super().__init__(tokenizer)
        self.policy = policy or (lambda prompt: "OK")
        self.seen: list[str] = []

    def _answer(self, request):
        prompt = self._tokenizer.decode(request.prompt_ids)
        self.seen.append(prompt)
        ids = self._tokenizer(self.policy(prompt), add_special_tokens=False)["input_ids"]
        if len(ids) > request.max_tokens:
            return ids[:request.max_tokens], "length"
        return ids, "stop"


def tag(prompt: str, name: str) -> str | None:
    found = re.search(rf"<{name}>\n(.*?)\n</{name}>", prompt, re.S)
    return found.group(1) if found else None


def judge_prompts(engine: JudgeEngine) -> list[str]:
    return [p for p in engine.seen if "<conversation>" in p]


def example_number(prompt: str) -> int:
    return int(re.search(r"ticket (\d+):", tag(prompt, "conversation")).group(1))


def fair_scores(prompt: str) -> str:
    """Rubric judge: ticket i scores i % 5 + 1, whatever the answer; the reason needs escaping."""
    if "<conversation>" not in prompt:
        return "OK"
    i = example_number(prompt)
    return json.dumps({"score": i % 5 + 1, "reason": f"ticket {i} is <b>fine</b> & done"})


def prefers_a(prompt: str) -> str:
    return json.dumps({"winner": "A", "reason": "the first answer"}) if "<answer_a>" in prompt else "OK"


def prefers_longer(prompt: str) -> str:
    if "<answer_a>" not in prompt:
        return "OK"
    a, b = tag(prompt, "answer_a"), tag(prompt, "answer_b")
    winner = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"
    return json.dumps({"winner": winner, "reason": "longer is better here"})


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def live(tokenizer, tmp_path_factory):
    engine = JudgeEngine(tokenizer)
    config = ServeConfig(log_db=tmp_path_factory.mktemp("judge-open") / "log.db", request_timeout_s=30)
    with live_server(config, engine) as server:
        yield server


@pytest.fixture(scope="module")
def locked(tokenizer, tmp_path_factory):
    """A judge server that wants KEY."""
    engine = JudgeEngine(tokenizer, fair_scores)
    config = ServeConfig(log_db=tmp_path_factory.mktemp("judge-locked") / "log.db", request_timeout_s=30,
                         api_keys=[ApiKey(sha256=sha256_hex(KEY))])
    with live_server(config, engine) as server:
        yield server


@pytest.fixture
def judge_engine(live):
    """The open server's engine, with a fresh record and the fair rubric judge unless a test swaps it."""
    live.engine.seen.clear()
    live.engine.policy = fair_scores
    return live.engine


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> Path:
    """Six generation examples; ticket numbers 2..7 so the fair judge's scores vary."""
    path = tmp_path_factory.mktemp("judge-data") / "answers.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Answer the ticket."},
                          {"role": "user", "content": f"ticket {i}: my thing {i} is broken"},
                          {"role": "assistant", "content": f"a free answer number {i} here"}]} for i in range(2, 8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_variant(tiny_model: str, name: str, says: str | None = None) -> Variant:
    """The tiny model (whose greedy answers are blank lines), or with `says` one that repeats that
    word's first token: an answer that differs from the base model's."""
    def load():
        import torch

        from tuneforge.models import load_model, load_tokenizer

        model, tokenizer = load_model(tiny_model), load_tokenizer(tiny_model)
        if says:
            head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
            with torch.no_grad():
                head.weight.copy_(model.lm_head.weight)
                head.bias.zero_()
                head.bias[tokenizer(says, add_special_tokens=False)["input_ids"][0]] = 50.0
            model.lm_head = head
        return model, tokenizer
    return Variant(name, load)


def config(data: Path, tiny_model: str, live, out: Path, **keys) -> EvalConfig:
    values = dict(data=data, model=tiny_model, baselines=["zero-shot"], latency_samples=0, out=out, max_new_tokens=8,
                  judge_url=live.url + "/v1", judge_model=BASE, judge_concurrency=3)
    return EvalConfig(**{**values, **keys})


def measured(metrics: dict) -> set[str]:
    return {k for k, v in metrics.items() if v is not None}


def predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def no_model_may_load(monkeypatch) -> None:
    import tuneforge.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the judge problem was reported")
    monkeypatch.setattr(tuneforge.models, "load_model", refuse)


def problem_of(cfg: EvalConfig, variant_list=None):
    with pytest.raises(TuneforgeError) as caught:
        evaluate(cfg, variant_list, progress=False)
    return caught.value.problems[0]


# --- rubric ------------------------------------------------------------------------------------

def test_rubric_scores_are_parsed_averaged_and_shown_with_reasons(live, judge_engine, tiny_model, answers, tmp_path):
    cfg = config(answers, tiny_model, live, tmp_path / "eval")
    variants = [tiny_variant(tiny_model, "base-zero-shot"), tiny_variant(tiny_model, "tuned", says="fix")]
    result = evaluate(cfg, variants, progress=False)
    expected = sum(i % 5 + 1 for i in range(2, 8)) / 6  # (3+4+5+1+2+3)/6: raw 1-5, not normalised
    for name in ("base-zero-shot", "tuned"):
        found = result["variants"][name]
        assert found["judge_score"] == pytest.approx(expected) and found["judge_invalid_rate"] == 0.0
        # declared names: what --fail-if is checked against is exactly what a variant gets
        assert measured(found) == set(metric_names("generation", cfg, name)) and measured(found) <= ALL_METRICS
    assert result["judge"] == {"url": live.url + "/v1", "model": BASE, "mode": "rubric", "rubric": "built-in",
                               "scale": "1-5 (mean of the valid scores)", "requests": 12, "failed_requests": 0,
                               "asked_again": 0}
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["variants"]["tuned"]["judge_score"] == pytest.approx(expected)
    rows = predictions(tmp_path / "eval")
    for row in rows:
        i = int(re.search(r"ticket (\d+)", row["input"]).group(1))
        for name in ("base-zero-shot", "tuned"):
            assert row["judge"][name] == {"score": i % 5 + 1, "reason": f"ticket {i} is <b>fine</b> & done"}
    # the judge saw the task's conversation, the reference and the answer, and the built-in rubric
    prompts = judge_prompts(judge_engine)
    assert len(prompts) == 12
    assert any("<reference>\na free answer number 4 here\n</reference>" in p for p in prompts)
    assert all("[system]\nAnswer the ticket." in tag(p, "conversation") for p in prompts)
    assert all(judge.RUBRIC.splitlines()[1] in p for p in prompts)
    html = (tmp_path / "eval" / "report.html").read_text()
    assert '<h2 id="judge">Judge</h2>' in html and "tuned judge" in html
    assert "1/5: ticket 5 is &lt;b&gt;fine&lt;/b&gt; &amp; done" in html  # the worst-judged example, escaped
    assert "<b>fine</b>" not in html
    assert "1/5: ticket 5 is" in (tmp_path / "eval" / "report.md").read_text()


def test_a_rubric_file_is_what_the_judge_grades_by(live, judge_engine, tiny_model, answers, tmp_path):
    rubric = tmp_path / "rubric.md"
    rubric.write_text("Score 5 only when the answer names the ticket number.\n")
    result = evaluate(config(answers, tiny_model, live, tmp_path / "eval", rubric=rubric, judge_concurrency=1),
                      progress=False)
    assert result["judge"]["rubric"] == str(rubric)
    assert all(tag(p, "rubric") == "Score 5 only when the answer names the ticket number."
               for p in judge_prompts(judge_engine))


def test_garbage_is_asked_again_once_then_counted_invalid(live, judge_engine, tiny_model, answers, tmp_path):
    judge_engine.policy = lambda prompt: "Sure! I would say the answer is rather good." if "<answer>" in prompt \
        else "OK"
    result = evaluate(config(answers, tiny_model, live, tmp_path / "eval"), progress=False)
    found = result["variants"]["base-zero-shot"]
    assert found["judge_invalid_rate"] == 1.0 and found["judge_score"] is None
    assert result["judge"]["requests"] == 12 and result["judge"]["asked_again"] == 6  # 6 examples, 2 tries each
    again = [p for p in judge_prompts(judge_engine) if "That reply was not the JSON object asked for" in p]
    assert len(again) == 6 and all("Sure! I would say" in p for p in again)
    reasons = [row["judge"]["base-zero-shot"] for row in predictions(tmp_path / "eval")]
    assert all(r["score"] is None and r["reason"].startswith("invalid reply: 'Sure!") for r in reasons)
    assert "invalid: invalid reply" in (tmp_path / "eval" / "report.html").read_text()


def test_a_bad_first_reply_can_be_fixed_by_the_retry(live, judge_engine, tiny_model, answers, tmp_path):
    def policy(prompt: str) -> str:
        if "<answer>" not in prompt:
            return "OK"
        i = example_number(prompt)
        if "That reply was not the JSON" in prompt:  # the retry: odd tickets still answer out of range
            return json.dumps({"score": 9 if i % 2 else 4, "reason": "second try"})
        return "```json\n{\"score\": \"four\"}\n```"
    judge_engine.policy = policy
    found = evaluate(config(answers, tiny_model, live, tmp_path / "eval"), progress=False)["variants"]["base-zero-shot"]
    assert found["judge_invalid_rate"] == 0.5 and found["judge_score"] == 4.0


@pytest.mark.parametrize("reply, parsed", [
    ('{"score": 4, "reason": "close"}', (4, "close")),
    ('  ```json\n{"score": 1, "reason": " wrong ", "extra": 1}\n```  ', (1, "wrong")),
    ('{"score": 0, "reason": "x"}', None), ('{"score": 6, "reason": "x"}', None),
    ('{"score": 4.0, "reason": "x"}', None), ('{"score": true, "reason": "x"}', None),
    ('{"score": "4", "reason": "x"}', None), ('{"score": 4}', None), ("Score: 4", None),
    ('The JSON: {"score": 4, "reason": "x"}', None), ("[4]", None), ("", None),
])
def test_rubric_replies_are_strict_json(reply, parsed):
    assert judge.parse_score(reply) == parsed


def test_winner_replies_are_strict_json():
    assert judge.parse_winner('{"winner": "a", "reason": "r"}') == ("A", "r")
    assert judge.parse_winner('{"winner": "TIE", "reason": "r"}') == ("tie", "r")
    assert judge.parse_winner('{"winner": "C", "reason": "r"}') is None
    assert judge.parse_winner('{"winner": "A"}') is None
    assert judge.parse_winner("A") is None


# --- pairwise ----------------------------------------------------------------------------------

def test_verdicts_need_both_orders_to_agree():
    # picks: (variant shown first, baseline shown first)
    assert judge.verdict("A", "B") == "win" and judge.verdict("B", "A") == "loss"
    assert judge.verdict("A", "A") == "tie" and judge.verdict("B", "B") == "tie"  # position bias
    assert judge.verdict("tie", "tie") == "tie" and judge.verdict("A", "tie") == "tie"
    assert judge.verdict(None, "B") == "invalid"


def direct_plan(live, mode: str = "pairwise") -> judge.Plan:
    client = judge.Client(judge.Endpoint(live.url + "/v1", BASE, timeout_s=20))
    return judge.Plan(client, mode, judge.RUBRIC, "built-in", ["base-zero-shot", "base-few-shot"], ["tuned"], 4)


CONVERSATIONS = [[{"role": "user", "content": f"ticket {i}: help"}] for i in range(5)]
REFERENCES = [f"reference {i}" for i in range(5)]
OUTPUTS = {"base-zero-shot": ["zero"] * 5,
           "base-few-shot": ["short", "a long base answer", "same", "short", "eq"],
           "tuned": ["a longer tuned answer", "short", "same", "mid one", "EQ"]}


def test_pairwise_counts_wins_losses_and_ties_against_the_best_baseline(live, judge_engine):
    judge_engine.policy = prefers_longer
    found, entries, summary = judge.judge(direct_plan(live), CONVERSATIONS, REFERENCES, OUTPUTS,
                                          {"base-zero-shot": 0.1, "base-few-shot": 0.4, "tuned": 0.9})
    assert summary["baseline"] == "base-few-shot"  # the higher main metric
    assert [e["verdict"] for e in entries["tuned"]] == ["win", "loss", "tie", "win", "tie"]
    assert found["tuned"] == {"judge_win_rate": 0.4, "judge_tie_rate": 0.4, "judge_loss_rate": 0.2,
                              "judge_invalid_rate": 0.0}
    assert set(found) == {"tuned"}  # baselines are the comparison, not compared
    # identical answers cost no request; every other example is asked in both orders
    assert entries["tuned"][2]["reason"] == "identical answers" and summary["requests"] == 8
    assert entries["tuned"][0]["picks"] == {"variant_first": "A", "baseline_first": "B"}
    pairs = {(tag(p, "answer_a"), tag(p, "answer_b")) for p in judge_prompts(judge_engine)}
    assert ("a longer tuned answer", "short") in pairs and ("short", "a longer tuned answer") in pairs


def test_a_judge_that_always_prefers_a_gives_ties_not_wins(live, judge_engine):
    judge_engine.policy = prefers_a
    found, entries, _ = judge.judge(direct_plan(live), CONVERSATIONS, REFERENCES, OUTPUTS,
                                    {"base-zero-shot": 0.5, "base-few-shot": 0.4})
    assert entries["tuned"][0]["against"] == "base-zero-shot"
    assert found["tuned"] == {"judge_win_rate": 0.0, "judge_tie_rate": 1.0, "judge_loss_rate": 0.0,
                              "judge_invalid_rate": 0.0}
    assert all(e["picks"] == {"variant_first": "A", "baseline_first": "A"} for e in entries["tuned"])


def test_pairwise_end_to_end_with_a_position_biased_judge(live, judge_engine, tiny_model, answers, tmp_path):
    judge_engine.policy = prefers_a
    cfg = config(answers, tiny_model, live, tmp_path / "eval", judge_mode="pairwise")
    variants = [tiny_variant(tiny_model, "base-zero-shot"), tiny_variant(tiny_model, "tuned", says="fix")]
    result = evaluate(cfg, variants, progress=False)
    assert result["variants"]["tuned"]["judge_tie_rate"] == 1.0
    assert result["variants"]["tuned"]["judge_win_rate"] == result["variants"]["tuned"]["judge_loss_rate"] == 0.0
    assert "judge_win_rate" not in result["variants"]["base-zero-shot"]
    assert measured(result["variants"]["tuned"]) == set(metric_names("generation", cfg, "tuned"))
    rows = predictions(tmp_path / "eval")
    assert all(r["outputs"]["tuned"] and r["outputs"]["base-zero-shot"] == "" for r in rows)  # all differ
    assert result["judge"]["requests"] == 12 and result["judge"]["baseline"] == "base-zero-shot"
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "tie vs base-zero-shot (picked A then A): tuned first: the first answer" in html


def test_pairwise_needs_a_baseline_and_an_adapter(live, tiny_model, answers, tmp_path, monkeypatch):
    no_model_may_load(monkeypatch)
    cfg = config(answers, tiny_model, live, tmp_path / "eval", judge_mode="pairwise")
    assert problem_of(cfg, [tiny_variant(tiny_model, "base-zero-shot")]).code == "judge_needs_adapter"
    cfg = config(answers, tiny_model, live, tmp_path / "eval", judge_mode="pairwise", baselines=[])
    assert problem_of(cfg, [tiny_variant(tiny_model, "tuned")]).code == "judge_needs_baseline"


# --- the endpoint, checked before any local inference ------------------------------------------

def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed on exit: nothing listens there


def eval_args(data: Path, tiny_model: str, url: str, out: Path, *more) -> list:
    return ["eval", "--data", data, "--model", tiny_model, "--baselines", "zero-shot", "--out", out,
            "--set", "latency_samples=0", "--set", "max_new_tokens=8", "--judge-url", url, *more]


def test_an_endpoint_that_is_down_is_one_line_before_any_model_loads(run_cli, tiny_model, answers, tmp_path,
                                                                    monkeypatch):
    no_model_may_load(monkeypatch)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    start = time.monotonic()
    code, _, err = run_cli(*eval_args(answers, tiny_model, url, tmp_path / "eval", "--judge-model", "m"))
    assert code == 2 and err.strip().splitlines() == [
        f"judge_unreachable: cannot reach {url} (connection refused); start the judge's server or fix --judge-url"]
    assert time.monotonic() - start < 30 and not (tmp_path / "eval" / "eval.json").exists()


def test_a_wrong_or_missing_key_is_judge_auth(run_cli, locked, tiny_model, answers, tmp_path, monkeypatch):
    no_model_may_load(monkeypatch)
    monkeypatch.delenv(judge.KEY_ENV, raising=False)
    url = locked.url + "/v1"
    code, _, err = run_cli(*eval_args(answers, tiny_model, url, tmp_path / "e", "--judge-model", BASE,
                                      "--judge-key", "sk-wrong"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"judge_auth: {url} answered 401: the key was refused") and "sk-wrong" not in err
    code, _, err = run_cli(*eval_args(answers, tiny_model, url, tmp_path / "e", "--judge-model", BASE))
    assert code == 2 and err.startswith("judge_auth: ") and "no key was sent" in err


def test_the_right_key_from_the_environment_is_used_and_never_written(locked, tiny_model, answers, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv(judge.KEY_ENV, KEY)
    cfg = config(answers, tiny_model, locked, tmp_path / "eval")
    assert KEY not in repr(cfg) and KEY not in str(cfg.model_dump())
    result = evaluate(cfg, progress=False)
    assert result["variants"]["base-zero-shot"]["judge_invalid_rate"] == 0.0
    for name in ("eval.json", "predictions.jsonl", "report.html", "report.md"):
        assert KEY not in (tmp_path / "eval" / name).read_text()


def test_an_unknown_model_or_a_url_without_the_api(live, tiny_model, answers, tmp_path, monkeypatch):
    no_model_may_load(monkeypatch)
    found = problem_of(config(answers, tiny_model, live, tmp_path / "e", judge_model="nope"))
    assert found.code == "judge_model_not_found"
    assert "no model 'nope'" in found.message and f"models there: {BASE}" in found.message
    found = problem_of(config(answers, tiny_model, live, tmp_path / "e", judge_url=live.url + "/elsewhere"))
    assert found.code == "judge_not_openai" and "ending in /v1" in found.message
    # a bare host:port is taken as its /v1, and a pasted route as its base
    for url in (live.url, live.url + "/v1/chat/completions"):
        assert judge.endpoint(config(answers, tiny_model, live, tmp_path / "e", judge_url=url)).url == live.url + "/v1"


def test_judge_settings_are_checked_with_the_config(tmp_path, answers):
    from tuneforge.config import build_config

    with pytest.raises(TuneforgeError) as caught:
        build_config(EvalConfig, None, ["judge_mode=pairwise", "judge_concurrency=0"],
                     {"data": answers, "judge_model": "m"})
    lines = [p.line() for p in caught.value.problems]
    assert any("judge_concurrency: expected a number of at least 1" in line for line in lines)
    assert any("judge_model, judge_mode, judge_concurrency: only used with judge_url" in line for line in lines)
    with pytest.raises(TuneforgeError) as caught:
        build_config(EvalConfig, None, ["judge_url=ftp://x", "judge_mode=best", "judge_timeout_s=0"], {"data": answers})
    text = str(caught.value)
    assert "judge_url: expected an http:// or https:// URL" in text and "judge_mode: expected 'rubric' or " \
        "'pairwise'" in text and "judge_timeout_s: expected a number above 0" in text
    with pytest.raises(TuneforgeError, match="judge_url: the URL holds a user or password") as caught:
        build_config(EvalConfig, None, [], {"data": answers, "judge_url": "https://me:sk-secret@host/v1",
                                            "judge_model": "m"})
    assert "sk-secret" not in str(caught.value)
    with pytest.raises(TuneforgeError, match="judge_model .* is required with judge_url"):
        build_config(EvalConfig, None, [], {"data": answers, "judge_url": "http://127.0.0.1:1/v1"})


def test_a_missing_or_empty_rubric_fails_before_the_endpoint_is_asked(tiny_model, answers, tmp_path, monkeypatch):
    no_model_may_load(monkeypatch)
    cfg = EvalConfig(data=answers, model=tiny_model, out=tmp_path / "e", judge_url=f"http://127.0.0.1:{closed_port()}",
                     judge_model="m", rubric=tmp_path / "missing.md")
    assert (problem_of(cfg).code, problem_of(cfg).where) == ("rubric_not_found", str(tmp_path / "missing.md"))
    (tmp_path / "empty.md").write_text(" \n")
    cfg.rubric = tmp_path / "empty.md"
    assert problem_of(cfg).code == "empty_rubric"


def test_a_judge_that_dies_mid_run_costs_its_verdicts_not_the_run(monkeypatch):
    """After the preflight: failures are invalid verdicts with their reason, and the judge is given up
    after FAILS_IN_A_ROW of them instead of being asked for every example."""
    monkeypatch.setattr(judge, "BACKOFF_S", 0.0)
    client = judge.Client(judge.Endpoint(f"http://127.0.0.1:{closed_port()}/v1", "m", timeout_s=5))
    plan = judge.Plan(client, "rubric", judge.RUBRIC, "built-in", [], [], 1)
    n = 20
    found, entries, summary = judge.judge(plan, CONVERSATIONS * 4, REFERENCES * 4, {"tuned": ["x"] * n})
    assert found["tuned"] == {"judge_score": None, "judge_invalid_rate": 1.0}
    assert summary["requests"] == summary["failed_requests"] == judge.FAILS_IN_A_ROW
    reasons = [e["reason"] for e in entries["tuned"]]
    assert reasons[0] == "judge request failed: connection refused"
    assert reasons[-1].startswith(f"not asked: the judge failed {judge.FAILS_IN_A_ROW} times in a row")


def test_transient_failures_are_retried_and_a_refused_key_is_not(monkeypatch):
    monkeypatch.setattr(judge, "BACKOFF_S", 0.0)
    tries = []

    def flaky(self, messages, max_tokens=judge.MAX_TOKENS):
        tries.append(1)
        if len(tries) <= judge.RETRIES:
            raise judge.CallFailed("server", "overloaded", 503)
        if len(tries) > judge.RETRIES + 1:
            raise judge.CallFailed("auth", "Incorrect API key", 401)
        return '{"score": 3, "reason": "fine"}'
    monkeypatch.setattr(judge.Client, "chat", flaky)
    plan = judge.Plan(judge.Client(judge.Endpoint("http://127.0.0.1:9/v1", "m")), "rubric", judge.RUBRIC,
                      "built-in", [], [], 1)
    found, entries, summary = judge.judge(plan, CONVERSATIONS[:2], REFERENCES[:2], {"tuned": ["x", "y"]})
    assert [e["score"] for e in entries["tuned"]] == [3, None] and len(tries) == judge.RETRIES + 2
    assert entries["tuned"][1]["reason"] == "judge request failed: 401: Incorrect API key"
    assert found["tuned"] == {"judge_score": 3.0, "judge_invalid_rate": 0.5} and summary["failed_requests"] == 1


def test_a_judge_slower_than_the_timeout_is_cut_off(live, judge_engine, monkeypatch):
    monkeypatch.setattr(judge, "RETRIES", 0)
    judge_engine.delay_s = 0.2  # per token: the ~20-token verdict takes seconds
    try:
        client = judge.Client(judge.Endpoint(live.url + "/v1", BASE, timeout_s=0.5))
        plan = judge.Plan(client, "rubric", judge.RUBRIC, "built-in", [], [], 1)
        start = time.monotonic()
        _, entries, _ = judge.judge(plan, CONVERSATIONS[:1], REFERENCES[:1], {"tuned": ["x"]})
        assert entries["tuned"][0] == {"score": None, "reason": "judge request failed: no answer within 0.5 s"}
        assert time.monotonic() - start < 5
    finally:
        judge_engine.delay_s = 0.0
    wait_for(lambda: not judge_engine.active, what="the abandoned request to stop")


# --- --fail-if ---------------------------------------------------------------------------------

def test_fail_if_gates_on_judge_metrics(run_cli, live, judge_engine, tiny_model, answers, tmp_path, monkeypatch):
    url = live.url + "/v1"
    args = eval_args(answers, tiny_model, url, tmp_path / "a", "--judge-model", BASE)
    code, out, err = run_cli(*args, "--fail-if", "base-zero-shot.judge_score < 3.5")  # the mean is 3.0
    assert code == 1 and "fail-if holds: base-zero-shot.judge_score < 3.5" in err
    assert "judge_score" in out and f"judge: {BASE} at {url} (rubric)" in out
    code, _, err = run_cli(*eval_args(answers, tiny_model, url, tmp_path / "b", "--judge-model", BASE,
                                      "--fail-if", "base-zero-shot.judge_score < 2.5"))
    assert code == 0, err
    # a judge metric this mode does not produce is refused before any model loads
    with monkeypatch.context() as patch:
        no_model_may_load(patch)
        code, _, err = run_cli(*eval_args(answers, tiny_model, url, tmp_path / "c", "--judge-model", BASE,
                                          "--fail-if", "base-zero-shot.judge_win_rate < 0.5"))
    assert code == 2 and "invalid_fail_if: unknown metric 'judge_win_rate'" in err and "judge_score" in err
    # a judge that never answered properly leaves judge_score without a value: said so, exit 2
    judge_engine.policy = lambda prompt: "no" if "<answer>" in prompt else "OK"
    code, _, err = run_cli(*eval_args(answers, tiny_model, url, tmp_path / "d", "--judge-model", BASE,
                                      "--fail-if", "base-zero-shot.judge_score < 3"))
    assert code == 2 and "judge_no_scores: base-zero-shot.judge_score has no value" in err
    assert "warning: the judge gave no valid verdict for some answers (base-zero-shot 100%" in err
