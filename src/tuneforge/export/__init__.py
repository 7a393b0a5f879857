"""Export a fine-tune for other runtimes: `tuneforge export RUN --format gguf` (gguf.py)."""
