"""KafkaMemory against a real Kafka-protocol broker (Tansu) on loopback.

The conformance suite covers the chat API; these tests cover what is
Kafka's own: an index rebuilt by another process, several stores on one
topic, the partition of a session, the records on the topic, a broker
that goes away and comes back, topic settings, URLs and credentials.

Run as a module (``python -m tests.backends.test_kafka``), this file is
the other process of the rebuild tests: it reads a JSON plan on standard
input, opens the store it names and prints what the store answers.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

# The admin package re-exports ConfigResource and ResourceType without
# marking them public.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)

import chatmem
from chatmem import (
    BackendUnavailable,
    BaseChatMessageMemory,
    InvalidMessage,
    Message,
    MessageNotFound,
)
from chatmem.backends import kafka as kafka_module
from chatmem.backends.kafka import KafkaMemory, parse_url
from tests.servers import KafkaServer, free_ports
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


# -- fixtures and helpers ----------------------------------------------------


@pytest.fixture
def server(kafka_server: KafkaServer) -> KafkaServer:
    return kafka_server


@pytest.fixture
def topic() -> str:
    return f"kafka-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(server: KafkaServer, topic: str) -> str:
    """The URL of a topic no other test uses."""
    return f"{server.url}{topic}"


@pytest.fixture
def opened() -> Iterator[list[BaseChatMessageMemory]]:
    stores: list[BaseChatMessageMemory] = []
    yield stores
    for store in stores:
        store.close()


@pytest.fixture
def store_at(
    url: str, opened: list[BaseChatMessageMemory]
) -> Callable[..., KafkaMemory]:
    def open_store(**options: Any) -> KafkaMemory:
        store = KafkaMemory.from_url(url, **options)
        opened.append(store)
        return store

    return open_store


class Raw(NamedTuple):
    """A record as a plain confluent-kafka consumer reads it."""

    partition: int
    offset: int
    key: str | None
    value: dict[str, Any] | None


def read_topic(bootstrap: str, topic: str, seconds: float = 10.0) -> list[Raw]:
    """Read every record of a topic with a raw consumer, to the end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "chatmem-test-raw",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=seconds)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        waiting = set(partitions)
        found: list[Raw] = []
        deadline = time.monotonic() + seconds
        while waiting:
            assert time.monotonic() < deadline, "the raw read did not reach the end"
            for message in consumer.consume(500, 0.2):
                error = message.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error.str()
                    waiting.discard(message.partition())
                    continue
                key, value = message.key(), message.value()
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None
                found.append(
                    Raw(
                        partition,
                        offset,
                        None if key is None else key.decode(),
                        None if value is None else json.loads(value),
                    )
                )
        return found
    finally:
        consumer.close()


def topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    described = admin.describe_configs([resource])[resource].result(timeout=10)
    return {name: entry.value for name, entry in described.items()}


