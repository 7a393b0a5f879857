"""Memorisation check: does the base model already know these records by heart?

For each sampled record we give the model its first 16 tokens and let it
continue greedily for 16 more; a record counts as reproduced when those
16 tokens match the record exactly. A high share suggests the data is in the
model's pre-training set, so evaluation on it would flatter the model.
"""

from __future__ import annotations

from typing import Any

PREFIX = 16
CONTINUATION = 16


def memorisation(model_name: str, texts: list[str], batch_size: int = 16) -> dict[str, Any]:
    import torch

    from tuneforge.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_name)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    usable = [ids for ids in encoded if len(ids) >= PREFIX + CONTINUATION]
    result: dict[str, Any] = {"checked": len(usable), "reproduced": 0, "skipped_short": len(texts) - len(usable)}
    if not usable:
        return result
    model = load_model(model_name)
    pad = tokenizer.pad_token_id
    reproduced = 0
    with torch.inference_mode():
        for start in range(0, len(usable), batch_size):
            chunk = usable[start:start + batch_size]
            # every prefix has exactly PREFIX tokens, so no padding is needed
            prompts = torch.tensor([ids[:PREFIX] for ids in chunk])
            out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                                 max_new_tokens=CONTINUATION, do_sample=False, pad_token_id=pad,
                                 eos_token_id=None)
            for ids, generated in zip(chunk, out[:, PREFIX:].tolist()):
                reproduced += generated[:CONTINUATION] == ids[PREFIX:PREFIX + CONTINUATION]
    result["reproduced"] = int(reproduced)
    result["rate"] = round(reproduced / len(usable), 4)
    return result
