"""Benchmark: the eval engine's batching and its shared-prefix cache, each against the engine without it.

    python benchmarks/eval_bench.py [--examples 200] [--precision auto|bf16|fp32]

The prompts are the example support tickets (system prompt + ticket, as in the demo), on
the built-in model, same precision and batch size on every side. Two comparisons:

1. `batching`: greedy generation in left-padded batches of similar length against batch
   size 1 (and whether both give the same answers).
2. `shared_prefix`: what `tuneforge eval` runs for the demo's base variants, zero-shot
   (system prompt + ticket) and few-shot (system prompt, 5 solved tickets, ticket):
   greedy generation, label scoring (constrained accuracy) and answer log-likelihoods
   (perplexity), with the prompts' shared prefix computed once per variant
   (`evaluate.engine.SharedPrefix`) against the same calls computing every prompt in full
   (the engine as it was before the prefix cache). Timed from the first call to the last,
   the prefix's own forward included; `same_answers` compares the generated answers.

`--precision fp32` turns bf16 off (a stand-in for an AVX2-only CPU). Prints one final JSON
line with `isa` and `precision`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_isa  # noqa: E402

SHOTS = 5  # EvalConfig's default


def batching(engine, model, tokenizer, prompts, args, bf16) -> dict:
    engine.generate(model, tokenizer, prompts[:4], args.max_new_tokens, 4, bf16)  # warm-up
    batched = engine.generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, bf16)
    single = engine.generate(model, tokenizer, prompts, args.max_new_tokens, 1, bf16)
    print(f"batched {batched.seconds:.1f}s, one at a time {single.seconds:.1f}s", file=sys.stderr)
    return {"batched_examples_per_s": round(len(prompts) / batched.seconds, 2),
            "single_examples_per_s": round(len(prompts) / single.seconds, 2),
            "speedup": round(single.seconds / batched.seconds, 2),
            "same_answers": round(sum(a == b for a, b in zip(batched.texts, single.texts)) / len(prompts), 3)}


def eval_variant(engine, model, tokenizer, prompts, options, answers, args, bf16, shared: bool) -> tuple:
    """The engine calls `tuneforge eval` makes for one classification variant; (seconds, answers, prefix)."""
    pad = tokenizer.pad_token_id
    started = time.perf_counter()
    prefix = engine.SharedPrefix.of(model, prompts, bf16) if shared else None
    gen = engine.generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, bf16, prefix=prefix)
    engine.score_options(model, prompts, options, pad, args.batch_size, bf16, prefix=prefix)
    engine.answer_logprobs(model, prompts, answers, pad, args.batch_size, bf16, prefix=prefix)
    return time.perf_counter() - started, gen.texts, prefix


def shared_prefix(engine, model, tokenizer, rows, held_out, args, bf16) -> dict:
    from tuneforge.evaluate.run import with_shots
    from tuneforge.models.template import encode_prompt, turn_end_id

    stop = turn_end_id(tokenizer)
    labels = sorted({r["messages"][-1]["content"] for r in rows})
    shots, seen = [], set()
    for r in rows[len(held_out):]:  # one solved ticket per label, from outside the scored ones
        label = r["messages"][-1]["content"]
        if label not in seen and len(shots) < SHOTS:
            seen.add(label)
            shots.append((r["messages"][-2]["content"], label))
    options = [tokenizer(label, add_special_tokens=False)["input_ids"] + [stop] for label in labels]
    answers = [tokenizer(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"] + [stop]
               for r in held_out]
    out = {}
    for name, few in (("zero_shot", False), ("few_shot", True)):
        prompts = [encode_prompt(tokenizer, with_shots(r["messages"][:-1], shots) if few else r["messages"][:-1])
                   for r in held_out]
        eval_variant(engine, model, tokenizer, prompts[:8], options, answers[:8], args, bf16, True)  # warm-up
        full_s, full_texts, _ = eval_variant(engine, model, tokenizer, prompts, options, answers, args, bf16, False)
        shared_s, shared_texts, prefix = eval_variant(engine, model, tokenizer, prompts, options, answers, args, bf16,
                                                      True)
        out[name] = {"prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
                     "prefix_tokens": len(prefix.ids) if prefix else 0,
                     "full_s": round(full_s, 2), "shared_prefix_s": round(shared_s, 2),
                     "speedup": round(full_s / shared_s, 2),
                     "same_answers": round(sum(a == b for a, b in zip(full_texts, shared_texts)) / len(prompts), 3)}
        print(f"{name}: full prompts {full_s:.1f}s, shared prefix {shared_s:.1f}s", file=sys.stderr)
    total_full = sum(v["full_s"] for v in out.values())
    total_shared = sum(v["shared_prefix_s"] for v in out.values())
    return {**out, "speedup_both": round(total_full / total_shared, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16, help="EvalConfig's default")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 where the CPU has it")
    parser.add_argument("--skip-batching", action="store_true", help="only the shared-prefix comparison")
    args = parser.parse_args()

    from tuneforge.evaluate import engine
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.models.template import encode_prompt
    from tuneforge.train.run import bf16_supported

    rows = [json.loads(line) for line in (ROOT / "examples" / "support_tickets.jsonl").read_text().splitlines()]
    held_out = rows[: args.examples]
    model, tokenizer = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    bf16 = bf16_supported("cpu") if args.precision == "auto" else args.precision == "bf16"
    result = {"isa": cpu_isa(), "precision": "bf16" if bf16 else "fp32", "examples": len(held_out),
              "batch_size": args.batch_size}
    if not args.skip_batching:
        prompts = [encode_prompt(tokenizer, r["messages"][:-1]) for r in held_out]
        result["batching"] = batching(engine, model, tokenizer, prompts, args, bf16)
    result["shared_prefix"] = shared_prefix(engine, model, tokenizer, rows, held_out, args, bf16)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
