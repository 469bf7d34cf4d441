"""Every adapter is lossless on the server backends too.

The adapter tests run on the in-process and SQLite stores; these run each
adapter's every-kind round trip against real Redis, PostgreSQL, Kafka
(Tansu) and RabbitMQ servers, whose storage of metadata JSON differs
(PostgreSQL's jsonb reorders keys, for one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatmem import BaseChatMessageMemory
from tests.conformance.targets import TARGETS

SERVERS = ["kafka", "postgres", "rabbitmq", "redis"]


@pytest.fixture(params=SERVERS)
def server_memory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[BaseChatMessageMemory]:
    """A fresh store on one of the real servers."""
    target = TARGETS[request.param](request, tmp_path)
    try:
        yield target.open()
    finally:
        target.close_all()


def test_langchain(server_memory: BaseChatMessageMemory) -> None:
    pytest.importorskip("langchain_core")
    from chatmem.integrations.langchain import ChatMemoryHistory
    from tests.integrations.test_langchain import every_kind_of_message

    sent = every_kind_of_message()
    ChatMemoryHistory(server_memory, "s1").add_messages(sent)
    assert ChatMemoryHistory(server_memory, "s1").messages == sent


def test_openai_agents(server_memory: BaseChatMessageMemory) -> None:
    pytest.importorskip("agents")
    from chatmem.integrations.openai_agents import ChatMemorySession
    from tests.integrations.test_openai_agents import every_kind_of_item

    sent: list[Any] = every_kind_of_item()
    session = ChatMemorySession(server_memory, "s1")
    asyncio.run(session.add_items(sent))
    assert asyncio.run(session.get_items()) == sent
    assert asyncio.run(session.pop_item()) == sent[-1]
    assert asyncio.run(session.get_items(limit=2)) == sent[-3:-1]


def test_llama_index(server_memory: BaseChatMessageMemory, tmp_path: Path) -> None:
    pytest.importorskip("llama_index.core")
    from chatmem.integrations.llama_index import ChatMemoryStore
    from tests.integrations.test_llama_index import every_kind_of_message

    sent = every_kind_of_message(tmp_path)
    store = ChatMemoryStore(server_memory)
    store.set_messages("s1", sent)
    assert store.get_messages("s1") == sent
    assert store.delete_message("s1", 1) == sent[1]
    assert store.get_messages("s1") == [sent[0], *sent[2:]]
    assert store.get_keys() == ["s1"]
