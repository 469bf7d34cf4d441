"""Measure RabbitMQMemory beside the raw rstream client on the same broker.

Every case runs round-robin with its baseline in the same run, on the
same seeded chat turns (chatmem's record encoding for the raw client):

- one write at a time: chatmem ``add`` (confirm, then read back by the
  store's tail into the index) beside rstream ``Producer.send_wait`` (the
  same confirm mode, nothing read back) and beside ``send_wait`` followed
  by waiting until a raw consumer of the stream has received the message
  (the same work as chatmem's read-your-writes);
- batches of 500: chatmem ``add_messages`` beside ``Producer.send_batch``
  with one wait for all 500 confirms, and the same followed by waiting for
  a raw consumer to receive all 500;
- ``history(last=20)`` from chatmem's index beside the raw client's only
  way to answer it: read the stream from its first offset and keep the
  session's last 20;
- rebuild: opening a store on the filled stream (``index_dir=None``, so
  the whole stream is replayed) beside a raw consumer reading the same
  stream from its first offset.

Usage::

    .venv/bin/python benchmarks/rabbitmq_bench.py --rounds 3

starts a private broker (as the tests do) unless ``--host`` names one.
The report goes to ``benchmarks/results/rabbitmq.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from _harness import (
    ChatWorkload,
    Figure,
    arguments,
    chatmem_message,
    chunks,
    command_line,
    interleave,
    machine,
    private_server,
    publish,
    ratio,
    table,
    timed,
)
from rstream import Consumer, ConsumerOffsetSpecification, OffsetType, Producer

import chatmem
from chatmem import Message
from chatmem.message import encode

SINGLES = 200
BATCH = 500
BATCHES = 10
HISTORY_CALLS = 200


def messages(seed: int, count: int) -> list[Message]:
    """Return ``count`` chat turns of a seeded workload."""
    workload = ChatWorkload(seed=seed, count=count)
    return [chatmem_message(turn) for turn in workload.turns()]


async def send_confirmed(producer: Producer, stream: str, batch: list[bytes]) -> None:
    """Publish ``batch`` with ``send_batch``; return once all are confirmed."""
    done = asyncio.Event()
    left = [len(batch)]

    def confirmed(status: Any) -> None:
        if not status.is_confirmed:
            raise RuntimeError("the broker refused a message")
        left[0] -= 1
        if left[0] == 0:
            done.set()

    await producer.send_batch(
        stream, batch, publisher_name="bench-batches", on_publish_confirm=confirmed
    )
    await done.wait()


async def read_from_first(
    consumer: Consumer,
    stream: str,
    count: int,
    keep: Callable[[bytes], None] | None = None,
) -> int:
    """Read ``count`` records of ``stream`` from its first; return ns taken.

    The time includes the consumer's connection; ``keep`` sees each body.
    The consumer is closed afterwards, outside the time.
    """
    done = asyncio.Event()
    seen = [0]

    def on_message(body: bytes, context: Any) -> None:
        if keep is not None:
            keep(body)
        seen[0] += 1
        if seen[0] >= count:
            done.set()

    begin = time.perf_counter_ns()
    await consumer.start()
    await consumer.subscribe(
        stream,
        on_message,
        offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST),
        initial_credit=10,
    )
    await done.wait()
    elapsed = time.perf_counter_ns() - begin
    await consumer.close()
    return elapsed


class Raw:
    """The raw rstream client on its own streams, from a private loop."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.host, self.port = host, port
        self.credentials = {"username": user, "password": password}
        self.stream = f"bench-raw-{uuid.uuid4().hex[:8]}"
        self.producer = Producer(host, port, **self.credentials)
        self.run(self.producer.start())
        self.run(self.producer.create_stream(self.stream))
        self.received = 0
        self.arrived = asyncio.Event()
        self.wanted = 0
        self.consumer = Consumer(host, port, **self.credentials)
        self.run(self._subscribe())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _subscribe(self) -> None:
        await self.consumer.start()
        await self.consumer.subscribe(
            self.stream,
            self._on_message,
            offset_specification=ConsumerOffsetSpecification(OffsetType.NEXT),
        )

    def _on_message(self, body: bytes, context: Any) -> None:
        self.received += 1
        if self.received >= self.wanted:
            self.arrived.set()

    async def _wait_received(self, count: int) -> None:
        self.wanted = count
        while self.received < count:
            self.arrived.clear()
            await self.arrived.wait()

    def singles(self, bodies: list[bytes], read_back: bool) -> list[int]:
        return list(self.run(self._singles(bodies, read_back)))

    async def _singles(self, bodies: list[bytes], read_back: bool) -> list[int]:
        clock, send, times = time.perf_counter_ns, self.producer.send_wait, []
        for body in bodies:
            begin = clock()
            await send(self.stream, body, publisher_name="bench-singles")
            self.wanted += 1
            if read_back:
                await self._wait_received(self.wanted)
            times.append(clock() - begin)
        await self._wait_received(self.wanted)
        return times

    def batches(self, batches: list[list[bytes]], read_back: bool) -> list[int]:
        return list(self.run(self._batches(batches, read_back)))

    async def _batches(self, batches: list[list[bytes]], read_back: bool) -> list[int]:
        times = []
        for batch in batches:
            begin = time.perf_counter_ns()
            await send_confirmed(self.producer, self.stream, batch)
            self.wanted += len(batch)
            if read_back:
                await self._wait_received(self.wanted)
            times.append(time.perf_counter_ns() - begin)
        await self._wait_received(self.wanted)
        return times

    def read_all(self, stream: str, count: int, keep: Callable[[bytes], None]) -> int:
        """Read ``count`` records of ``stream`` from its first; return ns."""
        return int(self.run(self._read_all(stream, count, keep)))

    async def _read_all(
        self, stream: str, count: int, keep: Callable[[bytes], None]
    ) -> int:
        consumer = Consumer(self.host, self.port, **self.credentials)
        return await read_from_first(consumer, stream, count, keep)

    def close(self) -> None:
        self.run(self.consumer.close())
        self.run(self.producer.delete_stream(self.stream))
        self.run(self.producer.close())
        self.loop.close()


