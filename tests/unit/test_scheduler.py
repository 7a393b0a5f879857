"""The serve engine on the tiny model: greedy answers equal eval's (base and adapters),
continuous batching is exact in float32, adapters share a batch and are evicted LRU,
queue/stop/length/seed/close behave as the server relies on."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tuneforge.data.config import PrepareConfig
from tuneforge.data.prepare import prepare
from tuneforge.errors import TuneforgeError
from tuneforge.evaluate import engine as eval_engine
from tuneforge.inference.api import GenRequest, QueueFull, ShuttingDown
from tuneforge.inference.scheduler import Scheduler
from tuneforge.inference.text import AnswerText
from tuneforge.models import load_model, load_tokenizer
from tuneforge.models.tuned import load_tuned
from tuneforge.train.config import TrainConfig
from tuneforge.train.run import train

LABELS = ["billing", "technical", "account", "other"]
QUESTIONS = ["hi", "the app crashes on login every time", "refund please", "I was charged twice this month"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prompt_of(tokenizer, text: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]


@pytest.fixture(scope="module")
def lively(tiny_model, tmp_path_factory) -> str:
    """The tiny model with larger random weights: the fixture model answers every prompt
    with the same newline, which would make "gives the same tokens" hold trivially; this
    one answers each prompt differently, hundreds of tokens long."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)
    folder = tmp_path_factory.mktemp("lively")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def trained(lively, tmp_path_factory) -> Path:
    """A LoRA run folder trained for a few steps, as `tuneforge train` writes it."""
    folder = tmp_path_factory.mktemp("serve")
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}: {QUESTIONS[i % 4]}"},
                          {"role": "assistant", "content": label}]} for i, label in enumerate(LABELS * 8)]
    prepare(PrepareConfig(inputs=[write_jsonl(folder / "t.jsonl", rows)], out=folder / "data", model=lively,
                          memorisation_check=False))
    train(TrainConfig(model=lively, data=folder / "data", out=folder / "run", max_steps=4, epochs=1,
                      batch_size=4, learning_rate=0.05, bf16=False, tracking=[]), progress=False)
    return folder / "run"


def variant(run: Path, out: Path, seed: int) -> Path:
    """A copy of `run` whose LoRA B matrices are pushed far from the trained ones: an adapter
    that answers differently from the base and from every other variant."""
    shutil.copytree(run / "adapter", out / "adapter")
    weights = out / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(seed)
    for key, value in tensors.items():
        if "lora_B" in key:
            tensors[key] = value + torch.randn(value.shape, generator=generator) * 0.5
    save_file(tensors, weights)
    return out


