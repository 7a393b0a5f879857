"""Detect a record's format and normalise it to the canonical record.

Canonical records (one JSON object per line in the prepared dataset):
- chat:       {"messages": [{"role", "content", "weight"?}, ...], "meta": {...}}
- preference: {"messages": [prompt turns], "chosen": str, "rejected": str, "meta": {...}}
- text:       {"text": str, "meta": {...}}

Every check here returns problems instead of raising, so one pass lists them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from tuneforge.errors import Problem

FormatName = Literal["auto", "openai", "prompt_completion", "alpaca", "sharegpt", "text", "preference", "columns"]
FORMATS = ("openai", "prompt_completion", "alpaca", "sharegpt", "text", "preference", "columns")
LABEL_COLUMNS = ("label", "category", "intent", "class", "output")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bot": "assistant", "model": "assistant", "system": "system"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
EXPECTED = ("messages | prompt+completion | instruction+output | conversations | text | "
            "prompt+chosen+rejected")


@dataclass
class Normalised:
    kind: str = ""
    fmt: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    chosen: str = ""
    rejected: str = ""
    text: str = ""
    problems: list[Problem] = field(default_factory=list)

    def bad(self, code: str, message: str) -> "Normalised":
        self.problems.append(Problem(code, message))
        return self


@dataclass(frozen=True)
class Columns:
    """How to read flat rows (CSV, Parquet, or forced `columns` format)."""

    input_col: str | None = None
    output_col: str | None = None
    system: str | None = None


def detect(obj: dict[str, Any], columns: Columns) -> str | None:
    if columns.input_col:
        return "columns"
    # before `messages`: prepare writes preference pairs as messages (the prompt) + chosen/rejected
    if "chosen" in obj and "rejected" in obj:
        return "preference"
    if "messages" in obj:
        return "openai"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "prompt" in obj and "completion" in obj:
        return "prompt_completion"
    if "text" in obj and any(c in obj for c in LABEL_COLUMNS):
        return "columns"
    if "text" in obj:
        return "text"
    # a known key with its partner missing: report the missing field, not an unknown format
    for key, name in (("instruction", "alpaca"), ("output", "alpaca"), ("prompt", "prompt_completion"),
                      ("completion", "prompt_completion"), ("chosen", "preference"), ("rejected", "preference")):
        if key in obj:
            return name
    return None


def _parts(parts: list, name: str, out: Normalised) -> str | None:
    """OpenAI content parts: text parts are joined with newlines (as vLLM does, so words of
    neighbouring parts never run together); every other part is a problem, each reported."""
    texts: list[str] = []
    ok = True
    for i, part in enumerate(parts):
        where = f"{name}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            out.bad("wrong_type", f"{where} must be a content part such as {{\"type\": \"text\", \"text\": \"...\"}}")
            ok = False
        elif kind != "text":
            out.bad("unsupported_content_part", f"{where} is a '{kind}' part; only text can be trained on here, so "
                    "remove the part or describe it in a text part")
            ok = False
        elif not isinstance(part.get("text"), str):
            out.bad("wrong_type", f"{where}.text must be a string")
            ok = False
        else:
            texts.append(part["text"])
    return "\n".join(texts) if ok else None


def _text(value: Any, name: str, out: Normalised, required: bool = True) -> str | None:
    """A non-empty string field, or a problem; OpenAI content parts are joined."""
    if value is None:
        if required:
            out.bad("missing_field", f"'{name}' is missing")
        return None
    if isinstance(value, list):
        value = _parts(value, name, out)
        if value is None:
            return None
    if not isinstance(value, str):
        out.bad("wrong_type", f"'{name}' must be a string, not {type(value).__name__}")
        return None
    if not value.strip():
        if required:
            out.bad("empty_content", f"'{name}' is empty")
        return None
    return value


def _check_turns(out: Normalised, where: str) -> None:
    roles = [m["role"] for m in out.messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        out.bad("bad_turn_order", f"{where}: a system message may only come first")
        return
    if not body:
        out.bad("no_assistant_turn", f"{where}: there is no user or assistant message")
        return
    if body[0] != "user":
        out.bad("bad_turn_order", f"{where}: the first message after the system prompt must be from the user")
        return
    for a, b in zip(body, body[1:]):
        if a == b:
            out.bad("bad_turn_order", f"{where}: two '{a}' messages in a row; user and assistant must alternate")
            return
    if "assistant" not in body:
        out.bad("no_assistant_turn", f"{where}: there is no assistant message to learn from")
    elif body[-1] != "assistant":
        out.bad("bad_turn_order", f"{where}: the conversation must end with an assistant message")


_WELL_ORDERED = frozenset(
    [("user", "assistant") * k for k in range(1, 33)] + [("system",) + ("user", "assistant") * k for k in range(1, 33)]
)


def _plain_openai(raw: list, out: Normalised) -> bool:
    """Fast path for the common case (plain string messages, well ordered); False means
    'take the careful path', which also finds every problem."""
    roles = []
    for msg in raw:
        if type(msg) is not dict or len(msg) != 2:
            return False
        content = msg.get("content")
        if type(content) is not str or not content.strip():
            return False
        roles.append(msg.get("role"))
    if tuple(roles) not in _WELL_ORDERED:
        return False
    out.messages = [{"role": m["role"], "content": m["content"]} for m in raw]
    return True


def _messages(raw: Any, out: Normalised, key: str, role_key: str, text_key: str, role_map: dict | None) -> None:
    if not isinstance(raw, list):
        out.bad("wrong_type", f"'{key}' must be a list of messages, not {type(raw).__name__}")
        return
    if not raw:
        out.bad("empty_content", f"'{key}' is an empty list")
        return
    if role_map is None and _plain_openai(raw, out):
        return
    for i, msg in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(msg, dict):
            out.bad("wrong_type", f"{where} must be an object, not {type(msg).__name__}")
            continue
        # the role and the content are both checked, so one pass names every problem of the message
        role = msg.get(role_key)
        mapped = None
        if not isinstance(role, str):
            out.bad("missing_field" if role is None else "wrong_type", f"{where}.{role_key} must be a string")
        else:
            mapped = (role_map or {}).get(role.lower(), role if role_map is None else None)
            if mapped == "developer":
                mapped = "system"
            if mapped not in ROLES:
                valid = ", ".join(role_map) if role_map else ", ".join(ROLES)
                out.bad("invalid_role", f"{where}.{role_key} is '{role}'; use one of {valid}")
                mapped = None
        content = _text(msg.get(text_key), f"{where}.{text_key}", out)
        if content is None or mapped is None:
            continue
        message = {"role": mapped, "content": content}
        if "weight" in msg:
            weight = msg["weight"]
            if mapped != "assistant" or weight not in (0, 1) or isinstance(weight, bool):
                out.bad("invalid_weight", f"{where}.weight must be 0 or 1, and only on assistant messages")
                continue
            message["weight"] = int(weight)
        out.messages.append(message)
    if not out.problems:
        _check_turns(out, key)
        if not out.problems and all(m.get("weight", 1) == 0 for m in out.messages if m["role"] == "assistant"):
            out.bad("no_trainable_tokens", "every assistant message has weight 0, so nothing would be learned")


def _hh_transcript(prompt: str) -> list[dict[str, str]] | None:
    """Parse an Anthropic HH-style '\\n\\nHuman: ... \\n\\nAssistant:' prompt into turns."""
    parts = _HH_TURN.split("\n\n" + prompt.lstrip("\n") if not prompt.startswith("\n\n") else prompt)
    if len(parts) < 3:
        return None
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        turns.append({"role": role, "content": content.strip()})
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()
    return turns if turns and all(t["content"] for t in turns) else None


def _preference(obj: dict[str, Any], out: Normalised) -> None:
    prompt = obj.get("prompt", obj.get("messages"))
    if isinstance(prompt, list):
        _messages(prompt + [{"role": "assistant", "content": "x"}], out, "prompt", "role", "content", None)
        out.messages = out.messages[:-1]
    else:
        text = _text(prompt, "prompt", out)
        if text is not None:
            out.messages = _hh_transcript(text) or [{"role": "user", "content": text}]
    for side in ("chosen", "rejected"):
        value = obj.get(side)
        if isinstance(value, list) and value and isinstance(value[-1], dict):
            value = value[-1].get("content")
        text = _text(value, side, out)
        setattr(out, side, text or "")
    if not out.problems and out.chosen.strip() == out.rejected.strip():
        out.bad("identical_pair", "'chosen' and 'rejected' are the same; the pair teaches nothing")


def _pair(user: str | None, assistant: str | None, system: str | None, out: Normalised) -> None:
    if user is None or assistant is None:
        return
    if system:
        out.messages.append({"role": "system", "content": system})
    out.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def normalise(obj: Any, fmt: str, columns: Columns) -> Normalised:
    """Parse one raw object; `fmt` is a name from FORMATS or 'auto'."""
    out = Normalised()
    if not isinstance(obj, dict):
        return out.bad("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    chosen = detect(obj, columns) if fmt == "auto" else fmt
    if chosen is None:
        keys = ", ".join(sorted(map(str, obj))[:8]) or "(none)"
        return out.bad(
            "unknown_format",
            f"keys {keys} match no known format; expected {EXPECTED}, or pass --input-col/--output-col",
        )
    out.fmt = chosen
    out.kind = {"text": "text", "preference": "preference"}.get(chosen, "chat")
    if chosen == "openai":
        _messages(obj.get("messages"), out, "messages", "role", "content", None) if "messages" in obj else out.bad(
            "missing_field", "'messages' is missing")
    elif chosen == "sharegpt":
        if "conversations" not in obj:
            return out.bad("missing_field", "'conversations' is missing")
        _messages(obj["conversations"], out, "conversations", "from", "value", SHAREGPT_ROLES)
    elif chosen == "preference":
        _preference(obj, out)
    elif chosen == "text":
        out.text = _text(obj.get("text"), "text", out) or ""
    elif chosen == "alpaca":
        instruction = _text(obj.get("instruction"), "instruction", out)
        extra = _text(obj.get("input"), "input", out, required=False)
        output = _text(obj.get("output"), "output", out)
        user = f"{instruction}\n\n{extra}" if instruction and extra else instruction
        _pair(user, output, _text(obj.get("system"), "system", out, required=False), out)
    elif chosen == "prompt_completion":
        _pair(_text(obj.get("prompt"), "prompt", out), _text(obj.get("completion"), "completion", out),
              _text(obj.get("system"), "system", out, required=False), out)
    else:
        in_col = columns.input_col or "text"
        out_col = columns.output_col or next((c for c in LABEL_COLUMNS if c in obj), LABEL_COLUMNS[0])
        _pair(_text(_scalar(obj.get(in_col)), in_col, out), _text(_scalar(obj.get(out_col)), out_col, out), None, out)
    if columns.system and out.kind == "chat" and out.messages and out.messages[0]["role"] != "system":
        out.messages.insert(0, {"role": "system", "content": columns.system})
    return out


def _scalar(value: Any) -> Any:
    """CSV cells are strings already; Parquet labels may be numbers."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value
