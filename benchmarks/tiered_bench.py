"""Benchmark the hot tier: each backend with and without ``cache_bytes``.

One seeded chat workload (``_harness.ChatWorkload``) is stored once per
backend; the same store is then opened three ways and read round-robin
in one process:

- ``bare``: the backend as ``chatmem.open(url)`` gives it, the baseline;
- ``tier, checked``: ``cache_bytes`` set, every cached read checked
  against the backend (the default);
- ``tier, stale <= 1 s``: ``cache_staleness=timedelta(seconds=1)``, a
  cached session serves without a check for up to a second.

Log backends (Kafka, RabbitMQ Streams) need no check, so they run ``bare``
and ``tier`` only. For scale, each table also has the raw client reading
the newest 20 rows itself where one applies (``sqlite3``, redis-py,
psycopg), as a careful developer would without chatmem.

Then the history reads run once more, on fresh handles, while another
instance of the application adds one turn per ten reads to sessions drawn
like the reads: the bare backend and the (checked) tier, round-robin
between themselves, each ratio against the bare backend under the same
writer. These run after the quiet cases, so that the writer's commits do
not reach those.

Reads follow a hot-minority workload: 10 % of the sessions receive 90 % of
the reads (``history(last=20)`` of a session, ``get`` of one of its
newest messages), the rest spread over the other sessions; every case of
a round reads the same seeded targets. The tier's budget (``--cache-mib``,
default 16) holds the hot sessions' newest messages with room to spare.

Servers are started on loopback by ``tests/servers.py``, as the tests do
(Redis with ``appendfsync always``, which slows the pre-fill only). Run
from the repository root::

    .venv/bin/python benchmarks/tiered_bench.py            # ~5 minutes
    .venv/bin/python benchmarks/tiered_bench.py --quick    # ~2 minutes

The report goes to ``benchmarks/results/tiered.md`` (``tiered-quick.md``
with ``--quick``) and to standard output.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from _harness import (
    ChatWorkload,
    Figure,
    arguments,
    command_line,
    interleave,
    machine,
    private_server,
    publish,
    ratio,
    settle,
    store_turns,
    table,
    timed,
)

import chatmem
from chatmem import BaseChatMessageMemory

BATCH = 500
HOT_SHARE = 0.10
HOT_READS = 0.90
STALENESS = timedelta(seconds=1)
WRITE_EVERY = 10
BUSY = f"another writer adds 1 per {WRITE_EVERY} reads"


@dataclass
class Plan:
    """How much to store and how long to read."""

    messages: int
    rounds: int
    reads: int  # per case and round


FULL = Plan(messages=60_000, rounds=12, reads=400)
QUICK = Plan(messages=15_000, rounds=5, reads=200)


# -- the stores ------------------------------------------------------------


@contextlib.contextmanager
def backend_url(name: str, folder: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield the URL and options of a fresh, empty store of a backend."""
    if name == "sqlite":
        yield f"sqlite:///{folder / 'chat.db'}", {}
        return
    with private_server(name) as server:
        url = server.url
        if name in ("kafka", "rabbitmq"):
            url = f"{url.rstrip('/')}/tiered-bench"
        yield url, {}


def fill(store: BaseChatMessageMemory, plan: Plan, seed: int) -> ChatWorkload:
    """Store the workload's turns; return it (sessions and samples)."""
    workload = ChatWorkload(seed=seed, count=plan.messages)
    store_turns(store, workload.turns(), BATCH)
    return workload


def targets(sessions: list[str], plan: Plan, seed: int) -> Callable[[int], list[str]]:
    """Return the sessions to read in each round: a hot minority first."""
    rng = random.Random(seed)
    shuffled = sessions[:]
    rng.shuffle(shuffled)
    cut = max(1, int(len(shuffled) * HOT_SHARE))
    hot, cold = shuffled[:cut], shuffled[cut:]

    def pick(round_number: int) -> list[str]:
        draw = random.Random(seed * 1000 + round_number)
        return [
            draw.choice(hot) if draw.random() < HOT_READS else draw.choice(cold)
            for _ in range(plan.reads)
        ]

    return pick


# -- raw clients, for scale --------------------------------------------------


