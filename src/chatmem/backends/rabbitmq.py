"""RabbitMQMemory: chat memory on one RabbitMQ stream, read from a local index.

Reference card
--------------
What       Every namespace and session in one RabbitMQ stream (RabbitMQ
           3.9 or later with the ``rabbitmq_stream`` plugin), spoken to
           over the stream protocol with rstream. Reads are served by the
           local index of :mod:`chatmem.backends.log`.
URL        ``rabbitmq://user:password@host[:port][/vhost]/stream``. The port
           defaults to 5552, the stream protocol's; the vhost to ``/``
           (write another one percent-encoded, ``%2F`` for a slash). User
           and password default to ``guest``, which RabbitMQ accepts from
           loopback only. The password is never shown: not in repr, not in
           errors, not in logs.
Options    ``timeout`` (default 10 s): how long a write, ``sync()``, an
           open or a reconnection may take. ``index_dir``: see
           :mod:`chatmem.backends.log`. ``segment_bytes``: the stream's
           ``x-stream-max-segment-size-bytes`` (broker default 500 MB).
           ``retention`` also sets the stream's ``x-max-age``, and
           ``capacity_bytes`` its ``x-max-length-bytes``. Both apply per
           segment: the broker drops whole segments, oldest first, and
           never the one being written, so the stream holds up to a
           segment more than the limit. The broker counts every record,
           tombstones and deleted messages included, so with deletions a
           stream can pass ``capacity_bytes`` while the index holds less:
           the broker then drops the oldest segment, and an index rebuilt
           later lacks the live messages it held. Leave room above the
           budget when messages are deleted out of order. The arguments
           are set when chatmem creates the stream; an existing stream
           keeps its own.
Client     rstream over the stream protocol, chosen by measurement
           (``benchmarks/rabbitmq_clients.py --rounds 3``, same broker,
           same run, results in ``benchmarks/results/rabbitmq-clients.md``):
           batches of 500 with one wait for their confirms, rstream
           142,362 msg/s against pika's 17,238 (8.3x); reading 20,000
           from the first offset, 169,691 against 20,903 msg/s (8.1x); one
           synchronous confirm per message, 2,461 against 2,044 (1.2x).
           chatmem drives rstream's protocol client from a private event
           loop thread, and names its publishing ids itself.
Partitions One stream is one partition: every session's history is the
           stream's order. A stream is written by one broker process, so
           one stream's write throughput bounds the store's; a superstream
           would spread it, at the price of giving up the single order
           that lets a writer learn where its records landed.
Writes     Publisher confirms carry no offset, so ``add`` publishes, waits
           for the broker's confirm, then waits until the store's own tail
           consumer has read the record back from the stream and applied
           it to the index: read-your-writes holds because the index
           answers only after it saw the record where every other reader
           sees it. A write not confirmed within ``timeout`` raises
           ``BackendUnavailable``; a write confirmed but not read back in
           time raises it too, and then shows once the tail catches up.
Dedup      Each open store publishes under its own publisher name with
           publishing ids it numbers itself. When a connection drops
           before the confirms came, chatmem reconnects and resends the
           unconfirmed records with the same ids, and the broker keeps
           each id once: chatmem's own resends are never stored twice. A
           caller that retries an ``add`` which raised writes a new record
           with a new id; if the first reached the stream after all, both
           are kept.
Durability A single node does not fsync each write: RabbitMQ confirms a
           record once it is written to the stream's segment file, and a
           power loss can lose recently confirmed records. A broker
           process that stops or is killed loses nothing it confirmed.
           On a cluster, confirms wait for a quorum of replicas.
Ordering   The stream's order, which is the order the broker accepted the
           records; query results by ``created_at``, then acceptance.
Other      Another store's write shows here after the tail's lag (a few
instances  ms on loopback), at once after ``sync()``. The stream protocol
           on RabbitMQ 3.10 cannot report a stream's end, so ``sync()``
           (and every open) publishes a small end marker and reads the
           stream's last chunk: the end is past that chunk. Markers are
           records like others and leave with retention.
Identity   A store's index remembers which stream it follows through a
           random number stored in the stream itself, as the offset of the
           tracking reference ``chatmem-log-id``. A stream deleted and made
           again has none, so chatmem draws a new one and every index
           starts a new epoch (see :mod:`chatmem.backends.log`). A deleted
           stream is made again by the next write or reconnection.
Deletion   Streams cannot delete a record. ``delete``, ``delete_session``
           and ``delete_user`` publish tombstones that every index applies,
           and the local index drops the entries before the call returns.
           The bytes stay on the broker until retention (``x-max-age``,
           ``x-max-length-bytes``) drops the segment holding them.
Speed      Measured beside raw rstream on the same broker in the same run
           (``benchmarks/rabbitmq_bench.py --rounds 3``, results in
           ``benchmarks/results/rabbitmq.md``, a shared 2-core machine):
           ``add`` 2.0 ms median, 0.97x raw rstream publishing and reading
           the record back, 0.25x a raw confirmed publish that reads
           nothing back (the raw client, too, gets its record back on a
           consumer about 1.5 ms after the confirm); ``add_messages`` of
           500 at 13,549 msg/s, 0.33x raw ``send_batch``;
           ``history(last=20)`` 81 us from the index; a full rebuild
           27,292 records/s. Most of a batch's time is chatmem's own work
           in Python: checking and encoding each message, and decoding and
           indexing it when the tail reads it back.
Limits     A record holds at most 1,000,000 bytes; a longer message is
           refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import suppress
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from rstream import exceptions as stream_errors
from rstream import schema
from rstream.client import Client
from rstream.constants import OffsetType

from chatmem.backends.log import (
    LogDriver,
    LogMemory,
    LogReader,
    LogRecord,
    Outgoing,
)
from chatmem.errors import BackendUnavailable, InvalidMessage

__all__ = ["RabbitMQMemory", "parse_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _HideCredentials(logging.Filter):
    """Keep the SASL frame, which holds the password, out of rstream's log.

    rstream logs every frame it sends at DEBUG, the authentication frame
    with its user and password included; an application that turns on
    DEBUG logging must not find the password in its logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(
            isinstance(arg, schema.SaslAuthenticate) for arg in args
        ):
            record.args = tuple(
                "SaslAuthenticate(credentials hidden)"
                if isinstance(arg, schema.SaslAuthenticate)
                else arg
                for arg in args
            )
        return True


