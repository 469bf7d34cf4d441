"""KafkaMemory: chat memory on one Apache Kafka topic, read from a local index.

Reference card
--------------
URL        ``kafka://host:port[,host:port...]/topic``. Credentials and TLS
           go in ``client_config`` (librdkafka properties, for example
           ``{"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
           "sasl.username": ..., "sasl.password": ...}``), never in the URL;
           they are passed to every client and never shown.
Options    ``partitions`` (default 6): the partition count of a topic
           chatmem creates; an existing topic keeps its own count, which
           must never change afterwards (sessions would move).
           ``compact`` (default False): create the topic with
           ``cleanup.policy=compact,delete`` for physical erasure.
           ``retention``: also the topic's ``retention.ms`` at creation.
           ``timeout`` (default 10 s): delivery timeout of a write
           (``message.timeout.ms``), and the wait of opens, ``sync()`` and
           admin calls. ``index_dir`` (default None): see
           :mod:`chatmem.backends.log`. ``client_config``: extra librdkafka
           properties. And every option of :func:`chatmem.open`.
Topic      One topic for every session and namespace, created if missing.
           A session's partition is CRC-32 of (namespace, session) modulo
           the partition count, computed by chatmem and passed explicitly
           (never a client partitioner: librdkafka and the Java client
           disagree). Records are keyed by message id.
Durability The producer runs with ``acks=all`` and idempotence on. ``add``
           and ``add_messages`` return after the broker acknowledged every
           record and the local index holds them; a record not
           acknowledged within ``timeout`` raises ``BackendUnavailable``.
           A store's first write waits for the producer's id, which
           librdkafka 2.16 requests on a 500 ms timer after the producer
           starts (at open): a first write within about a second of the
           open can take that long, and a ``timeout`` under about 1.5 s
           may fail it.
           Such a record may still have reached the broker (Kafka calls it
           "possibly persisted"): it then shows in indexes once the tail
           reads it, and retrying the write may store it twice.
Batches    Kafka writes several partitions atomically only inside a
           transaction, and the broker the tests use (Tansu 0.6) hands
           records of aborted transactions to ``read_committed`` readers,
           so chatmem does not rely on transactions. A batch is checked
           whole first, produced all at once and flushed once; then a
           commit record follows. Indexes show a batch only after its
           commit record, so a batch split by a broker failure is never
           seen in part; its records stay in the topic, invisible, until
           retention drops them.
Reads      Served by the local index (see :mod:`chatmem.backends.log`):
           no broker round trip. Replay and tail assign partitions
           explicitly and seek; no consumer group is joined, no offset is
           committed, no time lookup is used.
Other      Another store's write shows here after the tail's lag (about
instances  50 ms median and under 100 ms on a loopback Tansu broker, whose
           fetches wait out ``fetch.wait.max.ms``), at once after
           ``sync()``.
Deletion   Tombstones: a session or user tombstone record, applied by
           every index, plus a null-valued record keyed by each deleted
           message id (also the eviction record). The local index drops
           the entries before the call returns. The bytes stay on the
           broker until: without ``compact``, retention deletes the
           segment holding them (``retention.ms``, ``retention.bytes``);
           with ``compact``, the log cleaner rewrites that segment (never
           the active one: after it rolls at ``segment.ms`` or
           ``segment.bytes``, and once the dirty ratio passes
           ``min.cleanable.dirty.ratio``); the null records themselves go
           ``delete.retention.ms`` (a day by default) after that.
           Erasure records cover the ids the index knew: ``delete_session``
           and ``delete_user`` ``sync()`` first, so that is every message
           acknowledged before the call.
Limits     A record holds at most 1,000,000 bytes (the broker default is
           about 1 MiB); a longer message is refused before anything is
           sent. The broker's own limits still apply. Tansu, the broker the
           tests run, keeps topics in memory only: a restart loses them.
           chatmem then recreates the topic on the next write, keeps what
           its index holds (logging CRITICAL), and goes on at a new epoch;
           what was lost is lost to any store opened afterwards. Before it
           makes the topic again it closes every client of its own that
           knew the old one: librdkafka 2.16 can crash the process (a
           segmentation fault in its metadata cache) when a running
           client sees a topic replaced by a new one of the same name.
           Two stores of one process on one topic therefore must not
           outlive such a loss together: one re-creating the topic can
           crash the other's clients. It matters only where topics are
           lost or deleted and made again, never on a broker that keeps
           its data.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from chatmem.backends.log import (
    LogDriver,
    LogMemory,
    LogReader,
    LogRecord,
    Outgoing,
)
from chatmem.errors import BackendUnavailable, InvalidMessage

__all__ = ["KafkaMemory"]

log = logging.getLogger(__name__)

# librdkafka's own log lines (connection attempts, retries) go here, apart
# from chatmem's, so that an application can quieten them alone.
client_log = logging.getLogger(__name__ + ".client")

DEFAULT_PARTITIONS = 6

TOPIC_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
)

# What a read hands to the tail at most per call.
READ_BATCH = 2000


class KafkaDriver(LogDriver):
    """The confluent-kafka calls behind :class:`KafkaMemory`."""

    positions_at_ack = True
    erases_by_key = True
    max_record_bytes = 1_000_000

    def __init__(
        self,
        servers: str,
        topic: str,
        *,
        partitions: int,
        compact: bool,
        retention_ms: int | None,
        timeout: float,
        client_config: dict[str, Any],
    ) -> None:
        self.servers = servers
        self.topic = topic
        self.partitions = partitions
        self.compact = compact
        self.retention_ms = retention_ms
        self.timeout = timeout
        self._client_config = client_config
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._admin: AdminClient | None = None
        self._producer: Producer | None = None
        self._probe: Consumer | None = None
        self._readers: weakref.WeakSet[KafkaReader] = weakref.WeakSet()
        self._suspect = False
        self._log_id = ""

    def _config(self, **extra: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.servers,
            "logger": client_log,
            "socket.connection.setup.timeout.ms": max(1000, int(self.timeout * 1000)),
        }
        config.update(self._client_config)
        config.update(extra)
        return config

    # -- the topic -----------------------------------------------------------

    def open(self) -> int:
        # The idempotent producer asks for its producer id on a 500 ms
        # timer after it starts, and holds every record until it has one:
        # started first, it waits while the topic is checked and replayed.
        self._producer = self._new_producer()
        self._admin = self._new_admin()
        self._ensure_topic(time.monotonic() + self.timeout)
        return self.partitions

    def _new_admin(self) -> AdminClient:
        try:
            return AdminClient(self._config())
        except KafkaException as exc:
            raise BackendUnavailable(
                f"Cannot configure the Kafka client: {exc}."
            ) from exc

    def _ensure_topic(self, deadline: float) -> None:
        """Create the topic if missing; learn its partitions and identity."""
        count = self._partition_count(deadline)
        if count is None:
            if self._log_id:
                self._retire_clients()
            self._create_topic(deadline)
            while count is None:
                count = self._partition_count(deadline)
                if count is None:
                    _check_deadline(deadline, "the new topic did not appear")
                    time.sleep(0.05)
        self.partitions = count
        self._log_id = self._describe_id(deadline)

    def _retire_clients(self) -> None:
        """Close every client that knew the lost topic; make a new admin.

        librdkafka 2.16 can crash (a segmentation fault in its metadata
        cache) when a client that cached a topic's id learns of a new
        topic with the same name, so none of them may outlive the topic's
        creation. Producers and consumers are closed explicitly, since an
        exception's traceback may still hold them; the admin client has
        no close, so no frame holds it but through ``self._admin``. Call
        with the lock held.
        """
        log.debug("closing the clients of the lost topic %r", self.topic)
        self._admin = None
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.purge()
            producer.close()
        self._suspect = True
        with self._probe_lock:
            probe, self._probe = self._probe, None
        if probe is not None:
            probe.close()
        for reader in list(self._readers):
            reader.retire()
        self._admin = self._new_admin()

    def _client(self) -> AdminClient:
        if self._admin is None:
            raise BackendUnavailable("The Kafka client is closed.")
        return self._admin

    def _partition_count(self, deadline: float) -> int | None:
        try:
            metadata = self._client().list_topics(timeout=_remaining(deadline))
        except KafkaException as exc:
            raise BackendUnavailable(
                f"Cannot reach the Kafka brokers at {self.servers} within "
                f"{self.timeout:g} s: {exc}."
            ) from exc
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            return None
        return len(topic.partitions)

    def _create_topic(self, deadline: float) -> None:
        config = {}
        if self.compact:
            config["cleanup.policy"] = "compact,delete"
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        topic = NewTopic(
            self.topic,
            num_partitions=self.partitions,
            replication_factor=-1,
            config=config,
        )
        timeout = _remaining(deadline)
        futures = self._client().create_topics(
            [topic], operation_timeout=timeout, request_timeout=timeout
        )
        try:
            futures[self.topic].result(timeout=timeout)
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"Kafka did not create the topic {self.topic!r} within "
                f"{self.timeout:g} s."
            ) from exc
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BackendUnavailable(
                    f"Cannot create the Kafka topic {self.topic!r}: {exc}."
                ) from exc
        log.info("created topic %r with %d partitions", self.topic, self.partitions)

    def _describe_id(self, deadline: float) -> str:
        timeout = _remaining(deadline)
        try:
            future = self._client().describe_topics(
                TopicCollection([self.topic]), request_timeout=timeout
            )[self.topic]
            return str(future.result(timeout=timeout).topic_id)
        except (KafkaException, TimeoutError) as exc:
            raise BackendUnavailable(
                f"Cannot describe the Kafka topic {self.topic!r} within "
                f"{self.timeout:g} s: {exc!r}."
            ) from exc

    def log_id(self, refresh: bool = False) -> str:
        if refresh:
            deadline = time.monotonic() + self.timeout
            with self._holding(deadline):
                self._ensure_topic(deadline)
            for reader in list(self._readers):
                reader.clear_trouble()
        return self._log_id

    @contextmanager
    def _holding(self, deadline: float) -> Iterator[None]:
        # The tail's identity check and a writer's recovery both hold the
        # lock for up to a timeout while the broker is away; waiting for
        # it must count against the caller's own timeout.
        if not self._lock.acquire(timeout=_remaining(deadline)):
            raise BackendUnavailable(
                f"Kafka timed out: the brokers at {self.servers} did not "
                f"answer within {self.timeout:g} s."
            )
        try:
            yield
        finally:
            self._lock.release()

    def index_name(self) -> str:
        safe = self.topic.replace(".", "_")
        return f"kafka-{safe}"

    def describe(self) -> str:
        return f"servers={self.servers!r} topic={self.topic!r}"

    # -- writing -------------------------------------------------------------

    def _new_producer(self) -> Producer:
        try:
            return Producer(
                self._config(
                    **{
                        "acks": "all",
                        "enable.idempotence": True,
                        "message.timeout.ms": int(self.timeout * 1000),
                        "allow.auto.create.topics": False,
                        "linger.ms": 5,
                    }
                )
            )
        except KafkaException as exc:
            raise BackendUnavailable(
                f"Cannot configure the Kafka producer: {exc}."
            ) from exc

    def publish(self, records: Sequence[Outgoing]) -> list[int | None]:
        deadline = time.monotonic() + self.timeout
        with self._holding(deadline):
            if self._suspect or self._producer is None:
                self._recover(deadline)
            producer = self._producer
            assert producer is not None
            try:
                return self._produce(producer, records, deadline)
            except BackendUnavailable:
                self._suspect = True
                raise

    def _recover(self, deadline: float) -> None:
        # After a failed delivery the broker may have restarted: the topic
        # may be gone and the idempotent producer's id unknown to it, a
        # fatal state for librdkafka. Start from a checked topic and a
        # fresh producer.
        old, self._producer = self._producer, None
        if old is not None:
            old.purge()
            old.close()
        self._ensure_topic(deadline)
        self._producer = self._new_producer()
        self._suspect = False

    def _produce(
        self, producer: Producer, records: Sequence[Outgoing], deadline: float
    ) -> list[int | None]:
        delivered: list[tuple[KafkaError | None, Message]] = []

        def report(err: KafkaError | None, msg: Message) -> None:
            delivered.append((err, msg))

        topic = self.topic
        try:
            for record in records:
                while True:
                    try:
                        producer.produce(
                            topic,
                            record.value,
                            record.key,
                            record.partition,
                            on_delivery=report,
                        )
                        break
                    except BufferError:
                        # The local queue is full: let deliveries drain it.
                        _check_deadline(deadline, "the producer queue stayed full")
                        producer.poll(0.05)
            left = producer.flush(_remaining(deadline))
        except (KafkaException, SystemError) as exc:
            raise BackendUnavailable(
                f"Kafka refused the write to {topic!r}: {_reason(exc)}."
            ) from exc
        if left:
            raise BackendUnavailable(
                f"Kafka did not acknowledge {left} of {len(records)} records "
                f"within {self.timeout:g} s."
            )

        offsets: dict[str, int | None] = {}
        for err, msg in delivered:
            if err is not None:
                raise BackendUnavailable(
                    f"Kafka did not take a record for {topic!r}: {err.str()}."
                )
            key = msg.key()
            offsets[key.decode() if isinstance(key, bytes) else str(key)] = msg.offset()
        try:
            return [offsets[record.key] for record in records]
        except KeyError:
            raise BackendUnavailable(
                "Kafka acknowledged fewer records than were sent."
            ) from None

    # -- reading -------------------------------------------------------------

    def _consumer(self, **extra: Any) -> Consumer:
        try:
            return Consumer(
                self._config(
                    **{
                        # A group id is required by the client; chatmem
                        # never joins the group or commits to it.
                        "group.id": "chatmem-index",
                        "enable.auto.commit": False,
                        "enable.auto.offset.store": False,
                        "enable.partition.eof": True,
                        "auto.offset.reset": "earliest",
                        "allow.auto.create.topics": False,
                        # A fetch that covers a partition at its end may
                        # be held this long (Tansu holds it the whole
                        # time): the librdkafka default of 500 ms made a
                        # replay about three times slower and stretched
                        # the tail's lag. Ten fetches a second when idle.
                        "fetch.wait.max.ms": 100,
                        **extra,
                    }
                )
            )
        except KafkaException as exc:
            raise BackendUnavailable(
                f"Cannot configure the Kafka consumer: {exc}."
            ) from exc

    def reader(self, start: dict[int, int]) -> LogReader:
        reader = KafkaReader(self.topic, start)
        consumer = self._consumer(error_cb=reader.note_trouble)
        try:
            reader.attach(consumer)
        except KafkaException as exc:
            consumer.close()
            raise BackendUnavailable(
                f"Cannot read the Kafka topic {self.topic!r}: {exc}."
            ) from exc
        self._readers.add(reader)
        return reader

    def end_offsets(self) -> dict[int, int]:
        deadline = time.monotonic() + self.timeout
        for _attempt in range(2):
            with self._probe_lock:
                probe = self._probe_consumer()
                if self._topic_present(probe, deadline):
                    listed = {}
                    try:
                        for p in range(self.partitions):
                            listed[p] = probe.get_watermark_offsets(
                                TopicPartition(self.topic, p),
                                timeout=_remaining(deadline),
                            )[1]
                    except KafkaException as exc:
                        raise BackendUnavailable(
                            f"Cannot read the end offsets of {self.topic!r}: {exc}."
                        ) from exc
                    return self._confirm_ends(probe, listed, deadline)
            # Tansu answers a lost topic's end offsets with zeros, which
            # would let sync() pass on a log that is gone: make the topic
            # again, as a write would, and read the new one's ends.
            self.log_id(refresh=True)
        raise BackendUnavailable(f"The Kafka topic {self.topic!r} is missing.")

    def _topic_present(self, probe: Consumer, deadline: float) -> bool:
        try:
            metadata = probe.list_topics(self.topic, timeout=_remaining(deadline))
        except KafkaException as exc:
            raise BackendUnavailable(
                f"Cannot reach the Kafka brokers at {self.servers} within "
                f"{self.timeout:g} s: {exc}."
            ) from exc
        topic = metadata.topics.get(self.topic)
        return topic is not None and topic.error is None and bool(topic.partitions)

    def _probe_consumer(self) -> Consumer:
        if self._probe is None:
            self._probe = self._consumer()
        return self._probe

    def _confirm_ends(
        self, probe: Consumer, listed: dict[int, int], deadline: float
    ) -> dict[int, int]:
        # Tansu 0.6 answers a ListOffsets "latest" with the base offset of
        # the last record batch plus one, short of the end when that batch
        # holds several records. A fetch from just before that offset
        # returns the whole last batch, and its response carries the true
        # high watermark; on a correct broker it changes nothing.
        ends = dict(listed)
        wanted = {p for p, offset in listed.items() if offset > 0}
        if not wanted:
            return ends
        try:
            probe.assign([TopicPartition(self.topic, p, listed[p] - 1) for p in wanted])
            while wanted:
                _check_deadline(deadline, "the end offsets were not confirmed")
                for message in probe.consume(500, min(0.1, _remaining(deadline))):
                    wanted.discard(message.partition() or 0)
            for p in listed:
                if listed[p] > 0:
                    high = probe.get_watermark_offsets(
                        TopicPartition(self.topic, p), cached=True
                    )[1]
                    ends[p] = max(listed[p], high)
        except KafkaException as exc:
            raise BackendUnavailable(
                f"Cannot read the end of {self.topic!r}: {exc}."
            ) from exc
        finally:
            probe.unassign()
        return ends

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
            probe, self._probe = self._probe, None
        if producer is not None:
            # Every write waited for its acknowledgement; what a failed
            # write left queued was already reported to its caller.
            producer.purge()
            producer.close()
        if probe is not None:
            probe.close()
        self._admin = None


class KafkaReader(LogReader):
    """Reads assigned partitions from given offsets; no consumer group."""

    def __init__(self, topic: str, start: dict[int, int]) -> None:
        self._topic = topic
        self._consumer: Consumer | None = None
        self._positions = dict(start)
        self._trouble = False
        # Held while the consumer is in use, so that another thread can
        # retire it between two reads.
        self._lock = threading.Lock()

    def attach(self, consumer: Consumer) -> None:
        """Start reading with ``consumer`` from the start offsets."""
        consumer.assign(
            [TopicPartition(self._topic, p, o) for p, o in self._positions.items()]
        )
        self._consumer = consumer

    def read(self, timeout: float) -> list[LogRecord]:
        with self._lock:
            consumer = self._consumer
            if consumer is None:
                # Retired: the base sees the trouble, checks the topic's
                # identity and makes a new reader.
                self._trouble = True
                time.sleep(timeout)
                return []
            try:
                messages = consumer.consume(READ_BATCH, timeout)
            except (KafkaException, RuntimeError) as exc:
                raise BackendUnavailable(f"Reading the topic failed: {exc}.") from exc
        records = []
        positions = self._positions
        for message in messages:
            error = message.error()
            partition = message.partition()
            offset = message.offset()
            if partition is None or offset is None:
                continue
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if offset > positions.get(partition, 0):
                        positions[partition] = offset
                else:
                    self._trouble = True
                    log.debug("reader error: %s", error.str())
                continue
            records.append(LogRecord(partition, offset, message.key(), message.value()))
            positions[partition] = offset + 1
        return records

    def positions(self) -> dict[int, int]:
        return dict(self._positions)

    def troubled(self) -> bool:
        # Kept until the driver checked the topic: a check that fails
        # while the broker is away must be tried again.
        return self._trouble

    def clear_trouble(self) -> None:
        """Forget the trouble: the topic was checked since."""
        self._trouble = False

    def note_trouble(self, error: KafkaError) -> None:
        """Remember a client-level error (the broker went away)."""
        self._trouble = True

    def retire(self) -> None:
        """Close the consumer now; later reads return nothing, troubled."""
        with self._lock:
            consumer, self._consumer = self._consumer, None
            self._trouble = True
        if consumer is not None:
            consumer.close()

    def close(self) -> None:
        self.retire()


class KafkaMemory(LogMemory):
    """Chat memory on a Kafka topic; see the module's reference card.

    >>> import chatmem
    >>> memory = chatmem.open("kafka://localhost:9092/chat")  # doctest: +SKIP
    """

    def __init__(
        self,
        servers: str,
        topic: str,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        compact: bool = False,
        timeout: float = 10.0,
        client_config: dict[str, Any] | None = None,
        index_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        _check_topic(topic)
        if (
            isinstance(partitions, bool)
            or not isinstance(partitions, int)
            or not 1 <= partitions <= 10_000
        ):
            raise InvalidMessage(
                f"partitions must be a whole number from 1 to 10000: {partitions!r}."
            )
        if not isinstance(compact, bool):
            raise InvalidMessage(f"compact must be True or False: {compact!r}.")
        if client_config is not None and not isinstance(client_config, dict):
            raise InvalidMessage("client_config must be a dict of librdkafka settings.")
        retention = options.get("retention")
        retention_ms = None
        if retention is not None and hasattr(retention, "total_seconds"):
            retention_ms = max(1, int(retention.total_seconds() * 1000))
        driver = KafkaDriver(
            servers,
            topic,
            partitions=partitions,
            compact=compact,
            retention_ms=retention_ms,
            timeout=float(timeout) if isinstance(timeout, (int, float)) else 10.0,
            client_config=dict(client_config or {}),
        )
        super().__init__(driver, index_dir=index_dir, timeout=timeout, **options)
        self.servers = servers
        self.topic = topic

    @classmethod
    def from_url(cls, url: str, **options: Any) -> KafkaMemory:
        """Open the topic a ``kafka://host:port[,host:port]/topic`` URL names."""
        servers, topic = parse_url(url)
        return cls(servers, topic, **options)


