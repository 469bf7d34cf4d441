"""LlamaIndex chat store backed by chatmem.

:class:`ChatMemoryStore` implements llama-index-core's ``BaseChatStore``
on a chatmem store: each key is a chatmem session, and every method has
its coroutine (``aset_messages``, ``aget_messages``, ``async_add_message``,
``adelete_messages``, ``adelete_message``, ``adelete_last_message``,
``aget_keys``), so chat memories such as ``ChatMemoryBuffer`` keep their
history in chatmem::

    memory = chatmem.open("sqlite:///chat.db")
    buffer = ChatMemoryBuffer.from_defaults(
        chat_store=ChatMemoryStore(memory),
        chat_store_key="user-42",
        token_limit=3000,
    )

Install with ``pip install 'chatmem[llama-index]'``.

Lossless. A ``ChatMessage`` comes back equal to what went in: its role
(``developer``, ``function``, ``chatbot`` and ``model`` included), its
``additional_kwargs`` and its blocks (text, image, audio, video,
document, thinking, tool call, citation and cache blocks). Values in
``additional_kwargs`` must be JSON; a pydantic model there (an OpenAI
tool call object, say) is stored as its JSON form and reads back as a
plain dict, which is what llama-index's own ``SimpleChatStore`` gives
after a restart. Anything else (bytes, other objects) is refused with
:class:`~chatmem.InvalidMessage` and nothing is stored. Binary block
data is stored base64-encoded, as llama-index holds it.

What is stored where. The text of the message's text blocks is the
chatmem content. ``additional_kwargs["tool_calls"]``, ``["tool_call_id"]``
and ``["name"]`` move to the metadata keys every chatmem adapter shares
(see :mod:`chatmem.integrations`); an assistant message whose tool calls
are ``ToolCallBlock`` s gets ``metadata["tool_calls"]`` too, so
:meth:`~chatmem.BaseChatMessageMemory.history_window` never separates a
call from its results. The rest (a role chatmem has no name for, the
other keyword arguments, the blocks unless they are one text block)
lives under ``metadata["llama_index"]``. Messages written by other
clients read back with their role, content and tool calls in the
``additional_kwargs`` form llama-index's OpenAI integration writes.

Limits. A message with several text blocks keeps their text in the
blocks and, joined, in the content, so it is stored twice. A block whose
file ``path`` no longer exists reads back unchecked (llama-index would
refuse to build it) so that the rest of the history still loads.
``delete_message`` and ``delete_last_message`` read only the message
they delete; ``delete_messages`` reads the session once to return it.
The chat store serializes to its class name alone (it holds a
connection, not data), so ``ChatMemoryBuffer.from_string`` cannot
rebuild it; build the buffer again with ``ChatMemoryStore(memory)``.
"""

from __future__ import annotations

import json
import typing
from typing import Any

try:
    from llama_index.core.base.llms.types import (
        ContentBlock,
        TextBlock,
        ToolCallBlock,
    )
    from llama_index.core.bridge.pydantic import (
        BaseModel,
        PrivateAttr,
        TypeAdapter,
        ValidationError,
    )
    from llama_index.core.llms import ChatMessage, MessageRole
    from llama_index.core.storage.chat_store.base import BaseChatStore
except ImportError as exc:
    raise ImportError(
        "chatmem.integrations.llama_index needs llama-index-core: "
        "pip install 'chatmem[llama-index]'."
    ) from exc

from chatmem.aio import AsyncChatMemory
from chatmem.base import BaseChatMessageMemory
from chatmem.errors import InvalidMessage, MessageNotFound
from chatmem.integrations._common import (
    areplace_session,
    read_tool_calls,
    replace_session,
    stores,
)
from chatmem.message import Message, check_id

__all__ = ["ChatMemoryStore", "from_chatmem", "to_chatmem"]

#: The metadata key holding the LlamaIndex fields chatmem has no place for.
METADATA_KEY = "llama_index"

# additional_kwargs keys every chatmem adapter shares.
SHARED_KEYS = ("tool_calls", "tool_call_id", "name")

ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}

_BLOCK = TypeAdapter(ContentBlock)
_BLOCK_CLASSES: dict[str, type[BaseModel]] = {
    cls.model_fields["block_type"].default: cls
    for cls in typing.get_args(typing.get_args(ContentBlock)[0])
}


