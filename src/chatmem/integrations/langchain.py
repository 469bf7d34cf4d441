"""LangChain chat history backed by chatmem.

:class:`ChatMemoryHistory` implements langchain-core's
``BaseChatMessageHistory`` for one session of a chatmem store, with the
sync methods (``messages``, ``add_messages``, ``clear``) and their
coroutines (``aget_messages``, ``aadd_messages``, ``aclear``), so it
serves ``RunnableWithMessageHistory`` and anything else that takes a
history::

    memory = chatmem.open("sqlite:///chat.db")
    chain = RunnableWithMessageHistory(
        prompt | model,
        lambda session_id: ChatMemoryHistory(memory, session_id),
        input_messages_key="question",
        history_messages_key="history",
    )

Install with ``pip install 'chatmem[langchain]'``.

Deprecation. langchain-core 1.x marks ``BaseChatMessageHistory``
(since 1.6.4) and ``RunnableWithMessageHistory`` (since 1.3.3)
deprecated, to be removed in 2.0, in favour of LangGraph's persistence.
chatmem supports them for as long as langchain-core ships them.
Subclassing does not warn; building a ``RunnableWithMessageHistory``
emits a ``LangChainDeprecationWarning``.

Lossless. Every field of a message comes back as it went in: content
(text or content blocks), ``tool_calls`` and ``invalid_tool_calls``,
``tool_call_id``, ``artifact`` and ``status``, ``name``, ``id``,
``additional_kwargs``, ``response_metadata`` and ``usage_metadata``, and
the message class (chunks included). Values must be JSON; anything else
is refused with :class:`~chatmem.InvalidMessage` and nothing is stored.
Tool calls, tool call ids and names are kept in the metadata keys every
chatmem adapter shares (see :mod:`chatmem.integrations`), the rest under
``metadata["langchain"]``. Messages written by other clients read back
as the closest LangChain class, with chatmem's id as their ``id``.

Windows. With ``max_tokens`` the history returns
:meth:`~chatmem.BaseChatMessageMemory.history_window` instead of the whole
session: the newest messages that fit, the system message kept, tool calls
never split from their results, reading only what the window needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        ChatMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        messages_from_dict,
    )
except ImportError as exc:
    raise ImportError(
        "chatmem.integrations.langchain needs langchain-core: "
        "pip install 'chatmem[langchain]'."
    ) from exc

from chatmem.aio import AsyncChatMemory
from chatmem.base import BaseChatMessageMemory
from chatmem.errors import InvalidMessage
from chatmem.integrations._common import (
    areplace_session,
    read_tool_calls,
    replace_session,
    stores,
)
from chatmem.message import Message, check_id

__all__ = ["ChatMemoryHistory", "from_chatmem", "to_chatmem"]

#: The metadata key holding the LangChain fields chatmem has no place for.
METADATA_KEY = "langchain"

# Keys every chatmem adapter shares, lifted out of the LangChain fields.
SHARED_KEYS = ("tool_calls", "tool_call_id", "name")

ROLE_OF_TYPE = {
    "human": "user",
    "HumanMessageChunk": "user",
    "ai": "assistant",
    "AIMessageChunk": "assistant",
    "system": "system",
    "SystemMessageChunk": "system",
    "tool": "tool",
    "ToolMessageChunk": "tool",
    "function": "tool",
    "FunctionMessageChunk": "tool",
}

CHAT_ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}


class ChatMemoryHistory(BaseChatMessageHistory):
    """One session of a chatmem store as a LangChain chat history.

    ``memory`` is a store from :func:`chatmem.open` or
    :func:`chatmem.open_async`; the history never closes it. Messages are
    written with ``user_id`` when given. With ``max_tokens``, reads return
    the session's newest messages that fit (see the module docstring),
    counted by ``token_counter`` or chatmem's estimate.

    Raises :class:`~chatmem.InvalidMessage` (a ``ValueError``) for a
    malformed session id, and for a message that cannot be stored; a
    batch with such a message stores nothing.
    """

    def __init__(
        self,
        memory: BaseChatMessageMemory | AsyncChatMemory,
        session_id: str,
        *,
        user_id: str | None = None,
        max_tokens: int | None = None,
        token_counter: Callable[[Message], int] | None = None,
    ) -> None:
        super().__init__()
        self._store, self._async = stores(memory)
        self.session_id = check_id(session_id, "session id")
        self.user_id = None if user_id is None else check_id(user_id, "user id")
        self.max_tokens = max_tokens
        self.token_counter = token_counter

    # -- sync ------------------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:
        """The session's messages (or its window), oldest first."""
        if self.max_tokens is None:
            stored = self._store.history(self.session_id)
        else:
            stored = self._store.history_window(
                self.session_id, self.max_tokens, token_counter=self.token_counter
            )
        return [from_chatmem(m) for m in stored]

    @messages.setter
    def messages(self, messages: Sequence[BaseMessage]) -> None:
        """Replace the session's messages; a refused write changes nothing."""
        replace_session(self._store, self.session_id, self._convert(messages))

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Store messages in one atomic batch: all of them or none."""
        self._store.add_messages(self._convert(messages))

    def clear(self) -> None:
        """Delete every message of the session."""
        self._store.delete_session(self.session_id)

    # -- async -----------------------------------------------------------

    async def aget_messages(self) -> list[BaseMessage]:
        """The session's messages (or its window), without blocking the loop."""
        if self.max_tokens is None:
            stored = await self._async.history(self.session_id)
        else:
            stored = await self._async.history_window(
                self.session_id, self.max_tokens, token_counter=self.token_counter
            )
        return [from_chatmem(m) for m in stored]

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Store messages atomically without blocking the loop."""
        await self._async.add_messages(self._convert(messages))

    async def aclear(self) -> None:
        """Delete every message of the session without blocking the loop."""
        await self._async.delete_session(self.session_id)

    async def aset_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Replace the session's messages without blocking the loop."""
        await areplace_session(self._async, self.session_id, self._convert(messages))

    def _convert(self, messages: Sequence[BaseMessage]) -> list[Message]:
        converted = []
        for index, message in enumerate(messages):
            try:
                converted.append(to_chatmem(message, self.session_id, self.user_id))
            except InvalidMessage as exc:
                raise InvalidMessage(
                    f"Message {index} of the batch: {exc} Nothing was stored."
                ) from None
        return converted

    def __repr__(self) -> str:
        return f"<ChatMemoryHistory session_id={self.session_id!r} {self._store!r}>"


