"""The monitor's two tables in the server's request log (the same SQLite file, WAL):

- `monitor_signals`: the numbers each `tuneforge monitor` run computed, which the server's
  /metrics exposes as gauges (serve/metrics.py reads the latest row per signal at scrape time).
  The monitor computes them, not the server: it needs the training data and eval files of each
  adapter, which a server need not have. Run it from cron; `tuneforge_monitor_updated_seconds`
  says how old the figures are, so an alert can also fire on a monitor that stopped running.
- `promotions`: every step of a retrained adapter's rollout (who, when, why), shown by
  `tuneforge monitor` and read back by `tuneforge retrain promote` to take the next step.
"""

from __future__ import annotations

import getpass
import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from tuneforge.serve.log import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS monitor_signals (
    time REAL NOT NULL,          -- when the monitor run computed it
    route TEXT NOT NULL,
    variant TEXT NOT NULL,       -- a served model of the route, or the route's own name for route-wide figures
    signal TEXT NOT NULL,        -- e.g. input_ngram_p, invalid_rate, mean_score, failed_checks
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS monitor_signals_key ON monitor_signals(route, variant, signal, time);
CREATE TABLE IF NOT EXISTS promotions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    route TEXT NOT NULL,
    candidate TEXT NOT NULL,     -- the retrained adapter's served name
    run TEXT,                    -- its run folder
    action TEXT NOT NULL,        -- gate_passed | step | held | promoted | rolled_back | refused
    percent REAL,                -- the candidate's share of the route after this action
    variants TEXT,               -- the route's variants after this action (JSON)
    previous TEXT,               -- the route's variants before the promotion began (JSON): what a rollback restores
    who TEXT NOT NULL,
    why TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS promotions_route ON promotions(route, id);
"""


def open_db(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    conn.executescript(SCHEMA)
    return conn


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def write_signals(path: Path, route: str, signals: dict[str, dict[str, Any]]) -> None:
    """Every finite number in {variant: {signal: value}}, stamped with one time."""
    now = time.time()
    rows = [(now, route, variant, name, float(value)) for variant, values in signals.items()
            for name, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value]
    conn = open_db(path)
    with conn:
        conn.executemany("INSERT INTO monitor_signals (time, route, variant, signal, value) VALUES (?, ?, ?, ?, ?)",
                         rows)
    conn.close()


def latest_signals(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """The newest value of each (route, variant, signal); [] before any monitor run."""
    try:
        return conn.execute(
            "SELECT s.route, s.variant, s.signal, s.value, s.time FROM monitor_signals s JOIN "
            "(SELECT route, MAX(time) AS t FROM monitor_signals GROUP BY route) last "
            "ON s.route = last.route AND s.time = last.t").fetchall()
    except sqlite3.OperationalError:  # no monitor run yet: the table does not exist
        return []


def record_promotion(path: Path, route: str, candidate: str, action: str, why: str, run: str | None = None,
                     percent: float | None = None, variants: dict[str, float] | None = None,
                     previous: dict[str, float] | None = None) -> dict[str, Any]:
    row = {"time": time.time(), "route": route, "candidate": candidate, "run": run, "action": action,
           "percent": percent, "variants": json.dumps(variants) if variants is not None else None,
           "previous": json.dumps(previous) if previous is not None else None, "who": who(), "why": why}
    conn = open_db(path)
    with conn:
        row["id"] = conn.execute(f"INSERT INTO promotions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                 list(row.values())).lastrowid
    conn.close()
    return row


def promotions(path: Path, route: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The route's promotion records, oldest first (the last `limit` when given)."""
    conn = connect(path, readonly=True)
    try:
        rows = conn.execute("SELECT * FROM promotions WHERE route = ? ORDER BY id DESC" +
                            (f" LIMIT {int(limit)}" if limit else ""), (route,)).fetchall()
    except sqlite3.OperationalError:
        rows = []
    conn.close()
    out = []
    for row in reversed(rows):
        entry = dict(row)
        for key in ("variants", "previous"):
            entry[key] = json.loads(entry[key]) if entry[key] else None
        out.append(entry)
    return out
