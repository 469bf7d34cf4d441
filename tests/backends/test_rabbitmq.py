"""RabbitMQMemory against a real RabbitMQ node with the stream plugin.

The conformance suite covers the chat API; these tests cover what is the
stream's own: rebuilding the index from the stream, stores that see each
other's writes, a broker that stops or dies mid-run, deduplicated resends,
the stream's arguments on the broker, URLs and credentials.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import chatmem
from chatmem import BackendUnavailable, InvalidMessage, Message
from chatmem.backends.log import Outgoing
from chatmem.backends.rabbitmq import RabbitMQMemory, parse_url
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(rabbitmq_server: Any) -> Any:
    return rabbitmq_server


@pytest.fixture
def url(server: Any) -> str:
    """The URL of a fresh stream on the test node."""
    return f"{server.url.rstrip('/')}/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def opened() -> Iterator[list[RabbitMQMemory]]:
    stores: list[RabbitMQMemory] = []
    yield stores
    for store in stores:
        store.close()


@pytest.fixture
def store_at(url: str, opened: list[RabbitMQMemory]) -> Callable[..., RabbitMQMemory]:
    def open_store(**options: Any) -> RabbitMQMemory:
        store = RabbitMQMemory.from_url(url, **options)
        opened.append(store)
        return store

    return open_store


def _turns(session: str, count: int, user: str = "u1") -> list[Message]:
    return [
        Message(session_id=session, role="user", content=f"{session}:{i}", user_id=user)
        for i in range(count)
    ]


# -- URLs and credentials ----------------------------------------------------


def test_url_parts_and_defaults() -> None:
    assert parse_url("rabbitmq://bot:p%40ss%3Aw0rd@mq.internal/chat") == {
        "host": "mq.internal",
        "port": 5552,
        "vhost": "/",
        "username": "bot",
        "password": "p@ss:w0rd",
        "stream": "chat",
    }
    parts = parse_url("rabbitmq://mq:5553/tenant%2Fa/chat%20log")
    assert (parts["port"], parts["vhost"], parts["stream"]) == (
        5553,
        "tenant/a",
        "chat log",
    )
    assert (parts["username"], parts["password"]) == ("guest", "guest")
    assert parse_url("rabbitmq://u:p@[::1]/%2F/s")["host"] == "::1"
    assert parse_url("rabbitmq://u:p@[::1]/%2F/s")["vhost"] == "/"


@pytest.mark.parametrize(
    "bad",
    [
        "amqp://u:hunter2@mq/chat",
        "rabbitmq://u:hunter2@mq/",
        "rabbitmq://u:hunter2@mq",
        "rabbitmq://u:hunter2@mq/a/b/chat",
        "rabbitmq://u:hunter2@mq:notaport/chat",
        "rabbitmq://u:hunter2@mq:70000/chat",
        "rabbitmq://u:hunter2@mq/chat?timeout=3",
        "rabbitmq://u:hunter2@mq/amq.chat",
        "rabbitmq://u:hunter2@/chat",
        "rabbitmq://u:hunter2@mq//chat",
    ],
)
def test_bad_url_is_refused_without_the_password(bad: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        RabbitMQMemory.from_url(bad)
    assert "hunter2" not in f"{caught.value} {caught.value!r}"


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0}, {"timeout": "5"}, {"segment_bytes": 0}, {"port": 0}],
)
def test_bad_options_are_refused(url: str, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidMessage):
        chatmem.open(url, **options)


def test_password_never_shows(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    user, password = f"bot-{uuid.uuid4().hex[:6]}", "correct horse battery"
    server.rabbitmqctl("add_user", user, password)
    server.rabbitmqctl("set_permissions", user, ".*", ".*", ".*")
    base = f"rabbitmq://{user}:{{}}@{server.host}:{server.port}/secret-test"
    with chatmem.open(base.format("correct%20horse%20battery")) as memory:
        stored = memory.add("s1", "user", "hello")
        assert memory.get(stored.id or "") == stored
        assert "horse" not in repr(memory)
        assert user in repr(memory)

    with pytest.raises(BackendUnavailable) as caught:
        chatmem.open(base.format("wrong%20horse%20battery"), timeout=3)
    text = f"{caught.value} {caught.value!r} {caught.value.__cause__!r}"
    assert "horse" not in text
    assert "credentials" in str(caught.value)
    # rstream logs every frame at DEBUG, the SASL one included.
    assert "Sending frame" in caplog.text
    assert "horse" not in caplog.text


def test_closed_port_fails_fast_with_backend_unavailable(server: Any) -> None:
    from tests.servers import free_ports

    began = time.monotonic()
    with pytest.raises(BackendUnavailable, match="stream port"):
        chatmem.open(f"rabbitmq://127.0.0.1:{free_ports()[0]}/chat", timeout=2)
    assert time.monotonic() - began < 3


# -- the stream on the broker ------------------------------------------------


def test_stream_arguments_are_set_on_the_broker(server: Any, url: str) -> None:
    stream = parse_url(url)["stream"]
    with chatmem.open(
        url,
        retention=timedelta(hours=2),
        capacity_bytes=50_000_000,
        segment_bytes=2_000_000,
    ):
        listed = server.rabbitmqctl("list_queues", "name", "arguments", "--quiet")
    line = next(row for row in listed.splitlines() if row.startswith(stream + "\t"))
    assert '{"x-queue-type","stream"}' in line
    assert '{"x-max-age","7200s"}' in line
    assert '{"x-max-length-bytes",50000000}' in line
    assert '{"x-stream-max-segment-size-bytes",2000000}' in line


def test_a_resent_publish_is_stored_once(
    store_at: Callable[..., RabbitMQMemory],
) -> None:
    # A resend after a dropped connection reuses the publishing ids; the
    # broker must keep each id once. Resend by hand, as the driver would.
    memory = store_at()
    driver: Any = memory._driver
    first = driver._next_id
    records = [Outgoing(0, f"r{i}", b'{"resent":%d}' % i) for i in range(3)]
    driver.publish(records)
    driver._next_id = first
    driver.publish(records)

    reader = driver.reader({0: 0})
    try:
        seen: list[bytes] = []
        deadline = time.monotonic() + 10
        while sum(b"resent" in v for v in seen) < 3 and time.monotonic() < deadline:
            seen += [r.value or b"" for r in reader.read(0.1)]
        memory.sync()
        seen += [r.value or b"" for r in reader.read(0.2)]
    finally:
        reader.close()
    assert [v for v in seen if b"resent" in v] == [r.value for r in records]


# -- rebuilding and other stores ---------------------------------------------


def _snapshot(memory: Any) -> dict[str, Any]:
    return {
        "s1": [m.to_dict() for m in memory.history("s1")],
        "s2": [m.to_dict() for m in memory.history("s2", last=3)],
        "user": [m.content for m in memory.query(user_id="u2")],
        "sessions": memory.sessions(),
        "count": memory.count(),
    }


CHILD = """
import json, sys
import chatmem
with chatmem.open(sys.argv[1]) as memory:
    print(json.dumps({
        "s1": [m.to_dict() for m in memory.history("s1")],
        "s2": [m.to_dict() for m in memory.history("s2", last=3)],
        "user": [m.content for m in memory.query(user_id="u2")],
        "sessions": memory.sessions(),
        "count": memory.count(),
    }, default=str))
