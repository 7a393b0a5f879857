"""A request's life in `tuneforge serve`, on a live server with a slowed fake engine: a client that
leaves mid-stream stops its own generation and nothing else; a request past its timeout is
abandoned with 504; a shutdown lets in-flight requests finish while new ones get 503."""

from __future__ import annotations

import json
import signal
import socket
import threading
import urllib.error
import urllib.request

import openai
import pytest

from serve_fake import BASE, FakeEngine, live_server, reply_for, wait_for
from tuneforge.inference.api import GenRequest
from tuneforge.models.template import encode_prompt
from tuneforge.serve.config import ServeConfig
from tuneforge.serve.log import connect

ASK = [{"role": "user", "content": "Where is my refund?"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def answer(tokenizer, model=BASE):
    return reply_for(GenRequest(model, encode_prompt(tokenizer, ASK), 2048))


def status_of(live, completion_id: str) -> int:
    live.service.log.flush()
    conn = connect(live.service.config.log_db, readonly=True)
    try:
        return conn.execute("SELECT status FROM interactions WHERE id = ?", (completion_id,)).fetchone()[0]
    finally:
        conn.close()


def test_client_leaving_mid_stream_stops_its_generation_and_no_other(tokenizer, tmp_path):
    engine = FakeEngine(tokenizer, delay_s=0.02)
    with live_server(ServeConfig(log_db=tmp_path / "log.db"), engine) as live:
        results: dict = {}

        def bystander():
            stream = live.client().chat.completions.create(model=BASE, messages=ASK, stream=True)
            results["text"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        other = threading.Thread(target=bystander)
        other.start()
        stream = live.client().chat.completions.create(model=BASE, messages=ASK, stream=True)
        seen = []
        for chunk in stream:
            seen.append(chunk)
            if len(seen) == 3:
                break
        stream.close()  # the connection goes; the server notices without writing
        victim = seen[0].id
        wait_for(lambda: any(r.startswith(victim) for r in engine.cancelled), what="the abandoned generation")
        other.join(timeout=30)
        total = len(tokenizer(answer(tokenizer), add_special_tokens=False)["input_ids"])
        assert engine.emitted[f"{victim}/0"] < total  # it stopped early, not after the whole answer
        assert results["text"] == answer(tokenizer)  # the other stream was untouched
        assert not any(r.startswith(victim) for r in engine.finished)
        wait_for(lambda: status_of(live, victim) == 499, what="the log row")
        assert live.client().chat.completions.create(model=BASE, messages=ASK).choices  # still serving


def test_client_leaving_a_plain_request_stops_its_generation(tokenizer, tmp_path):
    engine = FakeEngine(tokenizer, delay_s=0.05)
    with live_server(ServeConfig(log_db=tmp_path / "log.db"), engine) as live:
        host, port = live.url.removeprefix("http://").split(":")
        body = json.dumps({"model": BASE, "messages": ASK}).encode()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            wait_for(lambda: len(engine.active) == 1, what="generation to start")
        wait_for(lambda: len(engine.cancelled) == 1, what="the abandoned generation")
        assert engine.finished == []


def test_request_past_its_timeout_is_504_and_abandoned(tokenizer, tmp_path):
    engine = FakeEngine(tokenizer, delay_s=0.05)
    with live_server(ServeConfig(log_db=tmp_path / "log.db", request_timeout_s=0.4), engine) as live:
        with pytest.raises(openai.APIStatusError) as caught:
            live.client().chat.completions.create(model=BASE, messages=ASK)
        assert caught.value.status_code == 504 and caught.value.code == "request_timeout"
        wait_for(lambda: len(engine.cancelled) == 1, what="the abandoned generation")
        stream = live.client().chat.completions.create(model=BASE, messages=ASK, stream=True)
        with pytest.raises(openai.APIError) as caught:  # mid-stream: an error event, then the end
            for _ in stream:
                pass
        assert "did not finish" in str(caught.value)
        wait_for(lambda: len(engine.cancelled) == 2, what="the abandoned stream")


def test_shutdown_finishes_in_flight_requests_and_refuses_new_ones(tokenizer, tmp_path):
    engine = FakeEngine(tokenizer)
    engine.paused = True
    with live_server(ServeConfig(log_db=tmp_path / "log.db"), engine) as live:
        results: dict = {}

        def in_flight():
            stream = live.client().chat.completions.create(model=BASE, messages=ASK, stream=True)
            results["text"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        thread = threading.Thread(target=in_flight)
        thread.start()
        wait_for(lambda: len(engine.active) == 1, what="the in-flight request")
        live.server.handle_exit(signal.SIGTERM, None)  # what the SIGTERM handler runs
        with pytest.raises(openai.InternalServerError) as caught:
            live.client().chat.completions.create(model=BASE, messages=ASK)
        assert caught.value.status_code == 503 and caught.value.code == "shutting_down"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(live.url + "/health", timeout=10)
        assert refused.value.code == 503 and json.loads(refused.value.read()) == {"status": "draining"}
        assert not live.server.should_exit  # still waiting for the in-flight request
        engine.paused = False
        thread.join(timeout=30)
        assert results["text"] == answer(tokenizer)
        wait_for(lambda: live.server.should_exit, what="the drain to end the server")
    assert engine.closing  # the lifespan closed the engine after the last connection
