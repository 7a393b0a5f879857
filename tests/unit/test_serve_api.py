"""The OpenAI routes of `tuneforge serve` through the real `openai` client against a live server
(uvicorn on 127.0.0.1, fake engine): shapes, streaming, completions, and every error status."""

from __future__ import annotations

import http.client
import json
import threading

import openai
import pytest

from serve_fake import BASE, FakeEngine, live_server, make_adapter, reply_for, wait_for
from tuneforge.inference.api import GenRequest
from tuneforge.models.template import encode_prompt
from tuneforge.serve.config import ApiKey, RouteConfig, ServeConfig, sha256_hex

ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my refund?"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def live(tokenizer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-api")
    engine = FakeEngine(tokenizer, adapters={"v2": str(make_adapter(tmp / "v2"))})
    config = ServeConfig(log_db=tmp / "log.db", routes={"support": RouteConfig(variants={BASE: 50, "v2": 50})},
                         request_timeout_s=30)
    with live_server(config, engine) as server:
        yield server


def expected(tokenizer, messages, model=BASE, max_tokens=2048, seed=None) -> str:
    return reply_for(GenRequest(model, encode_prompt(tokenizer, messages), max_tokens, seed=seed))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
        chunked: bool = False) -> tuple[int, dict, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json", **(headers or {})},
                     encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def error_of(body: bytes) -> dict:
    data = json.loads(body)
    assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}, data
    return data["error"]


# ---- the happy paths --------------------------------------------------------------------------

def test_models_list_names_the_base_adapters_and_routes(live):
    client = live.client()
    models = client.models.list()
    assert [m.id for m in models.data] == [BASE, "v2", "support"]
    assert all(m.object == "model" and m.owned_by == "tuneforge" for m in models.data)
    assert client.models.retrieve("v2").id == "v2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_completion_has_openai_shape_usage_and_the_templated_prompt(live, tokenizer):
    response = live.client().chat.completions.with_raw_response.create(
        model=BASE, messages=ASK, temperature=0, max_tokens=200, user="alice")
    completion = response.parse()
    ids = encode_prompt(tokenizer, ASK)
    answer = expected(tokenizer, ASK)
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == BASE and completion.created > 0
    choice = completion.choices[0]
    assert (choice.index, choice.message.role, choice.message.content, choice.finish_reason) == (
        0, "assistant", answer, "stop")
    assert completion.usage.prompt_tokens == len(ids)
    assert completion.usage.completion_tokens == n_tokens(tokenizer, answer)
    assert completion.usage.total_tokens == len(ids) + n_tokens(tokenizer, answer)
    assert response.headers["x-tuneforge-variant"] == BASE
    assert response.headers["x-request-id"] == completion.id
    sent = next(r for r in live.engine.requests if r.request_id.startswith(completion.id))
    assert (sent.prompt_ids, sent.temperature, sent.max_tokens, sent.model) == (ids, 0, 200, BASE)


def test_text_parts_and_developer_role_render_as_plain_turns(live, tokenizer):
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Where is"}, {"type": "text", "text": "it?"}]}]
    completion = live.client().chat.completions.create(model=BASE, messages=messages)
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is\nit?"}]
    assert completion.choices[0].message.content == expected(tokenizer, plain)


