"""Exceptions raised by chatmem.

Every exception chatmem raises on purpose derives from one root, so an
application can catch them all in one place. Mistakes by the caller also
derive from the builtin that fits, so code that already catches
``KeyError`` or ``ValueError`` keeps working::

    ChatMemoryError
     +-- MessageNotFound      (also KeyError)   no message has that id here
     +-- InvalidMessage       (also ValueError) a message or argument is malformed
     +-- CapacityExceeded                       the byte budget cannot take it
     +-- BackendUnavailable                     the server or file cannot be used
     +-- StoreClosed                            the store was closed
     +-- UnknownBackend       (also ValueError) no backend for a URL scheme

Messages are sentences that say what happened and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "CapacityExceeded",
    "ChatMemoryError",
    "InvalidMessage",
    "MessageNotFound",
    "StoreClosed",
    "UnknownBackend",
]


class ChatMemoryError(Exception):
    """Root of every exception chatmem raises on purpose."""


class MessageNotFound(ChatMemoryError, KeyError):
    """No message with this id exists in the store's namespace."""

    def __init__(self, message_id: str) -> None:
        super().__init__(message_id)
        self.message_id = message_id

    def __str__(self) -> str:
        return (
            f"No message with id {self.message_id!r} in this store; it was "
            "never stored here, was deleted, or fell out of retention."
        )


class InvalidMessage(ChatMemoryError, ValueError):
    """A message or an argument is malformed; nothing was stored."""


class CapacityExceeded(ChatMemoryError):
    """The byte budget cannot take the write under the store's policy."""


class BackendUnavailable(ChatMemoryError):
    """The storage system could not be reached or used.

    Raised within the configured timeout; the operation may be retried.
    A write that raised this was not acknowledged.
    """


class StoreClosed(ChatMemoryError):
    """The store was closed and can no longer be used."""

    def __init__(self, what: str = "store") -> None:
        super().__init__(f"This {what} is closed; open a new one with chatmem.open().")


class UnknownBackend(ChatMemoryError, ValueError):
    """No backend is registered for a URL scheme."""