@pytest.fixture(scope="module")
def variants(trained, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    return {name: variant(trained, root / name, seed) for seed, name in enumerate(["v1", "v2", "v3"])}


@pytest.fixture
def make(lively):
    engines = []

    def build(**kw) -> Scheduler:
        kw.setdefault("bf16", False)
        engines.append(Scheduler(lively, name="tiny", **kw))
        return engines[-1]

    yield build
    for engine in engines:
        engine.shutdown()


async def answer(engine: Scheduler, model: str, ids: list[int], **kw) -> tuple[str, list[int], str, list]:
    """(text, token ids, finish reason, events) of one request."""
    events = [e async for e in engine.generate(GenRequest(model=model, prompt_ids=ids, **kw))]
    return ("".join(e.text for e in events), [t for e in events for t in e.token_ids], events[-1].finish_reason,
            events)


def alone(engine: Scheduler, model: str, ids: list[int], **kw):
    return asyncio.run(answer(engine, model, ids, **kw))


async def until(condition, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


def problem(excinfo) -> str:
    return excinfo.value.problems[0].code


# -- the same greedy answer as eval -------------------------------------------------------------


def test_greedy_answers_equal_eval_for_the_base(lively, make):
    model, tokenizer = load_model(lively), load_tokenizer(lively)
    prompts = [prompt_of(tokenizer, q) for q in QUESTIONS]
    expected = eval_engine.generate(model, tokenizer, prompts, 12, batch_size=4).texts
    engine = make()

    async def together():
        return await asyncio.gather(*(answer(engine, "tiny", p, max_tokens=12) for p in prompts))

    assert [text.strip() for text, *_ in asyncio.run(together())] == expected
    assert [alone(engine, "tiny", p, max_tokens=12)[0].strip() for p in prompts] == expected


def test_greedy_answers_equal_eval_for_adapters(lively, trained, variants, make):
    tokenizer = load_tokenizer(lively)
    prompts = [prompt_of(tokenizer, q) for q in QUESTIONS]
    runs = {"trained": trained, "v1": variants["v1"]}
    engine = make(adapters=runs)
    base = [alone(engine, "tiny", p, max_tokens=12)[0] for p in prompts]
    for name, run in runs.items():
        model, tuned_tokenizer = load_tuned(run)
        expected = eval_engine.generate(model, tuned_tokenizer, prompts, 12, batch_size=4).texts

        async def together():
            return await asyncio.gather(*(answer(engine, name, p, max_tokens=12) for p in prompts))

        got = [text.strip() for text, *_ in asyncio.run(together())]
        assert got == expected, name
    assert [alone(engine, "v1", p, max_tokens=12)[0] for p in prompts] != base  # the adapter is really applied


# -- continuous batching ------------------------------------------------------------------------


def test_a_request_joining_mid_decode_gets_the_tokens_it_gets_alone(lively, make):
    tokenizer = load_tokenizer(lively)
    first, second = prompt_of(tokenizer, QUESTIONS[1]), prompt_of(tokenizer, QUESTIONS[3])
    engine = make()
    first_alone = alone(engine, "tiny", first, max_tokens=200)
    second_alone = alone(engine, "tiny", second, max_tokens=40)
    assert len(first_alone[1]) == 200  # long enough for the second to join while it runs

    # the engine thread stops after its first step (the prefill of "a") until "b" waits in the
    # queue, so "b" always joins a running batch (pausing from the test's side raced with "a"
    # finishing all its tokens on a loaded machine)
    paused, resume, real_step = threading.Event(), threading.Event(), engine._step

    def step(joining):
        real_step(joining)
        if not paused.is_set():
            paused.set()
            resume.wait(timeout=30)

    engine._step = step

    async def overlapped():
        order = []

        async def consume(tag, ids, max_tokens):
            out = []
            async for event in engine.generate(GenRequest(model="tiny", prompt_ids=ids, max_tokens=max_tokens)):
                order.append(tag)
                out.append(event)
            return out

        a = asyncio.create_task(consume("a", first, 200))
        try:
            await until(paused.is_set)
            b = asyncio.create_task(consume("b", second, 40))
            await until(lambda: engine.stats()["queue_depth"] == 1)
        finally:
            resume.set()
        events_a, events_b = await a, await b
        return events_a, events_b, order

    events_a, events_b, order = asyncio.run(overlapped())
    assert "a" in order[order.index("b"):]  # "a" was still decoding after "b" joined
    assert [t for e in events_a for t in e.token_ids] == first_alone[1]
    assert [t for e in events_b for t in e.token_ids] == second_alone[1]
    assert "".join(e.text for e in events_b) == second_alone[0]


def test_mixed_traffic_gives_every_request_what_it_gets_alone(lively, variants, make):
    """Requests of different lengths, for the base and two adapters, arriving over time into
    a batch of 3: rows join, wait in the queue, and leave at different steps (the cache is
    padded, cut and re-padded all along); every answer must still be its answer alone."""
    tokenizer = load_tokenizer(lively)
    engine = make(max_batch=3, adapters={"v1": variants["v1"], "v2": variants["v2"]})
    jobs = [(["tiny", "v1", "v2"][i % 3], prompt_of(tokenizer, QUESTIONS[i % 4] + " please" * i), 5 + 7 * i)
            for i in range(8)]
    expected = [alone(engine, m, ids, max_tokens=n)[1] for m, ids, n in jobs]

    async def traffic():
        async def late(i, job):
            await asyncio.sleep(0.003 * i)
            return (await answer(engine, job[0], job[1], max_tokens=job[2]))[1]

        return await asyncio.gather(*(late(i, job) for i, job in enumerate(jobs)))

    assert asyncio.run(traffic()) == expected
    assert engine.stats()["running"] == 0 and len(engine._batch) == 0


def test_an_abandoned_request_frees_its_slot(lively, make):
    tokenizer = load_tokenizer(lively)
    long, short = prompt_of(tokenizer, QUESTIONS[1]), prompt_of(tokenizer, QUESTIONS[0])
    engine = make(max_batch=1)
    assert alone(engine, "tiny", long, max_tokens=60)[2] == "length"  # it would run to max_tokens
    before = engine.stats()["tokens_generated"]

    async def scenario():
        started = asyncio.Event()

        async def client_that_leaves():
            async for _ in engine.generate(GenRequest(model="tiny", prompt_ids=long, max_tokens=480)):
                started.set()

        leaving = asyncio.create_task(client_that_leaves())
        await started.wait()
        leaving.cancel()  # what the server does when the HTTP client disconnects
        result = await answer(engine, "tiny", short, max_tokens=5)  # needs the only slot
        await until(lambda: engine.stats()["running"] == 0)
        return result

    assert asyncio.run(scenario())[2] in ("stop", "length")
    assert engine.stats()["tokens_generated"] - before < 300  # the abandoned one stopped well before 480


def test_a_full_queue_is_refused(lively, make):
    ids = prompt_of(load_tokenizer(lively), QUESTIONS[0])
    engine = make(max_batch=1, max_queue=1)

    async def scenario():
        engine._lock.acquire()  # the engine thread cannot step: the batch and the queue fill up
        try:
            running = asyncio.create_task(answer(engine, "tiny", ids, max_tokens=3))
            await until(lambda: engine.stats()["running"] == 1)
            waiting = asyncio.create_task(answer(engine, "tiny", ids, max_tokens=3))
            await until(lambda: engine.stats()["queue_depth"] == 1)
            with pytest.raises(QueueFull):
                await answer(engine, "tiny", ids, max_tokens=3)
        finally:
            engine._lock.release()
        return await running, await waiting

    for result in asyncio.run(scenario()):
        assert result[1]


# -- how answers end ----------------------------------------------------------------------------


def test_stop_strings_end_the_answer_and_are_not_included(lively, make):
    ids = prompt_of(load_tokenizer(lively), QUESTIONS[1])
    engine = make()
    text, _, _, _ = alone(engine, "tiny", ids, max_tokens=30)
    stop = next(text[i:i + 3] for i in range(5, len(text)) if text[i:i + 3].isascii() and len(text[i:i + 3]) == 3)
    got, _, reason, events = alone(engine, "tiny", ids, max_tokens=30, stop=["never appears", stop])
    assert (got, reason) == (text[:text.index(stop)], "stop")
    assert all(stop not in e.text for e in events)


def test_max_tokens_ends_with_length_and_is_capped_by_the_context(lively, make):
    tokenizer = load_tokenizer(lively)
    ids = prompt_of(tokenizer, QUESTIONS[1])
    engine = make()
    _, tokens, reason, _ = alone(engine, "tiny", ids, max_tokens=3)
    assert (len(tokens), reason) == (3, "length")
    near_the_end = ids * (500 // len(ids))  # the tiny model reads 512 tokens
    _, tokens, reason, _ = alone(engine, "tiny", near_the_end, max_tokens=10**9)
    assert len(tokens) <= 512 - len(near_the_end)
    with pytest.raises(TuneforgeError) as too_long:
        alone(engine, "tiny", ids * 100, max_tokens=5)
    assert problem(too_long) == "context_length_exceeded"


def test_seeded_sampling_is_reproducible_in_any_batch(lively, make):
    tokenizer = load_tokenizer(lively)
    ids, other = prompt_of(tokenizer, QUESTIONS[2]), prompt_of(tokenizer, QUESTIONS[1])
    engine = make()
    kw = dict(max_tokens=20, temperature=1.0, top_p=0.9)
    first = alone(engine, "tiny", ids, seed=7, **kw)[1]

    async def with_company():
        ours, _ = await asyncio.gather(answer(engine, "tiny", ids, seed=7, **kw),
                                       answer(engine, "tiny", other, max_tokens=20))
        return ours[1]

    assert asyncio.run(with_company()) == first
    others = {tuple(alone(engine, "tiny", ids, seed=seed, **kw)[1]) for seed in range(4)}
    assert len(others) > 1  # seeds matter: it really samples


def test_streamed_text_is_whole_characters(lively):
    """A byte-level tokenizer splits ï, é, → and 日 over several tokens; no piece holds half of one."""
    tokenizer = load_tokenizer(lively)
    ids = tokenizer("naïve café → 日本語, ok", add_special_tokens=False)["input_ids"]
    answer_text = AnswerText(tokenizer)
    pieces = [answer_text.push(i) for i in ids]
    pieces.append(answer_text.finish())
    assert "".join(pieces) == tokenizer.decode(ids) == "naïve café → 日本語, ok"
    assert not any("\ufffd" in p for p in pieces)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # really split below characters


def test_a_stop_string_is_held_back_until_it_is_clear():
    class Chars:  # one character per token: shows the holding back exactly
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    answer_text = AnswerText(Chars(), stop=["END"])
    pieces = [answer_text.push(ord(c)) for c in "abEN"]
    assert pieces == ["a", "b", "", ""]  # "EN" may begin "END"
    assert answer_text.push(ord("x")) == "ENx"
    assert [answer_text.push(ord(c)) for c in "yEND"] == ["y", "", "", ""] and answer_text.stopped
    assert answer_text.finish() == "" and answer_text.text == "abENxy"


# -- adapters -----------------------------------------------------------------------------------


def test_different_adapters_share_one_batch_and_each_gives_what_it_gives_alone(lively, variants, make):
    ids = prompt_of(load_tokenizer(lively), QUESTIONS[2])
    engine = make(adapters={"v1": variants["v1"], "v2": variants["v2"]})
    expected = {m: alone(engine, m, ids, max_tokens=12)[1] for m in ("tiny", "v1", "v2")}
    assert len({tuple(v) for v in expected.values()}) == 3  # three different answers

    async def one_batch():
        engine._lock.acquire()  # all three are admitted before the engine steps again: one batch
        try:
            tasks = [asyncio.create_task(answer(engine, m, ids, max_tokens=12)) for m in expected]
            await until(lambda: engine.stats()["queue_depth"] + engine.stats()["running"] == 3)
        finally:
            engine._lock.release()
        return {m: (await t)[1] for m, t in zip(expected, tasks)}

    assert asyncio.run(one_batch()) == expected


def test_adapters_past_the_limit_are_evicted_least_recently_used_and_reload(lively, variants, make):
    ids = prompt_of(load_tokenizer(lively), QUESTIONS[2])
    engine = make(max_adapters=2)
    engine.load_adapter("v1", str(variants["v1"]))
    first = alone(engine, "v1", ids, max_tokens=10)[1]
    engine.load_adapter("v2", str(variants["v2"]))
    engine.load_adapter("v3", str(variants["v3"]))
    held = lambda: sorted(a.name for a in engine.adapters.held.values())  # noqa: E731
    assert held() == ["v2", "v3"] and engine.models() == ["tiny", "v1", "v2", "v3"]
    assert engine.stats()["adapters_held"] == 2
    assert alone(engine, "v1", ids, max_tokens=10)[1] == first  # loaded again from its folder
    assert held() == ["v1", "v3"]  # v2 was the least recently used
    engine.unload_adapter("v1")
    with pytest.raises(TuneforgeError) as gone:
        alone(engine, "v1", ids, max_tokens=10)
    assert problem(gone) == "model_not_found" and held() == ["v3"]
    engine.unload_adapter("v2")
    engine.unload_adapter("v3")
    assert held() == [] and engine.models() == ["tiny"]
    model, tokenizer = load_model(lively), load_tokenizer(lively)  # no adapter left: the plain base
    assert alone(engine, "tiny", ids, max_tokens=10)[0].strip() == \
        eval_engine.generate(model, tokenizer, [ids], 10).texts[0]


def test_each_adapter_keeps_the_tokenizer_it_was_trained_with(trained, make):
    engine = make(adapters={"trained": trained})
    assert engine.tokenizer("trained").name_or_path == str(trained / "adapter")
    assert engine.tokenizer("tiny") is not engine.tokenizer("trained")


def test_adapters_that_cannot_be_served_are_refused(lively, trained, tmp_path, make):
    engine = make()

    def refused(path, name="x") -> str:
        with pytest.raises(TuneforgeError) as caught:
            engine.load_adapter(name, str(path))
        return problem(caught)

    def edited(name: str, file: str, **changes) -> Path:
        shutil.copytree(trained / "adapter", tmp_path / name / "adapter")
        target = tmp_path / name / "adapter" / file
        target.write_text(json.dumps({**json.loads(target.read_text()), **changes}))
        return tmp_path / name

    assert refused(lively) == "not_an_adapter"  # a whole model
    assert refused(tmp_path) == "not_a_model"
    assert refused(edited("dora", "adapter_config.json", use_dora=True)) == "adapter_not_mixable"
    assert refused(edited("prefix", "adapter_config.json", peft_type="PREFIX_TUNING")) == "adapter_not_mixable"
    assert refused(edited("other", "tuneforge.json", base_model=str(tmp_path / "another-model"))) == "base_mismatch"
    assert refused(trained, name="tiny") == "invalid_name"
    misshapen = edited("misshapen", "adapter_config.json")
    weights = misshapen / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 8)
    save_file(tensors, weights)
    assert refused(misshapen) == "base_mismatch"  # found before any layer was wrapped
    assert refused(edited("biased", "adapter_config.json", bias="lora_only")) == "adapter_not_mixable"
    assert engine.models() == ["tiny"] and not engine.adapters.slots.layers
    model, tokenizer = load_model(lively), load_tokenizer(lively)
    ids = prompt_of(tokenizer, QUESTIONS[0])
    expected = eval_engine.generate(model, tokenizer, [ids], 8).texts[0]
    assert alone(engine, "tiny", ids, max_tokens=8)[0].strip() == expected  # the base still serves as before
    with pytest.raises(TuneforgeError) as unknown:
        engine.unload_adapter("nope")
    assert problem(unknown) == "model_not_found"


def test_an_unknown_model_is_a_tuneforge_error(lively, make):
    engine = make()
    with pytest.raises(TuneforgeError) as caught:
        alone(engine, "nope", [1, 2, 3], max_tokens=3)
    assert problem(caught) == "model_not_found" and "tiny" in str(caught.value)
    with pytest.raises(TuneforgeError):
        engine.tokenizer("nope")


# -- shutting down ------------------------------------------------------------------------------


def test_close_refuses_new_requests_and_lets_running_ones_finish(lively, make):
    ids = prompt_of(load_tokenizer(lively), QUESTIONS[1])
    engine = make()
    expected = alone(engine, "tiny", ids, max_tokens=300)
    assert expected[2] == "length"  # it runs long enough to be running when close() is called

    async def scenario():
        started = asyncio.Event()

        async def running():
            events = []
            async for event in engine.generate(GenRequest(model="tiny", prompt_ids=ids, max_tokens=300)):
                started.set()
                events.append(event)
            return events

        task = asyncio.create_task(running())
        await started.wait()
        closing = asyncio.create_task(engine.close())
        await until(lambda: engine._closing)
        with pytest.raises(ShuttingDown):
            await answer(engine, "tiny", ids, max_tokens=3)
        events = await task
        await closing
        return events

    events = asyncio.run(scenario())
    assert [t for e in events for t in e.token_ids] == expected[1] and events[-1].finish_reason == expected[2]
    assert not engine._thread.is_alive()
