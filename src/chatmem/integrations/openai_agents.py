"""OpenAI Agents SDK session backed by chatmem.

:class:`ChatMemorySession` implements the SDK's ``Session`` protocol
(``get_items``, ``add_items``, ``pop_item``, ``clear_session``, with the
``session_id`` and ``session_settings`` attributes) for one session of a
chatmem store::

    memory = chatmem.open("sqlite:///chat.db")
    session = ChatMemorySession(memory, "user-42")
    result = await Runner.run(agent, "Where is my parcel?", session=session)

Install with ``pip install 'chatmem[openai-agents]'``.

Lossless. Every item the SDK hands over (messages, function, computer,
shell, apply-patch and custom tool calls and their outputs, reasoning,
MCP, program and compaction items, item references) is stored as one
chatmem message and read back equal to what went in, as JSON: a value
JSON cannot hold is refused with :class:`~chatmem.InvalidMessage` and
nothing is stored. The item lives in ``metadata["openai_agents"]``; its
text (a message's content, a call's input, an output, a reasoning
summary) is moved to the message content, so that it is stored once and
token windows count it. An item whose text is split over several parts
keeps its parts and has their joined text as content too.

Roles and tool calls. Messages keep their role (``developer`` is stored
as ``system``); an item with a ``call_id`` is an ``assistant`` message
calling a tool, with ``metadata["tool_calls"]``; its ``*_output`` item is
a ``tool`` message with ``metadata["tool_call_id"]``, as every chatmem
adapter writes them, so
:meth:`~chatmem.BaseChatMessageMemory.history_window` never separates a
call from its output. A function call is kept in OpenAI's chat form
(``{"id", "type": "function", "function": {"name", "arguments"}}``), its
arguments stored there only, so LangChain reads it as a tool call. Other
items are ``assistant`` messages.

Messages written by other clients become items too: user, system and
assistant text as input messages, their tool calls as ``function_call``
items, tool results with a call id as ``function_call_output`` items.
An assistant message with tool calls gives several items; ``get_items``
counts items, and ``pop_item`` on such a message returns its last item
and stores the others again as items of their own.

Limits. Items with no text (a screenshot, shell output parts) cost only
the per-message overhead in chatmem's default token estimate; pass a
``token_counter`` that reads ``metadata["openai_agents"]`` when such
items must be counted. Every coroutine runs the store's work off the
event loop (see :mod:`chatmem.aio`).
"""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any, cast

try:
    from agents.items import TResponseInputItem
    from agents.memory.session_settings import SessionSettings, coerce_session_settings
except ImportError as exc:
    raise ImportError(
        "chatmem.integrations.openai_agents needs openai-agents: "
        "pip install 'chatmem[openai-agents]'."
    ) from exc

from chatmem.aio import AsyncChatMemory
from chatmem.base import BaseChatMessageMemory
from chatmem.errors import InvalidMessage, MessageNotFound
from chatmem.integrations._common import read_tool_calls, stores
from chatmem.message import Message, check_id

__all__ = ["ChatMemorySession", "from_chatmem", "to_chatmem"]

#: The metadata key holding the SDK's item.
METADATA_KEY = "openai_agents"

MESSAGE_ROLES = {
    "user": "user",
    "system": "system",
    "developer": "system",
    "assistant": "assistant",
}

# Where an item's text is, by item type, tried in order. Outputs and
# calls not named here use the defaults below.
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "message": ("content",),
    "reasoning": ("summary", "content"),
    "custom_tool_call": ("input",),
    "program": ("code",),
    "program_output": ("result",),
    "mcp_call": ("output", "arguments"),
    "mcp_approval_request": ("arguments",),
    "mcp_approval_response": ("reason",),
}
OUTPUT_TEXT_FIELDS = ("output",)
OTHER_TEXT_FIELDS = ("content", "output", "arguments")

# A path into an item: keys of dicts and indexes of lists.
Path = list[str | int]