logging.getLogger("rstream.client").addFilter(_HideCredentials())

DEFAULT_PORT = 5552

# The tracking reference whose stored offset is the stream's identity.
IDENTITY_REFERENCE = "chatmem-log-id"

# A stream found without an identity may be one another store just made
# and is about to mark; wait this long for its mark before making one.
IDENTITY_GRACE_SECONDS = 1.0

FRAME_MAX = 1024 * 1024
HEARTBEAT_SECONDS = 60

# Publish frame: 4 length + 2 key + 2 version + 1 publisher + 4 count;
# each message adds an 8-byte publishing id and a 4-byte length.
FRAME_OVERHEAD = 13
MESSAGE_OVERHEAD = 12

# Chunks the tail may have in flight; each read grants credit anew, so
# memory stays bounded however far behind the tail is.
TAIL_CREDIT = 8

PUBLISHER_ID = 0
TAIL_SUBSCRIPTION = 0
END_SUBSCRIPTION = 1

# Publish errors that mean the stream or the publisher is gone, not
# that the record was refused.
GONE = frozenset(
    error.code
    for error in (
        stream_errors.StreamDoesNotExist,
        stream_errors.StreamNotAvailable,
        stream_errors.PublisherDoesNotExist,
    )
)

# What a node answers while a stream's members are still starting (just
# after a restart): worth asking again until the caller's deadline.
TRANSIENT = (stream_errors.InternalError, stream_errors.StreamNotAvailable)