class ChatMemoryStore(BaseChatStore):
    """A chatmem store as a LlamaIndex chat store; keys are sessions.

    ``memory`` is a store from :func:`chatmem.open` or
    :func:`chatmem.open_async`; the chat store never closes it. Messages
    are written with ``user_id`` when given. Raises
    :class:`~chatmem.InvalidMessage` (a ``ValueError``) for a malformed
    key and for a message that cannot be stored; a refused write stores
    nothing.
    """

    _store: BaseChatMessageMemory = PrivateAttr()
    _async: AsyncChatMemory = PrivateAttr()
    _user_id: str | None = PrivateAttr(default=None)

    def __init__(
        self,
        memory: BaseChatMessageMemory | AsyncChatMemory,
        *,
        user_id: str | None = None,
        **data: Any,
    ) -> None:
        super().__init__(**data)
        self._store, self._async = stores(memory)
        self._user_id = None if user_id is None else check_id(user_id, "user id")

    @classmethod
    def class_name(cls) -> str:
        """Name the class for LlamaIndex's serialization."""
        return "ChatMemoryStore"

    # -- sync ------------------------------------------------------------

    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """Make ``messages`` the whole of a key's history.

        A refused write (bad message, full budget) leaves it as it was.
        """
        replace_session(self._store, _key(key), self._convert(key, messages))

    def get_messages(self, key: str) -> list[ChatMessage]:
        """Return a key's messages, oldest first; ``[]`` for an unknown key."""
        return [from_chatmem(m) for m in self._store.history(_key(key))]

    def add_message(self, key: str, message: ChatMessage) -> None:
        """Append a message to a key's history."""
        self._store.add_messages(self._convert(key, [message]))

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Delete a key's history and return it, or None when it had none.

        A message another client adds meanwhile is deleted too but not
        returned.
        """
        session = _key(key)
        stored = self._store.history(session)
        if not stored:
            return None
        self._store.delete_session(session)
        return [from_chatmem(m) for m in stored]

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Delete the message at index ``idx`` and return it.

        Negative indexes count from the end, as in a list. Returns None
        when there is no message at ``idx``.
        """
        session = _key(key)
        while True:
            last, limit = _reach(idx)
            found = self._store.history(session, last=last, limit=limit)
            target = _at(found, idx)
            if target is None:
                return None
            try:
                self._store.delete(_id(target))
            except MessageNotFound:
                continue  # deleted meanwhile: the index now names another
            return from_chatmem(target)

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Delete the newest message and return it, or None when empty."""
        return self.delete_message(key, -1)

    def get_keys(self) -> list[str]:
        """Return every key (session) holding messages, sorted."""
        return self._store.sessions()

    # -- async -----------------------------------------------------------

    async def aset_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """Do :meth:`set_messages` without blocking the loop."""
        converted = self._convert(key, messages)
        await areplace_session(self._async, _key(key), converted)

    async def aget_messages(self, key: str) -> list[ChatMessage]:
        """Do :meth:`get_messages` without blocking the loop."""
        return [from_chatmem(m) for m in await self._async.history(_key(key))]

    async def async_add_message(self, key: str, message: ChatMessage) -> None:
        """Do :meth:`add_message` without blocking the loop."""
        await self._async.add_messages(self._convert(key, [message]))

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        """Do :meth:`delete_messages` without blocking the loop."""
        session = _key(key)
        stored = await self._async.history(session)
        if not stored:
            return None
        await self._async.delete_session(session)
        return [from_chatmem(m) for m in stored]

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Do :meth:`delete_message` without blocking the loop."""
        session = _key(key)
        while True:
            last, limit = _reach(idx)
            found = await self._async.history(session, last=last, limit=limit)
            target = _at(found, idx)
            if target is None:
                return None
            try:
                await self._async.delete(_id(target))
            except MessageNotFound:
                continue  # deleted meanwhile: the index now names another
            return from_chatmem(target)

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        """Do :meth:`delete_last_message` without blocking the loop."""
        return await self.adelete_message(key, -1)

    async def aget_keys(self) -> list[str]:
        """Do :meth:`get_keys` without blocking the loop."""
        return await self._async.sessions()

    def _convert(self, key: str, messages: list[ChatMessage]) -> list[Message]:
        session = _key(key)
        converted = []
        for index, message in enumerate(messages):
            try:
                converted.append(to_chatmem(message, session, self._user_id))
            except InvalidMessage as exc:
                raise InvalidMessage(
                    f"Message {index} of the batch: {exc} Nothing was stored."
                ) from None
        return converted

    def __repr__(self) -> str:
        return f"<ChatMemoryStore {self._store!r}>"


def _key(key: object) -> str:
    return check_id(key, "chat store key")


def _id(message: Message) -> str:
    assert message.id is not None  # stored messages have ids
    return message.id


def _reach(idx: object) -> tuple[int | None, int | None]:
    """Return the ``last`` and ``limit`` that read just as far as ``idx``."""
    if isinstance(idx, bool) or not isinstance(idx, int):
        raise InvalidMessage(f"idx must be a whole number, not {idx!r}.")
    if idx >= 0:
        return None, idx + 1
    return -idx, None


def _at(found: list[Message], idx: int) -> Message | None:
    wanted = idx + 1 if idx >= 0 else -idx
    if len(found) < wanted:
        return None
    return found[idx] if idx >= 0 else found[0]


