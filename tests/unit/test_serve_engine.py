"""`tuneforge serve` end to end over the real engine (inference.scheduler.Scheduler) on the tiny
model: the greedy answer through the `openai` client, streamed or not, is the answer
`tuneforge generate` gives for the same chat."""

from __future__ import annotations

import pytest

from serve_fake import live_server
from tuneforge.models.generate import complete
from tuneforge.serve.config import ServeConfig


@pytest.fixture(scope="module")
def live(tiny_model, tmp_path_factory):
    from tuneforge.inference.scheduler import Scheduler

    # float32 without autocast on both sides, so the comparison is exact on any CPU
    engine = Scheduler(tiny_model, name="tiny", max_batch=4, bf16=False)
    config = ServeConfig(model=tiny_model, model_name="tiny", log_db=tmp_path_factory.mktemp("serve") / "log.db")
    with live_server(config, engine) as server:
        yield server


@pytest.mark.parametrize("question", ["My card was charged twice", "The app crashes when I open the camera"])
def test_served_greedy_answer_equals_generate(live, tiny_model, question):
    client = live.client()
    messages = [{"role": "user", "content": question}]
    expected = complete(tiny_model, question, chat=True, max_new_tokens=12, temperature=0.0)
    plain = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12)
    assert plain.choices[0].message.content == expected
    assert plain.usage.completion_tokens <= 12 and plain.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected


def test_real_engine_refusals_map_to_statuses(live):
    import openai

    client = live.client()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    many = client.completions.create(model="tiny", prompt=["one", "two", "three"], max_tokens=4, n=2, seed=1)
    assert len(many.choices) == 6 and all(c.finish_reason in ("stop", "length") for c in many.choices)