def to_chatmem(
    message: BaseMessage, session_id: str, user_id: str | None = None
) -> Message:
    """Return the chatmem message that stores a LangChain message.

    Raises :class:`~chatmem.InvalidMessage` for something that is not a
    LangChain message, and for a ``RemoveMessage``, which is an
    instruction to LangGraph rather than a turn of the conversation.
    """
    if not isinstance(message, BaseMessage):
        raise InvalidMessage(
            f"Expected a LangChain message, got {type(message).__name__}."
        )
    kind = message.type
    role = ROLE_OF_TYPE.get(kind)
    if role is None and isinstance(message, ChatMessage):
        role = CHAT_ROLES.get(message.role.lower(), "user")
    if role is None:
        raise InvalidMessage(
            f"A LangChain {type(message).__name__} (type {kind!r}) is not a "
            "turn of a conversation and cannot be stored."
        )

    # Fields equal to their default are left out: the class restores
    # them, and most messages then store only their type.
    fields = type(message).model_fields
    data: dict[str, Any] = {"type": kind}
    for key, value in message.model_dump().items():
        if key == "type":
            continue
        field = fields.get(key)
        if (
            field is not None
            and not field.is_required()
            and value == field.get_default(call_default_factory=True)
        ):
            continue
        data[key] = value

    content = data.pop("content", "")
    if isinstance(content, str):
        text = content
    else:
        # Content blocks stay whole in the metadata; the text is what
        # token windows and readers of the store see.
        text = message.text
        data["content"] = content

    metadata: dict[str, Any] = {}
    for key in SHARED_KEYS:
        if key in data:
            metadata[key] = data.pop(key)
    metadata[METADATA_KEY] = data
    return Message(
        session_id=session_id,
        role=role,
        content=text,
        user_id=user_id,
        metadata=metadata,
    )


def from_chatmem(message: Message) -> BaseMessage:
    """Return the LangChain message a chatmem message stores.

    Messages written by :func:`to_chatmem` come back exactly; others
    become the closest LangChain class with chatmem's id as their id.
    """
    metadata = message.metadata
    data = metadata.get(METADATA_KEY)
    if isinstance(data, dict) and isinstance(data.get("type"), str):
        fields = dict(data)
        fields.setdefault("content", message.content)
        for key in SHARED_KEYS:
            if key in metadata:
                fields[key] = metadata[key]
        return messages_from_dict([{"type": fields["type"], "data": fields}])[0]
    return _foreign(message)


def _foreign(message: Message) -> BaseMessage:
    metadata = message.metadata
    name = metadata.get("name")
    common: dict[str, Any] = {"content": message.content, "id": message.id}
    if isinstance(name, str):
        common["name"] = name
    if message.role == "user":
        return HumanMessage(**common)
    if message.role == "system":
        return SystemMessage(**common)
    if message.role == "tool":
        call_id = metadata.get("tool_call_id")
        return ToolMessage(
            **common, tool_call_id=call_id if isinstance(call_id, str) else ""
        )
    valid, invalid = _tool_calls(metadata.get("tool_calls"))
    return AIMessage(**common, tool_calls=valid, invalid_tool_calls=invalid)


def _tool_calls(calls: object) -> tuple[list[Any], list[Any]]:
    """Split stored tool calls into LangChain's valid and invalid ones."""
    valid: list[Any] = []
    invalid: list[Any] = []
    for call in read_tool_calls(calls):
        if call.name is not None and isinstance(call.arguments, dict):
            valid.append(
                {
                    "name": call.name,
                    "args": call.arguments,
                    "id": call.id,
                    "type": "tool_call",
                }
            )
            continue
        raw = call.arguments
        text = raw if isinstance(raw, str) or raw is None else json.dumps(raw)
        invalid.append(
            _invalid(
                call.name, text, call.id, "not a named call with JSON object arguments"
            )
        )
    return valid, invalid


def _invalid(name: Any, args: Any, call_id: Any, error: str) -> dict[str, Any]:
    return {
        "name": name if isinstance(name, str) else None,
        "args": args if isinstance(args, str) else None,
        "id": call_id if isinstance(call_id, str) else None,
        "error": f"Stored tool call: {error}.",
        "type": "invalid_tool_call",
    }
