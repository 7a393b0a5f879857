"""Synthetic traffic for monitor tests: a prepared classification folder and run folder like the
train stage writes (summary.json naming the data), and a request log filled with chats on a route."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tuneforge.serve.log import Interaction, InteractionLog

SYSTEM = "Classify the ticket: billing, technical, account."
LABELS = ["account", "billing", "technical"]
PRODUCTS = ["Nimbus Cam", "Smart Plug", "Thermostat", "Doorbell", "Hub", "Sensor"]
TICKETS = {
    "billing": ["I was charged twice for my {p} subscription this month", "My invoice for the {p} is wrong",
                "Please refund the {p} order, the charge is too high"],
    "technical": ["My {p} will not connect to Wi-Fi and shows an error", "The {p} app crashes when I open it",
                  "The {p} keeps restarting after the update"],
    "account": ["How do I reset the password of my {p} account", "I cannot log in to my account on the {p}",
                "Please change the email address of my {p} account"],
}
RECIPES = ["Preheat the oven to {n} degrees and bake the bread for {m} minutes until golden and crisp",
           "Whisk {n} eggs with sugar, fold in the flour and let the dough rest overnight in the fridge",
           "Simmer the tomato sauce with garlic, basil and olive oil for {m} minutes, then season to taste"]


def ticket(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(LABELS)
    return rng.choice(TICKETS[label]).format(p=rng.choice(PRODUCTS)), label


def recipe(rng: random.Random) -> str:
    return rng.choice(RECIPES).format(n=rng.randint(2, 250), m=rng.randint(5, 90))


def chat(text: str, answer: str | None = None) -> list[dict]:
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return turns + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def make_run(folder: Path, n: int = 200, seed: int = 0) -> Path:
    """folder/data (as prepare writes it) and folder/run (summary.json naming the data)."""
    rng = random.Random(seed)
    data = folder / "data"
    data.mkdir(parents=True)
    rows = [ticket(rng) for _ in range(n)]
    (data / "train.jsonl").write_text("".join(json.dumps({"messages": chat(t, a)}) + "\n" for t, a in rows))
    counts = {label: sum(a == label for _, a in rows) for label in LABELS}
    (data / "report.json").write_text(json.dumps({"status": "ok", "task": "classification", "labels": counts}))
    run = folder / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"task": "classification", "sources": [
        {"path": str(data), "task": "classification", "train": n, "val": 0}]}))
    return run


def fill_log(db: Path, route: str, variant: str, n: int, shifted_from: int | None = None, seed: int = 1,
             invalid_every: int = 0, score=None, start: float | None = None) -> list[str]:
    """n chats on `route` answered by `variant`; prompts from `shifted_from` on are recipes, not
    tickets; every `invalid_every`-th answer is not a label; `score(i)` gives feedback."""
    rng = random.Random(seed)
    log = InteractionLog(db)
    start = time.time() - 3600 if start is None else start
    ids = []
    for i in range(n):
        text, label = ticket(rng)
        if shifted_from is not None and i >= shifted_from:
            text = recipe(rng)
        answer = "I do not know" if invalid_every and i % invalid_every == 0 else label
        ident = f"chatcmpl-{variant}-{seed}-{i}"
        log.record(Interaction(id=ident, time=start + i * 10, endpoint="chat", status=200, model=route, route=route,
                               variant=variant, user=f"u{i}", prompt=json.dumps(chat(text)), completion=answer))
        ids.append(ident)
    log.flush()
    if score is not None:
        for i, ident in enumerate(ids):
            value = score(i)
            if value is not None:
                log.feedback(ident, value, None, None)
    log.close()
    return ids
