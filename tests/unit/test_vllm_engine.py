"""`--backend vllm` without vLLM: VllmEngine's translation of our requests into vLLM calls, and
its lifecycle, driven against a fake of the vLLM classes it uses (tests/unit/vllm_fake.py).

These tests check OUR side only: the engine args, SamplingParams, stop ids, LoRARequests,
prompt dicts we send, how we read vLLM's outputs back (deltas, finish reasons), and what we
do on a client leaving, a full queue, close, unknown models and refused adapters. Whether
vLLM behaves as the fake does is checked only by tests/integration/test_gpu.py, on a GPU.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from serve_fake import live_server
from tuneforge.errors import TuneforgeError
from tuneforge.inference.api import GenRequest, QueueFull, ShuttingDown
from tuneforge.inference.vllm_engine import VllmEngine
from tuneforge.models import template
from tuneforge.models.resolve import resolve_model
from tuneforge.serve.config import ServeConfig
from vllm_fake import RequestOutputKind, fake_vllm


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory) -> Path:
    """A run folder as `tuneforge train` writes it: adapter/ with PEFT LoRA files (rank 8), the
    tokenizer and tuneforge.json naming the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("run")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(folder / "adapter")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder / "adapter")
    (folder / "adapter" / "tuneforge.json").write_text(json.dumps({"base_model": tiny_model, "method": "lora"}))
    return folder


def edited(run: Path, out: Path, file: str, **changes) -> Path:
    shutil.copytree(run / "adapter", out / "adapter")
    target = out / "adapter" / file
    target.write_text(json.dumps({**json.loads(target.read_text()), **changes}))
    return out


def make(tiny_model, tokenizer, adapters=None, **kw) -> VllmEngine:
    engine = VllmEngine(tiny_model, adapters, name="tiny", vllm=fake_vllm(), **kw)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    engine._llm.answers[None] = tokenizer.encode("Hello from the base. Goodbye.") + [end]
    for lora in engine.adapters.values():
        engine._llm.answers[lora.request.lora_path] = tokenizer.encode("billing") + [end]
    return engine


async def collect(engine, request: GenRequest):
    """(text, token ids, finish reason) of one request."""
    events = [e async for e in engine.generate(request)]
    return "".join(e.text for e in events), [t for e in events for t in e.token_ids], events[-1].finish_reason


async def answer(engine, model: str, ids: list[int], **kw):
    return await collect(engine, GenRequest(model=model, prompt_ids=ids, **kw))


def prompt(tokenizer, text: str = "refund please") -> list[int]:
    return template.encode_prompt(tokenizer, [{"role": "user", "content": text}])


def code(caught) -> str:
    return caught.value.problems[0].code


def test_the_engine_args_are_the_serve_config_on_vllm_lora(tiny_model, tokenizer, run, tmp_path):
    engine = make(tiny_model, tokenizer, {"tickets": run}, max_batch=4, max_queue=2, max_adapters=3)
    args = engine._llm.args
    assert (args.model, args.enable_lora, args.max_loras, args.max_lora_rank, args.max_num_seqs) == (
        str(resolve_model(tiny_model)), True, 3, 16, 4)  # rank 8 adapters: at least 16
    assert engine.models() == ["tiny", "tickets"]
    wide = edited(run, tmp_path / "wide", "adapter_config.json", r=40, rank_pattern={"v_proj": 48})
    assert make(tiny_model, tokenizer, {"wide": wide})._llm.args.max_lora_rank == 64  # the next rank vLLM takes
    with pytest.raises(TuneforgeError) as caught:
        make(tiny_model, tokenizer, {"huge": edited(run, tmp_path / "huge", "adapter_config.json", r=1024)})
    assert code(caught) == "adapter_rank_too_large"


def test_a_base_request_becomes_token_ids_delta_sampling_params_and_the_base_stop_ids(tiny_model, tokenizer):
    engine = make(tiny_model, tokenizer)
    ids = prompt(tokenizer)
    text, tokens, finish = asyncio.run(answer(engine, "tiny", ids, max_tokens=50, temperature=0.5, top_p=0.9,
                                              seed=7, stop=["zz"], request_id="chatcmpl-1/0"))
    call = engine._llm.calls[-1]
    assert call.prompt == {"prompt_token_ids": ids} and call.lora_request is None
    p = call.params
    assert (p.max_tokens, p.temperature, p.top_p, p.seed, p.stop, p.output_kind) == (
        50, 0.5, 0.9, 7, ["zz"], RequestOutputKind.DELTA)
    assert p.stop_token_ids == template.stop_ids(tokenizer, [tokenizer.eos_token_id])
    assert call.request_id.startswith("chatcmpl-1/0")
    # deltas concatenate to the answer; the end-of-turn token is counted, not shown
    assert text == "Hello from the base. Goodbye." and finish == "stop"
    assert tokens == engine._llm.answers[None]
    # greedy by default; a stop string ends the answer and is not included
    text, _, finish = asyncio.run(answer(engine, "tiny", ids, max_tokens=50, stop=[" Goodbye"]))
    assert engine._llm.calls[-1].params.temperature == 0.0
    assert (text, finish) == ("Hello from the base.", "stop")
    assert engine.stats()["requests_finished"] == 2 and engine.stats()["running"] == 0