def partition_count(bootstrap: str, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def sync_when_back(store: KafkaMemory, seconds: float = 20.0) -> None:
    """Call sync() until the broker answers again, or fail."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            store.sync()
            return
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def contents(store: BaseChatMessageMemory, session_id: str) -> list[str]:
    return [m.content for m in store.history(session_id)]


# -- a workload and what a store answers about it ----------------------------


def fill(store: BaseChatMessageMemory) -> dict[str, list[str]]:
    """Write sessions, users, batches, ties and deletions; return the plan."""
    sessions = [f"s-{n}" for n in range(5)]
    users = ["u-0", "u-1", "u-2"]
    ids: list[str] = []
    for n in range(24):
        session = sessions[n % 5]
        stored = store.add(
            session,
            ("user", "assistant")[n % 2],
            f"turn {n} — ünïcode ✓",
            user_id=users[n % 3],
            # Pairs of messages share a time: ties must keep their order.
            created_at=T0 + timedelta(seconds=n // 2),
        )
        ids.append(stored.id or "")
    call = {"id": "call_1", "type": "function", "function": {"name": "f"}}
    batch = store.add_messages(
        [
            Message(
                session_id="s-1",
                role="assistant",
                content="",
                user_id="u-1",
                metadata={"tool_calls": [call]},
                created_at=T0 + timedelta(minutes=5),
            ),
            Message(
                session_id="s-1",
                role="tool",
                content='{"ok": true}',
                user_id="u-1",
                metadata={"tool_call_id": "call_1", "name": "f"},
                created_at=T0 + timedelta(minutes=5),
            ),
            Message(session_id="s-9", role="user", content="batch", user_id="u-2"),
        ]
    )
    ids += [m.id or "" for m in batch]

    store.delete(ids[3])
    store.delete_session("s-2")
    store.delete_user("u-2")
    # Written after the tombstones: they must not remove these.
    for n in range(3):
        again = store.add("s-2", "user", f"after {n}", user_id="u-2")
        ids.append(again.id or "")
    return {"ids": ids, "sessions": [*sessions, "s-9"], "users": users}


def dump(message: Message) -> list[Any]:
    assert message.created_at is not None
    return [
        message.id,
        message.session_id,
        message.role,
        message.content,
        message.user_id,
        message.metadata,
        message.created_at.isoformat(),
    ]


def snapshot(store: BaseChatMessageMemory, plan: dict[str, list[str]]) -> Any:
    """Return every answer the store gives about the plan, as JSON data."""
    got: dict[str, Any] = {}
    for message_id in plan["ids"]:
        try:
            got[message_id] = dump(store.get(message_id))
        except MessageNotFound:
            got[message_id] = None
    history = {s: [dump(m) for m in store.history(s)] for s in plan["sessions"]}
    pages = {}
    for session, found in history.items():
        if found:
            page = store.history(session, limit=2, after=found[0][0])
            pages[session] = [m.id for m in page]
    answers = {
        "get": got,
        "history": history,
        "last3": {
            s: [m.id for m in store.history(s, last=3)] for s in plan["sessions"]
        },
        "pages": pages,
        "sessions": store.sessions(),
        "sessions_by_user": {u: store.sessions(user_id=u) for u in plan["users"]},
        "count": store.count(),
        "count_by_session": {s: store.count(session_id=s) for s in plan["sessions"]},
        "count_by_user": {u: store.count(user_id=u) for u in plan["users"]},
        "query_by_user": {
            u: [dump(m) for m in store.query(user_id=u)] for u in plan["users"]
        },
        "query_window": [
            dump(m)
            for m in store.query(
                start=T0 + timedelta(seconds=2), end=T0 + timedelta(seconds=9)
            )
        ],
        "query_role": [m.id for m in store.query(role="assistant", limit=7)],
    }
    return json.loads(json.dumps(answers))


def run_reader(
    url: str, plan: dict[str, list[str]], index_dir: Path | None = None
) -> dict[str, Any]:
    """Open the store in a new Python process; return what it answered."""
    request = {
        "url": url,
        "plan": plan,
        "index_dir": None if index_dir is None else str(index_dir),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.backends.test_kafka"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def reader_main() -> None:
    """The other process: open, answer the plan, report the replay."""
    request = json.load(sys.stdin)
    with chatmem.open(request["url"], index_dir=request["index_dir"]) as store:
        assert isinstance(store, KafkaMemory)
        answers = snapshot(store, request["plan"])
        replayed = store.replayed_records
    json.dump({"answers": answers, "replayed": replayed}, sys.stdout)


def checkpoints(index_dir: Path) -> dict[int, int]:
    """Read the per-partition checkpoints from an index folder's file."""
    (path,) = index_dir.glob("*.sqlite")
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT part, next FROM checkpoints").fetchall()
    return {int(part): int(following) for part, following in rows}


def ends(records: list[Raw], partitions: int) -> dict[int, int]:
    """Return, per partition, the offset after its last record."""
    found = dict.fromkeys(range(partitions), 0)
    for record in records:
        found[record.partition] = max(found[record.partition], record.offset + 1)
    return found


# -- another process rebuilds the index ---------------------------------------


def test_a_new_process_rebuilds_the_index_and_answers_as_the_writer(
    server: KafkaServer, topic: str, url: str, store_at: Callable[..., KafkaMemory]
) -> None:
    writer = store_at()
    plan = fill(writer)
    expected = snapshot(writer, plan)
    # 27 written, 1 + 5 + 7 deleted, 3 written after the tombstones.
    assert expected["count"] == 17

    answer = run_reader(url, plan)

    assert answer["answers"] == expected
    assert answer["replayed"] == len(read_topic(server.bootstrap_servers, topic))


def test_an_index_dir_restart_replays_only_the_tail(
    server: KafkaServer,
    topic: str,
    url: str,
    store_at: Callable[..., KafkaMemory],
    tmp_path: Path,
) -> None:
    writer = store_at()
    plan = fill(writer)
    partitions = partition_count(server.bootstrap_servers, topic)
    first = run_reader(url, plan, tmp_path)
    records = read_topic(server.bootstrap_servers, topic)
    assert first["replayed"] == len(records)
    assert checkpoints(tmp_path) == ends(records, partitions)

    # Three messages and one deletion: four records past the checkpoints.
    for n in range(3):
        plan["ids"].append(writer.add("s-4", "user", f"later {n}").id or "")
    writer.delete(plan["ids"][0])

    second = run_reader(url, plan, tmp_path)
    assert second["replayed"] == 4
    assert second["answers"] == snapshot(writer, plan)
    records = read_topic(server.bootstrap_servers, topic)
    assert checkpoints(tmp_path) == ends(records, partitions)

    assert run_reader(url, plan, tmp_path)["replayed"] == 0


# -- several stores on one topic ----------------------------------------------


def test_two_stores_see_each_others_writes_after_sync(
    store_at: Callable[..., KafkaMemory],
) -> None:
    a, b = store_at(), store_at()
    written = [a.add("s1", "user", f"a{n}", user_id="u1") for n in range(3)]
    b.sync()
    assert b.history("s1") == written

    written.append(b.add("s1", "assistant", "b0"))
    batch = b.add_messages(
        [Message(session_id="s2", role="user", content=f"b{n}") for n in range(4)]
    )
    a.sync()
    assert a.history("s1") == written
    assert a.history("s2") == batch
    assert a.sessions() == b.sessions() == ["s1", "s2"]
    assert a.query(user_id="u1") == written[:3]


def test_the_tail_applies_other_stores_writes_without_sync(
    store_at: Callable[..., KafkaMemory],
) -> None:
    a, b = store_at(), store_at()
    stored = a.add("s1", "user", "hello")
    wait_for(lambda: b.count() == 1)
    assert b.get(stored.id or "") == stored


def test_deletes_written_by_one_store_are_applied_by_the_other(
    store_at: Callable[..., KafkaMemory],
) -> None:
    a, b = store_at(), store_at()
    s1 = [a.add("s1", "user", f"s1-{n}", user_id="u1") for n in range(3)]
    a.add_messages(
        [Message(session_id="s2", role="user", content="s2", user_id="u2")] * 2
    )
    a.add("s3", "user", "s3", user_id="u1")
    b.sync()

    b.delete(s1[0].id or "")
    a.sync()
    with pytest.raises(MessageNotFound):
        a.get(s1[0].id or "")
    assert a.history("s1") == s1[1:]

    assert b.delete_session("s2") == 2
    a.sync()
    assert a.history("s2") == []
    later = b.add("s2", "user", "after the tombstone")

    assert b.delete_user("u1") == 3
    a.sync()
    assert a.count(user_id="u1") == 0
    assert a.sessions() == ["s2"]
    assert a.history("s2") == [later]


# -- what lands on the topic ----------------------------------------------------


def test_a_session_lands_in_the_partition_chatmem_computes(
    server: KafkaServer, topic: str, store_at: Callable[..., KafkaMemory]
) -> None:
    store = store_at(namespace="tenant-a", partitions=4)
    sessions = [f"session-{n}" for n in range(24)]
    stored = {}
    for n in range(72):
        message = store.add(sessions[n % 24], "user", f"m{n}")
        stored[message.id] = message
    batch = store.add_messages(
        [Message(session_id="session-x", role="user", content=str(n)) for n in range(5)]
    )
    stored.update((m.id, m) for m in batch)

    # No sync: every acknowledged record is already on the topic.
    records = read_topic(server.bootstrap_servers, topic)
    messages = [r for r in records if r.value is not None and "k" not in r.value]
    assert partition_count(server.bootstrap_servers, topic) == 4
    assert {r.key for r in messages} == set(stored)
    for record in messages:
        assert record.value is not None
        session = stored[record.key].session_id
        # CRC-32 of namespace, NUL, session, modulo the partition count.
        expected = zlib.crc32(f"tenant-a\x00{session}".encode()) % 4
        assert record.partition == expected
        assert record.value["i"] == record.key
    assert len({r.partition for r in messages}) == 4

    # A session's history is its partition's order.
    for session in [*sessions, "session-x"]:
        mine = sorted(
            (r.offset, r.key) for r in messages if stored[r.key].session_id == session
        )
        assert [m.id for m in store.history(session)] == [key for _, key in mine]


def test_the_producer_waits_for_all_replicas_and_is_idempotent(
    monkeypatch: pytest.MonkeyPatch, store_at: Callable[..., KafkaMemory]
) -> None:
    configs: list[dict[str, Any]] = []

    def recording(config: dict[str, Any]) -> Producer:
        configs.append(dict(config))
        return Producer(config)

    monkeypatch.setattr(kafka_module, "Producer", recording)
    store = store_at(timeout=3)
    store.add("s1", "user", "hello")

    (config,) = configs
    assert config["acks"] == "all"
    assert config["enable.idempotence"] is True
    assert config["message.timeout.ms"] == 3000


def test_deletes_write_null_records_keyed_by_message_id(
    server: KafkaServer, topic: str, store_at: Callable[..., KafkaMemory]
) -> None:
    store = store_at()
    one = store.add("s1", "user", "one")
    two = store.add_messages(
        [Message(session_id="s2", role="user", content=str(n)) for n in range(2)]
    )
    store.delete(one.id or "")
    store.delete_session("s2")

    records = read_topic(server.bootstrap_servers, topic)
    erased = {r.key for r in records if r.value is None}
    assert erased == {one.id, *(m.id for m in two)}
    tombstones = [r.value for r in records if r.value and r.value.get("k") == "s"]
    assert [(t["n"], t["s"]) for t in tombstones] == [("", "s2")]


def test_compact_creates_a_compacted_topic_and_retention_sets_retention_ms(
    server: KafkaServer, topic: str, store_at: Callable[..., KafkaMemory]
) -> None:
    store_at(compact=True, retention=timedelta(hours=6))
    configs = topic_configs(server.bootstrap_servers, topic)
    assert configs["cleanup.policy"] == "compact,delete"
    assert configs["retention.ms"] == str(6 * 3600 * 1000)


def test_a_default_topic_is_not_compacted(
    server: KafkaServer, topic: str, store_at: Callable[..., KafkaMemory]
) -> None:
    store_at()
    configs = topic_configs(server.bootstrap_servers, topic)
    # Tansu leaves defaults out; a Kafka broker reports "delete".
    assert configs.get("cleanup.policy", "delete") == "delete"
    assert "retention.ms" not in configs or configs["retention.ms"] != "0"


def test_an_existing_topic_keeps_its_partition_count(
    server: KafkaServer, topic: str, store_at: Callable[..., KafkaMemory]
) -> None:
    first = store_at(partitions=3)
    second = store_at(partitions=5)
    assert partition_count(server.bootstrap_servers, topic) == 3
    written = [second.add(f"s{n}", "user", "hi") for n in range(12)]
    first.sync()
    assert [first.get(m.id or "") for m in written] == written


def test_a_message_too_long_for_a_record_is_refused_and_nothing_sent(
    server: KafkaServer, topic: str, store_at: Callable[..., KafkaMemory]
) -> None:
    store = store_at()
    with pytest.raises(InvalidMessage, match="at most 1000000 bytes"):
        store.add_messages(
            [
                Message(session_id="s1", role="user", content="fits"),
                Message(session_id="s1", role="user", content="x" * 999_990),
            ]
        )
    assert store.count() == 0
    assert read_topic(server.bootstrap_servers, topic) == []


# -- a broker that goes away ----------------------------------------------------


def test_a_stopped_broker_fails_calls_in_time_and_the_store_recovers() -> None:
    with KafkaServer() as broker:
        topic = f"outage-{uuid.uuid4().hex[:8]}"
        url = f"{broker.url}{topic}"
        with KafkaMemory.from_url(url, timeout=2) as store:
            kept = [store.add("s1", "user", f"kept {n}") for n in range(3)]
            broker.stop()

            # The first write meets the producer's own timeout, the later
            # ones a recovery that cannot reach the broker, while the tail
            # competes for the connection.
            for attempt in range(3):
                began = time.monotonic()
                with pytest.raises(BackendUnavailable):
                    store.add("s1", "user", f"refused {attempt}")
                assert time.monotonic() - began < 2.5
                began = time.monotonic()
                with pytest.raises(BackendUnavailable):
                    store.sync()
                assert time.monotonic() - began < 2.5
            # Reads come from the index: everything acknowledged is there.
            assert store.history("s1") == kept

            # Tansu comes back empty; the store goes on without a reopen,
            # keeping what it acknowledged.
            broker.start()
            sync_when_back(store)
            after = store.add("s1", "user", "after")
            assert store.history("s1") == [*kept, after]

            with KafkaMemory.from_url(url, timeout=2) as other:
                assert other.history("s1") == [after]
                written = other.add("s2", "user", "from another store")
            store.sync()
            assert store.get(written.id or "") == written


def test_an_idle_store_follows_a_killed_broker_back() -> None:
    with KafkaServer() as broker:
        url = f"{broker.url}idle-{uuid.uuid4().hex[:8]}"
        with KafkaMemory.from_url(url, timeout=2) as store:
            kept = store.add("s1", "user", "before")
            broker.kill()
            broker.start()

            sync_when_back(store)
            with KafkaMemory.from_url(url, timeout=2) as other:
                written = other.add("s1", "user", "after")
            sync_when_back(store)
            assert store.history("s1") == [kept, written]


def test_an_unreachable_broker_fails_the_open_in_time() -> None:
    (port,) = free_ports(1)
    began = time.monotonic()
    with pytest.raises(BackendUnavailable, match="Cannot reach the Kafka brokers"):
        chatmem.open(f"kafka://127.0.0.1:{port}/chat", timeout=1)
    assert time.monotonic() - began < 2.0


# -- URLs, options and credentials ---------------------------------------------


def test_url_parts() -> None:
    assert parse_url("kafka://a:9092/chat") == ("a:9092", "chat")
    assert parse_url("kafka://a:1,b:2,/chat.v1") == ("a:1,b:2", "chat.v1")
    assert parse_url("kafka://a:1/my_topic-2") == ("a:1", "my_topic-2")


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("redis://a:1/chat", "Not a kafka:// URL"),
        ("kafka:///chat", "names its brokers"),
        ("kafka://,/chat", "names its brokers"),
        ("kafka://a:1/", "is not a Kafka topic name"),
        ("kafka://a:1/bad%20topic", "is not a Kafka topic name"),
        ("kafka://a:1/..", "is not a Kafka topic name"),
        ("kafka://a:1/" + "t" * 250, "is not a Kafka topic name"),
        ("kafka://a:1/caf%C3%A9", "is not a Kafka topic name"),
    ],
)
def test_a_bad_url_is_refused_clearly(bad: str, says: str) -> None:
    with pytest.raises(InvalidMessage, match=says):
        KafkaMemory.from_url(bad)


