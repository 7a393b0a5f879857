"""The generation engine behind `tuneforge serve`, sharing its batching rules with eval.

- api.py: what the server asks of an engine (GenRequest, GenEvent, Engine, QueueFull, ShuttingDown)
- scheduler.py: Scheduler, the real Engine: continuous batching, many LoRA adapters on one base
- vllm_engine.py: VllmEngine, the same Engine over vLLM's async engine (`serve --backend vllm`)
- adapters.py: loading, checking and evicting adapters
- lora.py: every held adapter's LoRA terms, applied per row of one batch
- kvcache.py: the running batch's left-padded KV cache (join, drop rows)
- sampling.py: greedy / temperature + top-p with a per-request seeded generator
- text.py: streamed text that is whole characters and stops at stop strings
- tensors.py: left padding, positions, autocast (shared with evaluate.engine)

Nothing heavy is imported here, so the server's fake-engine tests import api.py cheaply.
"""