class ChatMemorySession:
    """One session of a chatmem store as an OpenAI Agents SDK session.

    ``memory`` is a store from :func:`chatmem.open` or
    :func:`chatmem.open_async`; the session never closes it. Items are
    written with ``user_id`` when given, so
    :meth:`~chatmem.BaseChatMessageMemory.delete_user` erases the whole
    conversation. ``session_settings`` (a ``SessionSettings`` or a dict)
    sets the default ``limit`` of :meth:`get_items`.

    Raises :class:`~chatmem.InvalidMessage` (a ``ValueError``) for a
    malformed session id and for items that cannot be stored.
    """

    session_id: str
    session_settings: SessionSettings | None

    def __init__(
        self,
        memory: BaseChatMessageMemory | AsyncChatMemory,
        session_id: str,
        *,
        user_id: str | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        _, self._memory = stores(memory)
        self.session_id = check_id(session_id, "session id")
        self.user_id = None if user_id is None else check_id(user_id, "user id")
        self.session_settings = (
            SessionSettings()
            if session_settings is None
            else coerce_session_settings(session_settings)
        )

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """Return the session's items, oldest first.

        With ``limit`` (or ``session_settings.limit``), only the newest
        ``limit`` items. Raises :class:`~chatmem.InvalidMessage` for a
        negative limit.
        """
        if limit is None and self.session_settings is not None:
            limit = self.session_settings.limit
        if limit is None:
            stored = await self._memory.history(self.session_id)
            return _items(stored)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidMessage(f"limit must be a whole number >= 0, not {limit!r}.")
        if limit == 0:
            return []

        # Every message gives at least one item: the newest `limit`
        # messages hold the newest `limit` items.
        stored = await self._memory.history(self.session_id, last=limit)
        return _items(stored)[-limit:]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Store items in one atomic batch: all of them or none."""
        messages = []
        for index, item in enumerate(items):
            try:
                messages.append(to_chatmem(item, self.session_id, self.user_id))
            except InvalidMessage as exc:
                raise InvalidMessage(
                    f"Item {index} of the batch: {exc} Nothing was stored."
                ) from None
        await self._memory.add_messages(messages)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove the newest item and return it, or None when empty.

        Concurrent pops each get a different item.
        """
        while True:
            newest = await self._memory.history(self.session_id, last=1)
            if not newest:
                return None
            message = newest[0]
            assert message.id is not None  # stored messages have ids
            items = from_chatmem(message)
            if len(items) == 1:
                try:
                    await self._memory.delete(message.id)
                except MessageNotFound:
                    continue  # another pop took it first
                return items[0]

            # Written by another client as one message with several items:
            # the others are stored again before it goes, so a failed
            # delete loses nothing.
            rest = await self._memory.add_messages(
                to_chatmem(item, self.session_id, message.user_id).replace(
                    created_at=message.created_at
                )
                for item in items[:-1]
            )
            try:
                await self._memory.delete(message.id)
            except MessageNotFound:
                # Another pop split it first; take back the copies.
                for copied in rest:
                    assert copied.id is not None
                    # Popped already by yet another caller, if not found.
                    with contextlib.suppress(MessageNotFound):
                        await self._memory.delete(copied.id)
                continue
            return items[-1]

    async def clear_session(self) -> None:
        """Delete every item of the session."""
        await self._memory.delete_session(self.session_id)

    def __repr__(self) -> str:
        return f"<ChatMemorySession session_id={self.session_id!r} {self._memory!r}>"


def _items(messages: list[Message]) -> list[TResponseInputItem]:
    return [item for message in messages for item in from_chatmem(message)]


def to_chatmem(
    item: TResponseInputItem | dict[str, Any],
    session_id: str,
    user_id: str | None = None,
) -> Message:
    """Return the chatmem message that stores an SDK item.

    Raises :class:`~chatmem.InvalidMessage` when the item is not a dict
    of JSON values.
    """
    if not isinstance(item, dict):
        raise InvalidMessage(
            f"An Agents SDK item must be a dict, not {type(item).__name__}."
        )
    try:
        # A plain JSON copy: the SDK may hand over tuples, and the caller
        # keeps its own dict untouched.
        data: dict[str, Any] = json.loads(json.dumps(item, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f"The item is not JSON: {exc}.") from None

    role, metadata = _role(data)
    stored: dict[str, Any] = {"item": data}
    text = ""
    calls = metadata.get("tool_calls")
    if calls and "function" in calls[0]:
        # The arguments live in the shared tool call alone.
        del data["arguments"]
        stored["arguments"] = True
    else:
        path = _text_path(data)
        if path is not None:
            text = _pop(data, path)
            stored["text"] = path
        else:
            text = _text_of(data)
    metadata[METADATA_KEY] = stored
    return Message(
        session_id=session_id,
        role=role,
        content=text,
        user_id=user_id,
        metadata=metadata,
    )


def _role(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return an item's chatmem role and the metadata keys adapters share."""
    kind = data.get("type")
    call_id = data.get("call_id")
    if isinstance(kind, str) and kind.endswith("_output"):
        if isinstance(call_id, str):
            return "tool", {"tool_call_id": call_id}
        return "tool", {}
    if kind == "mcp_approval_response":
        request = data.get("approval_request_id")
        if isinstance(request, str):
            return "tool", {"tool_call_id": request}
        return "tool", {}

    if kind == "mcp_approval_request":
        call_id = data.get("id")
    if isinstance(call_id, str):
        name, arguments = data.get("name"), data.get("arguments")
        call: dict[str, Any]
        if kind == "function_call" and isinstance(arguments, str):
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        else:
            call = {"id": call_id, "type": kind}
            if isinstance(name, str):
                call["name"] = name
        return "assistant", {"tool_calls": [call]}

    if kind in (None, "message") and data.get("role") in MESSAGE_ROLES:
        return MESSAGE_ROLES[data["role"]], {}
    return "assistant", {}


def _text_path(data: dict[str, Any]) -> Path | None:
    """Return where the item keeps its one piece of text, if it has one."""
    kind = data.get("type")
    if kind is None and "role" in data:
        kind = "message"
    fields: tuple[str, ...]
    if not isinstance(kind, str):
        fields = OTHER_TEXT_FIELDS
    elif kind in TEXT_FIELDS:
        fields = TEXT_FIELDS[kind]
    elif kind.endswith("_output"):
        fields = OUTPUT_TEXT_FIELDS
    else:
        fields = OTHER_TEXT_FIELDS

    for field in fields:
        value = data.get(field)
        if isinstance(value, str):
            return [field]
        if (
            isinstance(value, list)
            and len(value) == 1
            and isinstance(value[0], dict)
            and isinstance(value[0].get("text"), str)
        ):
            return [field, 0, "text"]
    return None


def _pop(data: dict[str, Any], path: Path) -> str:
    *parents, last = path
    holder: Any = data
    for step in parents:
        holder = holder[step]
    text: str = holder.pop(last)
    return text


def _put(data: dict[str, Any], path: list[Any], text: str) -> None:
    *parents, last = path
    holder: Any = data
    for step in parents:
        holder = holder[step]
    holder[last] = text


def from_chatmem(message: Message) -> list[TResponseInputItem]:
    """Return the SDK items a chatmem message stores.

    A message written by :func:`to_chatmem` gives its one item back
    exactly; see the module docstring for messages of other clients.
    """
    metadata = message.metadata
    stored = metadata.get(METADATA_KEY)
    if not (isinstance(stored, dict) and isinstance(stored.get("item"), dict)):
        return [cast(TResponseInputItem, item) for item in _foreign(message)]

    # A deep copy: an in-process store hands out its own metadata, and
    # the caller may change the item it gets.
    item: dict[str, Any] = copy.deepcopy(stored["item"])
    path = stored.get("text")
    if isinstance(path, list):
        _put(item, path, message.content)
    if stored.get("arguments") is True:
        item["arguments"] = metadata["tool_calls"][0]["function"]["arguments"]
    return [cast(TResponseInputItem, item)]


def _foreign(message: Message) -> list[dict[str, Any]]:
    metadata = message.metadata
    if message.role == "tool":
        call_id = metadata.get("tool_call_id")
        if isinstance(call_id, str):
            return [
                {
                    "type": "function_call_output",
                    "call_id": call_id,
                    "output": message.content,
                }
            ]
        return [{"role": "user", "content": message.content}]
    if message.role != "assistant":
        return [{"role": message.role, "content": message.content}]

    items: list[dict[str, Any]] = []
    calls = read_tool_calls(metadata.get("tool_calls"))
    if message.content or not calls:
        items.append({"role": "assistant", "content": message.content})
    for index, call in enumerate(calls):
        arguments = call.arguments
        if not isinstance(arguments, str):
            arguments = json.dumps({} if arguments is None else arguments)
        items.append(
            {
                "type": "function_call",
                "call_id": call.id or f"{message.id}-{index}",
                "name": call.name or "",
                "arguments": arguments,
            }
        )
    return items


def _text_of(item: dict[str, Any]) -> str:
    """Return the joined text of an item's content, summary or output parts."""
    for field in ("content", "summary", "output"):
        parts = item.get(field)
        if isinstance(parts, list):
            texts = [
                part["text"]
                for part in parts
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            ]
            if texts:
                return "\n".join(texts)
    return ""
