"""Benchmark chatmem's asyncio faces: native beside the thread offload.

N tasks on one event loop each own a session pre-filled with 40 turns
and repeat, K times: ``add`` one message to it, then ``history(last=20)``
of it. Every system does exactly that work, on the same seeded turns,
in the same run, round-robin:

- chatmem native: ``chatmem.open_async(url)``, which serves these calls
  on the loop with the backend's asyncio client;
- chatmem offload: ``AsyncChatMemory(chatmem.open(url))``, every call in
  a worker thread (at most ``max_concurrency``, default 4, at once);
- the raw asyncio client doing the same writes and reads by hand, the
  baseline;
- a peer library where one speaks asyncio to the same server.

For Redis the raw baseline is redis.asyncio with, per message, one
``MULTI``/``EXEC`` holding what chatmem's function writes (the body in
the session's sorted set and in a hash by id, the time and user
indexes, the session's last use, a byte counter), ids from a client
counter; a read is one ``ZREVRANGE key 0 19`` with ``json.loads`` per
row. The peer is the OpenAI Agents SDK's ``RedisSession``
(``add_items``, ``get_items(limit=20)``), one per session.

For PostgreSQL, where chatmem's native face serves reads and sends
writes to its thread offload, the raw baseline is psycopg's
``AsyncConnectionPool`` (as many connections as chatmem's pool) on the
tables chatmem creates: one ``INSERT ... RETURNING seq`` per add and the
indexed ``SELECT ... ORDER BY seq DESC LIMIT 20`` in binary per read,
the statements of ``benchmarks/postgres_bench.py``. The peer is the
Agents SDK's ``SQLAlchemySession`` over asyncpg.

Figures: the median and p99 of each call as a task sees it (waits for
the pool or for a thread included), and the throughput of the whole
round (calls of both kinds per second of wall time), set beside the raw
client's. The servers are ones the script starts on loopback (those of
``redis_bench.py`` and ``postgres_bench.py``: Redis without persistence,
PostgreSQL with its defaults), or the ones at ``--redis`` and
``--postgres`` (a Redis database is flushed; PostgreSQL gets schemas
``abench_*``, dropped first). Run from the repository root::

    .venv/bin/python benchmarks/async_bench.py            # ~5 minutes
    .venv/bin/python benchmarks/async_bench.py --quick    # ~2 minutes
    .venv/bin/python benchmarks/async_bench.py --only redis

The report goes to ``benchmarks/results/async.md`` (``async-quick.md``
with ``--quick``) and to standard output.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis
import redis.asyncio
from _harness import (
    ChatWorkload,
    Figure,
    Turn,
    arguments,
    exit_on_sigterm,
    publish,
    report_head,
    settle,
    table,
)

import chatmem
from chatmem.aio import AsyncChatMemory

warnings.simplefilter("ignore")  # the peers' deprecation notices

from agents.extensions.memory import RedisSession, SQLAlchemySession  # noqa: E402
from postgres_bench import (  # noqa: E402
    RAW_HISTORY,
    RAW_INSERT,
    raw_row,
)
from postgres_bench import local_server as local_postgres  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402
from redis_bench import local_server as local_redis  # noqa: E402
from redis_bench import queue_writes  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICRO = timedelta(microseconds=1)
PREFILL = 40

# postgres_bench's statements, on this script's own schema.
PG_INSERT = RAW_INSERT.replace("raw.", "abench_raw.")
PG_HISTORY = RAW_HISTORY.replace("raw.", "abench_raw.")

NATIVE = "chatmem native"
OFFLOAD = "chatmem thread offload"
RAW = "raw asyncio client, same work"


@dataclass
class Plan:
    """How much to run: concurrency levels and calls per task."""

    levels: list[int]
    calls: int  # add + history pairs per round, spread over the tasks
    rounds: int
    seed: int = 20250106


FULL = Plan(levels=[1, 8, 64], calls=640, rounds=15)
QUICK = Plan(levels=[1, 8, 64], calls=320, rounds=5)


# -- the systems --------------------------------------------------------------


class System:
    """One system under test: an add and a history(last=20), awaited."""

    name = ""

    async def add(self, turn: Turn) -> None:
        raise NotImplementedError

    async def history(self, session: str) -> list[Any]:
        raise NotImplementedError

    async def close(self) -> None:
        """Release the system's connections."""


