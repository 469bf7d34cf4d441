"""No adapter coroutine blocks the event loop, even on a slow store.

Each test runs every coroutine of one adapter on a store whose every call
takes ``LATENCY`` seconds in the calling thread (see
:class:`tests.test_async.LatentMemory`), under :class:`LoopWatch`: a
heartbeat task and asyncio's debug mode both report any stall of three
quarters of a call or more. A coroutine that reached the store on the
loop's thread would stall it for a whole call.
"""

from __future__ import annotations

from typing import Any

import pytest

from chatmem.aio import AsyncChatMemory
from tests.test_async import LATENCY, LatentMemory, run_watched, watch_loop


def test_langchain_history() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.messages import AIMessage, HumanMessage

    from chatmem.integrations.langchain import ChatMemoryHistory

    async def main() -> None:
        slow = AsyncChatMemory(LatentMemory())
        history = ChatMemoryHistory(slow, "s1", max_tokens=1000)
        async with watch_loop() as watch:
            await history.aadd_messages([HumanMessage("hi"), AIMessage("hello")])
            assert len(await history.aget_messages()) == 2
            await history.aset_messages([HumanMessage("fresh")])
            await history.aclear()
            assert await history.aget_messages() == []
        watch.assert_never_blocked()

        # The control: the sync property, read on the loop's thread.
        async with watch_loop() as watch:
            assert history.messages == []
        watch.assert_blocked(at_least=LATENCY * 0.9)

    run_watched(main)


def test_openai_agents_session() -> None:
    pytest.importorskip("agents")
    from chatmem.integrations.openai_agents import ChatMemorySession

    async def main() -> None:
        # A sync store: the adapter puts the async API in front of it.
        session = ChatMemorySession(LatentMemory(), "s1")
        async with watch_loop() as watch:
            await session.add_items(
                [
                    {"role": "user", "content": "hi"},
                    {
                        "type": "function_call",
                        "call_id": "c1",
                        "name": "track",
                        "arguments": "{}",
                    },
                ]
            )
            assert len(await session.get_items()) == 2
            assert len(await session.get_items(limit=1)) == 1
            assert await session.pop_item() is not None
            await session.clear_session()
            assert await session.pop_item() is None
        watch.assert_never_blocked()

    run_watched(main)


def test_llama_index_chat_store() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import ChatMessage

    from chatmem.integrations.llama_index import ChatMemoryStore

    async def main() -> None:
        store = ChatMemoryStore(LatentMemory())
        messages: list[Any] = [ChatMessage(content="a"), ChatMessage(content="b")]
        async with watch_loop() as watch:
            await store.aset_messages("s1", messages)
            await store.async_add_message("s1", ChatMessage(content="c"))
            assert len(await store.aget_messages("s1")) == 3
            assert await store.aget_keys() == ["s1"]
            assert await store.adelete_message("s1", 0) == messages[0]
            assert await store.adelete_last_message("s1") is not None
            assert await store.adelete_messages("s1") == messages[1:]
        watch.assert_never_blocked()

        async with watch_loop() as watch:
            assert store.get_keys() == []
        watch.assert_blocked(at_least=LATENCY * 0.9)

    run_watched(main)