def raw_reader(name: str, url: str) -> Callable[[str], object] | None:
    """Return the raw client reading a session's newest 20 rows, if any."""
    if name == "sqlite":
        path = url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, check_same_thread=False)
        sql = (
            "SELECT seq, session, user_id, role, created_at, content, metadata"
            " FROM messages INDEXED BY messages_by_session"
            " WHERE ns = '' AND session = ? ORDER BY seq DESC LIMIT 20"
        )
        return lambda session: conn.execute(sql, (session,)).fetchall()
    if name == "redis":
        import json

        import redis

        from chatmem.backends.redis import key_part

        client = redis.Redis.from_url(url)

        def newest(session: str) -> list[Any]:
            key = f"chatmem::h:{key_part(session)}"
            bodies: list[bytes]
            bodies = client.zrevrange(key, 0, 19)  # type: ignore[assignment]
            return [json.loads(body) for body in bodies]

        return newest
    if name == "postgres":
        import psycopg

        conn_pg = psycopg.connect(url.split("?")[0], autocommit=True)
        sql_pg = (
            "SELECT seq, session, user_id, role, created_at, content, metadata"
            " FROM chatmem_messages WHERE ns = '' AND session = %s"
            " ORDER BY seq DESC LIMIT 20"
        )
        return lambda session: conn_pg.execute(sql_pg, (session,)).fetchall()
    return None


# -- one backend -------------------------------------------------------------


def run_backend(name: str, plan: Plan, cache_bytes: int, seed: int) -> str:
    """Time one backend's cases; return its section of the report."""
    with (
        tempfile.TemporaryDirectory() as folder,
        backend_url(name, Path(folder)) as (url, options),
    ):
        began = time.monotonic()
        writer = chatmem.open(url, **options)
        workload = fill(writer, plan, seed)
        sessions = workload.sessions
        filled = time.monotonic() - began
        if hasattr(writer, "sync"):
            writer.sync()

        stores: dict[str, BaseChatMessageMemory] = {"bare": writer}
        log = name in ("kafka", "rabbitmq")
        if log:
            stores["tier"] = chatmem.open(url, cache_bytes=cache_bytes, **options)
        else:
            stores["tier, checked"] = chatmem.open(
                url, cache_bytes=cache_bytes, **options
            )
            stores[f"tier, stale <= {STALENESS.seconds} s"] = chatmem.open(
                url, cache_bytes=cache_bytes, cache_staleness=STALENESS, **options
            )
        # Another instance of the application writing while the reads run:
        # one turn per WRITE_EVERY reads, to sessions drawn like the reads.
        other = chatmem.open(url, **options)
        busy_stores = {
            f"bare, {BUSY}": chatmem.open(url, **options),
            f"{'tier' if log else 'tier, checked'}, {BUSY}": chatmem.open(
                url, cache_bytes=cache_bytes, **options
            ),
        }
        for store in [*stores.values(), *busy_stores.values()]:
            if hasattr(store, "sync"):
                store.sync()
        settle()

        pick = targets(sessions, plan, seed)
        newest: dict[str, list[str]] = {}

        def ids_of(round_number: int) -> list[str]:
            chosen = []
            draw = random.Random(seed * 7 + round_number)
            for session in pick(round_number):
                if session not in newest:
                    found = writer.history(session, last=20)
                    newest[session] = [m.id or "" for m in found]
                chosen.append(draw.choice(newest[session]))
            return chosen

        history: dict[str, Callable[[int], list[int]]] = {}
        get: dict[str, Callable[[int], list[int]]] = {}
        for label, store in stores.items():
            history[label] = _history_case(store, pick)
            get[label] = _get_case(store, ids_of)
        raw = raw_reader(name, url)
        if raw is not None:
            history["raw client"] = _raw_case(raw, pick)
        busy: dict[str, Callable[[int], list[int]]] = {
            label: _busy_case(store, other, pick)
            for label, store in busy_stores.items()
        }
        stores.update(busy_stores)

        # The quiet cases first, so that the busy writer's commits do not
        # reach them; then the busy ones, round-robin among themselves.
        before = _hits(stores)
        history_figures = interleave(history, plan.rounds)
        after_history = _hits(stores)
        get_figures = interleave(get, plan.rounds)
        after_get = _hits(stores)
        history_figures.update(interleave(busy, plan.rounds))
        after_busy = _hits(stores)
        for store in [*stores.values(), other]:
            store.close()

    lines = [
        f"### {name}",
        "",
        f"{plan.messages:,} messages in {len(sessions):,} sessions, stored in "
        f"{filled:.0f} s; reads: {plan.rounds} rounds of {plan.reads} per "
        f"case after one warm-up round, {HOT_SHARE:.0%} of the sessions "
        f"take {HOT_READS:.0%} of them.",
        "",
    ]
    for title, figures, start, end in (
        ("history(last=20)", history_figures, before, after_history),
        ("get(id)", get_figures, after_history, after_get),
    ):
        share = {label: _share(start[label], end[label]) for label in end}
        if title.startswith("history"):
            for label in busy_stores:
                if label in after_busy:
                    share[label] = _share(after_get[label], after_busy[label])
        lines += [f"{title}:", "", _table(figures, share), ""]
    return "\n".join(lines)


