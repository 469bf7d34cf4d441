"""Choose RabbitMQMemory's client by measurement: pika or rstream.

Both clients write the same seeded chat turns (chatmem's record encoding)
to a stream on the same broker in the same run, with publisher confirms:

- one synchronous confirm per message (pika's ``BlockingChannel`` in
  confirm mode, rstream's ``Producer.send_wait``);
- batches of 500 with one wait for all their confirms (pika's
  ``SelectConnection`` with asynchronous confirms, rstream's
  ``Producer.send_batch`` with a confirm callback);
- reading a 20,000-message stream from its first offset (pika:
  ``basic_consume`` with ``x-stream-offset: first``, ``basic_qos``
  prefetch 2,000 and manual acks every 200; rstream: ``subscribe`` at
  ``OffsetType.FIRST`` with 10 chunks of credit).

Cases run round-robin after a warm-up round. Usage::

    .venv/bin/python benchmarks/rabbitmq_clients.py --rounds 5

starts a private broker (as the tests do) unless ``--host`` names one.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
from _harness import (
    ChatWorkload,
    Figure,
    arguments,
    chunks,
    command_line,
    interleave,
    machine,
    private_server,
    ratio,
    table,
)
from pika.adapters.select_connection import SelectConnection
from rabbitmq_bench import read_from_first, send_confirmed
from rstream import (
    Consumer as StreamConsumer,
)
from rstream import (
    Producer,
)

from chatmem.message import Message, encode, from_micros

SINGLES = 200
BATCH = 500
BATCHES = 20
READ_COUNT = 20_000


def bodies(seed: int, count: int) -> list[bytes]:
    """Return ``count`` encoded chat turns of a seeded workload."""
    workload = ChatWorkload(seed=seed, count=count)
    out = []
    for index, turn in enumerate(workload.turns()):
        message = Message(
            id=f"w{seed}-{index}",
            session_id=turn.session_id,
            role=turn.role,
            content=turn.content,
            user_id=turn.user_id,
            created_at=from_micros(turn.created_us),
            metadata=turn.metadata,
        )
        out.append(encode(message))
    return out


# -- pika ------------------------------------------------------------------


class PikaCases:
    """pika over AMQP 0.9.1: one blocking channel, one select connection."""

    def __init__(self, params: pika.ConnectionParameters) -> None:
        self.params = params
        self.queue = f"bench-pika-{uuid.uuid4().hex[:8]}"
        self.read_queue = f"{self.queue}-read"
        self.blocking = pika.BlockingConnection(params)
        self.channel = self.blocking.channel()
        for name in (self.queue, self.read_queue):
            self.channel.queue_declare(
                name, durable=True, arguments={"x-queue-type": "stream"}
            )
        self.channel.confirm_delivery()
        self.props = pika.BasicProperties(delivery_mode=2)
        self.batches = _PikaBatches(params, self.queue)

    def fill_read_queue(self, items: list[bytes]) -> None:
        self.batches.publish(list(chunks(items, BATCH)), self.read_queue)

    def singles(self, items: list[bytes]) -> list[int]:
        clock, publish, times = time.perf_counter_ns, self.channel.basic_publish, []
        for body in items:
            begin = clock()
            publish("", self.queue, body, properties=self.props)
            times.append(clock() - begin)
        return times

    def batched(self, items: list[bytes]) -> list[int]:
        return self.batches.publish(list(chunks(items, BATCH)), self.queue)

    def read_all(self) -> list[int]:
        channel = self.blocking.channel()
        channel.basic_qos(prefetch_count=2000)
        seen = [0]

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            seen[0] += 1
            if seen[0] % 200 == 0:
                ch.basic_ack(method.delivery_tag, multiple=True)

        begin = time.perf_counter_ns()
        tag = channel.basic_consume(
            self.read_queue, on_message, arguments={"x-stream-offset": "first"}
        )
        while seen[0] < READ_COUNT:
            self.blocking.process_data_events(time_limit=0.05)
        elapsed = time.perf_counter_ns() - begin
        channel.basic_cancel(tag)
        channel.close()
        return [elapsed]

    def close(self) -> None:
        for name in (self.queue, self.read_queue):
            self.channel.queue_delete(name)
        self.blocking.close()
        self.batches.close()


class _PikaBatches:
    """Asynchronous confirms: publish a batch, wait until all are acked."""

    def __init__(self, params: pika.ConnectionParameters, queue: str) -> None:
        self.queue = queue
        self.props = pika.BasicProperties(delivery_mode=2)
        self.sent = 0
        self.acked: set[int] = set()
        self.acked_upto = 0
        self.target = 0
        self.times: list[int] = []
        self.pending: Iterator[list[bytes]] = iter(())
        self.begin = 0
        self.error: BaseException | None = None
        self.conn = SelectConnection(
            params,
            on_open_callback=self._opened,
            on_open_error_callback=self._failed,
            on_close_callback=self._closed,
        )
        self.conn.ioloop.start()
        if self.error is not None:
            raise self.error

    def _failed(self, conn: Any, error: BaseException) -> None:
        self.error = error
        conn.ioloop.stop()

    def _closed(self, conn: Any, reason: BaseException) -> None:
        # close() runs the loop until the connection is closed.
        conn.ioloop.stop()

    def _opened(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._channel)

    def _channel(self, channel: Any) -> None:
        self.channel = channel
        channel.confirm_delivery(
            self._confirmed, callback=lambda _: self.conn.ioloop.stop()
        )

    def publish(self, batches: list[list[bytes]], queue: str) -> list[int]:
        self.queue, self.times = queue, []
        self.pending = iter(batches)
        self.conn.ioloop.call_later(0, self._next)
        self.conn.ioloop.start()
        return self.times

    def _next(self) -> None:
        batch = next(self.pending, None)
        if batch is None:
            self.conn.ioloop.stop()
            return
        self.begin = time.perf_counter_ns()
        self.target = self.sent + len(batch)
        for body in batch:
            self.channel.basic_publish("", self.queue, body, properties=self.props)
        self.sent += len(batch)

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        if not isinstance(method, pika.spec.Basic.Ack):
            raise RuntimeError("the broker refused a message (basic.nack)")
        if method.multiple:
            self.acked_upto = max(self.acked_upto, method.delivery_tag)
        else:
            self.acked.add(method.delivery_tag)
        while self.acked_upto + 1 in self.acked:
            self.acked_upto += 1
            self.acked.discard(self.acked_upto)
        if self.acked_upto >= self.target:
            self.times.append(time.perf_counter_ns() - self.begin)
            self._next()

    def close(self) -> None:
        self.conn.close()
        self.conn.ioloop.start()


# -- rstream -----------------------------------------------------------------


class RstreamCases:
    """rstream over the stream protocol, driven from a private event loop."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.args = {"username": user, "password": password}
        self.host, self.port = host, port
        self.stream = f"bench-rstream-{uuid.uuid4().hex[:8]}"
        self.read_stream = f"{self.stream}-read"
        self.producer = Producer(host, port, **self.args)
        self.run(self.producer.start())
        for name in (self.stream, self.read_stream):
            self.run(self.producer.create_stream(name))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def fill_read_stream(self, items: list[bytes]) -> None:
        self.run(self._batched(items, self.read_stream))

    def singles(self, items: list[bytes]) -> list[int]:
        return list(self.run(self._singles(items)))

    async def _singles(self, items: list[bytes]) -> list[int]:
        clock, send, times = time.perf_counter_ns, self.producer.send_wait, []
        for body in items:
            begin = clock()
            await send(self.stream, body, publisher_name="bench-singles")
            times.append(clock() - begin)
        return times

    def batched(self, items: list[bytes]) -> list[int]:
        return list(self.run(self._batched(items, self.stream)))

    async def _batched(self, items: list[bytes], stream: str) -> list[int]:
        times = []
        for batch in chunks(items, BATCH):
            begin = time.perf_counter_ns()
            await send_confirmed(self.producer, stream, batch)
            times.append(time.perf_counter_ns() - begin)
        return times

    def read_all(self) -> list[int]:
        return list(self.run(self._read_all()))

    async def _read_all(self) -> list[int]:
        consumer = StreamConsumer(self.host, self.port, **self.args)
        return [await read_from_first(consumer, self.read_stream, READ_COUNT)]

    def close(self) -> None:
        for name in (self.stream, self.read_stream):
            self.run(self.producer.delete_stream(name))
        self.run(self.producer.close())
        self.loop.close()


