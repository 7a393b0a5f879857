"""The request log: every request and response in one SQLite file (WAL), plus feedback.

The server writes through `InteractionLog`: a single writer thread owns the connection and
commits in batches, so a slow disk never stalls the event loop, and feedback goes through
the same queue, so it always lands after the completion it names. Readers (`export`,
`tuneforge logs stats`) open their own connections; WAL lets them read while the server writes.

    tuneforge logs export --db serve.db --out corrected.jsonl --min-score 4
    tuneforge prepare corrected.jsonl --out runs/data-v2

`export` writes chat interactions that received a correction (the correction becomes the
assistant's answer) or, with `min_score`, a latest score at or above it, in tuneforge's
canonical chat format ({"messages": [...]}), ready for prepare.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import Problem, TuneforgeError

SCHEMA = """
CREATE TABLE IF NOT EXISTS interactions (
    id TEXT PRIMARY KEY,          -- the completion's id (chatcmpl-..., cmpl-...), or req-... for a refused request
    time REAL NOT NULL,           -- unix seconds when the request arrived
    endpoint TEXT NOT NULL,       -- chat | completions
    model TEXT,                   -- the model the request named (a route, the base or an adapter)
    route TEXT,                   -- the route, when `model` named one
    variant TEXT,                 -- the served model that answered
    user TEXT,
    prompt TEXT,                  -- chat: the messages as JSON; completions: the prompt(s) as JSON
    completion TEXT,              -- choice 0's text
    choices TEXT,                 -- every choice's text as JSON, when n > 1 or several prompts
    finish_reason TEXT,
    status INTEGER NOT NULL,      -- HTTP status; 499 when the client left mid-answer
    error TEXT,
    latency_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    stream INTEGER
);
CREATE INDEX IF NOT EXISTS interactions_time ON interactions(time);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    interaction_id TEXT NOT NULL REFERENCES interactions(id),
    time REAL NOT NULL,
    score REAL,
    label TEXT,
    correction TEXT
);
CREATE INDEX IF NOT EXISTS feedback_interaction ON feedback(interaction_id);
"""


@dataclass
class Interaction:
    id: str
    time: float
    endpoint: str
    status: int
    model: str | None = None
    route: str | None = None
    variant: str | None = None
    user: str | None = None
    prompt: str | None = None
    completion: str | None = None
    choices: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stream: bool = False


COLUMNS = list(Interaction.__dataclass_fields__)


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    path = Path(path)
    if readonly:
        if not path.is_file():
            raise TuneforgeError(Problem("file_not_found", "no request log here; pass the server's log_db "
                                         "(tuneforge serve prints it at start)", str(path)))
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash may lose the last commits, never corrupts
        conn.executescript(SCHEMA)
    conn.row_factory = sqlite3.Row
    return conn


class InteractionLog:
    """Asynchronous writes (`record`), synchronous feedback (`feedback`, call it off the event loop)."""

    BATCH = 256

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn = connect(self.path)  # opened here, so a bad path fails at start, not on the first request
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="tuneforge-log", daemon=True)
        self._thread.start()

    def record(self, interaction: Interaction) -> None:
        self._queue.put(("insert", interaction, None))

    def feedback(self, interaction_id: str, score: float | None, label: str | None,
                 correction: str | None, running: bool = False) -> int | None:
        """The feedback row's id, or None when no interaction has that id (`running`: the
        interaction is a stream still going, whose row is written when it ends)."""
        done: Future = Future()
        self._queue.put(("feedback", (interaction_id, score, label, correction, running), done))
        return done.result(timeout=30)

    def flush(self) -> None:
        done: Future = Future()
        self._queue.put(("flush", None, done))
        done.result(timeout=30)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._conn.close()

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < self.BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is None for item in items)
            try:
                with self._conn:  # one transaction per batch
                    for item in items:
                        if item is not None:
                            self._apply(*item)
            except sqlite3.Error as exc:  # a full disk must not kill the server; the futures say why
                for item in items:
                    if item is not None and item[2] is not None and not item[2].done():
                        item[2].set_exception(exc)
            if stop:
                return

    def _apply(self, kind: str, payload: Any, done: Future | None) -> None:
        if kind == "insert":
            row = asdict(payload)
            self._conn.execute(f"INSERT OR REPLACE INTO interactions ({', '.join(COLUMNS)}) VALUES "
                               f"({', '.join('?' for _ in COLUMNS)})", [row[c] for c in COLUMNS])
        elif kind == "feedback":
            interaction_id, score, label, correction, running = payload
            known = running or self._conn.execute("SELECT 1 FROM interactions WHERE id = ?",
                                                  (interaction_id,)).fetchone()
            rowid = None
            if known:
                rowid = self._conn.execute(
                    "INSERT INTO feedback (interaction_id, time, score, label, correction) VALUES (?, ?, ?, ?, ?)",
                    (interaction_id, time.time(), score, label, correction)).lastrowid
            done.set_result(rowid)
        elif kind == "flush":
            done.set_result(None)


def _latest_feedback(conn: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    """Each interaction's most recent feedback; a later judgement replaces an earlier one, but a
    correction given once stays unless a later one replaces it."""
    latest: dict[str, dict[str, Any]] = {}
    for row in conn.execute("SELECT * FROM feedback ORDER BY id"):
        entry = latest.setdefault(row["interaction_id"], {"score": None, "label": None, "correction": None})
        for key in ("score", "label", "correction"):
            if row[key] is not None:
                entry[key] = row[key]
    return latest


def export(db: Path, out: Path, min_score: float | None = None, route: str | None = None) -> dict[str, int]:
    """Write corrected or well-scored chat interactions (with `route`: only that route's) as training
    JSONL; returns counts."""
    conn = connect(db, readonly=True)
    feedback = _latest_feedback(conn)
    counts = {"written": 0, "corrected": 0, "scored": 0, "skipped_not_chat": 0}
    rows = []
    for interaction_id, fb in feedback.items():
        corrected = bool(fb["correction"] and fb["correction"].strip())
        scored = min_score is not None and fb["score"] is not None and fb["score"] >= min_score
        if not (corrected or scored):
            continue
        row = conn.execute("SELECT * FROM interactions WHERE id = ?", (interaction_id,)).fetchone()
        if row is None or row["status"] != 200 or (route is not None and row["route"] != route):
            continue
        if row["endpoint"] != "chat":  # a bare prompt is not a conversation; prepare's chat format needs one
            counts["skipped_not_chat"] += 1
            continue
        answer = fb["correction"] if corrected else row["completion"]
        if not answer:
            continue
        messages = json.loads(row["prompt"]) + [{"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
        counts["corrected" if corrected else "scored"] += 1
    conn.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:  # written whole, then renamed: never a half file
        for record in rows:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(out)
    counts["written"] = len(rows)
    return counts
