"""The byte budget: stats, allocation, policies and retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chatmem import CapacityExceeded, InvalidMessage

from .targets import Target


def test_unbounded_stats(target: Target) -> None:
    memory = target.open()
    memory.add("s1", "user", "hello")
    stats = memory.stats()
    assert stats.capacity_bytes is None
    assert stats.free_bytes is None
    assert stats.message_count == 1
    assert stats.used_bytes > 0
    assert 0.0 <= stats.fragmentation <= 1.0
    assert memory.max_messages(100) is None
    assert memory.remaining_messages(100) is None


def test_capacity_figures_follow_n_equals_m_over_s(target: Target) -> None:
    memory = target.open(capacity_bytes=1_000_000)
    overhead = memory.stats().message_overhead
    assert memory.max_messages(1000) == 1_000_000 // (1000 + overhead)
    before = memory.remaining_messages(1000)
    assert before is not None
    memory.add("s1", "user", "x" * 1000)
    after = memory.remaining_messages(1000)
    assert after is not None and after < before
    with pytest.raises(ValueError):
        memory.max_messages(-1)


def test_allocate_and_release(target: Target) -> None:
    memory = target.open(capacity_bytes=100_000)
    before = memory.stats()
    block = memory.allocate(40_000)
    assert block.size == 40_000
    held = memory.stats()
    assert held.allocated_bytes == 40_000
    assert held.free_bytes == (before.free_bytes or 0) - 40_000
    with pytest.raises(CapacityExceeded):
        memory.allocate(70_000)
    memory.release(block)
    assert memory.stats().allocated_bytes == 0
    with pytest.raises(ValueError):
        memory.release(block)
    with pytest.raises(ValueError):
        memory.allocate(0)


def test_reject_policy_refuses_and_keeps_data(target: Target) -> None:
    memory = target.open(capacity_bytes=20_000, policy="reject")
    stored = 0
    with pytest.raises(CapacityExceeded):
        for _ in range(100):
            memory.add("s1", "user", "x" * 1000)
            stored += 1
    assert 5 <= stored < 100
    assert memory.count() == stored
    stats = memory.stats()
    assert stats.used_bytes <= 20_000


def test_message_larger_than_budget_is_refused(target: Target) -> None:
    memory = target.open(capacity_bytes=5_000, policy="evict-oldest")
    memory.add("s1", "user", "small")
    with pytest.raises(CapacityExceeded):
        memory.add("s1", "user", "x" * 6_000)
    assert memory.count() == 1


def test_evict_oldest_keeps_newest(target: Target) -> None:
    memory = target.open(capacity_bytes=30_000, policy="evict-oldest")
    ids = [memory.add(f"s{i % 3}", "user", "x" * 1000).id for i in range(100)]
    kept = [m.id for m in memory.query()]
    assert 5 <= len(kept) < 100
    assert kept == ids[-len(kept) :]
    assert memory.stats().used_bytes <= 30_000


def test_evict_lru_session_drops_least_recent_session(target: Target) -> None:
    memory = target.open(capacity_bytes=40_000, policy="evict-lru-session")
    for session in ("a", "b", "c"):
        for _ in range(8):
            memory.add(session, "user", "x" * 1000)
    memory.history("a", last=1)  # a is now more recent than b
    for _ in range(40):
        memory.add("d", "user", "x" * 1000)
        if not {"a", "b", "c"} <= set(memory.sessions()):
            break
    assert "b" not in memory.sessions()
    assert "a" in memory.sessions()
    assert memory.stats().used_bytes <= 40_000


def test_retention_hides_and_drops_old_messages(target: Target) -> None:
    memory = target.open(retention=timedelta(hours=1))
    now = datetime.now(UTC)
    old = memory.add("s1", "user", "old", created_at=now - timedelta(hours=2))
    new = memory.add("s1", "user", "new")
    assert memory.history("s1") == [new]
    assert memory.query() == [new]
    assert memory.count() == 1
    assert memory.sessions() == ["s1"]
    with pytest.raises(KeyError):
        memory.get(old.id or "")


def test_bad_retention_is_refused(target: Target) -> None:
    with pytest.raises(InvalidMessage):
        target.open(retention=timedelta(0))
    with pytest.raises(InvalidMessage):
        target.open(retention=3600)
