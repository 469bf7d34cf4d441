"""The ``chatmem`` command: inspect and fill a store from the shell.

Every command takes ``--url`` (default: ``CHATMEM_URL``, else the embedded
``sqlite:///./chatmem.db``) and ``--namespace``. ``chatmem demo`` fills the
store with a simulated customer-service day and shows what chatmem reads
back; ``export`` and ``import`` move a namespace as JSON Lines.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import IO, Any, TextIO

import chatmem
from chatmem.base import BaseChatMessageMemory
from chatmem.errors import ChatMemoryError
from chatmem.message import Message

__all__ = ["main"]


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second.

    On a terminal it redraws in place; elsewhere it prints only the final
    line, so logs stay readable.
    """

    def __init__(self, total: int, label: str, stream: IO[str] | None = None):
        self.total = max(1, total)
        self.label = label
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._live = self.stream.isatty()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self._live and now - self._drawn >= 0.1:
            self._drawn = now
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def finish(self) -> None:
        end = "\n"
        self.stream.write(("\r" if self._live else "") + self._line() + end)
        self.stream.flush()

    def _line(self) -> str:
        share = min(1.0, self.done / self.total)
        filled = int(share * 30)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        bar = "#" * filled + "-" * (30 - filled)
        return (
            f"{self.label} [{bar}] {self.done:,}/{self.total:,} "
            f"{share:4.0%} {rate:,.0f}/s"
        )


# -- formatting ------------------------------------------------------------


def _line(message: Message) -> str:
    created = message.created_at
    when = created.strftime("%Y-%m-%d %H:%M:%S") if created else "-"
    user = message.user_id or "-"
    text = message.content.replace("\n", " ")
    if len(text) > 60:
        text = text[:59] + "…"
    tools = " [tool calls]" if message.metadata.get("tool_calls") else ""
    return f"{message.id:>8}  {when}  {message.role:<9} {user:<13} {text}{tools}"


def _show(messages: Sequence[Message], as_json: bool, out: IO[str]) -> None:
    for message in messages:
        if as_json:
            out.write(json.dumps(message.to_dict(), ensure_ascii=False) + "\n")
        else:
            out.write(_line(message) + "\n")


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-12-03T09:00+00:00"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _size(value: int | None) -> str:
    if value is None:
        return "unbounded"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


# -- commands --------------------------------------------------------------


def cmd_add(memory: BaseChatMessageMemory, args: argparse.Namespace) -> int:
    metadata = json.loads(args.metadata) if args.metadata else None
    stored = memory.add(
        args.session, args.role, args.content, user_id=args.user, metadata=metadata
    )
    print(stored.id)
    return 0


def cmd_history(memory: BaseChatMessageMemory, args: argparse.Namespace) -> int:
    found = memory.history(
        args.session,
        last=args.last,
        limit=args.limit,
        before=args.before,
        after=args.after,
    )
    _show(found, args.json, sys.stdout)
    return 0


def cmd_get(memory: BaseChatMessageMemory, args: argparse.Namespace) -> int:
    _show([memory.get(args.id)], True, sys.stdout)
    return 0


def cmd_query(memory: BaseChatMessageMemory, args: argparse.Namespace) -> int:
    found = memory.query(
        session_id=args.session,
        user_id=args.user,
        start=args.start,
        end=args.end,
        role=args.role,
        limit=args.limit,
    )
    _show(found, args.json, sys.stdout)
    return 0


def cmd_sessions(memory: BaseChatMessageMemory, args: argparse.Namespace) -> int:
    for session in memory.sessions(args.user):
        print(session)
    return 0


def cmd_delete(memory: BaseChatMessageMemory, args: argparse.Namespace) -> int:
    if args.id:
        memory.delete(args.id)
        print("deleted 1 message")
    elif args.session:
        print(f"deleted {memory.delete_session(args.session)} messages")
    else:
        print(f"deleted {memory.delete_user(args.user)} messages")
    return 0


