"""What the adapters share: reaching both faces of a store, replacing a
session's messages without losing them on a failed write, and reading the
tool calls other clients wrote."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from chatmem.aio import AsyncChatMemory
from chatmem.base import BaseChatMessageMemory
from chatmem.errors import MessageNotFound
from chatmem.message import Message

__all__ = [
    "ToolCall",
    "areplace_session",
    "read_tool_calls",
    "replace_session",
    "stores",
]


def stores(memory: object) -> tuple[BaseChatMessageMemory, AsyncChatMemory]:
    """Return the synchronous and the async face of a store.

    An adapter's sync methods use the first, its coroutines the second, so
    that neither blocks an event loop. Raises ``TypeError`` for anything
    that is not a chatmem store.
    """
    if isinstance(memory, AsyncChatMemory):
        return memory.sync, memory
    if isinstance(memory, BaseChatMessageMemory):
        # A wrapper owns no threads; the adapter never closes it, so the
        # caller's store stays theirs to close.
        return memory, AsyncChatMemory(memory)
    raise TypeError(
        "Pass a chatmem store: chatmem.open(url) or await "
        f"chatmem.open_async(url), not {type(memory).__name__}."
    )


def replace_session(
    store: BaseChatMessageMemory, session_id: str, messages: Sequence[Message]
) -> None:
    """Make ``messages`` the whole of a session.

    The new messages are written first, in one atomic batch, and the old
    ones deleted after: a refused write (bad message, full budget) leaves
    the session as it was. A bounded store must have room for both for a
    moment.
    """
    old = store.history(session_id)
    store.add_messages(messages)
    for message in old:
        _delete_quietly(store, message)


async def areplace_session(
    memory: AsyncChatMemory, session_id: str, messages: Sequence[Message]
) -> None:
    """Do :func:`replace_session` through the async API."""
    old = await memory.history(session_id)
    await memory.add_messages(messages)
    for message in old:
        try:
            assert message.id is not None
            await memory.delete(message.id)
        except MessageNotFound:
            pass  # gone already: retention, eviction or another client


def _delete_quietly(store: BaseChatMessageMemory, message: Message) -> None:
    try:
        assert message.id is not None
        store.delete(message.id)
    except MessageNotFound:
        pass  # gone already: retention, eviction or another client


class ToolCall(NamedTuple):
    """A tool call read from ``metadata["tool_calls"]`` in any known form."""

    id: str | None
    name: str | None
    arguments: Any  # a dict when the JSON arguments parsed, else the raw value


def read_tool_calls(calls: object) -> list[ToolCall]:
    """Return the tool calls of a message written by any client.

    Takes LangChain's form (``name``, ``args``, ``id``) and OpenAI's chat
    form (``id``, ``function`` with ``name`` and JSON ``arguments``).
    """
    if not isinstance(calls, list):
        return []
    found = []
    for call in calls:
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if isinstance(function, dict):
            name, arguments = function.get("name"), function.get("arguments")
        else:
            name = call.get("name")
            arguments = call.get("args", call.get("arguments"))
        if isinstance(arguments, str):
            arguments = _parse_arguments(arguments)
        call_id = call.get("id")
        found.append(
            ToolCall(
                call_id if isinstance(call_id, str) else None,
                name if isinstance(name, str) else None,
                arguments,
            )
        )
    return found


def _parse_arguments(text: str) -> Any:
    """Return JSON arguments parsed, or the text itself when not JSON."""
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return text