# -- run ---------------------------------------------------------------------


def main() -> None:
    parser = arguments(__doc__, quick=None, out=False)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--host", help="use this broker instead of a private one")
    parser.add_argument("--stream-port", type=int, default=5552)
    parser.add_argument("--amqp-port", type=int, default=5672)
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")
    args = parser.parse_args()

    if args.host:
        report(args, args.host, args.stream_port, args.amqp_port)
    else:
        with private_server("rabbitmq") as server:
            report(args, server.host, server.stream_port, server.amqp_port)


def report(
    args: argparse.Namespace, host: str, stream_port: int, amqp_port: int
) -> None:
    credentials = pika.PlainCredentials(args.user, args.password)
    params = pika.ConnectionParameters(host, amqp_port, credentials=credentials)
    rounds = args.rounds
    per_round = SINGLES + BATCH * BATCHES
    items = bodies(args.seed, per_round * (rounds + 1) + READ_COUNT)
    reads, rest = items[:READ_COUNT], items[READ_COUNT:]

    def single(number: int) -> list[bytes]:
        begin = number * per_round
        return rest[begin : begin + SINGLES]

    def batch(number: int) -> list[bytes]:
        begin = number * per_round + SINGLES
        return rest[begin : begin + BATCH * BATCHES]

    pk = PikaCases(params)
    rs = RstreamCases(host, stream_port, args.user, args.password)
    try:
        pk.fill_read_queue(reads)
        rs.fill_read_stream(reads)
        cases: dict[str, Callable[[int], list[int]]] = {
            "pika confirm each": lambda n: pk.singles(single(n)),
            "rstream confirm each": lambda n: rs.singles(single(n)),
            "pika batch 500": lambda n: pk.batched(batch(n)),
            "rstream batch 500": lambda n: rs.batched(batch(n)),
            "pika read 20k": lambda n: pk.read_all(),
            "rstream read 20k": lambda n: rs.read_all(),
        }
        units = {
            "pika batch 500": BATCH,
            "rstream batch 500": BATCH,
            "pika read 20k": READ_COUNT,
            "rstream read 20k": READ_COUNT,
        }
        figures = interleave(cases, rounds, units=units)
    finally:
        pk.close()
        rs.close()
    print_report(figures, args)


def print_report(figures: dict[str, Figure], args: argparse.Namespace) -> None:
    pairs = [
        ("confirm each message", "pika confirm each", "rstream confirm each"),
        ("batches of 500", "pika batch 500", "rstream batch 500"),
        ("read 20,000 from first", "pika read 20k", "rstream read 20k"),
    ]
    rows = []
    for label, pika_name, rstream_name in pairs:
        p, r = figures[pika_name], figures[rstream_name]
        rows.append(
            [
                label,
                f"{p.rate:,.0f}",
                f"{r.rate:,.0f}",
                ratio(r.rate, p.rate),
                f"{p.median_us:,.0f} / {p.p99_us:,.0f}",
                f"{r.median_us:,.0f} / {r.p99_us:,.0f}",
                f"{p.reps} / {r.reps}",
            ]
        )
    headers = [
        "work",
        "pika msg/s",
        "rstream msg/s",
        "rstream / pika",
        "pika call us (median / p99)",
        "rstream call us (median / p99)",
        "calls",
    ]
    print(f"`{command_line()}`\n")
    print(f"{machine()}; seed {args.seed}, {args.rounds} rounds after 1 warm-up.\n")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