class ChatmemSystem(System):
    def __init__(self, name: str, memory: AsyncChatMemory) -> None:
        self.name = name
        self.memory = memory

    async def add(self, turn: Turn) -> None:
        await self.memory.add(
            turn.session_id,
            turn.role,
            turn.content,
            user_id=turn.user_id,
            metadata=turn.metadata,
            created_at=EPOCH + turn.created_us * MICRO,
        )

    async def history(self, session: str) -> list[Any]:
        return await self.memory.history(session, last=20)

    async def close(self) -> None:
        await self.memory.close()


class RawRedis(System):
    """What a developer writes with redis.asyncio alone for the same work."""

    name = "raw redis.asyncio, same writes"

    def __init__(self, url: str) -> None:
        self.client = redis.asyncio.Redis.from_url(url)
        self.ids = itertools.count(1)

    async def add(self, turn: Turn) -> None:
        pipe = self.client.pipeline(transaction=True)
        queue_writes(pipe, next(self.ids), turn)
        await pipe.execute()

    async def history(self, session: str) -> list[Any]:
        rows: list[Any] = await self.client.zrevrange(f"raw:h:{session}", 0, 19)
        found = [json.loads(row) for row in rows]
        found.reverse()
        return found

    async def close(self) -> None:
        await self.client.aclose()


def agents_item(turn: Turn) -> dict[str, Any]:
    """Return a turn as the Agents SDK's input item."""
    return {"role": "user" if turn.role == "user" else "assistant",
            "content": turn.content}  # fmt: skip


class AgentsSystem(System):
    """An Agents SDK session object per chat session, made on first use."""

    def __init__(self) -> None:
        self.sessions: dict[str, Any] = {}

    def make(self, session_id: str) -> Any:
        """Return a new session object for ``session_id``."""
        raise NotImplementedError

    def session(self, session_id: str) -> Any:
        found = self.sessions.get(session_id)
        if found is None:
            found = self.sessions[session_id] = self.make(session_id)
        return found

    async def add(self, turn: Turn) -> None:
        await self.session(turn.session_id).add_items([agents_item(turn)])

    async def history(self, session: str) -> list[Any]:
        found: list[Any] = await self.session(session).get_items(limit=20)
        return found


class AgentsRedis(AgentsSystem):
    """The Agents SDK's RedisSession, one per session, on one client."""

    name = "Agents SDK RedisSession"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.client = redis.asyncio.Redis.from_url(url)

    def make(self, session_id: str) -> RedisSession:
        return RedisSession(
            session_id, redis_client=self.client, key_prefix="agents:session"
        )

    async def close(self) -> None:
        await self.client.aclose()


class RawPostgres(System):
    """psycopg's asyncio pool on chatmem's tables, statements by hand."""

    name = "raw psycopg AsyncConnectionPool"

    def __init__(self, url: str, size: int) -> None:
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = (
            AsyncConnectionPool(
                url,
                kwargs={"autocommit": True},
                min_size=size,
                max_size=size,
                open=False,
            )
        )

    async def open(self) -> None:
        await self.pool.open(wait=True)

    async def add(self, turn: Turn) -> None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(PG_INSERT, raw_row(turn))
            await cursor.fetchone()

    async def history(self, session: str) -> list[Any]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(PG_HISTORY, ("", session), binary=True)
            rows = await cursor.fetchall()
        rows.reverse()
        return rows

    async def close(self) -> None:
        await self.pool.close()


class AgentsPostgres(AgentsSystem):
    """The Agents SDK's SQLAlchemySession over asyncpg, one per session."""

    name = "Agents SDK SQLAlchemySession"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.engine: AsyncEngine = create_async_engine(
            url.replace("postgresql://", "postgresql+asyncpg://", 1),
            connect_args={"server_settings": {"search_path": "abench_agents"}},
        )
        self.created = False

    def make(self, session_id: str) -> SQLAlchemySession:
        found = SQLAlchemySession(
            session_id, engine=self.engine, create_tables=not self.created
        )
        self.created = True
        return found

    async def close(self) -> None:
        await self.engine.dispose()


