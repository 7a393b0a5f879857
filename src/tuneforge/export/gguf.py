"""`tuneforge export RUN --format gguf [--quant f16|q8_0|q4_k_m] --out FILE`: the fine-tune as one GGUF file
for llama.cpp and Ollama, and proof that it answers like the adapter.

Reads top to bottom:
1. the adapter's reference answers: greedy answers and next-token distributions of the adapter
   (PEFT, float32) on the run's validation prompts, rendered with the chat template it was trained with;
2. the merged model (the adapter folded into its base) written with the `gguf` package: llama
   architecture metadata, weights (Q/K rows permuted into llama.cpp's rotary layout), f16 or q8_0;
   q4_k_m is written as f16 first, then quantized by llama.cpp's own quantizer (llama-cpp-python's
   `llama_model_quantize`: the k-quants have no encoder in the gguf package), so it needs llama-cpp-python;
   the tokenizer (vocabulary, merges, pre-tokenizer) copied from the base model's own GGUF file,
   with the adapter's chat template and its end-of-turn token as EOS;
3. an Ollama Modelfile beside it (FILE.Modelfile) with that template and stop token;
4. the parity check, through llama.cpp (`llama-cpp-python`): the same prompts tokenised by
   llama.cpp must give the same ids, the next-token distribution must stay within MAX_KL of the
   adapter's, the greedy answers must agree on at least MIN_GREEDY of the prompts and, fed the adapter's
   answers, llama.cpp must rank MIN_FORCED of their tokens first. The figures go
   to FILE.export.json; outside tolerance the command fails (`parity_failed`, exit 1). Without
   llama-cpp-python the file is written and export.json says the check did not run.

Limits: llama-architecture bases (SmolLM2, Llama, Mistral-style without sliding windows) whose
weights came from a GGUF file (the built-in model, or a .gguf given as the base), since the
tokenizer metadata is copied from it; LoRA, DoRA, IA3 adapters and full fine-tunes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from tuneforge.errors import Problem, TuneforgeError

QUANTS = ("f16", "q8_0", "q4_k_m")
MAX_KL = {"f16": 0.01, "q8_0": 0.05, "q4_k_m": 0.5}  # nats, worst prompt, first answer token
# share of prompts whose whole greedy answer is identical: in f16 one late near-tie among a few prompts
# is rounding, not a broken export (seen: 5 of 6 on one llama.cpp build, 6 of 6 on another, KL 2e-5
# on both), so the token-level checks below carry the gate and this only catches wholesale drift
MIN_GREEDY = {"f16": 0.75, "q8_0": 0.0, "q4_k_m": 0.0}
# share of the adapter's answer tokens that llama.cpp also ranks first when fed the same prefix (teacher
# forcing): unlike whole answers, one early near-tie does not cascade into a mismatch of the rest
MIN_FORCED = {"f16": 0.98, "q8_0": 0.9, "q4_k_m": 0.7}
CTX = 1024
TENSOR_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _problem(code: str, message: str, where: str) -> TuneforgeError:
    return TuneforgeError(Problem(code, message, where))


def base_gguf(base: str) -> Path:
    """The GGUF file the base model's weights came from (the tokenizer source)."""
    from tuneforge.models.resolve import BUILTIN

    path = Path(base)
    if path.suffix == ".gguf" and path.is_file():
        return path
    for spec in BUILTIN.values():
        if spec.cache_dir().resolve() == path.resolve() or base == spec.name:
            found = spec.gguf_path()
            if found:
                return found
    raise _problem("no_tokenizer_source", f"the base model {base} did not come from a GGUF file, and this export "
                   "copies the tokenizer's GGUF metadata from one; export runs on the built-in model or a .gguf base",
                   "RUN")


def validation_prompts(run: Path, limit: int) -> list[list[dict]]:
    """Prompts (messages without the answer) of the run's validation split, else its training split."""
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    sources = summary.get("sources") or []
    prompts = []
    for name in ("val.jsonl", "train.jsonl"):
        for source in sources:
            path = Path(source["path"]) / name
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    messages = json.loads(line).get("messages") if line.strip() else None
                    if messages and messages[-1]["role"] == "assistant":
                        prompts.append(messages[:-1])
        if prompts:
            break
    if not prompts:
        raise _problem("no_validation_data", "the run names no data folder with chat records to check parity on",
                       str(run / "summary.json"))
    return prompts[:limit]


def reference_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, stops: list[int]):
    """(first-token log-probabilities, greedy answer ids) of the adapter for each prompt."""
    import torch

    firsts, answers = [], []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            firsts.append(torch.log_softmax(model(input_ids=x).logits[0, -1].float(), -1).numpy())
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
            answer = out[0, len(ids):].tolist()
            answers.append(_cut(answer, stops))
    return firsts, answers


def _cut(ids: list[int], stops: list[int]) -> list[int]:
    for i, tok in enumerate(ids):
        if tok in stops:
            return ids[:i]
    return ids


