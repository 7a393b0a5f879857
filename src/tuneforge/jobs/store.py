"""The jobs API's state: files, jobs, events and checkpoints in one SQLite file (WAL).

    store = Store(Path("~/.cache/tuneforge/jobs/jobs.db"))
    job = store.create_job(spec)                  # status validating_files
    store.next_queued()                           # the job the worker starts next (queue order)

Every change is one transaction, committed with synchronous=FULL: a server killed at any
moment (kill -9) finds on restart each job in the last state it was told about, with every
event it had recorded. The queue order is `queued_at` (set when a job enters the queue; a
job put back after a restart keeps its place), then creation order. Lists are newest
first and paginate with `after=<id>`, as OpenAI's do.

One connection, guarded by a lock, serves the routes and the worker thread; other processes
(the `tuneforge jobs` CLI goes through HTTP) never open the file.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.jobs.spec import JobSpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL,
    filename TEXT NOT NULL, bytes INTEGER NOT NULL, purpose TEXT NOT NULL, stored TEXT NOT NULL,
    status TEXT NOT NULL, status_details TEXT, kind TEXT, records INTEGER, problems TEXT);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL,
    spec TEXT NOT NULL, status TEXT NOT NULL, queued_at REAL, finished_at INTEGER, estimated_finish INTEGER,
    trained_tokens INTEGER, fine_tuned_model TEXT, error TEXT, result_files TEXT NOT NULL DEFAULT '[]',
    resolved TEXT, cursor TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, type TEXT NOT NULL, message TEXT NOT NULL, data TEXT);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, step INTEGER NOT NULL, metrics TEXT NOT NULL, UNIQUE(job_id, step));
"""
ACTIVE = ("validating_files", "queued", "running", "paused")
FINISHED = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


@dataclass
class FileRow:
    id: str
    created_at: int
    filename: str
    bytes: int
    purpose: str
    stored: str  # the name on disk, inside the files folder: <id><suffix>, never the client's name
    status: str
    status_details: str | None = None
    kind: str | None = None  # chat | preference | text, from the validator
    records: int | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)  # {"line", "code", "message"}


@dataclass
class JobRow:
    id: str
    created_at: int
    spec: JobSpec
    status: str
    queued_at: float | None = None
    finished_at: int | None = None
    estimated_finish: int | None = None
    trained_tokens: int | None = None
    fine_tuned_model: str | None = None
    error: dict[str, Any] | None = None
    result_files: list[str] = field(default_factory=list)
    resolved: dict[str, Any] | None = None  # hyperparameters as training resolved them
    cursor: dict[str, Any] = field(default_factory=dict)  # how far the worker has read the job's output


