"""SQLiteMemory: the embedded, persistent default.

Reference card
--------------
URL        ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
           ``sqlite://:memory:`` (private, gone on close)
Options    ``durability`` ``"normal"`` (default) or ``"full"``;
           ``timeout`` seconds a write waits for the file lock (default 60);
           and every option of :func:`chatmem.open`.
Durability WAL journal. With ``"normal"`` (synchronous=NORMAL) an
           acknowledged write survives the process being killed, but a power
           cut or OS crash may lose the last transactions. ``"full"``
           (synchronous=FULL) syncs the WAL on every commit and survives
           power loss; it costs one fsync per write. The default is
           ``"normal"`` because chat turns are mostly lost to crashed
           processes, not to crashed machines, and a sync per turn caps a
           busy bot at the disk's sync rate.
Ordering   Ids are ``AUTOINCREMENT`` row ids: a session's history is in
           acceptance order, and ids are never reused after a delete.
Sharing    Safe for many threads (one connection per thread) and many
           processes on one file. Writers queue on the file lock with a busy
           timeout and a retry loop, so contention shows as latency, never
           as a "database is locked" error.
Indexes    ``(ns, session, seq)`` for history and cursors, ``(ns, user_id,
           created_at, seq)`` and ``(ns, created_at, seq)`` for queries: every
           read costs O(log n + result).
Budget     ``used_bytes`` counts content, metadata and ids plus
           :attr:`message_overhead` per message. Once a store with a
           capacity opens a file, triggers keep per-session totals in the
           same transaction as every write; a file that never had a budget
           skips that work, and its ``stats()`` scans the messages instead.
LRU        Reads mark a session used in process; the mark reaches the file
           with the next write of that handle, so ``evict-lru-session`` across
           processes sees reads a little late.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from chatmem.base import BaseChatMessageMemory
from chatmem.errors import (
    BackendUnavailable,
    CapacityExceeded,
    InvalidMessage,
    MessageNotFound,
)
from chatmem.message import (
    ROLE_CODES,
    ROLES,
    Message,
    Prepared,
    to_micros,
    with_id,
)

__all__ = ["SQLiteMemory"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " ns TEXT NOT NULL,"
    " session TEXT NOT NULL,"
    " user_id TEXT,"
    " role INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " size INTEGER NOT NULL,"
    " content TEXT NOT NULL,"
    " metadata TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS messages_by_session ON messages (ns, session, seq)",
    "CREATE INDEX IF NOT EXISTS messages_by_user"
    " ON messages (ns, user_id, created_at, seq) WHERE user_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS messages_by_time ON messages (ns, created_at, seq)",
    "CREATE TABLE IF NOT EXISTS meta ("
    " key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)

# Per-session counts for the budget, count() and evict-lru-session. They
# are kept by triggers, installed the first time a store with a capacity
# opens the file: every later handle, bounded or not, keeps them right,
# and a store that never had a budget pays nothing for them on writes.
# last_used is a logical clock: the store's sequence at the last use.
ACCOUNTING = (
    "CREATE TABLE IF NOT EXISTS sessions ("
    " ns TEXT NOT NULL,"
    " session TEXT NOT NULL,"
    " messages INTEGER NOT NULL,"
    " bytes INTEGER NOT NULL,"
    " last_used INTEGER NOT NULL,"
    " PRIMARY KEY (ns, session)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS sessions_by_use ON sessions (ns, last_used)",
    "INSERT INTO sessions (ns, session, messages, bytes, last_used)"
    " SELECT ns, session, count(*), sum(size), max(seq) FROM messages"
    " GROUP BY ns, session",
    "CREATE TRIGGER IF NOT EXISTS account_insert AFTER INSERT ON messages"
    " BEGIN"
    " INSERT INTO sessions (ns, session, messages, bytes, last_used)"
    " VALUES (new.ns, new.session, 1, new.size, new.seq)"
    " ON CONFLICT (ns, session) DO UPDATE SET"
    " messages = messages + 1,"
    " bytes = bytes + excluded.bytes,"
    " last_used = excluded.last_used;"
    " END",
    "CREATE TRIGGER IF NOT EXISTS account_delete AFTER DELETE ON messages"
    " BEGIN"
    " UPDATE sessions SET messages = messages - 1, bytes = bytes - old.size"
    " WHERE ns = old.ns AND session = old.session;"
    " DELETE FROM sessions"
    " WHERE ns = old.ns AND session = old.session AND messages <= 0;"
    " END",
    "INSERT INTO meta VALUES ('accounting', 'on')",
)

COLUMNS = "seq, session, user_id, role, created_at, content, metadata"

INSERT = (
    "INSERT INTO messages"
    " (ns, session, user_id, role, created_at, size, content, metadata)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

LAST = (
    f"SELECT {COLUMNS} FROM messages WHERE ns = ? AND session = ?"
    " ORDER BY seq DESC LIMIT ?"
)

TOUCH = (
    "UPDATE sessions SET last_used ="
    " (SELECT seq FROM sqlite_sequence WHERE name = 'messages')"
    " WHERE ns = ? AND session = ?"
)

DURABILITY = {"normal": "NORMAL", "full": "FULL"}

# Evictions and purges read victims in chunks of this many rows.
VICTIM_CHUNK = 512


class SQLiteMemory(BaseChatMessageMemory):
    """Chat memory in one SQLite file; see the module's reference card.

    >>> from chatmem.backends.sqlite import SQLiteMemory
    >>> with SQLiteMemory(":memory:") as memory:
    ...     memory.add("s1", "user", "hello").id
    '1'
    """

    message_overhead = 128

    def __init__(
        self,
        path: str | os.PathLike[str] = "chatmem.db",
        *,
        durability: str = "normal",
        timeout: float = 60.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if durability not in DURABILITY:
            raise InvalidMessage(
                f"Unknown durability {durability!r}; use 'normal' or 'full'."
            )
        self.path = str(path)
        self.durability = durability
        self.timeout = float(timeout)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._touched: set[str] = set()
        self._shared: sqlite3.Connection | None = None
        self._shared_lock = threading.RLock()
        self._accounting = False

        # A private in-memory database exists per connection, so every
        # thread must share the one connection.
        if self.path == ":memory:":
            self._shared = self._connect()
        self._create_schema()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteMemory:
        """Open the file named by a ``sqlite://`` URL."""
        return cls(path_from_url(url), **options)

    # -- connections -----------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise BackendUnavailable(
                    f"Cannot open the SQLite file {self.path!r}: the folder "
                    f"{str(parent)!r} does not exist."
                )
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={DURABILITY[self.durability]}")
            conn.execute("PRAGMA foreign_keys=OFF")
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"Cannot open the SQLite file {self.path!r}: {exc}."
            ) from exc
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self._check_open()
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _create_schema(self) -> None:
        with self._transaction() as conn:
            for statement in SCHEMA:
                conn.execute(statement)
            row = conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise BackendUnavailable(
                    f"{self.path!r} was written by a newer chatmem (schema "
                    f"{row[0]}); upgrade chatmem to open it."
                )
            accounting = conn.execute(
                "SELECT value FROM meta WHERE key = 'accounting'"
            ).fetchone()
            if accounting is None and self._budget.bounded:
                for statement in ACCOUNTING:
                    conn.execute(statement)
                accounting = ("on",)
            self._accounting = accounting is not None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self._shared is not None:
            with self._shared_lock:
                yield from self._write_transaction(self._shared)
        else:
            yield from self._write_transaction(self._conn)

    def _write_transaction(
        self, conn: sqlite3.Connection
    ) -> Iterator[sqlite3.Connection]:
        self._begin(conn)
        try:
            self._flush_touches(conn)
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise BackendUnavailable(
                f"SQLite could not commit to {self.path!r}: {exc}."
            ) from exc

    def _begin(self, conn: sqlite3.Connection) -> None:
        # The busy timeout covers most waits; the loop covers the busy
        # errors SQLite returns at once to avoid deadlock, and a deadline
        # keeps a stuck writer from hanging the caller forever.
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise BackendUnavailable(
                        f"SQLite could not start a write on {self.path!r} "
                        f"within {self.timeout:g} s: {exc}."
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            if self._shared is not None:
                with self._shared_lock:
                    return self._shared.execute(sql, params).fetchall()
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(f"SQLite read failed: {exc}.") from exc

    def _close(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()
        self._shared = None

    def _describe(self) -> str:
        return f"path={self.path!r} namespace={self.namespace!r}"

    # -- writing ---------------------------------------------------------

    def _write(self, prepared: list[Prepared]) -> list[Message]:
        # One INSERT in autocommit mode is a transaction of its own, as
        # atomic and as durable as BEGIN, INSERT, COMMIT, and two statements
        # cheaper. It serves one message into a store with nothing to do
        # first: no budget to check, no expired messages to purge and no
        # marks of use to flush.
        if (
            len(prepared) > 1
            or self._budget.bounded
            or self.retention is not None
            or self._touched
            or self._shared is not None
        ):
            return super()._write(prepared)
        self._check_open()
        conn = self._conn
        row = self._row(prepared[0])
        deadline: float | None = None
        delay = 0.001
        while True:
            try:
                cursor = conn.execute(INSERT, row)
                break
            except sqlite3.OperationalError as exc:
                # A statement that failed left nothing behind, unless
                # SQLite kept its transaction open to let it be retried.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.timeout
                if not _is_busy(exc) or now > deadline:
                    raise BackendUnavailable(
                        f"SQLite could not write to {self.path!r} within "
                        f"{self.timeout:g} s: {exc}."
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        return [with_id(prepared[0].message, str(cursor.lastrowid))]

    def _row(self, item: Prepared) -> tuple[Any, ...]:
        _, session_id, role, content, user_id, created_at, _ = item.message
        return (
            self.namespace,
            session_id,
            user_id,
            ROLE_CODES[role],
            to_micros(created_at),
            item.size + self.message_overhead,
            content,
            item.metadata_json,
        )

    def _insert(self, prepared: Sequence[Prepared]) -> list[Message]:
        conn = self._conn
        if len(prepared) == 1:
            cursor = conn.execute(INSERT, self._row(prepared[0]))
            return [with_id(prepared[0].message, str(cursor.lastrowid))]

        # executemany runs the batch in one statement loop but reports no
        # row ids. The write lock is held, every new id exceeds the largest
        # so far, and ids rise in insertion order: when the last id is the
        # old largest plus the batch's length, the ids are exactly that
        # range. Otherwise (ids left unused by deletes) they are read back.
        found = conn.execute("SELECT max(seq) FROM messages").fetchone()
        largest = found[0] if found and found[0] is not None else 0
        conn.executemany(INSERT, [self._row(item) for item in prepared])
        last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        if last - largest == len(prepared):
            seqs: Sequence[int] = range(largest + 1, last + 1)
        else:
            seqs = [
                row[0]
                for row in conn.execute(
                    "SELECT seq FROM messages WHERE seq > ? ORDER BY seq",
                    (largest,),
                )
            ]
        return [
            with_id(item.message, str(seq))
            for item, seq in zip(prepared, seqs, strict=True)
        ]

    def _flush_touches(self, conn: sqlite3.Connection) -> None:
        if not self._touched:
            return
        touched, self._touched = self._touched, set()
        conn.executemany(TOUCH, [(self.namespace, s) for s in touched])

    def _touch(self, session_id: str) -> None:
        if self._accounting and self.policy == "evict-lru-session":
            self._touched.add(session_id)

    def _used_bytes(self) -> int:
        if self._accounting:
            row = self._read("SELECT total(bytes) FROM sessions")
        else:
            row = self._read("SELECT total(size) FROM messages")
        return int(row[0][0])

    def _evict(self, nbytes: int) -> None:
        conn = self._conn
        freed = 0
        by_session = self.policy == "evict-lru-session"
        while freed < nbytes:
            if by_session:
                victims = conn.execute(
                    "SELECT session, bytes FROM sessions WHERE ns = ?"
                    " ORDER BY last_used, session LIMIT 64",
                    (self.namespace,),
                ).fetchall()
                for session, size in victims:
                    self._remove_where(conn, "session = ?", (session,))
                    freed += size
                    if freed >= nbytes:
                        break
            else:
                victims = conn.execute(
                    "SELECT seq, session, size FROM messages WHERE ns = ?"
                    " ORDER BY seq LIMIT ?",
                    (self.namespace, VICTIM_CHUNK),
                ).fetchall()
                chosen = []
                for row in victims:
                    chosen.append(row)
                    freed += row[2]
                    if freed >= nbytes:
                        break
                self._remove_rows(conn, chosen)
            if not victims:
                raise CapacityExceeded(
                    "The budget is full and this namespace holds too little "
                    "to evict; other namespaces' messages are never evicted. "
                    "Raise capacity_bytes or delete messages."
                )
        log.warning("evicted %d bytes from namespace %r", freed, self.namespace)

    def _purge(self, cutoff: int) -> None:
        self._remove_where(self._conn, "created_at < ?", (cutoff,))

    def _remove_where(
        self, conn: sqlite3.Connection, where: str, params: tuple[Any, ...]
    ) -> int:
        removed = 0
        while True:
            rows = conn.execute(
                "SELECT seq, session, size FROM messages"
                f" WHERE ns = ? AND {where} LIMIT ?",
                (self.namespace, *params, VICTIM_CHUNK),
            ).fetchall()
            if not rows:
                return removed
            self._remove_rows(conn, rows)
            removed += len(rows)

    def _remove_rows(
        self, conn: sqlite3.Connection, rows: Sequence[tuple[int, str, int]]
    ) -> None:
        conn.executemany(
            "DELETE FROM messages WHERE seq = ?", [(row[0],) for row in rows]
        )

    def _delete(self, message_id: str) -> bool:
        seq = _seq(message_id)
        if seq is None:
            return False
        with self._transaction() as conn:
            return self._remove_where(conn, "seq = ?", (seq,)) > 0

    def _delete_session(self, session_id: str) -> int:
        with self._transaction() as conn:
            return self._remove_where(conn, "session = ?", (session_id,))

    def _delete_user(self, user_id: str) -> int:
        with self._transaction() as conn:
            return self._remove_where(conn, "user_id = ?", (user_id,))

    # -- reading ---------------------------------------------------------

    def _get(self, message_id: str) -> Message | None:
        seq = _seq(message_id)
        if seq is None:
            return None
        rows = self._read(
            f"SELECT {COLUMNS} FROM messages WHERE seq = ? AND ns = ?",
            (seq, self.namespace),
        )
        if not rows:
            return None
        message = _to_messages(rows)[0]
        self._touch(message.session_id)
        return message

    def _history(
        self,
        session_id: str,
        before: str | None,
        after: str | None,
        count: int | None,
        newest: bool,
    ) -> list[Message]:
        if (
            newest
            and count is not None
            and before is None
            and after is None
            and self.retention is None
        ):
            # history(last=k), the read behind every prompt: one fixed
            # statement rather than one assembled per call.
            rows = self._read(LAST, (self.namespace, session_id, count))
            rows.reverse()
            self._touch(session_id)
            return _to_messages(rows)

        where = ["ns = ?", "session = ?"]
        params: list[Any] = [self.namespace, session_id]
        for cursor, op in ((before, "<"), (after, ">")):
            if cursor is not None:
                where.append(f"seq {op} ?")
                params.append(self._cursor_seq(session_id, cursor))
        cutoff = self._cutoff()
        if cutoff is not None:
            where.append("created_at >= ?")
            params.append(cutoff)

        order = "DESC" if newest else "ASC"
        sql = (
            f"SELECT {COLUMNS} FROM messages WHERE {' AND '.join(where)}"
            f" ORDER BY seq {order}"
        )
        if count is not None:
            sql += " LIMIT ?"
            params.append(count)
        rows = self._read(sql, params)
        if newest:
            rows.reverse()
        self._touch(session_id)
        return _to_messages(rows)

    def _cursor_seq(self, session_id: str, cursor: str) -> int:
        seq = _seq(cursor)
        if seq is not None:
            rows = self._read(
                "SELECT session FROM messages WHERE seq = ? AND ns = ?",
                (seq, self.namespace),
            )
            if rows and rows[0][0] == session_id:
                return seq
        raise MessageNotFound(cursor)

    def _change_mark(self) -> Hashable | None:
        # data_version changes when another connection (another thread of
        # this store, another store, another process) commits, not for the
        # connection's own commits; connections live until close, so
        # their ids are not reused meanwhile.
        conn = self._shared if self._shared is not None else self._conn
        return id(conn), self._read("PRAGMA data_version")[0][0]

    def _session_state(
        self, session_id: str, first: str, last: str, older: bool
    ) -> tuple[int, bool, bool]:
        low, high = _seq(first), _seq(last)
        if low is None or high is None:
            return 0, True, True
        # One statement, so one snapshot; the count walks only the run.
        where = "ns = ? AND session = ?"
        params: list[Any] = [self.namespace, session_id]
        cutoff = self._cutoff()
        if cutoff is not None:
            where += " AND created_at >= ?"
            params.append(cutoff)
        table = "messages INDEXED BY messages_by_session"
        sql = f"SELECT count(*), max(seq) FROM {table} WHERE {where} AND seq >= ?"
        if older:
            sql = (
                f"SELECT count(*), max(seq), EXISTS (SELECT 1 FROM {table}"
                f" WHERE {where} AND seq < ?) FROM {table}"
                f" WHERE {where} AND seq >= ?"
            )
            params = [*params, low, *params, low]
        else:
            params.append(low)
        row = self._read(sql, params)[0]
        if not row[0]:
            return 0, True, True
        return int(row[0]), row[1] > high, older and bool(row[2])

    def _query(
        self,
        session_id: str | None,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        role: str | None,
        limit: int | None,
    ) -> list[Message]:
        where = ["ns = ?"]
        params: list[Any] = [self.namespace]
        if session_id is not None:
            where.append("session = ?")
            params.append(session_id)
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if role is not None:
            where.append("role = ?")
            params.append(ROLE_CODES[role])
        if start is not None:
            where.append("created_at >= ?")
            params.append(to_micros(start))
        if end is not None:
            where.append("created_at < ?")
            params.append(to_micros(end))

        sql = (
            f"SELECT {COLUMNS} FROM messages {_index(session_id, user_id)}"
            f" WHERE {' AND '.join(where)} ORDER BY created_at, seq"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return _to_messages(self._read(sql, params))

    def _sessions(self, user_id: str | None) -> list[str]:
        cutoff = self._cutoff()
        if self._accounting and user_id is None and cutoff is None:
            rows = self._read(
                "SELECT session FROM sessions WHERE ns = ? ORDER BY session",
                (self.namespace,),
            )
        else:
            where, params = self._filters(None, user_id)
            rows = self._read(
                f"SELECT DISTINCT session FROM messages {_index(None, user_id)}"
                f" WHERE {where} ORDER BY session",
                params,
            )
        return [row[0] for row in rows]

    def _count(self, session_id: str | None, user_id: str | None) -> int:
        if self._accounting and user_id is None and self._cutoff() is None:
            sql = "SELECT total(messages) FROM sessions WHERE ns = ?"
            params: list[Any] = [self.namespace]
            if session_id is not None:
                sql += " AND session = ?"
                params.append(session_id)
            return int(self._read(sql, params)[0][0])
        where, params = self._filters(session_id, user_id)
        return int(
            self._read(
                f"SELECT count(*) FROM messages {_index(session_id, user_id)}"
                f" WHERE {where}",
                params,
            )[0][0]
        )

    def _filters(
        self, session_id: str | None, user_id: str | None
    ) -> tuple[str, list[Any]]:
        where = ["ns = ?"]
        params: list[Any] = [self.namespace]
        if session_id is not None:
            where.append("session = ?")
            params.append(session_id)
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        cutoff = self._cutoff()
        if cutoff is not None:
            where.append("created_at >= ?")
            params.append(cutoff)
        return " AND ".join(where), params

    def _usage(self) -> tuple[int, int, float]:
        if self._accounting:
            sql = "SELECT total(bytes), total(messages) FROM sessions"
        else:
            # Without a budget nothing keeps running totals: this scan is
            # the price of stats() on an unbounded store.
            sql = "SELECT total(size), count(*) FROM messages"
        used, count = self._read(sql)[0]
        pages = self._read("PRAGMA page_count")[0][0]
        free = self._read("PRAGMA freelist_count")[0][0]
        fragmentation = free / pages if pages else 0.0
        return int(used), int(count), fragmentation


def path_from_url(url: str) -> str:
    """Return the file path of a ``sqlite://`` URL.

    ``sqlite:///chat.db`` is relative to the working folder and
    ``sqlite:////var/lib/chat.db`` absolute, as in SQLAlchemy's URLs.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidMessage(f"Not a usable sqlite URL: {exc}.") from None
    if parts.scheme != "sqlite":
        raise InvalidMessage(f"Not a sqlite:// URL: {parts.scheme}://...")
    if parts.netloc == ":memory:" or parts.path in ("/:memory:", ""):
        return ":memory:"
    path = unquote(parts.path)
    if "\x00" in path:
        raise InvalidMessage("A sqlite URL's path cannot hold a NUL character.")
    if parts.netloc:
        raise InvalidMessage(
            "A sqlite URL names a file, not a host: use sqlite:///relative.db "
            "or sqlite:////absolute/path.db."
        )
    return path[1:]


def _index(session_id: str | None, user_id: str | None) -> str:
    # Without ANALYZE statistics the planner prefers the time index to
    # avoid a sort, and then scans the whole namespace to find one
    # session. Naming the index keeps every read O(log n + result).
    if user_id is not None:
        return "INDEXED BY messages_by_user"
    if session_id is not None:
        return "INDEXED BY messages_by_session"
    return "INDEXED BY messages_by_time"


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _seq(message_id: str) -> int | None:
    # Only the id's own spelling finds it: "01" or "٣" name no message.
    if not message_id.isdigit() or not message_id.isascii() or message_id[0] == "0":
        return None
    value = int(message_id)
    return value if value < 1 << 63 else None


def _to_messages(rows: list[tuple[Any, ...]]) -> list[Message]:
    # Inlined rather than a call per row: history(last=20) spends most of
    # its Python time here.
    make, roles, loads = tuple.__new__, ROLES, json.loads
    return [
        make(
            Message,
            (str(seq), session, roles[role], content, user, created, loads(meta))
            if meta
            else (str(seq), session, roles[role], content, user, created, {}),
        )
        for seq, session, user, role, created, content, meta in rows
    ]
