"""`tuneforge advise method`: how much memory each fine-tuning method needs, and which to use.

    tuneforge advise method --model-params 7e9 --gpu-gb 24 --seq-len 2048 --batch 4
    tuneforge advise method --model smollm2-135m --device cpu --seq-len 128 --batch 8

The estimate follows what `tuneforge train` does. With P parameters, A trainable ones, T =
batch * seq_len tokens per micro-batch (plus V_t virtual tokens per example for prompt tuning),
L layers of a Llama-shaped decoder (hidden h, query width q = heads * head_dim, key/value width
k = kv_heads * head_dim, MLP width i, vocab V) and LoRA rank r:

    weights      full: 4 P (float32 master weights; bf16 is autocast)
                 lora, prefix, prompt: 2 P in bf16, 4 P in float32 (the frozen base);
                 lora with int8_base adds 2 bytes per block-linear weight (its two int8 copies)
                 qlora: 0.516 bytes per block-linear weight (NF4 plus double-quantised scales,
                 4.127 bits), 4 bytes for the rest (embeddings, norms: train loads QLoRA in
                 float32 and PEFT's k-bit preparation keeps them there)
    gradients    4 A (float32; full: A = P)
    optimizer    8 A (AdamW's two float32 moments)
    activations  what autograd keeps for backward, in values per token and layer:
                   lora, qlora  4h + 3q + 2k + 4i + 7r   the norms' inputs (2h), the inputs of
                                the linear layers (2h + q + i), q, k, v and the attention
                                output (2q + 2k), the MLP's gate, up and SiLU (3i), LoRA's
                                rank-r intermediates (7r)
                   full         6h + 3q + 2k + 4i        the same, and the trained norms keep
                                their normalised inputs (2h)
                   prefix, prompt  2h + 2q + 2k + 3i     frozen linear layers keep no inputs
                 times T * L, plus 2h per token for the final norm, at 2 bytes in bf16 and 4 in
                 float32; with gradient checkpointing T * L * h (each layer's input) plus one
                 layer's set, recomputed in backward;
                 + backward's working set, one layer's gradients in flight: 2 T (h + i) values;
                 + logits, only at the T_loss tokens that carry a loss (--answer-tokens per
                 example; train computes no others): 2 * T_loss * V * 4 bytes (float32 logits
                 and their log-softmax).
                 On CPU all of that is doubled (RETENTION): glibc's malloc keeps most of what a
                 step frees (forward's temporaries are about as large as what it saves) and hands
                 it back to the next step only in part, so the resident set settles near twice
                 the saved tensors. On CUDA PyTorch's caching allocator reuses its blocks: 1x.
    adapter      4 A bytes on disk (full: the whole model, 4 P)
    runtime      what the process holds before any of the above: on CUDA the context and
                 kernels (0.5 GB, a rule of thumb); on CPU Python with torch, transformers, PEFT
                 and the tokenizer loaded (0.47 GB, tuneforge's RSS just before the model loads)

Trainable parameters: LoRA on every linear layer, r * (in + out) summed over q, k, v, o, gate, up
and down: r * L * (7h + 2q + 2k + 3i); prefix tuning V_t * L * 2k (keys and values per layer);
prompt tuning V_t * h. These match PEFT's counts exactly (tests/unit/test_advise.py), and the
per-layer activation counts are within 10% of the tensors autograd saves on a tiny model.

Given only --model-params, the shape is assumed Llama-like: all parameters in the blocks, 12 L h^2
= P with h about 128 L (L = (P / (12 * 128^2))^(1/3) rounded, h = (P / 12 L)^(1/2) rounded to 64),
i = 8h/3, no grouped KV, V = 32000. With --model the shape comes from the model's config.json.

A method "fits" when its total is within the memory given (--gpu-gb; on CPU the machine's RAM by
default), "with checkpointing" when only its checkpointed total is. The recommendation is the
guides': LoRA unless you have a reason, QLoRA on limited hardware.

Checked against the built-in model (SmolLM2-135M) trained by `tuneforge train` on a 2-core CPU,
examples of 75 tokens, 8-24 steps, peak RSS from summary.json against the CPU estimate with the
runtime included (MiB):

    lora fp32 batch 4 / 8 / 16     1702 / 2431 / 3958  vs  1804 / 2559 / 4066   (1.06, 1.05, 1.03)
    lora bf16 batch 8 / 16         1646 / 2398         vs  1556 / 2320          (0.95, 0.97)
    lora fp32 batch 16, checkpointing   1777  vs  1392   (0.78: recomputation fragments more)
    full fp32 batch 8              3555  vs  4185   (1.18: gradients and activations never peak
                                                     together, the sum assumes they do)
    prompt fp32 batch 8            2089  vs  2340   (1.12)

tests/integration/test_advise_builtin.py repeats the LoRA float32 batch-8 case through the CLI and
holds it to 30%, with and without the runtime term (against RSS minus a measured baseline). The
CUDA figures are the same formulas without the CPU retention; they were not measured here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from tuneforge.advise import build
from tuneforge.config import Strict
from tuneforge.errors import Problem, fail

GB = 2**30
NF4_BYTES = 4.127 / 8  # 4-bit codes + 8-bit absmax per 64 weights + fp32 scale per 256 absmax
RUNTIME_GB = {"cuda": 0.5, "cpu": 0.47}
# resident bytes per byte of saved activations: glibc's malloc keeps what a step frees (see above)
RETENTION = {"cuda": 1.0, "cpu": 2.0}
METHODS = ("full", "lora", "qlora", "prefix", "prompt")
PROMPT_METHODS = ("prefix", "prompt")
ASSUMED_VOCAB = 32000


class MethodConfig(Strict):
    model_params: Optional[float] = Field(None, gt=0, description="parameters of the base model, e.g. 7e9")
    model: Optional[str] = Field(None, description="built-in name or model folder to read the shape from")
    device: Literal["cuda", "cpu"] = Field("cuda", description="where training runs")
    gpu_gb: Optional[float] = Field(None, gt=0, description="memory available [cuda: 24; cpu: this machine's RAM]")
    seq_len: int = Field(2048, ge=1, description="tokens per example")
    batch: int = Field(4, ge=1, description="examples per micro-batch")
    answer_tokens: Optional[int] = Field(None, ge=1, description="tokens per example that carry a loss [seq_len]")
    precision: Literal["auto", "bf16", "fp32", "int8"] = Field(
        "auto", description="compute precision [auto: as train]; int8: float32 with lora's frozen base in int8")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    virtual_tokens: int = Field(20, ge=1, description="prefix/prompt tuning virtual tokens")


def combination(values: dict[str, Any]) -> list[Problem]:
    if ("model_params" in values) == ("model" in values):
        return [Problem("missing_flag" if "model" not in values else "conflicting_flags",
                        "give one of --model-params (e.g. 7e9) or --model (a built-in name or model folder)",
                        "--model-params")]
    return []


@dataclass(frozen=True)
class Shape:
    params: float
    layers: int
    hidden: int
    q_width: int
    kv_width: int
    intermediate: int
    vocab: int
    block_linear: float  # parameters in the blocks' linear layers (what QLoRA quantises)
    source: str


def _block_linear(layers: int, h: int, q: int, k: int, i: int) -> int:
    return layers * (2 * h * q + 2 * h * k + 3 * h * i)


def assumed_shape(params: float) -> Shape:
    layers = max(1, round((params / (12 * 128**2)) ** (1 / 3)))
    h = max(64, round((params / (12 * layers)) ** 0.5 / 64) * 64)
    i = round(8 * h / 3)
    return Shape(params, layers, h, h, h, i, ASSUMED_VOCAB, min(params, _block_linear(layers, h, h, h, i)),
                 "assumed Llama-like from --model-params")


def config_shape(config: dict[str, Any], where: str) -> Shape:
    """The shape of a Llama-like model (Llama, Mistral, Qwen, SmolLM, Gemma...) from its config.json."""
    config = config.get("text_config", config)
    need = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size")
    missing = [k for k in need if not isinstance(config.get(k), int)]
    if missing:
        raise fail("unknown_shape", f"config.json has no {', '.join(missing)} (not a Llama-like decoder); pass "
                   "--model-params instead", where)
    h, layers, i = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    q, k = heads * head_dim, (config.get("num_key_value_heads") or heads) * head_dim
    vocab = config["vocab_size"]
    linear = _block_linear(layers, h, q, k, i)
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings", False) else 2)
    params = linear + embeddings + layers * 2 * h + h  # + the norms
    return Shape(params, layers, h, q, k, i, vocab, linear, f"config.json of {where}")


def model_shape(name: str) -> Shape:
    from tuneforge.models.resolve import resolve_model

    path = resolve_model(name) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail("invalid_model_config", f"cannot read it ({type(exc).__name__})", str(path)) from None
    if not isinstance(config, dict):
        raise fail("invalid_model_config", "not a JSON object", str(path))
    return config_shape(config, name)


def lora_params(s: Shape, r: int) -> int:
    per_layer = (s.hidden + s.q_width) + 2 * (s.hidden + s.kv_width) + (s.q_width + s.hidden) \
        + 3 * (s.hidden + s.intermediate)
    return r * s.layers * per_layer


def trainable(s: Shape, method: str, cfg: MethodConfig) -> float:
    if method == "full":
        return s.params
    if method in ("lora", "qlora"):
        return lora_params(s, cfg.lora_r)
    if method == "prefix":
        return cfg.virtual_tokens * s.layers * 2 * s.kv_width
    return cfg.virtual_tokens * s.hidden


def weight_bytes(s: Shape, method: str, bf16: bool, int8: bool = False) -> float:
    if method == "lora" and int8:
        return 4 * s.params + 2 * s.block_linear
    if method == "full":
        return 4 * s.params
    if method == "qlora":
        return NF4_BYTES * s.block_linear + 4 * (s.params - s.block_linear)
    return (2 if bf16 else 4) * s.params


def activation_bytes(s: Shape, method: str, cfg: MethodConfig, bf16: bool, checkpointed: bool) -> float:
    extra = cfg.virtual_tokens if method == "prompt" else 0  # prompt tuning prepends them to the input
    tokens = cfg.batch * (cfg.seq_len + extra)
    loss_tokens = cfg.batch * min(cfg.answer_tokens or cfg.seq_len, cfg.seq_len)
    h, q, k, i = s.hidden, s.q_width, s.kv_width, s.intermediate
    if method in PROMPT_METHODS:  # frozen linear layers keep no inputs for backward
        per_layer = 2 * h + 2 * q + 2 * k + 3 * i
    elif method == "full":  # trained norm weights also keep the normalised inputs
        per_layer = 6 * h + 3 * q + 2 * k + 4 * i
    else:
        per_layer = 4 * h + 3 * q + 2 * k + 4 * i + 7 * cfg.lora_r
    layers = tokens * (s.layers * h + per_layer) if checkpointed else tokens * s.layers * per_layer
    values = layers + tokens * 2 * h  # + the final norm's input and output
    working = 2 * tokens * (h + i)
    saved = (values + working) * (2 if bf16 else 4) + 2 * loss_tokens * s.vocab * 4
    return saved * RETENTION[cfg.device]


def estimate(s: Shape, method: str, cfg: MethodConfig, bf16: bool, int8: bool = False) -> dict[str, Any]:
    a = trainable(s, method, cfg)
    states = 12 * a  # float32 gradients (4) + AdamW moments (8)
    weights = weight_bytes(s, method, bf16, int8)
    runtime = RUNTIME_GB[cfg.device] * GB
    act = activation_bytes(s, method, cfg, bf16, False)
    act_ckpt = activation_bytes(s, method, cfg, bf16, True)
    row = {"method": method, "trainable_params": int(a), "weights_gb": weights / GB,
           "gradients_gb": 4 * a / GB, "optimizer_gb": 8 * a / GB, "activations_gb": act / GB,
           "activations_checkpointed_gb": act_ckpt / GB, "runtime_gb": runtime / GB,
           "total_gb": (weights + states + act + runtime) / GB,
           "total_checkpointed_gb": (weights + states + act_ckpt + runtime) / GB,
           "adapter_mb": 4 * a / 2**20}
    if method == "prefix":  # train refuses prefix + gradient checkpointing (PEFT's prefix cache)
        row["total_checkpointed_gb"] = row["total_gb"]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def _memory_gb(cfg: MethodConfig) -> tuple[float, str]:
    if cfg.gpu_gb is not None:
        return cfg.gpu_gb, "given"
    if cfg.device == "cuda":
        return 24.0, "default"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / GB, 1), "this machine's RAM"
    except OSError:
        pass
    raise fail("unknown_memory", "cannot read this machine's RAM; pass --gpu-gb", "--gpu-gb")


def _bf16(cfg: MethodConfig) -> bool:
    if cfg.precision != "auto":
        return cfg.precision == "bf16"
    if cfg.device == "cuda":
        return True  # every GPU worth training on since Ampere; --precision fp32 otherwise
    from tuneforge.train.run import bf16_supported

    return bf16_supported("cpu")


def _int8(cfg: MethodConfig, bf16: bool) -> bool:
    """Whether train's int8_base (default auto) would be on for lora."""
    if cfg.precision != "auto":
        return cfg.precision == "int8"
    from tuneforge.train.run import int8_gemm_preferred

    return cfg.device == "cpu" and not bf16 and int8_gemm_preferred("cpu")


