"""LogMemory: chat memory on an append-only log, served from a local index.

Reference card
--------------
What       The shared machinery of the log backends (Kafka, RabbitMQ
           Streams): the log is the source of truth, and every open store
           keeps a local SQLite index of it that answers ``get``,
           ``history``, ``query``, ``sessions``, ``count`` and ``stats``
           without a round trip. A backend is a thin :class:`LogDriver`.
Options    ``index_dir``: None (default) keeps the index in memory and
           rebuilds it from the log on open; a folder keeps it in a file
           there with per-partition checkpoints, so an open replays only
           what was written since. ``timeout``: seconds a write, a
           ``sync()`` or an open may wait for the log (default 10).
Records    One JSON record per message (the form of
           :func:`chatmem.message.encode` plus the acceptance stamp ``a``,
           the size ``z`` and, inside a batch, the batch id ``b``), keyed
           by the message id. Control records carry ``k``: ``d`` deletes
           ids, ``s`` a session, ``u`` a user in one partition, ``c``
           commits a batch.
Ids        Opaque strings made by the writer: a random 64-bit writer id
           drawn at every open, and a counter. Unique and stable without
           asking the log, which matters because RabbitMQ confirms carry no
           offset.
Ordering   A session lives in one partition, chosen from a CRC-32 of
           (namespace, session) modulo the partition count: its history is
           the log's order, whoever wrote it. Query results are ordered by
           ``created_at``, then by acceptance stamp (the writer's clock in
           microseconds, kept strictly increasing per writer), so a rebuilt
           index orders ties exactly as the writer's did.
Writes     ``add`` returns once the log acknowledged the record and the
           index holds it (read-your-writes in one store). A driver that
           learns the offset at acknowledgement has the record applied at
           once; one that does not (RabbitMQ) has the caller wait until the
           tail applied it. The tail applies a record that reads back byte
           for byte as its writer published it from the writer's entry,
           without decoding it again.
Batches    ``add_messages`` with several messages writes them with a batch
           id, then a commit record. Indexes show a batch's messages only
           once they saw its commit record, so a batch the log took only
           part of (a broker failure mid-batch) stays invisible everywhere:
           all or nothing, as read through chatmem. Its records stay in the
           log until retention drops them. A batch whose commit record an
           index meets in the same read (or applies with its own write)
           goes straight into its table, in the same transaction as the
           commit; one split across reads waits aside until its commit.
Other      A background thread tails the log and applies other stores'
instances  writes; ``sync(timeout=None)`` waits until the index caught up
           with the log's end as of the call. Without ``sync`` another
           store's write shows after the tail's lag (tens of ms on a
           loopback broker).
Deletion   ``delete``, ``delete_session`` and ``delete_user`` write
           tombstones that every index applies; the local index drops the
           entries before the call returns. A session or user tombstone
           removes what came before it in its partition, never a message
           written after it. When bytes leave the broker is the driver's
           matter; see its reference card.
Capacity   ``capacity_bytes`` is accounted in the index (every namespace
           of the log, as ``stats()`` reports them) with the core's
           policies; evictions write tombstones. Each store accounts what
           its index holds, so several stores writing at once can overshoot
           the budget by what they write within the tail's lag.
Retention  Reads filter by ``created_at``; expired rows are dropped from
           the index and never re-applied. The driver maps retention to the
           log's own (Kafka ``retention.ms``).
Lost logs  If the log's identity changes (the topic was deleted and made
           again, or a broker without persistent storage restarted), the
           index keeps what it holds, logs a CRITICAL line, and continues
           at a new epoch: older records sort before the new log's. Stores
           opened later rebuild from the new log only.

The driver interface
--------------------
A driver subclasses :class:`LogDriver`. The base calls, in order:
``open()`` once (connect, create the log if missing, return the partition
count), ``log_id()`` whenever it checks the log's identity, ``reader()`` for
the replay and tail (one reader at a time, used by one thread), and
``publish()``/``end_offsets()`` from caller threads. Every method raises
:class:`~chatmem.errors.BackendUnavailable` (wrapping the client's error)
within the driver's timeout when the log cannot be used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from chatmem.backends.sqlite import ACCOUNTING, TOUCH, _index, _to_messages
from chatmem.base import BaseChatMessageMemory
from chatmem.errors import (
    BackendUnavailable,
    CapacityExceeded,
    InvalidMessage,
    MessageNotFound,
)
from chatmem.message import (
    ROLE_CODES,
    Message,
    Prepared,
    encode,
    to_micros,
    with_id,
)

__all__ = [
    "LogDriver",
    "LogMemory",
    "LogReader",
    "LogRecord",
    "Outgoing",
    "partition_of",
]

log = logging.getLogger(__name__)

INDEX_VERSION = 1

# A position is (epoch << 40) + offset: one integer that sorts a
# partition's records, and sorts a new log (after the old one was lost)
# after everything of the old one. 2**40 offsets is a trillion records
# per partition and epoch.
EPOCH_SHIFT = 40

INDEX_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " id TEXT NOT NULL UNIQUE,"
    " ns TEXT NOT NULL,"
    " session TEXT NOT NULL,"
    " user_id TEXT,"
    " role INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " size INTEGER NOT NULL,"
    " content TEXT NOT NULL,"
    " metadata TEXT NOT NULL,"
    " part INTEGER NOT NULL,"
    " pos INTEGER NOT NULL,"
    " accepted INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS messages_by_session ON messages (ns, session, pos)",
    "CREATE INDEX IF NOT EXISTS messages_by_user"
    " ON messages (ns, user_id, created_at, accepted) WHERE user_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS messages_by_time"
    " ON messages (ns, created_at, accepted)",
    # Messages of a batch whose commit record was not seen yet.
    "CREATE TABLE IF NOT EXISTS pending ("
    " id TEXT PRIMARY KEY,"
    " batch TEXT NOT NULL,"
    " ns TEXT NOT NULL,"
    " session TEXT NOT NULL,"
    " user_id TEXT,"
    " role INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " size INTEGER NOT NULL,"
    " content TEXT NOT NULL,"
    " metadata TEXT NOT NULL,"
    " part INTEGER NOT NULL,"
    " pos INTEGER NOT NULL,"
    " accepted INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS pending_by_batch ON pending (batch)",
    # Batches committed while some of their messages are still ahead of
    # the tail in a partition: kept until the tail passes ``last``.
    "CREATE TABLE IF NOT EXISTS committed ("
    " batch TEXT NOT NULL,"
    " part INTEGER NOT NULL,"
    " last INTEGER NOT NULL,"
    " PRIMARY KEY (batch, part)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS checkpoints ("
    " part INTEGER PRIMARY KEY, next INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta ("
    " key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)

# Evict-oldest walks the namespace in acceptance order; only stores with
# a budget pay for this index.
ACCEPTANCE_INDEX = (
    "CREATE INDEX IF NOT EXISTS messages_by_acceptance ON messages (ns, accepted)"
)

ROW_COLUMNS = (
    "id, ns, session, user_id, role, created_at, size, content, metadata,"
    " part, pos, accepted"
)
INSERT_ROW = (
    f"INSERT OR IGNORE INTO messages ({ROW_COLUMNS}) VALUES ({', '.join('?' * 12)})"
)
INSERT_PENDING = (
    f"INSERT OR IGNORE INTO pending (batch, {ROW_COLUMNS})"
    f" VALUES ({', '.join('?' * 13)})"
)

# What reads select, in the order sqlite.py's row decoder expects.
COLUMNS = "id, session, user_id, role, created_at, content, metadata"

# Evictions and tombstones handle victims in chunks of this many rows.
VICTIM_CHUNK = 512

# The tail applies at most this many records per index transaction, so a
# reader never waits long behind a replay.
TAIL_BATCH = 2000

# How long one tail read waits for records; also bounds how long close()
# waits for the tail thread.
TAIL_POLL_SECONDS = 0.05


# -- the driver interface -------------------------------------------------


class Outgoing(NamedTuple):
    """A record to publish: its partition, key and value.

    ``key`` is the record's id (a message id, or a control record's own
    id). ``value`` is None only for an erasure record keyed by a message
    id, and only when the driver's ``erases_by_key`` is true.
    """

    partition: int
    key: str
    value: bytes | None


class LogRecord(NamedTuple):
    """A record read back: where it sits, its key and its value."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class LogReader(ABC):
    """Reads a log's partitions from given offsets, in offset order."""

    @abstractmethod
    def read(self, timeout: float) -> list[LogRecord]:
        """Return the next records, waiting at most ``timeout`` seconds.

        Records of one partition come in offset order; partitions may
        interleave. An empty list means nothing arrived in time.
        """

    @abstractmethod
    def positions(self) -> dict[int, int]:
        """Return, per partition, the offset the next record will have.

        Advances past every record returned and past gaps the reader
        learned of (an end-of-partition event at a higher offset).
        """

    def troubled(self) -> bool:
        """Return True once after the reader met a broker error.

        The base then checks the log's identity, which catches a log that
        was lost and made again while the reader was cut off.
        """
        return False

    def close(self) -> None:  # noqa: B027 - a reader may hold nothing
        """Release the reader's connection."""