def cmd_stats(memory: BaseChatMessageMemory, args: argparse.Namespace) -> int:
    stats = memory.stats()
    size = args.size
    n = stats.max_messages(size)
    left = stats.remaining_messages(size)
    rows = [
        ("store", repr(memory)),
        ("capacity (M)", _size(stats.capacity_bytes)),
        ("used", _size(stats.used_bytes)),
        ("allocated", _size(stats.allocated_bytes)),
        ("free", _size(stats.free_bytes)),
        ("messages", f"{stats.message_count:,}"),
        ("fragmentation", f"{stats.fragmentation:.1%}"),
        ("overhead (o)", f"{stats.message_overhead} B per message"),
    ]
    if n is None:
        rows.append((f"n = M / s (s={size} B)", "unbounded"))
    else:
        rows.append((f"n = M / (s + o) (s={size} B)", f"{n:,} messages"))
        rows.append(("n' = what still fits", f"{left:,} messages"))
    tier = stats.hot_tier
    if tier is not None:
        held = f"{tier.message_count:,} messages of {tier.session_count:,} sessions"
        used = f"{_size(tier.used_bytes)} of {_size(tier.capacity_bytes)}"
        reads = tier.hits + tier.misses
        rows.append(("hot tier", f"{used}, {held}"))
        rows.append(
            (
                "hot tier reads",
                f"{tier.hit_ratio:.1%} hits ({tier.hits:,} of {reads:,}), "
                f"{tier.evictions:,} sessions evicted",
            )
        )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def cmd_export(memory: BaseChatMessageMemory, args: argparse.Namespace) -> int:
    out: TextIO = sys.stdout
    if args.file != "-":
        out = open(args.file, "w", encoding="utf-8")  # noqa: SIM115
    try:
        messages = memory.query()
        progress = Progress(len(messages), "export")
        for message in messages:
            out.write(json.dumps(message.to_dict(), ensure_ascii=False) + "\n")
            progress.advance()
        progress.finish()
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_import(memory: BaseChatMessageMemory, args: argparse.Namespace) -> int:
    source: TextIO = sys.stdin
    if args.file != "-":
        source = open(args.file, encoding="utf-8")  # noqa: SIM115
    messages = []
    number = 0
    try:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                messages.append(Message.from_dict(json.loads(line)))
            except (ValueError, RecursionError, ChatMemoryError) as exc:
                # RecursionError: JSON nested deeper than Python recurses.
                raise chatmem.InvalidMessage(
                    f"Line {number} of the import is not a chatmem message: "
                    f"{exc} Nothing was imported."
                ) from None
    except UnicodeDecodeError:
        raise chatmem.InvalidMessage(
            f"Line {number + 1} of the import is not UTF-8 text; nothing was imported."
        ) from None
    finally:
        if source is not sys.stdin:
            source.close()
    # One batch: the store applies all of it or none of it.
    stored = memory.add_messages(messages)
    print(f"imported {len(stored)} messages")
    return 0


# -- the demo --------------------------------------------------------------

TOPICS = [
    ("parcel", "Where is my parcel? The tracking page has not moved since {d}."),
    ("refund", "I returned the {item} on {d} and still have no refund."),
    ("login", "I cannot log in; the reset link says it expired."),
    ("invoice", "Can you send the invoice for order {order} again?"),
    ("address", "I moved. Please change the delivery address on order {order}."),
]
ITEMS = ["headphones", "kettle", "running shoes", "desk lamp", "backpack"]
REPLIES = [
    "Thanks for waiting. I checked order {order}: {detail} Is there anything "
    "else I can help you with today?",
    "I am sorry about the trouble. {detail} You will get an email as soon as "
    "it changes, usually within one working day.",
    "Let me look into that for you. {detail}",
]
DETAILS = [
    "The carrier scanned it this morning and it is out for delivery.",
    "The refund was approved and reaches your card in 3-5 days.",
    "I have sent a new link that stays valid for 24 hours.",
    "The invoice is on its way to the address on file.",
    "The address is updated and the label has been reprinted.",
]


