"""ChatMemoryStore: llama-index-core's chat store on chatmem."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import (
    AudioBlock,
    CacheControl,
    CachePoint,
    CitableBlock,
    CitationBlock,
    DocumentBlock,
    ImageBlock,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
    VideoBlock,
)
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import ChatMessage, MessageRole, MockLLM
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.storage.chat_store.base import BaseChatStore

import chatmem
from chatmem import BaseChatMessageMemory, InvalidMessage
from chatmem.aio import AsyncChatMemory
from chatmem.integrations.llama_index import ChatMemoryStore

T = TypeVar("T")

# Each sync method of BaseChatStore and its coroutine.
ASYNC_NAMES = {
    "set_messages": "aset_messages",
    "get_messages": "aget_messages",
    "add_message": "async_add_message",
    "delete_messages": "adelete_messages",
    "delete_message": "adelete_message",
    "delete_last_message": "adelete_last_message",
    "get_keys": "aget_keys",
}


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


class Face:
    """Calls a chat store's methods through its sync or its async side."""

    def __init__(self, store: ChatMemoryStore, side: str) -> None:
        self.store = store
        self.side = side

    def __call__(self, name: str, *args: Any) -> Any:
        if self.side == "sync":
            return getattr(self.store, name)(*args)
        return run(getattr(self.store, ASYNC_NAMES[name])(*args))


@pytest.fixture(params=["sync store", "async store"])
def chat_store(
    request: pytest.FixtureRequest, memory: BaseChatMessageMemory
) -> ChatMemoryStore:
    """A chat store on a fresh store, as it is or behind the async API."""
    if request.param == "sync store":
        return ChatMemoryStore(memory)
    return ChatMemoryStore(AsyncChatMemory(memory))


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest, chat_store: ChatMemoryStore) -> Face:
    """The chat store's sync or async methods."""
    return Face(chat_store, request.param)


class ToolCallObject(BaseModel):
    """Stands for the pydantic tool call objects LLM integrations attach."""

    id: str
    type: str
    function: dict[str, str]


def every_kind_of_message(tmp_path: Path) -> list[ChatMessage]:
    picture = tmp_path / "parcel.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n")
    return [
        ChatMessage(role="system", content="You track parcels."),
        ChatMessage(role="developer", content="Be brief."),
        ChatMessage(
            role="user",
            content="Where is X1? 包裹在哪里？",
            additional_kwargs={"name": "ana", "lang": "en", "n": [1, 2.5, None]},
        ),
        ChatMessage(
            role="user",
            blocks=[
                TextBlock(text="Is this it?"),
                ImageBlock(image=b"\x89PNG\r\n\x1a\nabc", image_mimetype="image/png"),
                ImageBlock(url="https://example.com/p.png", detail="low"),
                ImageBlock(path=picture),
                AudioBlock(audio=b"\x00\x01\xfe\xff", format="wav"),
                VideoBlock(url="https://example.com/v.mp4"),
                DocumentBlock(data=b"%PDF-1.4", title="label"),
                CachePoint(cache_control=CacheControl(type="ephemeral")),
                TextBlock(text="Second part."),
            ],
        ),
        ChatMessage(
            role="assistant",
            content="",
            additional_kwargs={
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "track", "arguments": '{"p": "X1"}'},
                    }
                ]
            },
        ),
        ChatMessage(
            role="tool",
            content="In transit",
            additional_kwargs={"tool_call_id": "call_1", "name": "track"},
        ),
        ChatMessage(
            role="assistant",
            blocks=[
                ThinkingBlock(content="Look it up.", additional_information={"s": 1}),
                ToolCallBlock(tool_call_id="call_2", tool_name="eta", tool_kwargs={}),
                ToolCallBlock(tool_name="eta", tool_kwargs="{bad"),
            ],
        ),
        ChatMessage(role="function", content="2 days"),
        ChatMessage(
            role="chatbot",
            blocks=[
                CitableBlock(title="t", source="s", content=[TextBlock(text="quoted")]),
                CitationBlock(
                    cited_content=TextBlock(text="c"),
                    source="s",
                    title="t",
                    additional_location_info={"page": 3},
                ),
            ],
        ),
        ChatMessage(role="model", content="It arrives tomorrow."),
        ChatMessage(role="user", content=""),
        ChatMessage(role="user"),
    ]


