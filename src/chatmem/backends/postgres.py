"""PostgresMemory: chat memory in PostgreSQL tables.

Reference card
--------------
URL        ``postgresql://user[:password]@host[:port]/dbname`` or
           ``postgres://...``. libpq parameters may follow in the query
           string (``?sslmode=require``), and so may the chatmem options
           ``schema``, ``table_prefix``, ``timeout``, ``retries`` and
           ``pool_size``; keyword options win over the URL.
Options    ``schema``: the PostgreSQL schema holding the tables (created if
           missing; default: the first schema on the ``search_path``);
           ``table_prefix`` (default ``chatmem_``) starts every table,
           index and function name, so several stores can share a schema;
           ``timeout`` seconds (default 30) bounds connecting, waiting for a
           pooled connection and each statement (``statement_timeout``);
           ``retries`` (default 2): how often a read is retried on a fresh
           connection after its connection broke;
           ``pool_size`` (default 8): at most this many connections in the
           pool that the store's threads share;
           and every option of :func:`chatmem.open`.
Tables     ``<prefix>messages`` (one row per message, content as ``bytea``,
           time as epoch microseconds), ``<prefix>schema_version`` (one row
           per applied schema version, for later migrations), and, once a
           store with a capacity has opened the tables, ``<prefix>sessions``
           and ``<prefix>usage`` kept by statement triggers. The first open
           creates what is missing under an advisory lock, so processes
           starting together do not race on the DDL.
Durability A write returns after PostgreSQL committed it. With the
           server's default ``synchronous_commit = on`` the commit is in
           the WAL on disk, so an acknowledged message survives a crash of
           the server or the machine.
Ordering   Ids are values of the messages table's identity sequence, drawn
           by the server; a session's history is in id order. Two writers
           racing on one session commit independently, so a reader may see
           id 8 a moment before id 7 becomes visible; a cursor taken in that
           moment skips 7. Stores with a capacity serialize their writes
           and do not have this window.
Budget     ``used_bytes`` counts content, metadata and ids plus
           :attr:`message_overhead` per message. Once a store with a
           capacity has opened the tables, triggers keep per-session and
           total counts, and every write takes a transaction-scoped
           advisory lock first: the capacity check, the eviction and the
           insert happen in one transaction, one writer at a time, so
           writers in many processes stay within the budget together. A
           store that never had a budget skips all of this, and its
           ``stats()`` and ``count()`` scan the messages instead.
Failures   A lost server surfaces as :class:`BackendUnavailable` within
           ``timeout``; the pool replaces broken connections, so the same
           store works again once the server is back. Reads are retried on
           a fresh connection; a write whose connection broke mid-flight is
           not, because it may have committed: it raises, unacknowledged.
Deletion   ``delete``, ``delete_session``, ``delete_user`` and retention
           remove rows at once; the space returns to the budget at commit
           and to the disk after (auto)vacuum.
Asyncio    :func:`chatmem.open_async` serves ``get``, ``history``,
           ``query``, ``sessions`` and ``count`` natively on psycopg's
           asyncio pool with the same statements as this class (both run
           its read plans); writes and deletes run in worker threads. See
           :mod:`chatmem.backends._postgres_async`.
Limits     Session, user and namespace ids cannot hold NUL characters
           (PostgreSQL text cannot store them); such ids raise
           :class:`InvalidMessage`. Content and metadata may hold anything.
           Marks of use for ``evict-lru-session`` reach the server with the
           handle's next write, so other processes see reads a little late.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import select
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from chatmem.base import BaseChatMessageMemory
from chatmem.errors import (
    BackendUnavailable,
    CapacityExceeded,
    InvalidMessage,
    MessageNotFound,
    StoreClosed,
)
from chatmem.message import (
    ROLE_CODES,
    ROLES,
    Message,
    Prepared,
    scan_json,
    to_micros,
    with_id,
)

if TYPE_CHECKING:
    from chatmem.aio import AsyncChatMemory

__all__ = ["PostgresMemory"]

T = TypeVar("T")

#: A read as a generator: it yields statements (SQL and parameters),
#: receives their rows and returns the read's result.
Plan = Generator[tuple[str, Sequence[Any]], list[tuple[Any, ...]], T]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Evict-oldest reads its victims in chunks of this many rows.
VICTIM_CHUNK = 512

# Options that chatmem reads from the URL's query string; the rest of the
# query belongs to libpq.
URL_OPTIONS: dict[str, type] = {
    "schema": str,
    "table_prefix": str,
    "timeout": float,
    "retries": int,
    "pool_size": int,
}

_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")

# The tables. Names in braces are filled in once per store with quoted,
# checked identifiers; user data always travels as parameters.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {messages} ("
    " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    ' ns text COLLATE "C" NOT NULL,'
    ' session text COLLATE "C" NOT NULL,'
    ' user_id text COLLATE "C",'
    " role smallint NOT NULL,"
    " created_at bigint NOT NULL,"
    " size integer NOT NULL,"
    " content bytea NOT NULL,"
    " metadata text NOT NULL)",
    "CREATE INDEX IF NOT EXISTS {by_session} ON {messages} (ns, session, seq)",
    "CREATE INDEX IF NOT EXISTS {by_user}"
    " ON {messages} (ns, user_id, created_at, seq) WHERE user_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS {by_time} ON {messages} (ns, created_at, seq)",
    "CREATE TABLE IF NOT EXISTS {version} ("
    " version integer PRIMARY KEY,"
    " applied_at timestamptz NOT NULL DEFAULT now())",
)

# Per-session counts for count(), the budget and evict-lru-session, and the
# store's totals. Statement triggers with transition tables keep them: one
# upsert per statement rather than per row, so a batch pays once. They are
# installed the first time a store with a capacity opens the tables; every
# later handle, bounded or not, keeps them right. last_used is a logical
# clock: a value of the messages' id sequence.
ACCOUNTING = (
    "CREATE TABLE IF NOT EXISTS {sessions} ("
    ' ns text COLLATE "C" NOT NULL,'
    ' session text COLLATE "C" NOT NULL,'
    " messages bigint NOT NULL,"
    " bytes bigint NOT NULL,"
    " last_used bigint NOT NULL,"
    " PRIMARY KEY (ns, session))",
    "CREATE INDEX IF NOT EXISTS {sessions_by_use} ON {sessions} (ns, last_used)",
    "CREATE TABLE IF NOT EXISTS {usage} ("
    " id boolean PRIMARY KEY DEFAULT true CHECK (id),"
    " messages bigint NOT NULL,"
    " bytes bigint NOT NULL)",
    "INSERT INTO {sessions} (ns, session, messages, bytes, last_used)"
    " SELECT ns, session, count(*), sum(size), max(seq) FROM {messages}"
    " GROUP BY ns, session",
    "INSERT INTO {usage} (messages, bytes)"
    " SELECT count(*), coalesce(sum(size), 0) FROM {messages}",
    # The lock makes every writer of these rows queue in one order; a
    # handle opened before accounting existed takes it here.
    "CREATE OR REPLACE FUNCTION {on_insert}() RETURNS trigger"
    " LANGUAGE plpgsql AS $body$"
    " BEGIN"
    " IF NOT EXISTS (SELECT 1 FROM new_rows) THEN RETURN NULL; END IF;"
    " PERFORM pg_advisory_xact_lock({lock_key});"
    " INSERT INTO {sessions} AS s (ns, session, messages, bytes, last_used)"
    " SELECT ns, session, count(*), sum(size), max(seq) FROM new_rows"
    " GROUP BY ns, session ORDER BY ns, session"
    " ON CONFLICT (ns, session) DO UPDATE SET"
    " messages = s.messages + excluded.messages,"
    " bytes = s.bytes + excluded.bytes,"
    " last_used = greatest(s.last_used, excluded.last_used);"
    " UPDATE {usage} SET messages = messages + d.n, bytes = bytes + d.b"
    " FROM (SELECT count(*) AS n, sum(size) AS b FROM new_rows) AS d;"
    " RETURN NULL;"
    " END $body$",
    "CREATE OR REPLACE FUNCTION {on_delete}() RETURNS trigger"
    " LANGUAGE plpgsql AS $body$"
    " BEGIN"
    " IF NOT EXISTS (SELECT 1 FROM old_rows) THEN RETURN NULL; END IF;"
    " PERFORM pg_advisory_xact_lock({lock_key});"
    " UPDATE {sessions} AS s"
    " SET messages = s.messages - d.n, bytes = s.bytes - d.b"
    " FROM (SELECT ns, session, count(*) AS n, sum(size) AS b"
    " FROM old_rows GROUP BY ns, session) AS d"
    " WHERE s.ns = d.ns AND s.session = d.session;"
    " DELETE FROM {sessions} AS s"
    " USING (SELECT DISTINCT ns, session FROM old_rows) AS d"
    " WHERE s.ns = d.ns AND s.session = d.session AND s.messages <= 0;"
    " UPDATE {usage} SET messages = messages - d.n, bytes = bytes - d.b"
    " FROM (SELECT count(*) AS n, sum(size) AS b FROM old_rows) AS d;"
    " RETURN NULL;"
    " END $body$",
    "CREATE TRIGGER {account_insert} AFTER INSERT ON {messages}"
    " REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION {on_insert}()",
    "CREATE TRIGGER {account_delete} AFTER DELETE ON {messages}"
    " REFERENCING OLD TABLE AS old_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION {on_delete}()",
)

COLUMNS = "seq, session, user_id, role, created_at, content, metadata"

INSERT_ONE = (
    "INSERT INTO {messages}"
    " (ns, session, user_id, role, created_at, size, content, metadata)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq"
)

# One statement for a whole batch: atomic without an explicit transaction,
# one round trip, and rows enter in the batch's order, so the ids drawn
# from the sequence rise with it. Pipelined executemany needs BEGIN and
# COMMIT around it and runs one statement per row; COPY cannot return the
# ids. The arrays travel in binary (%b): in text every bytea element
# would be hex-escaped and quoted, which costs more than the insert.
# benchmarks/postgres_bench.py measures the three.
INSERT_MANY = (
    "INSERT INTO {messages}"
    " (ns, session, user_id, role, created_at, size, content, metadata)"
    " SELECT %s, s, u, r, c, z, b, m FROM unnest("
    "%b::text[], %b::text[], %b::int2[], %b::int8[], %b::int4[],"
    " %b::bytea[], %b::text[]) WITH ORDINALITY AS t(s, u, r, c, z, b, m, o)"
    " ORDER BY o RETURNING seq"
)


@dataclass
class _Tx:
    """The connection a write runs on, and what it learned so far."""

    conn: psycopg.Connection[tuple[Any, ...]]
    open: bool = False
    used: int | None = None


class PostgresMemory(BaseChatMessageMemory):
    """Chat memory in PostgreSQL; see the module's reference card.

    >>> import chatmem
    >>> memory = chatmem.open("postgresql://chat@db.internal/app")  # doctest: +SKIP
    >>> memory.add("s1", "user", "hello").id  # doctest: +SKIP
    '1'
    """

    # A heap tuple's header and line pointer, the fixed columns, and the
    # entries in the primary key and three secondary indexes.
    message_overhead = 192

    def __init__(
        self,
        conninfo: str = "",
        *,
        schema: str | None = None,
        table_prefix: str = "chatmem_",
        timeout: float = 30.0,
        retries: int = 2,
        pool_size: int = 8,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if "\x00" in self.namespace:
            raise InvalidMessage("A PostgreSQL namespace cannot hold NUL.")
        self.schema = _check_name(schema, "schema", 63)
        self.table_prefix = _check_name(table_prefix, "table_prefix", 40, empty=True)
        self.timeout = _check_positive(timeout, "timeout")
        self.retries = _check_whole(retries, "retries")
        self.pool_size = _check_whole(pool_size, "pool_size", least=1)

        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            secret = _password_in(conninfo)
            raise InvalidMessage(
                f"Not a usable PostgreSQL URL: {_scrub(str(exc), secret)}"
            ) from None
        self._secret = str(params.get("password") or "")
        self._where = _where(params)
        self._conninfo = make_conninfo("", **params)
        statement_ms = int(self.timeout * 1000)
        options_param = str(params.get("options") or "")
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, math.ceil(self.timeout)),
            "options": f"{options_param} -c statement_timeout={statement_ms}".strip(),
        }
        if "application_name" not in params:
            self._kwargs["application_name"] = "chatmem"

        self._names = self._table_names()
        self._sql = _Statements(self._names)
        self._lock_key = self._names["lock_key"]
        self._local = threading.local()
        self._touched: set[str] = set()
        self._touched_lock = threading.Lock()
        self._accounting = False

        self._create_schema()
        self._pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = (
            ConnectionPool(**self._pool_options())
        )
        # Wait for the first connection here: a first operation that found
        # the pool still connecting would make it open a second one, and a
        # single-threaded caller would then alternate between two server
        # processes for the life of the store.
        try:
            self._pool.open(wait=True, timeout=self.timeout)
        except PoolTimeout:
            self._pool.close()
            raise self._no_connection() from None

    def _pool_options(self) -> dict[str, Any]:
        """Return the options of the handle's pools, blocking or asyncio."""
        return {
            "conninfo": self._conninfo,
            "kwargs": self._kwargs,
            "min_size": 1,
            "max_size": self.pool_size,
            "open": False,
            "timeout": self.timeout,
            # Give up a chain of failed reconnects within the timeout: the
            # next request then starts a fresh attempt at once instead of
            # waiting out a long backoff after the server came back.
            "reconnect_timeout": self.timeout,
            "num_workers": 1,
            "name": "chatmem",
        }

    def _no_connection(self) -> BackendUnavailable:
        return BackendUnavailable(
            f"PostgreSQL at {self._where} gave no connection within "
            f"{self.timeout:g} s; the server may be down, unreachable "
            "or out of connections."
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresMemory:
        """Open the database named by a ``postgresql://`` URL."""
        conninfo, from_query = split_url(url)
        return cls(conninfo, **{**from_query, **options})

    @classmethod
    async def open_async(
        cls, url: str, *, max_concurrency: int, **options: Any
    ) -> AsyncChatMemory:
        """Open the database for asyncio, its reads served by psycopg's
        asyncio pool; see :mod:`chatmem.backends._postgres_async`."""
        from chatmem.backends._postgres_async import open_postgres

        return await open_postgres(cls, url, max_concurrency=max_concurrency, **options)

    # -- names -----------------------------------------------------------

    def _table_names(self) -> dict[str, str]:
        prefix = self.table_prefix
        names = {}
        for name in (
            "messages",
            "by_session",
            "by_user",
            "by_time",
            "version",
            "sessions",
            "sessions_by_use",
            "usage",
            "on_insert",
            "on_delete",
            "account_insert",
            "account_delete",
        ):
            table = "schema_version" if name == "version" else name
            if name.startswith("by_"):
                table = f"messages_{name}"
            names[name] = f'"{prefix}{table}"'
            if self.schema is not None and not name.startswith("account_"):
                names[name] = f'"{self.schema}".{names[name]}'
        # Indexes live in their table's schema, so CREATE INDEX takes a bare
        # name; triggers too.
        for name in ("by_session", "by_user", "by_time", "sessions_by_use"):
            names[f"{name}_bare"] = names[name].rsplit(".", 1)[-1]
        identity = f"{self.schema or ''}.{prefix}"
        digest = hashlib.sha256(b"chatmem:" + identity.encode()).digest()
        names["lock_key"] = str(int.from_bytes(digest[:8], "big", signed=True))
        return names

    def _ddl(self, statement: str) -> str:
        names = dict(self._names)
        for name in ("by_session", "by_user", "by_time", "sessions_by_use"):
            names[name] = names[f"{name}_bare"]
        return statement.format(**names)

    # -- connections -----------------------------------------------------

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            return psycopg.Connection.connect(self._conninfo, **self._kwargs)
        except psycopg.Error as exc:
            raise BackendUnavailable(
                f"Cannot connect to PostgreSQL at {self._where}: {self._reason(exc)}"
            ) from None

    def _create_schema(self) -> None:
        conn = self._connect()
        try:
            with conn:
                self._create_schema_on(conn)
        except psycopg.Error as exc:
            raise BackendUnavailable(
                f"Cannot set up the chatmem tables at {self._where}: "
                f"{self._reason(exc)}"
            ) from None

    def _create_schema_on(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        names = self._names
        found = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
            (names["version"], names["sessions"]),
        ).fetchone()
        assert found is not None
        has_version, accounting = found
        if not has_version:
            with self._setup_lock(conn), conn.transaction():
                if self.schema is not None:
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                for statement in SCHEMA:
                    conn.execute(self._ddl(statement))
                conn.execute(
                    f"INSERT INTO {names['version']} (version) VALUES (%s)"
                    " ON CONFLICT DO NOTHING",
                    (SCHEMA_VERSION,),
                )
                log.debug("created the chatmem tables at %s", self._where)

        row = conn.execute(f"SELECT max(version) FROM {names['version']}").fetchone()
        version = row[0] if row else None
        if version is not None and version > SCHEMA_VERSION:
            raise BackendUnavailable(
                f"The chatmem tables at {self._where} were written by a newer "
                f"chatmem (schema {version}); upgrade chatmem to open them."
            )

        if not accounting and self._budget.bounded:
            with self._setup_lock(conn), conn.transaction():
                again = conn.execute(
                    "SELECT to_regclass(%s) IS NOT NULL", (names["sessions"],)
                ).fetchone()
                if again is None or not again[0]:
                    for statement in ACCOUNTING:
                        conn.execute(self._ddl(statement))
                    log.debug("started budget accounting at %s", self._where)
            accounting = True
        self._accounting = bool(accounting)

    @contextmanager
    def _setup_lock(self, conn: psycopg.Connection[tuple[Any, ...]]) -> Iterator[None]:
        """Hold the store's advisory lock across the transaction inside.

        Taken before the transaction begins, not inside it: a transaction
        that began before another process committed the DDL and then waited
        for the lock would still see the tables missing (the catalog cache
        is refreshed when a transaction starts), create them again and fail.
        """
        conn.execute("SELECT pg_advisory_lock(%s)", (int(self._lock_key),))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (int(self._lock_key),))

    def _acquire(self, deadline: float) -> psycopg.Connection[tuple[Any, ...]]:
        while True:
            self._check_open()
            remaining = deadline - time.monotonic()
            try:
                conn = self._pool.getconn(timeout=max(remaining, 0.001))
            except PoolTimeout:
                raise self._no_connection() from None
            except PoolClosed:
                raise StoreClosed(type(self).__name__) from None
            if _alive(conn):
                return conn
            # The server closed this idle connection (a restart, an idle
            # timeout): drop it; the pool opens a replacement.
            log.info("discarding a connection the server closed")
            conn.close()
            self._pool.putconn(conn)

    def _local_tx(self) -> _Tx | None:
        tx: _Tx | None = getattr(self._local, "tx", None)
        return tx

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # Results come in binary: bytea and bigint columns skip the text
        # round of formatting and parsing, about a tenth of a short read.
        tx = self._local_tx()
        if tx is not None:
            try:
                return tx.conn.execute(sql, params, binary=True).fetchall()
            except psycopg.Error as exc:
                raise self._wrap(exc) from exc

        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            conn = self._acquire(deadline)
            try:
                return conn.execute(sql, params, binary=True).fetchall()
            except psycopg.OperationalError as exc:
                if self._retry_read(conn.broken, attempt, deadline):
                    attempt += 1
                    continue
                raise self._wrap(exc) from exc
            except psycopg.Error as exc:
                raise self._wrap(exc) from exc
            finally:
                self._pool.putconn(conn)

    def _retry_read(self, broken: bool, attempt: int, deadline: float) -> bool:
        """Tell whether a read that failed on its connection goes again.

        Only when the connection broke (a fresh one may work), ``retries``
        are left and the deadline has not passed.
        """
        if broken and attempt < self.retries and time.monotonic() < deadline:
            log.info("retrying a read after a broken connection")
            return True
        return False

    def _drive(self, plan: Plan[T]) -> T:
        """Run a read plan's statements in turn; return what it returns.

        The asyncio face (``open_async``) runs the same plans on psycopg's
        asyncio pool, so both send the same SQL and decode rows alike.
        """
        read = self._read
        try:
            statement = next(plan)
            while True:
                statement = plan.send(read(*statement))
        except StopIteration as done:
            result: T = done.value
            return result

    @contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        current = self._local_tx()
        if current is not None:
            yield current
            return

        conn = self._acquire(time.monotonic() + self.timeout)
        tx = _Tx(conn)
        self._local.tx = tx
        try:
            if self._accounting:
                self._begin(tx)
            yield tx
            if tx.open:
                conn.execute("COMMIT")
                tx.open = False
        except psycopg.Error as exc:
            self._abort(tx)
            raise self._wrap(exc) from exc
        except BaseException:
            self._abort(tx)
            raise
        finally:
            self._local.tx = None
            self._pool.putconn(conn)

    def _begin(self, tx: _Tx) -> None:
        # One round trip: the lock, the pending marks of use and, for a
        # bounded store, the bytes used, read after the lock is held.
        conn = tx.conn
        with self._touched_lock:
            touched, self._touched = self._touched, set()
        with conn.pipeline():
            conn.execute("BEGIN")
            tx.open = True
            conn.execute(self._sql.lock, (int(self._lock_key),))
            if touched:
                conn.execute(self._sql.touch, (self.namespace, sorted(touched)))
            used = conn.execute(self._sql.used) if self._budget.bounded else None
        if used is not None:
            row = used.fetchone()
            tx.used = int(row[0]) if row else 0

    def _abort(self, tx: _Tx) -> None:
        if not tx.open or tx.conn.broken:
            return
        tx.open = False
        try:
            tx.conn.execute("ROLLBACK")
        except psycopg.Error:
            # The pool discards a connection it cannot reset.
            log.debug("rollback failed", exc_info=True)

    def _finish(
        self, tx: _Tx, sql: str, params: Sequence[Any]
    ) -> psycopg.Cursor[tuple[Any, ...]]:
        """Run a write's last statement, committing in the same round trip.

        Without an open transaction the statement commits by itself.
        """
        conn = tx.conn
        if not tx.open:
            return conn.execute(sql, params)
        cursor = conn.cursor()
        with conn.pipeline():
            cursor.execute(sql, params)
            conn.execute("COMMIT")
        tx.open = False
        return cursor

    def _wrap(self, exc: psycopg.Error) -> Exception:
        if isinstance(exc, psycopg.DataError):
            return InvalidMessage(
                f"PostgreSQL refused a value: {self._reason(exc)} "
                "Session, user and namespace ids cannot hold NUL characters."
            )
        return BackendUnavailable(
            f"PostgreSQL at {self._where} failed: {self._reason(exc)}"
        )

    def _reason(self, exc: BaseException) -> str:
        text = str(exc).strip().replace("\n", " ") or type(exc).__name__
        if not text.endswith("."):
            text += "."
        return _scrub(text, self._secret)

    def _close(self) -> None:
        self._pool.close(timeout=self.timeout)

    def _describe(self) -> str:
        where = f"{self._where} schema={self.schema!r}"
        return f"{where} prefix={self.table_prefix!r} namespace={self.namespace!r}"

    # -- writing ---------------------------------------------------------

    def _insert(self, prepared: Sequence[Prepared]) -> list[Message]:
        tx = self._local_tx()
        assert tx is not None  # the base class writes in _transaction
        ns = self.namespace
        overhead = self.message_overhead
        messages = [item.message for item in prepared]
        for message in messages:
            if "\x00" in message.session_id or "\x00" in (message.user_id or ""):
                raise InvalidMessage(
                    "Session and user ids cannot hold NUL characters in "
                    "PostgreSQL. Nothing was stored."
                )

        # The insert is the last step of a write (after purge and eviction),
        # so it carries the commit.
        if len(prepared) == 1:
            item, message = prepared[0], messages[0]
            params: list[Any] = [
                ns,
                message.session_id,
                message.user_id,
                ROLE_CODES[message.role],
                to_micros(message[5]),
                item.size + overhead,
                item.content_bytes,
                item.metadata_json,
            ]
            row = self._finish(tx, self._sql.insert_one, params).fetchone()
            assert row is not None
            return [with_id(message, str(row[0]))]

        params = [
            ns,
            [m.session_id for m in messages],
            [m.user_id for m in messages],
            [ROLE_CODES[m.role] for m in messages],
            [to_micros(m[5]) for m in messages],
            [item.size + overhead for item in prepared],
            [item.content_bytes for item in prepared],
            [item.metadata_json for item in prepared],
        ]
        rows = self._finish(tx, self._sql.insert_many, params).fetchall()
        # Ids are drawn in the batch's order; sorting keeps that pairing
        # even if the server returned the rows in another order.
        seqs = sorted(row[0] for row in rows)
        return [
            with_id(message, str(seq))
            for message, seq in zip(messages, seqs, strict=True)
        ]

    def _touch(self, session_id: str) -> None:
        if self._accounting and self.policy == "evict-lru-session":
            with self._touched_lock:
                self._touched.add(session_id)

    def _used_bytes(self) -> int:
        tx = self._local_tx()
        if tx is not None and tx.used is not None:
            return tx.used
        sql = self._sql.used if self._accounting else self._sql.used_scan
        return int(self._read(sql)[0][0])

    def _evict(self, nbytes: int) -> None:
        tx = self._local_tx()
        assert tx is not None
        tx.used = None
        conn = tx.conn
        freed = 0
        by_session = self.policy == "evict-lru-session"
        while freed < nbytes:
            if by_session:
                victims = conn.execute(
                    self._sql.lru_victims, (self.namespace,)
                ).fetchall()
                chosen = []
                for session, size in victims:
                    chosen.append(session)
                    freed += size
                    if freed >= nbytes:
                        break
                if chosen:
                    conn.execute(self._sql.delete_sessions, (self.namespace, chosen))
            else:
                victims = conn.execute(
                    self._sql.oldest_victims, (self.namespace, VICTIM_CHUNK)
                ).fetchall()
                seqs = []
                for seq, size in victims:
                    seqs.append(seq)
                    freed += size
                    if freed >= nbytes:
                        break
                if seqs:
                    conn.execute(self._sql.delete_seqs, (seqs,))
            if not victims:
                raise CapacityExceeded(
                    "The budget is full and this namespace holds too little "
                    "to evict; other namespaces' messages are never evicted. "
                    "Raise capacity_bytes or delete messages."
                )
        log.warning("evicted %d bytes from namespace %r", freed, self.namespace)

    def _purge(self, cutoff: int) -> None:
        tx = self._local_tx()
        assert tx is not None
        tx.used = None
        tx.conn.execute(self._sql.purge, (self.namespace, cutoff))

    def _delete(self, message_id: str) -> bool:
        seq = _seq(message_id)
        if seq is None:
            return False
        with self._transaction() as tx:
            cursor = self._finish(tx, self._sql.delete_one, (seq, self.namespace))
            return cursor.rowcount > 0

    def _delete_session(self, session_id: str) -> int:
        with self._transaction() as tx:
            cursor = self._finish(
                tx, self._sql.delete_session, (self.namespace, session_id)
            )
            return cursor.rowcount

    def _delete_user(self, user_id: str) -> int:
        with self._transaction() as tx:
            cursor = self._finish(tx, self._sql.delete_user, (self.namespace, user_id))
            return cursor.rowcount

    # -- reading ---------------------------------------------------------

    def _get(self, message_id: str) -> Message | None:
        return self._drive(self._get_plan(message_id))

    def _get_plan(self, message_id: str) -> Plan[Message | None]:
        seq = _seq(message_id)
        if seq is None:
            return None
        rows = yield self._sql.get, (seq, self.namespace)
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
        return self._drive(self._history_plan(session_id, before, after, count, newest))

    def _history_plan(
        self,
        session_id: str,
        before: str | None,
        after: str | None,
        count: int | None,
        newest: bool,
    ) -> Plan[list[Message]]:
        if (
            newest
            and count is not None
            and before is None
            and after is None
            and self.retention is None
        ):
            # history(last=k), the read behind every prompt: one fixed
            # statement rather than one assembled per call.
            rows = yield self._sql.last, (self.namespace, session_id, count)
            rows.reverse()
            self._touch(session_id)
            return _to_messages(rows)

        where = ["ns = %s", "session = %s"]
        params: list[Any] = [self.namespace, session_id]
        for cursor, op in ((before, "<"), (after, ">")):
            if cursor is not None:
                where.append(f"seq {op} %s")
                params.append((yield from self._cursor_seq(session_id, cursor)))
        cutoff = self._cutoff()
        if cutoff is not None:
            where.append("created_at >= %s")
            params.append(cutoff)

        order = "DESC" if newest else "ASC"
        sql = (
            f"SELECT {COLUMNS} FROM {self._names['messages']}"
            f" WHERE {' AND '.join(where)} ORDER BY seq {order}"
        )
        if count is not None:
            sql += " LIMIT %s"
            params.append(count)
        rows = yield sql, params
        if newest:
            rows.reverse()
        self._touch(session_id)
        return _to_messages(rows)

    def _cursor_seq(self, session_id: str, cursor: str) -> Plan[int]:
        seq = _seq(cursor)
        if seq is not None:
            rows = yield self._sql.cursor, (seq, self.namespace)
            if rows and rows[0][0] == session_id:
                return seq
        raise MessageNotFound(cursor)

    def _session_state(
        self, session_id: str, first: str, last: str, older: bool
    ) -> tuple[int, bool, bool]:
        low, high = _seq(first), _seq(last)
        if low is None or high is None:
            return 0, True, True
        # One statement, so one snapshot; the count walks only the run.
        where = "ns = %s AND session = %s"
        params: list[Any] = [self.namespace, session_id]
        cutoff = self._cutoff()
        if cutoff is not None:
            where += " AND created_at >= %s"
            params.append(cutoff)
        table = self._names["messages"]
        sql = f"SELECT count(*), max(seq) FROM {table} WHERE {where} AND seq >= %s"
        if older:
            sql = (
                f"SELECT count(*), max(seq), EXISTS (SELECT 1 FROM {table}"
                f" WHERE {where} AND seq < %s) FROM {table}"
                f" WHERE {where} AND seq >= %s"
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
        return self._drive(
            self._query_plan(session_id, user_id, start, end, role, limit)
        )

    def _query_plan(
        self,
        session_id: str | None,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        role: str | None,
        limit: int | None,
    ) -> Plan[list[Message]]:
        where = ["ns = %s"]
        params: list[Any] = [self.namespace]
        if session_id is not None:
            where.append("session = %s")
            params.append(session_id)
        if user_id is not None:
            where.append("user_id = %s")
            params.append(user_id)
        if role is not None:
            where.append("role = %s")
            params.append(ROLE_CODES[role])
        if start is not None:
            where.append("created_at >= %s")
            params.append(to_micros(start))
        if end is not None:
            where.append("created_at < %s")
            params.append(to_micros(end))

        sql = (
            f"SELECT {COLUMNS} FROM {self._names['messages']}"
            f" WHERE {' AND '.join(where)} ORDER BY created_at, seq"
        )
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        return _to_messages((yield sql, params))

    def _sessions(self, user_id: str | None) -> list[str]:
        return self._drive(self._sessions_plan(user_id))

    def _sessions_plan(self, user_id: str | None) -> Plan[list[str]]:
        if self._accounting and user_id is None and self.retention is None:
            rows = yield self._sql.sessions, (self.namespace,)
        else:
            where, params = self._filters(None, user_id)
            rows = yield (
                f"SELECT DISTINCT session FROM {self._names['messages']}"
                f" WHERE {where} ORDER BY session",
                params,
            )
        return [row[0] for row in rows]

    def _count(self, session_id: str | None, user_id: str | None) -> int:
        return self._drive(self._count_plan(session_id, user_id))

    def _count_plan(self, session_id: str | None, user_id: str | None) -> Plan[int]:
        if self._accounting and user_id is None and self.retention is None:
            if session_id is None:
                rows = yield self._sql.count_ns, (self.namespace,)
            else:
                rows = yield self._sql.count_session, (self.namespace, session_id)
            return int(rows[0][0])
        where, params = self._filters(session_id, user_id)
        rows = yield (
            f"SELECT count(*) FROM {self._names['messages']} WHERE {where}",
            params,
        )
        return int(rows[0][0])

    def _filters(
        self, session_id: str | None, user_id: str | None
    ) -> tuple[str, list[Any]]:
        where = ["ns = %s"]
        params: list[Any] = [self.namespace]
        if session_id is not None:
            where.append("session = %s")
            params.append(session_id)
        if user_id is not None:
            where.append("user_id = %s")
            params.append(user_id)
        cutoff = self._cutoff()
        if cutoff is not None:
            where.append("created_at >= %s")
            params.append(cutoff)
        return " AND ".join(where), params

    def _usage(self) -> tuple[int, int, float]:
        sql = self._sql.usage if self._accounting else self._sql.usage_scan
        table = self._names["messages"]
        used, count, live, dead = self._read(sql, (table, table))[0]
        live, dead = int(live or 0), int(dead or 0)
        # The server's statistics lag a little behind; the share of dead
        # row versions is what vacuum has yet to reclaim.
        fragmentation = dead / (live + dead) if live + dead else 0.0
        return int(used), int(count), fragmentation


class _Statements:
    """The SQL of one store, with its table names filled in once."""

    def __init__(self, names: dict[str, str]) -> None:
        messages = names["messages"]
        sessions = names["sessions"]
        usage = names["usage"]
        self.insert_one = INSERT_ONE.format(messages=messages)
        self.insert_many = INSERT_MANY.format(messages=messages)
        self.lock = "SELECT pg_advisory_xact_lock(%s)"
        self.touch = (
            f"UPDATE {sessions} SET last_used ="
            f" nextval(pg_get_serial_sequence('{messages}', 'seq'))"
            " WHERE ns = %s AND session = ANY(%s)"
        )
        self.used = f"SELECT bytes FROM {usage}"
        self.used_scan = f"SELECT coalesce(sum(size), 0) FROM {messages}"
        self.lru_victims = (
            f"SELECT session, bytes FROM {sessions} WHERE ns = %s"
            " ORDER BY last_used, session LIMIT 64"
        )
        self.oldest_victims = (
            f"SELECT seq, size FROM {messages} WHERE ns = %s ORDER BY seq LIMIT %s"
        )
        self.delete_sessions = (
            f"DELETE FROM {messages} WHERE ns = %s AND session = ANY(%s)"
        )
        self.delete_seqs = f"DELETE FROM {messages} WHERE seq = ANY(%s)"
        self.purge = f"DELETE FROM {messages} WHERE ns = %s AND created_at < %s"
        self.delete_one = f"DELETE FROM {messages} WHERE seq = %s AND ns = %s"
        self.delete_session = f"DELETE FROM {messages} WHERE ns = %s AND session = %s"
        self.delete_user = f"DELETE FROM {messages} WHERE ns = %s AND user_id = %s"
        self.get = f"SELECT {COLUMNS} FROM {messages} WHERE seq = %s AND ns = %s"
        self.last = (
            f"SELECT {COLUMNS} FROM {messages} WHERE ns = %s AND session = %s"
            " ORDER BY seq DESC LIMIT %s"
        )
        self.cursor = f"SELECT session FROM {messages} WHERE seq = %s AND ns = %s"
        self.sessions = f"SELECT session FROM {sessions} WHERE ns = %s ORDER BY session"
        self.count_ns = (
            f"SELECT coalesce(sum(messages), 0) FROM {sessions} WHERE ns = %s"
        )
        self.count_session = (
            f"SELECT coalesce(sum(messages), 0) FROM {sessions}"
            " WHERE ns = %s AND session = %s"
        )
        stat = (
            "(SELECT n_live_tup FROM pg_stat_user_tables"
            " WHERE relid = to_regclass(%s)) AS live,"
            " (SELECT n_dead_tup FROM pg_stat_user_tables"
            " WHERE relid = to_regclass(%s)) AS dead"
        )
        self.usage = f"SELECT bytes, messages, {stat} FROM {usage}"
        self.usage_scan = (
            f"SELECT coalesce(sum(size), 0), count(*), {stat} FROM {messages}"
        )


def split_url(url: str) -> tuple[str, dict[str, Any]]:
    """Return a libpq URL and the chatmem options taken from its query.

    ``postgres://`` is accepted as a synonym of ``postgresql://``.
    Raises :class:`InvalidMessage` for another scheme or an option value
    of the wrong type.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        # The message names the part at fault, never the password.
        raise InvalidMessage(f"Not a usable PostgreSQL URL: {exc}.") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise InvalidMessage(f"Not a postgresql:// URL: {parts.scheme}://...")
    options: dict[str, Any] = {}
    rest = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = URL_OPTIONS.get(key)
        if kind is None:
            rest.append((key, value))
            continue
        try:
            options[key] = kind(value)
        except ValueError:
            raise InvalidMessage(
                f"The URL option {key}={value!r} must be a {kind.__name__}."
            ) from None
    conninfo = urlunsplit(
        ("postgresql", parts.netloc, parts.path, urlencode(rest), parts.fragment)
    )
    return conninfo, options


def _check_name(value: str | None, what: str, longest: int, empty: bool = False) -> Any:
    if value is None and what == "schema":
        return None
    if not isinstance(value, str) or (value == "" and not empty):
        raise InvalidMessage(f"{what} must be a non-empty string, not {value!r}.")
    if value and (not _NAME.match(value) or len(value) > longest):
        raise InvalidMessage(
            f"{what} {value!r} must be at most {longest} characters of a-z, "
            "0-9 and _, starting with a letter or _."
        )
    return value


def _check_positive(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidMessage(f"{what} must be a number of seconds, not {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise InvalidMessage(f"{what} must be a positive number of seconds.")
    return float(value)


def _check_whole(value: object, what: str, least: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidMessage(
            f"{what} must be a whole number >= {least}, not {value!r}."
        )
    return value


def _password_in(conninfo: str) -> str:
    try:
        return urlsplit(conninfo).password or ""
    except ValueError:
        return ""


def _scrub(text: str, secret: str) -> str:
    if secret:
        text = text.replace(secret, "***")
    return text


def _where(params: dict[str, Any]) -> str:
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or 5432
    dbname = params.get("dbname") or params.get("user") or ""
    user = params.get("user")
    where = f"{host}:{port}/{dbname}"
    return f"{user}@{where}" if user else where


def _alive(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Tell whether an idle pooled connection is still open, without a
    round trip.

    An idle connection has nothing to read unless the server closed it or
    sent a shutdown notice, so a readable socket marks it dead. A query
    (``SELECT 1``) would tell the same at the cost of a round trip per
    operation.
    """
    if conn.closed or conn.broken:
        return False
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError, psycopg.Error):
        return False


def _seq(message_id: str) -> int | None:
    # Only the id's own spelling finds it: "01" or "٣" name no message.
    if not message_id.isdigit() or not message_id.isascii() or message_id[0] == "0":
        return None
    value = int(message_id)
    return value if value < 1 << 63 else None


def _to_messages(rows: list[tuple[Any, ...]]) -> list[Message]:
    # Inlined rather than a call per row: history(last=20) spends most of
    # its Python time here.
    make, roles, scan = tuple.__new__, ROLES, scan_json
    return [
        make(
            Message,
            (
                str(seq),
                session,
                roles[role],
                content.decode(),
                user,
                created,
                scan(meta, 0)[0] if meta else {},
            ),
        )
        for seq, session, user, role, created, content, meta in rows
    ]
