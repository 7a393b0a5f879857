"""A fake job process for fast route, store and worker tests of the jobs API.

It honours the contract of tuneforge.jobs.child without loading a model: it reads job.json and
writes what prepare and train would (events.jsonl messages, run/config.yaml with total_steps,
one metrics.jsonl row and one complete checkpoint per step, adapter/, summary.json) and then
result.json. It resumes after its last checkpoint, as `train --resume` does. Steps take
FAKE_STEP_S seconds (default 0.05); n_epochs x 4 steps. A training file whose name holds
"crash" makes it exit 3 without a result; one holding "refuse" writes a failed result.

    python tests/unit/jobs_fake.py RUNS/<job id>
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

STEPS_PER_EPOCH = 4


def main(folder: Path) -> int:
    job = json.loads((folder / "job.json").read_text())
    spec = job["spec"]
    run = folder / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)

    def say(message: str, **data) -> None:
        with open(folder / "events.jsonl", "a") as handle:
            handle.write(json.dumps({"message": message, "level": "info", "data": data or None}) + "\n")

    if "crash" in Path(job["training_file"]).read_text():
        return 3
    if "refuse" in Path(job["training_file"]).read_text():
        (folder / "result.json").write_text(json.dumps({"ok": False, "error": {
            "code": "too_long", "message": "train.jsonl:2: too_long: 5000 tokens", "param": None},
            "problems": [{"code": "too_long", "message": "5000 tokens", "where": "train.jsonl:2"},
                         {"code": "too_long", "message": "6000 tokens", "where": "train.jsonl:3"}]}))
        return 2
    epochs = 3 if spec["n_epochs"] == "auto" else spec["n_epochs"]
    total = epochs * STEPS_PER_EPOCH
    done = sorted(int(p.name[5:]) for p in ckpts.glob("step-*") if (p / "state.pt").exists())
    start = done[-1] if done else 0
    say(f"Resuming training from checkpoint at step {start}" if start else "Training started")
    (run / "config.yaml").write_text(f"epochs: {epochs}\nbatch_size: 8\nlearning_rate: 0.0002\ntotal_steps: {total}\n")
    delay = float(os.environ.get("FAKE_STEP_S", "0.05"))
    for step in range(start + 1, total + 1):
        time.sleep(delay)
        with open(run / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, "loss": round(2.0 / step, 4)}) + "\n")
        (ckpts / f"step-{step:07d}").mkdir(exist_ok=True)
        (ckpts / f"step-{step:07d}" / "state.pt").write_text("x")
    (run / "adapter").mkdir(exist_ok=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "summary.json").write_text(json.dumps({"train_tokens": 100 * total, "steps": total}))
    say("Training finished")
    (folder / "result.json").write_text(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
