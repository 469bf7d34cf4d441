"""ChatMemoryHistory: langchain-core's chat history on chatmem."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

import chatmem
from chatmem import BaseChatMessageMemory, InvalidMessage
from chatmem.integrations.langchain import ChatMemoryHistory

# langchain-core deprecates RunnableWithMessageHistory (see the adapter's
# docstring); chatmem supports it while it ships.
uses_deprecated_runnable = pytest.mark.filterwarnings(
    "ignore:RunnableWithMessageHistory is deprecated:DeprecationWarning"
)


def every_kind_of_message() -> list[BaseMessage]:
    return [
        SystemMessage("You track parcels.", id="sys-1"),
        HumanMessage("Where is X1?", name="ana", additional_kwargs={"lang": "en"}),
        AIMessage(
            "",
            id="run-1",
            tool_calls=[
                {"name": "track", "args": {"parcel": "X1"}, "id": "call_1"},
                {"name": "eta", "args": {"parcel": "X1", "days": [1, 2]}, "id": "c2"},
            ],
            invalid_tool_calls=[
                {
                    "name": "track",
                    "args": "{oops",
                    "id": "call_3",
                    "error": "bad JSON",
                    "type": "invalid_tool_call",
                }
            ],
            response_metadata={"model_name": "fake", "finish_reason": "tool_calls"},
            usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
        ),
        ToolMessage(
            "In transit",
            tool_call_id="call_1",
            name="track",
            artifact={"raw": {"status": 3}},
        ),
        ToolMessage("unknown parcel", tool_call_id="c2", status="error"),
        AIMessage("It arrives tomorrow.", name="bot"),
        HumanMessage(
            content=[
                {"type": "text", "text": "Is this it?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/p.png"},
                },
            ]
        ),
        ChatMessage(content="Be brief.", role="critic"),
        AIMessageChunk(content="partial"),
        HumanMessage(""),
    ]


def test_is_a_langchain_chat_history(memory: BaseChatMessageMemory) -> None:
    assert isinstance(ChatMemoryHistory(memory, "s1"), BaseChatMessageHistory)


def test_every_field_comes_back(memory: BaseChatMessageMemory) -> None:
    sent = every_kind_of_message()
    history = ChatMemoryHistory(memory, "s1")
    history.add_messages(sent)

    got = ChatMemoryHistory(memory, "s1").messages
    assert got == sent
    assert [type(m) for m in got] == [type(m) for m in sent]
    assert got[2].tool_calls == sent[2].tool_calls  # type: ignore[attr-defined]


def test_tool_calls_use_the_shared_metadata_keys(
    memory: BaseChatMessageMemory,
) -> None:
    ChatMemoryHistory(memory, "s1").add_messages(every_kind_of_message()[:4])
    system, human, call, result = memory.history("s1")
    assert (system.role, human.role, call.role, result.role) == (
        "system",
        "user",
        "assistant",
        "tool",
    )
    assert human.metadata["name"] == "ana"
    assert [c["id"] for c in call.metadata["tool_calls"]] == ["call_1", "c2"]
    assert result.metadata["tool_call_id"] == "call_1"
    assert result.content == "In transit"


def test_async_methods(store_url: str) -> None:
    async def main() -> None:
        async with await chatmem.open_async(store_url) as memory:
            history = ChatMemoryHistory(memory, "s1")
            sent = every_kind_of_message()
            await history.aadd_messages(sent)
            assert await history.aget_messages() == sent
            await history.aset_messages(sent[:2])
            assert await history.aget_messages() == sent[:2]
            await history.aclear()
            assert await history.aget_messages() == []
            assert history.messages == []

    asyncio.run(main())


def test_async_methods_on_a_sync_store(memory: BaseChatMessageMemory) -> None:
    history = ChatMemoryHistory(memory, "s1")

    async def main() -> list[BaseMessage]:
        await history.aadd_messages([HumanMessage("hi")])
        return await history.aget_messages()

    assert asyncio.run(main()) == [HumanMessage("hi")]


def test_a_bad_message_stores_nothing(memory: BaseChatMessageMemory) -> None:
    history = ChatMemoryHistory(memory, "s1")
    bad = ToolMessage("x", tool_call_id="c1", artifact=object())
    with pytest.raises(InvalidMessage, match="Message 1 of the batch"):
        history.add_messages([HumanMessage("fine"), bad])
    with pytest.raises(InvalidMessage, match="not a turn"):
        history.add_messages([RemoveMessage(id="m1")])
    assert memory.count() == 0


def test_clear_and_replace_touch_one_session(memory: BaseChatMessageMemory) -> None:
    one = ChatMemoryHistory(memory, "s1")
    two = ChatMemoryHistory(memory, "s2")
    one.add_messages([HumanMessage("a"), AIMessage("b")])
    two.add_messages([HumanMessage("c")])

    one.messages = [HumanMessage("fresh")]
    assert one.messages == [HumanMessage("fresh")]
    one.clear()
    assert one.messages == []
    assert two.messages == [HumanMessage("c")]


def test_messages_written_by_other_clients(memory: BaseChatMessageMemory) -> None:
    memory.add("s1", "system", "rules")
    memory.add("s1", "user", "hi", metadata={"name": "ana"})
    call = memory.add(
        "s1",
        "assistant",
        "",
        metadata={
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "track", "arguments": '{"parcel": "X1"}'},
                },
                {"id": "call_10", "function": {"name": "eta", "arguments": "{no"}},
            ]
        },
    )
    memory.add("s1", "tool", "In transit", metadata={"tool_call_id": "call_9"})

    system, human, ai, tool = ChatMemoryHistory(memory, "s1").messages
    assert isinstance(system, SystemMessage)
    assert isinstance(human, HumanMessage) and human.name == "ana"
    assert isinstance(ai, AIMessage) and ai.id == call.id
    assert ai.tool_calls == [
        {"name": "track", "args": {"parcel": "X1"}, "id": "call_9", "type": "tool_call"}
    ]
    assert [c["id"] for c in ai.invalid_tool_calls] == ["call_10"]
    assert isinstance(tool, ToolMessage) and tool.tool_call_id == "call_9"


def test_window_keeps_system_and_tool_groups(memory: BaseChatMessageMemory) -> None:
    sent = every_kind_of_message()
    system, call, results, final = sent[0], sent[2], sent[3:5], sent[5]
    ChatMemoryHistory(memory, "s1").add_messages(
        [system, sent[1], call, *results, final]
    )

    def window(max_tokens: int) -> list[BaseMessage]:
        history = ChatMemoryHistory(
            memory, "s1", max_tokens=max_tokens, token_counter=ten
        )
        return history.messages

    # 40 tokens hold the system message and three more, but the third
    # newest is a result whose call would be cut off.
    assert window(40) == [system, final]
    assert window(50) == [system, call, *results, final]

    ChatMemoryHistory(memory, "s1").add_messages(
        [HumanMessage("question"), AIMessage("answer")]
    )
    assert window(30) == [system, HumanMessage("question"), AIMessage("answer")]


def ten(message: Any) -> int:
    return 10


@uses_deprecated_runnable
def test_runnable_with_message_history_keeps_the_conversation(
    memory: BaseChatMessageMemory,
) -> None:
    seen: list[list[BaseMessage]] = []

    def record(prompt: Any) -> Any:
        seen.append(prompt.to_messages())
        return prompt

    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You track parcels."),
            MessagesPlaceholder("history"),
            ("human", "{question}"),
        ]
    )
    model = FakeListChatModel(responses=["It is in Lyon.", "Tomorrow."])
    chain = RunnableWithMessageHistory(
        prompt | RunnableLambda(record) | model,
        lambda session_id: ChatMemoryHistory(memory, session_id),
        input_messages_key="question",
        history_messages_key="history",
    )
    config: Any = {"configurable": {"session_id": "s1"}}

    first = chain.invoke({"question": "Where is X1?"}, config)
    second = chain.invoke({"question": "When will it arrive?"}, config)

    assert (first.content, second.content) == ("It is in Lyon.", "Tomorrow.")
    assert [m.content for m in seen[1]] == [
        "You track parcels.",
        "Where is X1?",
        "It is in Lyon.",
        "When will it arrive?",
    ]
    stored = memory.history("s1")
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Where is X1?"),
        ("assistant", "It is in Lyon."),
        ("user", "When will it arrive?"),
        ("assistant", "Tomorrow."),
    ]


@uses_deprecated_runnable
def test_async_chain_stores_tool_calls_losslessly(store_url: str) -> None:
    call = AIMessage(
        "",
        id="run-7",
        tool_calls=[{"name": "track", "args": {"parcel": "X1"}, "id": "call_7"}],
    )
    model = GenericFakeChatModel(messages=iter([call, AIMessage("Done.", id="run-8")]))

    async def main() -> list[BaseMessage]:
        async with await chatmem.open_async(store_url) as memory:
            chain = RunnableWithMessageHistory(
                model,
                lambda session_id: ChatMemoryHistory(memory, session_id),
            )
            config: Any = {"configurable": {"session_id": "s1"}}
            first = await chain.ainvoke([HumanMessage("Track X1.")], config)
            assert first.tool_calls == call.tool_calls
            result = ToolMessage("In transit", tool_call_id="call_7")
            await chain.ainvoke([result], config)
            return await ChatMemoryHistory(memory, "s1").aget_messages()

    stored = asyncio.run(main())
    assert [type(m).__name__ for m in stored] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]
    assert stored[1].tool_calls == call.tool_calls  # type: ignore[attr-defined]
    assert stored[1].id == "run-7"
    assert stored[2] == ToolMessage("In transit", tool_call_id="call_7")