def test_is_a_llama_index_chat_store(chat_store: ChatMemoryStore) -> None:
    assert isinstance(chat_store, BaseChatStore)
    # Every coroutine is the store's own, not the base class's thread
    # offload of the sync method.
    for sync, coroutine in ASYNC_NAMES.items():
        assert inspect.iscoroutinefunction(getattr(chat_store, coroutine))
        own = getattr(ChatMemoryStore, coroutine)
        assert own is not getattr(BaseChatStore, coroutine), coroutine
        assert getattr(ChatMemoryStore, sync) is not getattr(BaseChatStore, sync)
    assert "ChatMemoryStore" in repr(chat_store)


def test_every_message_comes_back(call: Face, tmp_path: Path) -> None:
    sent = every_kind_of_message(tmp_path)
    for message in sent:
        call("add_message", "s1", message)

    got = call("get_messages", "s1")
    assert got == sent
    assert [m.role for m in got] == [m.role for m in sent]
    assert got[3].blocks == sent[3].blocks


def test_pydantic_kwargs_are_stored_as_their_json(
    memory: BaseChatMessageMemory,
) -> None:
    function = {"name": "track", "arguments": "{}"}
    call = ToolCallObject(id="call_1", type="function", function=function)
    message = ChatMessage(
        role="assistant", content="", additional_kwargs={"tool_calls": [call]}
    )
    ChatMemoryStore(memory).add_message("s1", message)

    [got] = ChatMemoryStore(memory).get_messages("s1")
    assert got.additional_kwargs == {
        "tool_calls": [{"id": "call_1", "type": "function", "function": function}]
    }
    assert memory.history("s1")[0].metadata["tool_calls"][0]["id"] == "call_1"


def test_tool_calls_use_the_shared_metadata_keys(
    memory: BaseChatMessageMemory, tmp_path: Path
) -> None:
    ChatMemoryStore(memory).set_messages("s1", every_kind_of_message(tmp_path))
    stored = memory.history("s1")

    assert [m.role for m in stored] == [
        "system",
        "system",
        "user",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
        "assistant",
        "user",
        "user",
    ]
    assert stored[2].metadata["name"] == "ana"
    assert stored[2].content == "Where is X1? 包裹在哪里？"
    assert stored[3].content == "Is this it?\nSecond part."
    assert stored[4].metadata["tool_calls"][0]["id"] == "call_1"
    assert stored[5].metadata["tool_call_id"] == "call_1"
    # Tool call blocks are calls too, for the token window.
    assert stored[6].metadata["tool_calls"] == [
        {"id": "call_2", "name": "eta", "args": {}},
        {"id": None, "name": "eta", "arguments": "{bad"},
    ]
    # One text block is the content alone, stored once.
    assert stored[0].metadata == {"llama_index": {}}


def test_window_keeps_calls_with_their_results(memory: BaseChatMessageMemory) -> None:
    call = ChatMessage(
        role="assistant",
        blocks=[ToolCallBlock(tool_call_id="c1", tool_name="eta", tool_kwargs={})],
    )
    result = ChatMessage(
        role="tool", content="2 days", additional_kwargs={"tool_call_id": "c1"}
    )
    ChatMemoryStore(memory).set_messages(
        "s1", [ChatMessage(role="system", content="rules"), call, result]
    )

    def ten(message: Any) -> int:
        return 10

    window = memory.history_window("s1", 20, token_counter=ten)
    assert [m.content for m in window] == ["rules"]
    window = memory.history_window("s1", 30, token_counter=ten)
    assert [m.role for m in window] == ["system", "assistant", "tool"]


def numbered(n: int) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=str(i)) for i in range(n)]