def _permute(weights, n_head: int):
    """HF's rotary layout -> llama.cpp's (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(merged, tokenizer, source: Path, out: Path, quant: str, stop: int) -> dict[str, Any]:
    import gguf
    import numpy as np

    cfg = merged.config
    if cfg.model_type != "llama":
        raise _problem("unsupported_architecture", f"{cfg.model_type} models are not exported yet; llama-type only",
                       "RUN")
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 1e4)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(out.stem)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    reader = gguf.GGUFReader(str(source))
    field = reader.fields

    def value(key):
        return field[key].contents() if key in field else None

    writer.add_tokenizer_model(value("tokenizer.ggml.model"))
    if value("tokenizer.ggml.pre"):
        writer.add_tokenizer_pre(value("tokenizer.ggml.pre"))
    writer.add_token_list(value("tokenizer.ggml.tokens"))
    writer.add_token_types(value("tokenizer.ggml.token_type"))
    if value("tokenizer.ggml.merges"):
        writer.add_token_merges(value("tokenizer.ggml.merges"))
    for key, add in (("tokenizer.ggml.bos_token_id", writer.add_bos_token_id),
                     ("tokenizer.ggml.unknown_token_id", writer.add_unk_token_id)):
        if value(key) is not None:
            add(value(key))
    writer.add_eos_token_id(stop)  # the token the adapter learnt to end its answers with
    writer.add_pad_token_id(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop)
    writer.add_add_bos_token(bool(value("tokenizer.ggml.add_bos_token")))
    if value("tokenizer.ggml.add_space_prefix") is not None:
        writer.add_add_space_prefix(bool(value("tokenizer.ggml.add_space_prefix")))
    writer.add_chat_template(tokenizer.chat_template)
    tied = getattr(cfg, "tie_word_embeddings", False)
    count = 0
    for name, tensor in merged.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue
        data = tensor.detach().float().cpu().numpy()
        target = _gguf_name(name)
        if target is None:
            raise _problem("unsupported_architecture", f"no GGUF name for the tensor {name}", "RUN")
        if target.endswith("attn_q.weight"):
            data = _permute(data, n_head)
        elif target.endswith("attn_k.weight"):
            data = _permute(data, n_kv)
        if data.ndim == 1:
            writer.add_tensor(target, data.astype(np.float32))
        elif quant == "f16":
            writer.add_tensor(target, data.astype(np.float16))
        else:
            packed = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(target, packed, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensors": count, "bytes": out.stat().st_size, "tokenizer_from": str(source)}


def _gguf_name(name: str) -> str | None:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")
    if parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        mapped = TENSOR_NAMES.get(".".join(parts[3:-1]))
        if mapped:
            return f"blk.{parts[2]}.{mapped}.weight"
    return None


def modelfile(gguf_name: str, template: str, stop_text: str) -> str:
    """An Ollama Modelfile. Ollama's templates are Go templates, not Jinja: the ChatML layout (the
    template the built-in model uses, with its default system prompt when none is given) is written
    out; another layout gets a plain role: content template and a note to check it."""
    default_system = None
    marker = "<|im_start|>system\n"
    if marker in template and "loop.first" in template:
        tail = template.split(marker, 2)[1]
        default_system = tail.split("<|im_end|>", 1)[0]
        if "{{" in default_system:
            default_system = None
    lines = [f"FROM ./{gguf_name}", ""]
    if "<|im_start|>" in template:
        system = ("{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
                  + (f"{{{{- else }}}}<|im_start|>system\n{default_system}<|im_end|>\n" if default_system else "")
                  + "{{ end }}")
        body = ("{{- range .Messages }}{{- if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}"
                "<|im_end|>\n{{ end }}{{ end }}<|im_start|>assistant\n")
        lines.append(f'TEMPLATE """{system}{body}"""')
    else:
        lines.append("# the adapter's chat template is not ChatML; this plain layout may differ from training")
        lines.append('TEMPLATE """{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant: """')
    lines += [f'PARAMETER stop "{stop_text}"', "PARAMETER temperature 0", ""]
    return "\n".join(lines)


def parity(gguf_path: Path, prompts: list[list[int]], firsts, answers, stops: list[int], texts: list[str],
           quant: str, max_new_tokens: int) -> dict[str, Any]:
    """llama.cpp on the exported file vs the adapter's reference figures."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=CTX, logits_all=True, verbose=False, n_threads=2, seed=0)
    kls, same_tokens, same_answer, same_top1, examples = [], 0, 0, 0, []
    forced, forced_total = 0, 0
    for ids, ref_first, ref_answer, text in zip(prompts, firsts, answers, texts):
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        same_tokens += tokens == ids
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        logp = logits - logits.max()
        logp -= math.log(np.exp(logp).sum())
        p = np.exp(ref_first.astype(np.float64))
        kls.append(float(np.sum(p * (ref_first - logp))))
        same_top1 += int(np.argmax(logp)) == int(np.argmax(ref_first))
        answer: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token in stops:
                break
            answer.append(token)
            llm.eval([token])
        same_answer += answer == ref_answer
        llm.reset()
        llm.eval(ids + ref_answer)  # teacher forcing: does llama.cpp pick each of the adapter's tokens?
        picks = np.argmax(llm.scores[len(ids) - 1:len(ids) + len(ref_answer) - 1], axis=-1)
        forced += int(np.sum(picks == np.asarray(ref_answer)))
        forced_total += len(ref_answer)
        if len(examples) < 5:
            examples.append({"adapter": llm.detokenize(ref_answer).decode("utf-8", "replace"),
                             "gguf": llm.detokenize(answer).decode("utf-8", "replace")})
    n = len(prompts)
    result = {"checked": True, "prompts": n, "tokenizer_match": same_tokens / n, "max_kl": max(kls),
              "mean_kl": sum(kls) / n, "top1_match": same_top1 / n, "greedy_match": same_answer / n,
              "forced_match": forced / max(forced_total, 1),
              "tolerance": {"tokenizer_match": 1.0, "max_kl": MAX_KL[quant], "greedy_match": MIN_GREEDY[quant],
                            "forced_match": MIN_FORCED[quant]},
              "examples": examples}
    result["ok"] = (result["tokenizer_match"] == 1.0 and result["max_kl"] <= MAX_KL[quant]
                    and result["greedy_match"] >= MIN_GREEDY[quant] and result["forced_match"] >= MIN_FORCED[quant])
    return result


def have_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def quantize_k(src: Path, dst: Path) -> None:
    """An f16 GGUF file quantized to Q4_K_M by llama.cpp."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise _problem("export_failed", "llama.cpp could not quantize the file to q4_k_m", str(dst))


def publish(out: Path, quant: str, write: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """`write(path)` into a hidden file beside `out`, quantized to q4_k_m if asked, then renamed
    to `out`: a failure anywhere (a full disk, llama.cpp refusing) leaves neither a partial
    `out` nor a hidden file behind, and an earlier `out` stays as it was."""
    tmp, quantized = out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.q4.tmp")
    try:
        written = write(tmp)
        if quant == "q4_k_m":
            quantize_k(tmp, quantized)
            os.replace(quantized, tmp)
            written["bytes"] = tmp.stat().st_size
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        quantized.unlink(missing_ok=True)
    return written


def export(run: Path, out: Path, quant: str = "f16", samples: int = 16, max_new_tokens: int = 16) -> dict[str, Any]:
    from tuneforge.models.template import render, stop_ids, turn_end_id
    from tuneforge.models.tuned import artifact_dir, base_of, load_tuned
    from tuneforge.outdir import check_out

    if quant not in QUANTS:
        raise _problem("invalid_value", f"--quant {quant!r}: choose one of {', '.join(QUANTS)}", "--quant")
    if quant == "q4_k_m" and not have_llama_cpp():
        raise _problem("needs_llama_cpp", "q4_k_m is quantized by llama.cpp: pip install llama-cpp-python "
                       "(or: pip install -e '.[export]'), or choose --quant f16 or q8_0", "--quant")
    if out.suffix != ".gguf":
        raise _problem("invalid_value", "the output file name ends in .gguf", "--out")
    problems = check_out(out.parent)
    if problems:
        raise TuneforgeError(problems)
    folder = artifact_dir(Path(run))
    adapter = (folder / "adapter_config.json").exists()
    source = base_gguf(base_of(folder) if adapter else str(folder))
    messages = validation_prompts(Path(run), samples)
    model, tokenizer = load_tuned(folder)
    model.eval()
    stop = turn_end_id(tokenizer)
    stops = stop_ids(tokenizer)
    texts = [render(tokenizer, m, generation_prompt=True) for m in messages]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    firsts, answers = reference_answers(model, tokenizer, prompts, max_new_tokens, stops)
    merged = model.merge_and_unload() if adapter else model
    out.parent.mkdir(parents=True, exist_ok=True)
    written = publish(out, quant, lambda tmp: write_gguf(merged, tokenizer, source, tmp,
                                                         "f16" if quant == "q4_k_m" else quant, stop))
    stop_text = tokenizer.convert_ids_to_tokens(stop)
    model_file = out.with_suffix(".Modelfile")
    model_file.write_text(modelfile(out.name, tokenizer.chat_template or "", stop_text))
    report: dict[str, Any] = {"run": str(run), "gguf": str(out), "quant": quant, "modelfile": str(model_file),
                              "stop_token": stop_text, **written}
    if not have_llama_cpp():
        report["parity"] = {"checked": False, "ok": None, "reason": "llama-cpp-python is not installed "
                            "(pip install llama-cpp-python); the file was written but not run"}
    else:
        report["parity"] = parity(out, prompts, firsts, answers, stops, texts, quant, max_new_tokens)
    out.with_suffix(".export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
