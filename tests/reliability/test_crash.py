"""Crash durability: a writer killed with SIGKILL loses nothing it was told.

A child process writes batches into one session and prints the ids of
every batch the store acknowledged; the test kills it with SIGKILL after
a random number of batches (seeded), so the kill lands at a random point
of the next write, or of the open when that number is zero. Reopened,
the store must hold every acknowledged message, intact and once, and the
batch in flight whole or not at all.
"""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest

import chatmem
from chatmem import BaseChatMessageMemory, InvalidMessage, Message
from chatmem.backends.sqlite import path_from_url

from .backends import PERSISTENT, Spec
from .child import batch_sizes, expected
from .conftest import SEED, Counts, Record
from .lines import LineReader

CHILD = str(Path(__file__).with_name("child.py"))

# The most batches a trial lets the writer acknowledge before the kill.
MOST_BATCHES = 16

# Writers killed side by side on one store, each at its own moment.
WAVE = 6

# How long a trial waits for the writer's next acknowledgement.
TRIAL_DEADLINE = 60.0


class Trial:
    """One writer process and what it acknowledged before it died."""

    def __init__(self, spec: Spec, key: str, seed: int, kill_after: int) -> None:
        self.key = key
        self.sizes = batch_sizes(seed)
        self.acked: dict[int, str] = {}
        self.batches = 0
        self.kill_after = kill_after
        self._spec = spec
        self._seed = seed
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: LineReader | None = None
        self._stderr: Path | None = None

    def start(self, stderr_path: Path) -> None:
        """Start the writer."""
        command = [
            sys.executable,
            CHILD,
            "crash",
            self._spec.to_json(),
            self.key,
            str(self._seed),
        ]
        self._stderr = stderr_path
        with open(stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=stderr
            )
        self._reader = LineReader(self._proc)

    @property
    def fileno(self) -> int:
        assert self._reader is not None
        return self._reader.fileno

    def feed(self) -> bool:
        """Take the writer's new acknowledgements; True once it is due to die."""
        assert self._reader is not None
        for line in self._reader.available():
            self._ack(line)
        return self.batches >= self.kill_after or self._reader.ended

    def kill(self) -> None:
        """Kill the writer with SIGKILL and take what it printed before."""
        assert self._proc is not None and self._reader is not None
        os.kill(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        for line in self._reader.rest(time.monotonic() + 10):
            self._ack(line)
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        if self.batches < self.kill_after:
            assert self._stderr is not None
            pytest.fail(
                f"the writer of {self.key} died by itself after "
                f"{self.batches} batches:\n{self._stderr.read_text()[-2000:]}"
            )

    def _ack(self, line: str) -> None:
        first, *ids = line.split()
        start = int(first)
        assert len(ids) == self.sizes[self.batches], line
        for offset, message_id in enumerate(ids):
            self.acked[start + offset] = message_id
        self.batches += 1

    def check(self, store: BaseChatMessageMemory) -> int:
        """Assert the store holds what this writer was told; return how
        many of its messages it holds."""
        history = store.history(self.key)
        numbers = [m.metadata.get("n") for m in history]
        ids = [m.id for m in history]
        assert len(set(ids)) == len(ids), f"{self.key}: an id repeats"
        # In acceptance order, once each, with no gap: n is 0, 1, 2 ...
        assert numbers == list(range(len(numbers))), f"{self.key}: {numbers}"

        acked = len(self.acked)
        whole = list(accumulate(self.sizes[: self.batches + 1], initial=0))
        # Everything acknowledged, plus the batch in flight or none of it.
        assert len(history) >= acked, f"{self.key}: acknowledged messages lost"
        assert len(history) in whole[-2:], (
            f"{self.key}: {len(history)} messages is not a whole number of "
            f"batches (acknowledged {acked}, batches end at {whole[-2:]})"
        )
        for message in history:
            n = message.metadata["n"]
            assert same_message(message, expected(self.key, n)), message
            if n in self.acked:
                assert message.id == self.acked[n], f"{self.key}: id of {n}"
        for n, message_id in self.acked.items():
            assert store.get(message_id).metadata["n"] == n
        return len(history)


def run_wave(trials: list[Trial], tmp_path: Path) -> None:
    """Run writers side by side on one store and kill each when it is due."""
    for trial in trials:
        trial.start(tmp_path / f"{trial.key}.err")
    deadline = time.monotonic() + TRIAL_DEADLINE
    alive = list(trials)
    try:
        while alive:
            for trial in [t for t in alive if t.feed()]:
                alive.remove(trial)
                trial.kill()
            if not alive:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"writers hung: {[t.key for t in alive]}")
            select.select([t.fileno for t in alive], [], [], left)
    finally:
        for trial in alive:
            trial.kill()


def same_message(stored: Message, wanted: Message) -> bool:
    """Tell whether a stored message holds what was written."""
    return (
        stored.session_id == wanted.session_id
        and stored.role == wanted.role
        and stored.content == wanted.content
        and stored.user_id == wanted.user_id
        and stored.metadata == wanted.metadata
        and stored.created_at is not None
    )


@contextmanager
def reopen(spec: Spec) -> Iterator[BaseChatMessageMemory]:
    """Open the store again, as the application would after a crash."""
    store = spec.open()
    try:
        sync: Callable[[], None] | None = getattr(store, "sync", None)
        if sync is not None:
            sync()
        yield store
    finally:
        store.close()


