"""`tuneforge retrain` through the real CLI on the built-in model, kept small: a weak incumbent
(2 steps) and 30 logged chats with corrections; the candidate trained on its data plus the
corrections passes the gate; a candidate trained on the same data with shuffled labels is refused
with `candidate_not_better` and exit 1, saying by how much. (Promotion and rollback against a live
server are in tests/unit/test_promote.py; the whole loop with a live server is examples/closed_loop.sh.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tuneforge.monitor.store import promotions, record_promotion
from tuneforge.serve.log import Interaction, InteractionLog

pytestmark = pytest.mark.slow
TICKETS = Path("examples/support_tickets.jsonl")


def _run(*args) -> tuple[int, str, str]:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, env=env)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    rows = TICKETS.read_text().splitlines()
    (root / "tickets.jsonl").write_text("\n".join(rows[:120]) + "\n")
    code, _, err = _run("prepare", str(root / "tickets.jsonl"), "--out", str(root / "data"), "--no-memorisation-check")
    assert code == 0, err
    code, _, err = _run("train", "--data", str(root / "data"), "--out", str(root / "v1"), "--max-steps", "2",
                        "--set", "eval_limit=8", "--set", "tracking=[]", "--set", "batch_size=4")
    assert code == 0, err
    db = root / "log.db"
    log = InteractionLog(db)
    for i, line in enumerate(rows[600:630]):  # what users asked; the weak model's answer; their correction
        messages = json.loads(line)["messages"]
        ident = f"chatcmpl-{i}"
        log.record(Interaction(id=ident, time=1e9 + i, endpoint="chat", status=200, model="support",
                               route="support", variant="v1", prompt=json.dumps(messages[:-1]), completion="other"))
        log.flush()
        log.feedback(ident, 1, None, messages[-1]["content"])
    log.close()
    return root


def test_retrain_on_corrections_passes_the_gate(loop):
    code, out, err = _run("retrain", "--route", "support", "--out", str(loop / "v2"), "--adapter",
                          f"v1={loop / 'v1'}", "--db", str(loop / "log.db"), "--min-new", "20", "--set",
                          "max_steps=14", "--set", "learning_rate=0.001", "--set", "batch_size=4")
    assert code == 0, out + err
    result = json.loads((loop / "v2" / "retrain.json").read_text())
    assert result["accepted"] and result["diff"] > 0 and result["metric"] == "accuracy"
    assert result["fresh"]["corrected"] == 30 and result["fresh_examples"] == 9  # 30% of 30 held out
    assert (loop / "v2" / "adapter" / "adapter_model.safetensors").is_file()
    report = json.loads((loop / "v2" / "data" / "report.json").read_text())
    assert report["splits"]["test"] >= 9 + 12 - 2
    assert "candidate v1" not in out and "accepted" in out
    assert [p["action"] for p in promotions(loop / "log.db", "support")] == ["gate_passed"]
    assert "support-v2" in promotions(loop / "log.db", "support")[0]["candidate"]


def test_a_candidate_trained_on_shuffled_labels_is_refused(loop):
    if not (loop / "v2" / "summary.json").is_file():
        pytest.skip("needs the accepted candidate of the test before")
    # v2 is now the incumbent (as if promoted to 100%); its data's training labels are shuffled
    record_promotion(loop / "log.db", "support", "v2", "promoted", "test: v2 serves all traffic",
                     run=str(loop / "v2"), percent=100.0, variants={"v2": 100.0})
    train = loop / "v2" / "data" / "train.jsonl"
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    labels = [r["messages"][-1]["content"] for r in rows]
    random.Random(0).shuffle(labels)
    for row, label in zip(rows, labels):
        row["messages"][-1]["content"] = label
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = _run("retrain", "--route", "support", "--out", str(loop / "v3"), "--db",
                          str(loop / "log.db"), "--min-new", "20", "--name", "v3",  # fewer steps: refused either way
                          "--set", "max_steps=6", "--set", "learning_rate=0.001", "--set", "batch_size=4")
    lines = err.strip().splitlines()
    assert code == 1, out + err
    assert lines[-1].startswith(f"{loop / 'v3'}: candidate_not_better: candidate not better by the margin: accuracy")
    assert "short by" in lines[-1] or "no better" in lines[-1]
    result = json.loads((loop / "v3" / "retrain.json").read_text())
    assert not result["accepted"] and result["diff"] <= 0
    assert promotions(loop / "log.db", "support")[-1]["action"] == "refused"
