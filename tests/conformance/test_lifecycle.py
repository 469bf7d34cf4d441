"""Closing, reopening, namespaces and concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from chatmem import StoreClosed

from .targets import Target


def test_reopen_keeps_everything(target: Target) -> None:
    if not target.persistent:
        pytest.skip(f"{target.name} keeps nothing after close, by design")
    memory = target.open()
    stored = memory.add("s1", "user", "kept", user_id="u1", metadata={"k": [1]})
    memory.add("s1", "assistant", "reply")
    memory.close()

    again = target.open()
    assert again.get(stored.id or "") == stored
    assert [m.content for m in again.history("s1")] == ["kept", "reply"]
    later = again.add("s1", "user", "after reopen")
    assert later.id not in {stored.id}
    assert [m.content for m in again.history("s1", last=1)] == ["after reopen"]


def test_closed_store_raises(target: Target) -> None:
    memory = target.open()
    stored = memory.add("s1", "user", "x")
    memory.close()
    memory.close()  # closing twice is harmless
    calls: list[Callable[[], object]] = [
        lambda: memory.add("s1", "user", "y"),
        lambda: memory.get(stored.id or ""),
        lambda: memory.history("s1"),
        lambda: memory.query(),
        lambda: memory.sessions(),
        lambda: memory.count(),
        lambda: memory.delete(stored.id or ""),
        lambda: memory.stats(),
        lambda: memory.allocate(10),
    ]
    for call in calls:
        with pytest.raises(StoreClosed):
            call()


def test_context_manager_closes(target: Target) -> None:
    with target.open() as memory:
        memory.add("s1", "user", "x")
    with pytest.raises(StoreClosed):
        memory.count()


def test_namespaces_do_not_see_each_other(target: Target) -> None:
    if target.name == "memory":
        pytest.skip("every memory:// open is a store of its own")
    tenant_a = target.open(namespace="a")
    tenant_b = target.open(namespace="b")
    a = tenant_a.add("shared", "user", "from a", user_id="u")
    tenant_b.add("shared", "user", "from b", user_id="u")
    assert [m.content for m in tenant_a.history("shared")] == ["from a"]
    assert [m.content for m in tenant_b.query(user_id="u")] == ["from b"]
    assert tenant_b.count() == 1
    with pytest.raises(KeyError):
        tenant_b.get(a.id or "")
    with pytest.raises(KeyError):
        tenant_b.delete(a.id or "")
    assert tenant_b.delete_user("u") == 1
    assert tenant_a.count(user_id="u") == 1
    assert tenant_b.delete_session("shared") == 0
    assert tenant_a.history("shared")[0] == a


def test_concurrent_writers_lose_nothing(target: Target) -> None:
    memory = target.open()
    writers, per_writer = 4, 50
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            for i in range(per_writer):
                memory.add("shared", "user", f"{writer}:{i}")
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
    for writer in range(writers):
        mine = [m.content for m in history if m.content.startswith(f"{writer}:")]
        assert mine == [f"{writer}:{i}" for i in range(per_writer)]