"""


def test_restart_rebuilds_the_index_and_answers_as_before(
    url: str, store_at: Callable[..., RabbitMQMemory], tmp_path: Path
) -> None:
    first = store_at(index_dir=tmp_path)
    first.add_messages(_turns("s1", 6))
    first.add_messages(_turns("s2", 5, user="u2"))
    gone = first.add("s1", "assistant", "to delete", metadata={"k": [1, 2]})
    first.add("s3", "user", "whole session goes", user_id="u2")
    first.delete(gone.id or "")
    first.delete_session("s3")
    before = _snapshot(first)
    first.close()

    # From the stream alone, in memory.
    rebuilt = store_at()
    assert _snapshot(rebuilt) == before
    assert rebuilt.replayed_records > 0

    # From the index file: only what came after its checkpoint.
    again = store_at(index_dir=tmp_path)
    assert _snapshot(again) == before
    assert again.replayed_records < rebuilt.replayed_records

    # And in a process of its own.
    child = subprocess.run(
        [sys.executable, "-c", CHILD, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    assert json.loads(child.stdout) == json.loads(json.dumps(before, default=str))


def test_two_stores_see_each_others_writes_after_sync(
    store_at: Callable[..., RabbitMQMemory],
) -> None:
    a, b = store_at(), store_at()
    written = a.add("shared", "user", "from a", user_id="u")
    b.sync()
    assert b.get(written.id or "") == written
    batch = b.add_messages(_turns("shared", 3, user="u"))
    a.sync()
    assert [m.id for m in a.history("shared")] == [written.id] + [m.id for m in batch]

    b.delete(written.id or "")
    a.sync()
    with pytest.raises(KeyError):
        a.get(written.id or "")
    assert a.delete_user("u") == 3
    b.sync()
    assert b.count() == 0


# -- a broker that goes away -------------------------------------------------


@pytest.mark.parametrize("halt", ["stop", "kill"])
def test_broker_halted_and_restarted_mid_run(
    server: Any, url: str, store_at: Callable[..., RabbitMQMemory], halt: str
) -> None:
    # The node writes every confirmed record to its segment file before
    # confirming; the page cache keeps it through a killed process.
    memory = store_at(timeout=3)
    acknowledged: list[Message] = []
    failures: list[float] = []
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            began = time.monotonic()
            try:
                acknowledged.append(memory.add("s", "user", f"m{i}"))
            except BackendUnavailable:
                failures.append(time.monotonic() - began)
                # Back off as an application would; a tight retry loop
                # takes the CPU the rebooting node needs.
                stop.wait(0.05)
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(lambda: len(acknowledged) >= 50)
        try:
            getattr(server, halt)()
            wait_for(lambda: len(failures) >= 2)
            # Reads are the index's: they keep answering without the broker.
            assert len(memory.history("s", last=20)) == 20
            with pytest.raises(BackendUnavailable):
                memory.sync(timeout=1)
        finally:
            server.start()
        count = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= count + 50, 60)
    finally:
        stop.set()
        writer.join()

    assert max(failures) < memory.timeout + 1.5
    memory.sync()
    history = memory.history("s")
    contents = [m.content for m in history]
    assert len(contents) == len(set(contents))
    assert {m.id for m in acknowledged} <= {m.id for m in history}
    assert contents == sorted(contents, key=lambda c: int(c[1:]))

    # The stream itself holds every acknowledged message, once.
    with chatmem.open(url) as fresh:
        assert [m.id for m in fresh.history("s")] == [m.id for m in history]


def test_a_deleted_stream_is_made_again_at_a_new_epoch(
    server: Any,
    url: str,
    store_at: Callable[..., RabbitMQMemory],
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = store_at(timeout=5)
    old = [memory.add("s", "user", f"old{i}") for i in range(3)]
    server.rabbitmqctl("delete_queue", parse_url(url)["stream"])

    new = memory.add("s", "user", "new")
    assert "the log was replaced" in caplog.text
    # This index keeps what it held; the new stream holds only what came
    # after, and a store opened now sees only that.
    assert [m.id for m in memory.history("s")] == [m.id for m in [*old, new]]
    assert [m.id for m in store_at().history("s")] == [new.id]