def test_max_tokens_ends_with_length_and_is_capped_by_the_context(tiny_model, tokenizer):
    engine = make(tiny_model, tokenizer)
    text, tokens, finish = asyncio.run(answer(engine, "tiny", prompt(tokenizer), max_tokens=2))
    assert len(tokens) == 2 and finish == "length"
    context = engine._llm.model_config.max_model_len
    asyncio.run(answer(engine, "tiny", [5] * (context - 1), max_tokens=100))
    assert engine._llm.calls[-1].params.max_tokens == 1
    with pytest.raises(TuneforgeError) as caught:
        asyncio.run(answer(engine, "tiny", [5] * context, max_tokens=1))
    assert code(caught) == "context_length_exceeded"


def test_an_adapter_request_carries_its_lora_request_and_its_own_stop_ids(tiny_model, tokenizer, run):
    engine = make(tiny_model, tokenizer, {"tickets": run})
    text, _, finish = asyncio.run(answer(engine, "tickets", prompt(tokenizer), max_tokens=10))
    call = engine._llm.calls[-1]
    lora = call.lora_request
    assert (lora.lora_int_id, lora.lora_path, lora.lora_name) == (1, str(run / "adapter"), "tickets#1")
    assert call.params.stop_token_ids == engine.adapters["tickets"].stop_ids
    assert (text, finish) == ("billing", "stop")
    assert engine.tokenizer("tickets").name_or_path == str(run / "adapter")
    assert engine.tokenizer("tiny") is not engine.tokenizer("tickets")
    # loaded again under the same name: a new id and name, so vLLM never mixes the two loads
    engine.load_adapter("tickets", str(run))
    asyncio.run(answer(engine, "tickets", prompt(tokenizer), max_tokens=10))
    assert (engine._llm.calls[-1].lora_request.lora_int_id, engine._llm.calls[-1].lora_request.lora_name) == (
        2, "tickets#2")
    engine.unload_adapter("tickets")
    assert engine.models() == ["tiny"]
    with pytest.raises(TuneforgeError) as caught:
        asyncio.run(answer(engine, "tickets", prompt(tokenizer), max_tokens=10))
    assert code(caught) == "model_not_found" and "tiny" in str(caught.value)
    with pytest.raises(TuneforgeError) as caught:
        engine.unload_adapter("tickets")
    assert code(caught) == "model_not_found"
    with pytest.raises(TuneforgeError):
        engine.tokenizer("nope")


def test_a_consumer_that_leaves_or_is_cancelled_aborts_its_request_in_vllm(tiny_model, tokenizer):
    engine = make(tiny_model, tokenizer)
    ids = prompt(tokenizer)

    async def leaves():
        stream = engine.generate(GenRequest(model="tiny", prompt_ids=ids, max_tokens=50, request_id="r1"))
        await stream.__anext__()
        assert engine.stats()["running"] == 1
        await stream.aclose()
        assert engine._llm.calls[-1].request_id in engine._llm.aborted and not engine._llm.running  # at once

    async def cancelled():
        engine._llm.paused = True
        started = asyncio.Event()

        async def consume():
            async for _ in engine.generate(GenRequest(model="tiny", prompt_ids=ids, max_tokens=50, request_id="r2")):
                started.set()

        task = asyncio.create_task(consume())
        while not engine._llm.running:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine._llm.calls[-1].request_id in engine._llm.aborted and not engine._llm.running
        engine._llm.paused = False

    asyncio.run(leaves())
    asyncio.run(cancelled())
    ours = [c.request_id for c in engine._llm.calls]
    assert all(rid in engine._llm.aborted for rid in ours) and ours[0].startswith("r1") and ours[1].startswith("r2")
    assert not engine._llm.running and engine.stats()["running"] == 0
    # an answer read to its end is not aborted
    before = len(engine._llm.aborted)
    asyncio.run(answer(engine, "tiny", ids, max_tokens=50))
    assert len(engine._llm.aborted) == before


def test_more_than_max_batch_plus_max_queue_in_flight_is_refused(tiny_model, tokenizer):
    engine = make(tiny_model, tokenizer, max_batch=1, max_queue=1)
    ids = prompt(tokenizer)

    async def scenario():
        engine._llm.paused = True
        tasks = [asyncio.create_task(answer(engine, "tiny", ids, max_tokens=50)) for _ in range(2)]
        while len(engine._llm.running) < 2:
            await asyncio.sleep(0.005)
        assert engine.stats()["running"] == 1 and engine.stats()["queue_depth"] == 1
        with pytest.raises(QueueFull):
            await answer(engine, "tiny", ids, max_tokens=50)
        engine._llm.paused = False
        results = await asyncio.gather(*tasks)
        assert await answer(engine, "tiny", ids, max_tokens=50) == results[0]  # room again
        return results

    assert [r[2] for r in asyncio.run(scenario())] == ["stop", "stop"]


