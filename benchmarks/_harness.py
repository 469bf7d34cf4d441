"""Shared machinery for chatmem's benchmark scripts.

Every script in ``benchmarks/`` measures chatmem beside a baseline doing
the same work in the same run. This module holds what they share:

- :class:`ChatWorkload`, a seeded stream of realistic chat turns
  (interleaved customer-service sessions, tool calls, lognormal lengths),
  so that every system under test stores exactly the same data;
- :func:`chatmem_message` and :func:`turn_adder`, a turn as chatmem
  receives it, and :func:`store_turns`, the batched pre-fill;
  :func:`chunks` cuts any list into batches;
- :func:`picks`, :func:`rotation`, :func:`random_slices` and
  :func:`one_session`, the seeded targets and write batches of each
  round, the same for every case of that round;
- :func:`timed`, per-call timing with ``perf_counter_ns``;
- :func:`interleave`, which runs the cases round-robin, drops warm-up
  rounds and keeps every timed call, so a burst of load on a shared
  machine hits every case alike;
- :class:`Figure`, the median, p99 and rate of one case, and
  :func:`ratio` to set it beside its baseline;
- :func:`arguments`, the command-line options every script takes, and
  :func:`publish`, which prints a report and writes it to ``results/``;
- :func:`table` for the markdown the results files hold,
  :func:`speed_table` for the one most scripts print per operation,
  :func:`report_head` and :func:`speed_method` for the lines that open
  such a report, and :func:`settle`, :func:`machine` for the run's
  conditions;
- :func:`private_server`, a server of ``tests/servers.py`` started on
  loopback as the tests start it, and :func:`exit_on_sigterm`, so that
  a terminated run still stops the servers it started.

It imports nothing outside the standard library but chatmem itself
(which needs no optional dependency), so a script can import it before
deciding which clients it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import random
import signal
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from chatmem import BaseChatMessageMemory, Message

__all__ = [
    "ChatWorkload",
    "Figure",
    "Turn",
    "arguments",
    "chatmem_message",
    "chunks",
    "exit_on_sigterm",
    "interleave",
    "machine",
    "one_session",
    "percentile",
    "picks",
    "private_server",
    "publish",
    "random_slices",
    "ratio",
    "report_head",
    "rotation",
    "sampled_sessions",
    "settle",
    "speed_method",
    "speed_table",
    "store_turns",
    "table",
    "timed",
    "turn_adder",
]

T = TypeVar("T")

# -- workload -------------------------------------------------------------

VOCABULARY = (
    "order parcel delivery refund invoice account password reset login "
    "shipping address payment card charge subscription plan upgrade cancel "
    "tracking number warehouse courier delayed arrived damaged replace "
    "return label store credit discount code coupon expired balance "
    "please thanks hello could you check my the a an is was will be "
    "have has not yet again since yesterday today tomorrow week morning "
    "I we you it they this that what when where why how can help sorry "
    "for inconvenience understand let me look into right away confirm "
    "email phone verify identity policy days business within apply "
    "receipt item size colour quantity missing wrong sent back update"
)
WORDS = VOCABULARY.split()

TOOLS = ("lookup_order", "refund_payment", "track_parcel", "reset_password")


class Turn(NamedTuple):
    """One chat message of a workload, before any store sees it."""

    session_id: str
    user_id: str
    role: str
    content: str
    metadata: dict[str, Any]
    created_us: int  # microseconds since the Unix epoch


@dataclass
class ChatWorkload:
    """A seeded, reproducible customer-service day (or month).

    ``open_sessions`` conversations run at once and their turns interleave;
    each lasts 8 to 60 turns. A session belongs to one customer; three in
    ten sessions come from a returning customer. User turns are short
    (lognormal, median 70 characters), assistant turns longer (median
    320); about one assistant turn in twelve calls a tool, and the tool's
    result follows as a ``tool`` turn carrying ``tool_call_id`` and
    ``name``. Timestamps increase through ``span``. The same seed and
    count give the same turns, byte for byte.

    After :meth:`turns` has run, ``sessions`` lists every session in order
    of first appearance and ``samples`` holds about ``sample_size`` turns
    spread evenly through the stream, for picking read targets.
    """

    seed: int
    count: int
    open_sessions: int = 64
    span: timedelta = timedelta(days=30)
    start: datetime = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
    sample_size: int = 4096
    sessions: list[str] = field(default_factory=list)
    samples: list[Turn] = field(default_factory=list)

    def turns(self) -> Iterator[Turn]:
        """Yield ``count`` turns in the order a store would accept them."""
        rng = random.Random(self.seed)
        corpus = " ".join(rng.choices(WORDS, k=200_000))
        self.sessions, self.samples = [], []
        users: list[str] = []
        live: list[_Session] = []
        step = self.span / timedelta(microseconds=1) / max(self.count, 1)
        now = float((self.start - _EPOCH) // timedelta(microseconds=1))
        every = max(1, self.count // self.sample_size)

        for index in range(self.count):
            while len(live) < self.open_sessions:
                live.append(self._open(rng, users))
            slot = rng.randrange(len(live))
            session = live[slot]
            now += rng.expovariate(1.0) * step
            turn = session.next_turn(rng, corpus, int(now))
            if session.done:
                live[slot] = live[-1]
                live.pop()
            if index % every == 0:
                self.samples.append(turn)
            yield turn

    def _open(self, rng: random.Random, users: list[str]) -> _Session:
        if users and rng.random() < 0.3:
            user = rng.choice(users)
        else:
            user = f"user-{rng.getrandbits(40):012x}"
            users.append(user)
        session = f"{rng.getrandbits(128):032x}"
        self.sessions.append(session)
        return _Session(session, user, rng.randint(8, 60))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Session:
    __slots__ = ("done", "left", "pending", "session_id", "started", "user_id")

    def __init__(self, session_id: str, user_id: str, length: int) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.left = length
        self.started = False
        self.done = False
        self.pending: str | None = None  # tool call awaiting its result

    def next_turn(self, rng: random.Random, corpus: str, now: int) -> Turn:
        self.left -= 1
        self.done = self.left <= 0
        metadata: dict[str, Any] = {}
        if not self.started:
            self.started = True
            if rng.random() < 0.1:
                return self._turn("system", _text(rng, corpus, 400, 0.3), {}, now)
        if self.pending is not None:
            call, self.pending = self.pending, None
            name = TOOLS[int(call[-1], 16) % len(TOOLS)]
            metadata = {"tool_call_id": call, "name": name}
            return self._turn("tool", _text(rng, corpus, 300, 0.6), metadata, now)
        if rng.random() < 0.5:
            return self._turn("user", _text(rng, corpus, 70, 0.8), {}, now)
        if rng.random() < 1 / 12 and not self.done:
            call = f"call_{rng.getrandbits(64):016x}"
            self.pending = call
            metadata = {
                "tool_calls": [
                    {
                        "id": call,
                        "type": "function",
                        "function": {
                            "name": TOOLS[int(call[-1], 16) % len(TOOLS)],
                            "arguments": f'{{"order_id": "{rng.randrange(10**8)}"}}',
                        },
                    }
                ]
            }
            return self._turn("assistant", "", metadata, now)
        return self._turn("assistant", _text(rng, corpus, 320, 0.7), {}, now)

    def _turn(self, role: str, content: str, meta: dict[str, Any], now: int) -> Turn:
        return Turn(self.session_id, self.user_id, role, content, meta, now)


def _text(rng: random.Random, corpus: str, median: int, sigma: float) -> str:
    length = min(6000, max(2, int(rng.lognormvariate(math.log(median), sigma))))
    begin = rng.randrange(len(corpus) - length)
    return corpus[begin : begin + length]


def sampled_sessions(workload: ChatWorkload, stored: Iterable[Turn]) -> list[str]:
    """Return the sessions of ``workload.samples`` found in ``stored``.

    Reads then go to sessions a store holds, picked along the stream.
    """
    known = {t.session_id for t in stored}
    return [t.session_id for t in workload.samples if t.session_id in known]


# -- what each round reads and writes -------------------------------------


def picks(seed: int, population: Sequence[T], count: int) -> list[T]:
    """Return ``count`` seeded choices from ``population``, with repeats.

    A case seeds with its round number, so every case of a round gets the
    same picks. ``picks(seed, range(1, n + 1), k)`` draws what ``k`` calls
    of ``randint(1, n)`` would.
    """
    rng = random.Random(seed)
    return [rng.choice(population) for _ in range(count)]


def rotation(items: list[T], size: int, rounds: int) -> Callable[[int], list[T]]:
    """Return round number -> that round's ``size`` items.

    Every system writes the same items in a round and new ones the next;
    after ``rounds`` rounds the shares repeat.
    """

    def share(number: int) -> list[T]:
        start = (number % rounds) * size
        return items[start : start + size]

    return share


def random_slices(seed: int, items: list[T], count: int, size: int) -> list[list[T]]:
    """Return ``count`` seeded runs of ``size`` neighbouring items."""
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        start = rng.randrange(len(items) - size)
        found.append(items[start : start + size])
    return found


def one_session(turns: list[Turn], session: str | None = None) -> list[Turn]:
    """Return ``turns`` relabelled to one session (the first turn's).

    The peers' ``add_messages`` take one session per call, so every
    system's batch is one session's turns.
    """
    label = turns[0].session_id if session is None else session
    return [t._replace(session_id=label) for t in turns]


# -- turns as chatmem takes them -----------------------------------------

_MICRO = timedelta(microseconds=1)


def chatmem_message(turn: Turn) -> Message:
    """Return a turn as the chatmem message an application would build."""
    return Message(
        session_id=turn.session_id,
        role=turn.role,
        content=turn.content,
        user_id=turn.user_id,
        metadata=turn.metadata,
        created_at=_EPOCH + turn.created_us * _MICRO,
    )


def turn_adder(store: BaseChatMessageMemory) -> Callable[[Turn], object]:
    """Return a call that stores one turn with ``store.add``, dated."""

    def add(turn: Turn) -> None:
        store.add(
            turn.session_id,
            turn.role,
            turn.content,
            user_id=turn.user_id,
            metadata=turn.metadata,
            created_at=_EPOCH + turn.created_us * _MICRO,
        )

    return add


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Yield ``items`` in lists of ``size`` (the last one may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def store_turns(
    store: BaseChatMessageMemory, turns: Iterable[Turn], batch: int
) -> None:
    """Pre-fill ``store`` with ``turns``, ``add_messages`` of ``batch`` each."""
    for part in chunks(turns, batch):
        store.add_messages([chatmem_message(t) for t in part])


# -- timing ---------------------------------------------------------------


def timed(operation: Callable[[Any], object], items: Iterable[Any]) -> list[int]:
    """Call ``operation(item)`` for each item; return nanoseconds each.

    The clock reads cost about 0.1 us per call and are included in every
    case alike. Build the items before calling, so that making the
    arguments is not timed.
    """
    clock = time.perf_counter_ns
    elapsed = []
    for item in items:
        begin = clock()
        operation(item)
        elapsed.append(clock() - begin)
    return elapsed


@dataclass
class Figure:
    """Every timed call of one case, and the figures drawn from them.

    ``unit`` is how many messages one call handles (1000 for a batch of
    1000), so that :attr:`rate` is in messages per second.
    """

    name: str
    unit: int = 1
    calls_ns: list[int] = field(default_factory=list)
    rounds: int = 0

    @property
    def median_us(self) -> float:
        """Median time of one call, in microseconds."""
        return statistics.median(self.calls_ns) / 1000

    @property
    def p99_us(self) -> float:
        """99th percentile of one call, in microseconds."""
        return percentile(self.calls_ns, 99) / 1000

    @property
    def rate(self) -> float:
        """Messages per second at the median call time."""
        return self.unit * 1e6 / self.median_us

    @property
    def mean_rate(self) -> float:
        """Messages per second over all calls, slow ones included."""
        return self.unit * len(self.calls_ns) * 1e9 / sum(self.calls_ns)

    @property
    def reps(self) -> int:
        """How many calls were timed."""
        return len(self.calls_ns)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def interleave(
    cases: dict[str, Callable[[int], list[int]]],
    rounds: int,
    *,
    warmup: int = 1,
    units: dict[str, int] | None = None,
) -> dict[str, Figure]:
    """Run each case once per round, round-robin, and gather its calls.

    A case is called with the round number and returns the nanoseconds of
    each call it made, so every case can take its own seeded arguments per
    round. The order rotates by one case every round. The first ``warmup``
    rounds fill caches and are not kept.
    """
    units = units or {}
    figures = {name: Figure(name, units.get(name, 1)) for name in cases}
    names = list(cases)
    for number in range(warmup + rounds):
        # Each round starts one case later, so no case always runs first
        # or always right after the same neighbour (whose leftover work,
        # a server's flush or a collector's pass, would land on it).
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            calls = cases[name](number)
            if number >= warmup:
                figures[name].calls_ns.extend(calls)
                figures[name].rounds += 1
    return figures


def ratio(subject: float, baseline: float) -> str:
    """Return ``subject / baseline`` as ``1.23x``."""
    return f"{subject / baseline:.2f}x"


def settle() -> None:
    """Collect garbage and freeze what survives.

    Benchmarks keep millions of objects alive (a peer library's messages);
    frozen, they no longer make every later collection slower, so one
    case's heap does not tax the next case's timings.
    """
    gc.collect()
    gc.freeze()


# -- options ------------------------------------------------------------

RESULTS = Path(__file__).resolve().parent / "results"


def arguments(
    doc: str | None, *, quick: str | None = "a shorter run", out: bool = True
) -> argparse.ArgumentParser:
    """Return a script's parser, described by the first line of ``doc``.

    It takes ``--quick`` (with ``quick`` as its help; ``None`` leaves it
    out) and, if ``out``, ``--out``: where the report goes instead of
    ``benchmarks/results/``, so that a trial run leaves the committed
    figures alone.
    """
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    if out:
        parser.add_argument(
            "--out",
            type=Path,
            help="where to write the report (default: benchmarks/results/)",
        )
    return parser


def publish(text: str, out: Path | None, name: str) -> Path:
    """Print a report and write it to ``out``, or ``results/name``."""
    path = out or RESULTS / name
    print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- servers ------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``sys.exit``, so ``finally`` blocks stop servers."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


@contextlib.contextmanager
def private_server(kind: str) -> Iterator[Any]:
    """Start a ``tests/servers.py`` server on loopback; yield it, then close it.

    ``kind`` is ``redis``, ``postgres``, ``rabbitmq`` or ``kafka``; the
    server has the tests' settings (see that module). A server that does
    not start ends the run with the reason and the fix.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests import servers

    kinds: dict[str, type[servers.LocalServer]] = {
        "redis": servers.RedisServer,
        "postgres": servers.PostgresServer,
        "rabbitmq": servers.RabbitMQServer,
        "kafka": servers.KafkaServer,
    }
    exit_on_sigterm()
    try:
        server = kinds[kind]()
        server.start()
    except servers.ServerUnavailable as exc:
        sys.exit(f"Cannot start a private {kind} server: {exc}")
    try:
        yield server
    finally:
        server.close()


# -- reporting ------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Return a markdown table, numbers right-aligned."""
    text = [[str(cell) for cell in row] for row in rows]
    right = [
        all(_numeric(row[i]) for row in text if row[i] not in ("", "-", "n/a"))
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append(
        "|" + "|".join("---:" if r else "---" for r in right) + "|",
    )
    lines.extend("| " + " | ".join(row) + " |" for row in text)
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    return bool(cell) and (cell[0].isdigit() or cell[0] in "+-.")


def machine() -> str:
    """Describe the run's conditions in one line."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at start {load}"
    )


def command_line() -> str:
    """Return the command that started this run, as typed."""
    script = os.path.relpath(sys.argv[0])
    return " ".join([".venv/bin/python", script, *sys.argv[1:]])


def report_head(title: str, conditions: str) -> list[str]:
    """Return a report's opening lines: title, command, machine.

    ``conditions`` follows the machine line: the server and its settings.
    """
    return [
        f"# {title}",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {machine()}. {conditions}",
        "",
    ]


def speed_method(rounds: int, elapsed: float) -> str:
    """Return the sentences saying how a :func:`speed_table` was timed."""
    return (
        f"{rounds} timed rounds after one warm-up round,"
        f" round-robin; cases ran in {elapsed:.0f} s. Medians and p99 are"
        " per call; msgs/s is at the median; the speed column is the"
        " baseline's median time over the system's (above 1 is faster)."
    )


SPEED_HEADERS = (
    "system",
    "median us",
    "p99 us",
    "msgs/s",
    "speed vs baseline",
    "calls",
)


def speed_table(figures: dict[str, Figure], baseline: str) -> str:
    """Return every case's median, p99 and rate beside ``baseline``'s.

    The speed column is the baseline's median time over the case's, so
    above 1 is faster; figures keep their order.
    """
    base = figures[baseline]
    rows = []
    for name, figure in figures.items():
        speed = base.median_us / figure.median_us
        rows.append(
            [
                name,
                f"{figure.median_us:,.0f}",
                f"{figure.p99_us:,.0f}",
                f"{figure.rate:,.0f}",
                "1.00x (baseline)" if name == baseline else f"{speed:.2f}x",
                str(figure.reps),
            ]
        )
    return table(SPEED_HEADERS, rows)
