"""The one home of chat formatting: rendering a conversation, the token that ends a turn,
and the pad token. prepare (token counts), train (loss masks), evaluate and serve
(prompts and stop tokens), generate and merge all call these, so a model is formatted
the same way at every stage.

A tokenizer with a chat template uses it. A tokenizer without one (a base model) gets a
plain layout, `role: content` per line, with EOS closing each assistant turn, so a
fine-tune learns to stop and every stage stops on the same token. A tokenizer with
neither a template nor an EOS token cannot mark the end of an answer and is refused up
front by `check_tokenizer`.
"""

from __future__ import annotations

from typing import Any

from tuneforge.errors import Problem, TuneforgeError

_MARKER = "XQZTURNXQZ"


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def check_tokenizer(tokenizer, where: str = "") -> None:
    """Refuse a tokenizer that could not end an answer; set the pad token where missing."""
    if not has_template(tokenizer) and tokenizer.eos_token is None:
        raise TuneforgeError(Problem(
            "no_end_token", "the model's tokenizer has neither a chat template nor an EOS token, so a fine-tune "
            "could never learn where an answer ends; use a model whose tokenizer defines eos_token", where))
    ensure_pad(tokenizer)


def ensure_pad(tokenizer):
    """Batches need a pad id; models without one pad with EOS (padding is masked out anyway)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _plain(messages: list[dict[str, Any]], generation_prompt: bool, eos: str) -> str:
    text = "".join(f"{m['role']}: {m['content']}{eos if m['role'] == 'assistant' else ''}\n" for m in messages)
    return text + ("assistant: " if generation_prompt else "")


def render(tokenizer, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
    """The conversation as the model sees it; `generation_prompt` opens the assistant's turn."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    if has_template(tokenizer):
        return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt)
    return _plain(plain, generation_prompt, tokenizer.eos_token or "")


def encode_prompt(tokenizer, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of the conversation followed by the opening of the assistant's turn."""
    text = render(tokenizer, messages, generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def turn_end_id(tokenizer) -> int | None:
    """The token that closes an assistant turn (what training teaches the model to emit after
    an answer), found by rendering a turn and reading what follows the content; EOS when the
    template adds nothing recognisable."""
    try:
        text = render(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARKER}])
    except Exception:  # a template that raises on this minimal exchange: EOS is all we can know
        return tokenizer.eos_token_id
    tail = text.split(_MARKER, 1)[-1].strip()
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    return ids[0] if ids else tokenizer.eos_token_id


def stop_ids(tokenizer, configured=None) -> list[int]:
    """Every id that ends generation: `configured` (a generation config's eos_token_id, an id
    or a list), the template's end of turn and the tokenizer's EOS."""
    ids = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    ids += [turn_end_id(tokenizer), tokenizer.eos_token_id]
    found: list[int] = []
    for i in ids:
        if i is not None and i not in found:
            found.append(int(i))
    return found
