"""A session's history: acceptance order, windows and cursor paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chatmem import BaseChatMessageMemory, InvalidMessage, Message, MessageNotFound


def _fill(memory: BaseChatMessageMemory, session: str, n: int) -> list[str]:
    stored = memory.add_messages(
        [Message(session_id=session, role="user", content=str(i)) for i in range(n)]
    )
    return [m.id or "" for m in stored]


def _contents(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


def test_unknown_session_is_empty(memory: BaseChatMessageMemory) -> None:
    assert memory.history("nobody") == []
    assert memory.history("nobody", last=5) == []


def test_order_is_acceptance_not_clock(memory: BaseChatMessageMemory) -> None:
    late = datetime(2030, 1, 1, tzinfo=UTC)
    early = datetime(2020, 1, 1, tzinfo=UTC)
    memory.add("s1", "user", "first", created_at=late)
    memory.add("s1", "assistant", "second", created_at=early)
    memory.add("s1", "user", "third", created_at=late)
    assert _contents(memory.history("s1")) == ["first", "second", "third"]
    assert _contents(memory.history("s1", last=2)) == ["second", "third"]


def test_identical_timestamps_keep_acceptance_order(
    memory: BaseChatMessageMemory,
) -> None:
    when = datetime(2026, 5, 5, tzinfo=UTC)
    for i in range(10):
        memory.add("s1", "user", str(i), created_at=when)
    assert _contents(memory.history("s1")) == [str(i) for i in range(10)]
    assert _contents(memory.query(session_id="s1")) == [str(i) for i in range(10)]


def test_last_keeps_newest(memory: BaseChatMessageMemory) -> None:
    _fill(memory, "s1", 30)
    _fill(memory, "s2", 5)
    assert _contents(memory.history("s1", last=20)) == [str(i) for i in range(10, 30)]
    assert _contents(memory.history("s1", last=100)) == [str(i) for i in range(30)]
    assert memory.history("s1", last=0) == []


def test_limit_keeps_earliest(memory: BaseChatMessageMemory) -> None:
    _fill(memory, "s1", 10)
    assert _contents(memory.history("s1", limit=3)) == ["0", "1", "2"]


def test_paging_forward_with_after(memory: BaseChatMessageMemory) -> None:
    ids = _fill(memory, "s1", 10)
    _fill(memory, "other", 3)
    seen: list[str] = []
    cursor = None
    while True:
        page = memory.history("s1", after=cursor, limit=3)
        if not page:
            break
        seen += _contents(page)
        cursor = page[-1].id
    assert seen == [str(i) for i in range(10)]
    assert memory.history("s1", after=ids[-1]) == []


def test_paging_backward_with_before(memory: BaseChatMessageMemory) -> None:
    ids = _fill(memory, "s1", 10)
    page = memory.history("s1", before=ids[7], limit=3)
    assert _contents(page) == ["4", "5", "6"]
    seen: list[str] = []
    cursor = None
    while True:
        page = (
            memory.history("s1", last=4)
            if cursor is None
            else memory.history("s1", before=cursor, limit=4)
        )
        if not page:
            break
        seen = _contents(page) + seen
        cursor = page[0].id
    assert seen == [str(i) for i in range(10)]


def test_between_two_cursors(memory: BaseChatMessageMemory) -> None:
    ids = _fill(memory, "s1", 10)
    assert _contents(memory.history("s1", after=ids[2], before=ids[6])) == [
        "3",
        "4",
        "5",
    ]
    assert _contents(memory.history("s1", after=ids[2], before=ids[8], last=2)) == [
        "6",
        "7",
    ]


def test_cursor_from_another_session_raises(memory: BaseChatMessageMemory) -> None:
    _fill(memory, "s1", 3)
    other = _fill(memory, "s2", 3)
    with pytest.raises(MessageNotFound):
        memory.history("s1", after=other[0])
    with pytest.raises(MessageNotFound):
        memory.history("s1", before="no-such-id", limit=0)


def test_bad_window_arguments(memory: BaseChatMessageMemory) -> None:
    with pytest.raises(InvalidMessage, match="not both"):
        memory.history("s1", last=2, limit=2)
    with pytest.raises(ValueError):
        memory.history("s1", last=-1)
    with pytest.raises(ValueError):
        memory.history("s1", limit=True)
    with pytest.raises(ValueError):
        memory.history("")


def test_history_survives_deleting_the_cursor_neighbours(
    memory: BaseChatMessageMemory,
) -> None:
    ids = _fill(memory, "s1", 6)
    memory.delete(ids[3])
    assert _contents(memory.history("s1", after=ids[1], limit=2)) == ["2", "4"]
    assert _contents(memory.history("s1", before=ids[5], limit=2)) == ["2", "4"]


def test_session_time_span(memory: BaseChatMessageMemory) -> None:
    now = datetime.now(UTC)
    memory.add("s1", "user", "old", created_at=now - timedelta(days=3))
    memory.add("s1", "user", "new", created_at=now)
    assert _contents(memory.history("s1", last=1)) == ["new"]