def test_delete_message_by_index(call: Face) -> None:
    sent = numbered(6)
    call("set_messages", "s1", sent)

    assert call("delete_message", "s1", 0) == sent[0]
    assert call("delete_message", "s1", 2) == sent[3]
    assert call("delete_message", "s1", -1) == sent[5]
    assert call("delete_message", "s1", -2) == sent[2]
    assert call("get_messages", "s1") == [sent[1], sent[4]]
    for idx in (2, -3, 100):
        assert call("delete_message", "s1", idx) is None
    assert call("delete_message", "nobody", 0) is None
    with pytest.raises(InvalidMessage, match="idx"):
        call("delete_message", "s1", "0")
    assert call("get_messages", "s1") == [sent[1], sent[4]]


def test_delete_last_message(call: Face) -> None:
    sent = numbered(2)
    call("set_messages", "s1", sent)
    assert call("delete_last_message", "s1") == sent[1]
    assert call("delete_last_message", "s1") == sent[0]
    assert call("delete_last_message", "s1") is None


def test_delete_messages_returns_them(call: Face) -> None:
    call("set_messages", "s1", numbered(3))
    call("set_messages", "s2", numbered(1))
    assert call("delete_messages", "s1") == numbered(3)
    assert call("delete_messages", "s1") is None
    assert call("get_messages", "s1") == []
    assert call("get_messages", "s2") == numbered(1)


def test_keys_are_sessions(call: Face, memory: BaseChatMessageMemory) -> None:
    assert call("get_keys") == []
    call("add_message", "b", ChatMessage(content="x"))
    call("add_message", "a", ChatMessage(content="y"))
    memory.add("c", "user", "written elsewhere")
    assert call("get_keys") == ["a", "b", "c"]


def test_set_messages_replaces_one_key(call: Face) -> None:
    call("set_messages", "s1", numbered(3))
    call("set_messages", "s2", numbered(2))
    call("set_messages", "s1", [ChatMessage(content="fresh")])
    assert call("get_messages", "s1") == [ChatMessage(content="fresh")]
    assert call("get_messages", "s2") == numbered(2)
    call("set_messages", "s1", [])
    assert call("get_messages", "s1") == []


def test_a_bad_message_stores_nothing(
    call: Face, memory: BaseChatMessageMemory
) -> None:
    call("set_messages", "s1", numbered(2))
    fine = ChatMessage(content="fine")
    for bad in (
        ChatMessage(content="x", additional_kwargs={"raw": b"\x00"}),
        ChatMessage(content="x", additional_kwargs={"pair": (1, 2)}),
        ChatMessage(content="x", additional_kwargs={"when": object()}),
        ChatMessage(content="x", additional_kwargs={"score": float("nan")}),
        ChatMessage(blocks=[], additional_kwargs={"images": []}),
    ):
        with pytest.raises(InvalidMessage, match="1 of the batch"):
            call("set_messages", "s1", [fine, bad])
        with pytest.raises(InvalidMessage, match="0 of the batch"):
            call("add_message", "s1", bad)
    with pytest.raises(InvalidMessage, match="ChatMessage"):
        call("add_message", "s1", "hi")
    with pytest.raises(InvalidMessage, match="key"):
        call("get_messages", "")
    assert call("get_messages", "s1") == numbered(2)
    assert memory.count() == 2


def test_a_block_whose_file_is_gone_still_loads(
    memory: BaseChatMessageMemory, tmp_path: Path
) -> None:
    picture = tmp_path / "gone.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n")
    store = ChatMemoryStore(memory)
    store.add_message("s1", ChatMessage(content="before"))
    store.add_message(
        "s1", ChatMessage(blocks=[TextBlock(text="see"), ImageBlock(path=picture)])
    )
    picture.unlink()

    before, message = store.get_messages("s1")
    assert before == ChatMessage(content="before")
    assert message.content == "see"
    assert isinstance(message.blocks[1], ImageBlock)
    assert str(message.blocks[1].path) == str(picture)