def fit(row: dict[str, Any], memory: float) -> str:
    if row["total_gb"] <= memory:
        return "yes"
    return "with checkpointing" if row["total_checkpointed_gb"] <= memory else "no"


def recommend(rows: dict[str, dict[str, Any]], memory: float) -> tuple[str | None, list[str]]:
    lora, qlora, full = rows["lora"], rows["qlora"], rows["full"]
    reasons = []
    choice = None
    if lora["fits"] != "no":
        choice = "lora"
        reasons.append(f"LoRA unless you have a reason: it fits in {memory:g} GB ({_need(lora)}), trains "
                       f"{lora['trainable_params']:,} weights and saves a {lora['adapter_mb']:.0f} MB adapter")
    elif qlora["fits"] != "no":
        choice = "qlora"
        reasons.append(f"LoRA does not fit ({lora['total_checkpointed_gb']:.1f} GB even with checkpointing, "
                       f"{memory:g} GB available); QLoRA keeps the base in 4 bits: {_need(qlora)}")
    else:
        reasons.append(f"nothing fits in {memory:g} GB: even QLoRA with checkpointing needs "
                       f"{qlora['total_checkpointed_gb']:.1f} GB; lower --batch or --seq-len, or use more memory")
    if choice and rows[choice]["fits"] == "with checkpointing":
        reasons.append("turn on gradient checkpointing (--set gradient_checkpointing=true): about a third slower")
    if full["fits"] == "yes":
        reasons.append(f"full fine-tuning also fits ({full['total_gb']:.1f} GB); it pays only with much data and "
                       "when LoRA falls short")
    reasons.append("prefix and prompt tuning need the least memory but usually score below LoRA")
    return choice, reasons