def _conversation(
    rng: random.Random, session: str, user: str
) -> Iterator[dict[str, Any]]:
    topic, opening = rng.choice(TOPICS)
    order = f"A{rng.randint(10000, 99999)}"
    day = f"{rng.randint(1, 28)} November"
    yield {
        "role": "system",
        "content": "You are the support assistant of an online shop. Be brief.",
    }
    yield {
        "role": "user",
        "user": user,
        "content": opening.format(d=day, item=rng.choice(ITEMS), order=order),
    }
    if topic in ("parcel", "refund"):
        call = f"call_{rng.getrandbits(32):08x}"
        yield {
            "role": "assistant",
            "content": "",
            "metadata": {
                "tool_calls": [
                    {
                        "id": call,
                        "type": "function",
                        "function": {
                            "name": f"lookup_{topic}",
                            "arguments": json.dumps({"order": order}),
                        },
                    }
                ]
            },
        }
        yield {
            "role": "tool",
            "content": json.dumps({"order": order, "status": rng.choice(DETAILS)}),
            "metadata": {"tool_call_id": call, "name": f"lookup_{topic}"},
        }
    for _ in range(rng.randint(1, 4)):
        reply = rng.choice(REPLIES).format(order=order, detail=rng.choice(DETAILS))
        yield {"role": "assistant", "content": reply}
        follow = rng.choice(
            [
                "Thanks!",
                "That does not help, the page still shows nothing.",
                "Can you check again tomorrow?",
                "OK, and what about my other order?",
                "Perfect, have a nice day.",
            ]
        )
        yield {"role": "user", "user": user, "content": follow}


