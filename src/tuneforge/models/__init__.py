"""Base models: resolve a name to a local folder, load tokenizer and weights."""

from tuneforge.models.resolve import BUILTIN, resolve_model
from tuneforge.models.load import load_model, load_tokenizer

__all__ = ["BUILTIN", "resolve_model", "load_model", "load_tokenizer"]
