"""The async API: same methods and errors as the sync one, loop never blocked."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import chatmem
from chatmem import (
    BaseChatMessageMemory,
    CapacityExceeded,
    InvalidMessage,
    Message,
    MessageNotFound,
    StoreClosed,
    UnknownBackend,
)
from chatmem.aio import AsyncChatMemory
from chatmem.backends.memory import ArenaMemory

T = TypeVar("T")


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "redis":
        # Served natively (see tests/test_async_native.py), on database 6
        # of the session's server.
        return _emptied_redis(request.getfixturevalue("redis_server"), 6)
    if request.param == "postgres":
        return _fresh_postgres(request.getfixturevalue("postgres_server"))
    return f"sqlite:///{tmp_path / 'chat.db'}"


def _fresh_postgres(server: Any) -> str:
    # Reads served natively; a schema of its own starts the ids at 1.
    return f"{server.url}?schema=t_{uuid.uuid4().hex[:12]}"


def _emptied_redis(server: Any, db: int) -> str:
    import redis

    address = f"{server.url.rsplit('/', 1)[0]}/{db}"
    with redis.Redis.from_url(address) as client:
        client.flushdb()
    return address


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _public_methods() -> list[str]:
    return sorted(
        name
        for name, value in inspect.getmembers(BaseChatMessageMemory)
        if not name.startswith("_") and inspect.isfunction(value)
    )


def test_every_public_method_is_a_coroutine_with_the_same_signature() -> None:
    names = _public_methods()
    assert {"add", "history", "history_window", "query", "close"} <= set(names)
    for name in names:
        sync = getattr(BaseChatMessageMemory, name)
        coroutine = getattr(AsyncChatMemory, name, None)
        assert coroutine is not None, name
        assert inspect.iscoroutinefunction(coroutine), name
        assert inspect.signature(coroutine) == inspect.signature(sync), name


def test_attributes_match_the_store(url: str) -> None:
    async def main() -> None:
        async with await chatmem.open_async(
            url, namespace="tenant", capacity_bytes=1 << 20
        ) as memory:
            sync = memory.sync
            assert memory.namespace == sync.namespace == "tenant"
            assert memory.capacity_bytes == sync.capacity_bytes == 1 << 20
            assert memory.policy == sync.policy
            assert memory.retention == sync.retention
            assert memory.max_message_bytes == sync.max_message_bytes
            assert memory.persistent == sync.persistent
            assert memory.message_overhead == sync.message_overhead
            assert repr(sync) in repr(memory)

    run(main())


def test_results_match_the_sync_api(
    url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    other = "memory://" if url == "memory://" else f"sqlite:///{tmp_path / 'b.db'}"
    if url.startswith("redis://"):
        other = _emptied_redis(request.getfixturevalue("redis_server"), 7)
    if url.startswith("postgresql://"):
        other = _fresh_postgres(request.getfixturevalue("postgres_server"))

    def script_sync(memory: BaseChatMessageMemory) -> list[Any]:
        first = memory.add("s1", "user", "hi", user_id="u1", metadata={"k": [1]})
        batch = memory.add_messages(
            [
                Message(session_id="s1", role="assistant", content=str(i))
                for i in range(5)
            ]
        )
        memory.store(Message(session_id="s2", role="user", content="x", user_id="u1"))
        assert first.id is not None and batch[0].id is not None
        out: list[Any] = [
            memory.get(first.id),
            memory.retrieve(first.id),
            memory.history("s1", last=3),
            memory.history("s1", before=batch[2].id, limit=2),
            memory.history_window("s1", 20),
            memory.query(user_id="u1"),
            memory.sessions(),
            memory.sessions("u1"),
            memory.count(session_id="s1"),
            memory.max_messages(100),
            memory.remaining_messages(100),
        ]
        memory.delete(batch[0].id)
        out.append(memory.delete_user("u1"))
        out.append(memory.delete_session("s1"))
        out.append(memory.count())
        return out

    async def script_async(memory: AsyncChatMemory) -> list[Any]:
        first = await memory.add("s1", "user", "hi", user_id="u1", metadata={"k": [1]})
        batch = await memory.add_messages(
            Message(session_id="s1", role="assistant", content=str(i)) for i in range(5)
        )
        await memory.store(
            Message(session_id="s2", role="user", content="x", user_id="u1")
        )
        assert first.id is not None and batch[0].id is not None
        out: list[Any] = [
            await memory.get(first.id),
            await memory.retrieve(first.id),
            await memory.history("s1", last=3),
            await memory.history("s1", before=batch[2].id, limit=2),
            await memory.history_window("s1", 20),
            await memory.query(user_id="u1"),
            await memory.sessions(),
            await memory.sessions("u1"),
            await memory.count(session_id="s1"),
            await memory.max_messages(100),
            await memory.remaining_messages(100),
        ]
        await memory.delete(batch[0].id)
        out.append(await memory.delete_user("u1"))
        out.append(await memory.delete_session("s1"))
        out.append(await memory.count())
        return out

    with chatmem.open(other, capacity_bytes=1 << 20) as sync_store:
        want = script_sync(sync_store)

    async def main() -> list[Any]:
        async with await chatmem.open_async(url, capacity_bytes=1 << 20) as memory:
            return await script_async(memory)

    got = run(main())
    assert _comparable(got) == _comparable(want)


def _comparable(values: list[Any]) -> list[Any]:
    """Results with the store's clock taken out."""

    def strip(value: Any) -> Any:
        if isinstance(value, Message):
            return value.replace(created_at=None)
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return [strip(v) for v in values]


