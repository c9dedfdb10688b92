"""The state store: one SQLite database (`state.sqlite3` in the state folder) that every durable part of the
local stack writes through.

Why it is crash-safe: SQLite in WAL mode with `synchronous=FULL` makes a transaction durable when its commit
returns (the WAL is fsynced at every commit), and atomic whatever happens during it (a torn WAL frame fails its
checksum and the transaction is rolled back on the next open). A part of the stack acknowledges a call only after
the transaction that holds the call's effect has committed, so a crash (`kill -9`, power loss) loses only what
nobody was told had happened, and never leaves half of a transaction (a task's final status without its metering
record, say).

Layout: `entity(kind, key, blob)` holds one row per durable object (a DynamoDB item, an ECS task, …) as an
after-image; `meta(key, value)` small facts (the deployed template's digest, …); parts with their own shape (log
events) add their own tables through `ensure_schema`. One connection writes, under a lock; readers borrow
connections from a small pool, which WAL lets run beside the writer.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

DATABASE = "state.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entity (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

#: read connections kept open between reads
MAX_IDLE_READERS = 8
#: (kind, key, blob): a blob of None deletes the entity
Change = tuple[str, str, bytes | None]


class StateStore:
    def __init__(self, folder: Path, *, durable: bool = True) -> None:
        """`durable`: fsync every commit (synchronous=FULL); a throwaway stack skips it (synchronous=OFF)."""
        self.path = folder / DATABASE
        self.durable = durable
        folder.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.RLock()
        self._writer = self._connect()
        self._idle: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self.ensure_schema(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'OFF'}")
        connection.execute("PRAGMA busy_timeout=30000")
        return connection

    # ------------------------------------------------------------------ writing

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable write: everything done on the yielded connection commits together (and is on disk
        when this returns) or not at all. Writers are serialized; a transaction may nest inside another (it then
        joins the outer one)."""
        with self._write_lock:
            connection = self._writer
            if connection.in_transaction:
                yield connection
                return
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def ensure_schema(self, sql: str) -> None:
        with self.transaction() as connection:
            for statement in sql.split(";"):
                if statement.strip():
                    connection.execute(statement)

    def apply(self, changes: Iterable[Change]) -> None:
        """Write after-images (and deletions) of entities, all in one transaction."""
        changes = list(changes)
        if not changes:
            return
        with self.transaction() as connection:
            for kind, key, blob in changes:
                if blob is None:
                    connection.execute("DELETE FROM entity WHERE kind = ? AND key = ?", (kind, key))
                else:
                    connection.execute(
                        "INSERT OR REPLACE INTO entity (kind, key, blob) VALUES (?, ?, ?)", (kind, key, blob)
                    )

    def wipe(self) -> None:
        """Empty every table (the schema stays): what a start that died before its first snapshot left behind."""
        with self.transaction() as connection:
            tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            for (table,) in tables:
                connection.execute(f'DELETE FROM "{table}"')

    def put(self, kind: str, key: str, blob: bytes | None) -> None:
        self.apply([(kind, key, blob)])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as connection:
            connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ reading

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read connection, borrowed from a small pool (WAL: reads see the last commit and never block the
        writer). Request threads come and go, so connections are pooled rather than kept per thread."""
        with self._readers_lock:
            if self._closed:
                raise RuntimeError("the state store is closed")
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._connect()
        try:
            yield connection
        finally:
            with self._readers_lock:
                if self._closed or len(self._idle) >= MAX_IDLE_READERS:
                    connection.close()
                else:
                    self._idle.append(connection)

    def get(self, kind: str, key: str) -> bytes | None:
        with self.reading() as connection:
            row = connection.execute("SELECT blob FROM entity WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return None if row is None else bytes(row[0])

    def all(self, kind: str) -> list[tuple[str, bytes]]:
        """Every entity of a kind, in key order."""
        with self.reading() as connection:
            rows = connection.execute("SELECT key, blob FROM entity WHERE kind = ? ORDER BY key", (kind,))
            return [(key, bytes(blob)) for key, blob in rows]

    def count(self, kind: str) -> int:
        with self.reading() as connection:
            return int(connection.execute("SELECT count(*) FROM entity WHERE kind = ?", (kind,)).fetchone()[0])

    def meta(self, key: str) -> str | None:
        with self.reading() as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Close every connection; a checkpoint folds the WAL into the database on the way."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            with self._readers_lock:
                for connection in self._idle:
                    connection.close()
                self._idle.clear()
            try:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._writer.close()
