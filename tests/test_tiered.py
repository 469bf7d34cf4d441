"""The hot tier: freshness across instances, staleness, crashes, budget.

The conformance suite runs every persistent backend behind a tier as
``<name>+tier``; this module tests what only a tier has. Stores that check
each read against the backend (SQLite, Redis, PostgreSQL) and stores that
learn of changes from their log's tail (Kafka, RabbitMQ Streams) are
tested apart, both derived from the conformance targets.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import chatmem
from chatmem import (
    BackendUnavailable,
    BaseChatMessageMemory,
    InvalidMessage,
    Message,
    TieredMemory,
)
from chatmem.backends.log import LogMemory, Outgoing
from chatmem.message import Prepared
from chatmem.registry import BUILTIN, backend_class

from .conformance.targets import TARGETS, Target

TIER = 1 << 20


def _kind(name: str) -> str:
    if name not in BUILTIN:
        return "other"
    cls = backend_class(name)
    if not cls.persistent:
        return "volatile"
    return "log" if issubclass(cls, LogMemory) else "checked"


CHECKED = sorted(n for n in TARGETS if _kind(n) == "checked")
LOGS = sorted(n for n in TARGETS if _kind(n) == "log")


def _target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    made = TARGETS[request.param](request, tmp_path)
    try:
        yield made
    finally:
        made.close_all()


@pytest.fixture(params=CHECKED)
def checked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A fresh store of a backend the tier checks on every read."""
    yield from _target(request, tmp_path)


@pytest.fixture(params=LOGS)
def logged(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A fresh store of a log backend, whose tail tells the tier."""
    yield from _target(request, tmp_path)


@pytest.fixture(params=CHECKED + LOGS)
def persistent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A fresh store of any persistent backend."""
    yield from _target(request, tmp_path)


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Target]:
    """A fresh SQLite store: the embedded default, checked on every read."""
    made = Target("sqlite", f"sqlite:///{tmp_path / 'chat.db'}", persistent=True)
    try:
        yield made
    finally:
        made.close_all()


def _tier(store: BaseChatMessageMemory) -> chatmem.TierStats:
    figures = store.stats().hot_tier
    assert figures is not None
    return figures


def _open_tier(target: Target) -> TieredMemory:
    store = target.open(cache_bytes=TIER)
    assert isinstance(store, TieredMemory)
    return store


