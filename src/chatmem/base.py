"""The two abstract classes every backend fills in.

:class:`BaseMemory` is the generic memory manager: a byte budget, space
allocation in it, ``store`` and ``retrieve`` of messages, and capacity
figures. :class:`BaseChatMessageMemory` adds the chat API: sessions, users,
roles, time, paging, deletion, retention and namespaces.

The public methods are written here once. They check arguments, apply the
budget and retention, and call small private hooks (``_insert``,
``_history``, ``_query`` ...) that each backend implements against its
storage. A backend never re-validates what reaches a hook.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Self

from chatmem.budget import Allocation, Budget, MemoryStats
from chatmem.errors import InvalidMessage, MessageNotFound, StoreClosed
from chatmem.message import (
    ROLES,
    Message,
    Prepared,
    check_id,
    check_time,
    prepare,
    to_micros,
)

__all__ = ["BaseChatMessageMemory", "BaseMemory"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20

# What ``_query`` takes: session, user, start, end, role, limit.
QueryArgs = tuple[
    str | None, str | None, datetime | None, datetime | None, str | None, int | None
]

# Expired messages are purged during writes, at most this often.
PURGE_INTERVAL_SECONDS = 1.0


class BaseMemory(ABC):
    """A byte budget with messages in it.

    Subclasses provide storage; this class provides the budget
    (``capacity_bytes``, :meth:`allocate`, :meth:`release`) and the figures
    people plan capacity with: n = M / s messages of s bytes fit in M bytes
    (:meth:`max_messages`), and n' = n minus what is taken
    (:meth:`remaining_messages`).
    """

    #: Bytes a message costs beyond its content and metadata (headers,
    #: index entries, ids). Each backend states its own.
    message_overhead: int = 64

    def __init__(
        self,
        *,
        capacity_bytes: int | None = None,
        policy: str = "reject",
    ) -> None:
        self._budget = Budget(capacity_bytes, policy)
        self._closed = False

    @property
    def capacity_bytes(self) -> int | None:
        """The byte budget, or None when the store is unbounded."""
        return self._budget.capacity

    @property
    def policy(self) -> str:
        """What a write does when the budget is full."""
        return self._budget.policy

    def allocate(self, size: int) -> Allocation:
        """Reserve ``size`` bytes of the budget.

        Reserved space counts as taken until :meth:`release`. Raises
        :class:`CapacityExceeded` when that much is not free.
        """
        self._check_open()
        return self._budget.allocate(size, self._used_bytes())

    def release(self, allocation: Allocation) -> None:
        """Give back space reserved by :meth:`allocate`."""
        self._check_open()
        self._budget.release(allocation)

    @abstractmethod
    def store(self, message: Message) -> str:
        """Store a message and return its id."""

    @abstractmethod
    def retrieve(self, message_id: str) -> Message:
        """Return the message with this id, or raise MessageNotFound."""

    def stats(self) -> MemoryStats:
        """Return capacity figures for the whole store, all namespaces."""
        self._check_open()
        used, count, fragmentation = self._usage()
        capacity = self._budget.capacity
        allocated = self._budget.allocated
        free = None if capacity is None else capacity - used - allocated
        return MemoryStats(
            capacity_bytes=capacity,
            used_bytes=used,
            allocated_bytes=allocated,
            free_bytes=free,
            message_count=count,
            fragmentation=fragmentation,
            message_overhead=self.message_overhead,
        )

    def max_messages(self, size: int) -> int | None:
        """Return how many messages of ``size`` content bytes the budget holds.

        This is n = M / (s + o) with o the store's per-message overhead, or
        None for an unbounded store.
        """
        return self.stats().max_messages(_check_size(size))

    def remaining_messages(self, size: int) -> int | None:
        """Return how many more messages of ``size`` bytes fit (n')."""
        return self.stats().remaining_messages(_check_size(size))

    def close(self) -> None:
        """Release the store's resources; later calls raise StoreClosed."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(type(self).__name__)

    @abstractmethod
    def _usage(self) -> tuple[int, int, float]:
        """Return (used bytes, message count, fragmentation), all namespaces."""

    @abstractmethod
    def _used_bytes(self) -> int:
        """Return the bytes the budget counts as used."""

    def _close(self) -> None:  # noqa: B027 - most backends need nothing
        """Release backend resources; called once."""


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidMessage(f"A message size must be a whole number >= 0: {size!r}.")
    return size


def _check_count(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidMessage(f"{name} must be a whole number >= 0, not {value!r}.")
    return value


def _check_cursor(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{name} must be a message id string, not {value!r}.")
    return value


class BaseChatMessageMemory(BaseMemory):
    """The chat API over a :class:`BaseMemory`.

    Open one with :func:`chatmem.open`. Messages belong to a session and
    optionally a user; the store assigns their ids and keeps them in the
    order it accepted them.

    >>> import chatmem
    >>> with chatmem.open("memory://") as memory:
    ...     first = memory.add("s1", "user", "Where is my parcel?")
    ...     [m.content for m in memory.history("s1", last=20)]
    ['Where is my parcel?']
    """

    #: True when messages outlive the process.
    persistent: ClassVar[bool] = True

    def __init__(
        self,
        *,
        namespace: str = "",
        capacity_bytes: int | None = None,
        policy: str = "reject",
        retention: timedelta | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(capacity_bytes=capacity_bytes, policy=policy)
        if not isinstance(namespace, str):
            raise InvalidMessage("namespace must be a string.")
        if namespace:
            check_id(namespace, "namespace")
        if retention is not None and (
            not isinstance(retention, timedelta) or retention <= timedelta(0)
        ):
            raise InvalidMessage("retention must be a positive timedelta.")
        if (
            isinstance(max_message_bytes, bool)
            or not isinstance(max_message_bytes, int)
            or max_message_bytes <= 0
        ):
            raise InvalidMessage("max_message_bytes must be a positive integer.")
        self.namespace = namespace
        self.retention = retention
        self.max_message_bytes = max_message_bytes
        self._last_purge = 0.0

    # -- writing ---------------------------------------------------------

    def add(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        created_at: datetime | None = None,
    ) -> Message:
        """Store one message and return it with its id and time.

        Raises :class:`InvalidMessage` for a malformed message and
        :class:`CapacityExceeded` when the budget cannot take it; in both
        cases nothing is stored.
        """
        self._check_open()
        item = self._prepare_one(
            session_id, role, content, user_id, metadata, created_at
        )
        return self._write([item])[0]

    def _prepare_one(
        self,
        session_id: str,
        role: str,
        content: str,
        user_id: str | None,
        metadata: dict[str, Any] | None,
        created_at: datetime | None,
    ) -> Prepared:
        """Check the arguments of :meth:`add`; raise InvalidMessage."""
        # The same checks as add_messages, without building the batch: one
        # add is the call chat applications make most.
        message = tuple.__new__(
            Message,
            (
                None,
                session_id,
                role,
                content,
                user_id,
                created_at,
                {} if metadata is None else metadata,
            ),
        )
        try:
            return prepare(message, self.max_message_bytes, datetime.now(UTC))
        except InvalidMessage as exc:
            raise InvalidMessage(
                f"Message 0 of the batch: {exc} Nothing was stored."
            ) from None

    def add_messages(self, messages: Iterable[Message]) -> list[Message]:
        """Store several messages atomically: all of them or none.

        Ids given on the messages are ignored; the store assigns its own.
        Raises :class:`InvalidMessage` naming the first bad message.
        """
        self._check_open()
        prepared = self._prepare_batch(messages)
        if not prepared:
            return []
        return self._write(prepared)

    def _prepare_batch(self, messages: Iterable[Message]) -> list[Prepared]:
        """Check the messages of :meth:`add_messages`; raise InvalidMessage."""
        now = datetime.now(UTC)
        prepared = []
        for index, message in enumerate(messages):
            try:
                prepared.append(prepare(message, self.max_message_bytes, now))
            except InvalidMessage as exc:
                raise InvalidMessage(
                    f"Message {index} of the batch: {exc} Nothing was stored."
                ) from None
        return prepared

    def store(self, message: Message) -> str:
        """Store a message and return its id (the generic name of add)."""
        stored = self.add_messages([message])[0]
        assert stored.id is not None  # every backend assigns one
        return stored.id

    def _write(self, prepared: list[Prepared]) -> list[Message]:
        with self._transaction():
            if self.retention is not None:
                self._maybe_purge()
            if self._budget.bounded:
                incoming = sum(p.size for p in prepared)
                self._make_room(incoming + self.message_overhead * len(prepared))
            return self._insert(prepared)

    def _make_room(self, incoming: int) -> None:
        budget = self._budget
        short = budget.shortfall(self._used_bytes(), incoming)
        if short:
            self._reclaim(short)
            used = self._used_bytes()
            short = budget.shortfall(used, incoming)
        if not short:
            return
        if budget.policy == "reject":
            raise budget.refuse(used, incoming)
        log.warning("capacity reached: evicting %d bytes (%s)", short, self.policy)
        self._evict(short)

    def _maybe_purge(self) -> None:
        cutoff = self._cutoff()
        if cutoff is None:
            return
        now = time.monotonic()
        if now - self._last_purge >= PURGE_INTERVAL_SECONDS:
            self._last_purge = now
            self._purge(cutoff)

    # -- reading ---------------------------------------------------------

    def get(self, message_id: str) -> Message:
        """Return the message with this id.

        Raises :class:`MessageNotFound` (a ``KeyError``) when no message of
        this namespace has the id.
        """
        self._check_open()
        if not isinstance(message_id, str):
            raise MessageNotFound(repr(message_id))
        found = self._get(message_id)
        if found is None or self._expired(found):
            raise MessageNotFound(message_id)
        return found

    def retrieve(self, message_id: str) -> Message:
        """Return the message with this id (the generic name of get)."""
        return self.get(message_id)

    def history(
        self,
        session_id: str,
        *,
        last: int | None = None,
        limit: int | None = None,
        before: str | None = None,
        after: str | None = None,
    ) -> list[Message]:
        """Return a session's messages in the order the store accepted them.

        ``last=k`` keeps the newest k. ``limit=k`` keeps the earliest k
        from the start or after the ``after`` cursor, and with ``before``
        the latest k just before it. ``before`` and ``after`` are message
        ids of this session. An unknown session gives ``[]``; an unknown
        cursor raises :class:`MessageNotFound`.
        """
        self._check_open()
        before, after, count, newest = self._history_args(
            session_id, last, limit, before, after
        )
        if count == 0:
            for cursor in (before, after):
                if cursor is not None:
                    self._cursor_check(session_id, cursor)
            return []
        return self._history(session_id, before, after, count, newest)

    def _history_args(
        self,
        session_id: str,
        last: int | None,
        limit: int | None,
        before: str | None,
        after: str | None,
    ) -> tuple[str | None, str | None, int | None, bool]:
        """Check the arguments of :meth:`history`.

        Return what ``_history`` takes: (before, after, count, newest).
        """
        check_id(session_id, "session id")
        last = _check_count(last, "last")
        limit = _check_count(limit, "limit")
        before = _check_cursor(before, "before")
        after = _check_cursor(after, "after")
        if last is not None and limit is not None:
            raise InvalidMessage("Pass last or limit, not both.")

        count = last if last is not None else limit
        newest = last is not None or (limit is not None and before is not None)
        return before, after, count, newest

    def _cursor_check(self, session_id: str, cursor: str) -> None:
        found = self._get(cursor)
        if found is None or found.session_id != session_id:
            raise MessageNotFound(cursor)

    def query(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        role: str | None = None,
        limit: int | None = None,
    ) -> list[Message]:
        """Return messages matching every filter given, ordered by time.

        ``start`` is inclusive and ``end`` exclusive; both must be
        timezone-aware. Ties in ``created_at`` keep acceptance order.
        ``limit`` keeps the earliest matches. A reversed or naive range
        raises ``ValueError`` (:class:`InvalidMessage`).
        """
        self._check_open()
        args = self._query_args(session_id, user_id, start, end, role, limit)
        if args is None:
            return []
        return self._query(*args)

    def _query_args(
        self,
        session_id: str | None,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        role: str | None,
        limit: int | None,
    ) -> QueryArgs | None:
        """Check the filters of :meth:`query`; None when nothing can match.

        Return the arguments of ``_query``, retention applied to ``start``.
        """
        if session_id is not None:
            check_id(session_id, "session id")
        if user_id is not None:
            check_id(user_id, "user id")
        if role is not None and role not in ROLES:
            raise InvalidMessage(f"Unknown role {role!r}.")
        start = None if start is None else check_time(start, "start")
        end = None if end is None else check_time(end, "end")
        if start is not None and end is not None and end < start:
            raise InvalidMessage(
                f"The time range is reversed: end {end.isoformat()} is "
                f"before start {start.isoformat()}."
            )
        limit = _check_count(limit, "limit")
        if limit == 0:
            return None

        cutoff = self._cutoff_time()
        if cutoff is not None and (start is None or start < cutoff):
            start = cutoff
        return session_id, user_id, start, end, role, limit

    def sessions(self, user_id: str | None = None) -> list[str]:
        """Return the ids of sessions holding messages, sorted.

        With ``user_id``, only sessions where that user wrote.
        """
        self._check_open()
        if user_id is not None:
            check_id(user_id, "user id")
        return self._sessions(user_id)

    def count(
        self, *, session_id: str | None = None, user_id: str | None = None
    ) -> int:
        """Return how many messages match the filters in this namespace."""
        self._check_open()
        if session_id is not None:
            check_id(session_id, "session id")
        if user_id is not None:
            check_id(user_id, "user id")
        return self._count(session_id, user_id)

    def history_window(
        self,
        session_id: str,
        max_tokens: int,
        *,
        token_counter: Callable[[Message], int] | None = None,
        keep_system: bool = True,
    ) -> list[Message]:
        """Return the newest messages of a session that fit ``max_tokens``.

        The window is in acceptance order and never separates an assistant
        message that calls tools (metadata ``tool_calls``) from the tool
        results answering it (``tool_call_id``). With ``keep_system`` the
        session's first system message opens it and is paid for first.
        ``token_counter`` maps a message to its tokens; the default,
        :func:`chatmem.window.estimate_tokens`, needs no download. The
        session is read backwards in pages, only as far as the budget
        reaches. Raises :class:`InvalidMessage` for a bad argument.
        """
        from chatmem.window import history_window

        return history_window(
            self,
            session_id,
            max_tokens,
            token_counter=token_counter,
            keep_system=keep_system,
        )

    # -- deleting --------------------------------------------------------

    def delete(self, message_id: str) -> None:
        """Delete one message; raises MessageNotFound if it is not here."""
        self._check_open()
        if not isinstance(message_id, str) or not self._delete(message_id):
            raise MessageNotFound(str(message_id))

    def delete_session(self, session_id: str) -> int:
        """Delete every message of a session; return how many went."""
        self._check_open()
        check_id(session_id, "session id")
        return self._delete_session(session_id)

    def delete_user(self, user_id: str) -> int:
        """Delete every message with this user id; return how many went.

        This is the right to erasure: the user's messages in every session
        of this namespace.
        """
        self._check_open()
        check_id(user_id, "user id")
        return self._delete_user(user_id)

    def __enter__(self) -> Self:
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._describe()}>"

    # -- retention -------------------------------------------------------

    def _cutoff_time(self) -> datetime | None:
        if self.retention is None:
            return None
        return datetime.now(UTC) - self.retention

    def _cutoff(self) -> int | None:
        """Return the retention cutoff in epoch microseconds, or None."""
        cutoff = self._cutoff_time()
        if cutoff is None:
            return None
        return to_micros(cutoff)

    def _expired(self, message: Message) -> bool:
        cutoff = self._cutoff_time()
        created = message.created_at
        return cutoff is not None and created is not None and created < cutoff

    # -- hooks -----------------------------------------------------------

    def _describe(self) -> str:
        """Return a short description for repr, never with credentials."""
        return f"namespace={self.namespace!r}"

    def _touch(self, session_id: str) -> None:
        """Mark a session used, for ``evict-lru-session``.

        A hot tier that served a read without the backend calls it, so the
        read still counts as a use; a store without that policy needs
        nothing here.
        """

    def _session_state(
        self, session_id: str, first: str, last: str, older: bool
    ) -> tuple[int, bool, bool]:
        """Return what a hot tier needs to check its copy of a session.

        The copy is the run of the session's messages from ``first`` to
        ``last``, as ``history`` returns them (retention applied). Return
        how many messages the session holds from ``first`` on, whether
        one follows ``last`` (or ``last`` is gone), and, when ``older``
        asks, whether one precedes ``first`` (else False); 0 messages
        when ``first`` is gone. This default asks ``_history``; a backend
        overrides it with one cheap read.
        """
        try:
            rest = self._history(session_id, None, first, None, False)
        except MessageNotFound:
            return 0, True, True
        newer = bool(rest) and rest[-1].id != last
        if not rest and first != last:
            newer = True
        before = older and bool(self._history(session_id, first, None, 1, True))
        return 1 + len(rest), newer, before

    def _change_mark(self) -> Hashable | None:
        """Return a value that changes when another writer commits.

        "Another" is any writer but this store on the calling thread: an
        equal value on the same thread later means only this store wrote
        since. A hot tier that sees an equal value skips its per-session
        check. None (the default) means the backend cannot tell cheaply.
        """
        return None

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]:
        """Return a context in which a write is atomic and isolated."""

    @abstractmethod
    def _insert(self, prepared: Sequence[Prepared]) -> list[Message]:
        """Store checked messages atomically; return them with ids."""

    @abstractmethod
    def _evict(self, nbytes: int) -> None:
        """Free ``nbytes`` of this namespace by the policy, or raise
        CapacityExceeded when the namespace holds too little."""

    def _reclaim(self, nbytes: int) -> None:
        """Free space held by deleted messages, if the store keeps any.

        Called before a full budget rejects or evicts; a store whose
        deletes free space at once needs nothing here.
        """

    @abstractmethod
    def _purge(self, cutoff: int) -> None:
        """Delete this namespace's messages created before ``cutoff``."""

    @abstractmethod
    def _get(self, message_id: str) -> Message | None:
        """Return the message or None; no retention filter needed."""

    @abstractmethod
    def _history(
        self,
        session_id: str,
        before: str | None,
        after: str | None,
        count: int | None,
        newest: bool,
    ) -> list[Message]:
        """Return the session's messages strictly between the cursors, in
        acceptance order: the newest ``count`` when ``newest``, else the
        earliest. Raise MessageNotFound for a cursor not in the session.
        Apply retention."""

    @abstractmethod
    def _query(
        self,
        session_id: str | None,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        role: str | None,
        limit: int | None,
    ) -> list[Message]:
        """Return matches ordered by (created_at, acceptance order)."""

    @abstractmethod
    def _sessions(self, user_id: str | None) -> list[str]:
        """Return sorted session ids with live messages."""

    @abstractmethod
    def _count(self, session_id: str | None, user_id: str | None) -> int:
        """Return the number of live messages matching."""

    @abstractmethod
    def _delete(self, message_id: str) -> bool:
        """Delete one message; return False if it was not there."""

    @abstractmethod
    def _delete_session(self, session_id: str) -> int:
        """Delete a session's messages; return how many."""

    @abstractmethod
    def _delete_user(self, user_id: str) -> int:
        """Delete a user's messages; return how many."""


def iter_batches(items: Iterable[Message], size: int) -> Iterator[list[Message]]:
    """Yield lists of at most ``size`` messages."""
    batch: list[Message] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
