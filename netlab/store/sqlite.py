"""The embedded store: one SQLite file per lab, shared by the CLI and every
node agent (separate processes).

- WAL mode, so readers never block the writer and the other way round.
- Every write is one BEGIN IMMEDIATE transaction: the write lock is taken
  before anything is read, so a compare-and-swap cannot interleave with
  another process's; waiting writers queue on SQLite's busy timeout.
- Each write logs its events in an `events` table keyed by revision; watch
  polls that table. Old events are compacted, keeping the last `history`
  revisions, and a reader behind that gets CompactedError (as from etcd).
- TTL keys are hidden from reads once expired, and deleted (emitting DELETE
  events) by the next write, sweep() or poll for events.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from .base import (
    KV, CompactedError, Event, EventType, Store, StoreBusy, _check_ttl, _check_value, prefix_end,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    revision INTEGER NOT NULL,
    compact_revision INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (id, revision, compact_revision) VALUES (0, 0, 0);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER NOT NULL,
    seq INTEGER NOT NULL,          -- orders the events of one revision (delete_prefix, expiry)
    type TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    expires_at REAL,
    prev_value TEXT,               -- NULL when the event created the key
    prev_create_revision INTEGER,
    prev_mod_revision INTEGER,
    prev_version INTEGER,
    prev_expires_at REAL,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
"""

_KV_COLS = "key, value, create_revision, mod_revision, version, expires_at"
_EVENT_COLS = ("revision, type, key, value, create_revision, version, expires_at, prev_value, "
               "prev_create_revision, prev_mod_revision, prev_version, prev_expires_at")
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


def _range(prefix: str) -> tuple[str, list]:
    """SQL condition and parameters for 'key starts with prefix'. A range on
    the primary key, not LIKE/GLOB, so it uses the index and no character in
    a key is special."""
    end = prefix_end(prefix)
    if end is None:
        return "key >= ?", [prefix]
    return "key >= ? AND key < ?", [prefix, end]


def _kv(row) -> KV:
    return KV(row[0], row[1], row[2], row[3], row[4], row[5])


