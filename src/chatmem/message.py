"""Messages: the record every backend stores, its checks and its encoding.

A :class:`Message` is immutable once built. The store assigns ``id`` and,
when the caller leaves it out, ``created_at``. Metadata holds JSON values
only, so tool calls (``tool_calls``, ``tool_call_id``, ``name``) and any
other field a framework attaches come back exactly as they went in.

:func:`encode` and :func:`decode` define the one byte form that the log and
key-value backends write and that ``chatmem export`` prints; the SQL
backends keep the same fields in columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from chatmem.errors import InvalidMessage

__all__ = [
    "ROLES",
    "Message",
    "decode",
    "encode",
    "from_micros",
    "to_micros",
]

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
ROLE_CODES: dict[str, int] = {role: code for code, role in enumerate(ROLES)}

MAX_ID_BYTES = 512
MAX_METADATA_DEPTH = 32

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# json.dumps with options builds an encoder per call, a third of the cost
# of encoding a tool call's metadata; this one is built once.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

#: The JSON decoder's C scanner, without the three Python calls json.loads
#: wraps around it: for hot paths reading back the compact JSON chatmem
#: wrote itself. ``scan_json(text, 0)`` returns (value, end).
scan_json: Callable[[str, int], tuple[Any, int]]
scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class Message(tuple[Any, ...]):
    """One turn of a conversation.

    Build it with keywords; ``session_id``, ``role`` and ``content`` are
    required. ``role`` is one of ``system``, ``user``, ``assistant`` or
    ``tool``. ``created_at`` is timezone-aware UTC with microsecond
    precision. ``metadata`` holds JSON values; treat it as read-only.

    >>> m = Message(session_id="s1", role="user", content="hi")
    >>> m.id is None
    True
    """

    # A tuple underneath: stores build thousands of these per read, and a
    # tuple is several times cheaper to make than a frozen dataclass. The
    # time may be held as epoch microseconds and turned into a datetime
    # only when read.
    __slots__ = ()

    def __new__(
        cls,
        *,
        session_id: str,
        role: str,
        content: str,
        id: str | None = None,
        user_id: str | None = None,
        created_at: datetime | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Message:
        fields = (
            id,
            session_id,
            role,
            content,
            user_id,
            created_at,
            {} if metadata is None else metadata,
        )
        return tuple.__new__(cls, fields)

    @property
    def id(self) -> str | None:
        """The id the store assigned, or None before storing."""
        value: str | None = self[0]
        return value

    @property
    def session_id(self) -> str:
        """The conversation the message belongs to."""
        value: str = self[1]
        return value

    @property
    def role(self) -> str:
        """``system``, ``user``, ``assistant`` or ``tool``."""
        value: str = self[2]
        return value

    @property
    def content(self) -> str:
        """The text of the message."""
        value: str = self[3]
        return value

    @property
    def user_id(self) -> str | None:
        """Who wrote it, when known."""
        value: str | None = self[4]
        return value

    @property
    def created_at(self) -> datetime | None:
        """When it was written, in UTC; set by the store when not given."""
        value = self[5]
        if type(value) is int:
            return _EPOCH + timedelta(microseconds=value)
        result: datetime | None = value
        return result

    @property
    def metadata(self) -> dict[str, Any]:
        """JSON values stored with the message (tool calls, names ...)."""
        value: dict[str, Any] = self[6]
        return value

    def _key(self) -> tuple[Any, ...]:
        return (*self[:5], self.created_at, self[6])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._key() == other._key()

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._key() != other._key()

    __hash__ = None  # type: ignore[assignment]  # metadata is a dict

    def __repr__(self) -> str:
        return (
            f"Message(id={self.id!r}, session_id={self.session_id!r}, "
            f"role={self.role!r}, content={self.content!r}, "
            f"user_id={self.user_id!r}, created_at={self.created_at!r}, "
            f"metadata={self.metadata!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (tuple(self),))

    def replace(self, **changes: Any) -> Message:
        """Return a copy with the given fields changed."""
        fields: dict[str, Any] = {
            "id": self.id,
            "session_id": self.session_id,
            "role": self.role,
            "content": self.content,
            "user_id": self.user_id,
            "created_at": self.created_at,
            "metadata": self.metadata,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"Message has no field {sorted(unknown)[0]!r}.")
        fields.update(changes)
        return Message(**fields)

    def to_dict(self) -> dict[str, Any]:
        """Return the message as plain JSON values (time in ISO 8601)."""
        created = self.created_at
        return {
            "id": self.id,
            "session_id": self.session_id,
            "role": self.role,
            "content": self.content,
            "user_id": self.user_id,
            "created_at": created.isoformat() if created else None,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        """Build a message from :meth:`to_dict` output.

        Raises :class:`InvalidMessage` when a field is missing or of the
        wrong type.
        """
        if not isinstance(data, dict):
            raise InvalidMessage("A message must be a JSON object.")
        try:
            created = data.get("created_at")
            return cls(
                id=data.get("id"),
                session_id=data["session_id"],
                role=data["role"],
                content=data["content"],
                user_id=data.get("user_id"),
                created_at=datetime.fromisoformat(created) if created else None,
                metadata=data.get("metadata") or {},
            )
        except KeyError as exc:
            raise InvalidMessage(
                f"A message needs the field {exc.args[0]!r}."
            ) from None
        except (TypeError, ValueError) as exc:
            raise InvalidMessage(f"A message field is malformed: {exc}.") from None


def with_id(message: Message, message_id: str) -> Message:
    """Return ``message`` with the id its store assigned."""
    return tuple.__new__(Message, (message_id, *message[1:]))


def _rebuild(fields: tuple[Any, ...]) -> Message:
    return tuple.__new__(Message, fields)


def stored(
    message_id: str,
    session_id: str,
    role: str,
    content: str,
    user_id: str | None,
    created_micros: int,
    metadata: dict[str, Any],
) -> Message:
    """Build a message read back from storage, on the fast path.

    Backends call this instead of ``Message(...)``: it skips keyword
    handling and keeps the time as microseconds until it is read.
    """
    return tuple.__new__(
        Message,
        (message_id, session_id, role, content, user_id, created_micros, metadata),
    )


class Prepared(NamedTuple):
    """A checked message with the forms backends store, computed once."""

    message: Message
    content_bytes: bytes
    metadata_json: str
    size: int


def to_micros(when: datetime) -> int:
    """Return microseconds since the Unix epoch for an aware datetime."""
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """Return the aware UTC datetime for microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=micros)


