"""Native asyncio faces against real servers: no threads, same answers.

A backend with a native face serves the coroutines of
:mod:`chatmem.aio` on the event loop with an asyncio client. These tests
check that the native path is the one taken (no call reaches the loop's
executor), that its results and errors equal the synchronous API's, that
a stopped server surfaces as BackendUnavailable within the timeout, and
that the loop keeps running while the server makes a call wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

import chatmem
from chatmem import (
    BackendUnavailable,
    BaseChatMessageMemory,
    CapacityExceeded,
    InvalidMessage,
    Message,
    MessageNotFound,
    StoreClosed,
)
from chatmem.aio import AsyncChatMemory
from chatmem.backends._postgres_async import AsyncPostgresMemory
from chatmem.backends._redis_async import AsyncRedisMemory
from tests.servers import RedisServer
from tests.test_async import LoopWatch, _comparable, run_watched

T = TypeVar("T")

# Databases of the session's Redis server that these tests empty; the
# conformance suite uses 1 and the Redis tests 2 and 3.
DB_NATIVE = 4
DB_SYNC = 5


def _redis_url(server: Any, db: int) -> str:
    address = urlsplit(server.url)._replace(path=f"/{db}").geturl()
    with redis.Redis.from_url(address) as client:
        client.flushdb()
    return str(address)


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    return _redis_url(redis_server, DB_NATIVE)


@pytest.fixture
def twin_url(redis_server: Any) -> str:
    """An emptied second database, for the synchronous side of a comparison."""
    return _redis_url(redis_server, DB_SYNC)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, counting the calls handed to it.

    ``asyncio.to_thread`` and the thread offload submit here; a native
    call never does.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submitted = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def run_counted(main: Callable[[CountingExecutor], Awaitable[T]]) -> T:
    """Run ``main`` on a loop whose default executor counts its calls."""

    async def start() -> T:
        executor = CountingExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        return await main(executor)

    return asyncio.run(start())


# -- the native path is taken --------------------------------------------


async def _every_native_call(memory: AsyncChatMemory) -> None:
    first = await memory.add("s1", "user", "hi", user_id="u1")
    assert first.id is not None
    batch = await memory.add_messages(
        [Message(session_id="s1", role="assistant", content="hello")]
    )
    await memory.store(Message(session_id="s2", role="user", content="x"))
    await memory.get(first.id)
    await memory.retrieve(first.id)
    await memory.history("s1", last=1)
    await memory.history("s1", after=first.id, limit=5)
    await memory.history("s1", before=batch[0].id, limit=0)
    await memory.query(user_id="u1")
    await memory.query(session_id="s1", role="user")
    await memory.sessions()
    await memory.sessions("u1")
    await memory.count()
    await memory.count(session_id="s1", user_id="u1")
    await memory.delete(first.id)
    await memory.delete_user("u1")
    await memory.delete_session("s1")


def test_redis_is_opened_natively_and_calls_use_no_thread(redis_url: str) -> None:
    async def main(executor: CountingExecutor) -> tuple[int, int]:
        memory = await chatmem.open_async(redis_url)
        assert isinstance(memory, AsyncRedisMemory)
        opening = executor.submitted
        await _every_native_call(memory)
        native = executor.submitted - opening

        # The control: an offloaded method goes through the executor.
        await memory.history_window("s2", 100)
        offloaded = executor.submitted - opening - native
        await memory.close()
        return native, offloaded

    native, offloaded = run_counted(main)
    assert native == 0
    assert offloaded == 1


def test_native_writes_are_read_back_by_the_sync_twin(redis_url: str) -> None:
    async def main() -> None:
        async with await chatmem.open_async(redis_url, namespace="n") as memory:
            stored = await memory.add_messages(
                Message(session_id="s", role="user", content=str(i), user_id="u")
                for i in range(30)
            )
            assert memory.sync.history("s") == stored
            assert await memory.history("s", last=20) == stored[-20:]
            assert await memory.query(user_id="u", limit=3) == stored[:3]

    asyncio.run(main())


# -- same results, same errors -------------------------------------------


def _script_sync(memory: BaseChatMessageMemory) -> list[Any]:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    first = memory.add(
        "s1", "user", "hi", user_id="u1", metadata={"k": [1]}, created_at=at
    )
    batch = memory.add_messages(
        [
            Message(
                session_id="s1",
                role="assistant",
                content=f"{i} ünïcødé",
                created_at=at + timedelta(seconds=i),
            )
            for i in range(6)
        ]
    )
    memory.store(Message(session_id="s:2", role="user", content="x", user_id="u1"))
    assert first.id is not None and batch[0].id is not None
    out: list[Any] = [
        first,
        batch,
        memory.get(first.id),
        memory.retrieve(batch[3].id or ""),
        memory.history("s1"),
        memory.history("s1", last=3),
        memory.history("s1", limit=2),
        memory.history("s1", before=batch[2].id, limit=2),
        memory.history("s1", after=batch[2].id),
        memory.history("s1", before=batch[4].id, after=first.id),
        memory.history("nobody"),
        memory.query(user_id="u1"),
        memory.query(session_id="s1", start=at + timedelta(seconds=2)),
        memory.query(session_id="s1", end=at + timedelta(seconds=2), role="user"),
        memory.query(start=at, end=at + timedelta(seconds=3), limit=2),
        memory.sessions(),
        memory.sessions("u1"),
        memory.count(),
        memory.count(session_id="s1"),
        memory.count(user_id="u1"),
        memory.count(session_id="s1", user_id="u1"),
    ]
    memory.delete(batch[0].id)
    out.append(memory.history("s1", last=2))
    out.append(memory.delete_user("u1"))
    out.append(memory.delete_session("s1"))
    out.append(memory.delete_session("s1"))
    out.append(memory.count())
    out.append(memory.sessions())
    return out


async def _script_async(memory: AsyncChatMemory) -> list[Any]:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    first = await memory.add(
        "s1", "user", "hi", user_id="u1", metadata={"k": [1]}, created_at=at
    )
    batch = await memory.add_messages(
        [
            Message(
                session_id="s1",
                role="assistant",
                content=f"{i} ünïcødé",
                created_at=at + timedelta(seconds=i),
            )
            for i in range(6)
        ]
    )
    await memory.store(
        Message(session_id="s:2", role="user", content="x", user_id="u1")
    )
    assert first.id is not None and batch[0].id is not None
    out: list[Any] = [
        first,
        batch,
        await memory.get(first.id),
        await memory.retrieve(batch[3].id or ""),
        await memory.history("s1"),
        await memory.history("s1", last=3),
        await memory.history("s1", limit=2),
        await memory.history("s1", before=batch[2].id, limit=2),
        await memory.history("s1", after=batch[2].id),
        await memory.history("s1", before=batch[4].id, after=first.id),
        await memory.history("nobody"),
        await memory.query(user_id="u1"),
        await memory.query(session_id="s1", start=at + timedelta(seconds=2)),
        await memory.query(session_id="s1", end=at + timedelta(seconds=2), role="user"),
        await memory.query(start=at, end=at + timedelta(seconds=3), limit=2),
        await memory.sessions(),
        await memory.sessions("u1"),
        await memory.count(),
        await memory.count(session_id="s1"),
        await memory.count(user_id="u1"),
        await memory.count(session_id="s1", user_id="u1"),
    ]
    await memory.delete(batch[0].id)
    out.append(await memory.history("s1", last=2))
    out.append(await memory.delete_user("u1"))
    out.append(await memory.delete_session("s1"))
    out.append(await memory.delete_session("s1"))
    out.append(await memory.count())
    out.append(await memory.sessions())
    return out


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"capacity_bytes": 1 << 20, "policy": "evict-lru-session"},
        {"retention": timedelta(days=365 * 50)},
        {"namespace": "tenant a", "retries": 0},
    ],
    ids=["plain", "lru", "retention", "namespace"],
)
def test_results_equal_the_sync_api(
    redis_url: str, twin_url: str, options: dict[str, Any]
) -> None:
    with chatmem.open(twin_url, **options) as sync_store:
        want = _script_sync(sync_store)

    async def main() -> list[Any]:
        async with await chatmem.open_async(redis_url, **options) as memory:
            return await _script_async(memory)

    # Each side ran on an emptied database, so the ids agree too.
    assert _comparable(asyncio.run(main())) == _comparable(want)


def _bad_calls(
    other_session_id: str,
) -> list[tuple[str, Callable[[Any], Any]]]:
    """Calls that must fail, each written once for both APIs."""
    naive = datetime(2030, 1, 1)
    at = datetime(2030, 1, 1, tzinfo=UTC)
    return [
        ("role", lambda m: m.add("s1", "narrator", "hi")),
        ("empty session", lambda m: m.add("", "user", "hi")),
        ("big", lambda m: m.add("s1", "user", "x" * 2900)),
        ("metadata", lambda m: m.add("s1", "user", "hi", metadata={"k": {1, 2}})),
        (
            "batch",
            lambda m: m.add_messages(
                [
                    Message(session_id="s1", role="user", content="fine"),
                    Message(session_id="s1", role="robot", content="bad"),
                ]
            ),
        ),
        ("last", lambda m: m.history("s1", last=-1)),
        ("both", lambda m: m.history("s1", last=1, limit=1)),
        ("cursor", lambda m: m.history("s1", before="abc")),
        ("unknown cursor", lambda m: m.history("s1", after="999999")),
        ("other cursor", lambda m: m.history("s1", before=other_session_id)),
        ("zero cursor", lambda m: m.history("s1", after="999999", limit=0)),
        ("get", lambda m: m.get("999999")),
        ("get id", lambda m: m.get("01")),
        ("get type", lambda m: m.get(5)),
        ("delete", lambda m: m.delete("999999")),
        ("naive", lambda m: m.query(start=naive)),
        ("reversed", lambda m: m.query(start=at, end=at - timedelta(days=1))),
        ("query role", lambda m: m.query(role="narrator")),
        ("count", lambda m: m.count(session_id="")),
        ("sessions", lambda m: m.sessions(user_id="")),
        ("delete session", lambda m: m.delete_session("")),
        ("delete user", lambda m: m.delete_user("")),
    ]


def _failure(
    call: Callable[[Any], Any], memory: BaseChatMessageMemory
) -> tuple[type[BaseException], str]:
    with pytest.raises(Exception) as caught:
        call(memory)
    return type(caught.value), str(caught.value)


async def _async_failure(
    call: Callable[[Any], Awaitable[Any]], memory: AsyncChatMemory
) -> tuple[type[BaseException], str]:
    with pytest.raises(Exception) as caught:
        await call(memory)
    return type(caught.value), str(caught.value)


def test_errors_equal_the_sync_api(redis_url: str, twin_url: str) -> None:
    options: dict[str, Any] = {"capacity_bytes": 3000, "max_message_bytes": 4000}
    with chatmem.open(twin_url, **options) as sync_store:
        other = sync_store.add("s2", "user", "elsewhere").id or ""
        want = [(name, _failure(call, sync_store)) for name, call in _bad_calls(other)]
        want_count = sync_store.count()

    async def main() -> tuple[list[Any], int]:
        memory = await chatmem.open_async(redis_url, **options)
        assert (await memory.add("s2", "user", "elsewhere")).id == other
        got = [
            (name, await _async_failure(call, memory))
            for name, call in _bad_calls(other)
        ]
        count = await memory.count()
        await memory.close()
        with pytest.raises(StoreClosed):
            await memory.add("s1", "user", "late")
        with pytest.raises(StoreClosed):
            await memory.history("s1")
        return got, count

    got, count = asyncio.run(main())
    assert got == want
    assert count == want_count == 1
    kinds = dict(got)
    assert kinds["big"][0] is CapacityExceeded
    assert kinds["role"][0] is InvalidMessage
    assert kinds["get"][0] is MessageNotFound


# -- concurrency and retries ---------------------------------------------


def test_many_tasks_at_once_lose_and_repeat_nothing(redis_url: str) -> None:
    tasks, each = 40, 25

    async def writer(memory: AsyncChatMemory, n: int) -> list[Message]:
        stored = []
        for i in range(each):
            stored.append(await memory.add(f"own{n}", "user", f"{n}:{i}"))
            await memory.add("shared", "user", f"{n}:{i}")
            await memory.history(f"own{n}", last=20)
        return stored

    async def main() -> None:
        async with await chatmem.open_async(redis_url) as memory:
            written = await asyncio.gather(*(writer(memory, n) for n in range(tasks)))
            for n, stored in enumerate(written):
                assert await memory.history(f"own{n}") == stored
            shared = [m.content for m in await memory.history("shared")]
            assert sorted(shared) == sorted(
                f"{n}:{i}" for n in range(tasks) for i in range(each)
            )
            for n in range(tasks):
                mine = [c for c in shared if c.startswith(f"{n}:")]
                assert mine == [f"{n}:{i}" for i in range(each)]
            assert await memory.count() == 2 * tasks * each

    asyncio.run(main())


def test_retried_write_after_a_lost_reply_is_stored_once(redis_url: str) -> None:
    async def main() -> None:
        memory = await chatmem.open_async(redis_url)
        assert isinstance(memory, AsyncRedisMemory)
        real: Callable[..., Awaitable[Any]] = memory._client.execute_command
        dropped: list[str] = []

        async def lose_first_reply(*args: Any, **options: Any) -> Any:
            reply = await real(*args, **options)
            if args[0] == "FCALL" and args[3] == "add" and not dropped:
                dropped.append("once")
                raise redis.ConnectionError("connection reset after the write")
            return reply

        memory._client.execute_command = lose_first_reply  # type: ignore[method-assign]
        stored = await memory.add("s", "user", "only once")
        assert dropped == ["once"]
        assert await memory.history("s") == [stored]
        assert await memory.count() == 1
        assert (await memory.stats()).message_count == 1
        await memory.close()

    asyncio.run(main())


def test_a_server_that_forgot_the_library_gets_it_again(
    redis_url: str, raw: redis.Redis
) -> None:
    async def main() -> None:
        async with await chatmem.open_async(redis_url) as memory:
            before = await memory.add("s", "user", "before")
            raw.function_flush()
            after = await memory.add("s", "user", "after")
            assert await memory.history("s") == [before, after]
            assert raw.function_list() != []

    asyncio.run(main())


# -- a server that stops -------------------------------------------------


def test_stopped_server_raises_backend_unavailable_within_the_timeout() -> None:
    timeout = 1.0
    with RedisServer() as server:

        async def down(memory: AsyncChatMemory, acknowledged: Message) -> None:
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: memory.add("s", "user", "lost"),
                lambda: memory.history("s", last=20),
                lambda: memory.get(acknowledged.id or ""),
                lambda: memory.count(),
                lambda: memory.delete_session("s"),
            ]
            for call in calls:
                began = time.monotonic()
                with pytest.raises(BackendUnavailable) as caught:
                    await call()
                assert time.monotonic() - began < timeout + 0.5
                assert isinstance(caught.value.__cause__, redis.RedisError)
                assert "Redis at" in str(caught.value)

        async def main() -> None:
            memory = await chatmem.open_async(server.url, timeout=timeout, retries=2)
            acknowledged = await memory.add("s", "user", "kept")
            server.stop()
            try:
                await down(memory, acknowledged)
            finally:
                server.start()
            # The pool reconnects; nothing acknowledged was lost.
            assert await memory.history("s") == [acknowledged]
            await memory.add("s", "user", "after")
            assert await memory.count() == 2
            await memory.close()

        asyncio.run(main())


# -- the loop is never blocked -------------------------------------------

#: How long the server holds every client for each call below.
PAUSE = 0.3


def test_no_native_call_blocks_the_loop_while_the_server_holds_it(
    redis_url: str, raw: redis.Redis
) -> None:
    # CLIENT PAUSE makes the server hold every other client's commands:
    # each call below waits PAUSE seconds for its reply, and on the
    # loop's thread that wait would stall the loop for all of it.
    def hold() -> None:
        raw.client_pause(int(PAUSE * 1000))

    async def main() -> tuple[list[float], LoopWatch, LoopWatch]:
        memory = await chatmem.open_async(redis_url)
        first = await memory.add("s1", "user", "hi", user_id="u1")
        assert first.id is not None
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: memory.add("s1", "user", "hello"),
            lambda: memory.add_messages(
                [Message(session_id="s1", role="assistant", content="x")]
            ),
            lambda: memory.get(first.id or ""),
            lambda: memory.history("s1", last=20),
            lambda: memory.query(user_id="u1"),
            lambda: memory.sessions(),
            lambda: memory.count(),
            lambda: memory.delete_user("u1"),
        ]
        waits = []
        async with LoopWatch(threshold=PAUSE / 2) as watch:
            for call in calls:
                hold()
                began = time.perf_counter()
                await call()
                waits.append(time.perf_counter() - began)

        # The control: the same wait taken on the loop's own thread.
        async with LoopWatch(threshold=PAUSE / 2) as blocked:
            hold()
            memory.sync.count()
        await memory.close()
        return waits, watch, blocked

    waits, watch, blocked = run_watched(main)
    assert min(waits) > PAUSE * 0.8  # every call really waited on the server
    watch.assert_never_blocked()
    blocked.assert_blocked(at_least=PAUSE * 0.8)


def test_close_waits_for_native_calls_in_flight(
    redis_url: str, raw: redis.Redis
) -> None:
    async def main() -> None:
        memory = await chatmem.open_async(redis_url)
        await memory.add("s1", "user", "hi")
        raw.client_pause(int(PAUSE * 1000))
        call = asyncio.create_task(memory.add("s1", "user", "in flight"))
        await asyncio.sleep(0)  # the call has sent its command
        await memory.close()
        assert call.done()
        assert call.result().content == "in flight"
        with pytest.raises(StoreClosed):
            await memory.add("s1", "user", "late")

    asyncio.run(main())
    with chatmem.open(redis_url) as memory:
        assert [m.content for m in memory.history("s1")] == ["hi", "in flight"]


# -- PostgreSQL: native reads ------------------------------------------------


@pytest.fixture
def pg_url(postgres_server: Any) -> str:
    return str(postgres_server.url)


def _schema() -> str:
    """A schema of its own, so tables and id sequences start empty."""
    return f"t_{uuid.uuid4().hex[:12]}"


async def _native_reads(memory: AsyncChatMemory, first: Message) -> None:
    assert first.id is not None
    await memory.get(first.id)
    await memory.retrieve(first.id)
    await memory.history("s1", last=1)
    await memory.history("s1", after=first.id, limit=5)
    await memory.history("s1", before=first.id, limit=0)
    await memory.query(user_id="u1")
    await memory.query(session_id="s1", role="user")
    await memory.sessions()
    await memory.sessions("u1")
    await memory.count()
    await memory.count(session_id="s1", user_id="u1")


@pytest.mark.parametrize("capacity", [None, 1 << 20])
def test_postgres_is_opened_natively_and_reads_use_no_thread(
    pg_url: str, capacity: int | None
) -> None:
    async def main(executor: CountingExecutor) -> tuple[int, int]:
        memory = await chatmem.open_async(
            pg_url, schema=_schema(), capacity_bytes=capacity
        )
        assert isinstance(memory, AsyncPostgresMemory)
        first = await memory.add("s1", "user", "hi", user_id="u1")
        before = executor.submitted
        await _native_reads(memory, first)
        reads = executor.submitted - before

        # Writes go to the twin in a worker thread, as documented.
        await memory.add("s1", "user", "again")
        writes = executor.submitted - before - reads
        await memory.close()
        return reads, writes

    reads, writes = run_counted(main)
    assert reads == 0
    assert writes == 1


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"capacity_bytes": 1 << 20, "policy": "evict-lru-session"},
        {"retention": timedelta(days=365 * 50)},
        {"namespace": "tenant a", "retries": 0},
    ],
    ids=["plain", "lru", "retention", "namespace"],
)
def test_postgres_results_equal_the_sync_api(
    pg_url: str, options: dict[str, Any]
) -> None:
    with chatmem.open(pg_url, schema=_schema(), **options) as sync_store:
        want = _script_sync(sync_store)

    async def main() -> list[Any]:
        async with await chatmem.open_async(
            pg_url, schema=_schema(), **options
        ) as memory:
            return await _script_async(memory)

    assert _comparable(asyncio.run(main())) == _comparable(want)


def test_postgres_errors_equal_the_sync_api(pg_url: str) -> None:
    options: dict[str, Any] = {"capacity_bytes": 3000, "max_message_bytes": 4000}
    with chatmem.open(pg_url, schema=_schema(), **options) as sync_store:
        other = sync_store.add("s2", "user", "elsewhere").id or ""
        want = [(name, _failure(call, sync_store)) for name, call in _bad_calls(other)]
        nul = _failure(lambda m: m.history("a\x00b"), sync_store)

    async def main() -> tuple[list[Any], Any]:
        memory = await chatmem.open_async(pg_url, schema=_schema(), **options)
        assert (await memory.add("s2", "user", "elsewhere")).id == other
        got = [
            (name, await _async_failure(call, memory))
            for name, call in _bad_calls(other)
        ]
        got_nul = await _async_failure(lambda m: m.history("a\x00b"), memory)
        await memory.close()
        with pytest.raises(StoreClosed):
            await memory.history("s1")
        return got, got_nul

    got, got_nul = asyncio.run(main())
    assert got == want
    assert got_nul == nul
    assert nul[0] is InvalidMessage


def test_postgres_many_readers_at_once(pg_url: str) -> None:
    async def main() -> None:
        async with await chatmem.open_async(pg_url, schema=_schema()) as memory:
            stored = {
                n: await memory.add_messages(
                    Message(session_id=f"s{n}", role="user", content=f"{n}:{i}")
                    for i in range(30)
                )
                for n in range(10)
            }
            reads = await asyncio.gather(
                *(memory.history(f"s{n % 10}", last=20) for n in range(100))
            )
            for n, found in enumerate(reads):
                assert found == stored[n % 10][-20:]

    asyncio.run(main())


def test_postgres_stopped_server_raises_backend_unavailable_within_the_timeout(
    postgres_server: Any,
) -> None:
    timeout = 2.0

    async def main() -> None:
        memory = await chatmem.open_async(
            postgres_server.url, schema=_schema(), timeout=timeout, retries=1
        )
        kept = await memory.add("s", "user", "kept")
        postgres_server.stop()
        try:
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: memory.history("s", last=20),
                lambda: memory.get(kept.id or ""),
                lambda: memory.count(),
                lambda: memory.query(session_id="s"),
            ]
            for call in calls:
                began = time.monotonic()
                with pytest.raises(BackendUnavailable) as caught:
                    await call()
                assert time.monotonic() - began < timeout + 1
                assert "PostgreSQL at" in str(caught.value)
        finally:
            postgres_server.start()
        # The pools replace their broken connections; nothing was lost.
        assert await memory.history("s") == [kept]
        await memory.add("s", "user", "after")
        assert await memory.count() == 2
        await memory.close()

    asyncio.run(main())


def test_postgres_reads_do_not_block_the_loop_while_a_lock_holds_them(
    pg_url: str,
) -> None:
    schema = _schema()

    async def main() -> tuple[list[float], LoopWatch]:
        memory = await chatmem.open_async(pg_url, schema=schema)
        first = await memory.add("s1", "user", "hi", user_id="u1")
        holder: psycopg.Connection[tuple[Any, ...]] = await asyncio.to_thread(
            lambda: psycopg.connect(pg_url, autocommit=True)
        )
        table = f'"{schema}"."chatmem_messages"'
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: memory.get(first.id or ""),
            lambda: memory.history("s1", last=20),
            lambda: memory.query(user_id="u1"),
            lambda: memory.sessions(),
            lambda: memory.count(),
        ]
        waits = []
        loop = asyncio.get_running_loop()
        async with LoopWatch(threshold=PAUSE / 2) as watch:
            for call in calls:
                # An exclusive lock makes every read of the table wait for
                # the holder's commit, PAUSE seconds later.
                holder.execute("BEGIN")
                holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                loop.call_later(PAUSE, holder.execute, "COMMIT")
                began = time.perf_counter()
                await call()
                waits.append(time.perf_counter() - began)
        holder.close()
        await memory.close()
        return waits, watch

    waits, watch = run_watched(main)
    assert min(waits) > PAUSE * 0.8
    watch.assert_never_blocked()


@pytest.mark.parametrize("face", [AsyncRedisMemory, AsyncPostgresMemory])
def test_native_methods_keep_the_sync_signatures(face: type[AsyncChatMemory]) -> None:
    for name, value in vars(BaseChatMessageMemory).items():
        if name.startswith("_") or not inspect.isfunction(value):
            continue
        native = getattr(face, name)
        assert inspect.iscoroutinefunction(native), name
        assert inspect.signature(native) == inspect.signature(value), name


def test_a_hot_tier_runs_on_the_thread_offload(redis_url: str) -> None:
    async def main() -> None:
        memory = await chatmem.open_async(redis_url, cache_bytes=1 << 20)
        assert type(memory) is AsyncChatMemory
        stored = await memory.add("s1", "user", "hi")
        assert await memory.history("s1") == [stored]
        assert memory.sync.history("s1") == [stored]
        await memory.close()

    asyncio.run(main())
    with pytest.raises(InvalidMessage, match="cache_staleness needs cache_bytes"):
        asyncio.run(chatmem.open_async(redis_url, cache_staleness=1.0))
