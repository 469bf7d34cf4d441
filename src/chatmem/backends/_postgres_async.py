"""The asyncio face of PostgresMemory: its reads on psycopg's asyncio pool.

:func:`chatmem.open_async` opens a ``postgresql://`` URL here. The face
runs the synchronous store's own read plans (see
``PostgresMemory._drive``) on a ``psycopg_pool.AsyncConnectionPool``
with the store's connection settings: the same statements, parameters,
row decoding, checks, errors and read retries, with the waits on the
event loop instead of in a thread.

Served natively: ``get``, ``retrieve``, ``history``, ``query``,
``sessions`` and ``count``. Writes and deletes run on the synchronous
twin in worker threads, bounded by ``max_concurrency``: a bounded
store's write is one transaction of several statements (the advisory
lock, the pending marks of use, the budget check, any eviction, the
insert and its commit in one pipeline) whose steps are not plans yet.
A native read holds one of the asyncio pool's ``pool_size``
connections; the twin's writes use a pool of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from chatmem.aio import NativeChatMemory
from chatmem.backends.postgres import PostgresMemory, _alive
from chatmem.errors import StoreClosed

__all__ = ["AsyncPostgresMemory", "open_postgres"]

log = logging.getLogger(__name__)


async def open_postgres(
    cls: type[PostgresMemory], url: str, *, max_concurrency: int, **options: Any
) -> AsyncPostgresMemory:
    """Open a ``postgresql://`` URL for asyncio; the errors of chatmem.open.

    The synchronous twin opens first, in a worker thread: it creates the
    tables if needed and serves the methods that are not native.
    """
    memory = await asyncio.to_thread(cls.from_url, url, **options)
    try:
        pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] = (
            AsyncConnectionPool(**memory._pool_options())
        )
        try:
            await pool.open(wait=True, timeout=memory.timeout)
        except PoolTimeout:
            await pool.close()
            raise memory._no_connection() from None
        return AsyncPostgresMemory(memory, pool, max_concurrency=max_concurrency)
    except BaseException:
        await asyncio.to_thread(memory.close)
        raise


class AsyncPostgresMemory(NativeChatMemory):
    """A :class:`~chatmem.backends.postgres.PostgresMemory` whose reads are
    served on the event loop; see the module docstring."""

    def __init__(
        self,
        memory: PostgresMemory,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]],
        *,
        max_concurrency: int,
    ) -> None:
        super().__init__(memory, memory, max_concurrency=max_concurrency)
        self._postgres = memory
        self._pool = pool

    async def _send(self, request: tuple[str, Sequence[Any]]) -> Any:
        sql, params = request
        memory = self._postgres
        deadline = time.monotonic() + memory.timeout
        attempt = 0
        while True:
            conn = await self._acquire(deadline)
            try:
                cursor = await conn.execute(sql, params, binary=True)
                return await cursor.fetchall()
            except psycopg.OperationalError as exc:
                if memory._retry_read(conn.broken, attempt, deadline):
                    attempt += 1
                    continue
                raise memory._wrap(exc) from exc
            except psycopg.Error as exc:
                raise memory._wrap(exc) from exc
            finally:
                await self._pool.putconn(conn)

    async def _acquire(
        self, deadline: float
    ) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        while True:
            # The twin closes only after the native calls in flight.
            self._memory._check_open()
            remaining = deadline - time.monotonic()
            try:
                conn = await self._pool.getconn(timeout=max(remaining, 0.001))
            except PoolTimeout:
                raise self._postgres._no_connection() from None
            except PoolClosed:
                raise StoreClosed(type(self._postgres).__name__) from None
            if _alive(conn):
                return conn
            # The server closed this idle connection: drop it, as the
            # synchronous store does; the pool opens a replacement.
            log.info("discarding a connection the server closed")
            await conn.close()
            await self._pool.putconn(conn)

    async def _close_client(self) -> None:
        await self._pool.close(timeout=self._postgres.timeout)
