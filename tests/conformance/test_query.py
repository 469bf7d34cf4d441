"""Queries by session, user, role and time; sessions and counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from chatmem import BaseChatMessageMemory, InvalidMessage, Message

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def day(memory: BaseChatMessageMemory) -> BaseChatMessageMemory:
    rows = [
        ("s1", "user", "u1", 0),
        ("s1", "assistant", None, 1),
        ("s2", "user", "u2", 2),
        ("s1", "user", "u1", 3),
        ("s3", "user", "u1", 4),
        ("s2", "assistant", None, 5),
        ("s3", "tool", None, 6),
    ]
    memory.add_messages(
        [
            Message(
                session_id=s,
                role=r,
                content=f"{s}@{t}",
                user_id=u,
                created_at=_at(t),
            )
            for s, r, u, t in rows
        ]
    )
    return memory


def _contents(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


def test_query_by_user_in_window(day: BaseChatMessageMemory) -> None:
    found = day.query(user_id="u1", start=_at(0), end=_at(4))
    assert _contents(found) == ["s1@0", "s1@3"]


def test_start_inclusive_end_exclusive(day: BaseChatMessageMemory) -> None:
    assert _contents(day.query(start=_at(2), end=_at(5))) == [
        "s2@2",
        "s1@3",
        "s3@4",
    ]


def test_open_ended_ranges(day: BaseChatMessageMemory) -> None:
    assert _contents(day.query(start=_at(5))) == ["s2@5", "s3@6"]
    assert _contents(day.query(end=_at(1))) == ["s1@0"]
    assert len(day.query()) == 7


def test_query_by_role_and_session(day: BaseChatMessageMemory) -> None:
    assert _contents(day.query(role="assistant")) == ["s1@1", "s2@5"]
    assert _contents(day.query(session_id="s2")) == ["s2@2", "s2@5"]
    assert _contents(day.query(session_id="s1", user_id="u1")) == ["s1@0", "s1@3"]
    assert day.query(session_id="s2", user_id="u1") == []


def test_query_orders_by_time_then_acceptance(
    memory: BaseChatMessageMemory,
) -> None:
    memory.add("s1", "user", "late", created_at=_at(10))
    memory.add("s1", "user", "early", created_at=_at(1))
    memory.add("s2", "user", "tie-a", created_at=_at(5))
    memory.add("s1", "user", "tie-b", created_at=_at(5))
    assert _contents(memory.query()) == ["early", "tie-a", "tie-b", "late"]


def test_query_limit_keeps_earliest(day: BaseChatMessageMemory) -> None:
    assert _contents(day.query(limit=2)) == ["s1@0", "s1@1"]
    assert day.query(limit=0) == []


def test_other_timezones_compare_as_instants(day: BaseChatMessageMemory) -> None:
    plus2 = timezone(timedelta(hours=2))
    start = _at(2).astimezone(plus2)
    assert _contents(day.query(start=start, end=_at(3))) == ["s2@2"]


def test_reversed_or_naive_range_is_value_error(day: BaseChatMessageMemory) -> None:
    with pytest.raises(ValueError, match="reversed"):
        day.query(start=_at(5), end=_at(1))
    with pytest.raises(ValueError, match="naive"):
        day.query(start=datetime(2026, 3, 1))
    with pytest.raises(InvalidMessage):
        day.query(role="wizard")


def test_sessions_and_counts(day: BaseChatMessageMemory) -> None:
    assert day.sessions() == ["s1", "s2", "s3"]
    assert day.sessions(user_id="u1") == ["s1", "s3"]
    assert day.sessions(user_id="nobody") == []
    assert day.count() == 7
    assert day.count(session_id="s1") == 3
    assert day.count(user_id="u1") == 3
    assert day.count(session_id="s1", user_id="u1") == 2
    assert day.count(session_id="none") == 0