def check_file(spec: Spec) -> None:
    """Assert an SQLite file is sound without any repair."""
    with sqlite3.connect(path_from_url(spec.url)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


@pytest.mark.parametrize("backend", PERSISTENT)
def test_acknowledged_writes_survive_sigkill(
    backend: str,
    make_spec: Callable[[str], Spec],
    counts: Counts,
    record: Record,
    tmp_path: Path,
) -> None:
    """A writer killed with SIGKILL loses no acknowledged message."""
    spec = make_spec(backend)
    rng = random.Random(SEED ^ zlib.crc32(backend.encode()))
    trials = []
    acknowledged = held = 0
    began = time.monotonic()

    for first in range(0, counts.crash_trials, WAVE):
        wave = []
        for number in range(first, min(first + WAVE, counts.crash_trials)):
            kill_after = rng.randrange(MOST_BATCHES + 1)
            seed = rng.getrandbits(32)
            wave.append(Trial(spec, f"crash-{number}", seed, kill_after))
        run_wave(wave, tmp_path)
        trials += wave
        acknowledged += sum(len(trial.acked) for trial in wave)

        with reopen(spec) as store:
            held += sum(trial.check(store) for trial in wave)
        if backend == "sqlite":
            check_file(spec)

    # Later crashes must not have harmed what earlier writers left.
    with reopen(spec) as store:
        assert sum(trial.check(store) for trial in trials) == held
        assert store.count() == held

    in_flight = held - acknowledged
    record.tried(
        f"{counts.crash_trials} writer processes, {WAVE} at a time on one "
        f"store, each killed with SIGKILL after 0 to {MOST_BATCHES} "
        "acknowledged batches of 1-4 messages (seeded), "
        f"{acknowledged:,} acknowledged messages in all, "
        f"{time.monotonic() - began:.0f} s"
    )
    record.held(
        "after each kill the store reopened without repair"
        + (" (PRAGMA integrity_check ok)" if backend == "sqlite" else "")
        + "; every acknowledged message was there with its id, content, "
        "metadata and user, once, in acceptance order"
    )
    record.held(
        f"the batch in flight was whole or absent: {in_flight} unacknowledged "
        "messages of whole batches were kept, no partial batch anywhere; a "
        "final reopen found every trial's session unchanged"
    )


# -- the in-process arena ----------------------------------------------------


class Interrupted(Exception):
    """The fault the tests inject; a real one would be a MemoryError."""


def _snapshot(store: BaseChatMessageMemory) -> dict[str, Any]:
    return {
        "count": store.count(),
        "sessions": store.sessions(),
        "users": {u: store.count(user_id=u) for u in ("ana", "bo", "new")},
        "query": store.query(),
        "history": {s: store.history(s) for s in ("s1", "s2", "fresh")},
        "messages": store.stats().message_count,
    }


def _batch(size: int) -> list[Message]:
    return [
        Message(
            session_id="fresh" if i % 2 else "s1",
            role="user",
            content=f"batch {i}",
            user_id="new",
            metadata={"i": i},
        )
        for i in range(size)
    ]


@pytest.mark.parametrize("backend", ["memory"])
@pytest.mark.parametrize("fault", [MemoryError, KeyboardInterrupt, Interrupted])
def test_arena_batch_interrupted_midway_leaves_nothing(
    backend: str,
    fault: type[BaseException],
    monkeypatch: pytest.MonkeyPatch,
    record: Record,
) -> None:
    """An exception in the middle of an arena batch leaves no part of it."""
    store = chatmem.open("memory://")
    store.add("s1", "user", "before", user_id="ana")
    store.add("s2", "assistant", "also before", user_id="bo")
    before = _snapshot(store)
    real_place = store._place  # type: ignore[attr-defined]
    size = 6

    for fail_at in range(size):
        calls = 0

        def place(*args: Any, fail_at: int = fail_at) -> Any:
            nonlocal calls
            calls += 1
            if calls > fail_at:
                raise fault("injected in the middle of the batch")
            return real_place(*args)

        monkeypatch.setattr(store, "_place", place)
        with pytest.raises(fault):
            store.add_messages(_batch(size))
        monkeypatch.setattr(store, "_place", real_place)
        assert _snapshot(store) == before, f"fault after {fail_at} messages"

    # The store still works, and ids were not reused.
    stored = store.add_messages(_batch(2))
    assert [m.content for m in store.history("fresh")] == ["batch 1"]
    assert min(int(str(m.id)) for m in stored) > 2

    record.tried(
        f"{fault.__name__} raised while placing message 1 to {size} of a "
        f"{size}-message batch, {size} times"
    )
    record.held(
        "count, sessions, users, history, query and stats were exactly as "
        "before each failed batch; the next batch stored normally"
    )


@pytest.mark.parametrize("backend", ["memory"])
def test_batch_whose_source_fails_midway_stores_nothing(
    backend: str, record: Record
) -> None:
    """A batch whose iterable raises, or holds a bad message, stores nothing."""
    store = chatmem.open("memory://", capacity_bytes=64 << 10)
    store.add("s1", "user", "before", user_id="ana")
    before = _snapshot(store)

    def failing() -> Iterator[Message]:
        yield from _batch(3)
        raise Interrupted("the source broke")

    with pytest.raises(Interrupted):
        store.add_messages(failing())
    bad = [*_batch(3), Message(session_id="s1", role="robot", content="x")]
    with pytest.raises(InvalidMessage):
        store.add_messages(bad)
    huge = (
        _batch(3)
        + [Message(session_id="s1", role="user", content="x" * (63 << 10))] * 2
    )
    with pytest.raises(chatmem.CapacityExceeded):
        store.add_messages(huge)
    assert _snapshot(store) == before

    record.tried(
        "a batch whose generator raised after 3 messages, one with a bad "
        "4th message, one larger than the byte budget"
    )
    record.held("each raised, and the store was exactly as before")