class LogDriver(ABC):
    """The thin part of a log backend: one log system's client calls.

    Class attributes state what the log can do:

    ``positions_at_ack``
        True when :meth:`publish` returns each record's offset (Kafka's
        delivery report). When False it returns None for each and the
        base waits for the tail to apply the records; such a log must have
        one partition (RabbitMQ Streams).
    ``erases_by_key``
        True when a record with a null value erases the earlier record
        with the same key (Kafka compaction). The base then deletes ids
        with null-valued records keyed by message id, which also lets the
        broker drop the bytes; otherwise with one control record listing
        the ids.
    ``max_record_bytes``
        The largest record the log accepts; a longer message is refused
        with :class:`InvalidMessage` before anything is published.
    """

    positions_at_ack: ClassVar[bool] = True
    erases_by_key: ClassVar[bool] = False
    max_record_bytes: ClassVar[int] = 1_000_000

    @abstractmethod
    def open(self) -> int:
        """Connect, create the log if missing, and return its partitions."""

    @abstractmethod
    def log_id(self, refresh: bool = False) -> str:
        """Return the log's identity; it changes when the log is made anew.

        Without ``refresh`` return what the driver last learned (it may
        learn it while publishing); with ``refresh`` ask the broker.
        """

    @abstractmethod
    def publish(self, records: Sequence[Outgoing]) -> list[int | None]:
        """Publish records and return once the log acknowledged all.

        Returns each record's offset, or None where the log does not say.
        Raises :class:`BackendUnavailable` when any record was not
        acknowledged within the timeout.
        """

    @abstractmethod
    def end_offsets(self) -> dict[int, int]:
        """Return, per partition, an offset past every record acknowledged
        before the call."""

    @abstractmethod
    def reader(self, start: dict[int, int]) -> LogReader:
        """Return a reader positioned at ``start`` (partition -> offset)."""

    def index_name(self) -> str:
        """Return a file-name-safe name for this log's index file."""
        return "log"

    def close(self) -> None:  # noqa: B027 - a driver may hold nothing
        """Release the driver's connections."""

    def describe(self) -> str:
        """Return where the log is, for repr; never with credentials."""
        return ""


def partition_of(namespace: str, session_id: str, partitions: int) -> int:
    """Return the partition of a session: CRC-32 of (namespace, session).

    Computed by chatmem, never by a client's partitioner, so every client
    and every chatmem version puts a session in the same partition.
    """
    key = f"{namespace}\x00{session_id}".encode()
    return zlib.crc32(key) % partitions


# -- entries: decoded records, ready for the index ---------------------------

# ("m", fields, accepted, batch, key): a message; fields are the row's
#     columns from id to metadata.
# ("d", ids, key): delete these ids.
# ("s", namespace, session, key) and ("u", namespace, user, key): delete
#     what came before, in this partition.
# ("c", batch, {partition: last offset}, key): commit a batch.
Entry = tuple[Any, ...]


