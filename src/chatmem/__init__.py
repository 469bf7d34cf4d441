"""chatmem: fast, durable, bounded memory for chat applications.

Open a store with :func:`open` and use the chat API of
:class:`BaseChatMessageMemory`::

    import chatmem

    with chatmem.open("sqlite:///chat.db") as memory:
        memory.add("s1", "user", "Where is my parcel?", user_id="u7")
        prompt = memory.history("s1", last=20)
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from chatmem.base import BaseChatMessageMemory, BaseMemory
from chatmem.budget import POLICIES, Allocation, MemoryStats, TierStats
from chatmem.errors import (
    BackendUnavailable,
    CapacityExceeded,
    ChatMemoryError,
    InvalidMessage,
    MessageNotFound,
    StoreClosed,
    UnknownBackend,
)
from chatmem.message import ROLES, Message
from chatmem.registry import known_schemes, open_url
from chatmem.tiered import TieredMemory

if TYPE_CHECKING:
    from chatmem.aio import AsyncChatMemory

__all__ = [
    "POLICIES",
    "ROLES",
    "Allocation",
    "BackendUnavailable",
    "BaseChatMessageMemory",
    "BaseMemory",
    "CapacityExceeded",
    "ChatMemoryError",
    "InvalidMessage",
    "MemoryStats",
    "Message",
    "MessageNotFound",
    "StoreClosed",
    "TierStats",
    "TieredMemory",
    "UnknownBackend",
    "known_schemes",
    "open",
    "open_async",
]

__version__ = "0.1.0"

DEFAULT_URL = "sqlite:///./chatmem.db"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def open(url: str | None = None, **options: Any) -> BaseChatMessageMemory:
    """Open a chat memory store.

    The URL's scheme picks the backend (``memory://``, ``sqlite:///...``,
    ``redis://``, ``postgresql://``, ``kafka://``, ``rabbitmq://`` or one
    added by a plugin). Without a URL, ``CHATMEM_URL`` is used, else the
    embedded default ``sqlite:///./chatmem.db``.

    Options every backend honours: ``namespace``, ``capacity_bytes``,
    ``policy`` (``reject``, ``evict-oldest``, ``evict-lru-session``),
    ``retention`` (a ``timedelta``) and ``max_message_bytes`` (default
    1 MiB). Raises :class:`UnknownBackend` for an unknown scheme.

    ``cache_bytes=N`` puts a hot tier of N bytes in process memory in
    front of a persistent backend (:class:`TieredMemory`): recent
    sessions' newest messages are read from there, every write still goes
    to the backend first. ``cache_staleness`` (a ``timedelta``) lets the
    tier serve a session without checking it against the backend within
    that age.
    """
    if url is None:
        url = os.environ.get("CHATMEM_URL") or DEFAULT_URL
    return open_url(url, **options)


async def open_async(url: str | None = None, **options: Any) -> AsyncChatMemory:
    """Open a chat memory store whose methods are coroutines.

    Takes the URL and options of :func:`open`, plus ``max_concurrency``
    (calls run at once in worker threads, default 4); see
    :mod:`chatmem.aio`.
    """
    # Imported on first use: ``import chatmem`` stays free of asyncio.
    from chatmem.aio import open_async as open_async_store

    return await open_async_store(url, **options)
