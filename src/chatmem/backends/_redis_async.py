"""The asyncio face of RedisMemory, served by redis.asyncio.

:func:`chatmem.open_async` opens a ``redis://`` URL here. The face runs
the synchronous store's own operation plans (see ``RedisMemory._drive``)
on an asyncio connection pool with hiredis' parser: the same commands,
Lua functions, key scheme, checks, errors and retries, with the waits on
the event loop instead of in a thread.

Served natively: ``add``, ``add_messages``, ``store``, ``get``,
``retrieve``, ``history``, ``query``, ``sessions``, ``count``,
``delete``, ``delete_session`` and ``delete_user``. The rest
(``history_window``, ``allocate``, ``release``, ``stats``,
``max_messages``, ``remaining_messages``) run on the synchronous twin
in worker threads: the window's token counter is the caller's code,
which may be slow, and the budget figures are rare calls.

Native calls are not bounded by ``max_concurrency``: at most
``max_connections`` commands are in flight at once, and a command waits
up to ``timeout`` for its turn. The bound is a semaphore in front of a
pool that never blocks, rather than redis.asyncio's blocking pool,
whose condition wakes waiters in no fixed order: under 64 tasks it gave
calls a tail of hundreds of milliseconds.

Each write in flight takes its own writer id for its ticket, since tasks
on one thread interleave where threads do not.

A batch's encoding and a long history's decoding run on the loop's
thread, as every asyncio client's parsing does: a few microseconds a
message, so a call reading 20,000 messages holds the loop for tens of
milliseconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import (
    Connection,
    ConnectionPool,
    SSLConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from chatmem.aio import NativeChatMemory
from chatmem.backends.redis import (
    LIBRARY,
    RedisMemory,
    already_loaded,
    library_missing,
    mark_retry,
    parse_url,
    pool_options,
)
from chatmem.errors import MessageNotFound
from chatmem.message import Message, check_id

__all__ = ["AsyncRedisMemory", "open_redis"]


async def open_redis(
    cls: type[RedisMemory], url: str, *, max_concurrency: int, **options: Any
) -> AsyncRedisMemory:
    """Open a ``redis://`` URL for asyncio; the errors of chatmem.open.

    The synchronous twin opens first, in a worker thread: it checks the
    server's version and loads the function library, and it serves the
    methods that are not native.
    """
    memory = await asyncio.to_thread(cls.from_url, url, **options)
    try:
        settings = parse_url(url)
        options = pool_options(
            host=settings["host"],
            port=settings["port"],
            db=settings["db"],
            username=settings["username"],
            password=settings["password"],
            timeout=memory.timeout,
            max_connections=memory.max_connections,
        )
        del options["timeout"]  # the wait for a connection is the face's
        pool = ConnectionPool(
            connection_class=SSLConnection if settings["tls"] else Connection,
            # As in the blocking pool: chatmem retries, with tickets.
            retry=Retry(NoBackoff(), 0),
            **options,
        )
        return AsyncRedisMemory(memory, pool, max_concurrency=max_concurrency)
    except BaseException:
        await asyncio.to_thread(memory.close)
        raise


class AsyncRedisMemory(NativeChatMemory):
    """A :class:`~chatmem.backends.redis.RedisMemory` whose methods are
    coroutines served on the event loop; see the module docstring."""

    def __init__(
        self,
        memory: RedisMemory,
        pool: ConnectionPool,
        *,
        max_concurrency: int,
    ) -> None:
        super().__init__(memory, memory, max_concurrency=max_concurrency)
        self._redis = memory
        self._pool = pool
        self._client = Redis(connection_pool=pool)
        self._connections = asyncio.Semaphore(memory.max_connections)
        self._writers: list[_Writer] = []

    # -- talking to the server -------------------------------------------

    async def _send(self, request: list[Any]) -> Any:
        begun = time.monotonic()
        attempt = 0
        while True:
            try:
                return await self._execute(request)
            except RedisError as exc:
                attempt += 1
                delay = self._redis._retry_delay(exc, attempt, begun)
            await asyncio.sleep(delay)
            mark_retry(request)

    async def _execute(self, request: list[Any]) -> Any:
        connections = self._connections
        if connections.locked():
            try:
                async with asyncio.timeout(self._redis.timeout):
                    await connections.acquire()
            except TimeoutError:
                raise RedisConnectionError("No connection available.") from None
        else:
            await connections.acquire()  # free: returns at once
        try:
            return await self._execute_now(request)
        finally:
            connections.release()

    async def _execute_now(self, request: list[Any]) -> Any:
        execute: Callable[..., Awaitable[Any]] = self._client.execute_command
        try:
            return await execute(*request)
        except ResponseError as exc:
            if not library_missing(request, exc):
                raise
        try:
            await execute("FUNCTION LOAD", LIBRARY)
        except ResponseError as exc:
            if not already_loaded(exc):
                raise
        return await execute(*request)

    async def _close_client(self) -> None:
        await self._client.aclose()
        await self._pool.disconnect()

    async def _write(self, prepared: list[Any]) -> list[Message]:
        memory = self._redis
        room, incoming = memory._room(prepared)
        if not memory.retries:
            return await self._drive(memory._store(prepared, room, incoming, "", ""))
        writer = self._writers.pop() if self._writers else _Writer()
        writer.number += 1
        try:
            plan = memory._store(
                prepared, room, incoming, writer.id, str(writer.number)
            )
            return await self._drive(plan)
        finally:
            self._writers.append(writer)

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
        self._check()
        item = self._redis._prepare_one(
            session_id, role, content, user_id, metadata, created_at
        )
        return (await self._write([item]))[0]

    async def add_messages(self, messages: Iterable[Message]) -> list[Message]:
        """Store several messages atomically: all of them or none."""
        self._check()
        prepared = self._redis._prepare_batch(messages)
        if not prepared:
            return []
        return await self._write(prepared)

    async def store(self, message: Message) -> str:
        """Store a message and return its id."""
        stored = (await self.add_messages([message]))[0]
        assert stored.id is not None  # the store assigns one
        return stored.id

    # -- deleting --------------------------------------------------------

    async def delete(self, message_id: str) -> None:
        """Delete one message; raises MessageNotFound if it is not here."""
        self._check()
        if not isinstance(message_id, str) or not await self._drive(
            self._redis._delete_plan(message_id)
        ):
            raise MessageNotFound(str(message_id))

    async def delete_session(self, session_id: str) -> int:
        """Delete every message of a session; return how many went."""
        self._check()
        check_id(session_id, "session id")
        return await self._drive(self._redis._delete_session_plan(session_id))

    async def delete_user(self, user_id: str) -> int:
        """Delete every message with this user id; return how many went."""
        self._check()
        check_id(user_id, "user id")
        return await self._drive(self._redis._delete_user_plan(user_id))


class _Writer:
    """A writer id for tickets and the number of its latest write."""

    __slots__ = ("id", "number")

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.number = 0
