"""TieredMemory: a budgeted in-process hot tier in front of a persistent store.

Reference card
--------------
Open       ``chatmem.open(url, cache_bytes=N)`` on any persistent backend
           (SQLite, Redis, PostgreSQL, Kafka, RabbitMQ Streams); add
           ``cache_staleness=timedelta(...)`` to serve cached sessions
           without asking the backend within that age. Without
           ``cache_bytes`` nothing changes: the backend is returned bare.
What       The sessions being talked in are a small, hot part of a store,
           and every turn reads the newest messages of one of them. The
           tier keeps the newest messages of recently read sessions in
           process memory, inside a byte budget of ``cache_bytes``, and
           answers ``get``, ``history`` and ``history_window`` from there
           when it holds the answer: a whole session, or a known suffix of
           one long enough for ``last=k`` or for a page before a cursor it
           holds. Everything else (``query``, ``sessions``, ``count``, the
           budget figures) is the backend's.
Writes     Go through to the backend and return once the backend
           acknowledged them; only then is the tier updated. A crash of the
           process loses nothing the backend acknowledged.
Freshness  Several processes may write one store. Before a cached session
           serves a read the tier asks the backend whether that run of
           messages is still exactly what it holds (one small read: how
           many messages lie from its first id on, and whether any follow
           its last or precede its first). SQLite first offers a cheaper
           answer: while its ``PRAGMA data_version`` stands still no other
           connection committed, and the session is served at once. A get
           is served from the tier only when no check is due, since a check
           costs what the get does. With ``cache_staleness`` the check is
           skipped while the session was checked or read from the backend
           within that age, so a read may miss another process's write, or
           show one it deleted, for at most that long. The log backends
           need no check: the tail that applies other stores' records to
           the local index drops the sessions they touch from the tier in
           the same step, so the tier is exactly as fresh as the index.
Budget     ``cache_bytes`` bounds the Python memory the cached messages
           take (their strings and tuples, and an id table entry each),
           reserved with :meth:`~chatmem.budget.Budget.allocate` and given
           back with :meth:`~chatmem.budget.Budget.release`. When a session
           does not fit, least recently used sessions leave first; their
           messages stay in the backend and are read from there again. A
           session larger than the whole budget is not cached.
Deletion   ``delete``, ``delete_session`` and ``delete_user`` reach the
           backend first and then drop what the tier held of it. Retention
           hides expired messages in the tier exactly as in the backend.
           A tier serves one namespace: the backend's.
Stats      ``stats().hot_tier`` (:class:`~chatmem.budget.TierStats`): the
           budget, bytes used, messages and sessions held, hits, misses,
           hit ratio and evictions since open.
Limits     With ``cache_staleness``, a message the backend itself evicted
           for room still shows through the tier for at most that age;
           without it the next read's check drops it. On PostgreSQL two
           writers racing on one session can make a message visible behind
           a newer one (see its reference card); if another message of the
           cached run is deleted in the same instant, count and ends are
           unchanged and the tier misses the late message until the
           session next changes.

Why not the arena. The first design kept the cached messages in an
``ArenaMemory`` (packed records, denser). Decoding its records cost about
twice as much per message as rebuilding a message from a tuple, which on
SQLite left ``history(last=20)`` barely faster than the file itself; the
tier keeps tuples and accounts their real size instead.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from chatmem.base import BaseChatMessageMemory
from chatmem.budget import Allocation, Budget, MemoryStats, TierStats
from chatmem.errors import InvalidMessage
from chatmem.message import Message, Prepared, scan_json, to_micros

__all__ = ["TieredMemory"]

log = logging.getLogger(__name__)

# A cached row: (id, session, role, content, user id, created_at in epoch
# microseconds, metadata JSON or ""). Metadata stays JSON so that a caller
# changing a returned message's dict cannot change the tier.
Row = tuple[str, str, str, str, str | None, int, str]

# Python's own cost of a row beyond its strings: the 7-tuple, the int of
# its time, and its slots in the id table and the session's id list,
# rounded up so that the count stays at or above what tracemalloc sees
# (measured on the benchmark's workload: within 2 %).
ROW_BYTES = sys.getsizeof(("",) * 7) + sys.getsizeof(1 << 60) + 8 + 140
ENTRY_BYTES = 400

# Concurrent changes are detected per stripe of sessions: a read from the
# backend is cached only if no write, delete or invalidation touched its
# stripe while it ran.
STRIPES = 4096

# Other writers' batches awaiting their commit record (log backends).
PENDING_BATCHES = 4096

# Moving averages of what a check and a backend read cost: the weight of
# each new sample, the samples needed before they count, and how often a
# read still checks while checks are not worth it.
COST_WEIGHT = 1 / 16
COST_SAMPLES = 16
PROBE_EVERY = 32

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# What _serve returns when checking costs more than it saves: read the
# backend, and leave the tier as it is.
_DIRECT: list[Row] = []


class _Entry:
    """The cached newest messages of one session."""

    __slots__ = ("allocations", "checked", "ids", "mark", "rows", "whole")

    def __init__(self, rows: list[Row], whole: bool, checked: float) -> None:
        self.rows = rows
        self.ids = [row[0] for row in rows]
        self.whole = whole  # the rows are the whole session
        self.checked = checked  # monotonic time the rows were known current
        # The backend's change mark and the tier's count of own changes
        # when the rows were known current.
        self.mark: tuple[Hashable, int] | None = None
        self.allocations: list[Allocation] = []


class TieredMemory(BaseChatMessageMemory):
    """A hot tier in front of a persistent store; see the reference card.

    Open one with ``chatmem.open(url, cache_bytes=N)``. It has the public
    API and errors of the store it wraps; ``backend`` is that store.
    """

    def __init__(
        self,
        backend: BaseChatMessageMemory,
        cache_bytes: int,
        cache_staleness: timedelta | None = None,
    ) -> None:
        if not backend.persistent:
            raise InvalidMessage(
                f"cache_bytes puts a hot tier in front of a persistent "
                f"store; {type(backend).__name__} already lives in process "
                "memory. Open it without cache_bytes."
            )
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int):
            raise InvalidMessage(
                f"cache_bytes must be a whole number of bytes, not {cache_bytes!r}."
            )
        if cache_bytes <= 0:
            raise InvalidMessage("cache_bytes must be positive.")
        if cache_staleness is not None and (
            not isinstance(cache_staleness, timedelta) or cache_staleness < timedelta(0)
        ):
            raise InvalidMessage(
                "cache_staleness must be a timedelta of zero or more, or None."
            )
        super().__init__(
            namespace=backend.namespace,
            retention=backend.retention,
            max_message_bytes=backend.max_message_bytes,
        )
        self.backend = backend
        self.cache_staleness = cache_staleness
        self.message_overhead = backend.message_overhead
        self._staleness = (
            None if cache_staleness is None else cache_staleness.total_seconds()
        )
        self._tier = Budget(cache_bytes, "evict-lru-session")
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._where: dict[str, str] = {}  # message id -> session id
        self._stripes = [0] * STRIPES
        self._epoch = 0  # bumped when a change's sessions are not known
        self._pending: OrderedDict[str, set[str]] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._touching = backend.policy == "evict-lru-session"

        # A backend with a change mark lets a read skip its check while no
        # other writer committed. This store's own writes keep the mark;
        # those that may change other sessions (evictions, retention
        # purges) or that failed count in _local instead.
        self._marking = backend._change_mark() is not None
        self._local = 0
        self._writes_reach_others = backend.retention is not None or (
            backend.capacity_bytes is not None and backend.policy != "reject"
        )

        # A check that costs as much as the read it saves (PostgreSQL's
        # count visits the rows the read would) is not worth making: the
        # tier measures both and, while checking does not pay, sends
        # reads straight to the backend, checking one in PROBE_EVERY.
        self._check_cost = 0.0
        self._read_cost = 0.0
        self._check_fails = 0.0
        self._checks = 0
        self._reads = 0
        self._probes = itertools.count()

        # A backend that announces what it applies (the log backends'
        # tail) keeps the tier as fresh as itself: no check per read.
        listeners: list[Any] | None = getattr(backend, "on_applied", None)
        self._listeners = listeners
        # Ids the log backend makes start with its writer id: records with
        # it are this store's own, which the tier learns of from _write,
        # also when they reach the index through the tail (RabbitMQ).
        writer = getattr(backend, "_writer", None)
        self._own = f"{writer}-" if isinstance(writer, str) and writer else None
        # Sessions of own writes that failed: their records may still
        # reach the index later, through the tail, and then the tier must
        # hear of them as of another store's.
        self._unsettled: OrderedDict[str, None] = OrderedDict()
        if listeners is not None:
            listeners.append(self._applied)

    # -- the budget and capacity are the backend's -------------------------

    @property
    def capacity_bytes(self) -> int | None:
        """The backend's byte budget, or None when it is unbounded."""
        return self.backend.capacity_bytes

    @property
    def policy(self) -> str:
        """What a write does when the backend's budget is full."""
        return self.backend.policy

    def allocate(self, size: int) -> Allocation:
        """Reserve ``size`` bytes of the backend's budget."""
        self._check_open()
        return self.backend.allocate(size)

    def release(self, allocation: Allocation) -> None:
        """Give back space reserved by :meth:`allocate`."""
        self._check_open()
        self.backend.release(allocation)

    def stats(self) -> MemoryStats:
        """Return the backend's capacity figures with the hot tier's."""
        self._check_open()
        figures = self.backend.stats()
        with self._lock:
            asked = self._hits + self._misses
            tier = TierStats(
                capacity_bytes=self._tier.capacity or 0,
                used_bytes=self._tier.allocated,
                message_count=len(self._where),
                session_count=len(self._entries),
                hits=self._hits,
                misses=self._misses,
                hit_ratio=self._hits / asked if asked else 0.0,
                evictions=self._evictions,
            )
        return replace(figures, hot_tier=tier)

    def sync(self, timeout: float | None = None) -> None:
        """Wait until the backend shows other stores' writes, if it lags.

        Log backends apply other stores' writes from a tail; this waits
        for it (see their ``sync``). Other backends show them at once.
        """
        self._check_open()
        sync = getattr(self.backend, "sync", None)
        if sync is not None:
            sync(timeout)

    # -- writing -----------------------------------------------------------

    def _write(self, prepared: list[Prepared]) -> list[Message]:
        sessions = {item.message.session_id for item in prepared}
        with self._lock:
            before = {s: self._stamp(s) for s in sessions}
        try:
            stored = self.backend._write(prepared)
        except BaseException as exc:
            # A write that failed may still have been stored (a lost
            # reply, a log that took it late): forget these sessions. A
            # refused message was stored nowhere and will not come later.
            late = not isinstance(exc, InvalidMessage)
            with self._lock:
                self._local += 1
                for session in sessions:
                    self._drop(session)
                    self._bump(session)
                    if late:
                        self._unsettled[session] = None
                        self._unsettled.move_to_end(session)
                while len(self._unsettled) > PENDING_BATCHES:
                    self._unsettled.popitem(last=False)
            raise

        # Acknowledged: now the tier may learn of it. A session another
        # change touched meanwhile (a concurrent write of this process, an
        # invalidation) is dropped rather than appended out of order. A
        # read between the acknowledgement and here may have cached the
        # rows already: they are not added twice.
        with self._lock:
            if self._writes_reach_others:
                self._local += 1
            grown: dict[str, list[Row]] = {}
            for item, message in zip(prepared, stored, strict=True):
                grown.setdefault(message.session_id, []).append(
                    _row_of(message, item.metadata_json)
                )
            for session, rows in grown.items():
                entry = self._entries.get(session)
                if entry is not None:
                    held = sum(row[0] in self._where for row in rows)
                    if self._stamp(session) != before[session]:
                        self._drop(session)
                    elif held == 0:
                        self._append(session, entry, rows)
                    elif held < len(rows):
                        self._drop(session)  # a read saw part of the write
                self._bump(session)
        return stored

    def _insert(self, prepared: Sequence[Prepared]) -> list[Message]:
        return self._write(list(prepared))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        yield

    def _evict(self, nbytes: int) -> None:
        self.backend._evict(nbytes)

    def _purge(self, cutoff: int) -> None:
        self.backend._purge(cutoff)

    # -- reading -----------------------------------------------------------

    def _get(self, message_id: str) -> Message | None:
        session = None
        trusting = self._staleness is not None or self._listeners is not None
        if self._marking or trusting:
            with self._lock:
                session = self._where.get(message_id)
        rows = None
        if session is not None:
            # A full check costs what reading the message from the backend
            # costs, so a get pays for one only when it buys later reads
            # without one: a while of cache_staleness, or a change mark.
            rows = self._serve(
                session,
                lambda entry: _pick(entry, message_id),
                check=self._staleness is not None or self._marking,
            )
        if not rows:
            with self._lock:
                self._misses += 1
            return self.backend._get(message_id)
        assert session is not None
        self._touch(session)
        return _messages(rows)[0]

    def _history(
        self,
        session_id: str,
        before: str | None,
        after: str | None,
        count: int | None,
        newest: bool,
    ) -> list[Message]:
        rows = self._serve(
            session_id,
            lambda entry: _select(entry, before, after, count, newest),
            check=True,
        )
        if rows is _DIRECT:
            with self._lock:
                self._misses += 1
            return self._timed_read(session_id, before, after, count, newest)
        if rows is None:
            return self._read_through(session_id, before, after, count, newest)
        self._touch(session_id)
        return _messages(rows)

    def _serve(
        self,
        session_id: str,
        pick: Callable[[_Entry], list[Row] | None],
        check: bool,
    ) -> list[Row] | None:
        """Return the rows ``pick`` wants if the tier may serve them now.

        A cached session serves at once when it is trusted (see
        :meth:`_trusted`) or when the backend's change mark shows that no
        other writer committed since it was last known current; otherwise,
        with ``check``, after the backend confirmed it. Returns None when
        the tier cannot answer; the caller reads the backend.
        """
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is not None and self.retention is not None:
                entry = self._expire(session_id, entry)
            rows = None if entry is None else pick(entry)
            if entry is None or rows is None:
                return None
            if self._trusted(entry, now):
                self._hits += 1
                self._entries.move_to_end(session_id)
                return rows
            first, last, held = entry.ids[0], entry.ids[-1], len(entry.ids)
            whole, seen = entry.whole, entry.mark
            stamp, local = self._stamp(session_id), self._local

        # Outside the lock: the backend may take a round trip.
        mark = self.backend._change_mark() if self._marking else None
        confirmed = mark is not None and seen == (mark, local)
        if not confirmed:
            if not check:
                return None
            if self._not_worth_checking():
                return _DIRECT
            began = time.perf_counter()
            inside, newer, older = self.backend._session_state(
                session_id, first, last, whole
            )
            spent = time.perf_counter() - began

        with self._lock:
            if not confirmed:
                failed = inside != held or newer
                self._check_cost += (spent - self._check_cost) * COST_WEIGHT
                self._check_fails += (failed - self._check_fails) * COST_WEIGHT
                self._checks += 1
            if (
                self._entries.get(session_id) is not entry
                or self._stamp(session_id) != stamp
            ):
                return None
            if not confirmed:
                if failed:
                    self._drop(session_id)
                    self._bump(session_id)
                    return None
                if older and entry.whole:
                    entry.whole = False
                    rows = pick(entry)
                    if rows is None:
                        return None
            entry.checked = now
            if mark is not None and self._local == local:
                entry.mark = (mark, local)
            self._hits += 1
            self._entries.move_to_end(session_id)
            return rows

    def _read_through(
        self,
        session_id: str,
        before: str | None,
        after: str | None,
        count: int | None,
        newest: bool,
    ) -> list[Message]:
        """Read from the backend and keep what the tier can use."""
        with self._lock:
            self._misses += 1
            stamp, local = self._stamp(session_id), self._local
        if self._not_worth_checking():
            # What the tier kept could not serve without a check that does
            # not pay: keep nothing, save the copying.
            return self._timed_read(session_id, before, after, count, newest)
        began = time.monotonic()
        mark = self.backend._change_mark() if self._marking else None
        found = self._timed_read(session_id, before, after, count, newest)
        if not found or after is not None or not (newest or count is None):
            return found

        whole = count is None or len(found) < count
        rows = [_row_of(m, _dumps(m.metadata) if m.metadata else "") for m in found]
        with self._lock:
            if self._stamp(session_id) != stamp:
                return found  # the session changed while it was read
            entry = self._entries.get(session_id)
            if before is None:
                fresh = _Entry(rows, whole, began)
            elif entry is not None and entry.ids and entry.ids[0] == before:
                # A page just older than what the tier holds (a token
                # window reading backwards): the run grows at its start.
                fresh = _Entry(rows + entry.rows, whole, min(began, entry.checked))
                if entry.mark != (mark, local):
                    mark = None  # the older rows were not known current then
            else:
                return found
            if mark is not None and self._local == local:
                fresh.mark = (mark, local)
            self._fill(session_id, fresh)
        return found

    def _timed_read(
        self,
        session_id: str,
        before: str | None,
        after: str | None,
        count: int | None,
        newest: bool,
    ) -> list[Message]:
        began = time.perf_counter()
        found = self.backend._history(session_id, before, after, count, newest)
        spent = time.perf_counter() - began
        with self._lock:
            self._read_cost += (spent - self._read_cost) * COST_WEIGHT
            self._reads += 1
        return found

    def _not_worth_checking(self) -> bool:
        """Return True when a check is expected to cost more than a read.

        A check costs itself, and when it fails the read after it too.
        A check that also buys later reads without one (a while of
        cache_staleness, a change mark) is always worth it, and a backend
        that announces its changes needs none. One call in PROBE_EVERY
        returns False regardless, to keep the measures current.
        """
        if self._staleness is not None or self._marking or self._listeners:
            return False
        if self._checks < COST_SAMPLES or self._reads < COST_SAMPLES:
            return False
        expected = self._check_cost + self._check_fails * self._read_cost
        if expected < self._read_cost:
            return False
        return next(self._probes) % PROBE_EVERY != 0

    def _trusted(self, entry: _Entry, now: float | None = None) -> bool:
        """Return True if the entry may serve without a check.

        It may when the backend announces its changes, or when it was
        known current within ``cache_staleness``.
        """
        if self._listeners is not None:
            return True
        if self._staleness is None:
            return False
        now = time.monotonic() if now is None else now
        return now - entry.checked <= self._staleness

    def _touch(self, session_id: str) -> None:
        # A read served here must still count as a use of the session for
        # the backend's own evict-lru-session budget.
        if self._touching:
            self.backend._touch(session_id)

    def _query(
        self,
        session_id: str | None,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        role: str | None,
        limit: int | None,
    ) -> list[Message]:
        return self.backend._query(session_id, user_id, start, end, role, limit)

    def _sessions(self, user_id: str | None) -> list[str]:
        return self.backend._sessions(user_id)

    def _count(self, session_id: str | None, user_id: str | None) -> int:
        return self.backend._count(session_id, user_id)

    def _session_state(
        self, session_id: str, first: str, last: str, older: bool
    ) -> tuple[int, bool, bool]:
        return self.backend._session_state(session_id, first, last, older)

    # -- deleting ----------------------------------------------------------

    def _delete(self, message_id: str) -> bool:
        try:
            return self.backend._delete(message_id)
        finally:
            with self._lock:
                self._local += 1
                session = self._where.get(message_id)
                if session is None:
                    self._epoch += 1
                else:
                    self._drop(session)
                    self._bump(session)

    def _delete_session(self, session_id: str) -> int:
        try:
            return self.backend._delete_session(session_id)
        finally:
            with self._lock:
                self._local += 1
                self._drop(session_id)
                self._bump(session_id)

    def _delete_user(self, user_id: str) -> int:
        try:
            return self.backend._delete_user(user_id)
        finally:
            with self._lock:
                self._local += 1
                self._drop_user(user_id)

    # -- the backend's announcements (log backends) ------------------------

    def _applied(self, entries: Sequence[tuple[Any, ...]], ahead: bool) -> None:
        """Drop what records applied to the backend's index changed.

        ``entries`` are the log index's (partition, position, entry)
        triples; ``ahead`` marks this store's own writes, which the tier
        learns of from :meth:`_write` instead.
        """
        ns = self.namespace
        with self._lock:
            for _, _, entry in entries:
                kind = entry[0]
                if kind == "m":
                    fields, batch = entry[1], entry[3]
                    if ahead or fields[1] != ns or fields[0] in self._where:
                        continue
                    session = fields[2]
                    if (
                        self._own is not None
                        and fields[0].startswith(self._own)
                        and session not in self._unsettled
                    ):
                        continue
                    if batch is not None:
                        self._await_commit(batch, session)
                    self._drop(session)
                    self._bump(session)
                elif kind == "d":
                    for message_id in entry[1]:
                        session = self._where.get(message_id)
                        if session is not None:
                            self._drop(session)
                            self._bump(session)
                elif kind == "s" and entry[1] == ns:
                    self._drop(entry[2])
                    self._bump(entry[2])
                elif kind == "u" and entry[1] == ns:
                    self._drop_user(entry[2])
                elif kind == "c":
                    for session in self._pending.pop(entry[1], ()):
                        self._drop(session)
                        self._bump(session)

    def _await_commit(self, batch: str, session: str) -> None:
        # A batch shows in the index only at its commit record, which
        # names no session: remember them until it comes.
        self._pending.setdefault(batch, set()).add(session)
        while len(self._pending) > PENDING_BATCHES:
            self._pending.popitem(last=False)

    # -- the tier's own bookkeeping (call with the lock held) --------------

    def _stamp(self, session_id: str) -> tuple[int, int]:
        return self._epoch, self._stripes[hash(session_id) % STRIPES]

    def _bump(self, session_id: str) -> None:
        self._stripes[hash(session_id) % STRIPES] += 1

    def _fill(self, session_id: str, entry: _Entry) -> None:
        self._drop(session_id)
        nbytes = ENTRY_BYTES + sum(_row_bytes(row) for row in entry.rows)
        if not self._reserve(entry, nbytes, session_id):
            return
        self._entries[session_id] = entry
        for message_id in entry.ids:
            self._where[message_id] = session_id

    def _append(self, session_id: str, entry: _Entry, rows: list[Row]) -> None:
        if not self._reserve(entry, sum(_row_bytes(row) for row in rows), session_id):
            self._drop(session_id)
            return
        entry.rows.extend(rows)
        for row in rows:
            entry.ids.append(row[0])
            self._where[row[0]] = session_id
        self._entries.move_to_end(session_id)

    def _reserve(self, entry: _Entry, nbytes: int, keep: str) -> bool:
        """Allocate ``nbytes`` for ``entry``, evicting other sessions."""
        budget = self._tier
        capacity = budget.capacity or 0
        held = sum(a.size for a in entry.allocations)
        if held + nbytes > capacity:
            return False
        while capacity - budget.allocated < nbytes:
            victim = next((s for s in self._entries if s != keep), None)
            if victim is None:
                return False
            self._drop(victim)
            self._evictions += 1
            log.debug("hot tier full: evicted a session for %d bytes", nbytes)
        entry.allocations.append(budget.allocate(nbytes, 0))
        return True

    def _drop(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is None:
            return
        for message_id in entry.ids:
            self._where.pop(message_id, None)
        for allocation in entry.allocations:
            self._tier.release(allocation)
        entry.allocations = []

    def _drop_user(self, user_id: str) -> None:
        # A suffix cannot tell whether older messages of the user were in
        # the session, and a read from the backend may be under way: every
        # read started before this is kept out of the tier.
        self._epoch += 1
        for session in [
            s for s, e in self._entries.items() if any(r[4] == user_id for r in e.rows)
        ]:
            self._drop(session)

    def _expire(self, session_id: str, entry: _Entry) -> _Entry | None:
        """Return the entry without expired messages, or None if none stay.

        Kept messages are cached again, so the budget gets the expired
        ones' bytes back.
        """
        cutoff = self._cutoff()
        if cutoff is None or not any(row[5] < cutoff for row in entry.rows):
            return entry
        kept = [row for row in entry.rows if row[5] >= cutoff]
        self._drop(session_id)
        if not kept:
            return None
        fresh = _Entry(kept, entry.whole, entry.checked)
        self._fill(session_id, fresh)
        return self._entries.get(session_id)

    # -- the rest ----------------------------------------------------------

    def _used_bytes(self) -> int:
        return self.backend._used_bytes()

    def _usage(self) -> tuple[int, int, float]:
        return self.backend._usage()

    def _close(self) -> None:
        if self._listeners is not None and self._applied in self._listeners:
            self._listeners.remove(self._applied)
        with self._lock:
            for session in list(self._entries):
                self._drop(session)
        self.backend.close()

    def _describe(self) -> str:
        return (
            f"{type(self.backend).__name__} {self.backend._describe()} "
            f"cache_bytes={self._tier.capacity}"
        )


def _row_of(message: Message, metadata_json: str) -> Row:
    created = message[5]
    if not isinstance(created, int):
        created = to_micros(created)
    return (
        message[0],
        message[1],
        message[2],
        message[3],
        message[4],
        created,
        metadata_json,
    )


def _row_bytes(row: Row) -> int:
    size = ROW_BYTES + sys.getsizeof(row[0]) + sys.getsizeof(row[3])
    if row[4] is not None:
        size += sys.getsizeof(row[4])
    if row[6]:
        size += sys.getsizeof(row[6])
    return size


def _messages(rows: Sequence[Row]) -> list[Message]:
    # Built as the backends build theirs: one tuple per message, the
    # metadata decoded afresh for each read.
    make, scan = tuple.__new__, scan_json
    return [
        make(Message, (i, s, r, c, u, t, scan(m, 0)[0] if m else {}))
        for i, s, r, c, u, t, m in rows
    ]


def _pick(entry: _Entry, message_id: str) -> list[Row] | None:
    """Return the row of one message if the entry holds it."""
    try:
        return [entry.rows[entry.ids.index(message_id)]]
    except ValueError:
        return None


def _select(
    entry: _Entry,
    before: str | None,
    after: str | None,
    count: int | None,
    newest: bool,
) -> list[Row] | None:
    """Return the rows a history read wants, or None if the tier lacks them.

    The tier holds a suffix of the session: everything after any id it
    holds, and everything before its first id only when ``whole``.
    """
    ids, rows = entry.ids, entry.rows
    low, high = 0, len(ids)
    try:
        if after is not None:
            low = ids.index(after) + 1
        if before is not None:
            high = ids.index(before)
    except ValueError:
        return None
    if high < low:
        return []
    known_start = low > 0 or entry.whole
    if count is None:
        return rows[low:high] if known_start else None
    if newest:
        if high - low >= count:
            return rows[high - count : high]
        return rows[low:high] if known_start else None
    return rows[low : low + count] if known_start else None