class LogMemory(BaseChatMessageMemory):
    """Chat memory on a log; see the module's reference card.

    Subclasses build a :class:`LogDriver` and pass it here with the
    options of :func:`chatmem.open`.
    """

    message_overhead = 160

    def __init__(
        self,
        driver: LogDriver,
        *,
        index_dir: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        timeout = _check_timeout(timeout)
        self.timeout = timeout
        self.index_dir = None if index_dir is None else str(index_dir)
        self._driver = driver

        # Ids: a writer id drawn per open, and a counter.
        self._writer = secrets.token_hex(8)
        self._counter = 0
        self._last_accepted = 0
        self._id_lock = threading.Lock()

        # One SQLite connection, used under one lock by callers and the
        # tail; a condition on the lock wakes sync() and waiting writers.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._write_lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._lock_file: int | None = None
        self._accounting = False
        self._touched: set[str] = set()

        # Tail state.
        self._partitions = 0
        self._epoch = 0
        self._log_id = ""
        self._checkpoints: dict[int, int] = {}
        self._reader: LogReader | None = None
        self._reader_stale = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._tail_failure: BaseException | None = None
        self._tail_trouble: BackendUnavailable | None = None

        # Tombstones applied ahead of the tail (own deletes, known
        # positions), kept until the tail passes them so that the tail
        # does not re-add what they removed.
        self._erased: dict[str, tuple[int, int]] = {}
        self._ahead_sessions: dict[tuple[str, str], tuple[int, int]] = {}
        self._ahead_users: dict[tuple[str, str, int], int] = {}

        # (partition, position) of own records applied at acknowledgement:
        # the tail skips them, where decoding and applying them again
        # doubled the index work of every write.
        self._own: set[tuple[int, int]] = set()

        # Keys a writer waits for the tail to apply (drivers without
        # positions at acknowledgement).
        self._awaited: set[str] = set()
        self._arrived: set[str] = set()
        # The value and entry of each awaited record: the tail applies a
        # record that reads back byte for byte as published from its
        # entry, not by decoding its JSON again.
        self._expected: dict[str, tuple[bytes | None, Entry]] = {}

        #: Records applied by the replay at open (the tail after that).
        self.replayed_records = 0
        #: Records the tail applied since open, the replay included.
        self.applied_records = 0
        #: Called with each run of (partition, position, entry) applied to
        #: the index and whether it holds this store's own records applied
        #: ahead of the tail; under the index lock, before it commits. A
        #: hot tier drops what they change.
        self.on_applied: list[
            Callable[[Sequence[tuple[int, int, Entry]], bool], None]
        ] = []

        try:
            self._open()
        except BaseException:
            self._close()
            raise

    # -- opening -----------------------------------------------------------

    def _open(self) -> None:
        partitions = self._driver.open()
        if partitions < 1:
            raise BackendUnavailable("The log reports no partitions.")
        if not self._driver.positions_at_ack and partitions != 1:
            raise BackendUnavailable(
                "A log whose acknowledgements carry no offset must have one partition."
            )
        self._partitions = partitions
        self._conn = self._connect_index()
        self._load_index(partitions)
        self._check_identity(self._driver.log_id(), opening=True)
        self._replay()
        self._thread = threading.Thread(
            target=self._tail, name="chatmem-log-tail", daemon=True
        )
        self._thread.start()

    def _connect_index(self) -> sqlite3.Connection:
        if self.index_dir is None:
            path = ":memory:"
        else:
            folder = Path(self.index_dir)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendUnavailable(
                    f"Cannot create the index folder {self.index_dir!r}: {exc}."
                ) from exc
            digest = hashlib.blake2b(
                f"{self._driver.index_name()}\x00{self.namespace}".encode(),
                digest_size=6,
            ).hexdigest()
            path = str(folder / f"{self._driver.index_name()}-{digest}.sqlite")
            self._lock_file = _lock(path)
        try:
            conn = sqlite3.connect(
                path,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
            if path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                # The index is a cache of the log: a lost transaction only
                # means a longer replay, because checkpoints commit with
                # the records they cover.
                conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"Cannot open the index {path!r}: {exc}.") from exc
        return conn

    def _load_index(self, partitions: int) -> None:
        conn = self._index()
        with self._index_transaction():
            for statement in INDEX_SCHEMA:
                conn.execute(statement)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            version = int(meta.get("version", INDEX_VERSION))
            if version > INDEX_VERSION:
                raise BackendUnavailable(
                    "The index was written by a newer chatmem; upgrade "
                    "chatmem or remove the index file to rebuild it."
                )
            stored = int(meta.get("partitions", partitions))
            if stored != partitions:
                # Sessions would map to other partitions: start over.
                log.warning(
                    "the log has %d partitions, the index was built for %d; "
                    "rebuilding the index",
                    partitions,
                    stored,
                )
                for table in ("messages", "pending", "committed", "checkpoints"):
                    conn.execute(f"DELETE FROM {table}")
                conn.execute("DELETE FROM meta WHERE key IN ('epoch', 'log_id')")
                meta = {}
            self._epoch = int(meta.get("epoch", 0))
            self._log_id = meta.get("log_id", "")
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("version", str(INDEX_VERSION)), ("partitions", str(partitions))],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO checkpoints VALUES (?, 0)",
                [(p,) for p in range(partitions)],
            )
            self._checkpoints = dict(
                conn.execute("SELECT part, next FROM checkpoints").fetchall()
            )
            accounting = "accounting" in meta
            if not accounting and self._budget.bounded:
                for statement in ACCOUNTING:
                    conn.execute(statement)
                conn.execute(ACCEPTANCE_INDEX)
                accounting = True
            self._accounting = accounting

    def _replay(self) -> None:
        ends = self._driver.end_offsets()
        self._reader = self._driver.reader(dict(self._checkpoints))
        # The deadline moves with progress: a long log may take longer
        # than the timeout to replay, a stuck one may not.
        deadline = time.monotonic() + self.timeout
        while not self._caught_up(ends):
            if self._tail_once():
                deadline = time.monotonic() + self.timeout
            elif time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"The index did not catch up with the log within "
                    f"{self.timeout:g} s of no progress."
                )
        self.replayed_records = self.applied_records
        log.debug("replayed %d records", self.replayed_records)

    # -- the index connection ------------------------------------------------

    def _index(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            self._check_open()
            raise BackendUnavailable("The index is not open.")
        return conn

    @contextmanager
    def _index_transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._index()
            conn.execute("BEGIN IMMEDIATE")
            try:
                if self._touched:
                    touched, self._touched = self._touched, set()
                    conn.executemany(TOUCH, [(self.namespace, s) for s in touched])
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            self._check_open()
            return self._index().execute(sql, params).fetchall()

    # -- ids and records -----------------------------------------------------

    def _new_ids(self, count: int) -> tuple[list[str], int]:
        """Return ``count`` fresh ids and the first of their stamps."""
        with self._id_lock:
            start = self._counter + 1
            self._counter += count
            now = time.time_ns() // 1000
            first = max(now, self._last_accepted + 1)
            self._last_accepted = first + count - 1
        writer = self._writer
        return [f"{writer}-{n:x}" for n in range(start, start + count)], first

    def _partition(self, session_id: str) -> int:
        return partition_of(self.namespace, session_id, self._partitions)

    def _control(self, partition: int, key: str, body: dict[str, Any]) -> Outgoing:
        body = {"k": body.pop("k"), "i": key, "n": self.namespace, **body}
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        return Outgoing(partition, key, data.encode())

    # -- writing -------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # Writes of one store run one at a time: the budget's decision
        # and the write it allows must not interleave with another's.
        with self._write_lock:
            self._check_open()
            if self._touched:
                # Reads mark sessions used; the budget must see the marks
                # before it picks a least recently used victim.
                with self._index_transaction():
                    pass
            yield

    def _insert(self, prepared: Sequence[Prepared]) -> list[Message]:
        ns = self.namespace
        overhead = self.message_overhead
        limit = self._driver.max_record_bytes
        ids, accepted = self._new_ids(len(prepared))
        batch = ids[0] if len(prepared) > 1 else None
        suffix = b"" if batch is None else f',"b":"{batch}"'.encode()

        outgoing: list[Outgoing] = []
        entries: list[Entry | None] = []
        stored: list[Message] = []
        # A batch is mostly one session: hash each session once.
        partitions: dict[str, int] = {}
        for index, item in enumerate(prepared):
            message = with_id(item.message, ids[index])
            stamp = accepted + index
            # encode() is the one record form; the stamp, size and batch
            # are appended to its object rather than re-serialising it.
            value = encode(message, ns)[:-1] + b',"a":%d,"z":%d%s}' % (
                stamp,
                item.size,
                suffix,
            )
            if len(value) > limit:
                raise InvalidMessage(
                    f"Message {index} encodes to {len(value)} bytes; the log "
                    f"takes records of at most {limit} bytes. Nothing was "
                    "stored."
                )
            assert message.created_at is not None
            fields = (
                ids[index],
                ns,
                message.session_id,
                message.user_id,
                ROLE_CODES[message.role],
                to_micros(message.created_at),
                item.size + overhead,
                message.content,
                item.metadata_json,
            )
            partition = partitions.get(message.session_id)
            if partition is None:
                partition = partitions[message.session_id] = self._partition(
                    message.session_id
                )
            outgoing.append(Outgoing(partition, ids[index], value))
            # Own batch messages are applied as committed: the commit
            # record is acknowledged before they are applied. Those the
            # tail passed first wait in pending for the commit entry.
            entries.append(("m", fields, stamp, None, ids[index]))
            stored.append(message)

        if batch is None:
            self._commit(outgoing, entries)
            return stored

        # Read back by the tail, the messages wait for their commit.
        offsets = self._publish(
            outgoing,
            [None if e is None else (*e[:3], batch, e[4]) for e in entries],
        )
        last: dict[int, int] = {}
        for record, offset in zip(outgoing, offsets, strict=True):
            if offset is not None:
                last[record.partition] = max(last.get(record.partition, 0), offset)
        marker = self._control(
            outgoing[0].partition,
            self._new_ids(1)[0][0],
            {"k": "c", "b": batch, "e": {str(p): o for p, o in last.items()}},
        )
        # The commit is applied ahead too: the tail may have read some of
        # the messages before their acknowledgement was applied, and
        # those wait in pending, which the ahead entries skip, until a
        # commit entry moves them; the call must not return before that.
        self._commit(
            [marker],
            [self._entry_of(marker)],
            earlier=(outgoing, entries, offsets),
        )
        return stored

    def _publish(
        self,
        outgoing: list[Outgoing],
        entries: Sequence[Entry | None] | None = None,
    ) -> list[int | None]:
        awaited = not self._driver.positions_at_ack
        if awaited:
            with self._lock:
                self._awaited.update(record.key for record in outgoing)
                if entries is not None:
                    expected = self._expected
                    for record, entry in zip(outgoing, entries, strict=True):
                        if entry is not None:
                            expected[record.key] = (record.value, entry)
        try:
            offsets = self._driver.publish(outgoing)
        except BaseException:
            if awaited:
                with self._lock:
                    self._forget(record.key for record in outgoing)
            raise
        identity = self._driver.log_id()
        if identity != self._log_id:
            with self._lock:
                self._check_identity(identity, opening=False)
        return offsets

    def _commit(
        self,
        outgoing: list[Outgoing],
        entries: list[Entry | None],
        earlier: tuple[list[Outgoing], list[Entry | None], list[int | None]]
        | None = None,
    ) -> None:
        """Publish records, then make the index hold them before returning.

        ``earlier`` holds records published before these (a batch's
        messages before its commit record) to apply together with them.
        """
        try:
            offsets = self._publish(outgoing, entries)
        except BaseException:
            if earlier is not None and not self._driver.positions_at_ack:
                with self._lock:
                    self._forget(record.key for record in earlier[0])
            raise
        if earlier is not None:
            outgoing = earlier[0] + outgoing
            entries = earlier[1] + entries
            offsets = earlier[2] + offsets
        if all(offset is not None for offset in offsets):
            with self._index_transaction() as conn:
                epoch = self._epoch << EPOCH_SHIFT
                located = [
                    (record.partition, epoch + offset, entry)
                    for record, offset, entry in zip(
                        outgoing, offsets, entries, strict=True
                    )
                    if entry is not None and offset is not None
                ]
                self._apply(conn, located, ahead=True)
            return
        self._await_tail([record.key for record in outgoing])

    def _await_tail(self, keys: list[str]) -> None:
        deadline = time.monotonic() + self.timeout
        with self._changed:
            try:
                while not self._arrived.issuperset(keys):
                    self._raise_tail_failure()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BackendUnavailable(
                            f"The log acknowledged the write but the index "
                            f"did not see it within {self.timeout:g} s; it "
                            "will show once the tail catches up."
                        )
                    self._changed.wait(remaining)
            finally:
                self._forget(keys)

    def _forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._awaited.discard(key)
            self._arrived.discard(key)
            self._expected.pop(key, None)

    def _tombstones(
        self, kind: str, value: str, partitions: Iterable[int]
    ) -> list[Outgoing]:
        ids, _ = self._new_ids(1)
        field = "s" if kind == "s" else "u"
        return [
            self._control(p, f"{ids[0]}.{p}", {"k": kind, field: value})
            for p in partitions
        ]

    def _erasures(self, victims: Sequence[tuple[str, int]]) -> list[Outgoing]:
        """Return the records that delete these (id, partition) pairs."""
        if self._driver.erases_by_key:
            return [Outgoing(part, mid, None) for mid, part in victims]
        by_partition: dict[int, list[str]] = {}
        for mid, part in victims:
            by_partition.setdefault(part, []).append(mid)
        ids, _ = self._new_ids(len(by_partition))
        return [
            self._control(part, key, {"k": "d", "d": mids})
            for key, (part, mids) in zip(ids, by_partition.items(), strict=True)
        ]

    def _erase(self, victims: Sequence[tuple[str, int]]) -> None:
        for start in range(0, len(victims), VICTIM_CHUNK):
            chunk = victims[start : start + VICTIM_CHUNK]
            records = self._erasures(chunk)
            self._commit(records, [self._entry_of(r) for r in records])

    def _entry_of(self, record: Outgoing) -> Entry:
        if record.value is None:
            return ("d", [record.key], record.key)
        entry = _decode_control(json.loads(record.value), record.key)
        assert entry is not None
        return entry

    def _evict(self, nbytes: int) -> None:
        freed = 0
        if self.policy == "evict-lru-session":
            while freed < nbytes:
                victims = self._read(
                    "SELECT session, bytes FROM sessions WHERE ns = ?"
                    " ORDER BY last_used, session LIMIT 64",
                    (self.namespace,),
                )
                if not victims:
                    raise _nothing_to_evict()
                for session, size in victims:
                    self._delete_session_now(session)
                    freed += size
                    if freed >= nbytes:
                        break
        else:
            while freed < nbytes:
                rows = self._read(
                    "SELECT id, part, size FROM messages"
                    " INDEXED BY messages_by_acceptance"
                    " WHERE ns = ? ORDER BY accepted, seq LIMIT ?",
                    (self.namespace, VICTIM_CHUNK),
                )
                if not rows:
                    raise _nothing_to_evict()
                chosen = []
                for mid, part, size in rows:
                    chosen.append((mid, part))
                    freed += size
                    if freed >= nbytes:
                        break
                self._erase(chosen)
        log.warning("evicted %d bytes from namespace %r", freed, self.namespace)

    def _purge(self, cutoff: int) -> None:
        # Expired rows are never re-applied (the tail filters them), so
        # dropping them locally needs no tombstone; the log's own
        # retention removes the bytes.
        with self._index_transaction() as conn:
            conn.execute(
                "DELETE FROM messages WHERE ns = ? AND created_at < ?",
                (self.namespace, cutoff),
            )

    # -- deleting ------------------------------------------------------------

    def _delete(self, message_id: str) -> bool:
        with self._transaction():
            row = self._locate(message_id)
            if row is None:
                # Another store may have written it moments ago.
                self.sync()
                row = self._locate(message_id)
            if row is None:
                return False
            self._erase([(message_id, row)])
            return True

    def _locate(self, message_id: str) -> int | None:
        rows = self._read(
            "SELECT part FROM messages WHERE id = ? AND ns = ?",
            (message_id, self.namespace),
        )
        return int(rows[0][0]) if rows else None

    def _delete_session(self, session_id: str) -> int:
        with self._transaction():
            self.sync()
            return self._delete_session_now(session_id)

    def _delete_session_now(self, session_id: str) -> int:
        victims = self._read(
            "SELECT id, part FROM messages WHERE ns = ? AND session = ?",
            (self.namespace, session_id),
        )
        records = self._tombstones("s", session_id, [self._partition(session_id)])
        if self._driver.erases_by_key:
            records += self._erasures([(mid, part) for mid, part in victims])
        self._commit(records, [self._entry_of(r) for r in records])
        return len(victims)

    def _delete_user(self, user_id: str) -> int:
        with self._transaction():
            self.sync()
            victims = self._read(
                "SELECT id, part FROM messages WHERE ns = ? AND user_id = ?",
                (self.namespace, user_id),
            )
            records = self._tombstones("u", user_id, range(self._partitions))
            if self._driver.erases_by_key:
                records += self._erasures([(mid, part) for mid, part in victims])
            self._commit(records, [self._entry_of(r) for r in records])
            return len(victims)

    # -- applying records ----------------------------------------------------

    def _apply(
        self,
        conn: sqlite3.Connection,
        located: Sequence[tuple[int, int, Entry]],
        ahead: bool,
    ) -> None:
        """Apply entries at their (partition, position) to the index.

        ``ahead`` marks a store's own writes applied at acknowledgement,
        before the tail reaches them: one the tail already passed is
        skipped (it was applied in order), and tombstones are remembered
        until the tail passes them. Call with the index lock held.
        """
        ns = self.namespace
        cutoff = self._cutoff()
        epoch = self._epoch << EPOCH_SHIFT
        checkpoints = self._checkpoints
        suppress = bool(self._erased or self._ahead_sessions or self._ahead_users)
        rows: list[tuple[Any, ...]] = []
        pending: list[tuple[Any, ...]] = []
        # A batch whose commit comes in this same read goes straight to
        # messages: the whole read is one index transaction, so no reader
        # sees the batch before its commit, and pending is skipped.
        committed: dict[str, bool] = {
            entry[1]: True for _, _, entry in located if entry[0] == "c"
        }
        for part, pos, entry in located:
            if ahead:
                if pos < epoch + checkpoints.get(part, 0):
                    continue
                self._own.add((part, pos))
            kind = entry[0]
            if kind == "m":
                fields, accepted, batch = entry[1], entry[2], entry[3]
                if fields[1] == ns:
                    if cutoff is not None and fields[5] < cutoff:
                        continue
                elif fields[7] or fields[8]:
                    # Other tenants' rows keep only what accounting needs.
                    fields = (*fields[:7], "", "")
                if suppress and self._suppressed(fields, part, pos):
                    continue
                if batch is not None:
                    # A replay meets whole batches: ask the index once per
                    # batch, not once per message.
                    known = committed.get(batch)
                    if known is None:
                        known = committed[batch] = self._is_committed(conn, batch)
                    if not known:
                        pending.append((batch, *fields, part, pos, accepted))
                        continue
                rows.append((*fields, part, pos, accepted))
                continue
            if rows:
                conn.executemany(INSERT_ROW, rows)
                rows = []
            if pending:
                conn.executemany(INSERT_PENDING, pending)
                pending = []
            self._apply_control(conn, part, pos, entry, ahead)
        if rows:
            conn.executemany(INSERT_ROW, rows)
        if pending:
            conn.executemany(INSERT_PENDING, pending)
        for listener in self.on_applied:
            listener(located, ahead)

    def _suppressed(self, fields: tuple[Any, ...], part: int, pos: int) -> bool:
        if fields[0] in self._erased:
            return True
        session = self._ahead_sessions.get((fields[1], fields[2]))
        if session is not None and pos < session[1]:
            return True
        if fields[3] is not None:
            user = self._ahead_users.get((fields[1], fields[3], part))
            if user is not None and pos < user:
                return True
        return False

    def _is_committed(self, conn: sqlite3.Connection, batch: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM committed WHERE batch = ? LIMIT 1", (batch,)
        ).fetchone()
        return row is not None

    def _apply_control(
        self,
        conn: sqlite3.Connection,
        part: int,
        pos: int,
        entry: Entry,
        ahead: bool,
    ) -> None:
        kind = entry[0]
        if kind == "d":
            ids = entry[1]
            for start in range(0, len(ids), VICTIM_CHUNK):
                chunk = [(mid,) for mid in ids[start : start + VICTIM_CHUNK]]
                conn.executemany("DELETE FROM messages WHERE id = ?", chunk)
                conn.executemany("DELETE FROM pending WHERE id = ?", chunk)
            if ahead:
                for mid in ids:
                    self._erased[mid] = (part, pos)
        elif kind == "s":
            ns, session = entry[1], entry[2]
            where = "ns = ? AND session = ? AND pos < ?"
            conn.execute(f"DELETE FROM messages WHERE {where}", (ns, session, pos))
            conn.execute(f"DELETE FROM pending WHERE {where}", (ns, session, pos))
            if ahead:
                self._ahead_sessions[(ns, session)] = (part, pos)
        elif kind == "u":
            ns, user = entry[1], entry[2]
            where = "ns = ? AND user_id = ? AND part = ? AND pos < ?"
            params = (ns, user, part, pos)
            conn.execute(f"DELETE FROM messages WHERE {where}", params)
            conn.execute(f"DELETE FROM pending WHERE {where}", params)
            if ahead:
                self._ahead_users[(ns, user, part)] = pos
        elif kind == "c":
            self._apply_commit(conn, entry[1], entry[2])

    def _apply_commit(
        self, conn: sqlite3.Connection, batch: str, last: dict[str, int]
    ) -> None:
        conn.execute(
            f"INSERT OR IGNORE INTO messages ({ROW_COLUMNS})"
            f" SELECT {ROW_COLUMNS} FROM pending WHERE batch = ?",
            (batch,),
        )
        conn.execute("DELETE FROM pending WHERE batch = ?", (batch,))
        ahead = [
            (batch, int(part), offset)
            for part, offset in last.items()
            if offset >= self._checkpoints.get(int(part), 0)
        ]
        conn.executemany("INSERT OR IGNORE INTO committed VALUES (?, ?, ?)", ahead)

    # -- the tail ------------------------------------------------------------

    def _tail(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tail_once()
            except BackendUnavailable as exc:
                with self._changed:
                    if self._tail_trouble is None:
                        log.warning("the log tail is interrupted: %s", exc)
                    self._tail_trouble = exc
                # Back off while the broker is away; close() wakes this.
                self._stopping.wait(0.5)
            except Exception as exc:
                log.error("the log tail stopped: %s", type(exc).__name__, exc_info=True)
                with self._changed:
                    self._tail_failure = exc
                    self._changed.notify_all()
                return

    def _tail_once(self) -> bool:
        """Read and apply one batch of records; return True if any came."""
        if self._reader_stale:
            self._renew_reader()
        reader = self._reader
        if reader is None:
            return False
        records = reader.read(TAIL_POLL_SECONDS)
        if reader.troubled():
            identity = self._driver.log_id(refresh=True)
            with self._lock:
                if self._check_identity(identity, opening=False):
                    return False
        positions = reader.positions()
        with self._changed:
            if reader is not self._reader or self._reader_stale:
                return False  # the log was replaced while reading
            if self._tail_trouble is not None:
                log.info("the log tail is back")
                self._tail_trouble = None
            if records or positions != self._checkpoints:
                self._apply_tail(records, positions)
            self._changed.notify_all()
        return bool(records)

    def _apply_tail(self, records: list[LogRecord], positions: dict[int, int]) -> None:
        epoch = self._epoch << EPOCH_SHIFT
        located: list[tuple[int, int, Entry]] = []
        arrived: list[str] = []
        own = self._own
        expected = self._expected
        for record in records:
            if record.offset < self._checkpoints.get(record.partition, 0):
                continue
            if own:
                mine = (record.partition, epoch + record.offset)
                if mine in own:
                    own.discard(mine)
                    continue
            decoded = None
            if expected and record.key:
                known = expected.get(record.key.decode("utf-8", "replace"))
                if known is not None and known[0] == record.value:
                    decoded = known[1]
            if decoded is None:
                decoded = _decode(record, self.message_overhead)
            if decoded is None:
                continue
            located.append((record.partition, epoch + record.offset, decoded))
            if self._awaited:
                arrived.append(decoded[-1])
        moved = {p: o for p, o in positions.items() if o > self._checkpoints.get(p, 0)}
        with self._index_transaction() as conn:
            self._apply(conn, located, ahead=False)
            if moved:
                conn.executemany(
                    "UPDATE checkpoints SET next = ? WHERE part = ?",
                    [(o, p) for p, o in moved.items()],
                )
                conn.executemany(
                    "DELETE FROM committed WHERE part = ? AND last < ?",
                    list(moved.items()),
                )
        self._checkpoints.update(moved)
        self.applied_records += len(located)
        if moved:
            self._prune_ahead()
        for key in arrived:
            if key in self._awaited:
                self._arrived.add(key)

    def _prune_ahead(self) -> None:
        epoch = self._epoch << EPOCH_SHIFT
        passed = {p: epoch + o for p, o in self._checkpoints.items()}
        self._erased = {
            k: v for k, v in self._erased.items() if v[1] >= passed.get(v[0], 0)
        }
        self._ahead_sessions = {
            k: v for k, v in self._ahead_sessions.items() if v[1] >= passed[v[0]]
        }
        self._ahead_users = {
            k: v for k, v in self._ahead_users.items() if v >= passed[k[2]]
        }
        if self._own:
            # Records the tail never returned (compacted away) are passed.
            self._own = {k for k in self._own if k[1] >= passed.get(k[0], 0)}

    def _check_identity(self, identity: str, *, opening: bool) -> bool:
        """Start a new epoch if the log is not the one the index follows.

        Returns True when it did. Call with the index lock held, or while
        opening, before the tail runs.
        """
        if identity == self._log_id:
            return False
        replaced = bool(self._log_id)
        with self._index_transaction() as conn:
            if replaced:
                held = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
                log.critical(
                    "the log was replaced (its identity changed): what the "
                    "old one held is gone from the broker; this index keeps "
                    "its %d messages, stores opened from now on will not",
                    held,
                )
                self._epoch += 1
                conn.execute("UPDATE checkpoints SET next = 0")
                conn.execute("DELETE FROM committed")
                self._checkpoints = dict.fromkeys(self._checkpoints, 0)
                self._erased.clear()
                self._ahead_sessions.clear()
                self._ahead_users.clear()
                self._own.clear()
                self._reader_stale = not opening
            self._log_id = identity
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("epoch", str(self._epoch)), ("log_id", identity)],
            )
        return replaced

    def _renew_reader(self) -> None:
        with self._lock:
            old, self._reader = self._reader, None
            start = dict(self._checkpoints)
            self._reader_stale = False
        if old is not None:
            old.close()
        reader = self._driver.reader(start)
        with self._lock:
            if self._closed:
                reader.close()
            else:
                self._reader = reader

    # -- sync ----------------------------------------------------------------

    def sync(self, timeout: float | None = None) -> None:
        """Wait until the index holds everything the log held at the call.

        Writes of this store are in the index when they return; ``sync``
        is for other stores' writes. ``timeout`` defaults to the store's.
        Raises :class:`BackendUnavailable` when the log cannot be asked
        or the index does not catch up in time.
        """
        self._check_open()
        wait = self.timeout if timeout is None else _check_timeout(timeout)
        deadline = time.monotonic() + wait
        ends = self._driver.end_offsets()
        with self._changed:
            while not self._caught_up(ends):
                self._raise_tail_failure()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BackendUnavailable(
                        f"The index did not catch up with the log within "
                        f"{wait:g} s."
                        + (
                            f" The tail is interrupted: {self._tail_trouble}"
                            if self._tail_trouble
                            else ""
                        )
                    )
                self._changed.wait(remaining)

    def _caught_up(self, ends: dict[int, int]) -> bool:
        checkpoints = self._checkpoints
        return all(checkpoints.get(p, 0) >= end for p, end in ends.items())

    def _raise_tail_failure(self) -> None:
        self._check_open()
        if self._tail_failure is not None:
            raise BackendUnavailable(
                "The index's tail stopped on an unexpected error; reopen the store."
            ) from self._tail_failure

    # -- reading -------------------------------------------------------------

    def _touch(self, session_id: str) -> None:
        if self._accounting and self.policy == "evict-lru-session":
            self._touched.add(session_id)

    def _get(self, message_id: str) -> Message | None:
        rows = self._read(
            f"SELECT {COLUMNS} FROM messages WHERE id = ? AND ns = ?",
            (message_id, self.namespace),
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
        where, params = self._where(session_id, None)
        for cursor, op in ((before, "<"), (after, ">")):
            if cursor is not None:
                where += f" AND pos {op} ?"
                params.append(self._cursor_pos(session_id, cursor))
        order = "DESC" if newest else "ASC"
        sql = (
            f"SELECT {COLUMNS} FROM messages INDEXED BY messages_by_session"
            f" WHERE {where} ORDER BY pos {order}"
        )
        if count is not None:
            sql += " LIMIT ?"
            params.append(count)
        rows = self._read(sql, params)
        if newest:
            rows.reverse()
        self._touch(session_id)
        return _to_messages(rows)

    def _cursor_pos(self, session_id: str, cursor: str) -> int:
        rows = self._read(
            "SELECT session, pos FROM messages WHERE id = ? AND ns = ?",
            (cursor, self.namespace),
        )
        if rows and rows[0][0] == session_id:
            return int(rows[0][1])
        raise MessageNotFound(cursor)

    def _query(
        self,
        session_id: str | None,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        role: str | None,
        limit: int | None,
    ) -> list[Message]:
        # The base already raised ``start`` to the retention cutoff.
        where, params = self._where(session_id, user_id, retention=False)
        if role is not None:
            where += " AND role = ?"
            params.append(ROLE_CODES[role])
        if start is not None:
            where += " AND created_at >= ?"
            params.append(to_micros(start))
        if end is not None:
            where += " AND created_at < ?"
            params.append(to_micros(end))
        sql = (
            f"SELECT {COLUMNS} FROM messages {_index(session_id, user_id)}"
            f" WHERE {where} ORDER BY created_at, accepted, seq"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return _to_messages(self._read(sql, params))

    def _sessions(self, user_id: str | None) -> list[str]:
        if self._accounting and user_id is None and self._cutoff() is None:
            rows = self._read(
                "SELECT session FROM sessions WHERE ns = ? ORDER BY session",
                (self.namespace,),
            )
        else:
            where, params = self._where(None, user_id)
            rows = self._read(
                f"SELECT DISTINCT session FROM messages {_index(None, user_id)}"
                f" WHERE {where} ORDER BY session",
                params,
            )
        return [row[0] for row in rows]

    def _count(self, session_id: str | None, user_id: str | None) -> int:
        where, params = self._where(session_id, user_id)
        if self._accounting and user_id is None and self._cutoff() is None:
            sql = f"SELECT total(messages) FROM sessions WHERE {where}"
        else:
            index = _index(session_id, user_id)
            sql = f"SELECT count(*) FROM messages {index} WHERE {where}"
        return int(self._read(sql, params)[0][0])

    def _where(
        self, session_id: str | None, user_id: str | None, *, retention: bool = True
    ) -> tuple[str, list[Any]]:
        where = "ns = ?"
        params: list[Any] = [self.namespace]
        if session_id is not None:
            where += " AND session = ?"
            params.append(session_id)
        if user_id is not None:
            where += " AND user_id = ?"
            params.append(user_id)
        cutoff = self._cutoff() if retention else None
        if cutoff is not None:
            where += " AND created_at >= ?"
            params.append(cutoff)
        return where, params

    def _used_bytes(self) -> int:
        table = "sessions" if self._accounting else "messages"
        column = "bytes" if self._accounting else "size"
        return int(self._read(f"SELECT total({column}) FROM {table}")[0][0])

    def _usage(self) -> tuple[int, int, float]:
        if self._accounting:
            sql = "SELECT total(bytes), total(messages) FROM sessions"
        else:
            sql = "SELECT total(size), count(*) FROM messages"
        used, count = self._read(sql)[0]
        pages = self._read("PRAGMA page_count")[0][0]
        free = self._read("PRAGMA freelist_count")[0][0]
        return int(used), int(count), free / pages if pages else 0.0

    # -- closing -------------------------------------------------------------

    def _close(self) -> None:
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._changed:
            reader, self._reader = self._reader, None
            conn, self._conn = self._conn, None
            self._changed.notify_all()
        if reader is not None:
            reader.close()
        self._driver.close()
        if conn is not None:
            conn.close()
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def _describe(self) -> str:
        index = "memory" if self.index_dir is None else repr(self.index_dir)
        return f"{self._driver.describe()} namespace={self.namespace!r} index={index}"


# -- decoding ---------------------------------------------------------------

# One encoder and decoder for every record: json.dumps and json.loads
# build or look these up per call, a fifth of a replay's decoding time.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_load = json.JSONDecoder().decode


def _decode(record: LogRecord, overhead: int) -> Entry | None:
    """Return the entry a record holds, or None for a foreign record."""
    if record.value is None:
        if not record.key:
            return None
        key = record.key.decode("utf-8", "replace")
        return ("d", [key], key)
    try:
        data = _load(record.value.decode())
        if "k" in data:
            return _decode_control(data, data["i"])
        meta = data.get("m")
        size = data.get("z")
        fields = (
            data["i"],
            data["n"],
            data["s"],
            data.get("u"),
            ROLE_CODES[data["r"]],
            data["t"],
            (len(record.value) if size is None else size) + overhead,
            data["c"],
            _COMPACT.encode(meta) if meta else "",
        )
        return ("m", fields, data.get("a", 0), data.get("b"), data["i"])
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not a chatmem record: another producer shares the log. Skipped,
        # never fatal; the log says where.
        log.warning(
            "skipped a record that is not chatmem's at partition %d offset %d",
            record.partition,
            record.offset,
        )
        return None


def _decode_control(data: dict[str, Any], key: str) -> Entry | None:
    kind = data["k"]
    if kind == "d":
        return ("d", list(data["d"]), key)
    if kind == "s":
        return ("s", data["n"], data["s"], key)
    if kind == "u":
        return ("u", data["n"], data["u"], key)
    if kind == "c":
        return ("c", data["b"], dict(data.get("e") or {}), key)
    return None


# -- helpers ----------------------------------------------------------------


def _check_timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidMessage(
            f"timeout must be a positive number of seconds: {value!r}."
        )
    return float(value)


def _nothing_to_evict() -> CapacityExceeded:
    return CapacityExceeded(
        "The budget is full and this namespace holds too little to evict; "
        "other namespaces' messages are never evicted. Raise capacity_bytes "
        "or delete messages."
    )


def _lock(path: str) -> int:
    """Hold an exclusive lock on the index file for this store's life."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise BackendUnavailable(
            f"The index {path!r} is in use by another open store; give each "
            "store its own index_dir, or index_dir=None."
        ) from None
    return fd