def test_close_refuses_new_requests_lets_running_ones_finish_and_shuts_vllm_down(tiny_model, tokenizer):
    engine = make(tiny_model, tokenizer)
    ids = prompt(tokenizer)

    async def scenario():
        engine._llm.paused = True
        running = asyncio.create_task(answer(engine, "tiny", ids, max_tokens=50))
        while not engine._llm.running:
            await asyncio.sleep(0.005)
        closing = asyncio.create_task(engine.close())
        await asyncio.sleep(0.01)
        with pytest.raises(ShuttingDown):
            await answer(engine, "tiny", ids, max_tokens=3)
        assert not engine._llm.shut_down  # not while a request runs
        engine._llm.paused = False
        result = await running
        await closing
        return result

    assert asyncio.run(scenario())[2] == "stop" and engine._llm.shut_down


def test_refusals_and_failures_become_the_errors_the_server_maps(tiny_model, tokenizer):
    engine = make(tiny_model, tokenizer)
    ids = prompt(tokenizer)
    for changes, expected in (({"model": "nope"}, "model_not_found"), ({"prompt_ids": []}, "invalid_value"),
                              ({"prompt_ids": [10 ** 6]}, "invalid_token_id"), ({"top_p": 0.0}, "invalid_value"),
                              ({"max_tokens": 0}, "invalid_value")):
        request = GenRequest(**{"model": "tiny", "prompt_ids": ids, "max_tokens": 5, **changes})
        with pytest.raises(TuneforgeError) as caught:
            asyncio.run(collect(engine, request))
        assert code(caught) == expected, changes
    assert not engine._llm.calls  # all refused before reaching vLLM
    engine._llm.refuse = ValueError("The decoder prompt is longer than the maximum model length")
    with pytest.raises(TuneforgeError) as caught:
        asyncio.run(answer(engine, "tiny", ids, max_tokens=5))
    assert code(caught) == "invalid_value" and "maximum model length" in str(caught.value)
    engine._llm.refuse, engine._llm.finish_with = None, "abort"  # vLLM ended it on its own: not a normal finish
    with pytest.raises(RuntimeError, match="abort"):
        asyncio.run(answer(engine, "tiny", ids, max_tokens=5))
    assert engine.stats()["running"] == 0


def test_adapters_are_refused_with_the_cpu_engines_codes(tiny_model, tokenizer, run, tmp_path):
    engine = make(tiny_model, tokenizer)

    def refused(path, name="x") -> str:
        with pytest.raises(TuneforgeError) as caught:
            engine.load_adapter(name, str(path))
        return code(caught)

    assert refused(tiny_model) == "not_an_adapter"  # a whole model
    assert refused(tmp_path) == "not_a_model"
    assert refused(edited(run, tmp_path / "dora", "adapter_config.json", use_dora=True)) == "adapter_not_mixable"
    assert refused(edited(run, tmp_path / "prefix", "adapter_config.json", peft_type="PREFIX_TUNING")) == (
        "adapter_not_mixable")
    assert refused(edited(run, tmp_path / "other", "tuneforge.json", base_model=str(tmp_path / "another"))) == (
        "base_mismatch")
    assert refused(run, name="tiny") == "invalid_name"
    assert refused(edited(run, tmp_path / "wide", "adapter_config.json", r=32)) == "adapter_rank_too_large"
    assert engine.models() == ["tiny"]


def test_the_server_runs_on_it(tiny_model, tokenizer, run, tmp_path, monkeypatch):
    """build_engine wires --backend vllm to VllmEngine, and the real app streams from it."""
    from tuneforge.inference import vllm_engine
    from tuneforge.serve import runner

    monkeypatch.setattr(runner, "check_vllm", lambda: None)  # as on a machine with vLLM and a GPU
    monkeypatch.setattr(vllm_engine, "import_vllm", fake_vllm)
    config = ServeConfig(model=tiny_model, model_name="tiny", adapters={"tickets": run}, backend="vllm",
                         max_batch=2, max_adapters=2, log_db=tmp_path / "log.db")
    engine = runner.build_engine(config)
    assert isinstance(engine, VllmEngine) and engine._llm.args.max_loras == 2 and engine._llm.args.max_num_seqs == 2
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    engine._llm.answers.update({None: tokenizer.encode("Hello from the base.") + [end],
                                str(run / "adapter"): tokenizer.encode("billing") + [end]})
    with live_server(config, engine) as live:
        client = live.client()
        messages = [{"role": "user", "content": "refund please"}]
        base = client.chat.completions.create(model="tiny", messages=messages, temperature=0)
        tuned = client.chat.completions.create(model="tickets", messages=messages, temperature=0)
        chunks = client.chat.completions.create(model="tickets", messages=messages, temperature=0, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert base.choices[0].message.content == "Hello from the base." and base.choices[0].finish_reason == "stop"
    assert tuned.choices[0].message.content == streamed == "billing"
    assert tuned.usage.completion_tokens == len(engine._llm.answers[str(run / "adapter")])
    assert engine._llm.shut_down  # the app closed the engine on the way out
