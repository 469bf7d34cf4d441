"""Deleting a message, a session, and everything of a user."""

from __future__ import annotations

import pytest

from chatmem import BaseChatMessageMemory, MessageNotFound


def test_delete_one(memory: BaseChatMessageMemory) -> None:
    a = memory.add("s1", "user", "a")
    b = memory.add("s1", "user", "b")
    memory.delete(a.id or "")
    with pytest.raises(MessageNotFound):
        memory.get(a.id or "")
    assert [m.id for m in memory.history("s1")] == [b.id]
    assert memory.count() == 1
    with pytest.raises(MessageNotFound):
        memory.delete(a.id or "")
    with pytest.raises(KeyError):
        memory.delete("no-such-id")


def test_ids_are_not_reused_after_delete(memory: BaseChatMessageMemory) -> None:
    a = memory.add("s1", "user", "a")
    memory.delete(a.id or "")
    b = memory.add("s1", "user", "b")
    assert b.id != a.id
    with pytest.raises(MessageNotFound):
        memory.get(a.id or "")


def test_delete_session(memory: BaseChatMessageMemory) -> None:
    memory.add("s1", "user", "a", user_id="u1")
    memory.add("s1", "assistant", "b")
    kept = memory.add("s2", "user", "c", user_id="u1")
    assert memory.delete_session("s1") == 2
    assert memory.history("s1") == []
    assert memory.sessions() == ["s2"]
    assert memory.query(user_id="u1") == [kept]
    assert memory.delete_session("s1") == 0


def test_delete_user_erases_every_session(memory: BaseChatMessageMemory) -> None:
    memory.add("s1", "user", "a", user_id="u1")
    reply = memory.add("s1", "assistant", "b")
    memory.add("s2", "user", "c", user_id="u1")
    other = memory.add("s3", "user", "d", user_id="u2")
    assert memory.delete_user("u1") == 2
    assert memory.query(user_id="u1") == []
    assert memory.count(user_id="u1") == 0
    assert memory.sessions(user_id="u1") == []
    assert memory.history("s1") == [reply]
    assert memory.get(other.id or "") == other
    assert memory.sessions() == ["s1", "s3"]
    assert memory.delete_user("u1") == 0


def test_stats_follow_deletes(memory: BaseChatMessageMemory) -> None:
    ids = [memory.add("s1", "user", "x" * 100).id or "" for _ in range(5)]
    full = memory.stats()
    for message_id in ids:
        memory.delete(message_id)
    empty = memory.stats()
    assert full.message_count == 5
    assert empty.message_count == 0
    assert empty.used_bytes < full.used_bytes
