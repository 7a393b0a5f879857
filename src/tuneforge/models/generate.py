"""Single-prompt generation, so a user can see a model (or a fine-tune) work."""

from __future__ import annotations

from pathlib import Path


def complete(model_name: str, prompt: str, chat: bool = False, max_new_tokens: int = 64,
             temperature: float = 0.0, adapter: Path | None = None) -> str:
    import torch

    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.models.template import check_tokenizer, encode_prompt, stop_ids
    from tuneforge.models.tuned import load_tuned

    if adapter is not None:
        model, tokenizer = load_tuned(adapter)
    else:
        tokenizer, model = load_tokenizer(model_name), load_model(model_name)
    check_tokenizer(tokenizer, str(adapter or model_name))
    if chat:
        ids = torch.tensor([encode_prompt(tokenizer, [{"role": "user", "content": prompt}])])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    else:
        inputs = tokenizer(prompt, return_tensors="pt")
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=stop_ids(tokenizer, model.generation_config.eos_token_id), **sampling)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
