"""One home for chat formatting: the template, the end-of-turn token and a model without a
template, through every stage (prepare counts, train masks, eval, generate, merge)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tuneforge.data.config import PrepareConfig
from tuneforge.data.prepare import prepare
from tuneforge.data.tokens import TokenCounter
from tuneforge.errors import TuneforgeError
from tuneforge.evaluate.config import EvalConfig
from tuneforge.evaluate.run import evaluate
from tuneforge.models import load_tokenizer
from tuneforge.models import template
from tuneforge.models.generate import complete
from tuneforge.train.collate import IGNORE, Encoder
from tuneforge.train.config import TrainConfig
from tuneforge.train.merge import merge
from tuneforge.train.run import train

LABELS = ["billing", "technical", "account", "other"]


def _copy_model(src: str, dest: Path, **tokenizer_changes) -> str:
    from transformers import AutoTokenizer

    shutil.copytree(src, dest)
    tokenizer = AutoTokenizer.from_pretrained(src)
    for key, value in tokenizer_changes.items():
        setattr(tokenizer, key, value)
    for name in ("chat_template.jinja", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        (dest / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(dest)
    return str(dest)


@pytest.fixture(scope="module")
def plain_model(tiny_model, tmp_path_factory) -> str:
    """The tiny model with its chat template removed, as a base model would come."""
    path = _copy_model(tiny_model, tmp_path_factory.mktemp("plain") / "model", chat_template=None)
    assert not template.has_template(load_tokenizer(path))
    return path


def test_the_end_of_turn_comes_from_the_template(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert template.turn_end_id(tokenizer) == end
    assert template.stop_ids(tokenizer, [end, None]) == [end]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 1}]
    assert template.render(tokenizer, messages) == tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages], tokenize=False)


def test_without_a_template_eos_closes_each_answer(plain_model):
    tokenizer = load_tokenizer(plain_model)
    text = template.render(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert text == f"user: hi\nassistant: yo{tokenizer.eos_token}\n"
    assert template.turn_end_id(tokenizer) == tokenizer.eos_token_id
    # training puts a loss on that EOS, so the fine-tune learns to stop where eval stops it
    example = Encoder(tokenizer, 256).chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE]
    assert trained[-1] == tokenizer.eos_token_id


def test_a_tokenizer_with_no_template_and_no_eos_is_refused_before_training(tiny_model, tmp_path):
    path = _copy_model(tiny_model, tmp_path / "bare", chat_template=None)
    config = json.loads((tmp_path / "bare" / "tokenizer_config.json").read_text())
    for key in ("eos_token", "pad_token"):
        config.pop(key, None)
    (tmp_path / "bare" / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(path)
    assert tokenizer.eos_token is None
    with pytest.raises(TuneforgeError) as caught:
        template.check_tokenizer(tokenizer, path)
    assert caught.value.problems[0].code == "no_end_token"


def test_a_model_without_a_template_works_in_every_stage(plain_model, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}: problem {i % 4}"},
                          {"role": "assistant", "content": label}]} for i, label in enumerate(LABELS * 12)]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tmp_path / "data"
    prepare(PrepareConfig(inputs=[raw], out=data, model=plain_model, memorisation_check=False, max_seq_len=128))
    run = tmp_path / "run"
    train(TrainConfig(model=plain_model, data=data, out=run, max_steps=3, epochs=1, batch_size=4, tracking=[]),
          progress=False)
    assert complete(plain_model, "ticket 3: problem 1", chat=True, max_new_tokens=4, adapter=run) is not None
    result = evaluate(EvalConfig(data=data, model=plain_model, adapters={"tuned": str(run)}, out=tmp_path / "eval",
                                 latency_samples=0), progress=False)
    assert set(result["variants"]) == {"base-zero-shot", "base-few-shot", "tuned"}
    assert merge(run, tmp_path / "merged")["max_kl"] < 1e-3


CONVERSATIONS = [
    [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "general kenobi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "multi\nline\n\ntext"}, {"role": "assistant", "content": " leading space"},
     {"role": "user", "content": "again"}, {"role": "assistant", "content": "{\"json\": [1, 2]}"}],
    [{"role": "user", "content": "ünïcödé ✓ 中文"}, {"role": "assistant", "content": ""}],
]


def _real_counts(tokenizer, conversations) -> list[int]:
    return [len(tokenizer(template.render(tokenizer, c), add_special_tokens=False)["input_ids"])
            for c in conversations]


def test_the_token_count_shortcut_equals_the_real_template(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    counter = TokenCounter(tokenizer)
    conversations = CONVERSATIONS * 3
    assert counter.count_chats(conversations) == _real_counts(tokenizer, conversations)
    assert counter.fast, "ChatML wraps each message in fixed markers: the shortcut should hold"


def test_the_token_count_falls_back_where_the_shortcut_is_wrong(tiny_model, tmp_path):
    # a template that shows each message twice: content tokens no longer add up once
    doubled = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + ' / ' + m['content'] + '\n' }}{% endfor %}"
    tokenizer = load_tokenizer(_copy_model(tiny_model, tmp_path / "doubled", chat_template=doubled))
    counter = TokenCounter(tokenizer)
    conversations = CONVERSATIONS[2:3] + [c * 4 for c in CONVERSATIONS[:2]]
    assert counter.count_chats(conversations) == _real_counts(tokenizer, conversations)


def test_eval_refuses_a_tokenizer_that_cannot_end_an_answer_before_any_model_loads(tiny_model, tmp_path,
                                                                                   monkeypatch):
    path = _copy_model(tiny_model, tmp_path / "bare", chat_template=None)
    config = json.loads((tmp_path / "bare" / "tokenizer_config.json").read_text())
    for key in ("eos_token", "pad_token"):
        config.pop(key, None)
    (tmp_path / "bare" / "tokenizer_config.json").write_text(json.dumps(config))
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n")

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the tokenizer was checked")

    monkeypatch.setattr("tuneforge.models.load_model", no_model)
    with pytest.raises(TuneforgeError) as caught:
        evaluate(EvalConfig(data=data, model=path, baselines=["zero-shot"], out=tmp_path / "eval"), progress=False)
    assert caught.value.problems[0].code == "no_end_token"
