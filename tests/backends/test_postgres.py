"""PostgresMemory: restarts, a lost server, many writers, URLs and secrets."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import chatmem
from chatmem import (
    BackendUnavailable,
    BaseChatMessageMemory,
    InvalidMessage,
    Message,
)
from chatmem.backends.postgres import PostgresMemory, split_url
from tests.waiting import wait_for


@pytest.fixture
def server(postgres_server: Any) -> Any:
    return postgres_server


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def memory(server: Any, schema: str) -> Iterator[BaseChatMessageMemory]:
    store = chatmem.open(server.url, schema=schema)
    try:
        yield store
    finally:
        store.close()


def _wait_for(call: Any, seconds: float) -> Any:
    """Call until it stops raising BackendUnavailable, or fail."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_reopen_keeps_messages_and_ids_keep_rising(server: Any, schema: str) -> None:
    with chatmem.open(server.url, schema=schema) as first:
        kept = first.add_messages(
            [Message(session_id="s1", role="user", content=f"m{i}") for i in range(5)]
        )
    with chatmem.open(server.url, schema=schema) as again:
        assert again.history("s1") == kept
        later = again.add("s1", "assistant", "after reopen")
    assert int(later.id or "0") > max(int(m.id or "0") for m in kept)


def test_server_restart_mid_run(server: Any, schema: str) -> None:
    memory = chatmem.open(server.url, schema=schema, timeout=2, retries=1)
    acknowledged: dict[str, str] = {}
    failures: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            content = f"message {i}"
            try:
                stored = memory.add("s1", "user", content)
            except BackendUnavailable:
                time.sleep(0.05)
                continue
            except BaseException as exc:  # reported below
                failures.append(exc)
                return
            acknowledged[stored.id or ""] = content
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(lambda: len(acknowledged) >= 50)
        server.stop()
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                memory.add("s1", "user", "while down")
            with pytest.raises(BackendUnavailable):
                memory.history("s1", last=5)
            # Two calls, each bounded by the 2 s timeout.
            assert time.monotonic() - started < 2 * 2 + 2
        finally:
            server.start()
        # The same store recovers: no reopen.
        before = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= before + 50, seconds=60)
    finally:
        stop.set()
        writer.join()

    assert failures == []
    history = _wait_for(lambda: memory.history("s1"), 30)
    ids = [m.id for m in history]
    assert len(ids) == len(set(ids))
    stored = {m.id: m.content for m in history}
    for message_id, content in acknowledged.items():
        assert stored[message_id] == content
    memory.close()


def test_store_opened_while_server_down_is_unavailable(server: Any) -> None:
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="Cannot connect"):
        chatmem.open("postgresql://chatmem:s3cret-pw@127.0.0.1:1/none", timeout=2)
    assert time.monotonic() - started < 4


def test_many_threads_write_one_session(memory: BaseChatMessageMemory) -> None:
    writers, per_writer = 8, 60
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            for i in range(0, per_writer, 3):
                if i % 2:
                    memory.add_messages(
                        [
                            Message(
                                session_id="shared",
                                role="user",
                                content=f"{writer}:{j}",
                            )
                            for j in range(i, i + 3)
                        ]
                    )
                else:
                    for j in range(i, i + 3):
                        memory.add("shared", "user", f"{writer}:{j}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    history = memory.history("shared")
    assert len(history) == writers * per_writer
    assert len({m.id for m in history}) == writers * per_writer
    assert [int(m.id or "0") for m in history] == sorted(
        int(m.id or "0") for m in history
    )
    for writer in range(writers):
        mine = [m.content for m in history if m.content.startswith(f"{writer}:")]
        assert mine == [f"{writer}:{i}" for i in range(per_writer)]
    assert memory.count(session_id="shared") == writers * per_writer


def test_handles_writing_together_stay_within_budget(server: Any, schema: str) -> None:
    # Separate handles have separate pools and connections, as separate
    # processes would: only the server can keep them within the budget.
    capacity = 40_000
    handles = [
        chatmem.open(
            server.url, schema=schema, capacity_bytes=capacity, policy="evict-oldest"
        )
        for _ in range(4)
    ]
    errors: list[BaseException] = []

    def write(handle: BaseChatMessageMemory, writer: int) -> None:
        try:
            for _ in range(150):
                handle.add(f"s{writer}", "user", "x" * 900)
                assert handle.stats().used_bytes <= capacity
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(h, w)) for w, h in enumerate(handles)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        stats = handles[0].stats()
        assert stats.used_bytes <= capacity
        assert 0 < stats.message_count < 600
        # The running totals agree with the rows themselves.
        with psycopg.connect(server.url) as conn:
            used, count = conn.execute(
                f'SELECT sum(size), count(*) FROM "{schema}".chatmem_messages'
            ).fetchone() or (0, 0)
        assert (used, count) == (stats.used_bytes, stats.message_count)
    finally:
        for handle in handles:
            handle.close()