def _hits(stores: dict[str, BaseChatMessageMemory]) -> dict[str, tuple[int, int]]:
    """Return each tiered store's (hits, misses) so far."""
    counts = {}
    for label, store in stores.items():
        tier = store.stats().hot_tier
        if tier is not None:
            counts[label] = (tier.hits, tier.misses)
    return counts


def _share(start: tuple[int, int], end: tuple[int, int]) -> float:
    hits, misses = end[0] - start[0], end[1] - start[1]
    return hits / (hits + misses) if hits + misses else 0.0


def _history_case(
    store: BaseChatMessageMemory, pick: Callable[[int], list[str]]
) -> Callable[[int], list[int]]:
    return lambda n: timed(lambda s: store.history(s, last=20), pick(n))


def _busy_case(
    store: BaseChatMessageMemory,
    other: BaseChatMessageMemory,
    pick: Callable[[int], list[str]],
) -> Callable[[int], list[int]]:
    def case(round_number: int) -> list[int]:
        sessions = pick(round_number)
        written = pick(round_number + 100_000)
        clock = time.perf_counter_ns
        elapsed = []
        for index, session in enumerate(sessions):
            if index % WRITE_EVERY == 0:
                other.add(written[index], "user", "a turn from elsewhere")
            begin = clock()
            store.history(session, last=20)
            elapsed.append(clock() - begin)
        return elapsed

    return case


def _raw_case(
    raw: Callable[[str], object], pick: Callable[[int], list[str]]
) -> Callable[[int], list[int]]:
    return lambda n: timed(raw, pick(n))


def _get_case(
    store: BaseChatMessageMemory, ids_of: Callable[[int], list[str]]
) -> Callable[[int], list[int]]:
    return lambda n: timed(store.get, ids_of(n))


def _table(figures: dict[str, Figure], hit_share: dict[str, float]) -> str:
    rows = []
    for label, figure in figures.items():
        # A busy case stands beside the bare backend read while the same
        # writer is busy.
        bare = figures[f"bare, {BUSY}" if BUSY in label else "bare"]
        share = hit_share.get(label)
        rows.append(
            [
                label,
                f"{figure.median_us:.1f}",
                f"{figure.p99_us:.1f}",
                ratio(bare.median_us, figure.median_us),
                ratio(bare.p99_us, figure.p99_us),
                "-" if share is None else f"{share:.0%}",
                f"{figure.reps:,}",
            ]
        )
    return table(
        [
            "case",
            "median us",
            "p99 us",
            "speed-up (median)",
            "speed-up (p99)",
            "tier hits",
            "calls",
        ],
        rows,
    )


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument(
        "--backends",
        default="sqlite,redis,postgres,kafka,rabbitmq",
        help="comma-separated backends (default: every persistent one)",
    )
    parser.add_argument("--cache-mib", type=int, default=16)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    cache_bytes = args.cache_mib << 20

    sections = []
    for name in args.backends.split(","):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        sections.append(run_backend(name, plan, cache_bytes, args.seed))

    report = "\n".join(
        [
            "# Hot tier: each backend with and without cache_bytes",
            "",
            "```",
            command_line(),
            "```",
            "",
            machine() + ".",
            f"Tier budget {args.cache_mib} MiB. Speed-up is the bare "
            "backend's time divided by the case's, from the same run "
            "(above 1.00x the case is faster). Medians and p99 in "
            "microseconds per call.",
            "",
            *sections,
        ]
    )
    publish(report + "\n", args.out, "tiered-quick.md" if args.quick else "tiered.md")


if __name__ == "__main__":
    main()
