"""RedisMemory against a real Redis server on loopback.

The conformance suite covers the chat API; these tests cover what is
Redis's own: keys built from hostile ids, round trips, a server that stops
and comes back, the shared budget, retention's expiry, and credentials.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

import chatmem
from chatmem import (
    BackendUnavailable,
    CapacityExceeded,
    InvalidMessage,
    Message,
)
from chatmem.backends.redis import (
    RedisMemory,
    key_part,
    mask_url,
    parse_url,
)
from tests.waiting import wait_for

# Databases 2 and 3 of the session's server; the conformance suite uses 1.
DB = 2


@pytest.fixture
def server(redis_server: Any) -> Any:
    return redis_server


@pytest.fixture
def url(server: Any) -> str:
    """A URL of an emptied database of the test server."""
    address = urlsplit(server.url)._replace(path=f"/{DB}").geturl()
    with redis.Redis.from_url(address) as client:
        client.flushdb()
    return str(address)


@pytest.fixture
def raw(url: str) -> Iterator[Any]:
    """A plain redis-py client on the same database."""
    client = redis.Redis.from_url(url)
    yield client
    client.close()


@pytest.fixture
def opened() -> Iterator[list[RedisMemory]]:
    stores: list[RedisMemory] = []
    yield stores
    for store in stores:
        store.close()


@pytest.fixture
def store_at(url: str, opened: list[RedisMemory]) -> Callable[..., RedisMemory]:
    def open_store(**options: Any) -> RedisMemory:
        store = RedisMemory.from_url(url, **options)
        opened.append(store)
        return store

    return open_store


@pytest.fixture
def memory(store_at: Callable[..., RedisMemory]) -> RedisMemory:
    return store_at()


def _wait_until_up(client: Any) -> None:
    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_for(up, 30)


# -- URLs and credentials ----------------------------------------------------


def test_url_defaults_and_parts() -> None:
    assert parse_url("redis://") == {
        "host": "localhost",
        "port": 6379,
        "db": 0,
        "username": None,
        "password": None,
        "tls": False,
    }
    parts = parse_url("rediss://bot:p%40ss%3Aw0rd@cache.internal:6380/4")
    assert parts["host"] == "cache.internal"
    assert (parts["port"], parts["db"]) == (6380, 4)
    assert (parts["username"], parts["password"]) == ("bot", "p@ss:w0rd")
    assert parts["tls"] is True
    assert parse_url("redis://:only-secret@[::1]:7000")["host"] == "::1"
    assert parse_url("redis://:only-secret@[::1]:7000")["username"] is None


@pytest.mark.parametrize(
    "bad",
    [
        "redis://:hunter2@host:6379/zero",
        "redis://:hunter2@host:notaport/0",
        "redis://:hunter2@host:6379/0?socket_timeout=1",
        "http://:hunter2@host:6379/0",
    ],
)
def test_bad_url_is_refused_without_the_password(bad: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_url(bad)
    assert "hunter2" not in str(caught.value)


def test_mask_url_hides_passwords() -> None:
    assert mask_url("redis://:s3cret@h:1/0") == "redis://:***@h:1/0"
    assert mask_url("redis://bot:s3cret@h/0") == "redis://bot:***@h/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def guarded_server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A second Redis of our own that requires a password."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed")
    port, password = _free_port(), "correct horse battery"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            password,
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, password=password)
        _wait_until_up(client)
        client.close()
        yield port, password
    finally:
        process.terminate()
        process.wait(10)


def test_password_never_shows(guarded_server: tuple[int, str]) -> None:
    port, password = guarded_server
    escaped = password.replace(" ", "%20")
    with chatmem.open(f"redis://:{escaped}@127.0.0.1:{port}/0") as memory:
        stored = memory.add("s1", "user", "hello")
        assert memory.get(stored.id or "") == stored
        assert "correct" not in repr(memory)
        assert ":***@" in repr(memory)

    with pytest.raises(BackendUnavailable) as caught:
        chatmem.open(f"redis://:wrong-{escaped}@127.0.0.1:{port}/0")
    text = f"{caught.value} {caught.value!r} {caught.value.__cause__}"
    assert "correct" not in text
    assert "credentials" in str(caught.value)

    with pytest.raises(BackendUnavailable):
        chatmem.open(f"redis://127.0.0.1:{port}/0")


def test_closed_port_fails_fast_with_backend_unavailable() -> None:
    began = time.monotonic()
    with pytest.raises(BackendUnavailable, match="unavailable"):
        chatmem.open(f"redis://127.0.0.1:{_free_port()}/0", timeout=1, retries=2)
    assert time.monotonic() - began < 2


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0}, {"timeout": "5"}, {"retries": -1}, {"max_connections": 0}],
)
def test_bad_connection_options_are_refused(url: str, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidMessage):
        chatmem.open(url, **options)


# -- keys built from hostile ids ---------------------------------------------

HOSTILE = [
    "a:h:b",
    "*",
    "s{1}",
    "line\nbreak",
    "two words",
    "?",
    "[ab]",
    "%3A",
    ":",
    "l",
    "h:l",
    "ü",
    "\\*",
]


def test_hostile_ids_are_escaped_and_kept_apart(memory: RedisMemory, raw: Any) -> None:
    for session in HOSTILE:
        memory.add(session, "user", f"in {session!r}", user_id=session)
    for session in HOSTILE:
        assert [m.content for m in memory.history(session)] == [f"in {session!r}"]
        assert memory.count(user_id=session) == 1
        assert memory.sessions(user_id=session) == [session]
    assert memory.sessions() == sorted(HOSTILE)

    keys = {key.decode() for key in raw.scan_iter(count=1000)}
    prefix = "chatmem::"
    for key in keys:
        assert "\n" not in key and " " not in key
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            kind, _, part = rest.partition(":")
            assert kind in {"h", "u", "o", "t", "l", "b"}
            assert not any(c in part for c in ":*?[]{}\\")

    # Deleting the session named "*" or "[ab]" touches nothing else.
    assert memory.delete_session("*") == 1
    assert memory.delete_user("[ab]") == 1
    assert memory.count() == len(HOSTILE) - 2
    assert memory.history("a:h:b")[0].content == "in 'a:h:b'"


def test_escaping_is_one_to_one() -> None:
    names = ["%3A", ":", "%253A", "a b", "a%20b", "", "-_.~"]
    assert len({key_part(name) for name in names}) == len(names)
    for name in names:
        assert ":" not in key_part(name) and "|" not in key_part(name)


@pytest.mark.parametrize(("one", "other"), [("a", "a:b"), ("a", "a*"), ("", ":")])
def test_prefix_shaped_namespaces_stay_apart(
    store_at: Callable[..., RedisMemory], raw: Any, one: str, other: str
) -> None:
    first = store_at(namespace=one)
    second = store_at(namespace=other)
    kept = first.add("s", "user", "first", user_id="u")
    second.add("s", "user", "second", user_id="u")
    assert [m.content for m in first.history("s")] == ["first"]
    assert second.delete_user("u") == 1
    assert second.delete_session("s") == 0
    assert first.get(kept.id or "") == kept
    assert first.count() == 1

    # A glob over either namespace's keys matches none of the other's.
    keys = {key.decode() for key in raw.scan_iter()}
    for mine, theirs in ((one, other), (other, one)):
        pattern = f"chatmem:{key_part(mine)}:*"
        matched = {key.decode() for key in raw.scan_iter(match=pattern)}
        owned = {k for k in keys if k.startswith(f"chatmem:{key_part(mine)}:")}
        foreign = {k for k in keys if k.startswith(f"chatmem:{key_part(theirs)}:")}
        assert matched == owned
        assert owned and foreign and not owned & foreign


def test_deleting_everything_leaves_only_counters(
    memory: RedisMemory, raw: Any
) -> None:
    for i in range(30):
        memory.add(f"s{i % 3}", "user", "x", user_id=f"u{i % 2}")
    memory.delete_user("u0")
    memory.delete_session("s1")
    for message in memory.query():
        memory.delete(message.id or "")
    assert memory.count() == 0
    left = {key.decode() for key in raw.scan_iter()}
    assert left == {"chatmem:seq", "chatmem:stats", "chatmem::b"} | {
        key for key in left if key.startswith("chatmem:w:")
    }
    assert raw.get("chatmem::b") == b"0"
    assert memory.stats().used_bytes == 0


# -- round trips and indexes -------------------------------------------------


class _Counting:
    """Counts the commands a store sends, passing each to the server."""

    def __init__(self, memory: RedisMemory) -> None:
        self.calls: list[str] = []
        real: Callable[..., Any] = memory._client.execute_command

        def counted(*args: Any, **options: Any) -> Any:
            self.calls.append(str(args[0]))
            return real(*args, **options)

        memory._client.execute_command = counted  # type: ignore[method-assign]


def test_hot_paths_take_one_round_trip(memory: RedisMemory) -> None:
    batch = [
        Message(session_id="s1", role="user", content=f"m{i}", user_id="u")
        for i in range(100)
    ]
    counting = _Counting(memory)
    stored = memory.add_messages(batch)
    assert len(counting.calls) == 1
    memory.add("s1", "user", "one more")
    assert len(counting.calls) == 2
    window = memory.history("s1", last=20)
    assert len(counting.calls) == 3
    assert [m.content for m in window] == [f"m{i}" for i in range(81, 100)] + [
        "one more"
    ]
    assert memory.get(stored[5].id or "") == stored[5]
    assert len(counting.calls) == 4
    page = memory.history("s1", before=stored[50].id, limit=5)
    assert [m.content for m in page] == [f"m{i}" for i in range(45, 50)]
    assert len(counting.calls) == 5


def test_times_at_the_ends_of_the_calendar_keep_microsecond_order(
    memory: RedisMemory,
) -> None:
    early = datetime(1, 1, 1, tzinfo=UTC)
    late = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    tick = timedelta(microseconds=1)
    rows = [
        ("late", late),
        ("early+1", early + tick),
        ("early", early),
        ("late-1", late - tick),
        ("tie", early + tick),
    ]
    for content, when in rows:
        memory.add("s", "user", content, created_at=when)
    found = [m.content for m in memory.query()]
    assert found == ["early", "early+1", "tie", "late-1", "late"]
    assert [m.content for m in memory.query(start=early + tick, end=late)] == [
        "early+1",
        "tie",
        "late-1",
    ]
    assert memory.query(start=late)[0].created_at == late


def test_ids_above_the_exact_range_are_not_found(memory: RedisMemory) -> None:
    memory.add("s", "user", "x")
    for bad in ["9007199254740993", "01", "1" * 40, "\uff11"]:
        with pytest.raises(KeyError):
            memory.get(bad)


# -- concurrency and the shared budget ----------------------------------------


def test_many_threads_one_session_lose_and_repeat_nothing(
    store_at: Callable[..., RedisMemory],
) -> None:
    memory = store_at(max_connections=4)
    writers, per_writer = 8, 150
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            for i in range(per_writer):
                if i % 10 == 0:
                    batch = [
                        Message(session_id="s", role="user", content=f"{writer}:{i}")
                    ]
                    memory.add_messages(batch)
                else:
                    memory.add("s", "user", f"{writer}:{i}")
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []

    history = memory.history("s")
    assert len(history) == writers * per_writer
    assert len({m.content for m in history}) == writers * per_writer
    ids = [int(m.id or "") for m in history]
    assert ids == sorted(ids)
    for writer in range(writers):
        mine = [m.content for m in history if m.content.startswith(f"{writer}:")]
        assert mine == [f"{writer}:{i}" for i in range(per_writer)]
    assert memory.count() == memory.stats().message_count


def test_two_handles_share_one_budget(
    store_at: Callable[..., RedisMemory],
) -> None:
    capacity = 60_000
    handles = [store_at(capacity_bytes=capacity) for _ in range(2)]
    stored = [0, 0]

    def fill(index: int) -> None:
        try:
            while True:
                handles[index].add(f"s{index}", "user", "x" * 500)
                stored[index] += 1
        except CapacityExceeded:
            pass

    threads = [threading.Thread(target=fill, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = handles[0].stats()
    assert stats.used_bytes <= capacity
    assert stats.message_count == sum(stored)
    assert capacity - stats.used_bytes < 500 + handles[0].message_overhead + 64


def test_eviction_stays_in_its_namespace(
    store_at: Callable[..., RedisMemory],
) -> None:
    other = store_at(namespace="other")
    kept = [other.add("keep", "user", "y" * 800).id for _ in range(10)]
    mine = store_at(namespace="mine", capacity_bytes=30_000, policy="evict-oldest")
    for _ in range(40):
        mine.add("s", "user", "x" * 800)
    assert [m.id for m in other.history("keep")] == kept
    assert mine.stats().used_bytes <= 30_000

    # When the namespace alone cannot make room, the write is refused
    # and nothing of either namespace goes.
    greedy = store_at(namespace="empty", capacity_bytes=30_000, policy="evict-oldest")
    before = greedy.stats().message_count
    with pytest.raises(CapacityExceeded, match="too little"):
        greedy.add("s", "user", "z" * 20_000)
    assert greedy.stats().message_count == before
    assert other.count() == 10


def test_reads_mark_sessions_used_for_other_handles(
    store_at: Callable[..., RedisMemory],
) -> None:
    writer = store_at(capacity_bytes=40_000, policy="evict-lru-session")
    reader = store_at(policy="evict-lru-session")
    ids = {
        session: [writer.add(session, "user", "x" * 1000).id for _ in range(8)]
        for session in ("a", "b", "c")
    }
    # Written last, c is read by nobody: it becomes the least recent.
    reader.history("a", last=1)
    reader.get(ids["b"][0] or "")
    writer.add("d", "user", "x" * 1000)
    writer.add("d", "user", "x" * 1000)
    assert "c" not in writer.sessions()
    assert {"a", "b", "d"} <= set(writer.sessions())


# -- retries, stops and restarts ----------------------------------------------


def test_retried_write_after_a_lost_reply_is_stored_once(
    memory: RedisMemory,
) -> None:
    real: Callable[..., Any] = memory._client.execute_command
    dropped: list[str] = []

    def lose_first_reply(*args: Any, **options: Any) -> Any:
        reply = real(*args, **options)
        if args[0] == "FCALL" and args[3] == "add" and not dropped:
            dropped.append("once")
            raise redis.ConnectionError("connection reset after the write")
        return reply

    memory._client.execute_command = lose_first_reply  # type: ignore[method-assign]
    stored = memory.add("s", "user", "only once")
    assert dropped == ["once"]
    assert memory.history("s") == [stored]
    assert memory.count() == 1
    assert memory.stats().message_count == 1
    following = memory.add("s", "user", "next")
    assert int(following.id or "") > int(stored.id or "")


def test_a_server_that_forgot_the_library_gets_it_again(
    memory: RedisMemory, raw: Any
) -> None:
    stored = memory.add("s", "user", "before")
    raw.function_flush()
    assert raw.function_list() == []
    after = memory.add("s", "user", "after")
    assert memory.history("s") == [stored, after]
    assert raw.function_list() != []


def test_reopen_keeps_everything(store_at: Callable[..., RedisMemory]) -> None:
    first = store_at()
    stored = first.add("s", "user", "kept", user_id="u", metadata={"k": 1})
    first.close()
    again = store_at()
    assert again.get(stored.id or "") == stored
    assert again.query(user_id="u") == [stored]
    assert int(again.add("s", "user", "later").id or "") > int(stored.id or "")


@pytest.mark.parametrize("halt", ["stop", "kill"])
def test_server_halted_and_restarted_mid_run(
    server: Any, store_at: Callable[..., RedisMemory], raw: Any, halt: str
) -> None:
    # The test server fsyncs its AOF on every write, so even a kill loses
    # nothing the server acknowledged.
    memory = store_at(timeout=2, retries=2)
    acknowledged: list[Message] = []
    failures: list[float] = []
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            began = time.monotonic()
            try:
                acknowledged.append(memory.add("s", "user", f"m{i}"))
            except BackendUnavailable:
                failures.append(time.monotonic() - began)
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(lambda: len(acknowledged) >= 50)
        try:
            getattr(server, halt)()
            wait_for(lambda: len(failures) >= 3)

            began = time.monotonic()
            with pytest.raises(BackendUnavailable):
                memory.history("s", last=20)
            assert time.monotonic() - began < memory.timeout + 0.5
            with pytest.raises(BackendUnavailable):
                memory.get(acknowledged[0].id or "")
        finally:
            server.start()
        _wait_until_up(raw)
        count = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= count + 50)
    finally:
        stop.set()
        writer.join()

    assert max(failures) < memory.timeout + 0.5
    history = memory.history("s")
    contents = [m.content for m in history]
    assert len(contents) == len(set(contents))
    assert {m.id for m in acknowledged} <= {m.id for m in history}
    assert contents == sorted(contents, key=lambda c: int(c[1:]))
    assert memory.count() == len(history)


# -- retention ----------------------------------------------------------------


def test_sessions_expire_with_their_newest_message(
    store_at: Callable[..., RedisMemory], raw: Any
) -> None:
    retention = timedelta(hours=1)
    memory = store_at(retention=retention)
    now = datetime.now(UTC)
    memory.add("s", "user", "older", created_at=now - timedelta(minutes=30))
    memory.add("s", "user", "newer", created_at=now - timedelta(minutes=10))
    memory.add("s", "user", "backdated", created_at=now - timedelta(minutes=50))
    expires_ms = raw.pexpiretime("chatmem::h:s")
    expected = (now - timedelta(minutes=10) + retention).timestamp() * 1000
    assert abs(expires_ms - expected) < 5

    plain = store_at()
    plain.add("p", "user", "kept forever")
    assert raw.pexpiretime("chatmem::h:p") == -1
    memory.add("p", "user", "does not make p expire")
    assert raw.pexpiretime("chatmem::h:p") == -1


def test_expired_session_leaves_no_trace_after_a_count(
    store_at: Callable[..., RedisMemory], raw: Any
) -> None:
    retention = timedelta(hours=1)
    memory = store_at(retention=retention)
    # Created so that the session key expires about 300 ms from now.
    soon = datetime.now(UTC) - retention + timedelta(milliseconds=300)
    memory.add("s", "user", "fading", user_id="u", created_at=soon)
    memory.add("t", "user", "staying", user_id="u")
    assert memory.stats().message_count == 2
    wait_for(lambda: not raw.exists("chatmem::h:s"))

    assert memory.count() == 1
    assert memory.sessions() == ["t"]
    assert memory.stats().message_count == 1
    assert [m.content for m in memory.query(user_id="u")] == ["staying"]
    assert raw.zcard("chatmem::t") == 1


def test_writes_trim_expired_messages(
    store_at: Callable[..., RedisMemory], raw: Any
) -> None:
    memory = store_at(retention=timedelta(hours=1))
    old = datetime.now(UTC) - timedelta(hours=2)
    memory.add_messages(
        [Message(session_id="s", role="user", content="old", created_at=old)] * 5
    )
    assert raw.zcard("chatmem::o") == 5
    memory.add("s", "user", "new")
    assert raw.zcard("chatmem::o") == 1
    assert memory.stats().message_count == 1