class _Txn:
    """The state of one write transaction: its connection, clock reading and
    the revisions it has used."""

    def __init__(self, conn: sqlite3.Connection, revision: int, now: float):
        self.conn = conn
        self.revision = revision
        self.now = now
        self.expired = 0

    def bump(self) -> int:
        self.revision += 1
        return self.revision

    def current(self, key: str) -> KV | None:
        row = self.conn.execute(f"SELECT {_KV_COLS} FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else _kv(row)

    def put(self, key: str, value: str, ttl: float | None, prev: KV | None) -> int:
        rev = self.bump()
        create_rev, version = (prev.create_revision, prev.version + 1) if prev else (rev, 1)
        expires_at = None if ttl is None else self.now + ttl
        self.conn.execute(
            f"INSERT OR REPLACE INTO kv ({_KV_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
            (key, value, create_rev, rev, version, expires_at))
        self._log(rev, 0, EventType.PUT, KV(key, value, create_rev, rev, version, expires_at), prev)
        return rev

    def delete(self, kvs: list[KV]) -> int:
        """Delete kvs under one new revision, as etcd's DeleteRange does."""
        rev = self.bump()
        for seq, prev in enumerate(kvs):
            self.conn.execute("DELETE FROM kv WHERE key = ?", (prev.key,))
            self._log(rev, seq, EventType.DELETE, KV(prev.key, "", 0, rev, 0, None), prev)
        return rev

    def expire(self) -> int:
        rows = self.conn.execute(
            f"SELECT {_KV_COLS} FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ? ORDER BY key",
            (self.now,)).fetchall()
        if rows:
            self.delete([_kv(r) for r in rows])
        self.expired = len(rows)
        return len(rows)

    def _log(self, rev: int, seq: int, type_: EventType, kv: KV, prev: KV | None) -> None:
        p = (prev.value, prev.create_revision, prev.mod_revision, prev.version, prev.expires_at) \
            if prev else (None,) * 5
        self.conn.execute(
            "INSERT INTO events (revision, seq, type, key, value, create_revision, version, expires_at, "
            "prev_value, prev_create_revision, prev_mod_revision, prev_version, prev_expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rev, seq, type_.value, kv.key, kv.value, kv.create_revision, kv.version, kv.expires_at, *p))


class SQLiteStore(Store):
    """A Store in one SQLite file. Open one per process (or share one object
    between threads); every process that opens the same path sees the same
    keys, revisions and events."""

    def __init__(self, path: str | os.PathLike, *, busy_timeout: float = 30.0,
                 history: int = 10_000, clock: Callable[[], float] = time.time):
        """path: the lab's database file (its directory is created).
        busy_timeout: seconds a writer waits for another process's transaction.
        history: how many revisions of events to keep for watchers.
        clock: wall-clock source for TTLs (tests pass a fake one)."""
        if history < 1:
            raise ValueError("history must be at least 1 revision")
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self.history = history
        self._clock = clock
        self._lock = threading.RLock()  # one connection, shared by this process's threads
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._connection()  # fail early on a bad path, and create the schema

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- connection ----------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross fork(); a child reopens its own.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            self._retry_locked(conn, lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            # NORMAL is durable against a crashed process in WAL mode; only a
            # power loss can drop the last commits, which a lab can afford.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._retry_locked(conn, lambda: conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;"))
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _retry_locked(self, conn: sqlite3.Connection, fn):
        # Switching a new file to WAL takes an exclusive lock that does not
        # always wait on the busy handler; when many processes open a fresh
        # file at once, retry for up to busy_timeout.
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # a script that failed half way
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
                    continue
                raise StoreBusy(f"{self.path}: store stayed locked for {self.busy_timeout}s: {e}") from e

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- transactions --------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[_Txn]:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise StoreBusy(f"{self.path}: could not lock the store within {self.busy_timeout}s: {e}") from e
            try:
                revision, compact_revision = conn.execute(
                    "SELECT revision, compact_revision FROM meta WHERE id = 0").fetchone()
                txn = _Txn(conn, revision, self._clock())
                txn.expire()  # expired keys go first, so the operation sees them gone
                yield txn
                if txn.revision != revision:
                    conn.execute("UPDATE meta SET revision = ? WHERE id = 0", (txn.revision,))
                    self._compact(conn, txn.revision, compact_revision)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # An explicit read transaction gives one WAL snapshot across queries.
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _compact(self, conn: sqlite3.Connection, revision: int, compact_revision: int) -> None:
        # Compact in chunks (a quarter of the history at a time) so most
        # writes do not pay for a DELETE on the events table.
        if revision - compact_revision < self.history + max(1, self.history // 4):
            return
        upto = revision - self.history
        conn.execute("DELETE FROM events WHERE revision <= ?", (upto,))
        conn.execute("UPDATE meta SET compact_revision = ? WHERE id = 0", (upto,))

    def compact(self, revision: int) -> None:
        """Drop the events up to and including revision (etcd's Compact)."""
        with self._write() as txn:
            current = txn.conn.execute("SELECT compact_revision FROM meta WHERE id = 0").fetchone()[0]
            if revision > current:
                revision = min(revision, txn.revision)
                txn.conn.execute("DELETE FROM events WHERE revision <= ?", (revision,))
                txn.conn.execute("UPDATE meta SET compact_revision = ? WHERE id = 0", (revision,))

    # -- reads ---------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_KV_COLS} FROM kv WHERE key = ? AND {_LIVE}",
                               (key, self._clock())).fetchone()
        return None if row is None else _kv(row)

    def list_with_revision(self, prefix: str) -> tuple[list[KV], int]:
        cond, params = _range(prefix)
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_KV_COLS} FROM kv WHERE {cond} AND {_LIVE} ORDER BY key",
                                (*params, self._clock())).fetchall()
            revision = conn.execute("SELECT revision FROM meta WHERE id = 0").fetchone()[0]
        return [_kv(r) for r in rows], revision

    def revision(self) -> int:
        with self._read() as conn:
            return conn.execute("SELECT revision FROM meta WHERE id = 0").fetchone()[0]

    # -- writes --------------------------------------------------------------
    def put(self, key: str, value: str, *, ttl: float | None = None) -> int:
        _check_value(value)
        _check_ttl(ttl)
        with self._write() as txn:
            return txn.put(key, value, ttl, txn.current(key))

    def create(self, key: str, value: str, *, ttl: float | None = None) -> int:
        return self.compare_and_swap(key, value, 0, ttl=ttl)

    def compare_and_swap(self, key: str, value: str, expected_mod_revision: int, *,
                         ttl: float | None = None) -> int:
        _check_value(value)
        _check_ttl(ttl)
        with self._write() as txn:
            prev = txn.current(key)
            if (prev.mod_revision if prev else 0) != expected_mod_revision:
                return 0
            return txn.put(key, value, ttl, prev)

    def delete(self, key: str, expected_mod_revision: int | None = None) -> int:
        with self._write() as txn:
            prev = txn.current(key)
            if prev is None:
                return 0
            if expected_mod_revision is not None and prev.mod_revision != expected_mod_revision:
                return 0
            return txn.delete([prev])

    def delete_prefix(self, prefix: str) -> int:
        cond, params = _range(prefix)
        with self._write() as txn:
            rows = txn.conn.execute(f"SELECT {_KV_COLS} FROM kv WHERE {cond} ORDER BY key",
                                    params).fetchall()
            if rows:
                txn.delete([_kv(r) for r in rows])
            return len(rows)

    # -- history -------------------------------------------------------------
    def sweep(self) -> int:
        # Look first without the write lock: polling watchers call this often
        # and must not queue behind each other when nothing has expired.
        with self._read() as conn:
            due = conn.execute("SELECT 1 FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT 1",
                               (self._clock(),)).fetchone()
        if not due:
            return 0
        with self._write() as txn:
            return txn.expired  # _write expires whatever is due before anything else

    def events_since(self, prefix: str, revision: int) -> list[Event]:
        self.sweep()  # so watchers see expiries even when nobody writes
        cond, params = _range(prefix)
        with self._read() as conn:
            compact_revision = conn.execute("SELECT compact_revision FROM meta WHERE id = 0").fetchone()[0]
            if revision < compact_revision:
                raise CompactedError(revision + 1, compact_revision)
            rows = conn.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE revision > ? AND {cond} ORDER BY revision, seq",
                (revision, *params)).fetchall()
        events = []
        for (rev, type_, key, value, create_rev, version, expires_at,
             p_value, p_create, p_mod, p_version, p_expires) in rows:
            prev = None if p_value is None else KV(key, p_value, p_create, p_mod, p_version, p_expires)
            events.append(Event(EventType(type_), KV(key, value, create_rev, rev, version, expires_at), prev))
        return events