def check_id(value: object, what: str) -> str:
    """Return ``value`` if it is a usable session or user id."""
    if not isinstance(value, str):
        raise InvalidMessage(
            f"The {what} must be a string, not {type(value).__name__}."
        )
    if not value:
        raise InvalidMessage(f"The {what} must not be empty.")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise InvalidMessage(
            f"The {what} is not valid Unicode (it holds a lone surrogate)."
        ) from None
    if size > MAX_ID_BYTES:
        raise InvalidMessage(
            f"The {what} is {size} bytes long; the limit is {MAX_ID_BYTES}."
        )
    return value


def check_time(value: object, what: str) -> datetime:
    """Return ``value`` converted to UTC if it is an aware datetime."""
    if not isinstance(value, datetime):
        raise InvalidMessage(f"{what} must be a datetime, not {type(value).__name__}.")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidMessage(
            f"{what} is a naive datetime; pass a timezone-aware one, "
            "for example datetime.now(UTC)."
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidMessage(
            f"{what} {value.isoformat()} falls outside the years 1 to 9999 "
            "once converted to UTC."
        ) from None


def prepare(message: Message, max_bytes: int, now: datetime) -> Prepared:
    """Check a message and fill in ``created_at``.

    Raises :class:`InvalidMessage` naming the first problem found.
    """
    if not isinstance(message, Message):
        raise InvalidMessage(
            f"Expected a chatmem.Message, got {type(message).__name__}."
        )
    message_id, session_id, role, content, user_id, _, metadata = message
    created_at = message.created_at  # a stored message may hold micros

    # Plain ASCII ids of a sane length pass without the full check: they
    # cannot hold a lone surrogate, and their length is their byte size.
    # This is every id most applications make, and every add pays it.
    if (
        type(session_id) is str
        and 0 < len(session_id) <= MAX_ID_BYTES
        and session_id.isascii()
    ):
        size = len(session_id)
    else:
        size = len(check_id(session_id, "session id").encode())
    if user_id is not None:
        if (
            type(user_id) is str
            and 0 < len(user_id) <= MAX_ID_BYTES
            and user_id.isascii()
        ):
            size += len(user_id)
        else:
            size += len(check_id(user_id, "user id").encode())
    if role not in ROLE_CODES:
        raise InvalidMessage(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
    if not isinstance(content, str):
        raise InvalidMessage(f"Content must be a string, not {type(content).__name__}.")
    try:
        content_bytes = content.encode()
    except UnicodeEncodeError:
        raise InvalidMessage(
            "Content is not valid Unicode (it holds a lone surrogate)."
        ) from None
    if len(content_bytes) > max_bytes:
        raise InvalidMessage(
            f"Content is {len(content_bytes)} bytes; this store's "
            f"max_message_bytes is {max_bytes}. Split the message or open "
            "the store with a larger max_message_bytes."
        )

    if type(metadata) is dict and not metadata:
        metadata_json = ""
    else:
        metadata_json = dump_metadata(metadata, max_bytes)
        size += len(metadata_json.encode())
    created = now if created_at is None else check_time(created_at, "created_at")
    if created is not created_at:
        fields = (message_id, session_id, role, content, user_id, created, metadata)
        message = tuple.__new__(Message, fields)

    # tuple.__new__ skips the named tuple's Python-level constructor, a
    # third of a microsecond on every message written.
    return tuple.__new__(
        Prepared, (message, content_bytes, metadata_json, size + len(content_bytes))
    )


def dump_metadata(metadata: object, max_bytes: int) -> str:
    """Return metadata as compact JSON, refusing what would not round-trip."""
    if not isinstance(metadata, dict):
        raise InvalidMessage(f"Metadata must be a dict, not {type(metadata).__name__}.")
    if not metadata:
        return ""
    _check_json(metadata, 0)
    text = _COMPACT.encode(metadata)
    if len(text.encode()) > max_bytes:
        raise InvalidMessage(
            f"Metadata encodes to more than max_message_bytes ({max_bytes})."
        )
    return text


def load_metadata(text: str | bytes | None) -> dict[str, Any]:
    """Invert :func:`dump_metadata`."""
    if not text:
        return {}
    value: dict[str, Any] = json.loads(text)
    return value


def _check_json(value: object, depth: int) -> None:
    # json.dumps alone would turn tuples into lists and int keys into
    # strings, so the value read back would differ from the one stored.
    if depth > MAX_METADATA_DEPTH:
        raise InvalidMessage(
            f"Metadata is nested deeper than {MAX_METADATA_DEPTH} levels."
        )
    if value is None or isinstance(value, (str, bool, int)):
        if isinstance(value, str):
            _check_text(value)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMessage("Metadata holds a NaN or infinite number.")
        return
    if isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidMessage(
                    f"Metadata keys must be strings, not {type(key).__name__}."
                )
            _check_text(key)
            _check_json(item, depth + 1)
        return
    raise InvalidMessage(
        f"Metadata holds a {type(value).__name__}; only JSON values "
        "(dict, list, str, int, float, bool, None) can be stored."
    )


def _check_text(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidMessage(
            "Metadata text is not valid Unicode (it holds a lone surrogate)."
        ) from None


def encode(message: Message, namespace: str = "") -> bytes:
    """Return the compact JSON form of a stored message.

    The form carries the namespace so that a shared log can hold several
    tenants; :func:`decode` returns it beside the message.
    """
    created = message.created_at
    record: dict[str, Any] = {
        "n": namespace,
        "i": message.id,
        "s": message.session_id,
        "r": message.role,
        "c": message.content,
        "t": to_micros(created) if created else None,
    }
    if message.user_id is not None:
        record["u"] = message.user_id
    if message.metadata:
        record["m"] = message.metadata
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def decode(data: bytes | str) -> tuple[str, Message]:
    """Return ``(namespace, message)`` from :func:`encode` output."""
    record = json.loads(data)
    micros = record.get("t")
    message = Message(
        id=record.get("i"),
        session_id=record["s"],
        role=record["r"],
        content=record["c"],
        user_id=record.get("u"),
        created_at=from_micros(micros) if micros is not None else None,
        metadata=record.get("m") or {},
    )
    return record.get("n", ""), message