def _contents(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


def _wait_for(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


# -- opening -------------------------------------------------------------


def test_open_with_cache_bytes_wraps_the_backend(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=TIER)
    assert isinstance(store, TieredMemory)
    assert type(store.backend).__name__ == "SQLiteMemory"
    assert "cache_bytes=1048576" in repr(store)
    assert not isinstance(sqlite.open(), TieredMemory)


def test_bad_tier_options_are_refused(sqlite: Target) -> None:
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(InvalidMessage, match="cache_bytes"):
            sqlite.open(cache_bytes=bad)
    with pytest.raises(InvalidMessage, match="cache_staleness"):
        sqlite.open(cache_bytes=TIER, cache_staleness=5)
    with pytest.raises(InvalidMessage, match="needs cache_bytes"):
        sqlite.open(cache_staleness=timedelta(seconds=1))
    with pytest.raises(InvalidMessage, match="persistent"):
        chatmem.open("memory://", cache_bytes=TIER)


# -- reads served from the tier ------------------------------------------


def test_repeated_reads_hit_the_tier(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=TIER)
    stored = [store.add("s1", "user", f"m{i}") for i in range(30)]
    first = store.history("s1", last=20)
    assert first == stored[-20:]
    assert _tier(store).misses == 1
    assert store.history("s1", last=20) == stored[-20:]
    assert store.history("s1", last=5) == stored[-5:]
    figures = _tier(store)
    assert figures.hits == 2
    assert figures.message_count == 20
    assert figures.session_count == 1
    assert 0 < figures.used_bytes <= TIER
    assert figures.hit_ratio == pytest.approx(2 / 3)


def test_own_writes_extend_the_cached_session(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=TIER)
    store.add("s1", "user", "one")
    store.history("s1", last=20)
    added = store.add("s1", "assistant", "two", metadata={"tool_calls": []})
    assert store.history("s1", last=20)[-1] == added
    assert _tier(store).hits == 1
    assert store.get(added.id or "") == added


def test_longer_read_than_cached_goes_to_the_backend(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=TIER)
    for i in range(50):
        store.add("s1", "user", f"m{i}")
    store.history("s1", last=10)
    assert _contents(store.history("s1", last=40)) == [f"m{i}" for i in range(10, 50)]
    assert _tier(store).hits == 0
    assert _contents(store.history("s1")) == [f"m{i}" for i in range(50)]
    assert _contents(store.history("s1", limit=3)) == ["m0", "m1", "m2"]
    assert _tier(store).hits == 1  # the whole session is held now


def test_cursor_pages_are_served_and_grow_the_cached_run(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=TIER)
    stored = [store.add("s1", "user", f"m{i}") for i in range(40)]
    store.history("s1", last=10)
    edge = stored[30].id
    older = store.history("s1", before=edge, limit=10)
    assert older == stored[20:30]
    assert store.history("s1", before=edge, limit=10) == stored[20:30]
    assert store.history("s1", after=stored[25].id, limit=3) == stored[26:29]
    assert _tier(store).hits == 2


def test_history_window_is_served_from_the_tier(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=TIER)
    store.add("s1", "system", "You help with parcels.")
    for i in range(60):
        store.add("s1", "user", f"question {i} " * 5)
    bare = sqlite.open().history_window("s1", 300)
    assert store.history_window("s1", 300) == bare
    before = _tier(store).hits
    assert store.history_window("s1", 300) == bare
    assert _tier(store).hits > before


def test_changing_a_returned_message_leaves_the_tier_alone(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=TIER)
    store.add("s1", "assistant", "x", metadata={"tool_calls": [{"id": "c1"}]})
    store.history("s1", last=5)
    served = store.history("s1", last=5)[0]
    served.metadata["tool_calls"].append("changed")
    assert store.history("s1", last=5)[0].metadata == {"tool_calls": [{"id": "c1"}]}


# -- never stale by surprise ---------------------------------------------


def test_another_instance_write_shows_through_the_tier(checked: Target) -> None:
    first = checked.open(cache_bytes=TIER)
    second = checked.open()
    kept = first.add("s1", "user", "one")
    assert first.history("s1", last=20) == [kept]
    assert first.history("s1", last=20) == [kept]  # now from the tier

    theirs = second.add("s1", "assistant", "two")
    assert first.history("s1", last=20) == [kept, theirs]

    second.delete(kept.id or "")
    assert first.history("s1", last=20) == [theirs]
    with pytest.raises(KeyError):
        first.get(kept.id or "")

    assert second.delete_session("s1") == 1
    assert first.history("s1", last=20) == []


def test_another_instance_write_shows_after_sync(logged: Target) -> None:
    first = _open_tier(logged)
    second = logged.open()
    kept = first.add("s1", "user", "one")
    first.history("s1", last=20)
    assert first.history("s1", last=20) == [kept]
    assert _tier(first).hits == 1

    theirs = second.add("s1", "assistant", "two")
    first.sync()
    assert first.history("s1", last=20) == [kept, theirs]

    second.delete(kept.id or "")
    first.sync()
    assert first.history("s1", last=20) == [theirs]
    with pytest.raises(KeyError):
        first.get(kept.id or "")

    second.delete_session("s1")
    first.sync()
    assert first.history("s1", last=20) == []


def test_own_writes_keep_a_log_session_cached(logged: Target) -> None:
    store = _open_tier(logged)
    store.add("s1", "user", "m0")
    store.history("s1", last=20)
    for i in range(1, 6):
        store.add("s1", "user", f"m{i}")
        store.history("s1", last=20)
    store.sync()  # the tail has seen every own record again
    assert _contents(store.history("s1", last=20)) == [f"m{i}" for i in range(6)]
    assert _tier(store).hits == 6


def _hold_tail(store: LogMemory) -> None:
    # Stop the tail thread; the test then applies the log by hand.
    thread = store._thread
    assert thread is not None
    store._stopping.set()
    thread.join()
    store._stopping.clear()


def _tail_to(store: LogMemory, ends: dict[int, int]) -> None:
    deadline = time.monotonic() + 10
    while not store._caught_up(ends):
        assert time.monotonic() < deadline, "the tail did not reach the log's end"
        store._tail_once()


def test_own_batch_the_tail_read_first_shows_at_once(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The tail may read a batch's messages before their writer applies
    # the acknowledgement; they wait in pending for the commit record. The
    # write must not return before they show, or the tier caches the
    # session without them and never learns otherwise.
    kafka = TARGETS["kafka"](request, tmp_path)
    try:
        store = _open_tier(kafka)
        backend = store.backend
        assert isinstance(backend, LogMemory)
        _hold_tail(backend)
        system = store.add("s1", "system", "rules")

        driver = backend._driver
        publish = driver.publish

        def publish_then_tail(records: Sequence[Outgoing]) -> list[int | None]:
            offsets = publish(records)
            if len(records) > 1:  # the messages, before their commit record
                ends: dict[int, int] = {}
                for record, offset in zip(records, offsets, strict=True):
                    assert offset is not None
                    ends[record.partition] = max(
                        ends.get(record.partition, 0), offset + 1
                    )
                _tail_to(backend, ends)
            return offsets

        monkeypatch.setattr(driver, "publish", publish_then_tail)
        stored = store.add_messages(
            [Message(session_id="s1", role="user", content=f"m{i}") for i in range(40)]
        )
        assert store.history("s1", last=8) == stored[-8:]
        assert store.history_window("s1", 45, token_counter=lambda m: 10) == [
            system,
            *stored[-3:],
        ]

        _tail_to(backend, driver.end_offsets())
        assert store.history("s1") == [system, *stored]
        assert store.history("s1") == backend.history("s1")
    finally:
        kafka.close_all()


def test_a_failed_write_the_log_took_shows_once_applied(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A write whose acknowledgement was lost is not in the index when it
    # fails, but the log has it and the tail applies it later: the tier
    # must not keep serving the session without it.
    kafka = TARGETS["kafka"](request, tmp_path)
    try:
        store = _open_tier(kafka)
        backend = store.backend
        assert isinstance(backend, LogMemory)
        _hold_tail(backend)
        first = store.add("s1", "user", "one")

        driver = backend._driver
        publish = driver.publish

        def publish_then_fail(records: Sequence[Outgoing]) -> list[int | None]:
            publish(records)
            raise BackendUnavailable("the acknowledgement was lost")

        monkeypatch.setattr(driver, "publish", publish_then_fail)
        with pytest.raises(BackendUnavailable):
            store.add("s1", "user", "two")
        monkeypatch.undo()
        assert store.history("s1", last=20) == [first]
        assert store.history("s1", last=20) == [first]
        assert _tier(store).hits == 1

        _tail_to(backend, driver.end_offsets())
        assert _contents(store.history("s1", last=20)) == ["one", "two"]
        assert store.history("s1", last=20) == backend.history("s1", last=20)
    finally:
        kafka.close_all()


def test_a_read_during_a_write_caches_it_once(
    sqlite: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read that lands between the backend's acknowledgement and the
    # tier's update (another thread's, here forced in the writer's own)
    # already caches the new message; the update must not add it again.
    store = _open_tier(sqlite)
    first = store.add("s1", "user", "one")
    backend = store.backend
    write = backend._write

    def write_then_read(prepared: list[Prepared]) -> list[Message]:
        stored = write(prepared)
        store.history("s1", last=20)
        return stored

    monkeypatch.setattr(backend, "_write", write_then_read)
    second = store.add("s1", "user", "two")
    monkeypatch.undo()
    assert store.history("s1", last=20) == [first, second]
    assert _tier(store).message_count == 2


def test_another_process_write_shows_through_the_tier(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=TIER)
    kept = store.add("s1", "user", "one")
    store.history("s1", last=20)
    assert store.history("s1", last=20) == [kept]
    assert _tier(store).hits == 1

    code = "import chatmem, sys; chatmem.open(sys.argv[1]).add('s1', 'user', 'two')"
    subprocess.run([sys.executable, "-c", code, sqlite.url], check=True)
    assert _contents(store.history("s1", last=20)) == ["one", "two"]
    code = "import chatmem, sys; chatmem.open(sys.argv[1]).delete(sys.argv[2])"
    subprocess.run([sys.executable, "-c", code, sqlite.url, kept.id or ""], check=True)
    assert _contents(store.history("s1", last=20)) == ["two"]


def test_sqlite_serves_get_while_no_other_writer_committed(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=TIER)
    other = sqlite.open()
    first = store.add("s1", "user", "one")
    store.history("s1", last=20)
    assert store.get(first.id or "") == first
    assert _tier(store).hits == 1  # PRAGMA data_version stood still

    other.delete(first.id or "")
    with pytest.raises(KeyError):
        store.get(first.id or "")


def test_reads_skip_checks_that_cost_more_than_they_save(checked: Target) -> None:
    store = _open_tier(checked)
    other = checked.open()
    stored = [store.add("s1", "user", f"m{i}") for i in range(5)]
    store.history("s1", last=20)
    # As if measured on a backend where a check costs more than a read:
    store._check_cost, store._read_cost, store._check_fails = 10.0, 1.0, 0.0
    store._checks = store._reads = 1000

    other.add("s2", "user", "a commit elsewhere")  # moves SQLite's mark
    before = _tier(store)
    for _ in range(64):
        assert store.history("s1", last=20) == stored
    after = _tier(store)
    if store._marking:
        # A check also records SQLite's mark anew, which serves the later
        # reads without one: always worth making.
        assert (after.hits - before.hits, after.misses - before.misses) == (64, 0)
    else:
        # One read in PROBE_EVERY still checks, and the tier serves it.
        assert (after.hits - before.hits, after.misses - before.misses) == (2, 62)


def test_stale_sessions_are_checked_whatever_a_check_costs(checked: Target) -> None:
    # A check that buys a while of unchecked reads always pays.
    store = checked.open(cache_bytes=TIER, cache_staleness=timedelta(0))
    assert isinstance(store, TieredMemory)
    stored = [store.add("s1", "user", f"m{i}") for i in range(5)]
    store.history("s1", last=20)
    store._check_cost, store._read_cost, store._check_fails = 10.0, 1.0, 0.0
    store._checks = store._reads = 1000
    before = _tier(store)
    for _ in range(10):
        assert store.history("s1", last=20) == stored
    assert _tier(store).hits - before.hits == 10


def test_staleness_bound_is_honoured(sqlite: Target) -> None:
    bound = timedelta(milliseconds=500)
    first = sqlite.open(cache_bytes=TIER, cache_staleness=bound)
    second = sqlite.open()
    kept = first.add("s1", "user", "one")
    assert first.history("s1", last=20) == [kept]

    theirs = second.add("s1", "assistant", "two")
    written = time.monotonic()
    # Within the bound the tier may answer without asking the backend.
    assert first.history("s1", last=20) == [kept]

    assert _wait_for(lambda: first.history("s1", last=20) == [kept, theirs], 3)
    assert time.monotonic() - written <= bound.total_seconds() + 0.25


def test_zero_staleness_still_serves_within_the_same_instant(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=TIER, cache_staleness=timedelta(0))
    other = sqlite.open()
    store.add("s1", "user", "one")
    store.history("s1", last=5)
    added = other.add("s1", "user", "two")
    assert store.history("s1", last=5)[-1] == added


# -- crashes, budget, deletes, retention, namespaces ---------------------

WRITER = """
import sys
import chatmem
memory = chatmem.open(sys.argv[1], cache_bytes=1 << 16, **eval(sys.argv[2]))
print("ready", flush=True)
i = 0
while True:
    stored = memory.add(f"s{i % 5}", "user", f"message {i}", user_id="u")
    memory.history(f"s{i % 5}", last=20)
    print(stored.id, i, flush=True)
    i += 1
"""


def test_a_killed_process_loses_nothing_acknowledged(persistent: Target) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, persistent.url, repr(persistent.options)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        acknowledged = {}
        for _ in range(200):
            message_id, index = child.stdout.readline().split()
            acknowledged[message_id] = f"message {index}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()

    reader = persistent.open()
    for message_id, content in acknowledged.items():
        assert reader.get(message_id).content == content
    assert reader.count() >= len(acknowledged)


def test_eviction_keeps_the_budget_and_the_messages(sqlite: Target) -> None:
    budget = 40_000
    store = sqlite.open(cache_bytes=budget)
    written = {
        f"s{n}": [store.add(f"s{n}", "user", f"{n}:{i} " * 10) for i in range(20)]
        for n in range(12)
    }
    for session in written:
        store.history(session, last=20)
        assert _tier(store).used_bytes <= budget
    figures = _tier(store)
    assert figures.evictions > 0
    assert figures.session_count < len(written)

    # Evicted sessions are read from the backend again, whole and in order.
    for session, messages in written.items():
        assert store.history(session, last=20) == messages
        assert store.get(messages[3].id or "") == messages[3]
    assert _tier(store).used_bytes <= budget


def test_a_session_larger_than_the_budget_is_not_cached(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=2_000)
    for _ in range(20):
        store.add("big", "user", "x" * 200)
    assert len(store.history("big", last=20)) == 20
    assert _tier(store).session_count == 0
    assert _tier(store).used_bytes == 0


def test_deletes_through_the_tier(checked: Target) -> None:
    store = checked.open(cache_bytes=TIER)
    a = store.add("s1", "user", "a", user_id="u1")
    b = store.add("s1", "user", "b", user_id="u2")
    c = store.add("s2", "user", "c", user_id="u1")
    for session in ("s1", "s2"):
        store.history(session, last=20)

    store.delete(a.id or "")
    assert store.history("s1", last=20) == [b]
    with pytest.raises(KeyError):
        store.get(a.id or "")

    assert store.delete_user("u1") == 1
    assert store.history("s2", last=20) == []
    with pytest.raises(KeyError):
        store.get(c.id or "")

    assert store.delete_session("s1") == 1
    assert store.history("s1", last=20) == []
    assert store.count() == 0


def test_retention_expires_cached_messages(sqlite: Target) -> None:
    store = sqlite.open(cache_bytes=TIER, retention=timedelta(seconds=1))
    soon = datetime.now(UTC) - timedelta(milliseconds=700)
    going = store.add("s1", "user", "going", created_at=soon)
    staying = store.add("s1", "user", "staying")
    assert store.history("s1", last=20) == [going, staying]
    assert _wait_for(lambda: store.history("s1", last=20) == [staying], 3)
    with pytest.raises(KeyError):
        store.get(going.id or "")


def test_namespaces_stay_apart_through_the_tier(checked: Target) -> None:
    tenant_a = checked.open(namespace="a", cache_bytes=TIER)
    tenant_b = checked.open(namespace="b", cache_bytes=TIER)
    mine = tenant_a.add("shared", "user", "from a")
    tenant_a.history("shared", last=20)
    theirs = tenant_b.add("shared", "user", "from b")
    assert tenant_a.history("shared", last=20) == [mine]
    assert tenant_b.history("shared", last=20) == [theirs]
    with pytest.raises(KeyError):
        tenant_b.get(mine.id or "")
    tenant_b.delete_session("shared")
    assert tenant_a.history("shared", last=20) == [mine]


def test_reads_from_the_tier_count_as_use_for_lru_eviction(sqlite: Target) -> None:
    store = sqlite.open(
        cache_bytes=TIER, capacity_bytes=40_000, policy="evict-lru-session"
    )
    for _ in range(8):
        store.add("a", "user", "x" * 1000)
    store.history("a", last=20)
    for _ in range(8):
        store.add("b", "user", "x" * 1000)
    store.add("c", "user", "x" * 1000)
    store.history("a", last=20)  # served by the tier: a is newer than b
    assert _tier(store).hits == 1
    for _ in range(40):
        store.add("c", "user", "x" * 1000)
        if "b" not in store.sessions():
            break
    assert "b" not in store.sessions()
    assert "a" in store.sessions()


def test_concurrent_writers_through_the_tier_keep_order(checked: Target) -> None:
    store = checked.open(cache_bytes=TIER)
    store.add("shared", "user", "start")
    store.history("shared", last=500)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            for i in range(25):
                store.add("shared", "user", f"{writer}:{i}")
                store.history("shared", last=500)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.history("shared", last=500) == checked.open().history("shared")


def test_cli_stats_shows_the_hot_tier(
    sqlite: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    from argparse import Namespace

    from chatmem.cli import cmd_stats

    store = sqlite.open(cache_bytes=TIER)
    store.add("s1", "user", "hello")
    store.history("s1", last=20)
    store.history("s1", last=20)
    assert cmd_stats(store, Namespace(size=100)) == 0
    out = capsys.readouterr().out
    assert "hot tier " in out and "of 1.0 MiB, 1 messages of 1 sessions" in out
    assert "50.0% hits (1 of 2), 0 sessions evicted" in out
