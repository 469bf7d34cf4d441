"""Storing and reading back single messages, and refusing bad ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import chatmem
from chatmem import BaseChatMessageMemory, InvalidMessage, Message, MessageNotFound

TOOL_CALL = {
    "tool_calls": [
        {
            "id": "call_7",
            "type": "function",
            "function": {"name": "track", "arguments": '{"parcel": "X1"}'},
        }
    ]
}


def test_add_assigns_id_and_time(memory: BaseChatMessageMemory) -> None:
    before = datetime.now(UTC)
    stored = memory.add("s1", "user", "hello", user_id="u1")
    assert stored.id
    assert stored.created_at is not None
    assert stored.created_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= stored.created_at
    assert stored.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert memory.get(stored.id) == stored


def test_ids_are_unique(memory: BaseChatMessageMemory) -> None:
    ids = {memory.add("s1", "user", str(i)).id for i in range(20)}
    ids |= {m.id for m in memory.add_messages(_batch("s2", 10))}
    assert len(ids) == 30


def test_given_time_is_kept_in_utc(memory: BaseChatMessageMemory) -> None:
    tokyo = timezone(timedelta(hours=9))
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=tokyo)
    stored = memory.add("s1", "user", "hi", created_at=when)
    got = memory.get(stored.id or "")
    assert got.created_at == when
    assert got.created_at is not None and got.created_at.utcoffset() == timedelta(0)


def test_tool_calls_round_trip(memory: BaseChatMessageMemory) -> None:
    call = memory.add("s1", "assistant", "", metadata=TOOL_CALL)
    result = memory.add(
        "s1",
        "tool",
        '{"status": "shipped"}',
        metadata={"tool_call_id": "call_7", "name": "track"},
    )
    assert memory.get(call.id or "").metadata == TOOL_CALL
    assert memory.get(result.id or "").metadata == {
        "tool_call_id": "call_7",
        "name": "track",
    }
    assert [m.metadata for m in memory.history("s1")] == [
        call.metadata,
        result.metadata,
    ]


def test_metadata_json_values_round_trip(memory: BaseChatMessageMemory) -> None:
    metadata: dict[str, Any] = {
        "n": 1,
        "big": 2**62,
        "f": 0.1,
        "neg": -3.5e-9,
        "b": True,
        "none": None,
        "list": [1, "two", [3.0], {"four": 4}],
        "nested": {"a": {"b": {"c": []}}},
        "": "empty key",
    }
    stored = memory.add("s1", "user", "x", metadata=metadata)
    assert memory.get(stored.id or "").metadata == metadata


@pytest.mark.parametrize(
    "text",
    [
        "你好，我的包裹在哪里？",
        "emoji 👩‍💻🚀 and flags 🇯🇵",
        "\u202eright-to-left\u202c שלום مرحبا",
        "nul \x00 inside",
        "",
        "line\nbreaks\r\nand\ttabs",
    ],
)
def test_unicode_content_round_trips(memory: BaseChatMessageMemory, text: str) -> None:
    stored = memory.add("s-ü", "user", text, user_id="用户")
    got = memory.get(stored.id or "")
    assert got.content == text
    assert got.session_id == "s-ü"
    assert got.user_id == "用户"


def test_content_at_size_limit(target: object) -> None:
    from .targets import Target

    assert isinstance(target, Target)
    memory = target.open(max_message_bytes=1000)
    exact = "é" * 500  # 1000 bytes in UTF-8
    assert memory.get(memory.add("s1", "user", exact).id or "").content == exact
    with pytest.raises(InvalidMessage, match="max_message_bytes"):
        memory.add("s1", "user", exact + "x")
    assert memory.count() == 1


def test_get_unknown_id_raises_key_error(memory: BaseChatMessageMemory) -> None:
    memory.add("s1", "user", "hi")
    for bad in ["nope", "999999999", "", "-1", "1.0"]:
        with pytest.raises(MessageNotFound):
            memory.get(bad)
        with pytest.raises(KeyError):
            memory.retrieve(bad)


def test_only_an_ids_own_spelling_finds_it(memory: BaseChatMessageMemory) -> None:
    stored = memory.add("s1", "user", "hi")
    own = stored.id or ""
    for other in ["0" + own, " " + own, own + " ", own.upper() + "\u0301"]:
        with pytest.raises(MessageNotFound):
            memory.get(other)
        with pytest.raises(MessageNotFound):
            memory.delete(other)
    assert memory.get(own) == stored


def test_store_and_retrieve_are_add_and_get(memory: BaseChatMessageMemory) -> None:
    message_id = memory.store(Message(session_id="s1", role="user", content="x"))
    assert memory.retrieve(message_id).content == "x"
    assert memory.history("s1")[0].id == message_id


BAD_MESSAGES = [
    ({"session_id": "s1", "role": "robot", "content": "x"}, "role"),
    ({"session_id": "s1", "role": "user", "content": 42}, "Content"),
    ({"session_id": "s1", "role": "user", "content": b"bytes"}, "Content"),
    ({"session_id": "", "role": "user", "content": "x"}, "session id"),
    ({"session_id": 7, "role": "user", "content": "x"}, "session id"),
    ({"session_id": "s1", "role": "user", "content": "x", "user_id": ""}, "user"),
    ({"session_id": "s1", "role": "user", "content": "\ud800"}, "Unicode"),
    (
        {"session_id": "s1", "role": "user", "content": "x", "metadata": []},
        "dict",
    ),
    (
        {
            "session_id": "s1",
            "role": "user",
            "content": "x",
            "metadata": {"t": (1, 2)},
        },
        "tuple",
    ),
    (
        {"session_id": "s1", "role": "user", "content": "x", "metadata": {1: 2}},
        "keys",
    ),
    (
        {
            "session_id": "s1",
            "role": "user",
            "content": "x",
            "metadata": {"x": float("nan")},
        },
        "NaN",
    ),
    (
        {
            "session_id": "s1",
            "role": "user",
            "content": "x",
            "created_at": datetime(2026, 1, 1),
        },
        "naive",
    ),
]


@pytest.mark.parametrize(("fields", "words"), BAD_MESSAGES)
def test_bad_message_is_refused_and_nothing_stored(
    memory: BaseChatMessageMemory, fields: dict[str, object], words: str
) -> None:
    memory.add("keep", "user", "kept")
    with pytest.raises(InvalidMessage, match=words):
        memory.add_messages([Message(**fields)])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        memory.add_messages([Message(**fields)])  # type: ignore[arg-type]
    assert memory.count() == 1
    assert [m.content for m in memory.history("keep")] == ["kept"]


def test_oversize_metadata_is_refused(target: object) -> None:
    from .targets import Target

    assert isinstance(target, Target)
    memory = target.open(max_message_bytes=100)
    with pytest.raises(InvalidMessage, match="Metadata"):
        memory.add("s1", "user", "x", metadata={"blob": "y" * 200})
    assert memory.count() == 0


def test_deeply_nested_metadata_is_refused(memory: BaseChatMessageMemory) -> None:
    nested: dict[str, object] = {}
    inner = nested
    for _ in range(100):
        inner["x"] = {}
        inner = inner["x"]  # type: ignore[assignment]
    with pytest.raises(InvalidMessage, match="nested"):
        memory.add("s1", "user", "x", metadata=nested)
    assert memory.count() == 0


def test_batch_with_one_bad_message_stores_none(
    memory: BaseChatMessageMemory,
) -> None:
    batch = _batch("s1", 5)
    batch.insert(3, Message(session_id="s1", role="nobody", content="x"))
    with pytest.raises(InvalidMessage, match="Message 3 of the batch"):
        memory.add_messages(batch)
    assert memory.count() == 0
    assert memory.history("s1") == []
    assert memory.sessions() == []


def test_add_messages_returns_stored_in_order(memory: BaseChatMessageMemory) -> None:
    stored = memory.add_messages(_batch("s1", 5))
    assert [m.content for m in stored] == [f"m{i}" for i in range(5)]
    assert memory.history("s1") == stored
    assert memory.add_messages([]) == []


def test_non_message_in_batch_is_refused(memory: BaseChatMessageMemory) -> None:
    with pytest.raises(InvalidMessage, match=r"chatmem\.Message"):
        memory.add_messages([{"session_id": "s1"}])  # type: ignore[list-item]


def test_unknown_option_value_is_refused(target: object) -> None:
    from .targets import Target

    assert isinstance(target, Target)
    with pytest.raises(ValueError, match="policy"):
        target.open(policy="evict-random")
    with pytest.raises(ValueError, match="capacity"):
        target.open(capacity_bytes=-5)


def test_unknown_scheme_suggests_closest() -> None:
    with pytest.raises(chatmem.UnknownBackend, match="Did you mean 'sqlite'"):
        chatmem.open("sqlit:///x.db")


def _batch(session: str, n: int) -> list[Message]:
    return [Message(session_id=session, role="user", content=f"m{i}") for i in range(n)]
