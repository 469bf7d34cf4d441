"""ArenaMemory: dense in-process storage inside a real byte budget.

Reference card
--------------
URL        ``memory://``; every open is a store of its own.
Options    every option of :func:`chatmem.open`.
Durability none: the store lives and dies with the process. It is the
           documented test double: tests of an application can run on it
           with the same API and errors as the persistent backends.
Ordering   acceptance order; ids are increasing integers, never reused.
Threads    safe: one lock guards the store.
Budget     ``capacity_bytes`` bounds the memory the store really takes:
           record bytes in the arena plus every index, measured with
           ``sys.getsizeof``. A message costs its content and metadata plus
           about 37 bytes (a 25-byte header, three 4-byte index entries)
           and 4 more with a user id. Sessions and users cost their name and
           a small table entry once. Once the store holds messages,
           ``stats().message_overhead`` is what its live messages cost on
           average beyond their content and metadata, table entries shared
           out, so ``max_messages`` predicts for the store's real mix of
           session lengths and user ids; an empty store can only count the
           fixed part.

Layout. Messages are packed records in fixed-size segments (bytearrays)
with an array of record addresses indexed by sequence number; sessions,
users and time order are arrays of sequence numbers. No Python object is
kept per message, which is what makes the store about four times denser
than a list of message objects. A deleted record leaves a hole; when a
write needs room and holes hold enough of it, the store slides the live
records down over them (compaction) before it considers evicting.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import struct
import sys
import threading
from array import array
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from chatmem.base import BaseChatMessageMemory
from chatmem.budget import MemoryStats
from chatmem.errors import CapacityExceeded, MessageNotFound
from chatmem.message import (
    ROLE_CODES,
    ROLES,
    Message,
    Prepared,
    to_micros,
    with_id,
)

__all__ = ["ArenaMemory"]

# seq, session number, user number, created_at (us), flags, content length
HEADER = struct.Struct("<IIIqBI")
# The header without its sequence number, which a reader already knows:
# one int fewer to make per record read.
FIELDS = struct.Struct("<4xIIqBI")
HEADER_SIZE = HEADER.size
META_LENGTH = struct.Struct("<I")
HAS_METADATA = 0x4
ROLE_MASK = 0x3
ROLE_OF_FLAGS = ROLES + ROLES  # indexed by flags, metadata bit or not

# A record larger than a segment is kept as its own bytes object.
LARGE = 0xFFFFFFFF

UNBOUNDED_SEGMENT = 1 << 20


class _Group:
    """The sequence numbers of one session or one user, in order."""

    __slots__ = ("name", "number", "seqs")

    def __init__(self, name: str, number: int) -> None:
        self.name = name
        self.number = number
        self.seqs = array("I")


class ArenaMemory(BaseChatMessageMemory):
    """Chat memory packed into process memory; see the reference card."""

    persistent = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        capacity = self._budget.capacity
        if capacity is None:
            self._segment_size = UNBOUNDED_SEGMENT
            code = "Q"
        else:
            # Small segments keep the unfilled tail of the last one within
            # a few percent of the budget; 64 KiB keeps the count sane.
            self._segment_size = min(4 << 20, max(64 << 10, capacity // 32))
            code = "I" if capacity < 1 << 31 else "Q"
        self._lock = threading.RLock()
        self._segments: list[bytearray] = []
        self._fills: list[int] = []  # bytes written in each segment
        self._large: dict[int, bytes] = {}
        self._addresses = array(code, [0])  # seq -> address + 1; 0 = none
        self._by_time = array("I")
        self._by_session: dict[str, _Group] = {}
        self._by_user: dict[str, _Group] = {}
        self._names: list[str] = [""]  # number -> session or user name
        self._next_seq = 1
        self._oldest = 1
        self._live = 0
        self._live_bytes = 0
        self._dead_bytes = 0
        self._tails = 0  # dead bytes that compaction cannot reclaim
        self._table_bytes = 0
        self._last_created = -(1 << 62)
        self._lru = self.policy == "evict-lru-session"
        index_entry = self._addresses.itemsize + 8
        self.message_overhead = HEADER.size + index_entry

    @classmethod
    def from_url(cls, url: str, **options: Any) -> ArenaMemory:
        """Open a new, empty in-process store."""
        return cls(**options)

    def _describe(self) -> str:
        return f"messages={self._live} namespace={self.namespace!r}"

    # -- memory accounting -----------------------------------------------

    def _used_bytes(self) -> int:
        segments = len(self._segments) - 1
        last = self._fills[-1] if self._fills else 0
        occupied = max(0, segments) * self._segment_size + last
        large = sum(sys.getsizeof(b) for b in self._large.values())
        indexes = (
            sys.getsizeof(self._addresses)
            + sys.getsizeof(self._by_time)
            + sys.getsizeof(self._by_session)
            + sys.getsizeof(self._by_user)
            + sys.getsizeof(self._names)
        )
        return occupied + large + indexes + self._table_bytes

    def stats(self) -> MemoryStats:
        """Return capacity figures, with the overhead the messages really pay.

        See the reference card: past the first message, ``message_overhead``
        is measured, so ``max_messages`` and ``remaining_messages`` count in
        what sessions and users of this store's shape cost.
        """
        found = super().stats()
        with self._lock:
            live = self._live
            if not live:
                return found
            # What is occupied beyond the content and metadata of the live
            # messages: headers, indexes and tables. Holes left by deletes
            # are excluded; compaction gives them back.
            payload = self._live_bytes - HEADER.size * live
            beyond = self._used_bytes() - self._dead_bytes - payload
        measured = max(self.message_overhead, math.ceil(beyond / live))
        return dataclasses.replace(found, message_overhead=measured)

    def _usage(self) -> tuple[int, int, float]:
        with self._lock:
            used = self._used_bytes()
            occupied = self._live_bytes + self._dead_bytes
            fragmentation = self._dead_bytes / occupied if occupied else 0.0
            return used, self._live, fragmentation

    # -- writing ---------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[Any]:
        # The lock itself rather than a generator around it: entering a
        # generator context costs a microsecond, a tenth of an add.
        return self._lock

    def _write(self, prepared: list[Prepared]) -> list[Message]:
        # One message into a store with no budget and no retention has
        # nothing to check or purge first: straight to the arena, a tenth
        # of an add saved.
        if len(prepared) == 1 and self.retention is None and not self._budget.bounded:
            with self._lock:
                found = self._insert_one(prepared[0])
            if found is not None:
                return [found]
        return super()._write(prepared)

    def _insert(self, prepared: Sequence[Prepared]) -> list[Message]:
        if len(prepared) == 1:
            found = self._insert_one(prepared[0])
            if found is not None:
                return [found]
        records = [self._pack(item) for item in prepared]
        stored: list[Message] = []
        try:
            for item, record in zip(prepared, records, strict=True):
                stored.append(self._append(item.message, record))
        except BaseException:
            # Only running out of memory can stop a batch half-way; undo
            # what went in so that the batch is all or nothing.
            for message in stored:
                assert message.id is not None
                self._remove(int(message.id))
            self._drop_empty_groups(prepared)
            raise
        return stored

    def _drop_empty_groups(self, prepared: Sequence[Prepared]) -> None:
        # The message that failed may have made its session or user group
        # before its record found room; an empty group would still be
        # listed by sessions().
        for item in prepared:
            message = item.message
            for table, name in (
                (self._by_session, message.session_id),
                (self._by_user, message.user_id),
            ):
                group = None if name is None else table.get(name)
                if name is not None and group is not None and not group.seqs:
                    del table[name]
                    self._table_bytes -= (
                        sys.getsizeof(name)
                        + sys.getsizeof(group)
                        + sys.getsizeof(group.seqs)
                    )

    def _insert_one(self, item: Prepared) -> Message | None:
        """Write one message straight into the open segment.

        Return None, having changed nothing, when the record does not fit
        there: a new segment is an allocation that can fail, and the
        general path undoes a write that failed. This is ``_pack`` and
        ``_append`` in one pass, without the record's interim copy.
        """
        content = item.content_bytes
        meta = item.metadata_json.encode() if item.metadata_json else b""
        length = HEADER_SIZE + len(content) + (4 + len(meta) if meta else 0)
        fills, segment_size = self._fills, self._segment_size
        if not fills or fills[-1] + length > segment_size:
            return None

        message = item.message
        _, session_id, role, text, user_id, created_at, metadata = message
        seq = self._next_seq
        # Known groups are found inline; _group makes new ones and keeps
        # the least-recently-used order.
        session = self._by_session.get(session_id)
        if session is None or self._lru:
            session = self._group(self._by_session, session_id)
        user = None
        if user_id is not None:
            user = self._by_user.get(user_id) or self._group(self._by_user, user_id)
        created = to_micros(created_at)
        flags = ROLE_CODES[role] | (HAS_METADATA if meta else 0)
        segment, fill = self._segments[-1], fills[-1]
        HEADER.pack_into(
            segment,
            fill,
            seq,
            session.number,
            user.number if user else 0,
            created,
            flags,
            len(content),
        )
        start = fill + HEADER_SIZE
        if meta:
            META_LENGTH.pack_into(segment, start, len(meta))
            start += 4
            segment[start + len(content) : fill + length] = meta
        segment[start : start + len(content)] = content
        fills[-1] = fill + length
        self._addresses.append((len(fills) - 1) * segment_size + fill + 1)
        self._next_seq = seq + 1

        getsize = sys.getsizeof
        seqs = session.seqs
        grown = -getsize(seqs)
        seqs.append(seq)
        grown += getsize(seqs)
        if user is not None:
            seqs = user.seqs
            grown -= getsize(seqs)
            seqs.append(seq)
            grown += getsize(seqs)
        self._table_bytes += grown
        if created >= self._last_created:
            self._last_created = created
            self._by_time.append(seq)
        else:
            self._index_time(seq, created)
        self._live += 1
        self._live_bytes += length
        fields = (str(seq), session_id, role, text, user_id, created_at, metadata)
        return tuple.__new__(Message, fields)

    def _pack(self, item: Prepared) -> bytearray:
        message = item.message
        assert message.created_at is not None
        flags = ROLE_CODES[message.role]
        meta = item.metadata_json.encode()
        if meta:
            flags |= HAS_METADATA
        header = HEADER.pack(
            0,
            0,
            0,
            to_micros(message.created_at),
            flags,
            len(item.content_bytes),
        )
        if meta:
            parts = (header, META_LENGTH.pack(len(meta)), item.content_bytes, meta)
            return bytearray(b"".join(parts))
        return bytearray(header + item.content_bytes)

    def _append(self, message: Message, record: bytearray) -> Message:
        seq = self._next_seq
        session = self._group(self._by_session, message.session_id)
        user = None
        if message.user_id is not None:
            user = self._group(self._by_user, message.user_id)

        # Stamp the numbers known only now into the packed header.
        user_number = user.number if user else 0
        struct.pack_into("<III", record, 0, seq, session.number, user_number)
        self._addresses.append(self._place(seq, record))
        self._next_seq += 1

        self._add_seq(session, seq)
        if user is not None:
            self._add_seq(user, seq)
        self._index_time(seq, HEADER.unpack_from(record)[3])
        self._live += 1
        self._live_bytes += len(record)
        return with_id(message, str(seq))

    def _place(self, seq: int, record: bytearray) -> int:
        size = self._segment_size
        if len(record) > size:
            self._large[seq] = bytes(record)
            return LARGE
        fill = self._fills[-1] if self._fills else size
        if fill + len(record) > size:
            if self._fills:
                # The unfilled tail of the segment counts as dead space.
                self._dead_bytes += size - fill
            self._segments.append(bytearray(size))
            self._fills.append(0)
            fill = 0
        segment = len(self._segments) - 1
        self._segments[segment][fill : fill + len(record)] = record
        self._fills[-1] = fill + len(record)
        return segment * size + fill + 1

    def _group(self, table: dict[str, _Group], name: str) -> _Group:
        group = table.get(name)
        if group is None:
            group = _Group(name, len(self._names))
            self._names.append(name)
            table[name] = group
            self._table_bytes += (
                sys.getsizeof(name) + sys.getsizeof(group) + sys.getsizeof(group.seqs)
            )
        elif table is self._by_session and self.policy == "evict-lru-session":
            # Re-inserting moves the session to the end: dict order is the
            # least-recently-used order.
            del table[name]
            table[name] = group
        return group

    def _add_seq(self, group: _Group, seq: int) -> None:
        before = sys.getsizeof(group.seqs)
        group.seqs.append(seq)
        self._table_bytes += sys.getsizeof(group.seqs) - before

    def _index_time(self, seq: int, created: int) -> None:
        if created >= self._last_created:
            self._last_created = created
            self._by_time.append(seq)
            return
        position = bisect.bisect_right(
            self._by_time, (created, seq), key=self._time_key
        )
        self._by_time.insert(position, seq)

    def _time_key(self, seq: int) -> tuple[int, int]:
        return self._created(seq), seq

    # -- records ---------------------------------------------------------

    def _record(self, seq: int) -> tuple[bytes | bytearray, int]:
        address = self._addresses[seq]
        if address == LARGE:
            return self._large[seq], 0
        address -= 1
        size = self._segment_size
        return self._segments[address // size], address % size

    def _created(self, seq: int) -> int:
        buffer, offset = self._record(seq)
        created: int = HEADER.unpack_from(buffer, offset)[3]
        return created

    def _length(self, buffer: bytes | bytearray, offset: int) -> int:
        header = HEADER.unpack_from(buffer, offset)
        length: int = HEADER.size + header[5]
        if header[4] & HAS_METADATA:
            length += 4 + META_LENGTH.unpack_from(buffer, offset + HEADER.size)[0]
        return length

    def _message(self, seq: int) -> Message:
        return self._messages((seq,))[0]

    def _messages(self, seqs: Iterable[int]) -> list[Message]:
        # One loop with everything in locals: this is the whole cost of
        # history(last=20), so no call per record but the unpacking.
        unpack, header_size = FIELDS.unpack_from, HEADER.size
        addresses, segments, size = self._addresses, self._segments, self._segment_size
        names, make, roles, loads = (
            self._names,
            tuple.__new__,
            ROLE_OF_FLAGS,
            json.loads,
        )
        found: list[Message] = []
        append = found.append
        for seq in seqs:
            address = addresses[seq]
            if address == LARGE:
                buffer: bytes | bytearray = self._large[seq]
                offset = 0
            else:
                index, offset = divmod(address - 1, size)
                buffer = segments[index]
            session, user, created, flags, length = unpack(buffer, offset)
            start = offset + header_size
            if flags & HAS_METADATA:
                meta_length = META_LENGTH.unpack_from(buffer, start)[0]
                start += 4
                end = start + length
                metadata = loads(buffer[end : end + meta_length])
            else:
                metadata = {}
            # bytearray.decode is about twice as fast as str(slice, "utf-8").
            append(
                make(
                    Message,
                    (
                        str(seq),
                        names[session],
                        roles[flags],
                        buffer[start : start + length].decode(),
                        names[user] if user else None,
                        created,
                        metadata,
                    ),
                )
            )
        return found

    def _live_seq(self, message_id: str) -> int | None:
        # Only the id's own spelling finds it: "01" or "٣" name no message.
        if not message_id.isdigit() or not message_id.isascii() or message_id[0] == "0":
            return None
        seq = int(message_id)
        if seq >= self._next_seq or not self._addresses[seq]:
            return None
        return seq

    # -- deleting and making room ----------------------------------------

    def _remove(self, seq: int) -> None:
        buffer, offset = self._record(seq)
        _, session, user, created, _, _ = HEADER.unpack_from(buffer, offset)
        length = self._length(buffer, offset)

        self._drop_seq(self._by_session, self._names[session], seq)
        if user:
            self._drop_seq(self._by_user, self._names[user], seq)
        position = bisect.bisect_left(self._by_time, (created, seq), key=self._time_key)
        del self._by_time[position]

        if self._addresses[seq] == LARGE:
            del self._large[seq]
        else:
            struct.pack_into("<I", buffer, offset, 0)
            self._dead_bytes += length
        self._addresses[seq] = 0
        self._live -= 1
        self._live_bytes -= length

    def _drop_seq(self, table: dict[str, _Group], name: str, seq: int) -> None:
        group = table[name]
        position = bisect.bisect_left(group.seqs, seq)
        before = sys.getsizeof(group.seqs)
        del group.seqs[position]
        self._table_bytes += sys.getsizeof(group.seqs) - before
        if not group.seqs:
            del table[name]
            self._table_bytes -= (
                sys.getsizeof(name) + sys.getsizeof(group) + sys.getsizeof(group.seqs)
            )

    def _reclaim(self, nbytes: int) -> None:
        # Segment tails survive compaction; compacting again for them alone
        # would copy the whole arena on every write of a full store.
        if self._dead_bytes - self._tails >= nbytes:
            self._compact()

    def _evict(self, nbytes: int) -> None:
        target = self._used_bytes() - nbytes
        while self._used_bytes() - self._dead_bytes > target:
            if not self._live:
                raise CapacityExceeded(
                    "The budget is full and the store holds nothing to "
                    "evict; raise capacity_bytes or free allocations."
                )
            if self.policy == "evict-lru-session":
                name = next(iter(self._by_session))
                for seq in list(self._by_session[name].seqs):
                    self._remove(seq)
            else:
                while not self._addresses[self._oldest]:
                    self._oldest += 1
                self._remove(self._oldest)
        self._compact()

    def _compact(self) -> None:
        """Slide live records down over the holes, in place."""
        size = self._segment_size
        out_segment, out_fill = 0, 0
        for segment, end in zip(self._segments, self._fills, strict=True):
            offset = 0
            while offset < end:
                length = self._length(segment, offset)
                seq = struct.unpack_from("<I", segment, offset)[0]
                if seq:
                    if out_fill + length > size:
                        self._fills[out_segment] = out_fill
                        out_segment, out_fill = out_segment + 1, 0
                    target = self._segments[out_segment]
                    target[out_fill : out_fill + length] = segment[
                        offset : offset + length
                    ]
                    self._addresses[seq] = out_segment * size + out_fill + 1
                    out_fill += length
                offset += length
        kept = out_segment + 1 if out_fill else out_segment
        del self._segments[kept:]
        del self._fills[kept:]
        if out_fill:
            self._fills[-1] = out_fill
        in_segments = sum(self._fills)
        large = sum(len(b) for b in self._large.values())
        tails = sum(size - fill for fill in self._fills[:-1])
        self._dead_bytes = in_segments + tails - (self._live_bytes - large)
        self._tails = tails

    def _purge(self, cutoff: int) -> None:
        while self._by_time and self._created(self._by_time[0]) < cutoff:
            self._remove(self._by_time[0])

    def _delete(self, message_id: str) -> bool:
        with self._lock:
            seq = self._live_seq(message_id)
            if seq is None:
                return False
            self._remove(seq)
            return True

    def _delete_group(self, table: dict[str, _Group], name: str) -> int:
        with self._lock:
            group = table.get(name)
            if group is None:
                return 0
            seqs = list(group.seqs)
            for seq in seqs:
                self._remove(seq)
            return len(seqs)

    def _delete_session(self, session_id: str) -> int:
        return self._delete_group(self._by_session, session_id)

    def _delete_user(self, user_id: str) -> int:
        return self._delete_group(self._by_user, user_id)

    # -- reading ---------------------------------------------------------

    def _get(self, message_id: str) -> Message | None:
        with self._lock:
            seq = self._live_seq(message_id)
            if seq is None:
                return None
            message = self._message(seq)
            self._touch(message.session_id)
            return message

    def _touch(self, session_id: str) -> None:
        if self.policy == "evict-lru-session":
            group = self._by_session.get(session_id)
            if group is not None:
                del self._by_session[session_id]
                self._by_session[session_id] = group

    def _history(
        self,
        session_id: str,
        before: str | None,
        after: str | None,
        count: int | None,
        newest: bool,
    ) -> list[Message]:
        with self._lock:
            group = self._by_session.get(session_id)
            seqs = group.seqs if group is not None else array("I")
            low, high = 0, len(seqs)
            if after is not None:
                low = bisect.bisect_right(seqs, self._cursor(seqs, after))
            if before is not None:
                high = bisect.bisect_left(seqs, self._cursor(seqs, before))
            cutoff = self._cutoff()
            if cutoff is not None:
                while low < high and self._created(seqs[low]) < cutoff:
                    low += 1
            if count is not None and high - low > count:
                if newest:
                    low = high - count
                else:
                    high = low + count
            self._touch(session_id)
            return self._messages(seqs[low:high])

    def _cursor(self, seqs: array[int], message_id: str) -> int:
        seq = self._live_seq(message_id)
        if seq is not None:
            position = bisect.bisect_left(seqs, seq)
            if position < len(seqs) and seqs[position] == seq:
                return seq
        raise MessageNotFound(message_id)

    def _query(
        self,
        session_id: str | None,
        user_id: str | None,
        start: datetime | None,
        end: datetime | None,
        role: str | None,
        limit: int | None,
    ) -> list[Message]:
        low = None if start is None else to_micros(start)
        high = None if end is None else to_micros(end)
        role_code = None if role is None else ROLE_CODES[role]
        with self._lock:
            if session_id is not None or user_id is not None:
                candidates = self._group_candidates(session_id, user_id)
            else:
                candidates = self._time_range(low, high)
            found = []
            for seq in candidates:
                buffer, offset = self._record(seq)
                header = HEADER.unpack_from(buffer, offset)
                created = header[3]
                if low is not None and created < low:
                    continue
                if high is not None and created >= high:
                    continue
                if role_code is not None and header[4] & ROLE_MASK != role_code:
                    continue
                found.append((created, seq))
            found.sort()
            if limit is not None:
                found = found[:limit]
            return self._messages(seq for _, seq in found)

    def _group_candidates(
        self, session_id: str | None, user_id: str | None
    ) -> Sequence[int]:
        groups = []
        if session_id is not None:
            groups.append(self._by_session.get(session_id))
        if user_id is not None:
            groups.append(self._by_user.get(user_id))
        if any(group is None for group in groups):
            return ()
        if len(groups) == 1:
            return groups[0].seqs  # type: ignore[union-attr]
        session, user = groups
        assert session is not None and user is not None
        return [
            seq
            for seq in session.seqs
            if HEADER.unpack_from(*self._record(seq))[2] == user.number
        ]

    def _time_range(self, low: int | None, high: int | None) -> Sequence[int]:
        begin, finish = 0, len(self._by_time)
        if low is not None:
            begin = bisect.bisect_left(self._by_time, (low, 0), key=self._time_key)
        if high is not None:
            finish = bisect.bisect_left(self._by_time, (high, 0), key=self._time_key)
        return self._by_time[begin:finish]

    def _sessions_of(self, user_id: str) -> list[str]:
        group = self._by_user.get(user_id)
        if group is None:
            return []
        numbers = {HEADER.unpack_from(*self._record(seq))[1] for seq in group.seqs}
        return sorted(self._names[n] for n in numbers)

    def _sessions(self, user_id: str | None) -> list[str]:
        with self._lock:
            self._purge_now()
            if user_id is not None:
                return self._sessions_of(user_id)
            return sorted(self._by_session)

    def _count(self, session_id: str | None, user_id: str | None) -> int:
        with self._lock:
            self._purge_now()
            if session_id is None and user_id is None:
                return self._live
            return len(self._group_candidates(session_id, user_id))

    def _purge_now(self) -> None:
        cutoff = self._cutoff()
        if cutoff is not None:
            self._purge(cutoff)