def parse_url(url: str) -> tuple[str, str]:
    """Return (bootstrap servers, topic) from a ``kafka://`` URL."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed "[" of an IPv6 host, say
        raise InvalidMessage(
            f"Not a kafka URL ({exc}): write kafka://host:port[,host:port]/topic."
        ) from None
    if parts.scheme != "kafka":
        raise InvalidMessage(f"Not a kafka:// URL: {parts.scheme}://...")
    if "@" in parts.netloc:
        raise InvalidMessage(
            "Put Kafka credentials in client_config, not in the URL: "
            "kafka://host:port/topic."
        )
    servers = parts.netloc
    hosts = [h for h in servers.split(",") if h]
    if not hosts:
        raise InvalidMessage(
            "A kafka URL names its brokers: kafka://host:port[,host:port]/topic."
        )
    topic = unquote(parts.path.lstrip("/"))
    _check_topic(topic)
    return ",".join(hosts), topic


def _check_topic(topic: object) -> None:
    if (
        not isinstance(topic, str)
        or not topic
        or len(topic) > 249
        or topic in (".", "..")
        or not set(topic) <= TOPIC_CHARS
    ):
        raise InvalidMessage(
            f"{topic!r} is not a Kafka topic name: use 1 to 249 of the "
            "characters a-z, A-Z, 0-9, '.', '_' and '-'."
        )


def _remaining(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def _check_deadline(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise BackendUnavailable(f"Kafka timed out: {what}.")


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, SystemError) and isinstance(cause, KafkaException):
        exc = cause
    if isinstance(exc, KafkaException) and exc.args:
        error = exc.args[0]
        if isinstance(error, KafkaError):
            return str(error.str())
    return str(exc)