def test_messages_written_by_other_clients(memory: BaseChatMessageMemory) -> None:
    memory.add("s1", "system", "rules")
    memory.add("s1", "user", "hi", metadata={"name": "ana"})
    memory.add(
        "s1",
        "assistant",
        "",
        metadata={"tool_calls": [{"name": "track", "args": {"p": 1}, "id": "c9"}]},
    )
    memory.add("s1", "tool", "In transit", metadata={"tool_call_id": "c9"})

    system, user, assistant, tool = ChatMemoryStore(memory).get_messages("s1")
    assert system == ChatMessage(role="system", content="rules")
    assert user.additional_kwargs == {"name": "ana"}
    assert assistant.role == MessageRole.ASSISTANT
    assert assistant.additional_kwargs["tool_calls"] == [
        {
            "id": "c9",
            "type": "function",
            "function": {"name": "track", "arguments": '{"p": 1}'},
        }
    ]
    assert tool.additional_kwargs == {"tool_call_id": "c9"}
    assert tool.content == "In transit"


# -- llama-index-core's own memory and chat engine on the store --------


def words(text: str) -> list[str]:
    return text.split()


def test_chat_memory_buffer_works_on_the_store(memory: BaseChatMessageMemory) -> None:
    buffer = ChatMemoryBuffer.from_defaults(
        chat_store=ChatMemoryStore(memory),
        chat_store_key="s1",
        token_limit=6,
        tokenizer_fn=words,
    )
    turns = [
        ChatMessage(role="user", content="Where is X1?"),
        ChatMessage(role="assistant", content="In Lyon."),
        ChatMessage(role="user", content="When will it arrive?"),
        ChatMessage(role="assistant", content="Tomorrow."),
    ]
    for turn in turns:
        buffer.put(turn)

    assert buffer.get_all() == turns
    # Six words: the newest user turn and its answer.
    assert buffer.get() == turns[2:]
    assert [m.content for m in memory.history("s1")] == [t.content for t in turns]

    buffer.set(turns[:1])
    assert buffer.get_all() == turns[:1]
    buffer.reset()
    assert buffer.get_all() == []
    assert memory.count(session_id="s1") == 0


def test_chat_memory_buffer_async_on_an_async_store(store_url: str) -> None:
    async def main() -> None:
        async with await chatmem.open_async(store_url) as memory:
            buffer = ChatMemoryBuffer.from_defaults(
                chat_store=ChatMemoryStore(memory),
                chat_store_key="s1",
                token_limit=100,
                tokenizer_fn=words,
            )
            await buffer.aput(ChatMessage(role="user", content="hi"))
            await buffer.aset([ChatMessage(role="user", content="hello")])
            await buffer.aput(ChatMessage(role="assistant", content="hey"))
            assert [m.content for m in await buffer.aget()] == ["hello", "hey"]
            assert [m.content for m in await buffer.aget_all()] == ["hello", "hey"]
            await buffer.areset()
            assert await buffer.aget_all() == []

    run(main())


def test_chat_engine_keeps_the_conversation(memory: BaseChatMessageMemory) -> None:
    buffer = ChatMemoryBuffer.from_defaults(
        chat_store=ChatMemoryStore(memory),
        chat_store_key="s1",
        token_limit=1000,
        tokenizer_fn=words,
    )
    # MockLLM answers with the prompt it was given, so each answer shows
    # the history the engine read back from chatmem.
    engine = SimpleChatEngine.from_defaults(
        llm=MockLLM(), memory=buffer, system_prompt="You track parcels."
    )
    engine.chat("Where is X1?")
    second = str(engine.chat("When will it arrive?"))

    assert second.startswith("system: You track parcels.\nuser: Where is X1?\n")
    assert second.endswith("user: When will it arrive?\nassistant: ")
    stored = memory.history("s1")
    assert [m.role for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[2].content == "When will it arrive?"
    assert stored[3].content == second

    async def third() -> str:
        return str(await engine.achat("Thanks."))

    assert "user: When will it arrive?" in run(third())
    assert memory.count(session_id="s1") == 6