class RabbitMQDriver(LogDriver):
    """The rstream calls behind :class:`RabbitMQMemory`."""

    positions_at_ack = False
    erases_by_key = False
    max_record_bytes = 1_000_000

    def __init__(
        self,
        host: str,
        port: int,
        vhost: str,
        username: str,
        password: str,
        stream: str,
        *,
        arguments: dict[str, str],
        timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.vhost = vhost
        self.username = username
        self._password = password
        self.stream = stream
        self.arguments = arguments
        self.timeout = timeout
        self.publisher_name = f"chatmem-{secrets.token_hex(8)}"
        self._io: _Loop | None = None
        self._link: _Link | None = None
        self._link_lock: asyncio.Lock | None = None
        self._end_lock: asyncio.Lock | None = None
        self._next_id = 1
        self._markers = 0
        self._log_id = ""

    # -- connecting ------------------------------------------------------------

    def open(self) -> int:
        self._io = _Loop()
        self._run(self._open())
        return 1

    async def _open(self) -> None:
        self._link_lock = asyncio.Lock()
        self._end_lock = asyncio.Lock()
        await self._ensure_link()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        io = self._io
        if io is None:
            coro.close()
            raise BackendUnavailable("The RabbitMQ driver is not open.")
        return io.run(coro, self.timeout if timeout is None else timeout, self)

    async def connect(self, name: str) -> _Connection:
        """Open and authenticate one connection to the stream port."""
        client = _Connection(
            host=self.host,
            port=self.port,
            frame_max=FRAME_MAX,
            heartbeat=HEARTBEAT_SECONDS,
            connection_name=name,
            # With a handler rstream reports a dropped connection to it
            # rather than logging a traceback at ERROR; chatmem learns of
            # the drop from the listener's end (see _Connection).
            connection_closed_handler=_ignore,
        )
        try:
            await client.start()
            await client.authenticate(self.vhost, self.username, self._password)
        except BaseException:
            await client.shut()
            raise
        return client

    async def _ensure_link(self) -> _Link:
        """Return a live publishing connection, reconnecting if needed."""
        link = self._link
        if link is not None and link.alive:
            return link
        assert self._link_lock is not None
        async with self._link_lock:
            link = self._link
            if link is not None and link.alive:
                return link
            self._link = None
            if link is not None:
                await link.client.shut()
            client = await self.connect("chatmem-publisher")
            try:
                created = await _patiently(lambda: self._ensure_stream(client))
                self._log_id = await self._identity(client, created)
                link = _Link(client, self.stream)
                await _patiently(
                    lambda: client.declare_publisher(
                        self.stream, self.publisher_name, PUBLISHER_ID
                    )
                )
                stored = await client.query_publisher_sequence(
                    self.stream, self.publisher_name
                )
                self._next_id = max(self._next_id, stored + 1)
                await link.listen()
            except BaseException:
                await client.shut()
                raise
            self._link = link
            return link

    async def _ensure_stream(self, client: Client) -> bool:
        """Create the stream if missing; return True if this call did."""
        try:
            await client.create_stream(self.stream, self.arguments)
        except stream_errors.StreamAlreadyExists:
            return False
        log.info("created stream %r", self.stream)
        return True

    async def _identity(self, client: Client, created: bool) -> str:
        deadline = time.monotonic() + (0 if created else IDENTITY_GRACE_SECONDS)
        while not created:
            try:
                return str(await client.query_offset(self.stream, IDENTITY_REFERENCE))
            except stream_errors.OffsetNotFound:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        value = secrets.randbits(63)
        await client.store_offset(self.stream, IDENTITY_REFERENCE, value)
        if not created:
            log.warning("stream %r had no chatmem identity; gave it one", self.stream)
        return str(value)

    def log_id(self, refresh: bool = False) -> str:
        if refresh:
            self._run(self._refresh_identity())
        return self._log_id

    async def _refresh_identity(self) -> None:
        link = await self._ensure_link()
        try:
            found = await link.client.query_offset(self.stream, IDENTITY_REFERENCE)
        except stream_errors.OffsetNotFound:
            self._log_id = await self._identity(link.client, created=False)
        else:
            self._log_id = str(found)

    def index_name(self) -> str:
        # The same stream name on another broker or vhost is another log:
        # it gets an index file of its own.
        where = f"{self.host}\x00{self.port}\x00{self.vhost}\x00{self.stream}"
        digest = hashlib.blake2b(where.encode(), digest_size=4).hexdigest()
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", self.stream)[:80]
        return f"rabbitmq-{safe}-{digest}"

    def describe(self) -> str:
        return (
            f"host={self.host!r} port={self.port} vhost={self.vhost!r} "
            f"stream={self.stream!r} user={self.username!r}"
        )

    # -- writing ---------------------------------------------------------------

    def publish(self, records: Sequence[Outgoing]) -> list[int | None]:
        bodies = []
        for record in records:
            if record.value is None:
                raise InvalidMessage("A RabbitMQ stream takes no null records.")
            bodies.append(record.value)
        self._run(self._publish(bodies, time.monotonic() + self.timeout), None)
        return [None] * len(records)

    async def _publish(self, bodies: list[bytes], deadline: float) -> None:
        first = self._next_id
        self._next_id += len(bodies)
        unconfirmed = {first + n: body for n, body in enumerate(bodies)}
        while unconfirmed:
            link = await self._ensure_link()
            batch = link.expect(unconfirmed)
            try:
                for frame in _frames(unconfirmed, link.client.frame_max):
                    await link.client.send_publish_frame(frame)
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    await asyncio.wait(
                        [batch.settled, link.lost],
                        timeout=remaining,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
            finally:
                # Confirms that come later, if any, find nobody waiting.
                link.forget(unconfirmed)
            for publishing_id in set(unconfirmed) - batch.left:
                del unconfirmed[publishing_id]
            if batch.refused is not None:
                raise batch.refused
            if unconfirmed and time.monotonic() >= deadline:
                raise BackendUnavailable(
                    f"RabbitMQ did not confirm {len(unconfirmed)} of "
                    f"{len(bodies)} records within {self.timeout:g} s; they "
                    "may still be stored."
                )
            # Otherwise the connection dropped: the loop reconnects and
            # resends under the same ids, which the broker keeps once.

    def end_offsets(self) -> dict[int, int]:
        return {0: self._run(self._end(time.monotonic() + self.timeout))}

    async def _end(self, deadline: float) -> int:
        self._markers += 1
        key = f"{self.publisher_name}.e{self._markers:x}"
        marker = b'{"k":"e","i":"%s","n":""}' % key.encode()
        await self._publish([marker], deadline)
        assert self._end_lock is not None
        async with self._end_lock:
            link = await self._ensure_link()
            return await link.last_chunk_end(deadline - time.monotonic())

    # -- reading ---------------------------------------------------------------

    def reader(self, start: dict[int, int]) -> LogReader:
        reader = RabbitMQReader(self, start.get(0, 0))
        reader.subscribe()
        return reader

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the driver's loop within the timeout."""
        return self._run(coro)

    def soon(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start a coroutine on the driver's loop without waiting for it."""
        io = self._io
        if io is None or not io.submit(coro):
            coro.close()

    # -- closing ---------------------------------------------------------------

    def close(self) -> None:
        io, self._io = self._io, None
        if io is None:
            return
        link, self._link = self._link, None
        if link is not None:
            with suppress(BackendUnavailable):
                io.run(link.client.shut(), 2.0, self)
        io.close()


class _Link:
    """The publishing connection: confirms awaited, and the end probe."""

    def __init__(self, client: _Connection, stream: str) -> None:
        self.client = client
        self.stream = stream
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._batches: dict[int, _Batch] = {}
        self._end: asyncio.Future[int] | None = None
        client.on_lost = self._on_lost

    @property
    def alive(self) -> bool:
        return not self.lost.done() and self.client.is_connection_alive()

    async def listen(self) -> None:
        client = self.client
        client.add_handler(schema.PublishConfirm, self._on_confirm, name="confirm")
        client.add_handler(schema.PublishError, self._on_error, name="error")
        client.add_handler(schema.MetadataUpdate, self._on_metadata, name="metadata")
        client.add_handler(schema.Deliver, self._on_deliver, name=str(END_SUBSCRIPTION))
        await client.run_queue_listener_task(END_SUBSCRIPTION, self._on_deliver)

    def expect(self, ids: dict[int, bytes]) -> _Batch:
        batch = _Batch(set(ids))
        for pid in ids:
            self._batches[pid] = batch
        return batch

    def forget(self, ids: dict[int, bytes]) -> None:
        for pid in ids:
            self._batches.pop(pid, None)

    def _on_confirm(self, frame: schema.PublishConfirm) -> None:
        for pid in frame.publishing_ids:
            batch = self._batches.pop(pid, None)
            if batch is not None:
                batch.left.discard(pid)
                if not batch.left:
                    batch.settle()

    def _on_error(self, frame: schema.PublishError) -> None:
        if any(error.response_code in GONE for error in frame.errors):
            # The stream went away under the publisher (deleted, or its
            # member restarting): reconnect, which makes it again, and
            # resend under the same ids.
            self._on_lost()
            return
        for error in frame.errors:
            batch = self._batches.pop(error.publishing_id, None)
            if batch is not None and batch.refused is None:
                batch.refused = BackendUnavailable(
                    f"RabbitMQ refused a record for stream {self.stream!r}: "
                    f"{_code_name(error.response_code)}."
                )
                batch.settle()

    def _on_metadata(self, frame: schema.MetadataUpdate) -> None:
        if frame.metadata_info.stream == self.stream:
            # The stream was deleted or moved: the publisher is gone too.
            self._on_lost()

    def _on_lost(self) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    async def last_chunk_end(self, timeout: float) -> int:
        """Return the offset after the stream's last chunk."""
        loop = asyncio.get_running_loop()
        self._end = loop.create_future()
        await self.client.subscribe(
            self.stream,
            END_SUBSCRIPTION,
            schema.OffsetSpec(OffsetType.LAST),
            initial_credit=1,
        )
        waiting: list[asyncio.Future[Any]] = [self._end, self.lost]
        try:
            done, _ = await asyncio.wait(
                waiting,
                timeout=max(0.001, timeout),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if self._end not in done:
                raise BackendUnavailable(
                    f"RabbitMQ did not deliver the last chunk of {self.stream!r}."
                )
            return self._end.result()
        finally:
            self._end = None
            if self.alive:
                await self.client.unsubscribe(END_SUBSCRIPTION)

    def _on_deliver(self, frame: schema.Deliver) -> None:
        end = self._end
        if frame.subscription_id == END_SUBSCRIPTION and end and not end.done():
            end.set_result(frame.chunk_first_offset + frame.num_records)


class _Batch:
    """Publishing ids awaiting their confirms, and how they ended."""

    def __init__(self, ids: set[int]) -> None:
        self.left = ids
        self.refused: BackendUnavailable | None = None
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(self) -> None:
        if not self.settled.done():
            self.settled.set_result(None)


class RabbitMQReader(LogReader):
    """Tails the stream from an offset on a connection of its own."""

    def __init__(self, driver: RabbitMQDriver, start: int) -> None:
        self._driver = driver
        self._position = start
        self._chunks: queue.SimpleQueue[schema.Deliver | None] = queue.SimpleQueue()
        self._client: _Connection | None = None
        self._broken = False
        self._trouble = False

    def subscribe(self) -> None:
        """Subscribe at the reader's position on a new connection."""
        chunks: queue.SimpleQueue[schema.Deliver | None] = queue.SimpleQueue()
        self._client = self._driver.run(self._subscribe(self._position, chunks))
        self._chunks = chunks
        self._broken = False

    async def _subscribe(
        self, position: int, chunks: queue.SimpleQueue[schema.Deliver | None]
    ) -> _Connection:
        client = await self._driver.connect("chatmem-tail")
        try:

            def lost() -> None:
                self._broken = True
                chunks.put(None)

            def deliver(frame: schema.Deliver) -> None:
                if frame.subscription_id == TAIL_SUBSCRIPTION:
                    chunks.put(frame)

            def metadata(frame: schema.MetadataUpdate) -> None:
                if frame.metadata_info.stream == self._driver.stream:
                    lost()

            client.on_lost = lost
            client.add_handler(schema.MetadataUpdate, metadata, name="metadata")
            client.add_handler(schema.Deliver, deliver, name=str(TAIL_SUBSCRIPTION))
            await client.run_queue_listener_task(TAIL_SUBSCRIPTION, deliver)
            await client.subscribe(
                self._driver.stream,
                TAIL_SUBSCRIPTION,
                schema.OffsetSpecOffset(OffsetType.OFFSET, position),
                initial_credit=TAIL_CREDIT,
            )
        except BaseException:
            await client.shut()
            raise
        return client

    def read(self, timeout: float) -> list[LogRecord]:
        if self._broken:
            self._resubscribe()
        try:
            first = self._chunks.get(timeout=timeout)
        except queue.Empty:
            return []
        frames = [first]
        while len(frames) < TAIL_CREDIT:
            try:
                frames.append(self._chunks.get_nowait())
            except queue.Empty:
                break

        records: list[LogRecord] = []
        delivered = 0
        for frame in frames:
            if frame is None:
                continue
            delivered += 1
            offset = frame.chunk_first_offset
            for body in frame.get_messages():
                if offset >= self._position:
                    records.append(LogRecord(0, offset, None, body))
                offset += 1
            end = frame.chunk_first_offset + frame.num_records
            self._position = max(self._position, end)
        client = self._client
        if delivered and client is not None and not self._broken:
            self._driver.soon(client.credit(TAIL_SUBSCRIPTION, delivered))
        return records

    def _resubscribe(self) -> None:
        old, self._client = self._client, None
        if old is not None:
            self._driver.soon(old.shut())
        # Stays broken until a subscription succeeds, so the next read
        # tries again.
        self.subscribe()
        log.info("the stream tail reconnected at offset %d", self._position)
        self._trouble = True

    def positions(self) -> dict[int, int]:
        return {0: self._position}

    def troubled(self) -> bool:
        trouble, self._trouble = self._trouble, False
        return trouble

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with suppress(BackendUnavailable):
                self._driver.run(client.shut())


class _Connection(Client):
    """rstream's protocol client, told when its connection drops.

    ``shut`` closes at once, without the polite close handshake and its
    fixed pause, which would make every store's close take 0.2 s.
    """

    on_lost: Any = None

    async def start(self) -> None:
        await super().start()
        listener = self._tasks.get("listener")
        if listener is not None:
            listener.add_done_callback(lambda _: self._lost())

    def _lost(self) -> None:
        self._is_not_closed = False
        callback = self.on_lost
        if callback is not None:
            callback()

    async def shut(self) -> None:
        """Close the connection without a handshake."""
        self.on_lost = None
        self._is_not_closed = False
        for name in list(self._tasks):
            await self.stop_task(name)
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):
                await asyncio.wait_for(conn.close(), 1.0)


class _Loop:
    """A private asyncio loop in a daemon thread, run from caller threads."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="chatmem-rabbitmq-io", daemon=True
        )
        self.thread.start()

    def run(
        self, coro: Coroutine[Any, Any, T], timeout: float, driver: RabbitMQDriver
    ) -> T:
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(coro, timeout), self.loop
        )
        try:
            return future.result(timeout + 1.0)
        except (TimeoutError, concurrent.futures.TimeoutError) as exc:
            future.cancel()
            raise BackendUnavailable(
                f"RabbitMQ at {driver.host}:{driver.port} did not answer within "
                f"{timeout:g} s."
            ) from exc
        except (BackendUnavailable, InvalidMessage):
            raise
        except stream_errors.AuthenticationFailure as exc:
            raise BackendUnavailable(
                f"RabbitMQ refused the credentials of user {driver.username!r}."
            ) from exc
        except stream_errors.VirtualHostAccessFailure as exc:
            raise BackendUnavailable(
                f"RabbitMQ refused user {driver.username!r} access to vhost "
                f"{driver.vhost!r}."
            ) from exc
        except stream_errors.ServerError as exc:
            raise BackendUnavailable(
                f"RabbitMQ refused an operation on stream {driver.stream!r}: "
                f"{_code_name(exc)}."
            ) from exc
        except (OSError, ConnectionError, EOFError, ValueError) as exc:
            raise BackendUnavailable(
                f"Cannot reach RabbitMQ's stream port at {driver.host}:"
                f"{driver.port}: {type(exc).__name__}."
            ) from exc

    def submit(self, coro: Coroutine[Any, Any, Any]) -> bool:
        """Schedule a coroutine; return False if the loop is gone."""
        if self.loop.is_closed():
            return False
        try:
            asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:
            return False
        return True

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(2.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(2.0)
        if not self.thread.is_alive():
            self.loop.close()


def _ignore(info: object) -> None:
    """Take rstream's report of a dropped connection, and do nothing."""


async def _patiently(call: Callable[[], Awaitable[T]]) -> T:
    """Await ``call()``, again while the node answers a transient error.

    The caller's ``wait_for`` bounds the whole, so this needs no deadline.
    """
    while True:
        try:
            return await call()
        except TRANSIENT:
            await asyncio.sleep(0.1)


def _frames(ids: dict[int, bytes], frame_max: int) -> list[schema.Publish]:
    """Split messages into publish frames that fit the frame size."""
    frames: list[schema.Publish] = []
    messages: list[schema.Message] = []
    size = FRAME_OVERHEAD
    for publishing_id, body in ids.items():
        needed = MESSAGE_OVERHEAD + len(body)
        if messages and size + needed > frame_max:
            frames.append(schema.Publish(PUBLISHER_ID, messages))
            messages, size = [], FRAME_OVERHEAD
        messages.append(schema.Message(publishing_id, None, body))
        size += needed
    if messages:
        frames.append(schema.Publish(PUBLISHER_ID, messages))
    return frames


def _code_name(error: object) -> str:
    if isinstance(error, stream_errors.ServerError):
        name = type(error).__name__
        return name if name != "ServerError" else str(error) or name
    if isinstance(error, int):
        known = stream_errors.ServerError.from_code(error)
        if known is not stream_errors.ServerError:
            return f"{known.__name__} (code {error})"
        return f"code {error}"
    return str(error)


class RabbitMQMemory(LogMemory):
    """Chat memory on a RabbitMQ stream; see the module's reference card.

    >>> import chatmem
    >>> url = "rabbitmq://bot:secret@mq.internal/chat"
    >>> memory = chatmem.open(url)  # doctest: +SKIP
    """

    def __init__(
        self,
        stream: str,
        *,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        vhost: str = "/",
        username: str = "guest",
        password: str = "guest",
        segment_bytes: int | None = None,
        timeout: float = 10.0,
        index_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        _check_stream(stream)
        _check_port(port)
        if not isinstance(vhost, str) or not vhost:
            raise InvalidMessage("vhost must be a non-empty string.")
        if segment_bytes is not None and (
            isinstance(segment_bytes, bool)
            or not isinstance(segment_bytes, int)
            or segment_bytes <= 0
        ):
            raise InvalidMessage("segment_bytes must be a positive whole number.")
        arguments: dict[str, str] = {}
        retention = options.get("retention")
        if retention is not None and hasattr(retention, "total_seconds"):
            arguments["max-age"] = f"{max(1, int(retention.total_seconds()))}s"
        capacity = options.get("capacity_bytes")
        if isinstance(capacity, int) and not isinstance(capacity, bool):
            arguments["max-length-bytes"] = str(capacity)
        if segment_bytes is not None:
            arguments["stream-max-segment-size-bytes"] = str(segment_bytes)
        driver = RabbitMQDriver(
            host,
            port,
            vhost,
            str(username),
            str(password),
            stream,
            arguments=arguments,
            timeout=float(timeout) if isinstance(timeout, (int, float)) else 10.0,
        )
        super().__init__(driver, index_dir=index_dir, timeout=timeout, **options)
        self.stream = stream
        self.host = host
        self.port = port
        self.vhost = vhost

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RabbitMQMemory:
        """Open the stream a ``rabbitmq://user:password@host/stream`` URL names."""
        return cls(**{**parse_url(url), **options})


def parse_url(url: str) -> dict[str, Any]:
    """Return the connection parts of a ``rabbitmq://`` URL.

    The keys are ``host``, ``port``, ``vhost``, ``username``, ``password``
    and ``stream``. Raises :class:`InvalidMessage`, never showing the
    password, when the URL is malformed.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise InvalidMessage(
            "Not a valid rabbitmq URL (check the port): "
            "rabbitmq://user:password@host[:port][/vhost]/stream."
        ) from None
    if parts.scheme != "rabbitmq":
        raise InvalidMessage(f"Not a rabbitmq:// URL: {parts.scheme}://...")
    if parts.query or parts.fragment:
        raise InvalidMessage(
            "A rabbitmq URL takes no query or fragment; pass options as "
            "keyword arguments."
        )
    if not host:
        raise InvalidMessage(
            "A rabbitmq URL names its host: "
            "rabbitmq://user:password@host[:port][/vhost]/stream."
        )
    segments = parts.path.split("/")[1:] if parts.path else []
    if len(segments) == 1:
        vhost, stream = "/", segments[0]
    elif len(segments) == 2:
        vhost, stream = unquote(segments[0]), segments[1]
    else:
        raise InvalidMessage(
            "A rabbitmq URL ends with [/vhost]/stream; write a vhost's own "
            "slashes as %2F."
        )
    stream = unquote(stream)
    if not vhost:
        raise InvalidMessage(
            "The vhost in a rabbitmq URL is empty; leave it out for /."
        )
    _check_stream(stream)
    return {
        "host": host,
        "port": DEFAULT_PORT if port is None else port,
        "vhost": vhost,
        "username": unquote(parts.username) if parts.username else "guest",
        "password": unquote(parts.password) if parts.password is not None else "guest",
        "stream": stream,
    }


def _check_stream(stream: object) -> None:
    if (
        not isinstance(stream, str)
        or not stream
        or len(stream.encode()) > 255
        or stream.startswith("amq.")
        or any(ord(c) < 32 or ord(c) == 127 for c in stream)
    ):
        raise InvalidMessage(
            f"{stream!r} is not a stream name chatmem can use: 1 to 255 bytes "
            "of UTF-8 without control characters, not starting with 'amq.'."
        )


def _check_port(port: object) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidMessage(f"port must be a whole number from 1 to 65535: {port!r}.")
