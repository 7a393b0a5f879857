"""Benchmark: batched generation against one example at a time, same model and prompts.

    python benchmarks/eval_bench.py [--examples 200]

The prompts are the example support tickets (system prompt + ticket, as in the demo),
answered greedily by the built-in model with the eval engine: left-padded batches of
similar length versus batch size 1, same precision, same token budget. Also checks that
both give the same answers. Prints one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_isa  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    from tuneforge.evaluate import engine
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.models.template import encode_prompt
    from tuneforge.train.run import bf16_supported

    rows = [json.loads(line) for line in (ROOT / "examples" / "support_tickets.jsonl").read_text().splitlines()]
    rows = rows[: args.examples]
    model, tokenizer = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    prompts = [encode_prompt(tokenizer, r["messages"][:-1]) for r in rows]
    bf16 = bf16_supported("cpu")
    engine.generate(model, tokenizer, prompts[:4], args.max_new_tokens, 4, bf16)  # warm-up
    batched = engine.generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, bf16)
    single = engine.generate(model, tokenizer, prompts, args.max_new_tokens, 1, bf16)
    same = sum(a == b for a, b in zip(batched.texts, single.texts)) / len(prompts)
    result = {"isa": cpu_isa(), "examples": len(prompts), "bf16": bf16, "batch_size": args.batch_size,
              "batched_examples_per_s": round(len(prompts) / batched.seconds, 2),
              "single_examples_per_s": round(len(prompts) / single.seconds, 2),
              "speedup": round(single.seconds / batched.seconds, 2),
              "same_answers": round(same, 3)}
    print(f"batched {batched.seconds:.1f}s, one at a time {single.seconds:.1f}s", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
