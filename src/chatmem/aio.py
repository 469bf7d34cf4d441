"""The chat API as coroutines, for applications that run on asyncio.

Open a store with :func:`chatmem.open_async` and await its methods; they
have the names, arguments, results and errors of
:class:`~chatmem.BaseChatMessageMemory`::

    memory = await chatmem.open_async("sqlite:///chat.db")
    async with memory:
        await memory.add("s1", "user", "Where is my parcel?")
        prompt = await memory.history_window("s1", 4000)

How calls run
-------------
By default each call runs the synchronous store's method in a worker
thread (``asyncio.to_thread``, so on the loop's default executor) and
the event loop keeps serving other tasks meanwhile. A per-store
semaphore bounds how many calls run at once (``max_concurrency``,
default 4); more wait their turn in the loop, not in threads. Every
backend is safe to call from several threads.

Threads rather than a process pool or an in-loop client: the work is
I/O or C code that releases the GIL (SQLite, socket reads), the stores
hold connections that cannot cross processes, and one implementation
serves every backend.

A call cancelled while it runs in its thread still finishes there: a
cancelled write may have been stored. Awaiting the same call again is
not a safe retry for writes; read the session to find out.

Native backends
---------------
A backend whose client speaks asyncio can serve the coroutines itself.
The hook is a classmethod on the backend class::

    class RedisMemory(BaseChatMessageMemory):
        @classmethod
        async def open_async(
            cls, url: str, *, max_concurrency: int, **options: Any
        ) -> AsyncChatMemory:
            ...

:func:`open_async` calls it when the URL's backend class has one. It
returns an :class:`AsyncChatMemory` subclass that overrides the methods
it serves natively and passes its synchronous twin to
``AsyncChatMemory.__init__``, so every method it does not override keeps
working through the thread offload. Closing waits for the offloaded
calls, then for ``_close_native`` (the native calls in flight and the
native client), then closes the twin.

Stores whose reads are plans (:class:`PlannedReads`) get their native
face from :class:`NativeChatMemory`, which runs those plans with an
asyncio client; its calls are bounded by that client's pool, not by
``max_concurrency``. Like every asyncio client's connections, a native
store belongs to the event loop that opened it: open one per loop.

Redis is native for writes, reads, counts and deletes: redis.asyncio
runs the synchronous store's own operation plans (see
:mod:`chatmem.backends._redis_async`). PostgreSQL is native for reads
(``get``, ``history``, ``query``, ``sessions``, ``count``) on psycopg's
asyncio pool (:mod:`chatmem.backends._postgres_async`); its writes and
deletes stay on the thread offload, because a bounded store's write is
one transaction of several pipelined statements that are not plans
yet.

The others stay on the thread offload. Memory and sqlite do in-process
work that a thread serves as well as a loop could. Kafka's reads come
from the local index with no broker round trip, and confluent_kafka.aio
(2.16) runs produce and poll in a thread pool of its own, so it would
trade one thread hop for another. RabbitMQ's rstream client is asyncio
inside, but chatmem drives it from its own loop thread, so the offload
is the one hop it needs. A store opened with ``cache_bytes`` (a hot
tier) is offloaded whatever its backend: the tier's cache lives in the
synchronous store, and native reads would go around it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Generator, Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, TypeVar

from chatmem.base import BaseChatMessageMemory, QueryArgs
from chatmem.budget import Allocation, MemoryStats
from chatmem.errors import InvalidMessage, MessageNotFound, StoreClosed
from chatmem.message import Message, check_id
from chatmem.registry import backend_class, open_url

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "AsyncChatMemory",
    "NativeChatMemory",
    "open_async",
]

log = logging.getLogger(__name__)

#: Calls of one store that run at once in worker threads.
DEFAULT_MAX_CONCURRENCY = 4

T = TypeVar("T")


class AsyncChatMemory:
    """A chat memory store whose methods are coroutines.

    Wraps a synchronous :class:`~chatmem.BaseChatMessageMemory` and runs
    its calls in worker threads, at most ``max_concurrency`` at a time.
    Closing it closes the store it wraps.

    >>> import asyncio, chatmem
    >>> async def main() -> list[str]:
    ...     async with await chatmem.open_async("memory://") as memory:
    ...         await memory.add("s1", "user", "hi")
    ...         return [m.content for m in await memory.history("s1")]
    >>> asyncio.run(main())
    ['hi']
    """

    def __init__(
        self,
        memory: BaseChatMessageMemory,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        if not isinstance(memory, BaseChatMessageMemory):
            raise TypeError(
                "AsyncChatMemory wraps a chatmem store (chatmem.open(...)), "
                f"not {type(memory).__name__}."
            )
        _check_concurrency(max_concurrency)
        self._memory = memory
        self._max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._closing = False

    @property
    def sync(self) -> BaseChatMessageMemory:
        """The synchronous store behind this one (same data, same handle)."""
        return self._memory

    @property
    def max_concurrency(self) -> int:
        """How many calls of this store run at once in worker threads."""
        return self._max_concurrency

    # Plain attributes: no I/O, so no coroutine.

    @property
    def namespace(self) -> str:
        """The namespace this store reads and writes."""
        return self._memory.namespace

    @property
    def capacity_bytes(self) -> int | None:
        """The byte budget, or None when the store is unbounded."""
        return self._memory.capacity_bytes

    @property
    def policy(self) -> str:
        """What a write does when the budget is full."""
        return self._memory.policy

    @property
    def retention(self) -> timedelta | None:
        """How long messages are kept, or None for ever."""
        return self._memory.retention

    @property
    def max_message_bytes(self) -> int:
        """The largest content or metadata a message may have, in bytes."""
        return self._memory.max_message_bytes

    @property
    def persistent(self) -> bool:
        """True when messages outlive the process."""
        return self._memory.persistent

    @property
    def message_overhead(self) -> int:
        """Bytes a message costs beyond its content and metadata."""
        return self._memory.message_overhead

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a method of the synchronous store in a worker thread."""
        if self._closing:
            raise StoreClosed(type(self._memory).__name__)
        async with self._slots:
            return await asyncio.to_thread(call, *args, **kwargs)

    # -- writing ---------------------------------------------------------

    async def add(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        created_at: datetime | None = None,
    ) -> Message:
        """Store one message; see :meth:`BaseChatMessageMemory.add`."""
        return await self._run(
            self._memory.add,
            session_id,
            role,
            content,
            user_id=user_id,
            metadata=metadata,
            created_at=created_at,
        )

    async def add_messages(self, messages: Iterable[Message]) -> list[Message]:
        """Store several messages atomically: all of them or none."""
        # Drained here: a generator may close over the caller's state.
        batch = list(messages)
        return await self._run(self._memory.add_messages, batch)

    async def store(self, message: Message) -> str:
        """Store a message and return its id."""
        return await self._run(self._memory.store, message)

    # -- reading ---------------------------------------------------------

    async def get(self, message_id: str) -> Message:
        """Return the message with this id, or raise MessageNotFound."""
        return await self._run(self._memory.get, message_id)

    async def retrieve(self, message_id: str) -> Message:
        """Return the message with this id (the generic name of get)."""
        return await self._run(self._memory.retrieve, message_id)

    async def history(
        self,
        session_id: str,
        *,
        last: int | None = None,
        limit: int | None = None,
        before: str | None = None,
        after: str | None = None,
    ) -> list[Message]:
        """Return a session's messages in the order the store accepted them."""
        return await self._run(
            self._memory.history,
            session_id,
            last=last,
            limit=limit,
            before=before,
            after=after,
        )

    async def history_window(
        self,
        session_id: str,
        max_tokens: int,
        *,
        token_counter: Callable[[Message], int] | None = None,
        keep_system: bool = True,
    ) -> list[Message]:
        """Return the newest messages that fit ``max_tokens``.

        See :meth:`BaseChatMessageMemory.history_window`; the token counter
        runs in the worker thread.
        """
        return await self._run(
            self._memory.history_window,
            session_id,
            max_tokens,
            token_counter=token_counter,
            keep_system=keep_system,
        )

    async def query(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        role: str | None = None,
        limit: int | None = None,
    ) -> list[Message]:
        """Return messages matching every filter, ordered by time."""
        return await self._run(
            self._memory.query,
            session_id=session_id,
            user_id=user_id,
            start=start,
            end=end,
            role=role,
            limit=limit,
        )

    async def sessions(self, user_id: str | None = None) -> list[str]:
        """Return the ids of sessions holding messages, sorted."""
        return await self._run(self._memory.sessions, user_id)

    async def count(
        self, *, session_id: str | None = None, user_id: str | None = None
    ) -> int:
        """Return how many messages match the filters in this namespace."""
        return await self._run(
            self._memory.count, session_id=session_id, user_id=user_id
        )

    # -- deleting --------------------------------------------------------

    async def delete(self, message_id: str) -> None:
        """Delete one message; raises MessageNotFound if it is not here."""
        await self._run(self._memory.delete, message_id)

    async def delete_session(self, session_id: str) -> int:
        """Delete every message of a session; return how many went."""
        return await self._run(self._memory.delete_session, session_id)

    async def delete_user(self, user_id: str) -> int:
        """Delete every message with this user id; return how many went."""
        return await self._run(self._memory.delete_user, user_id)

    # -- budget ----------------------------------------------------------

    async def allocate(self, size: int) -> Allocation:
        """Reserve ``size`` bytes of the budget, or raise CapacityExceeded."""
        return await self._run(self._memory.allocate, size)

    async def release(self, allocation: Allocation) -> None:
        """Give back space reserved by :meth:`allocate`."""
        await self._run(self._memory.release, allocation)

    async def stats(self) -> MemoryStats:
        """Return capacity figures for the whole store, all namespaces."""
        return await self._run(self._memory.stats)

    async def max_messages(self, size: int) -> int | None:
        """Return how many messages of ``size`` content bytes the budget holds."""
        return await self._run(self._memory.max_messages, size)

    async def remaining_messages(self, size: int) -> int | None:
        """Return how many more messages of ``size`` bytes fit (n')."""
        return await self._run(self._memory.remaining_messages, size)

    # -- lifecycle -------------------------------------------------------

    async def close(self) -> None:
        """Close the store; later calls raise StoreClosed.

        Calls already running finish first; the store closes in a worker
        thread because closing may flush or wait for a server.
        """
        if self._closing:
            return
        self._closing = True
        # Taking every slot waits for the calls in flight to finish.
        taken = 0
        try:
            for _ in range(self._max_concurrency):
                await self._slots.acquire()
                taken += 1
            await self._close_native()
            await asyncio.to_thread(self._memory.close)
        finally:
            for _ in range(taken):
                self._slots.release()

    async def _close_native(self) -> None:
        """Wait for native calls in flight and close the native client.

        A native face overrides this; the thread offload has nothing here.
        """

    async def __aenter__(self) -> AsyncChatMemory:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._memory!r}>"