def main() -> None:
    parser = arguments(__doc__, quick=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stored", type=int, default=20_000)
    parser.add_argument("--host", help="use this broker instead of a private one")
    parser.add_argument("--port", type=int, default=5552)
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")
    args = parser.parse_args()

    if args.host:
        report = run(args, args.host, args.port)
    else:
        with private_server("rabbitmq") as server:
            report = run(args, server.host, server.stream_port)
    publish(report, args.out, "rabbitmq.md")


def run(args: argparse.Namespace, host: str, port: int) -> str:
    rounds = args.rounds
    per_round = SINGLES + BATCH * BATCHES
    # Two write cases per client (plain and read back) take turns alike.
    total = args.stored + 2 * per_round * (rounds + 1)
    turns = messages(args.seed, total)
    stored, rest = turns[: args.stored], turns[args.stored :]
    # One stream to read and rebuild, filled once; the write cases go to
    # another, so the rebuilt stream does not grow from round to round.
    base = f"rabbitmq://{args.user}:{args.password}@{host}:{port}/"
    url = f"{base}bench-chatmem-{uuid.uuid4().hex[:8]}"
    writes_url = f"{base}bench-chatmem-writes-{uuid.uuid4().hex[:8]}"

    def share(number: int, which: int) -> list[Message]:
        begin = (2 * number + which) * per_round
        return rest[begin : begin + per_round]

    raw = Raw(host, port, args.user, args.password)
    memory = chatmem.open(url, timeout=30)
    writer = chatmem.open(writes_url, timeout=30)
    try:
        # The store to read from and rebuild: args.stored turns.
        for part in chunks(stored, BATCH):
            memory.add_messages(part)
        stream_records = memory.applied_records
        sessions = sorted({m.session_id for m in stored})
        picks = random.Random(args.seed).choices(sessions, k=HISTORY_CALLS)

        add = writer.add

        def add_message(m: Message) -> None:
            add(
                m.session_id,
                m.role,
                m.content,
                user_id=m.user_id,
                metadata=m.metadata,
                created_at=m.created_at,
            )

        def chatmem_singles(n: int, which: int) -> list[int]:
            return timed(add_message, share(n, which)[:SINGLES])

        def chatmem_batches(n: int, which: int) -> list[int]:
            batches = chunks(share(n, which)[SINGLES:], BATCH)
            return timed(writer.add_messages, list(batches))

        def bodies(items: list[Message]) -> list[bytes]:
            return [encode(m) for m in items]

        def raw_singles(n: int, which: int, read_back: bool) -> list[int]:
            return raw.singles(bodies(share(n, which)[:SINGLES]), read_back)

        def raw_batches(n: int, which: int, read_back: bool) -> list[int]:
            items = bodies(share(n, which)[SINGLES:])
            return raw.batches(list(chunks(items, BATCH)), read_back)

        def history(n: int) -> list[int]:
            return timed(lambda session: memory.history(session, last=20), picks)

        stream = url.rsplit("/", 1)[1]

        def raw_history(n: int) -> list[int]:
            wanted = picks[n % len(picks)].encode()
            kept: list[bytes] = []

            def keep(body: bytes) -> None:
                if wanted in body:
                    kept.append(body)
                    del kept[:-20]

            return [raw.read_all(stream, stream_records, keep)]

        def rebuild(n: int) -> list[int]:
            began = time.perf_counter_ns()
            with chatmem.open(url, timeout=60) as again:
                elapsed = time.perf_counter_ns() - began
                if again.count() < len(stored):
                    raise RuntimeError("the rebuilt index lacks messages")
            return [elapsed]

        def raw_rebuild(n: int) -> list[int]:
            return [raw.read_all(stream, stream_records, lambda body: None)]

        cases: dict[str, Callable[[int], list[int]]] = {
            "chatmem add": lambda n: chatmem_singles(n, 0),
            "raw send_wait": lambda n: raw_singles(n, 0, False),
            "raw send_wait + read back": lambda n: raw_singles(n, 1, True),
            "chatmem add_messages 500": lambda n: chatmem_batches(n, 1),
            "raw send_batch 500": lambda n: raw_batches(n, 0, False),
            "raw send_batch 500 + read back": lambda n: raw_batches(n, 1, True),
            "chatmem history(last=20)": history,
            "raw read stream for last 20": raw_history,
            "chatmem rebuild": rebuild,
            "raw read whole stream": raw_rebuild,
        }
        units = {
            "chatmem add_messages 500": BATCH,
            "raw send_batch 500": BATCH,
            "raw send_batch 500 + read back": BATCH,
            "chatmem rebuild": stream_records,
            "raw read whole stream": stream_records,
        }
        figures = interleave(cases, rounds, units=units)
    finally:
        memory.close()
        writer.close()
        raw.close()
    return render(figures, args, stream_records)


def render(figures: dict[str, Figure], args: argparse.Namespace, records: int) -> str:
    def row(label: str, name: str, base: str, unit: str) -> list[str]:
        subject, baseline = figures[name], figures[base]
        return [
            label,
            name,
            f"{subject.rate:,.0f}",
            base,
            f"{baseline.rate:,.0f}",
            ratio(subject.rate, baseline.rate),
            f"{subject.median_us:,.0f} / {subject.p99_us:,.0f}",
            f"{baseline.median_us:,.0f} / {baseline.p99_us:,.0f}",
            unit,
        ]

    rows = [
        row("write one", "chatmem add", "raw send_wait", "msg/s"),
        row("write one", "chatmem add", "raw send_wait + read back", "msg/s"),
        row("batch of 500", "chatmem add_messages 500", "raw send_batch 500", "msg/s"),
        row(
            "batch of 500",
            "chatmem add_messages 500",
            "raw send_batch 500 + read back",
            "msg/s",
        ),
        row(
            "last 20 of a session",
            "chatmem history(last=20)",
            "raw read stream for last 20",
            "calls/s",
        ),
        row("rebuild", "chatmem rebuild", "raw read whole stream", "records/s"),
    ]
    headers = [
        "work",
        "chatmem",
        "rate",
        "baseline",
        "rate",
        "chatmem / baseline",
        "chatmem us (median / p99)",
        "baseline us (median / p99)",
        "unit",
    ]
    calls = ", ".join(f"{f.name} {f.reps}" for f in figures.values())
    return (
        f"`{command_line()}`\n\n"
        f"{machine()}; seed {args.seed}, {args.rounds} rounds after 1 warm-up; "
        f"{args.stored:,} messages stored before timing ({records:,} stream "
        f"records with the batches' commit records and markers).\n\n"
        f"{table(headers, rows)}\n\n"
        f"Timed calls: {calls}.\n"
    )


if __name__ == "__main__":
    main()