async def open_chatmem(url: str, **options: Any) -> list[System]:
    native = await chatmem.open_async(url, **options)
    if type(native) is AsyncChatMemory:
        sys.exit(f"{url} has no native asyncio face; nothing to compare.")
    offload = AsyncChatMemory(
        await asyncio.to_thread(
            chatmem.open, url, **{**options, "namespace": "offload"}
        )
    )
    return [ChatmemSystem(NATIVE, native), ChatmemSystem(OFFLOAD, offload)]


async def redis_systems(url: str) -> list[System]:
    with redis.Redis.from_url(url) as admin:
        admin.flushdb()
    return [
        *(await open_chatmem(url, namespace="native")),
        RawRedis(url),
        AgentsRedis(url),
    ]


async def postgres_systems(url: str) -> list[System]:
    with psycopg.connect(url, autocommit=True) as admin:
        for schema in ("abench_chatmem", "abench_raw", "abench_agents"):
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.execute("CREATE SCHEMA abench_agents")
    # The raw baseline writes into tables chatmem created, indexes and all.
    await asyncio.to_thread(lambda: chatmem.open(url, schema="abench_raw").close())
    systems = await open_chatmem(url, schema="abench_chatmem", namespace="native")
    pool_size = systems[0].memory.sync.pool_size  # type: ignore[attr-defined]
    raw = RawPostgres(url, pool_size)
    await raw.open()
    return [*systems, raw, AgentsPostgres(url)]


# -- the workload -------------------------------------------------------------


@dataclass
class Result:
    """The calls of one system at one concurrency level."""

    add: Figure
    history: Figure
    walls: list[float] = field(default_factory=list)  # seconds per round
    calls: int = 0  # calls of both kinds per round

    @property
    def throughput(self) -> float:
        """Calls per second of wall time, at the median round."""
        return self.calls / statistics.median(self.walls)


async def run_round(
    system: System, tasks: list[list[Turn]]
) -> tuple[list[int], list[int], float]:
    """Run one round: each task adds its turns and reads after each."""
    clock = time.perf_counter_ns
    adds: list[int] = []
    reads: list[int] = []

    async def task(turns: list[Turn]) -> None:
        for turn in turns:
            begin = clock()
            await system.add(turn)
            middle = clock()
            found = await system.history(turn.session_id)
            end = clock()
            if len(found) != 20:
                raise SystemExit(f"{system.name} read {len(found)} messages")
            adds.append(middle - begin)
            reads.append(end - middle)

    began = time.perf_counter()
    await asyncio.gather(*(task(turns) for turns in tasks))
    return adds, reads, time.perf_counter() - began


def session_turns(plan: Plan, sessions: int, each: int) -> list[list[Turn]]:
    """Return ``each`` seeded turns for each of ``sessions`` sessions.

    The workload's own sessions are shorter than a benchmark task's, so
    its turns are dealt out to one long session per task.
    """
    workload = ChatWorkload(seed=plan.seed, count=sessions * each)
    stream = iter(workload.turns())
    return [
        [
            next(stream)._replace(session_id=f"task-{n}", user_id=f"user-{n}")
            for _ in range(each)
        ]
        for n in range(sessions)
    ]


