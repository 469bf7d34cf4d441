"""SQLiteMemory: durability, sharing a file, URLs and the file format."""

from __future__ import annotations

import multiprocessing
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import chatmem
from chatmem import BackendUnavailable
from chatmem.backends.sqlite import SQLiteMemory, path_from_url

WRITER = """
import sys
import chatmem
memory = chatmem.open(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    stored = memory.add(f"s{i % 5}", "user", f"message {i}", user_id="u")
    print(stored.id, i, flush=True)
    i += 1
"""


def test_acknowledged_adds_survive_sigkill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, url],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    acknowledged = {}
    for _ in range(300):
        message_id, index = child.stdout.readline().split()
        acknowledged[message_id] = f"message {index}"
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()

    with chatmem.open(url) as memory:
        for message_id, content in acknowledged.items():
            assert memory.get(message_id).content == content
        ids = [m.id for m in memory.query()]
        assert len(ids) == len(set(ids))
        assert len(ids) >= len(acknowledged)


def _write_many(url: str, writer: int, count: int) -> None:
    with chatmem.open(url, timeout=120) as memory:
        for i in range(count):
            memory.add("shared", "user", f"{writer}:{i}")


def test_processes_share_one_file_without_lock_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    chatmem.open(url).close()
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_write_many, args=(url, w, 200)) for w in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]

    with chatmem.open(url) as memory:
        history = memory.history("shared")
    assert len(history) == 800
    for writer in range(4):
        mine = [m.content for m in history if m.content.startswith(f"{writer}:")]
        assert mine == [f"{writer}:{i}" for i in range(200)]


def test_full_durability_is_accepted(tmp_path: Path) -> None:
    with SQLiteMemory(tmp_path / "full.db", durability="full") as memory:
        memory.add("s1", "user", "x")
        level = memory._conn.execute("PRAGMA synchronous").fetchone()[0]
    assert level == 2  # FULL
    with pytest.raises(ValueError, match="durability"):
        SQLiteMemory(tmp_path / "x.db", durability="paranoid")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///chat.db", "chat.db"),
        ("sqlite:///./data/chat.db", "./data/chat.db"),
        ("sqlite:////var/lib/chat.db", "/var/lib/chat.db"),
        ("sqlite://:memory:", ":memory:"),
        ("sqlite:///my%20chats.db", "my chats.db"),
    ],
)
def test_url_forms(url: str, path: str) -> None:
    assert path_from_url(url) == path


def test_url_with_host_is_refused() -> None:
    with pytest.raises(ValueError, match="names a file"):
        path_from_url("sqlite://host/chat.db")


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="does not exist"):
        chatmem.open(f"sqlite:///{tmp_path / 'no' / 'such' / 'chat.db'}")


def test_file_from_a_newer_chatmem_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    SQLiteMemory(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(BackendUnavailable, match="newer chatmem"):
        SQLiteMemory(path)


def test_injection_shaped_ids_are_data(tmp_path: Path) -> None:
    hostile = "s'); DROP TABLE messages; --"
    with SQLiteMemory(tmp_path / "chat.db") as memory:
        memory.add(hostile, "user", "x", user_id="u' OR '1'='1")
        memory.add("other", "user", "y", user_id="u2")
        assert [m.content for m in memory.history(hostile)] == ["x"]
        assert memory.count(user_id="u' OR '1'='1") == 1
        assert memory.sessions() == sorted([hostile, "other"])


def test_budget_accounting_starts_on_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    with SQLiteMemory(path) as unbounded:
        for i in range(10):
            unbounded.add("s1", "user", "x" * 100, user_id=f"u{i}")
        used = unbounded.stats().used_bytes
    with SQLiteMemory(path, capacity_bytes=10_000) as bounded:
        assert bounded.stats().used_bytes == used
        assert bounded.count(session_id="s1") == 10
    with SQLiteMemory(path) as later:
        later.add("s1", "user", "y")
    with SQLiteMemory(path, capacity_bytes=10_000) as bounded:
        assert bounded.count(session_id="s1") == 11
        assert bounded.stats().message_count == 11
