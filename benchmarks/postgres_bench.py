"""Benchmark chatmem's postgresql:// store against raw psycopg and its peers.

Every system gets the same seeded chat workload (``_harness.ChatWorkload``)
pre-filled into its own tables, then the cases run round-robin in one
process against one PostgreSQL server:

- ``add`` one message at a time, one transaction per message;
- ``add_messages`` of 100 messages, atomically;
- ``history(last=20)`` of a random session, and ``get`` by id.

Baselines, on the same data and the same server:

- raw psycopg 3 on the tables chatmem creates, one connection in
  autocommit mode, statements as a careful developer writes them: one
  ``INSERT ... RETURNING seq`` per message; for batches a ``COPY`` (which
  returns no ids) and a pipelined ``executemany`` inside ``BEGIN``/
  ``COMMIT`` (which does); the single indexed ``SELECT ... ORDER BY seq
  DESC LIMIT 20``; a ``SELECT`` by primary key;
- LangChain's ``SQLChatMessageHistory`` (langchain-community, SQLAlchemy
  over psycopg) and ``PostgresChatMessageHistory`` (langchain-postgres,
  psycopg): neither reads a window, so ``history`` is ``messages[-20:]``;
- the OpenAI Agents SDK's ``SQLAlchemySession`` over asyncpg (it is
  async only; each call runs on one long-lived event loop):
  ``add_items`` and ``get_items(limit=20)``.

The server is the one at ``--url``, or one the script starts with
``initdb`` in a temporary folder (server defaults: fsync on,
``synchronous_commit = on``). Run from the repository root::

    .venv/bin/python benchmarks/postgres_bench.py            # ~3 minutes
    .venv/bin/python benchmarks/postgres_bench.py --quick    # ~20 seconds

The report goes to ``benchmarks/results/postgres.md`` (``postgres-quick.md``
with ``--quick``) and to standard output.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from _harness import (
    ChatWorkload,
    Figure,
    Turn,
    arguments,
    chatmem_message,
    exit_on_sigterm,
    interleave,
    one_session,
    picks,
    publish,
    random_slices,
    report_head,
    rotation,
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
from agents.extensions.memory import SQLAlchemySession  # noqa: E402
from langchain_community.chat_message_histories import (  # noqa: E402
    SQLChatMessageHistory,
)
from langchain_core.messages import (  # noqa: E402
    message_to_dict,
)
from langchain_postgres import PostgresChatMessageHistory  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

BATCH = 100
ROLE_CODES = {"system": 0, "user": 1, "assistant": 2, "tool": 3}
OVERHEAD = 192  # PostgresMemory.message_overhead, kept in the size column

COLUMNS = "seq, session, user_id, role, created_at, content, metadata"
FIELDS = "ns, session, user_id, role, created_at, size, content, metadata"
RAW_INSERT = (
    f"INSERT INTO raw.chatmem_messages ({FIELDS})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq"
)
RAW_COPY = f"COPY raw.chatmem_messages ({FIELDS}) FROM STDIN"
RAW_HISTORY = (
    f"SELECT {COLUMNS} FROM raw.chatmem_messages WHERE ns = %s AND session = %s"
    " ORDER BY seq DESC LIMIT 20"
)
RAW_GET = f"SELECT {COLUMNS} FROM raw.chatmem_messages WHERE seq = %s AND ns = %s"

CHATMEM = "chatmem postgresql://"
RAW = "raw psycopg"
RAW_COPY_NAME = "raw psycopg COPY"
RAW_PIPE = "raw psycopg pipelined executemany"
RAW_BINARY = "raw psycopg, binary results"
LC_SQL = "LangChain SQLChatMessageHistory"
LC_PG = "LangChain PostgresChatMessageHistory"
AGENTS = "Agents SDK SQLAlchemySession"


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
FULL = Plan(size=50_000, rounds=21, read_calls=100, add_calls=70, batches=4)
QUICK = Plan(size=10_000, rounds=7, read_calls=60, add_calls=40, batches=2)


# -- a server -----------------------------------------------------------------


@contextmanager
def local_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL on loopback; yield its URL."""
    bindir = Path(
        subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True
        ).stdout.strip()
        or "/usr/lib/postgresql/15/bin"
    )
    if not (bindir / "initdb").exists():
        bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    folder = Path(tempfile.mkdtemp(prefix="chatmem-pg-bench-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            *("-D", str(data), "-U", "bench", "--auth=trust"),
            *("-E", "UTF8", "--locale=C.UTF-8"),
        ],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-w"]
    subprocess.run(
        [*ctl, "-o", options, "-l", str(folder / "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://bench@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


# -- the systems ----------------------------------------------------------


def raw_row(turn: Turn) -> tuple[Any, ...]:
    """Return the row raw psycopg writes for a turn, as chatmem lays it out."""
    meta = json.dumps(turn.metadata, separators=(",", ":")) if turn.metadata else ""
    content = turn.content.encode()
    size = len(content) + len(meta) + len(turn.session_id) + len(turn.user_id)
    return (
        "",
        turn.session_id,
        turn.user_id,
        ROLE_CODES[turn.role],
        turn.created_us,
        size + OVERHEAD,
        content,
        meta,
    )


def copy_langchain(
    admin: psycopg.Connection[Any], table: str, turns: list[Turn]
) -> None:
    """COPY the turns into a LangChain table as the JSON its converter writes."""
    with admin.cursor().copy(f"COPY {table} (session_id, message) FROM STDIN") as copy:
        for t in turns:
            copy.write_row((t.session_id, json.dumps(message_to_dict(lc_message(t)))))


class Systems:
    """Every system under test, pre-filled with the same turns."""

    def __init__(self, url: str, turns: list[Turn]) -> None:
        self.url = url
        self.prefill: dict[str, float] = {}
        admin = psycopg.connect(url, autocommit=True)
        for schema in ("bench", "raw", "lc", "lcpg", "agents"):
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            admin.execute(f"CREATE SCHEMA {schema}")

        begin = time.perf_counter()
        self.store = chatmem.open(url, schema="bench")
        store_turns(self.store, turns, 1000)
        self.prefill[CHATMEM] = time.perf_counter() - begin

        # Raw psycopg gets the same tables with the same rows.
        chatmem.open(url, schema="raw").close()
        admin.execute(
            "INSERT INTO raw.chatmem_messages OVERRIDING SYSTEM VALUE"
            " SELECT * FROM bench.chatmem_messages"
        )
        admin.execute(
            "SELECT setval(pg_get_serial_sequence('raw.chatmem_messages', 'seq'),"
            " (SELECT max(seq) FROM raw.chatmem_messages))"
        )
        self.raw = psycopg.connect(url, autocommit=True)

        # LangChain's tables are filled with COPY of the JSON its converters
        # write; going through its ORM is not what is measured.
        sa_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        self.lc_engine = create_engine(
            sa_url, connect_args={"options": "-c search_path=lc"}
        )
        self.lc_sql = SQLChatMessageHistory(
            session_id="warm", connection=self.lc_engine
        )
        copy_langchain(admin, "lc.message_store", turns)

        self.lc_pg_conn = psycopg.connect(
            url, autocommit=True, options="-c search_path=lcpg"
        )
        PostgresChatMessageHistory.create_tables(self.lc_pg_conn, "chat_history")
        copy_langchain(admin, "lcpg.chat_history", turns)

        self.loop = asyncio.new_event_loop()
        self.agents_engine = create_async_engine(
            url.replace("postgresql://", "postgresql+asyncpg://", 1),
            connect_args={"server_settings": {"search_path": "agents"}},
        )
        warm = SQLAlchemySession("warm", engine=self.agents_engine, create_tables=True)
        self.loop.run_until_complete(warm.get_items(limit=1))
        sessions = sorted({t.session_id for t in turns})
        with admin.cursor().copy(
            "COPY agents.agent_sessions (session_id) FROM STDIN"
        ) as copy:
            for session in sessions:
                copy.write_row((session,))
        with admin.cursor().copy(
            "COPY agents.agent_messages (session_id, message_data) FROM STDIN"
        ) as copy:
            for t in turns:
                copy.write_row((t.session_id, json.dumps(agents_item(t))))
        admin.execute("VACUUM ANALYZE")
        admin.close()
        self.agents: dict[str, SQLAlchemySession] = {}

    def agents_session(self, session_id: str) -> SQLAlchemySession:
        """Return the Agents SDK session object, made once per session."""
        found = self.agents.get(session_id)
        if found is None:
            found = SQLAlchemySession(session_id, engine=self.agents_engine)
            self.agents[session_id] = found
        return found

    def close(self) -> None:
        self.store.close()
        self.raw.close()
        self.lc_pg_conn.close()
        self.lc_engine.dispose()
        self.loop.run_until_complete(self.agents_engine.dispose())
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
        return random_slices(plan.seed * 7 + number, fresh, plan.batches, BATCH)

    store, raw, loop = systems.store, systems.raw, systems.loop

    chatmem_add = turn_adder(store)

    def raw_add(turn: Turn) -> None:
        raw.execute(RAW_INSERT, raw_row(turn)).fetchone()

    def lc_sql_add(turn: Turn) -> None:
        history = systems.lc_sql
        history.session_id = turn.session_id
        history.add_message(lc_message(turn))

    def lc_pg_add(turn: Turn) -> None:
        PostgresChatMessageHistory(
            "chat_history", turn.session_id, sync_connection=systems.lc_pg_conn
        ).add_messages([lc_message(turn)])

    def agents_add(turn: Turn) -> None:
        session = systems.agents_session(turn.session_id)
        loop.run_until_complete(session.add_items([agents_item(turn)]))

    one_by_one = {
        CHATMEM: lambda n: timed(chatmem_add, adds(n)),
        RAW: lambda n: timed(raw_add, adds(n)),
        LC_SQL: lambda n: timed(lc_sql_add, adds(n)),
        LC_PG: lambda n: timed(lc_pg_add, adds(n)),
        AGENTS: lambda n: timed(agents_add, adds(n)),
    }

    # A batch is one session's worth of turns in the peers' APIs, which
    # take one session per call; chatmem and raw take mixed batches, so
    # each batch is relabelled to one session for everyone, in the call.
    def chatmem_batch(batch: list[Turn]) -> None:
        store.add_messages([chatmem_message(t) for t in one_session(batch)])

    def raw_copy(batch: list[Turn]) -> None:
        with raw.cursor().copy(RAW_COPY) as copy:
            for turn in one_session(batch):
                copy.write_row(raw_row(turn))

    def raw_pipe(batch: list[Turn]) -> None:
        cursor = raw.cursor()
        with raw.pipeline(), raw.transaction():
            cursor.executemany(
                RAW_INSERT, [raw_row(t) for t in one_session(batch)], returning=True
            )
        ids = []
        while True:
            ids.append(cursor.fetchone())
            if not cursor.nextset():
                break

    def lc_sql_batch(batch: list[Turn]) -> None:
        turns = one_session(batch)
        systems.lc_sql.session_id = turns[0].session_id
        systems.lc_sql.add_messages([lc_message(t) for t in turns])

    def lc_pg_batch(batch: list[Turn]) -> None:
        turns = one_session(batch)
        PostgresChatMessageHistory(
            "chat_history", turns[0].session_id, sync_connection=systems.lc_pg_conn
        ).add_messages([lc_message(t) for t in turns])

    def agents_batch(batch: list[Turn]) -> None:
        turns = one_session(batch)
        session = systems.agents_session(turns[0].session_id)
        loop.run_until_complete(session.add_items([agents_item(t) for t in turns]))

    batched = {
        CHATMEM: lambda n: timed(chatmem_batch, batches(n)),
        RAW_COPY_NAME: lambda n: timed(raw_copy, batches(n)),
        RAW_PIPE: lambda n: timed(raw_pipe, batches(n)),
        LC_SQL: lambda n: timed(lc_sql_batch, batches(n)),
        LC_PG: lambda n: timed(lc_pg_batch, batches(n)),
        AGENTS: lambda n: timed(agents_batch, batches(n)),
    }
    return one_by_one, batched


def read_cases(
    systems: Systems, workload: ChatWorkload, plan: Plan
) -> tuple[
    dict[str, Callable[[int], list[int]]], dict[str, Callable[[int], list[int]]]
]:
    """Return the history(last=20) and the get cases."""
    calls = plan.read_calls
    store, raw, loop = systems.store, systems.raw, systems.loop

    def sessions(number: int) -> list[str]:
        found = picks(plan.seed * 1000 + number, workload.samples, calls)
        return [t.session_id for t in found]

    def ids(number: int) -> list[str]:
        found = picks(plan.seed * 2000 + number, range(1, plan.size + 1), calls)
        return [str(i) for i in found]

    def raw_history(session: str) -> None:
        raw.execute(RAW_HISTORY, ("", session)).fetchall().reverse()

    def raw_history_binary(session: str) -> None:
        raw.execute(RAW_HISTORY, ("", session), binary=True).fetchall().reverse()

    def lc_sql_history(session: str) -> None:
        systems.lc_sql.session_id = session
        _ = systems.lc_sql.messages[-20:]

    def lc_pg_history(session: str) -> None:
        history = PostgresChatMessageHistory(
            "chat_history", session, sync_connection=systems.lc_pg_conn
        )
        _ = history.get_messages()[-20:]

    def agents_history(session: str) -> None:
        items = systems.agents_session(session).get_items(limit=20)
        loop.run_until_complete(items)

    history = {
        CHATMEM: lambda n: timed(lambda s: store.history(s, last=20), sessions(n)),
        RAW: lambda n: timed(raw_history, sessions(n)),
        RAW_BINARY: lambda n: timed(raw_history_binary, sessions(n)),
        LC_SQL: lambda n: timed(lc_sql_history, sessions(n)),
        LC_PG: lambda n: timed(lc_pg_history, sessions(n)),
        AGENTS: lambda n: timed(agents_history, sessions(n)),
    }
    get = {
        CHATMEM: lambda n: timed(store.get, ids(n)),
        RAW: lambda n: timed(
            lambda i: raw.execute(RAW_GET, (int(i), "")).fetchone(), ids(n)
        ),
        RAW_BINARY: lambda n: timed(
            lambda i: raw.execute(RAW_GET, (int(i), ""), binary=True).fetchone(),
            ids(n),
        ),
    }
    return history, get


# -- the report -----------------------------------------------------------


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--url", help="PostgreSQL URL; default: start one")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    # Stop the server this script started even when it is terminated.
    exit_on_sigterm()

    workload = ChatWorkload(seed=plan.seed, count=plan.size + 20_000)
    every = list(workload.turns())
    prefill, fresh = every[: plan.size], every[plan.size :]

    with nullcontext(args.url) if args.url else local_server() as url:
        systems = Systems(url, prefill)
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            durable = conn.execute(
                "SELECT current_setting('fsync'), current_setting('synchronous_commit')"
            ).fetchone()
        settle()
        try:
            started = time.perf_counter()
            history, get = read_cases(systems, workload, plan)
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

    def speed(figures: dict[str, Figure], baseline: str) -> float:
        return figures[baseline].median_us / figures[CHATMEM].median_us

    add_ratio = speed(add_figures, RAW)
    copy_ratio = speed(batch_figures, RAW_COPY_NAME)
    pipe_ratio = speed(batch_figures, RAW_PIPE)
    read_ratio = read_figures[CHATMEM].median_us / read_figures[RAW].median_us
    out = [
        *report_head(
            "PostgreSQL backend: chatmem beside raw psycopg and its peers",
            f"PostgreSQL {version[0] if version else '?'}"
            f" on loopback, fsync={durable[0] if durable else '?'},"
            f" synchronous_commit={durable[1] if durable else '?'}.",
        ),
        f"Each system was pre-filled with the same {plan.size:,} seeded chat"
        f" turns; {speed_method(plan.rounds, elapsed)}",
        "",
        f"Targets: one-by-one add at least 0.8x raw ({add_ratio:.2f}x here),"
        " batched at least 0.7x a raw pipeline or COPY"
        f" ({pipe_ratio:.2f}x the pipelined executemany, {copy_ratio:.2f}x"
        " COPY), history(last=20) at most 1.5x the raw query's time"
        f" ({read_ratio:.2f}x).",
        "",
        "## add, one message per call (one transaction each)",
        "",
        speed_table(add_figures, RAW),
        "",
        f"## add_messages, {BATCH} messages per call (atomic)",
        "",
        "COPY returns no ids; chatmem and pipelined executemany return them.",
        "",
        speed_table(batch_figures, RAW_COPY_NAME),
        "",
        "## history(last=20) of a random session",
        "",
        "The LangChain histories read the whole session and slice it.",
        "",
        speed_table(read_figures, RAW),
        "",
        "## get by id",
        "",
        speed_table(get_figures, RAW),
        "",
    ]
    report = "\n".join(out)
    publish(report, args.out, "postgres-quick.md" if args.quick else "postgres.md")


if __name__ == "__main__":
    main()