async def measure(systems: list[System], plan: Plan) -> dict[int, dict[str, Result]]:
    """Pre-fill every system, then time the rounds level by level."""
    most = max(plan.levels)
    per_task = {n: plan.calls // n for n in plan.levels}
    need = PREFILL + sum(per_task[n] * (plan.rounds + 1) for n in plan.levels)
    sessions = session_turns(plan, most, need)

    results: dict[int, dict[str, Result]] = {}
    try:
        for system in systems:
            for turns in sessions:
                for turn in turns[:PREFILL]:
                    await system.add(turn)
        settle()
        cursor = PREFILL
        for level in plan.levels:
            k = per_task[level]
            found = {s.name: Result(Figure(s.name), Figure(s.name)) for s in systems}
            for number in range(plan.rounds + 1):
                tasks = [turns[cursor : cursor + k] for turns in sessions[:level]]
                cursor += k
                for system in systems:
                    adds, reads, wall = await run_round(system, tasks)
                    if number == 0:
                        continue  # warm-up
                    result = found[system.name]
                    result.add.calls_ns.extend(adds)
                    result.history.calls_ns.extend(reads)
                    result.walls.append(wall)
                    result.calls = 2 * level * k
            results[level] = found
    finally:
        for system in systems:
            await system.close()
    return results


# -- the report ---------------------------------------------------------------

HEADERS = [
    "system",
    "add median us",
    "add p99 us",
    "history median us",
    "history p99 us",
    "calls/s",
    "throughput vs baseline",
]


def rows(found: dict[str, Result], baseline: str) -> list[list[str]]:
    base = found[baseline].throughput
    out = []
    for name, result in found.items():
        out.append(
            [
                name,
                f"{result.add.median_us:,.0f}",
                f"{result.add.p99_us:,.0f}",
                f"{result.history.median_us:,.0f}",
                f"{result.history.p99_us:,.0f}",
                f"{result.throughput:,.0f}",
                "1.00x (baseline)"
                if name == baseline
                else f"{result.throughput / base:.2f}x",
            ]
        )
    return out


BACKENDS: dict[str, tuple[str, Any, Callable[[str], Awaitable[list[System]]]]] = {
    "redis": ("Redis", local_redis, redis_systems),
    "postgres": ("PostgreSQL", local_postgres, postgres_systems),
}


def server_version(backend: str, url: str) -> str:
    if backend == "redis":
        with redis.Redis.from_url(url) as admin:
            return f"Redis {admin.info('server')['redis_version']}"
    with psycopg.connect(url) as admin:
        row = admin.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"


async def run_backend(
    backend: str, url: str, plan: Plan
) -> dict[int, dict[str, Result]]:
    systems = await BACKENDS[backend][2](url)
    return await measure(systems, plan)


def section(
    backend: str, version: str, results: dict[int, dict[str, Result]]
) -> list[str]:
    title = BACKENDS[backend][0]
    out = [f"## {title} ({version})", ""]
    if backend == "postgres":
        out += [
            "chatmem's native face serves history natively; its adds go to"
            " the thread offload (see chatmem.backends._postgres_async).",
            "",
        ]
    for level, found in results.items():
        native = found[NATIVE].throughput
        offload = found[OFFLOAD].throughput
        raw = next(name for name in found if name.startswith("raw"))
        out += [
            f"### {level} task{'s' if level > 1 else ''} at once",
            "",
            f"Native over offload: {native / offload:.2f}x the throughput;"
            f" history median {found[NATIVE].history.median_us:,.0f} us native,"
            f" {found[OFFLOAD].history.median_us:,.0f} us offloaded.",
            "",
            table(HEADERS, rows(found, raw)),
            "",
        ]
    return out


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--redis", help="Redis URL (its database is flushed)")
    parser.add_argument("--postgres", help="PostgreSQL URL")
    parser.add_argument("--only", choices=sorted(BACKENDS))
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    # Stop the servers this script started even when it is terminated.
    exit_on_sigterm()

    backends = [args.only] if args.only else list(BACKENDS)
    sections: list[str] = []
    started = time.perf_counter()
    for backend in backends:
        given = getattr(args, backend)
        start_server = BACKENDS[backend][1]
        with nullcontext(given) if given else start_server() as url:
            version = server_version(backend, url)
            results = asyncio.run(run_backend(backend, url, plan))
        sections += section(backend, version, results)
    elapsed = time.perf_counter() - started

    out = [
        *report_head(
            "asyncio: chatmem's native faces beside the thread offload",
            "Servers on loopback.",
        ),
        f"N tasks on one event loop each own a session pre-filled with"
        f" {PREFILL} turns and repeat add + history(last=20) on it;"
        f" {plan.calls} pairs per round spread over the tasks,"
        f" {plan.rounds} timed rounds after one warm-up, systems"
        f" round-robin within each round; ran in {elapsed:.0f} s. Times are"
        " per call as a task sees it; calls/s counts both kinds over the"
        " median round's wall time; the ratio is the system's throughput"
        " over the raw client's (above 1 is faster).",
        "",
        *sections,
    ]
    report = "\n".join(out)
    publish(report, args.out, "async-quick.md" if args.quick else "async.md")


if __name__ == "__main__":
    main()