def test_same_errors_as_the_sync_api(url: str) -> None:
    async def main() -> None:
        memory = await chatmem.open_async(url, capacity_bytes=2000)
        with pytest.raises(InvalidMessage):
            await memory.add("s1", "narrator", "hi")
        with pytest.raises(InvalidMessage):
            await memory.history("s1", last=-1)
        with pytest.raises(InvalidMessage):
            await memory.history_window("s1", -5)
        with pytest.raises(MessageNotFound):
            await memory.get("999999")
        with pytest.raises(MessageNotFound):
            await memory.delete("999999")
        with pytest.raises(CapacityExceeded):
            await memory.add("s1", "user", "x" * 5000)
        assert await memory.count() == 0

        allocation = await memory.allocate(100)
        assert (await memory.stats()).allocated_bytes == 100
        await memory.release(allocation)
        assert (await memory.stats()).allocated_bytes == 0

        await memory.close()
        await memory.close()
        with pytest.raises(StoreClosed):
            await memory.history("s1")
        with pytest.raises(StoreClosed):
            memory.sync.history("s1")

    run(main())


def test_open_errors_match_chatmem_open() -> None:
    with pytest.raises(UnknownBackend, match="Did you mean 'sqlite'"):
        run(chatmem.open_async("sqlit:///x.db"))
    with pytest.raises(UnknownBackend, match="not a chatmem URL"):
        run(chatmem.open_async("chat.db"))
    with pytest.raises(InvalidMessage):
        run(chatmem.open_async("memory://", max_concurrency=0))
    with pytest.raises(InvalidMessage):
        run(chatmem.open_async("memory://", policy="sometimes"))


def test_default_url_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env.db"
    monkeypatch.setenv("CHATMEM_URL", f"sqlite:///{path}")

    async def main() -> None:
        async with await chatmem.open_async() as memory:
            await memory.add("s1", "user", "hi")

    run(main())
    with chatmem.open(f"sqlite:///{path}") as memory:
        assert [m.content for m in memory.history("s1")] == ["hi"]


# -- the event loop is never blocked -----------------------------------


class Heartbeat:
    """Measures how late the event loop runs a task that wakes every 5 ms."""

    def __init__(self) -> None:
        self.beats = 0
        self.worst = 0.0
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._beat())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop = True
        assert self._task is not None
        await self._task

    async def _beat(self) -> None:
        while not self._stop:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, time.perf_counter() - start - 0.005)
            self.beats += 1


def _big_batch(n: int) -> list[Message]:
    return [
        Message(session_id="big", role="user", content=f"{i} " + "x" * 200)
        for i in range(n)
    ]