def test_credentials_in_the_url_are_refused_without_being_shown() -> None:
    with pytest.raises(InvalidMessage, match="client_config") as caught:
        chatmem.open("kafka://bot:hunter2@a:1/chat")
    assert "hunter2" not in f"{caught.value} {caught.value!r}"


@pytest.mark.parametrize(
    "options",
    [
        {"partitions": 0},
        {"partitions": True},
        {"partitions": "6"},
        {"compact": "yes"},
        {"client_config": [("acks", "1")]},
        {"timeout": 0},
        {"timeout": "10"},
    ],
)
def test_bad_options_are_refused_before_connecting(options: dict[str, Any]) -> None:
    # The port is closed: a refusal that came from connecting would differ.
    (port,) = free_ports(1)
    with pytest.raises(InvalidMessage):
        KafkaMemory(f"127.0.0.1:{port}", "chat", **options)


def test_client_config_secrets_never_show(
    server: KafkaServer,
    topic: str,
    store_at: Callable[..., KafkaMemory],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "correct-horse-battery-staple"
    caplog.set_level(logging.DEBUG)

    # Tansu speaks no SASL: the open fails, and says so without the secret.
    sasl = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "bot",
        "sasl.password": secret,
    }
    with pytest.raises(BackendUnavailable) as caught:
        store_at(timeout=1, client_config=sasl)
    error = caught.value
    assert secret not in f"{error} {error!r} {error.__cause__!r}"

    store = store_at(client_config={"sasl.password": secret})
    store.add("s1", "user", "hello")
    assert secret not in f"{store!r} {store}"
    assert topic in repr(store)
    assert secret not in caplog.text


if __name__ == "__main__":
    reader_main()
