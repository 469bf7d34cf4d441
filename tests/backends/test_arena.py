"""ArenaMemory: an honest, dense byte budget."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tracemalloc

import pytest

import chatmem
from chatmem import CapacityExceeded
from chatmem.backends.memory import ArenaMemory

MIB = 1 << 20


def _incompressible(size: int) -> str:
    return base64.b64encode(os.urandom(size))[:size].decode()


def _fill(memory: chatmem.BaseChatMessageMemory, size: int) -> int:
    stored = 0
    try:
        while True:
            memory.add(f"s{stored % 100}", "user", _incompressible(size))
            stored += 1
    except CapacityExceeded:
        return stored


@pytest.mark.parametrize(("size", "at_least"), [(1024, 9_800), (100, 70_000)])
def test_dense_within_budget(size: int, at_least: int) -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        memory = chatmem.open("memory://", capacity_bytes=10 * MIB)
        predicted = memory.max_messages(size)
        stored = _fill(memory, size)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    assert stored >= at_least
    assert predicted is not None
    assert abs(predicted - stored) <= 0.05 * stored
    assert grown <= 10 * MIB * 1.10
    assert memory.stats().used_bytes <= 10 * MIB


RSS_PROBE = """
import base64, json, os, sys
import chatmem
from chatmem import CapacityExceeded

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

size = int(sys.argv[1])
texts = [base64.b64encode(os.urandom(size))[:size].decode() for _ in range(64)]
# Warm the interpreter's one-time caches with a throwaway store, so that
# the measurement sees what the store holds.
warm = chatmem.open("memory://", capacity_bytes=1 << 20)
for i in range(200):
    warm.get(warm.add(f"s{i}", "user", texts[i % 64]).id)
warm.close()
del warm
before = rss()
memory = chatmem.open("memory://", capacity_bytes=10 << 20)
stored = 0
try:
    while True:
        # Reusing 64 texts keeps the generator out of the measurement;
        # the arena copies each one, so the bytes held are still distinct.
        memory.add(f"s{stored % 100}", "user", texts[stored % 64])
        stored += 1
except CapacityExceeded:
    pass
print(json.dumps({"stored": stored, "grown": rss() - before}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux")
@pytest.mark.parametrize("size", [1024, 100])
def test_resident_memory_within_budget(size: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["stored"] > 0
    assert result["grown"] <= 10 * MIB * 1.10


def test_released_space_is_reused() -> None:
    memory = chatmem.open("memory://", capacity_bytes=MIB)
    first = _fill(memory, 1000)
    for session in memory.sessions()[::2]:
        memory.delete_session(session)
    assert memory.stats().fragmentation > 0.3
    again = _fill(memory, 1000)
    assert again >= first * 0.45
    assert memory.stats().used_bytes <= MIB
    assert memory.stats().fragmentation < 0.05


def test_compaction_keeps_every_live_message() -> None:
    memory = chatmem.open("memory://", capacity_bytes=2 * MIB, policy="evict-oldest")
    kept = {}
    for i in range(4000):
        stored = memory.add(f"s{i % 7}", "user", f"{i}:" + "x" * (i % 900))
        kept[stored.id] = stored
        if i % 3 == 0:
            memory.delete(stored.id or "")
            del kept[stored.id]
    live = {m.id: m for m in memory.query()}
    assert live
    assert set(live) <= set(kept)
    for message_id, message in live.items():
        assert memory.get(message_id or "") == message == kept[message_id]
    newest = max(int(i or 0) for i in kept)
    assert str(newest) in live


def test_failed_batch_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = ArenaMemory()
    memory.add("s1", "user", "before")
    real_place = ArenaMemory._place
    calls = 0

    def failing_place(self: ArenaMemory, seq: int, record: bytearray) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise MemoryError("simulated")
        return real_place(self, seq, record)

    monkeypatch.setattr(ArenaMemory, "_place", failing_place)
    batch = [
        chatmem.Message(session_id="s1", role="user", content=str(i), user_id="u")
        for i in range(5)
    ]
    with pytest.raises(MemoryError):
        memory.add_messages(batch)
    monkeypatch.undo()
    assert [m.content for m in memory.history("s1")] == ["before"]
    assert memory.count() == 1
    assert memory.count(user_id="u") == 0
    assert memory.query(user_id="u") == []
    assert memory.add("s1", "user", "after").content == "after"


def test_large_message_beyond_segment() -> None:
    memory = chatmem.open("memory://", capacity_bytes=4 * MIB)
    big = _incompressible(900_000)
    stored = memory.add("s1", "user", big, metadata={"k": "v"})
    assert memory.get(stored.id or "").content == big
    memory.delete(stored.id or "")
    assert memory.stats().used_bytes < MIB