async def _timed(call: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


def test_slow_operations_do_not_block_the_loop(url: str) -> None:
    batches = [_big_batch(5_000) for _ in range(8)]

    async def main() -> tuple[float, Heartbeat, float, Heartbeat]:
        memory = await chatmem.open_async(url)

        async def offloaded() -> None:
            for chunk in batches:
                await memory.add_messages(chunk)
            await memory.history("big", last=20_000)

        async def blocking() -> None:
            # The control: the same work called on the loop's own thread.
            for chunk in batches:
                memory.sync.add_messages(chunk)
            memory.sync.history("big", last=20_000)

        async with Heartbeat() as free:
            took = await _timed(offloaded)
        async with Heartbeat() as blocked:
            took_blocking = await _timed(blocking)
        await memory.close()
        return took, free, took_blocking, blocked

    # A garbage collection pauses every thread, wherever the work runs;
    # with pytest's large heap a full one takes tens of milliseconds and
    # would be counted against the store.
    gc.disable()
    try:
        took, free, took_blocking, blocked = asyncio.run(main())
    finally:
        gc.enable()

    # The detector sees a blocked loop: no beat while the store worked.
    assert took_blocking > 0.2
    assert blocked.worst > 0.8 * took_blocking

    # Offloaded, the loop kept beating all along.
    assert took > 0.2
    assert free.worst < took / 4
    assert free.beats >= took / 0.05


class LoopWatch(Heartbeat):
    """Detects a blocked event loop in two independent ways.

    The heartbeat's lag, and asyncio's debug mode, which reports every
    callback that holds the loop longer than ``slow_callback_duration``.
    """

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.slow: list[str] = []
        self._handler = _Collect(self.slow)

    async def __aenter__(self) -> LoopWatch:
        loop = asyncio.get_running_loop()
        self._debug = loop.get_debug()
        self._duration = loop.slow_callback_duration
        loop.set_debug(True)
        loop.slow_callback_duration = self.threshold
        logging.getLogger("asyncio").addHandler(self._handler)
        await super().__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        logging.getLogger("asyncio").removeHandler(self._handler)
        loop = asyncio.get_running_loop()
        loop.set_debug(self._debug)
        loop.slow_callback_duration = self._duration

    def assert_never_blocked(self) -> None:
        assert self.beats > 0
        assert self.worst < self.threshold, f"loop lagged {self.worst:.3f} s"
        assert self.slow == []

    def assert_blocked(self, at_least: float) -> None:
        assert self.worst >= at_least
        assert any("took" in line for line in self.slow), self.slow


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class LatentMemory(ArenaMemory):
    """An in-process store whose every call takes ``LATENCY`` seconds.

    Each public method starts by checking that the store is open; the
    wait goes there and blocks the calling thread, as a round trip to a
    distant server would. A call made on the event loop's thread then
    stalls the loop for at least ``LATENCY``, whatever the machine's
    speed, which makes blocking unmistakable to :class:`LoopWatch`.
    """

    def _check_open(self) -> None:
        time.sleep(LATENCY)
        super()._check_open()


#: How long each call of a LatentMemory takes.
LATENCY = 0.2


def watch_loop() -> LoopWatch:
    """A LoopWatch that flags any stall of three quarters of a store call.

    A store call made on the loop stalls it for a whole call or more, so
    the margin below that only absorbs the scheduling noise of a loaded
    machine; it never lets a blocking call pass.
    """
    return LoopWatch(threshold=LATENCY * 0.75)


def run_watched(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` with garbage collection off, as the heartbeat needs."""
    # A full collection pauses every thread for tens of milliseconds in
    # pytest's large heap and would be counted against the store.
    gc.disable()
    try:
        return asyncio.run(_call(main))
    finally:
        gc.enable()


async def _call(main: Callable[[], Awaitable[T]]) -> T:
    return await main()


def test_the_detector_sees_a_store_call_on_the_loop() -> None:
    async def main() -> None:
        memory = AsyncChatMemory(LatentMemory())
        async with watch_loop() as watch:
            memory.sync.history("s1")  # on the loop's own thread
        watch.assert_blocked(at_least=LATENCY * 0.9)

    run_watched(main)


def test_no_call_blocks_the_loop_even_on_a_slow_store() -> None:
    async def main() -> None:
        memory = AsyncChatMemory(LatentMemory(capacity_bytes=1 << 20))
        async with watch_loop() as watch:
            first = await memory.add("s1", "user", "hi", user_id="u1")
            assert first.id is not None
            await memory.add_messages(
                [Message(session_id="s1", role="assistant", content="hello")]
            )
            await memory.store(Message(session_id="s2", role="user", content="x"))
            await memory.get(first.id)
            await memory.retrieve(first.id)
            await memory.history("s1", last=1)
            await memory.history_window("s1", 100)
            await memory.query(user_id="u1")
            await memory.sessions()
            await memory.count()
            allocation = await memory.allocate(10)
            await memory.release(allocation)
            await memory.stats()
            await memory.max_messages(100)
            await memory.remaining_messages(100)
            await memory.delete(first.id)
            await memory.delete_user("u1")
            await memory.delete_session("s1")
            await memory.close()
        watch.assert_never_blocked()

    run_watched(main)


def test_calls_run_concurrently_up_to_the_bound(url: str) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def slow_counter(message: Message) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)  # holds the thread so that calls overlap
        with lock:
            running -= 1
        return 1

    async def main() -> None:
        memory = await chatmem.open_async(url, max_concurrency=2)
        await memory.add("s1", "user", "hi")
        windows = await asyncio.gather(
            *(
                memory.history_window("s1", 10, token_counter=slow_counter)
                for _ in range(8)
            )
        )
        assert all(len(w) == 1 for w in windows)
        await memory.close()

    run(main())
    assert peak == 2


def test_close_waits_for_calls_in_flight(url: str) -> None:
    started = threading.Event()

    def slow_counter(message: Message) -> int:
        started.set()
        time.sleep(0.1)  # keeps the call running while close is requested
        return 1

    async def main() -> None:
        memory = await chatmem.open_async(url)
        await memory.add("s1", "user", "hi")
        call = asyncio.create_task(
            memory.history_window("s1", 10, token_counter=slow_counter)
        )
        await asyncio.to_thread(started.wait, 5)
        await memory.close()
        assert call.done()
        assert [m.content for m in call.result()] == ["hi"]
        with pytest.raises(StoreClosed):
            await memory.add("s1", "user", "late")

    run(main())


def test_wrapping_a_store_keeps_one_handle(url: str) -> None:
    sync = chatmem.open(url)

    async def main() -> None:
        memory = AsyncChatMemory(sync)
        await memory.add("s1", "user", "hi")
        assert memory.sync is sync
        assert [m.content for m in sync.history("s1")] == ["hi"]
        await memory.close()

    run(main())
    with pytest.raises(StoreClosed):
        sync.count()
    with pytest.raises(TypeError, match="wraps a chatmem store"):
        AsyncChatMemory("memory://")  # type: ignore[arg-type]


# -- the native hook ---------------------------------------------------


class NativeAsyncMemory(AsyncChatMemory):
    """Serves history on the loop itself, as an asyncio client would."""

    native_threads: list[int]

    async def history(
        self,
        session_id: str,
        *,
        last: int | None = None,
        limit: int | None = None,
        before: str | None = None,
        after: str | None = None,
    ) -> list[Message]:
        self.native_threads.append(threading.get_ident())
        return self.sync.history(
            session_id, last=last, limit=limit, before=before, after=after
        )


class NativeMemory(ArenaMemory):
    """A backend that declares the native hook."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> NativeMemory:
        return cls(**options)

    @classmethod
    async def open_async(
        cls, url: str, *, max_concurrency: int, **options: Any
    ) -> AsyncChatMemory:
        opened = NativeAsyncMemory(
            cls.from_url(url, **options), max_concurrency=max_concurrency
        )
        opened.native_threads = []
        return opened


def test_backend_with_native_hook_is_opened_through_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        chatmem.registry.BUILTIN, "native", (__name__, "NativeMemory", None)
    )

    async def main() -> None:
        memory = await chatmem.open_async("native://", namespace="n1")
        assert isinstance(memory, NativeAsyncMemory)
        assert memory.namespace == "n1"
        await memory.add("s1", "user", "offloaded write")
        found = await memory.history("s1")
        assert [m.content for m in found] == ["offloaded write"]
        assert memory.native_threads == [threading.get_ident()]
        await memory.close()

    run(main())
