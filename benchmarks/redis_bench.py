"""Benchmark chatmem's redis:// store against raw redis-py and its peers.

Every system gets the same seeded chat workload (``_harness.ChatWorkload``)
pre-filled into its own keys of one Redis database, then the cases run
round-robin in one process against that one server:

- ``add`` one message at a time;
- ``add_messages`` of 100 messages of one session, atomically;
- ``history(last=20)`` of a random session, and ``get`` by id.

Baselines, on the same data and the same server:

- raw redis-py writing what chatmem writes, as a careful developer would
  without Lua: per message one ``MULTI``/``EXEC`` round trip holding the
  body in the session's sorted set, the body in a hash by id (for get),
  the time and user indexes, the session's last use and a byte counter;
  ids come from a counter in the client, which only one process may use.
  Batches are one ``MULTI``/``EXEC`` pipeline of the same commands. Reads
  are the single ``ZREVRANGE key 0 19`` and one ``HGET``, bodies decoded
  with ``json.loads``;
- raw redis-py with a bare ``RPUSH`` of one JSON body per message and no
  index, shown for scale: the least any write can cost;
- LangChain's ``RedisChatMessageHistory`` (langchain-community; one
  ``LPUSH`` per message, a read loads the whole list and slices it), one
  object whose ``session_id`` is set per call so that it keeps its
  connection;
- the OpenAI Agents SDK's ``RedisSession`` (async only; each call runs on
  one long-lived event loop): ``add_items`` and ``get_items(limit=20)``.

The server is the one at ``--url`` (its database is flushed), or one the
script starts on loopback with persistence off (``--save ''``,
``--appendonly no``), so that no snapshot forks during a timing. Run from
the repository root::

    .venv/bin/python benchmarks/redis_bench.py            # ~2 minutes
    .venv/bin/python benchmarks/redis_bench.py --quick    # ~30 seconds

The report goes to ``benchmarks/results/redis.md`` (``redis-quick.md``
with ``--quick``) and to standard output.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from _harness import (
    ChatWorkload,
    Turn,
    arguments,
    chatmem_message,
    chunks,
    exit_on_sigterm,
    interleave,
    one_session,
    picks,
    publish,
    random_slices,
    report_head,
    rotation,
    sampled_sessions,
    settle,
    speed_method,
    speed_table,
    store_turns,
    timed,
    turn_adder,
)

import chatmem

warnings.simplefilter("ignore")  # LangChain's deprecation notices

from _peers import agents_item, lc_message  # noqa: E402
from agents.extensions.memory import RedisSession  # noqa: E402
from langchain_community.chat_message_histories import (  # noqa: E402
    RedisChatMessageHistory,
)
from langchain_core.messages import (  # noqa: E402
    message_to_dict,
)

BATCH = 100
ROLE_CODES = {"system": 0, "user": 1, "assistant": 2, "tool": 3}

CHATMEM = "chatmem redis://"
RAW = "raw redis-py, same writes"
RAW_PUSH = "raw redis-py, bare RPUSH"
LC = "LangChain RedisChatMessageHistory"
AGENTS = "Agents SDK RedisSession"


@dataclass
class Plan:
    """How much to run."""

    size: int
    rounds: int
    read_calls: int
    add_calls: int
    batches: int
    seed: int = 20250106


# Many short rounds rather than a few long ones: a burst of someone
# else's load on the shared machine then spans every case of a round.
FULL = Plan(size=50_000, rounds=33, read_calls=130, add_calls=100, batches=4)
QUICK = Plan(size=10_000, rounds=9, read_calls=70, add_calls=50, batches=2)


# -- a server -----------------------------------------------------------------


@contextmanager
def local_server() -> Iterator[str]:
    """Start a throwaway Redis on loopback; yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed: apt-get install redis-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="chatmem-redis-bench-")
    process = subprocess.Popen(
        [
            binary,
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", folder),
            *("--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


# -- the systems ----------------------------------------------------------


def queue_writes(pipe: Any, message_id: int, turn: Turn) -> None:
    """Queue what chatmem writes for one message on a redis-py pipeline.

    The pipeline may be redis-py's or redis.asyncio's: both queue
    commands without waiting.
    """
    fields: list[Any] = [
        message_id,
        turn.session_id,
        ROLE_CODES[turn.role],
        turn.created_us,
        turn.content,
        turn.user_id,
    ]
    if turn.metadata:
        fields.append(turn.metadata)
    body = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    pipe.zadd(f"raw:h:{turn.session_id}", {body: message_id})
    pipe.hset("raw:m", message_id, body)
    pipe.zadd("raw:t", {message_id: turn.created_us})
    pipe.zadd(f"raw:u:{turn.user_id}", {message_id: turn.created_us})
    pipe.zadd("raw:l", {turn.session_id: message_id})
    pipe.hincrby("raw:stats", "bytes", len(body))


class RawLayout:
    """What a developer writes with redis-py alone for chatmem's API."""

    def __init__(self, client: redis.Redis, first_id: int) -> None:
        self.client = client
        self.ids = itertools.count(first_id)

    def add(self, turn: Turn) -> None:
        pipe = self.client.pipeline(transaction=True)
        queue_writes(pipe, next(self.ids), turn)
        pipe.execute()

    def add_batch(self, turns: list[Turn]) -> None:
        pipe = self.client.pipeline(transaction=True)
        for turn in turns:
            queue_writes(pipe, next(self.ids), turn)
        pipe.execute()

    def history(self, session: str) -> list[Any]:
        rows = self.client.zrevrange(f"raw:h:{session}", 0, 19)
        found = [json.loads(row) for row in rows]
        found.reverse()
        return found

    def get(self, message_id: str) -> Any:
        return json.loads(self.client.hget("raw:m", message_id))


class Systems:
    """Every system under test, pre-filled with the same turns."""

    def __init__(self, url: str, turns: list[Turn]) -> None:
        self.url = url
        admin = redis.Redis.from_url(url)
        admin.flushdb()

        self.store = chatmem.open(url)
        store_turns(self.store, turns, 1000)

        self.client = redis.Redis.from_url(url)
        self.raw = RawLayout(self.client, 1)
        for part in chunks(turns, 1000):
            self.raw.add_batch(part)

        # The peers' lists are filled with what their own writers store;
        # going through their one-command-per-message writers is not what
        # is measured.
        self.lc = RedisChatMessageHistory("warm", url=url)
        pipe = admin.pipeline(transaction=False)
        for t in turns:
            pipe.lpush(
                f"message_store:{t.session_id}",
                json.dumps(message_to_dict(lc_message(t))),
            )
        pipe.execute()

        self.loop = asyncio.new_event_loop()
        self.agents_client = redis.asyncio.Redis.from_url(url)
        self.agents: dict[str, RedisSession] = {}
        by_session: dict[str, list[Turn]] = {}
        for t in turns:
            by_session.setdefault(t.session_id, []).append(t)
        for session, mine in by_session.items():
            self.loop.run_until_complete(
                self.agents_session(session).add_items(
                    [agents_item(t) for t in mine]  # type: ignore[misc]
                )
            )
        self.memory_mb = admin.info("memory")["used_memory"] / 1e6
        self.version = admin.info("server")["redis_version"]
        admin.close()

    def agents_session(self, session_id: str) -> RedisSession:
        """Return the Agents SDK session object, made once per session."""
        found = self.agents.get(session_id)
        if found is None:
            found = RedisSession(session_id, redis_client=self.agents_client)
            self.agents[session_id] = found
        return found

    def close(self) -> None:
        self.store.close()
        self.client.close()
        self.lc.redis_client.close()
        self.loop.run_until_complete(self.agents_client.aclose())
        self.loop.close()


# -- the cases ------------------------------------------------------------


def write_cases(
    systems: Systems, fresh: list[Turn], plan: Plan
) -> tuple[
    dict[str, Callable[[int], list[int]]], dict[str, Callable[[int], list[int]]]
]:
    """Return the one-by-one and the batched write cases."""
    adds = rotation(fresh, plan.add_calls, plan.rounds + 1)

    def batches(number: int) -> list[list[Turn]]:
        found = random_slices(plan.seed * 7 + number, fresh, plan.batches, BATCH)
        return [one_session(batch) for batch in found]

    store, raw, client, loop = systems.store, systems.raw, systems.client, systems.loop

    chatmem_add = turn_adder(store)

    def raw_push(turn: Turn) -> None:
        body = json.dumps(
            [turn.session_id, turn.role, turn.created_us, turn.content],
            ensure_ascii=False,
        )
        client.rpush(f"push:{turn.session_id}", body)

    def lc_add(turn: Turn) -> None:
        history = systems.lc
        history.session_id = turn.session_id
        history.add_message(lc_message(turn))

    def agents_add(turn: Turn) -> None:
        session = systems.agents_session(turn.session_id)
        items = [agents_item(turn)]
        loop.run_until_complete(session.add_items(items))  # type: ignore[arg-type]

    one_by_one = {
        CHATMEM: lambda n: timed(chatmem_add, adds(n)),
        RAW: lambda n: timed(raw.add, adds(n)),
        RAW_PUSH: lambda n: timed(raw_push, adds(n)),
        LC: lambda n: timed(lc_add, adds(n)),
        AGENTS: lambda n: timed(agents_add, adds(n)),
    }

    def chatmem_batch(batch: list[Turn]) -> None:
        store.add_messages([chatmem_message(t) for t in batch])

    def lc_batch(batch: list[Turn]) -> None:
        systems.lc.session_id = batch[0].session_id
        systems.lc.add_messages([lc_message(t) for t in batch])

    def agents_batch(batch: list[Turn]) -> None:
        session = systems.agents_session(batch[0].session_id)
        items = [agents_item(t) for t in batch]
        loop.run_until_complete(session.add_items(items))  # type: ignore[arg-type]

    batched = {
        CHATMEM: lambda n: timed(chatmem_batch, batches(n)),
        RAW: lambda n: timed(raw.add_batch, batches(n)),
        LC: lambda n: timed(lc_batch, batches(n)),
        AGENTS: lambda n: timed(agents_batch, batches(n)),
    }
    return one_by_one, batched


def read_cases(
    systems: Systems, targets: list[str], plan: Plan
) -> tuple[
    dict[str, Callable[[int], list[int]]], dict[str, Callable[[int], list[int]]]
]:
    """Return the history(last=20) and the get cases."""
    calls = plan.read_calls
    store, raw, loop = systems.store, systems.raw, systems.loop

    def sessions(number: int) -> list[str]:
        return picks(plan.seed * 1000 + number, targets, calls)

    def ids(number: int) -> list[str]:
        found = picks(plan.seed * 2000 + number, range(1, plan.size + 1), calls)
        return [str(i) for i in found]

    def lc_history(session: str) -> None:
        systems.lc.session_id = session
        _ = systems.lc.messages[-20:]

    def agents_history(session: str) -> None:
        items = systems.agents_session(session).get_items(limit=20)
        loop.run_until_complete(items)

    history = {
        CHATMEM: lambda n: timed(lambda s: store.history(s, last=20), sessions(n)),
        RAW: lambda n: timed(raw.history, sessions(n)),
        LC: lambda n: timed(lc_history, sessions(n)),
        AGENTS: lambda n: timed(agents_history, sessions(n)),
    }
    get = {
        CHATMEM: lambda n: timed(store.get, ids(n)),
        RAW: lambda n: timed(raw.get, ids(n)),
    }
    return history, get


def check(systems: Systems, targets: list[str]) -> None:
    """Make sure every system holds the same sessions before timing."""
    session = targets[len(targets) // 2]
    mine = [m.content for m in systems.store.history(session, last=20)]
    raw = [row[4] for row in systems.raw.history(session)]
    systems.lc.session_id = session
    lc = [m.content for m in systems.lc.messages[-20:]]
    if not mine or mine != raw or lc != mine:
        sys.exit(
            f"The systems do not hold the same data ({len(mine)}, {len(raw)},"
            f" {len(lc)} messages); not timing them."
        )


# -- the report -----------------------------------------------------------


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--url", help="Redis URL (its database is flushed)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    # Stop the server this script started even when it is terminated.
    exit_on_sigterm()

    workload = ChatWorkload(seed=plan.seed, count=plan.size + 20_000)
    every = list(workload.turns())
    prefill, fresh = every[: plan.size], every[plan.size :]
    # Reads go to sessions of the pre-fill, picked along the stream.
    targets = sampled_sessions(workload, prefill)

    with nullcontext(args.url) if args.url else local_server() as url:
        systems = Systems(url, prefill)
        check(systems, targets)
        settle()
        try:
            started = time.perf_counter()
            history, get = read_cases(systems, targets, plan)
            read_figures = interleave(history, plan.rounds)
            get_figures = interleave(get, plan.rounds)
            one, batched = write_cases(systems, fresh, plan)
            add_figures = interleave(one, plan.rounds)
            batch_figures = interleave(
                batched, plan.rounds, units={name: BATCH for name in batched}
            )
            elapsed = time.perf_counter() - started
        finally:
            systems.close()

    add_ratio = add_figures[RAW].median_us / add_figures[CHATMEM].median_us
    batch_ratio = batch_figures[RAW].median_us / batch_figures[CHATMEM].median_us
    read_ratio = read_figures[CHATMEM].median_us / read_figures[RAW].median_us
    out = [
        *report_head(
            "Redis backend: chatmem beside raw redis-py and its peers",
            f"Redis {systems.version} on loopback,"
            f" {'the server at --url' if args.url else 'persistence off'};"
            f" {systems.memory_mb:,.0f} MB used after the pre-fill.",
        ),
        f"Each system was pre-filled with the same {plan.size:,} seeded chat"
        f" turns; {speed_method(plan.rounds, elapsed)}",
        "",
        f"Targets: one-by-one add at least 0.8x raw ({add_ratio:.2f}x here),"
        f" batched at least 0.7x the raw pipeline ({batch_ratio:.2f}x),"
        f" history(last=20) at most 1.5x the raw query's time"
        f" ({read_ratio:.2f}x).",
        "",
        "## add, one message per call (one round trip each)",
        "",
        "chatmem's round trip also takes the id from the server, checks the"
        " budget and records the write's retry ticket.",
        "",
        speed_table(add_figures, RAW),
        "",
        f"## add_messages, {BATCH} messages of one session per call (atomic)",
        "",
        "The peers send one command per message (LangChain) or per item"
        " list (Agents SDK).",
        "",
        speed_table(batch_figures, RAW),
        "",
        "## history(last=20) of a random session",
        "",
        "LangChain reads the whole session and slices it; chatmem returns"
        " Message objects, the raw query decoded JSON lists.",
        "",
        speed_table(read_figures, RAW),
        "",
        "## get by id",
        "",
        speed_table(get_figures, RAW),
        "",
    ]
    report = "\n".join(out)
    publish(report, args.out, "redis-quick.md" if args.quick else "redis.md")


if __name__ == "__main__":
    main()