def test_stores_opening_together_create_the_tables_once(
    server: Any, schema: str
) -> None:
    opened: list[BaseChatMessageMemory] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            opened.append(chatmem.open(server.url, schema=schema, capacity_bytes=10**6))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        for i, store in enumerate(opened):
            store.add("s1", "user", str(i))
        assert opened[0].count() == 6
        with psycopg.connect(server.url) as conn:
            versions = conn.execute(
                f'SELECT version FROM "{schema}".chatmem_schema_version'
            ).fetchall()
        assert versions == [(1,)]
    finally:
        for store in opened:
            store.close()


def test_budget_accounting_starts_on_existing_tables(server: Any, schema: str) -> None:
    with chatmem.open(server.url, schema=schema) as unbounded:
        for i in range(10):
            unbounded.add("s1", "user", "x" * 100, user_id=f"u{i}")
        used = unbounded.stats().used_bytes
    with chatmem.open(server.url, schema=schema, capacity_bytes=100_000) as bounded:
        assert bounded.stats().used_bytes == used
        assert bounded.count(session_id="s1") == 10
    with chatmem.open(server.url, schema=schema) as later:
        later.add("s1", "user", "y")
        later.delete_user("u3")
    with chatmem.open(server.url, schema=schema, capacity_bytes=100_000) as bounded:
        assert bounded.count(session_id="s1") == 10
        assert bounded.stats().message_count == 10


def test_table_prefix_keeps_stores_apart(server: Any, schema: str) -> None:
    with (
        chatmem.open(server.url, schema=schema, table_prefix="a_") as a,
        chatmem.open(server.url, schema=schema, table_prefix="b_") as b,
    ):
        a.add("s1", "user", "in a")
        assert b.history("s1") == []
        assert b.count() == 0


def test_injection_shaped_ids_are_data(memory: BaseChatMessageMemory) -> None:
    hostile = "s'); DROP TABLE chatmem_messages; --"
    memory.add(hostile, "user", "x", user_id="u' OR '1'='1")
    memory.add("other", "user", "y", user_id="u2")
    assert [m.content for m in memory.history(hostile)] == ["x"]
    assert memory.count(user_id="u' OR '1'='1") == 1
    assert memory.query(user_id="%") == []
    assert memory.sessions() == sorted([hostile, "other"])
    assert memory.delete_session("%") == 0
    assert memory.count() == 2


def test_nul_in_an_id_is_refused_and_nothing_stored(
    memory: BaseChatMessageMemory,
) -> None:
    with pytest.raises(InvalidMessage, match="NUL"):
        memory.add_messages(
            [
                Message(session_id="ok", role="user", content="a"),
                Message(session_id="bad\x00id", role="user", content="b"),
            ]
        )
    with pytest.raises(InvalidMessage, match="NUL"):
        memory.history("bad\x00id")
    assert memory.count() == 0


def test_microseconds_and_content_bytes_round_trip(
    memory: BaseChatMessageMemory,
) -> None:
    stored = memory.add_messages(
        [
            Message(session_id="s1", role="user", content=text)
            for text in ["nul \x00", "é" * 3, "\U0001f680"]
        ]
    )
    got = memory.history("s1")
    assert got == stored
    assert [m.created_at for m in got] == [m.created_at for m in stored]


def test_password_never_shows(server: Any) -> None:
    secret = "pw-Zx81-secret"
    with pytest.raises(BackendUnavailable) as caught:
        chatmem.open(f"postgresql://someone:{secret}@127.0.0.1:1/db", timeout=1)
    assert secret not in str(caught.value)
    assert caught.value.__cause__ is None

    user_url = server.url.replace("://", f"://:{secret}@", 1)
    if "@" in server.url:
        user_url = server.url.replace("@", f":{secret}@", 1)
    try:
        store = chatmem.open(user_url, schema=f"t_{uuid.uuid4().hex[:12]}")
    except BackendUnavailable as exc:  # the server checks passwords
        assert secret not in str(exc)
        return
    with store:
        assert secret not in repr(store)
        assert "postgres" in repr(store).lower()


@pytest.mark.parametrize(
    ("url", "conninfo", "options"),
    [
        ("postgresql://u@h:5/db", "postgresql://u@h:5/db", {}),
        ("postgres://u@h/db", "postgresql://u@h/db", {}),
        (
            "postgresql://u@h/db?schema=chat&timeout=2.5&sslmode=disable",
            "postgresql://u@h/db?sslmode=disable",
            {"schema": "chat", "timeout": 2.5},
        ),
    ],
)
def test_url_forms(url: str, conninfo: str, options: dict[str, Any]) -> None:
    assert split_url(url) == (conninfo, options)


def test_bad_options_are_refused(server: Any) -> None:
    with pytest.raises(InvalidMessage, match="retries"):
        split_url("postgresql://u@h/db?retries=many")
    with pytest.raises(InvalidMessage, match="schema"):
        chatmem.open(server.url, schema='x"; DROP SCHEMA public; --')
    with pytest.raises(InvalidMessage, match="timeout"):
        chatmem.open(server.url, timeout=0)


def test_tables_from_a_newer_chatmem_are_refused(server: Any, schema: str) -> None:
    PostgresMemory(server.url, schema=schema).close()
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{schema}".chatmem_schema_version VALUES (99)')
    with pytest.raises(BackendUnavailable, match="newer chatmem"):
        PostgresMemory(server.url, schema=schema)