def to_chatmem(
    message: ChatMessage, session_id: str, user_id: str | None = None
) -> Message:
    """Return the chatmem message that stores a LlamaIndex message.

    Raises :class:`~chatmem.InvalidMessage` for something that is not a
    ``ChatMessage`` and for ``additional_kwargs`` that are not JSON.
    """
    if not isinstance(message, ChatMessage):
        raise InvalidMessage(
            f"Expected a LlamaIndex ChatMessage, got {type(message).__name__}."
        )
    if "images" in message.additional_kwargs:
        # ChatMessage turns this legacy key into image blocks when it is
        # built, and would try again, and fail, on the stored dicts.
        raise InvalidMessage(
            "additional_kwargs['images'] is LlamaIndex's legacy image list; "
            "its images are already in the message's blocks, so drop the key."
        )
    role = MessageRole(message.role)
    kwargs = {
        key: _json(value, f"additional_kwargs[{key!r}]")
        for key, value in message.additional_kwargs.items()
    }

    metadata: dict[str, Any] = {}
    data: dict[str, Any] = {}
    moved = [key for key in SHARED_KEYS if key in kwargs]
    for key in moved:
        metadata[key] = kwargs.pop(key)
    if moved:
        data["moved"] = moved
    if kwargs:
        data["additional_kwargs"] = kwargs
    if ROLES[role] != role.value:
        data["role"] = role.value

    blocks = message.blocks
    text = message.content or ""
    if not (len(blocks) == 1 and isinstance(blocks[0], TextBlock)):
        data["blocks"] = [block.model_dump(mode="json") for block in blocks]
    calls = [block for block in blocks if isinstance(block, ToolCallBlock)]
    if calls and "tool_calls" not in metadata:
        metadata["tool_calls"] = [_shared_call(block) for block in calls]

    metadata[METADATA_KEY] = data
    return Message(
        session_id=session_id,
        role=ROLES[role],
        content=text,
        user_id=user_id,
        metadata=metadata,
    )


def _json(value: Any, where: str) -> Any:
    """Return ``value`` as JSON values, dumping pydantic models."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {key: _json(item, where) for key, item in value.items()}
    if isinstance(value, list):
        return [_json(item, where) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    # A tuple would read back as a list and bytes as text: refused like
    # any other value that would not come back equal.
    raise InvalidMessage(
        f"{where} holds a {type(value).__name__}; only JSON values and "
        "pydantic models can be stored."
    )


def _shared_call(block: ToolCallBlock) -> dict[str, Any]:
    call: dict[str, Any] = {"id": block.tool_call_id, "name": block.tool_name}
    if isinstance(block.tool_kwargs, dict):
        call["args"] = block.tool_kwargs
    else:
        call["arguments"] = block.tool_kwargs
    return call


def from_chatmem(message: Message) -> ChatMessage:
    """Return the LlamaIndex message a chatmem message stores.

    Messages written by :func:`to_chatmem` come back equal; others get
    their role, content and tool calls (see the module docstring).
    """
    metadata = message.metadata
    data = metadata.get(METADATA_KEY)
    if not isinstance(data, dict):
        return _foreign(message)

    kwargs = dict(data.get("additional_kwargs") or {})
    for key in data.get("moved") or ():
        if key in metadata:
            kwargs[key] = metadata[key]
    blocks = data.get("blocks")
    if blocks is None:
        blocks = [{"block_type": "text", "text": message.content}]
    fields = {
        "role": data.get("role", message.role),
        "additional_kwargs": kwargs,
        "blocks": blocks,
    }
    try:
        return ChatMessage.model_validate(fields)
    except ValidationError:
        # A block pointing at a file that is gone fails validation; the
        # history still loads, with that block unchecked.
        fields["blocks"] = [_block(block) for block in blocks]
        return ChatMessage.model_validate(fields)


def _block(data: dict[str, Any]) -> Any:
    try:
        return _BLOCK.validate_python(data)
    except ValidationError:
        cls = _BLOCK_CLASSES.get(data.get("block_type", ""))
        if cls is None:
            raise
        return cls.model_construct(**data)


def _foreign(message: Message) -> ChatMessage:
    metadata = message.metadata
    kwargs: dict[str, Any] = {}
    name = metadata.get("name")
    if isinstance(name, str):
        kwargs["name"] = name
    if message.role == "tool":
        call_id = metadata.get("tool_call_id")
        if isinstance(call_id, str):
            kwargs["tool_call_id"] = call_id
    calls = read_tool_calls(metadata.get("tool_calls"))
    if message.role == "assistant" and calls:
        kwargs["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": call.arguments
                    if isinstance(call.arguments, str)
                    else json.dumps({} if call.arguments is None else call.arguments),
                },
            }
            for call in calls
        ]
    return ChatMessage(
        role=MessageRole(message.role),
        content=message.content,
        additional_kwargs=kwargs,
    )