#: A backend operation as a generator: it yields requests (commands,
#: statements), receives their replies and returns the result.
Plan = Generator[Any, Any, T]


class PlannedReads(Protocol):
    """What a store offers a native face: its reads written as plans.

    Each plan takes the arguments of the hook of the same name without
    ``_plan`` (``_get``, ``_history`` ...), already checked, and returns
    what that hook returns.
    """

    def _get_plan(self, message_id: str) -> Plan[Message | None]: ...

    def _history_plan(
        self,
        session_id: str,
        before: str | None,
        after: str | None,
        count: int | None,
        newest: bool,
    ) -> Plan[list[Message]]: ...

    def _query_plan(
        self,
        session_id: str | None,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        role: str | None,
        limit: int | None,
    ) -> Plan[list[Message]]: ...

    def _sessions_plan(self, user_id: str | None) -> Plan[list[str]]: ...

    def _count_plan(self, session_id: str | None, user_id: str | None) -> Plan[int]: ...


class NativeChatMemory(AsyncChatMemory):
    """A store whose reads run on the event loop, with an asyncio client.

    The synchronous store writes its reads as plans (generators that
    yield requests and receive replies, see :class:`PlannedReads`) and
    runs them itself with its blocking client; a subclass runs the same
    plans by implementing :meth:`_send` with the asyncio client of the
    same server. The checks are the synchronous store's own, so the
    results and errors are the same. Writes and the other methods stay
    on the thread offload unless the subclass serves them too.
    """

    def __init__(
        self,
        memory: BaseChatMessageMemory,
        plans: PlannedReads,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        super().__init__(memory, max_concurrency=max_concurrency)
        self._plans = plans
        self._in_flight = 0
        self._settled = asyncio.Event()
        self._settled.set()

    async def _send(self, request: Any) -> Any:
        """Send one request of a plan with the asyncio client; its reply."""
        raise NotImplementedError

    async def _close_client(self) -> None:
        """Close the asyncio client, once no native call is in flight."""

    def _check(self) -> None:
        if self._closing:
            raise StoreClosed(type(self._memory).__name__)
        self._memory._check_open()

    async def _drive(self, plan: Plan[T]) -> T:
        """Run a plan's requests in turn; return what the plan returns."""
        self._in_flight += 1
        self._settled.clear()
        try:
            request = next(plan)
            while True:
                request = plan.send(await self._send(request))
        except StopIteration as done:
            result: T = done.value
            return result
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._settled.set()

    async def _close_native(self) -> None:
        await self._settled.wait()
        await self._close_client()

    # -- reading ---------------------------------------------------------

    async def get(self, message_id: str) -> Message:
        """Return the message with this id, or raise MessageNotFound."""
        self._check()
        if not isinstance(message_id, str):
            raise MessageNotFound(repr(message_id))
        found = await self._drive(self._plans._get_plan(message_id))
        if found is None or self._memory._expired(found):
            raise MessageNotFound(message_id)
        return found

    async def retrieve(self, message_id: str) -> Message:
        """Return the message with this id (the generic name of get)."""
        return await self.get(message_id)

    async def history(
        self,
        session_id: str,
        *,
        last: int | None = None,
        limit: int | None = None,
        before: str | None = None,
        after: str | None = None,
    ) -> list[Message]:
        """Return a session's messages in the order the store accepted them."""
        self._check()
        before, after, count, newest = self._memory._history_args(
            session_id, last, limit, before, after
        )
        if count == 0:
            for cursor in (before, after):
                if cursor is not None:
                    found = await self._drive(self._plans._get_plan(cursor))
                    if found is None or found.session_id != session_id:
                        raise MessageNotFound(cursor)
            return []
        plan = self._plans._history_plan(session_id, before, after, count, newest)
        return await self._drive(plan)

    async def query(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        role: str | None = None,
        limit: int | None = None,
    ) -> list[Message]:
        """Return messages matching every filter, ordered by time."""
        self._check()
        args: QueryArgs | None = self._memory._query_args(
            session_id, user_id, start, end, role, limit
        )
        if args is None:
            return []
        return await self._drive(self._plans._query_plan(*args))

    async def sessions(self, user_id: str | None = None) -> list[str]:
        """Return the ids of sessions holding messages, sorted."""
        self._check()
        if user_id is not None:
            check_id(user_id, "user id")
        return await self._drive(self._plans._sessions_plan(user_id))

    async def count(
        self, *, session_id: str | None = None, user_id: str | None = None
    ) -> int:
        """Return how many messages match the filters in this namespace."""
        self._check()
        if session_id is not None:
            check_id(session_id, "session id")
        if user_id is not None:
            check_id(user_id, "user id")
        return await self._drive(self._plans._count_plan(session_id, user_id))


async def open_async(
    url: str | None = None,
    *,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    **options: Any,
) -> AsyncChatMemory:
    """Open a chat memory store whose methods are coroutines.

    Takes the URL and options of :func:`chatmem.open` (without a URL,
    ``CHATMEM_URL`` or the embedded default) and raises the same errors.
    ``max_concurrency`` bounds the calls that run at once in worker
    threads; a native backend bounds its own calls (see the module
    docstring). Opening runs in a worker thread too, since it may connect to
    a server or create a file. A backend with a native ``open_async``
    classmethod (see the module docstring) is opened through it, unless
    ``cache_bytes`` asks for a hot tier, which runs on the offload.
    """
    _check_concurrency(max_concurrency)
    if url is None:
        from chatmem import DEFAULT_URL

        url = os.environ.get("CHATMEM_URL") or DEFAULT_URL

    native = None
    # A hot tier is an in-process cache in front of the synchronous store:
    # native reads would go around it, so a tiered store is offloaded.
    if options.get("cache_bytes") is None and options.get("cache_staleness") is None:
        native = await asyncio.to_thread(_native_opener, url)
    if native is not None:
        log.debug("opening a %s store natively", url.split("://", 1)[0])
        opened = await native(url, max_concurrency=max_concurrency, **options)
        if not isinstance(opened, AsyncChatMemory):
            raise TypeError(
                "A backend's open_async must return an AsyncChatMemory, not "
                f"{type(opened).__name__}."
            )
        return opened

    store = await asyncio.to_thread(functools.partial(open_url, url, **options))
    return AsyncChatMemory(store, max_concurrency=max_concurrency)


def _check_concurrency(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidMessage(
            f"max_concurrency must be a whole number >= 1, not {value!r}."
        )


def _native_opener(url: str) -> Callable[..., Any] | None:
    # A malformed URL gets no opener here and the same error as
    # chatmem.open from open_url; importing the backend module runs in
    # the worker thread because some clients take a while to import.
    if not isinstance(url, str) or "://" not in url:
        return None
    cls = backend_class(url.split("://", 1)[0].lower())
    opener: Callable[..., Any] | None = getattr(cls, "open_async", None)
    return opener
