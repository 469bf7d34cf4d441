"""The byte budget: capacity, allocations and eviction policies.

Every store may be given ``capacity_bytes``. The budget counts what the
store holds (``used``) plus what callers reserved with ``allocate``
(``allocated``); a write that would push the sum past the capacity is
handled by the store's policy:

``reject``
    raise :class:`~chatmem.errors.CapacityExceeded`; nothing is written.
``evict-oldest``
    delete the namespace's oldest messages, in acceptance order, until the
    write fits.
``evict-lru-session``
    delete whole sessions of the namespace, least recently used first,
    until the write fits.

Eviction never reaches into another namespace: one tenant's writes do not
delete another tenant's data. When the writer's own namespace holds too
little to free, the write is rejected instead.

Planning follows n = M / s: a budget of M bytes holds M // (s + o) messages
of s content bytes, where o is the store's real per-message overhead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from chatmem.errors import CapacityExceeded, InvalidMessage

__all__ = ["POLICIES", "Allocation", "Budget", "MemoryStats", "TierStats"]

POLICIES: tuple[str, ...] = ("reject", "evict-oldest", "evict-lru-session")


@dataclass(frozen=True, slots=True)
class Allocation:
    """Space reserved in a store's budget by :meth:`BaseMemory.allocate`.

    ``address`` is where the space lies in the store's address range: a
    byte offset into the arena for ``memory://`` stores, a position in the
    budget's reservation range for the others.
    """

    address: int
    size: int


@dataclass(frozen=True, slots=True)
class TierStats:
    """Figures of a hot tier (``chatmem.open(url, cache_bytes=N)``).

    ``used_bytes`` is what the cached messages take of ``capacity_bytes``;
    ``hits`` and ``misses`` count reads the tier answered and reads it
    passed to the backend, and ``evictions`` sessions it dropped for room,
    all since the store was opened.
    """

    capacity_bytes: int
    used_bytes: int
    message_count: int
    session_count: int
    hits: int
    misses: int
    hit_ratio: float
    evictions: int


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """Capacity figures for a whole store, across all namespaces.

    ``fragmentation`` is the share of the space the store occupies that
    holds no live data (0.0 for a dense store). ``message_overhead`` is the
    per-message cost ``o`` in n = M / (s + o).
    """

    capacity_bytes: int | None
    used_bytes: int
    allocated_bytes: int
    free_bytes: int | None
    message_count: int
    fragmentation: float
    message_overhead: int
    #: The hot tier's figures when the store was opened with
    #: ``cache_bytes``, else None.
    hot_tier: TierStats | None = None

    def max_messages(self, size: int) -> int | None:
        """Return n = M / (s + o), or None for an unbounded store."""
        if self.capacity_bytes is None:
            return None
        return self.capacity_bytes // (size + self.message_overhead)

    def remaining_messages(self, size: int) -> int | None:
        """Return n' = what still fits after what is used and allocated."""
        if self.free_bytes is None:
            return None
        return max(0, self.free_bytes) // (size + self.message_overhead)


def check_policy(policy: str) -> str:
    """Return ``policy`` if chatmem knows it."""
    if policy not in POLICIES:
        raise InvalidMessage(
            f"Unknown capacity policy {policy!r}; use one of {', '.join(POLICIES)}."
        )
    return policy


def check_capacity(capacity: object) -> int | None:
    """Return ``capacity`` if it is None or a positive whole number."""
    if capacity is None:
        return None
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise InvalidMessage(
            f"capacity_bytes must be a whole number, not {capacity!r}."
        )
    if capacity <= 0:
        raise InvalidMessage("capacity_bytes must be positive.")
    return capacity


class Budget:
    """Count allocations against a capacity and decide what a write needs.

    The budget does not know where messages live: the store tells it how
    many bytes are used, and it answers how many must be freed. Reservations
    made with :meth:`allocate` are held here, in process.
    """

    def __init__(self, capacity: int | None, policy: str = "reject") -> None:
        self.capacity = check_capacity(capacity)
        self.policy = check_policy(policy)
        self._lock = threading.Lock()
        self._allocations: dict[int, int] = {}
        self._next_address = 0
        self.allocated = 0

    @property
    def bounded(self) -> bool:
        """True when the store has a capacity."""
        return self.capacity is not None

    def shortfall(self, used: int, incoming: int) -> int:
        """Return how many bytes must be freed before ``incoming`` fits.

        Raises :class:`CapacityExceeded` when the write can never fit.
        """
        if self.capacity is None:
            return 0
        room = self.capacity - self.allocated
        if incoming > room:
            raise CapacityExceeded(
                f"The write needs {incoming} bytes but the store's budget "
                f"is {self.capacity} bytes ({self.allocated} allocated); "
                "raise capacity_bytes or split the write."
            )
        return max(0, used + incoming - room)

    def refuse(self, used: int, incoming: int) -> CapacityExceeded:
        """Return the error for a full budget under the reject policy."""
        return CapacityExceeded(
            f"The store's budget of {self.capacity} bytes is full "
            f"({used} used, {self.allocated} allocated, {incoming} "
            "needed) and its policy is 'reject'; delete messages, "
            "raise capacity_bytes, or open it with an evict policy."
        )

    def allocate(self, size: int, used: int) -> Allocation:
        """Reserve ``size`` bytes next to ``used`` bytes of messages."""
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidMessage(f"An allocation size must be positive: {size!r}.")
        with self._lock:
            if self.capacity is not None:
                free = self.capacity - self.allocated - used
                if size > free:
                    raise CapacityExceeded(
                        f"Cannot allocate {size} bytes: {max(0, free)} of "
                        f"the budget's {self.capacity} bytes are free."
                    )
            address = self._next_address
            self._next_address += size
            self._allocations[address] = size
            self.allocated += size
        return Allocation(address, size)

    def release(self, allocation: Allocation) -> None:
        """Return an allocation's space to the budget."""
        with self._lock:
            size = self._allocations.pop(allocation.address, None)
            if size is None or size != allocation.size:
                if size is not None:
                    self._allocations[allocation.address] = size
                raise InvalidMessage(
                    "This allocation is not held by this store; it was "
                    "released already or came from another store."
                )
            self.allocated -= size
