"""Method name -> model ready to train (PEFT adapters, 4-bit base for QLoRA, or all weights)."""

from __future__ import annotations

from typing import Any

from tuneforge.train.config import TrainConfig


def peft_config(cfg: TrainConfig, model_path: str) -> Any | None:
    from peft import (IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit,
                      TaskType)

    task = TaskType.CAUSAL_LM
    if cfg.method in ("lora", "qlora", "dora"):
        return LoraConfig(task_type=task, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target_modules, use_dora=cfg.method == "dora")
    if cfg.method == "ia3":
        return IA3Config(task_type=task)
    if cfg.method == "prefix":
        return PrefixTuningConfig(task_type=task, num_virtual_tokens=cfg.virtual.num_virtual_tokens)
    if cfg.method == "prompt":
        return PromptTuningConfig(task_type=task, num_virtual_tokens=cfg.virtual.num_virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.TEXT,
                                  prompt_tuning_init_text=cfg.virtual.init_text, tokenizer_name_or_path=model_path)
    return None


def build_model(cfg: TrainConfig, model_path: str, device: str, bf16: bool, packing: bool = False):
    """Load the base model for `cfg.method` and wrap it for training (for int8_base, see
    fused_lora.quantize_base)."""
    import torch
    from transformers import AutoModelForCausalLM

    # Adapter methods keep the frozen base in bfloat16 when bf16 is on (no per-step weight
    # casts; the adapter weights and their optimizer state stay float32). Full fine-tuning
    # keeps float32 master weights and relies on autocast.
    frozen_bf16 = bf16 and cfg.method not in ("full", "qlora")
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if frozen_bf16 else torch.float32}
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32)
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if cfg.method != "qlora":
        model.to(device)
    model.config.use_cache = False
    if packing:
        from tuneforge.train.attention import use_packed_attention

        use_packed_attention(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        keep_4bit_layout(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    config = peft_config(cfg, model_path)
    if config is None:
        return model
    from peft import get_peft_model

    from tuneforge.train.fused_lora import fuse_lora

    model = get_peft_model(model, config)
    fuse_lora(model)
    return model


def keep_4bit_layout(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU kernel. On a CPU with
    AVX512-BF16 it does so, in place, the first time a layer runs in eval mode without grad
    (the loop's first eval), rounding the block scales to bfloat16 (and again at every
    state_dict): the frozen base would change mid-run, so a resumed run would not match an
    uninterrupted one and the adapter would not have been trained on the base it loads onto."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
