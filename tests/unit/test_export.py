"""`tuneforge export`'s pieces that need no model file: tensor names, llama.cpp's rotary layout,
the Ollama Modelfile, the refusals before any model loads, and that a failed write leaves
no partial file."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from tuneforge.export import gguf
from tuneforge.export.gguf import _gguf_name, _permute, modelfile, publish

CHATML_DEFAULT = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
                  "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_tensor_names_follow_llama_cpp():
    assert _gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    assert _gguf_name("model.layers.3.self_attn.k_proj.weight") == "blk.3.attn_k.weight"
    assert _gguf_name("model.layers.0.post_attention_layernorm.weight") == "blk.0.ffn_norm.weight"
    assert _gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None


def test_permute_is_undone_by_transformers_gguf_loader():
    # transformers reads llama GGUF files with the inverse permutation: the round trip is the identity
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor as Processor

    w = np.arange(6 * 4 * 8, dtype=np.float32).reshape(6 * 4, 8)  # 6 heads of 4 rows
    undo = Processor._reverse_permute_weights(None, _permute(w, 6), 6, 6)
    assert np.array_equal(undo, w) and not np.array_equal(_permute(w, 6), w)
    kv = np.arange(2 * 4 * 8, dtype=np.float32).reshape(2 * 4, 8)  # k: 2 key/value heads
    assert np.array_equal(Processor._reverse_permute_weights(None, _permute(kv, 2), 6, 2), kv)


def test_modelfile_writes_chatml_with_the_default_system_prompt_and_stop():
    text = modelfile("m.gguf", CHATML_DEFAULT, "<|im_end|>")
    assert text.startswith("FROM ./m.gguf") and 'PARAMETER stop "<|im_end|>"' in text
    assert "You are a helpful assistant<|im_end|>" in text and "<|im_start|>assistant\n" in text
    other = modelfile("m.gguf", "{{ messages }}", "</s>")
    assert "not ChatML" in other and 'PARAMETER stop "</s>"' in other


def test_refusals_before_loading(tmp_path, run_cli, tiny_model, monkeypatch):
    code, _, err = run_cli("export", str(tmp_path), "--out", str(tmp_path / "m.bin"))
    assert code == 2 and err.strip() == "--out: invalid_value: the output file name ends in .gguf"
    code, _, err = run_cli("export", str(tmp_path), "--out", str(tmp_path / "m.gguf"), "--quant", "q4_0")
    assert code == 2 and "--quant: invalid_value:" in err
    code, _, err = run_cli("export", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "m.gguf"))
    assert code == 2 and "--format: invalid_value:" in err
    code, _, err = run_cli("export", str(tmp_path), "--out", str(tmp_path / "m.gguf"))
    assert code == 2 and "not_a_model" in err
    # a full fine-tune of a base that did not come from a GGUF file: no tokenizer metadata to copy
    code, _, err = run_cli("export", tiny_model, "--out", str(tmp_path / "m.gguf"))
    assert code == 2 and "no_tokenizer_source" in err and "Traceback" not in err
    assert not (tmp_path / "m.gguf").exists()
    monkeypatch.setattr("tuneforge.export.gguf.have_llama_cpp", lambda: False)  # q4_k_m is llama.cpp's
    code, _, err = run_cli("export", str(tmp_path), "--out", str(tmp_path / "m.gguf"), "--quant", "q4_k_m")
    assert code == 2 and "--quant: needs_llama_cpp:" in err


@pytest.mark.parametrize("fails_in", ["write", "quantize"])
def test_a_failed_export_leaves_no_partial_file_and_keeps_the_earlier_one(tmp_path, monkeypatch, fails_in):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"earlier export")

    def write(path):
        path.write_bytes(b"half a file")
        if fails_in == "write":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return {"bytes": 11}

    def quantize(src, dst):
        dst.write_bytes(b"half quantized")
        raise gguf._problem("export_failed", "llama.cpp could not quantize the file to q4_k_m", str(dst))

    monkeypatch.setattr(gguf, "quantize_k", quantize)
    with pytest.raises((OSError, gguf.TuneforgeError)):
        publish(out, "q4_k_m", write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"] and out.read_bytes() == b"earlier export"

    monkeypatch.setattr(gguf, "quantize_k", lambda src, dst: dst.write_bytes(src.read_bytes()[:4]))
    assert publish(out, "q4_k_m", lambda path: {"bytes": path.write_bytes(b"whole file")}) == {"bytes": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"] and out.read_bytes() == b"whol"
