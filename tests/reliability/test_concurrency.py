"""Concurrency: many writers on shared sessions lose and repeat nothing.

Writer processes (each its own store handle) and threads (one handle
shared) add numbered messages round-robin into the same few sessions.
Afterwards every acknowledged id is there once, ids are unique, and
inside each session every writer's messages keep the order it wrote
them in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chatmem import BaseChatMessageMemory

from .backends import ALL, SHARED, Spec
from .conftest import Counts, Record
from .lines import LineReader

CHILD = str(Path(__file__).with_name("child.py"))
SESSIONS = 4


def deadline_for(counts: Counts) -> float:
    """Seconds the writers may take: 8 x 5,000 adds on Kafka ran past ten
    minutes on two shared cores."""
    return 3600.0 if counts.long else 600.0


def check_writers(
    store: BaseChatMessageMemory, given: dict[int, list[str]], per_writer: int
) -> int:
    """Assert the sessions hold exactly what the writers were given."""
    sync: Callable[[], None] | None = getattr(store, "sync", None)
    if sync is not None:
        sync()
    every_id = [i for ids in given.values() for i in ids]
    assert len(every_id) == len(set(every_id)), "two writes got the same id"

    seen: dict[str, tuple[int, int]] = {}
    for number in range(SESSIONS):
        session = f"shared-{number}"
        last: dict[int, int] = {}
        for message in store.history(session):
            assert message.id not in seen, f"{message.id} is stored twice"
            writer, index = message.metadata["w"], message.metadata["i"]
            seen[str(message.id)] = (writer, index)
            assert index % SESSIONS == number, "a message is in the wrong session"
            assert message.content == f"w{writer} i{index}"
            # Each writer's own order holds inside the session.
            assert index > last.get(writer, -1), f"writer {writer} reordered"
            last[writer] = index

    for writer, ids in given.items():
        assert len(ids) == per_writer
        for index, message_id in enumerate(ids):
            assert seen.get(message_id) == (writer, index), (
                f"writer {writer}'s message {index} ({message_id}) is missing "
                "or not the one it was given"
            )
    assert len(seen) == len(every_id), "the store holds writes nobody made"
    return len(seen)


@pytest.mark.parametrize("backend", SHARED)
def test_processes_writing_shared_sessions(
    backend: str,
    make_spec: Callable[[str], Spec],
    counts: Counts,
    record: Record,
    tmp_path: Path,
) -> None:
    """Writer processes on shared sessions: no loss, no duplicate, order kept."""
    spec = make_spec(backend)
    spec.open().close()  # creates the tables or topic before the race
    procs = []
    for writer in range(counts.processes):
        command = [
            sys.executable,
            CHILD,
            "write",
            spec.to_json(),
            str(writer),
            str(counts.per_process),
            str(SESSIONS),
        ]
        with open(tmp_path / f"w{writer}.err", "wb") as stderr:
            procs.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                )
            )

    readers = [LineReader(proc) for proc in procs]
    deadline = time.monotonic() + deadline_for(counts)
    given: dict[int, list[str]] = {}
    try:
        for reader in readers:
            assert reader.readline(deadline) == "ready"
        # Every writer has its store open: start them together.
        began = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        for writer, reader in enumerate(readers):
            line = reader.readline(deadline)
            if line is None:
                err = (tmp_path / f"w{writer}.err").read_text()
                pytest.fail(f"writer {writer} failed:\n{err[-2000:]}")
            given[writer] = json.loads(line)
        took = time.monotonic() - began
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()

    store = spec.open()
    try:
        total = check_writers(store, given, counts.per_process)
    finally:
        store.close()

    record.tried(
        f"{counts.processes} processes x {counts.per_process:,} adds, each "
        f"with its own handle, round-robin into {SESSIONS} shared sessions, "
        f"started together ({total:,} messages in {took:.1f} s)"
    )
    record.held(
        "every acknowledged id was stored once and ids were unique; each "
        "session held exactly its messages, and every writer's messages "
        "kept its own order in every session"
    )


@pytest.mark.parametrize("backend", ALL)
def test_threads_sharing_one_handle(
    backend: str,
    make_spec: Callable[[str], Spec],
    counts: Counts,
    record: Record,
) -> None:
    """Threads sharing one handle: no loss, no duplicate, order kept."""
    spec = make_spec(backend)
    store = spec.open()
    given: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(counts.threads)

    def write(writer: int) -> None:
        ids = []
        try:
            start.wait()
            for index in range(counts.per_thread):
                message = store.add(
                    f"shared-{index % SESSIONS}",
                    "user",
                    f"w{writer} i{index}",
                    metadata={"w": writer, "i": index},
                )
                ids.append(str(message.id))
        except BaseException as exc:
            errors.append(exc)
        given[writer] = ids

    threads = [
        threading.Thread(target=write, args=(writer,))
        for writer in range(counts.threads)
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline_for(counts))
    took = time.monotonic() - began
    try:
        assert not any(thread.is_alive() for thread in threads), "a writer hung"
        assert not errors, errors
        total = check_writers(store, given, counts.per_thread)
        if spec.backend != "memory":
            again = spec.open()
            try:
                check_writers(again, given, counts.per_thread)
            finally:
                again.close()
    finally:
        store.close()

    record.tried(
        f"{counts.threads} threads x {counts.per_thread:,} adds through one "
        f"handle into {SESSIONS} shared sessions ({total:,} messages in "
        f"{took:.1f} s)"
    )
    record.held(
        "no error; every id unique and stored once; every thread's order "
        "kept in every session"
        + ("" if spec.backend == "memory" else "; the same held from a new handle")
    )
