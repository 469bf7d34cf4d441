"""A session written through one framework reads back through the others."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("agents")
pytest.importorskip("llama_index.core")

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from llama_index.core.llms import ChatMessage, MessageRole

from chatmem import BaseChatMessageMemory
from chatmem.integrations.langchain import ChatMemoryHistory
from chatmem.integrations.llama_index import ChatMemoryStore
from chatmem.integrations.openai_agents import ChatMemorySession

CALL = {"id": "call_1", "name": "track", "args": {"parcel": "X1"}}


def check_langchain(memory: BaseChatMessageMemory) -> None:
    question, call, result = ChatMemoryHistory(memory, "s1").messages
    assert isinstance(question, HumanMessage)
    assert question.content == "Where is X1?"
    assert isinstance(call, AIMessage)
    assert call.tool_calls == [{**CALL, "type": "tool_call"}]
    assert isinstance(result, ToolMessage)
    assert (result.tool_call_id, result.content) == ("call_1", "In Lyon")


def check_agents(memory: BaseChatMessageMemory) -> None:
    items: list[Any] = asyncio.run(ChatMemorySession(memory, "s1").get_items())
    question, call, result = items
    assert question == {"role": "user", "content": "Where is X1?"}
    assert call["type"] == "function_call"
    assert (call["call_id"], call["name"]) == ("call_1", "track")
    assert call["arguments"].replace(" ", "") == '{"parcel":"X1"}'
    assert result == {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": "In Lyon",
    }


def check_llama_index(memory: BaseChatMessageMemory) -> None:
    question, call, result = ChatMemoryStore(memory).get_messages("s1")
    assert (question.role, question.content) == (MessageRole.USER, "Where is X1?")
    assert call.role == MessageRole.ASSISTANT
    [tool_call] = call.additional_kwargs["tool_calls"]
    assert tool_call["id"] == "call_1"
    assert tool_call["function"]["name"] == "track"
    assert result.role == MessageRole.TOOL
    assert result.additional_kwargs["tool_call_id"] == "call_1"
    assert result.content == "In Lyon"


def write_langchain(memory: BaseChatMessageMemory) -> None:
    ChatMemoryHistory(memory, "s1").add_messages(
        [
            HumanMessage("Where is X1?"),
            AIMessage("", tool_calls=[CALL]),
            ToolMessage("In Lyon", tool_call_id="call_1"),
        ]
    )


def write_agents(memory: BaseChatMessageMemory) -> None:
    session = ChatMemorySession(memory, "s1")
    asyncio.run(
        session.add_items(
            [
                {"role": "user", "content": "Where is X1?"},
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "track",
                    "arguments": '{"parcel": "X1"}',
                },
                {
                    "type": "function_call_output",
                    "call_id": "call_1",
                    "output": "In Lyon",
                },
            ]
        )
    )


def write_llama_index(memory: BaseChatMessageMemory) -> None:
    function = {"name": "track", "arguments": '{"parcel": "X1"}'}
    ChatMemoryStore(memory).set_messages(
        "s1",
        [
            ChatMessage(role="user", content="Where is X1?"),
            ChatMessage(
                role="assistant",
                content="",
                additional_kwargs={
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": function}
                    ]
                },
            ),
            ChatMessage(
                role="tool",
                content="In Lyon",
                additional_kwargs={"tool_call_id": "call_1"},
            ),
        ],
    )


WRITERS = {
    "langchain": write_langchain,
    "agents": write_agents,
    "llama_index": write_llama_index,
}
READERS = {
    "langchain": check_langchain,
    "agents": check_agents,
    "llama_index": check_llama_index,
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_tool_call_reads_back_in_every_framework(
    memory: BaseChatMessageMemory, writer: str, reader: str
) -> None:
    WRITERS[writer](memory)
    READERS[reader](memory)

    # Whoever wrote it, the token window keeps the call with its result.
    def ten(message: Any) -> int:
        return 10

    window = memory.history_window("s1", 20, token_counter=ten)
    assert [m.role for m in window] == ["assistant", "tool"]
