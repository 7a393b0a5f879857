"""Shared fixtures: a tiny random Llama model with a real BPE tokenizer and ChatML template.

Built once per session in a temporary folder; no network, no built-in model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "How do I reset my password? I was charged twice for my subscription this month.",
    "The app crashes when I open the camera view. Please add a dark mode to the dashboard.",
    "billing technical account feature_request other refund invoice login error update",
    "The quick brown fox jumps over the lazy dog. Thank you for your help!",
    "{\"name\": \"value\", \"date\": \"2024-01-01\", \"people\": 4} SELECT * FROM users WHERE id = 1;",
]


def build_tiny_model(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                        bos_token="<|im_start|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.bos_token_id, do_sample=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Path (as a model name) of a 2-layer, 32-wide random Llama with a ChatML tokenizer."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Unit tests never write to the user's cache; integration tests opt back in."""
    if os.environ.get("TUNEFORGE_TEST_REAL_HOME") != "1":
        monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path_factory.getbasetemp() / "tuneforge-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def quiet_env(monkeypatch):
    """cli.main sets these with setdefault; set them here so each test that runs it restores them."""
    for key, value in (("TOKENIZERS_PARALLELISM", "true"), ("TRANSFORMERS_VERBOSITY", "error"),
                       ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        monkeypatch.setenv(key, value)


@pytest.fixture
def run_cli(monkeypatch, capsys, quiet_env):
    """`tuneforge ARGS` in process with TUNEFORGE_DEBUG=1, so an internal error escapes instead of
    hiding behind a user-error exit code; returns (exit code, stdout, stderr)."""
    from tuneforge import cli

    monkeypatch.setenv("TUNEFORGE_DEBUG", "1")
    # its process-wide settings (environment, warning filters) must not leak into other tests
    monkeypatch.setattr(cli, "_quiet_libraries", lambda: None)

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return done.value.code, captured.out, captured.err

    return run
