"""Running SQL for the sql task's metrics, without ever changing the user's database.

Queries (SELECT, WITH, VALUES) run on a read-only connection and are compared by their rows.
Changes (INSERT, REPLACE, UPDATE, DELETE) run on a scratch copy of the database, each inside a
transaction that is rolled back, and are compared by the tables they leave behind: the tables
either statement wrote, as a multiset of rows each. Which tables a statement writes comes from
SQLite's authorizer, so triggers and CTEs are covered without parsing SQL here. A snapshot reads
whole tables, so changes on very large tables are slow to score.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from tuneforge.errors import fail
from tuneforge.tasks import clean_sql

_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
# ATTACH could create files elsewhere; on the scratch copy, a statement must not end or nest our
# transaction (it would make the rollback miss) nor change how the copy journals.
_NEVER = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH}
_NOT_ON_SCRATCH = _NEVER | {sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT, sqlite3.SQLITE_PRAGMA}
_WRITES = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE, sqlite3.SQLITE_DROP_TABLE,
           sqlite3.SQLITE_CREATE_TABLE}

State = dict[tuple[str, str], Any]


def _guard(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_DENY if action in _NEVER else sqlite3.SQLITE_OK


def open_db(db_path: str | Path) -> sqlite3.Connection:
    """Open the SQLite file read-only so generated SQL cannot change it; ATTACH is refused too.
    TuneforgeError sql_db_not_found when the file is missing or not a SQLite database."""
    path = Path(db_path)
    if not path.is_file():
        raise fail("sql_db_not_found", "no SQLite database file here; give the path of the .db/.sqlite file", str(path))
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as err:
        raise fail("sql_db_not_found", f"cannot read this file as a SQLite database ({err})", str(path)) from None
    conn.set_authorizer(_guard)
    return conn


def check_db(db_path: str | Path) -> None:
    """Fail now, before any inference, when the database cannot be opened."""
    open_db(db_path).close()


@contextlib.contextmanager
def _deadline(conn: sqlite3.Connection, timeout_s: float) -> Iterator[None]:
    deadline = time.monotonic() + timeout_s
    # Checked every 1000 VM steps: a runaway recursive CTE is stopped within milliseconds of the limit.
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        yield
    finally:
        conn.set_progress_handler(None, 0)


def _rounded(rows: list[tuple]) -> list[tuple]:
    # Rounded so that two correct ways to compute an average do not differ in the 15th digit.
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]


def run_query(conn: sqlite3.Connection, query: str, timeout_s: float = 5.0) -> list[tuple]:
    """All result rows; sqlite3.Error (OperationalError "interrupted" past the time limit) on failure."""
    with _deadline(conn, timeout_s):
        cursor = conn.execute(clean_sql(query))
        if cursor.description is None:  # empty text, a comment, or a statement that is not a query
            raise sqlite3.OperationalError("not a query: it returns no columns")
        rows = cursor.fetchall()
    return _rounded(rows)


def same_rows(got: list[tuple], want: list[tuple], ordered: bool) -> bool:
    return got == want if ordered else Counter(got) == Counter(want)


def ordered(reference: str) -> bool:
    """Rows compare in order only when the reference asks for one."""
    return bool(_ORDER_BY.search(reference))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Scratch:
    """A writable copy of the database in a temporary folder, for scoring changes."""

    def __init__(self, source: sqlite3.Connection):
        self._folder = tempfile.TemporaryDirectory(prefix="tuneforge-sql-")
        # Autocommit mode, so the only transaction is the one `effect` opens and rolls back; no
        # statement cache, so the authorizer sees every statement as it is compiled.
        self.conn = sqlite3.connect(Path(self._folder.name) / "copy.db", isolation_level=None, cached_statements=0)
        source.backup(self.conn)
        self.conn.set_authorizer(_guard)

    def close(self) -> None:
        self.conn.close()
        self._folder.cleanup()

    def effect(self, statement: str, also: set[tuple[str, str]] = frozenset(),
               timeout_s: float = 5.0) -> tuple[set[tuple[str, str]], State]:
        """(tables written, state of those and `also` after the statement); the copy is unchanged after.
        sqlite3.Error when the statement fails."""
        written: set[tuple[str, str]] = set()

        def record(action: int, arg1: str | None, _arg2: str | None, db: str | None, _source: str | None) -> int:
            if action in _NOT_ON_SCRATCH:
                return sqlite3.SQLITE_DENY
            if action in _WRITES and arg1:
                written.add((db or "main", arg1))
            return sqlite3.SQLITE_OK

        self.conn.execute("BEGIN")
        try:
            self.conn.set_authorizer(record)
            with _deadline(self.conn, timeout_s):
                self.conn.execute(clean_sql(statement)).fetchall()  # fetch: RETURNING rows, or a query's
            self.conn.set_authorizer(_guard)
            return written, self._snapshot(written | set(also))
        finally:
            self.conn.set_authorizer(_guard)
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    def _snapshot(self, tables: set[tuple[str, str]]) -> State:
        state: State = {}
        for db, name in sorted(tables):
            try:
                rows = self.conn.execute(f"SELECT * FROM {_quote(db)}.{_quote(name)}").fetchall()
            except sqlite3.Error:  # dropped by the statement
                state[(db, name)] = None
                continue
            state[(db, name)] = Counter(_rounded(rows))
        return state