def _need(row: dict[str, Any]) -> str:
    if row["fits"] == "yes":
        return f"{row['total_gb']:.1f} GB"
    return f"{row['total_checkpointed_gb']:.1f} GB with gradient checkpointing"


def advise_method(values: dict[str, Any]) -> dict[str, Any]:
    cfg = build(MethodConfig, values, combination)
    shape = model_shape(cfg.model) if cfg.model else assumed_shape(cfg.model_params)
    bf16 = _bf16(cfg)
    int8 = _int8(cfg, bf16)
    memory, memory_source = _memory_gb(cfg)
    rows = {m: estimate(shape, m, cfg, bf16, int8) for m in METHODS}
    for row in rows.values():
        row["fits"] = fit(row, memory)
    choice, reasons = recommend(rows, memory)
    precision = "bf16" if bf16 else "fp32, lora's base in int8" if int8 else "fp32"
    return {"recommendation": choice, "reasons": reasons, "device": cfg.device, "memory_gb": memory,
            "memory_source": memory_source, "precision": precision,
            "seq_len": cfg.seq_len, "batch": cfg.batch, "lora_r": cfg.lora_r, "shape": asdict(shape),
            "methods": rows}


def _size(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.1f} MB" if mb >= 0.1 else f"{mb * 1024:.0f} KB"


