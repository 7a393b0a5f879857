"""The serve engine on the built-in model: concurrent requests, batched continuously, give
exactly the greedy answers `tuneforge eval` gives (float32), accents streamed whole."""

from __future__ import annotations

import asyncio

import pytest

from tuneforge.evaluate import engine as eval_engine
from tuneforge.inference.api import GenRequest
from tuneforge.inference.scheduler import Scheduler
from tuneforge.models import load_model, load_tokenizer, template

pytestmark = pytest.mark.slow

QUESTIONS = ["My card was charged twice this month, what should I do?", "Write the French word for coffee.",
             "What is 12 + 30?", "Say hello in Spanish and in German."]


def test_concurrent_requests_get_the_greedy_answers_eval_gives():
    model, tokenizer = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    prompts = [template.encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    expected = eval_engine.generate(model, tokenizer, prompts, 24, batch_size=4).texts
    engine = Scheduler("smollm2-135m", bf16=False)

    async def one(ids, delay):
        await asyncio.sleep(delay)  # arrive at different times: each joins a batch already decoding
        return [e async for e in engine.generate(GenRequest(model="smollm2-135m", prompt_ids=ids, max_tokens=24))]

    async def together():
        return await asyncio.gather(*(one(p, 0.05 * i) for i, p in enumerate(prompts)))

    try:
        answers = asyncio.run(together())
    finally:
        engine.shutdown()
    assert ["".join(e.text for e in events).strip() for events in answers] == expected
    assert all("\ufffd" not in e.text for events in answers for e in events)
    assert all(events[-1].finish_reason in ("stop", "length") for events in answers)