def test_n_seed_stop_and_length(live, tokenizer):
    client = live.client()
    completion = client.chat.completions.create(model=BASE, messages=ASK, n=2, seed=7, stop=["Goodbye"])
    texts = [c.message.content for c in completion.choices]
    assert [c.index for c in completion.choices] == [0, 1]
    assert "Seed 7." in texts[0] and "Seed 8." in texts[1]  # each choice draws with its own seed
    assert all("Goodbye" not in t and c.finish_reason == "stop" for t, c in zip(texts, completion.choices))
    short = client.chat.completions.create(model=BASE, messages=ASK, max_completion_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3


def test_streaming_chunks_usage_and_done(live, tokenizer):
    stream = live.client().chat.completions.create(model=BASE, messages=ASK, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].id.startswith("chatcmpl-") and chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = expected(tokenizer, ASK)
    assert text == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n_tokens(tokenizer, answer)
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_wire_format_is_sse_ending_in_done(live):
    body = json.dumps({"model": BASE, "messages": ASK, "stream": True}).encode()
    status, headers, data = raw(live.url, "POST", "/v1/chat/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = data.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert json.loads(events[-3][6:])["choices"][0]["finish_reason"] == "stop"


def test_completions_plain_list_default_length_and_stream(live, tokenizer):
    client = live.client()
    prompts = ["Once upon a time", "The app crashes"]
    completion = client.completions.create(model=BASE, prompt=prompts, max_tokens=100)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    want = [reply_for(GenRequest(BASE, tokenizer(p)["input_ids"], 100)) for p in prompts]
    assert [c.text for c in completion.choices] == want and [c.index for c in completion.choices] == [0, 1]
    assert completion.usage.prompt_tokens == sum(len(tokenizer(p)["input_ids"]) for p in prompts)
    default = client.completions.create(model=BASE, prompt="Once upon a time")
    assert default.usage.completion_tokens == 16 and default.choices[0].finish_reason == "length"  # spec default
    chunks = list(client.completions.create(model=BASE, prompt=prompts[0], max_tokens=100, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want[0]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_neutral_values_of_unsupported_fields_and_bookkeeping_fields_are_accepted(live):
    completion = live.client().chat.completions.create(
        model=BASE, messages=ASK, frequency_penalty=0, presence_penalty=0.0, logprobs=False, store=False,
        metadata={"ticket": "42"}, response_format={"type": "text"}, parallel_tool_calls=True,
        service_tier="auto", prompt_cache_key="k", safety_identifier="u1")
    assert completion.choices[0].finish_reason == "stop"


# ---- bad input: each gets its OpenAI error and the server stays up ---------------------------

def test_malformed_json_and_non_object_bodies_are_400(live):
    status, _, body = raw(live.url, "POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [')
    assert status == 400 and error_of(body)["code"] == "invalid_json"
    assert error_of(body)["type"] == "invalid_request_error"
    status, _, body = raw(live.url, "POST", "/v1/chat/completions", b"[1, 2]")
    assert status == 400 and "JSON object" in error_of(body)["message"]
    status, _, body = raw(live.url, "POST", "/v1/chat/completions", b"")
    assert status == 400 and error_of(body)["code"] == "invalid_json"


@pytest.mark.parametrize("kwargs, param, code", [
    ({"max_tokens": "10"}, "max_tokens", "invalid_type"),
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"n": 1.5}, "n", "invalid_type"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "invalid_value"),
    ({"messages": []}, "messages", "invalid_value"),
    ({"temperature": 3}, "temperature", "invalid_value"),
    ({"extra_body": {"top_k": 5}}, "top_k", "unknown_parameter"),
    ({"frequency_penalty": 0.5}, "frequency_penalty", "unsupported_parameter"),
    ({"logprobs": True}, "logprobs", "unsupported_parameter"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content", "unsupported_parameter"),
    ({"max_tokens": 1_000_000_000}, "max_tokens", "invalid_value"),
    ({"stream_options": {"include_usage": True}}, None, "invalid_value"),
])
def test_bad_fields_are_400_naming_the_param(live, kwargs, param, code):
    args = {"model": BASE, "messages": ASK, **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        live.client().chat.completions.create(**args)
    assert caught.value.status_code == 400
    assert (caught.value.param, caught.value.code) == (param, code), caught.value.message


def test_max_tokens_of_a_billion_is_refused_not_capped(live):
    with pytest.raises(openai.BadRequestError) as caught:
        live.client().chat.completions.create(model=BASE, messages=ASK, max_tokens=1_000_000_000)
    assert "at most 2048" in caught.value.message


def test_ten_thousand_messages_are_400_and_the_server_stays_up(live):
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(10_000)]
    with pytest.raises(openai.BadRequestError) as caught:
        live.client().chat.completions.create(model=BASE, messages=messages)
    assert caught.value.param == "messages" and "10000" in caught.value.message
    assert live.client().chat.completions.create(model=BASE, messages=ASK).choices


def test_unknown_model_and_unknown_url_are_404(live):
    with pytest.raises(openai.NotFoundError) as caught:
        live.client().chat.completions.create(model="gpt-5", messages=ASK)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    status, _, body = raw(live.url, "GET", "/v1/nothing-here")
    assert status == 404 and error_of(body)["code"] == "unknown_url"


def test_ten_megabyte_body_is_413_by_content_length_and_by_chunks(live):
    with pytest.raises(openai.APIStatusError) as caught:
        live.client().chat.completions.create(model=BASE, messages=[{"role": "user", "content": "x" * 10_000_000}])
    assert caught.value.status_code == 413 and caught.value.code == "request_too_large"
    chunks = (b"x" * 65536 for _ in range(48))  # 3 MB, no Content-Length
    status, _, body = raw(live.url, "POST", "/v1/chat/completions", chunks, chunked=True)
    assert status == 413 and error_of(body)["code"] == "request_too_large"
    assert live.client().chat.completions.create(model=BASE, messages=ASK).choices


def test_full_queue_is_429_and_the_waiting_request_still_finishes(live, tokenizer):
    engine = live.engine
    engine.max_queue, engine.paused = 1, True
    results = {}

    def first():
        results["first"] = live.client().chat.completions.create(model=BASE, messages=ASK)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        wait_for(lambda: len(engine.active) == 1, what="the first request to be running")
        with pytest.raises(openai.RateLimitError) as caught:
            live.client().chat.completions.create(model=BASE, messages=ASK)
        assert caught.value.status_code == 429 and caught.value.code == "queue_full"
        assert caught.value.response.headers["retry-after"] == "1"
        with pytest.raises(openai.RateLimitError):  # a stream is refused with the status, not mid-stream
            live.client().chat.completions.create(model=BASE, messages=ASK, stream=True)
    finally:
        engine.paused = False
        thread.join(timeout=20)
        engine.max_queue = 64
    assert results["first"].choices[0].message.content == expected(tokenizer, ASK)


# ---- keys ---------------------------------------------------------------------------------------

def test_api_keys_admin_key_and_keys_limited_to_models(tokenizer, tmp_path):
    engine = FakeEngine(tokenizer, adapters={"v2": str(make_adapter(tmp_path / "v2"))})
    config = ServeConfig(log_db=tmp_path / "log.db",
                         api_keys=[ApiKey(sha256=sha256_hex("good")), ApiKey(sha256=sha256_hex("limited"),
                                                                             models=["v2"])],
                         admin_key_sha256=sha256_hex("admin"))
    with live_server(config, engine) as live:
        with pytest.raises(openai.AuthenticationError) as caught:
            live.client("wrong").models.list()
        assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
        status, _, body = raw(live.url, "POST", "/v1/chat/completions", json.dumps(
            {"model": BASE, "messages": ASK}).encode())
        assert status == 401 and error_of(body)["code"] == "invalid_api_key"
        assert live.client("good").chat.completions.create(model=BASE, messages=ASK).choices
        assert [m.id for m in live.client("limited").models.list().data] == ["v2"]
        assert live.client("limited").chat.completions.create(model="v2", messages=ASK).choices
        with pytest.raises(openai.NotFoundError):  # not a 403: a limited key learns nothing of other models
            live.client("limited").chat.completions.create(model=BASE, messages=ASK)
        assert live.client("admin").chat.completions.create(model=BASE, messages=ASK).choices
        status, _, body = raw(live.url, "GET", "/v1/adapters", headers={"authorization": "Bearer good"})
        assert status == 401


def test_admin_routes_are_off_without_an_admin_key(live):
    status, _, body = raw(live.url, "GET", "/v1/adapters")
    assert status == 403 and error_of(body)["code"] == "admin_disabled"