def text(r: dict[str, Any]) -> str:
    shape = r["shape"]
    lines = [f"{shape['params'] / 1e9:.3g}B parameters ({shape['source']}), {r['device']}, {r['precision']}, "
             f"seq_len {r['seq_len']}, batch {r['batch']}; memory {r['memory_gb']:g} GB ({r['memory_source']})",
             f"{'method':<8}{'weights':>9}{'grads+opt':>11}{'activ.':>9}{'(ckpt)':>9}{'total':>9}{'(ckpt)':>9}"
             f"{'adapter':>11}  fits"]
    for m, row in r["methods"].items():
        states = row["gradients_gb"] + row["optimizer_gb"]
        lines.append(f"{m:<8}{row['weights_gb']:>9.2f}{states:>11.2f}{row['activations_gb']:>9.2f}"
                     f"{row['activations_checkpointed_gb']:>9.2f}{row['total_gb']:>9.2f}"
                     f"{row['total_checkpointed_gb']:>9.2f}{_size(row['adapter_mb']):>11}  {row['fits']}")
    lines.append("(GB = 2^30 bytes; totals include the runtime: "
                 f"{r['methods']['lora']['runtime_gb']:g} GB)")
    lines.append(f"recommendation: {r['recommendation'] or 'none fits'}")
    lines += [f"  - {reason}" for reason in r["reasons"]]
    return "\n".join(lines)
