"""Token windows: newest messages that fit, tool calls whole, reads bounded."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, cast

import pytest

from chatmem import BaseChatMessageMemory, InvalidMessage, Message
from chatmem.window import MESSAGE_OVERHEAD, estimate_tokens


def ten(message: Message) -> int:
    """Every message costs ten tokens."""
    return 10


def by_length(message: Message) -> int:
    return len(message.content)


def _msg(session: str, role: str, content: str, **metadata: Any) -> Message:
    return Message(session_id=session, role=role, content=content, metadata=metadata)


def _fill(memory: BaseChatMessageMemory, session: str, n: int) -> list[Message]:
    return memory.add_messages(
        [
            _msg(session, "user" if i % 2 == 0 else "assistant", f"m{i}")
            for i in range(n)
        ]
    )


def _call(session: str, *ids: str) -> Message:
    calls = [{"id": i, "type": "function", "name": "track"} for i in ids]
    return _msg(session, "assistant", "", tool_calls=calls)


def _result(session: str, call_id: str | None, content: str = "ok") -> Message:
    if call_id is None:
        return _msg(session, "tool", content)
    return _msg(session, "tool", content, tool_call_id=call_id)


def _contents(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


def test_unknown_session_gives_empty_window(memory: BaseChatMessageMemory) -> None:
    assert memory.history_window("nobody", 1000) == []


def test_newest_messages_that_fit(memory: BaseChatMessageMemory) -> None:
    stored = _fill(memory, "s1", 30)
    _fill(memory, "s2", 5)
    window = memory.history_window("s1", 55, token_counter=ten)
    assert window == stored[-5:]
    assert memory.history_window("s1", 10_000, token_counter=ten) == stored


def test_zero_budget_and_oversized_newest_give_empty(
    memory: BaseChatMessageMemory,
) -> None:
    memory.add("s1", "user", "short")
    memory.add("s1", "user", "x" * 400)
    assert memory.history_window("s1", 0) == []
    assert memory.history_window("s1", 50, token_counter=by_length) == []


def test_default_counter_stays_within_budget(memory: BaseChatMessageMemory) -> None:
    rng = random.Random(7)
    words = ["parcel", "where", "is", "my", "order", "delivery", "tomorrow", "?"]
    memory.add_messages(
        [
            _msg("s1", "user", " ".join(rng.choices(words, k=rng.randint(1, 40))))
            for _ in range(200)
        ]
    )
    everything = memory.history("s1")
    window = memory.history_window("s1", 500)
    assert window == everything[-len(window) :]
    assert sum(estimate_tokens(m) for m in window) <= 500
    one_more = everything[-len(window) - 1]
    assert sum(estimate_tokens(m) for m in [one_more, *window]) > 500


def test_system_message_is_kept_and_paid_first(
    memory: BaseChatMessageMemory,
) -> None:
    system = memory.add("s1", "system", "You track parcels.")
    stored = _fill(memory, "s1", 40)
    window = memory.history_window("s1", 45, token_counter=ten)
    assert window == [system, *stored[-3:]]

    without = memory.history_window("s1", 45, token_counter=ten, keep_system=False)
    assert without == stored[-4:]


def test_short_session_keeps_system_in_place(memory: BaseChatMessageMemory) -> None:
    system = memory.add("s1", "system", "rules")
    stored = _fill(memory, "s1", 3)
    assert memory.history_window("s1", 1000, token_counter=ten) == [system, *stored]


def test_system_message_later_in_session_is_found(
    memory: BaseChatMessageMemory,
) -> None:
    early = _fill(memory, "s1", 3)
    system = memory.add("s1", "system", "rules")
    memory.add("s1", "system", "a later system note")
    stored = _fill(memory, "s1", 200)
    window = memory.history_window("s1", 30, token_counter=ten)
    assert window == [system, *stored[-2:]]
    everything = memory.history_window("s1", 10_000, token_counter=ten)
    assert everything[:3] == early
    assert everything[3] == system


def test_system_message_longer_than_budget_is_left_out(
    memory: BaseChatMessageMemory,
) -> None:
    memory.add("s1", "system", "s" * 100)
    stored = memory.add_messages([_msg("s1", "user", "x") for _ in range(20)])
    window = memory.history_window("s1", 5, token_counter=by_length)
    assert window == stored[-5:]


def test_tool_call_and_results_stay_together(memory: BaseChatMessageMemory) -> None:
    memory.add("s1", "user", "Where are X1 and X2?")
    call = memory.add_messages([_call("s1", "c1", "c2")])[0]
    results = memory.add_messages([_result("s1", "c1"), _result("s1", "c2")])
    final = memory.add("s1", "assistant", "Both arrive tomorrow.")

    # 30 tokens would reach the second result and the final answer only:
    # cutting there would leave results without their call.
    assert memory.history_window("s1", 30, token_counter=ten) == [final]
    assert memory.history_window("s1", 40, token_counter=ten) == [
        call,
        *results,
        final,
    ]


def test_parallel_calls_as_separate_messages_stay_together(
    memory: BaseChatMessageMemory,
) -> None:
    # The OpenAI Agents SDK stores one item per call, then the outputs.
    memory.add("s1", "user", "Track X1 and X2.")
    group = memory.add_messages(
        [
            _call("s1", "a"),
            _call("s1", "b"),
            _result("s1", "a"),
            _result("s1", "b"),
        ]
    )
    for budget in (10, 20, 30):
        assert memory.history_window("s1", budget, token_counter=ten) == []
    assert memory.history_window("s1", 40, token_counter=ten) == group


def test_result_without_call_id_belongs_to_nearest_call(
    memory: BaseChatMessageMemory,
) -> None:
    memory.add("s1", "user", "go")
    group = memory.add_messages([_call("s1", "z"), _result("s1", None)])
    assert memory.history_window("s1", 10, token_counter=ten) == []
    assert memory.history_window("s1", 20, token_counter=ten) == group


def test_result_whose_call_was_deleted_ends_the_window(
    memory: BaseChatMessageMemory,
) -> None:
    memory.add("s1", "user", "go")
    call = memory.add_messages([_call("s1", "gone")])[0]
    orphan = memory.add_messages([_result("s1", "gone")])[0]
    after = memory.add("s1", "assistant", "done")
    assert call.id is not None
    memory.delete(call.id)
    assert memory.history_window("s1", 20, token_counter=ten) == [after]
    whole = memory.history_window("s1", 30, token_counter=ten)
    assert whole == memory.history("s1")
    assert orphan in whole


def test_bad_arguments_are_refused(memory: BaseChatMessageMemory) -> None:
    memory.add("s1", "user", "hi")
    bad_calls: list[Callable[[], object]] = [
        lambda: memory.history_window("s1", -1),
        lambda: memory.history_window("s1", True),
        lambda: memory.history_window("s1", "100"),  # type: ignore[arg-type]
        lambda: memory.history_window("", 100),
        lambda: memory.history_window("s1", 100, token_counter=cast(Any, 3)),
        lambda: memory.history_window("s1", 100, token_counter=lambda m: -1),
        lambda: memory.history_window(
            "s1", 100, token_counter=cast(Any, lambda m: 1.5)
        ),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidMessage):
            call()


def test_reads_only_what_the_budget_needs(
    memory: BaseChatMessageMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory.add("s1", "system", "rules")
    memory.add_messages([_msg("s1", "user", f"m{i}") for i in range(1500)])
    read: list[int] = []
    real_history = memory.history
    real_query = memory.query

    def history(session_id: str, **kwargs: Any) -> list[Message]:
        page = real_history(session_id, **kwargs)
        read.append(len(page))
        return page

    def query(**kwargs: Any) -> list[Message]:
        found = real_query(**kwargs)
        read.append(len(found))
        return found

    monkeypatch.setattr(memory, "history", history)
    monkeypatch.setattr(memory, "query", query)
    window = memory.history_window("s1", 300, token_counter=ten)
    assert len(window) == 30
    assert sum(read) <= 2 * 30 + 8

    read.clear()
    window = memory.history_window("s1", 5000, token_counter=ten)
    assert len(window) == 500
    assert sum(read) <= 2 * 500


def test_matches_reference_on_random_sessions(memory: BaseChatMessageMemory) -> None:
    rng = random.Random(20260505)
    for case in range(12):
        session = f"r{case}"
        memory.add_messages(_random_session(rng, session, rng.randint(1, 60)))
        everything = memory.history(session)
        for _ in range(4):
            budget = rng.randint(0, 40 * MESSAGE_OVERHEAD)
            keep = rng.random() < 0.7
            got = memory.history_window(
                session, budget, token_counter=by_length, keep_system=keep
            )
            want = _reference(everything, budget, by_length, keep)
            assert got == want, (case, budget, keep)


def _random_session(rng: random.Random, session: str, n: int) -> list[Message]:
    out: list[Message] = []
    if rng.random() < 0.6:
        out.append(_msg(session, "system", "s" * rng.randint(1, 30)))
    pending: list[str | None] = []
    calls = 0
    while len(out) < n:
        roll = rng.random()
        if pending and roll < 0.5:
            call_id = pending.pop(rng.randrange(len(pending)))
            out.append(_result(session, call_id, "r" * rng.randint(1, 20)))
        elif roll < 0.65:
            ids = []
            for _ in range(rng.randint(1, 3)):
                calls += 1
                ids.append(f"{session}-c{calls}")
            out.append(_call(session, *ids))
            pending += ids if rng.random() < 0.8 else [None]
        elif roll < 0.7:
            out.append(_msg(session, "system", "note"))
        else:
            role = rng.choice(["user", "assistant"])
            out.append(_msg(session, role, "t" * rng.randint(0, 25)))
    return out


def _reference(
    messages: list[Message],
    budget: int,
    count: Callable[[Message], int],
    keep_system: bool,
) -> list[Message]:
    """The window by its definition, from the whole session at once."""
    system = None
    if keep_system:
        system = next((m for m in messages if m.role == "system"), None)
        if system is not None and count(system) > budget:
            system = None
        if system is not None:
            budget -= count(system)

    def caller(index: int) -> int | None:
        result = messages[index]
        call_id = result.metadata.get("tool_call_id")
        for j in range(index - 1, -1, -1):
            calls = messages[j].metadata.get("tool_calls") or []
            if call_id is None and calls:
                return j
            if call_id is not None and any(c["id"] == call_id for c in calls):
                return j
        return None

    def valid(cut: int) -> bool:
        if cut == 0:
            return True
        for i in range(cut, len(messages)):
            if messages[i].role == "tool":
                j = caller(i)
                if j is None or j < cut:
                    return False
        return True

    for cut in range(len(messages) + 1):
        suffix = messages[cut:]
        cost = sum(count(m) for m in suffix if m is not system)
        if cost <= budget and valid(cut):
            if system is not None and system not in suffix:
                return [system, *suffix]
            return suffix
    raise AssertionError("the empty suffix always fits")
