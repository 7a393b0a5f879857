"""`tuneforge advise method` against a real run: LoRA on the built-in model (SmolLM2-135M) on CPU,
trained through the CLI for a few dozen steps; the estimate for the same setting is within 30%
of the peak RSS that train records in summary.json.

The run is pinned to float32 (`bf16=false`), so the check means the same on a CPU without
AVX512-BF16. The examples all have about the same length, so the run's tokens per step give
the estimate's --seq-len and --batch exactly. Two comparisons, both held to 30%:
  - the whole estimate, which counts the process itself (the runtime term, 0.47 GB), against
    the whole peak RSS;
  - the estimate without that term against the peak RSS minus a baseline measured here: a
    process that imports the same libraries and loads the tokenizer, as train does before the
    model loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LABELS = ["billing", "technical", "account", "other"]
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
BATCH, STEPS = 8, 6
BASELINE = """
import torch, transformers, peft, accelerate
import tuneforge.cli, tuneforge.train.run, tuneforge.train.loop
from transformers import AutoTokenizer
from tuneforge.models import resolve_model
AutoTokenizer.from_pretrained(str(resolve_model("smollm2-135m")))
from tuneforge.train.run import peak_rss_mb
print(peak_rss_mb())
"""


def tickets() -> list[dict]:
    """96 tickets of 74-77 tokens each in the model's chat template."""
    rows = []
    for i in range(96):
        words = " ".join(WORDS[(i * 7 + j) % 16] for j in range(12))
        text = f"Ticket {i:03d}: {words}. The {WORDS[i % 16]} order was charged twice and the app shows an error."
        rows.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": LABELS[i % 4]}]})
    return rows


def cli(*args) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "tuneforge.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_lora_memory_estimate_is_within_30_percent_of_the_measured_peak_rss(tmp_path):
    src = tmp_path / "tickets.jsonl"
    src.write_text("".join(json.dumps(row) + "\n" for row in tickets()))
    cli("prepare", src, "--out", tmp_path / "data", "--no-memorisation-check")
    # advise models every example computed whole; the shared prefix (on by default) stores less, which
    # left the estimate 31-35% above the measured peak on some runs, so it is off here
    cli("train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--max-steps", STEPS, "--epochs", 3,
        "--set", f"batch_size={BATCH}", "--set", "bf16=false", "--set", "tracking=[]", "--set", "eval_steps=1000",
        "--set", "shared_prefix=false", "--set", "int8_base=false")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "lora" and summary["steps"] == STEPS and summary["settings"]["packing"]
    per_example = summary["train_tokens"] / STEPS / BATCH
    answer = -(-summary["trained_target_tokens"] // (STEPS * BATCH))
    advice = json.loads(cli("advise", "method", "--model", "smollm2-135m", "--device", "cpu", "--precision", "fp32",
                            "--seq-len", round(per_example), "--batch", BATCH, "--answer-tokens", answer,
                            "--json").stdout)
    lora = advice["methods"]["lora"]
    assert lora["trainable_params"] == summary["trainable_params"]

    measured = summary["peak_rss_mb"]
    estimate = lora["total_gb"] * 1024
    baseline = int(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True, check=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout.split()[-1])
    training = estimate - lora["runtime_gb"] * 1024
    print(f"\npeak RSS {measured} MiB, estimate {estimate:.0f} MiB ({estimate / measured:.2f}); "
          f"process baseline {baseline} MiB; training part: measured {measured - baseline} MiB, "
          f"estimated {training:.0f} MiB ({training / (measured - baseline):.2f})")
    assert abs(estimate / measured - 1) <= 0.30
    assert abs(training / (measured - baseline) - 1) <= 0.30
    assert Path(tmp_path / "run" / "adapter").is_dir()