def cmd_demo(memory: BaseChatMessageMemory, args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    users = [f"customer-{i:04d}" for i in range(args.users)]
    day = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
    span = timedelta(hours=10).total_seconds()

    # Open many conversations and interleave their turns over the day, as
    # a support desk sees them.
    pending = []
    for number in range(args.sessions):
        user = rng.choice(users)
        session = f"ticket-{number:05d}"
        at = rng.uniform(0, span)
        for turn in _conversation(rng, session, user):
            at += rng.uniform(5, 90)
            pending.append((at, session, turn))
    pending.sort(key=lambda item: item[0])

    # A second run replaces the first rather than doubling its sessions.
    earlier = [s for s in memory.sessions() if s.startswith("ticket-")]
    if earlier:
        progress = Progress(len(earlier), "clearing the previous demo")
        for session in earlier:
            memory.delete_session(session)
            progress.advance()
        progress.finish()

    progress = Progress(len(pending), "demo")
    started = time.perf_counter()
    batch: list[Message] = []
    for at, session, turn in pending:
        batch.append(
            Message(
                session_id=session,
                role=turn["role"],
                content=turn["content"],
                user_id=turn.get("user"),
                metadata=turn.get("metadata"),
                created_at=day + timedelta(seconds=at),
            )
        )
        if len(batch) >= 200:
            memory.add_messages(batch)
            progress.advance(len(batch))
            batch = []
    if batch:
        memory.add_messages(batch)
        progress.advance(len(batch))
    progress.finish()
    elapsed = time.perf_counter() - started
    print(
        f"stored {len(pending):,} messages in {args.sessions:,} sessions from "
        f"{args.users:,} customers in {elapsed:.2f} s "
        f"({len(pending) / elapsed:,.0f} messages/s)\n"
    )

    session = pending[len(pending) // 2][1]
    timed = time.perf_counter()
    last = memory.history(session, last=6)
    took = (time.perf_counter() - timed) * 1e6
    print(f"The last turns of {session} (history(last=6), {took:.0f} us):")
    _show(last, False, sys.stdout)

    user = str(next(t["user"] for _, _, t in pending if t.get("user")))
    start = day + timedelta(hours=2)
    end = day + timedelta(hours=8)
    timed = time.perf_counter()
    said = memory.query(user_id=user, start=start, end=end)
    took = (time.perf_counter() - timed) * 1e6
    print(
        f"\nWhat {user} said between {start:%H:%M} and {end:%H:%M} UTC "
        f"(query by user and time, {took:.0f} us):"
    )
    _show(said[:8], False, sys.stdout)
    if len(said) > 8:
        print(f"  ... and {len(said) - 8} more")
    print()
    cmd_stats(memory, argparse.Namespace(size=args.size))

    average = sum(len(t["content"].encode()) for _, _, t in pending) // len(pending)
    budget = 64 << 20
    with chatmem.open("memory://", capacity_bytes=budget) as arena:
        fits = arena.max_messages(average)
    print(
        f"\nPlanning: these messages average s = {average} B; a memory:// "
        f"store with M = 64 MiB holds n = M / (s + o) = {fits:,} of them."
    )
    return 0


# -- wiring ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatmem",
        description="Fast, durable, bounded memory for chat applications.",
    )
    parser.add_argument(
        "--url",
        help="store URL (default: $CHATMEM_URL, else sqlite:///./chatmem.db)",
    )
    parser.add_argument("--namespace", default="", help="tenant namespace")
    parser.add_argument(
        "--capacity-bytes",
        type=int,
        help="byte budget (M) to open the store with",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    add = commands.add_parser("add", help="store one message, print its id")
    add.add_argument("session")
    add.add_argument("role", choices=chatmem.ROLES)
    add.add_argument("content")
    add.add_argument("--user")
    add.add_argument("--metadata", help="JSON object, e.g. tool calls")
    add.set_defaults(run=cmd_add)

    history = commands.add_parser("history", help="a session's messages")
    history.add_argument("session")
    history.add_argument("--last", type=int)
    history.add_argument("--limit", type=int)
    history.add_argument("--before", help="message id cursor")
    history.add_argument("--after", help="message id cursor")
    history.add_argument("--json", action="store_true", help="JSON Lines")
    history.set_defaults(run=cmd_history)

    get = commands.add_parser("get", help="one message by id, as JSON")
    get.add_argument("id")
    get.set_defaults(run=cmd_get)

    query = commands.add_parser("query", help="messages by user, role, time")
    query.add_argument("--session")
    query.add_argument("--user")
    query.add_argument("--role", choices=chatmem.ROLES)
    query.add_argument("--start", type=_time, help="ISO 8601, inclusive")
    query.add_argument("--end", type=_time, help="ISO 8601, exclusive")
    query.add_argument("--limit", type=int)
    query.add_argument("--json", action="store_true", help="JSON Lines")
    query.set_defaults(run=cmd_query)

    sessions = commands.add_parser("sessions", help="list session ids")
    sessions.add_argument("--user")
    sessions.set_defaults(run=cmd_sessions)

    delete = commands.add_parser("delete", help="delete a message, session or user")
    target = delete.add_mutually_exclusive_group(required=True)
    target.add_argument("--id")
    target.add_argument("--session")
    target.add_argument("--user", help="erase everything this user wrote")
    delete.set_defaults(run=cmd_delete)

    stats = commands.add_parser("stats", help="capacity as n = M / s")
    stats.add_argument("--size", type=int, default=1024, help="message size s")
    stats.set_defaults(run=cmd_stats)

    export = commands.add_parser("export", help="write messages as JSON Lines")
    export.add_argument("file", nargs="?", default="-")
    export.set_defaults(run=cmd_export)

    load = commands.add_parser(
        "import", help="read JSON Lines; applies whole or not at all"
    )
    load.add_argument("file", nargs="?", default="-")
    load.set_defaults(run=cmd_import)

    demo = commands.add_parser("demo", help="simulate a customer-service day")
    demo.add_argument("--sessions", type=int, default=2_000)
    demo.add_argument("--users", type=int, default=600)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--size", type=int, default=1024, help="s for n = M / s")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = {"namespace": args.namespace}
        if args.capacity_bytes is not None:
            options["capacity_bytes"] = args.capacity_bytes
        with chatmem.open(args.url, **options) as memory:
            status: int = args.run(memory, args)
            return status
    except (ChatMemoryError, ImportError, OSError, json.JSONDecodeError) as exc:
        print(f"chatmem: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