class UnknownCursor(KeyError):
    """`after` names no object of this list."""


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _tx(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._conn.execute(sql, args)

    def _all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- files -----------------------------------------------------------------------------

    def add_file(self, row: FileRow) -> FileRow:
        self._tx("INSERT INTO files (id, created_at, filename, bytes, purpose, stored, status, status_details, kind, "
                 "records, problems) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                 (row.id, row.created_at, row.filename, row.bytes, row.purpose, row.stored, row.status,
                  row.status_details, row.kind, row.records, json.dumps(row.problems)))
        return row

    def file(self, file_id: str) -> FileRow | None:
        rows = self._all("SELECT * FROM files WHERE id = ?", (file_id,))
        return _file(rows[0]) if rows else None

    def files(self, purpose: str | None, after: str | None, limit: int, order: str = "desc") -> tuple[list[FileRow], bool]:
        where, args = ("purpose = ?", (purpose,)) if purpose else ("1", ())
        rows, more = self._page("files", where, args, after, limit, order)
        return [_file(r) for r in rows], more

    def delete_file(self, file_id: str) -> None:
        self._tx("DELETE FROM files WHERE id = ?", (file_id,))

    def jobs_using(self, file_id: str) -> list[str]:
        """Unfinished jobs that read this file."""
        return [j.id for j in self._jobs(f"status IN ({_marks(ACTIVE)})", ACTIVE)
                if file_id in (j.spec.training_file, j.spec.validation_file)]

    # -- jobs ------------------------------------------------------------------------------

    def create_job(self, spec: JobSpec) -> JobRow:
        job = JobRow(id=new_id("ftjob-"), created_at=int(time.time()), spec=spec, status="validating_files")
        self._tx("INSERT INTO jobs (id, created_at, spec, status) VALUES (?,?,?,?)",
                 (job.id, job.created_at, spec.model_dump_json(), job.status))
        return job

    def job(self, job_id: str) -> JobRow | None:
        found = self._jobs("id = ?", (job_id,))
        return found[0] if found else None

    def jobs(self, after: str | None, limit: int) -> tuple[list[JobRow], bool]:
        rows, more = self._page("jobs", "1", (), after, limit)
        return [_job(r) for r in rows], more

    def jobs_in(self, *statuses: str) -> list[JobRow]:
        """Jobs in these states, in queue order."""
        return self._jobs(f"status IN ({_marks(statuses)}) ORDER BY queued_at IS NULL, queued_at, seq", statuses)

    def next_queued(self) -> JobRow | None:
        queued = self.jobs_in("queued")
        return queued[0] if queued else None

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns of a job; dicts and lists are stored as JSON, a JobSpec as its JSON."""
        if not values:
            return
        cols = ", ".join(f"{k} = ?" for k in values)
        args = tuple(json.dumps(v) if isinstance(v, (dict, list)) else v for v in values.values())
        self._tx(f"UPDATE jobs SET {cols} WHERE id = ?", (*args, job_id))

    def set_status(self, job_id: str, status: str, **values: Any) -> None:
        if status in FINISHED:
            values.setdefault("finished_at", int(time.time()))
            values.setdefault("estimated_finish", None)
        if status == "queued":
            values.setdefault("queued_at", time.time())
        self.update(job_id, status=status, **values)

    def _jobs(self, where: str, args: tuple) -> list[JobRow]:
        return [_job(r) for r in self._all(f"SELECT * FROM jobs WHERE {where}", args)]

    # -- events and checkpoints ------------------------------------------------------------

    def add_event(self, job_id: str, message: str, level: str = "info", kind: str = "message",
                  data: dict[str, Any] | None = None, **job_values: Any) -> str:
        """Record an event; `job_values` are set on the job in the same transaction (a cursor, say),
        so a restart neither loses nor repeats it."""
        event_id = new_id("ftevent-")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT INTO events (id, job_id, created_at, level, type, message, data) "
                                   "VALUES (?,?,?,?,?,?,?)", (event_id, job_id, int(time.time()), level, kind, message,
                                                              None if data is None else json.dumps(data)))
                self.update(job_id, **job_values)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return event_id

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        rows, more = self._page("events", "job_id = ?", (job_id,), after, limit)
        return [{"id": r["id"], "created_at": r["created_at"], "level": r["level"], "message": r["message"],
                 "data": json.loads(r["data"]) if r["data"] else None, "type": r["type"]} for r in rows], more

    def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, Any]) -> bool:
        """False when this step's checkpoint is known already (a resumed run writes it again)."""
        cur = self._tx("INSERT OR IGNORE INTO checkpoints (id, job_id, created_at, step, metrics) VALUES (?,?,?,?,?)",
                       (new_id("ftckpt-"), job_id, int(time.time()), step, json.dumps(metrics)))
        return cur.rowcount == 1

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        rows, more = self._page("checkpoints", "job_id = ?", (job_id,), after, limit)
        return [{"id": r["id"], "created_at": r["created_at"], "step": r["step"],
                 "metrics": json.loads(r["metrics"])} for r in rows], more

    # -- pages -----------------------------------------------------------------------------

    def _page(self, table: str, where: str, args: tuple, after: str | None, limit: int,
              order: str = "desc") -> tuple[list[sqlite3.Row], bool]:
        """Up to `limit` rows after the row whose id is `after`; and whether more follow."""
        op, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        if after is not None:
            found = self._all(f"SELECT seq FROM {table} WHERE id = ? AND {where}", (after, *args))
            if not found:
                raise UnknownCursor(after)
            where, args = f"{where} AND seq {op} ?", (*args, found[0]["seq"])
        rows = self._all(f"SELECT * FROM {table} WHERE {where} ORDER BY seq {direction} LIMIT ?", (*args, limit + 1))
        return rows[:limit], len(rows) > limit


def _marks(values: tuple) -> str:
    return ",".join("?" for _ in values)


def _file(r: sqlite3.Row) -> FileRow:
    return FileRow(id=r["id"], created_at=r["created_at"], filename=r["filename"], bytes=r["bytes"],
                   purpose=r["purpose"], stored=r["stored"], status=r["status"], status_details=r["status_details"],
                   kind=r["kind"], records=r["records"], problems=json.loads(r["problems"] or "[]"))


def _job(r: sqlite3.Row) -> JobRow:
    return JobRow(id=r["id"], created_at=r["created_at"], spec=JobSpec.model_validate_json(r["spec"]),
                  status=r["status"], queued_at=r["queued_at"], finished_at=r["finished_at"],
                  estimated_finish=r["estimated_finish"], trained_tokens=r["trained_tokens"],
                  fine_tuned_model=r["fine_tuned_model"], error=json.loads(r["error"]) if r["error"] else None,
                  result_files=json.loads(r["result_files"] or "[]"),
                  resolved=json.loads(r["resolved"]) if r["resolved"] else None,
                  cursor=json.loads(r["cursor"] or "{}"))
