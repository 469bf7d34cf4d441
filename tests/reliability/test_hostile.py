"""Hostile input: only documented errors escape, and nothing half-applies.

Property tests (hypothesis, derandomized so a run is repeatable) throw
arbitrary values at the public API, the URL parser and the JSON Lines
import; fixed lists throw ids shaped like SQL, Redis keys and globs,
protocol frames and paths. Whatever comes in is either stored and read
back exactly, or refused with a :class:`chatmem.ChatMemoryError`
subclass while the store stays as it was.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chatmem
from chatmem import (
    BaseChatMessageMemory,
    ChatMemoryError,
    InvalidMessage,
    Message,
    MessageNotFound,
)
from chatmem.cli import main as cli

from .backends import ALL, PERSISTENT, Spec
from .conftest import SEED, Counts, Record

# Shaped to break whatever treats an id as code or structure.
HOSTILE_IDS = [
    "'; DROP TABLE chatmem_messages; --",
    '" OR 1=1 --',
    "1' OR '1'='1",
    "%s%s%s %(x)s {0} {x} $1 ?",
    "*",
    "?",
    "[a-z]*",
    "\\*",
    "chatmem:*",
    "a:b:c",
    "h:s1",
    "{tag}",
    "|5|0|",
    "a%3Ab",
    "%",
    "\r\n*1\r\n$8\r\nFLUSHALL\r\n",
    "line\nbreak\ttab",
    "../../../../etc/passwd",
    "..\\..\\windows",
    "/absolute/path.db",
    "file:chat.db?mode=memory",
    ":memory:",
    " leading and trailing ",
    "ünïcödé 会话 🦜",
    "\u202eRTL\u202c",
    "x" * 512,
]

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
NOT_JSON = st.one_of(
    st.tuples(st.integers()),
    st.sets(st.integers(), max_size=2),
    st.binary(max_size=4),
    st.just(float("nan")),
    st.just(float("inf")),
    st.builds(object),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
    st.just("\ud800"),
)
IDS = st.one_of(st.sampled_from(HOSTILE_IDS), st.text(min_size=1, max_size=20))
TIMES = st.one_of(
    st.none(),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(
        timezones=st.builds(
            timezone, st.timedeltas(timedelta(hours=-23), timedelta(hours=23))
        )
    ),
)

# Valid values of each argument of add, and values that must be refused.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "session": IDS,
    "role": st.sampled_from(chatmem.ROLES),
    "content": st.text(max_size=200),
    "user": st.one_of(st.none(), IDS),
    "metadata": st.one_of(
        st.none(), st.dictionaries(st.text(max_size=8), JSON, max_size=4)
    ),
    "created": TIMES,
}
INVALID: dict[str, st.SearchStrategy[Any]] = {
    "session": st.one_of(
        st.sampled_from(["", "\ud800", "x" * 513, "é" * 257]),
        st.integers(),
        st.none(),
    ),
    "role": st.one_of(
        st.text(max_size=8).filter(lambda r: r not in chatmem.ROLES),
        st.none(),
        st.integers(),
    ),
    "content": st.one_of(
        st.binary(max_size=8),
        st.integers(),
        st.none(),
        st.sampled_from(["x" * 4097, "\udfff"]),
    ),
    "user": st.one_of(st.sampled_from(["", "\ud800", "x" * 513]), st.integers()),
    "metadata": st.one_of(
        st.dictionaries(st.text(max_size=8), NOT_JSON, min_size=1, max_size=2),
        st.lists(JSON, max_size=2),
        st.text(max_size=4),
    ),
    "created": st.one_of(
        st.datetimes(), st.integers(), st.text(max_size=10), st.dates()
    ),
}


@st.composite
def arguments(draw: st.DrawFn) -> dict[str, Any]:
    """Draw the arguments of add, at most one of them wrong."""
    broken = draw(st.sampled_from([None, None, None, None, *VALID]))
    return {
        name: draw(INVALID[name] if name == broken else strategy)
        for name, strategy in VALID.items()
    }


ARGUMENTS = arguments()


def _settings(counts: Counts, scale: int = 1) -> settings:
    return settings(
        max_examples=counts.examples * scale,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def same_message(stored: Message, wanted: Message) -> bool:
    return (
        stored.session_id == wanted.session_id
        and stored.role == wanted.role
        and stored.content == wanted.content
        and stored.user_id == wanted.user_id
        and stored.metadata == wanted.metadata
    )


def _sync(store: BaseChatMessageMemory) -> None:
    sync: Callable[[], None] | None = getattr(store, "sync", None)
    if sync is not None:
        sync()


# -- ids shaped like code ------------------------------------------------------


@pytest.mark.parametrize("backend", ALL)
def test_injection_shaped_ids_stay_plain_data(
    backend: str, make_spec: Callable[[str], Spec], record: Record, tmp_path: Path
) -> None:
    """Ids shaped like SQL, keys, globs, frames and paths stay plain data."""
    spec = make_spec(backend)
    files_before = sorted(p.name for p in tmp_path.iterdir())
    store = spec.open()
    try:
        stored = {}
        for number, hostile in enumerate(HOSTILE_IDS):
            message = store.add(hostile, "user", f"#{number}", user_id=hostile)
            stored[hostile] = message
        # A NUL is refused by PostgreSQL text; elsewhere it is data too.
        try:
            stored["nul\x00id"] = store.add("nul\x00id", "user", "nul")
        except InvalidMessage:
            assert backend == "postgres"

        assert store.sessions() == sorted(stored)
        assert store.count() == len(stored)
        for hostile, message in stored.items():
            assert store.history(hostile) == [message]
            assert store.get(str(message.id)) == message
            if hostile in HOSTILE_IDS:
                assert store.query(user_id=hostile) == [message]
                assert store.sessions(user_id=hostile) == [hostile]
                assert store.count(session_id=hostile, user_id=hostile) == 1

        # Deleting one glob-shaped session deletes that session only.
        assert store.delete_session("*") == 1
        assert store.delete_user("[a-z]*") == 1
        assert store.count() == len(stored) - 2
        assert store.history("chatmem:*") == [stored["chatmem:*"]]
    finally:
        store.close()

    if backend == "redis":
        import redis

        with redis.Redis.from_url(spec.url) as client:
            keys = [key.decode() for key in client.scan_iter(count=1000)]
        assert keys and all(key.startswith("chatmem:") for key in keys)
        assert not [key for key in keys if "*" in key or "\n" in key]
    if backend == "sqlite":
        after = sorted(p.name for p in tmp_path.iterdir())
        made = set(after) - set(files_before)
        db = Path(spec.url.removeprefix("sqlite:///")).name
        assert made <= {db, f"{db}-wal", f"{db}-shm"}, made

    record.tried(
        f"{len(HOSTILE_IDS)} ids shaped like SQL, format strings, Redis "
        "globs, key separators and RESP frames, paths and path traversal, "
        "control and bidi characters, 512 bytes, plus a NUL; each as "
        "session and user id, read back by every query, two deleted"
    )
    held = (
        "each came back as the same plain string through get, history, "
        "query, sessions and count; deleting '*' and '[a-z]*' removed one "
        "message each"
    )
    if backend == "redis":
        held += "; every key in the database kept the chatmem: prefix"
    if backend == "sqlite":
        held += "; no file appeared beside the database"
    if backend == "postgres":
        held += "; the NUL id was refused with InvalidMessage"
    record.held(held)


# -- the public API ------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL)
def test_public_api_takes_anything_and_raises_only_documented_errors(
    backend: str,
    make_spec: Callable[[str], Spec],
    counts: Counts,
    record: Record,
) -> None:
    """Arbitrary arguments to the API are stored exactly or refused cleanly."""
    spec = make_spec(backend)
    store = spec.open(max_message_bytes=4096)
    outcomes = {"stored": 0, "refused": 0}

    @_settings(counts)
    @given(fields=ARGUMENTS)
    def add_one(fields: dict[str, Any]) -> None:
        before = store.count()
        try:
            message = store.add(
                fields["session"],
                fields["role"],
                fields["content"],
                user_id=fields["user"],
                metadata=fields["metadata"],
                created_at=fields["created"],
            )
        except ChatMemoryError as exc:
            assert isinstance(exc, InvalidMessage), exc
            assert store.count() == before
            outcomes["refused"] += 1
            return
        outcomes["stored"] += 1
        wanted = Message(
            session_id=fields["session"],
            role=fields["role"],
            content=fields["content"],
            user_id=fields["user"],
            metadata=fields["metadata"] or {},
        )
        got = store.get(str(message.id))
        assert same_message(got, wanted)
        assert store.history(fields["session"])[-1] == got
        created = fields["created"]
        if created is not None:
            assert got.created_at == created
        assert store.count() == before + 1

    @_settings(counts)
    @given(
        cursor=st.one_of(st.text(max_size=10), st.integers(), st.none()),
        count=st.one_of(st.none(), st.integers(-5, 10**12), st.booleans()),
        when=TIMES,
        role=st.one_of(st.none(), st.text(max_size=6)),
    )
    def read(cursor: Any, count: Any, when: Any, role: Any) -> None:
        calls: list[Callable[[], Any]] = [
            lambda: store.get(cursor),
            lambda: store.history("s", last=count),
            lambda: store.history("s", limit=count, before=cursor),
            lambda: store.history("s", after=cursor),
            lambda: store.query(start=when, role=role, limit=count),
            lambda: store.query(end=when, user_id=cursor),
            lambda: store.delete(cursor),
            lambda: store.max_messages(count),
        ]
        for call in calls:
            # Anything else escaping fails the example.
            with contextlib.suppress(InvalidMessage, MessageNotFound):
                call()

    try:
        add_one()
        read()
    finally:
        store.close()

    record.tried(
        f"{counts.examples} generated adds, most with one argument wrong "
        "(ids empty, too long, not strings or lone surrogates; unknown roles; "
        "bytes, oversize or non-string content; non-JSON or non-dict "
        "metadata; naive, offset or non-datetime times) and "
        f"{counts.examples} generated rounds of get, history, query, delete "
        "and max_messages with wrong types, negative and huge counts"
    )
    record.held(
        f"{outcomes['stored']} stored and read back exactly, "
        f"{outcomes['refused']} refused with InvalidMessage leaving the count "
        "unchanged; reads raised only InvalidMessage or MessageNotFound"
    )


@pytest.mark.parametrize("backend", ALL)
def test_oversize_and_deeply_nested_metadata_is_refused(
    backend: str, make_spec: Callable[[str], Spec], record: Record
) -> None:
    """Oversize and deeply nested metadata is refused and stores nothing."""
    spec = make_spec(backend)
    store = spec.open(max_message_bytes=4096)
    try:
        store.add("kept", "user", "before")

        def nested(depth: int) -> dict[str, Any]:
            value: dict[str, Any] = {}
            for _ in range(depth):
                value = {"d": value}
            return value

        bad: list[dict[str, Any]] = [
            nested(40),
            nested(200_000),
            {"big": "x" * 5000},
            {"list": list(range(2000))},
            {"wide": {str(i): i for i in range(1000)}},
        ]
        for metadata in bad:
            with pytest.raises(InvalidMessage):
                store.add("hostile", "user", "x", metadata=metadata)
            batch = [
                Message(session_id="hostile", role="user", content="ok"),
                Message(
                    session_id="hostile", role="user", content="x", metadata=metadata
                ),
            ]
            with pytest.raises(InvalidMessage):
                store.add_messages(batch)
        with pytest.raises(InvalidMessage):
            store.add("hostile", "user", "x" * 5000)
        _sync(store)
        assert store.sessions() == ["kept"]
        assert store.count() == 1
    finally:
        store.close()

    record.tried(
        "metadata nested 40 and 200,000 levels, metadata of 5,000 to 9,000 "
        "bytes and 5,000 bytes of content against max_message_bytes=4096, "
        "alone and as the second message of a batch"
    )
    record.held("each raised InvalidMessage; no message and no session was stored")


@pytest.mark.parametrize("backend", ALL)
def test_times_at_the_ends_of_the_calendar(
    backend: str, make_spec: Callable[[str], Spec], record: Record
) -> None:
    """Times at the calendar's ends are stored exactly or refused cleanly."""
    spec = make_spec(backend)
    store = spec.open()
    ahead, behind = timezone(timedelta(hours=5)), timezone(timedelta(hours=-5))
    edges = [
        datetime.min.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC) - timedelta(microseconds=1),
        datetime(2000, 2, 29, 23, 59, 59, 999_999, tzinfo=ahead),
    ]
    beyond = [datetime.min.replace(tzinfo=ahead), datetime.max.replace(tzinfo=behind)]
    try:
        for when in edges:
            message = store.add("edges", "user", "x", created_at=when)
            assert store.get(str(message.id)).created_at == when
        # end is exclusive: the query leaves out the message at datetime.max.
        assert len(store.query(start=edges[0], end=edges[1])) == len(edges) - 1
        for when in beyond:
            with pytest.raises(InvalidMessage):
                store.add("edges", "user", "x", created_at=when)
            with pytest.raises(InvalidMessage):
                store.query(start=when)
        assert store.count() == len(edges)
    finally:
        store.close()

    record.tried(
        "created_at at 0001-01-01 and 9999-12-31 (UTC), just before the "
        "epoch and on a leap day at +05:00; and 0001-01-01+05:00 and "
        "9999-12-31-05:00, which fall outside the calendar in UTC"
    )
    record.held(
        "the first four came back to the microsecond and a query from the "
        "first to the last found the three before its exclusive end; the "
        "last two raised InvalidMessage from add and query and stored nothing"
    )


# -- the URL parser ------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SEGMENT = st.text(
    st.characters(blacklist_characters="/%", blacklist_categories=["Cs"]),
    max_size=12,
) | st.sampled_from(["..", ".", "%00", "%20", ":memory:", "?x=1", "#f", "%2"])


URL_GROUPS = {
    "memory": ["memory"],
    "sqlite": ["sqlite", "SQLITE"],
    "redis": ["redis", "rediss"],
    "postgres": ["postgresql", "postgres"],
    "kafka": ["kafka"],
    "unknown": ["mongodb", "", "x y", "redis+sentinel", "sqlite3"],
}


@pytest.mark.parametrize(
    "backend",
    list(URL_GROUPS),
)
def test_url_parser_raises_only_documented_errors(
    backend: str, counts: Counts, record: Record, tmp_path: Path
) -> None:
    """Arbitrary URLs open a store or raise a chatmem error, nothing else."""
    port = _closed_port()
    seen: dict[str, int] = {}
    # Deep enough that the '..' segments a URL may hold stay in tmp_path.
    root = tmp_path / "a" / "b" / "c" / "urls"
    root.mkdir(parents=True)
    schemes = URL_GROUPS[backend]

    def url_of(draw: Callable[..., Any]) -> str:
        scheme = draw(st.sampled_from(schemes))
        user = draw(st.sampled_from(["", "u@", "u:p@", ":p@", "u:p:q@", "%@", "@@"]))
        host = draw(st.sampled_from(["127.0.0.1", "[::1]", "", "[zz", "127.0.0.1:"]))
        where = draw(st.sampled_from([f":{port}", "", ":x", ":99999", ":-1", ":0"]))
        path = "/".join(draw(st.lists(SEGMENT, max_size=3)))
        query = draw(
            st.sampled_from(
                ["", "?timeout=x", "?schema=bad-name", "?retries=-1", "?a=%zz", "#x"]
            )
        )
        if scheme.lower() == "sqlite":
            return f"sqlite:///{root}/{path}{query}"
        return f"{scheme}://{user}{host}{where}/{path}{query}"

    @_settings(counts)
    @given(st.data())
    def open_any(data: st.DataObject) -> None:
        url = url_of(data.draw)
        plain = backend in ("memory", "unknown")
        options = {} if plain else {"timeout": 0.3}
        try:
            store = chatmem.open(url, **options)
        except ChatMemoryError as exc:
            name = type(exc).__name__
            seen[name] = seen.get(name, 0) + 1
            return
        seen["opened"] = seen.get("opened", 0) + 1
        store.close()

    open_any()
    for made in tmp_path.rglob("*"):
        assert tmp_path in made.parents, made

    record.tried(
        f"{counts.examples} generated URLs of the schemes {schemes}: odd user "
        "info, hosts, ports, paths and queries"
        + (
            ", paths with NUL, '..', ':memory:' and stray escapes"
            if backend == "sqlite"
            else ", servers on a closed port"
        )
    )
    shown = ", ".join(f"{n} {name}" for name, n in sorted(seen.items()))
    record.held(f"only chatmem errors escaped: {shown}")


# -- the JSON Lines import -----------------------------------------------------


def _good_line(number: int) -> str:
    message = Message(
        session_id=f"import-{number % 3}",
        role="user",
        content=f"imported {number}",
        user_id="u",
        metadata={"n": number},
        created_at=datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=number),
    )
    return json.dumps(message.to_dict())


CORRUPT = st.sampled_from(
    [
        "{",
        "[]",
        "null",
        "42",
        '"text"',
        '{"session_id": "s", "role": "user"}',
        '{"session_id": "s", "role": "robot", "content": "x"}',
        '{"session_id": 5, "role": "user", "content": "x"}',
        '{"session_id": "s", "role": "user", "content": ["x"]}',
        '{"session_id": "s", "role": "user", "content": "x", "created_at": 5}',
        '{"session_id": "s", "role": "user", "content": "x", "created_at": "soon"}',
        '{"session_id": "s", "role": "user", "content": "x", '
        '"created_at": "2026-12-01T00:00:00"}',
        '{"session_id": "s", "role": "user", "content": "x", "metadata": [1]}',
        '{"session_id": "s", "role": "user", "content": "\\ud800"}',
        '{"session_id": "", "role": "user", "content": "x"}',
        '{"session_id": "s", "role": "user", "content": "x", "metadata": '
        + "[" * 50
        + "]" * 50
        + "}",
        "[" * 100_000 + "]" * 100_000,
        '{"session_id": "s", "role": "user", "content": "x", "metadata": NaN}',
    ]
)


def _import(
    url: str, path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    status = cli(["--url", url, "import", str(path)])
    _, err = capsys.readouterr()
    return status, err


@pytest.mark.parametrize("backend", ["sqlite"])
def test_import_applies_whole_or_not_at_all(
    backend: str,
    make_spec: Callable[[str], Spec],
    counts: Counts,
    record: Record,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A JSON Lines import with any corruption applies nothing."""
    spec = make_spec(backend)
    path = tmp_path / "import.jsonl"
    tally = {"applied": 0, "refused": 0}

    @_settings(counts)
    @given(
        lines=st.lists(
            st.one_of(st.integers(0, 50).map(_good_line), CORRUPT), max_size=6
        ),
        tail=st.sampled_from([b"", b"\n", b"\xff\xfe\n", b"\n\n   \n"]),
    )
    def run(lines: list[str], tail: bytes) -> None:
        path.write_bytes("\n".join(lines).encode() + tail)
        with chatmem.open(spec.url) as store:
            before = store.count()
        status, err = _import(spec.url, path, capsys)
        with chatmem.open(spec.url) as store:
            after = store.count()
        assert "Traceback" not in err
        if status == 0:
            tally["applied"] += 1
            assert after == before + len(lines)
        else:
            tally["refused"] += 1
            assert status == 2 and err.startswith("chatmem: "), (status, err)
            assert after == before, "a refused import stored messages"

    run()
    record.tried(
        f"{counts.examples} generated files mixing valid lines with truncated "
        "JSON, non-objects, missing and mistyped fields, unknown roles, naive "
        "and bad times, lone surrogates, 50-deep and 100,000-deep nesting, "
        "NaN, blank lines and invalid UTF-8, through `chatmem import`"
    )
    record.held(
        f"{tally['applied']} files applied whole, {tally['refused']} refused "
        "with exit status 2 and a one-line error, storing nothing"
    )


@pytest.mark.parametrize("backend", PERSISTENT)
def test_corrupt_last_line_of_an_import_stores_nothing(
    backend: str,
    make_spec: Callable[[str], Spec],
    record: Record,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A corrupt last line keeps every earlier line of an import out."""
    spec = make_spec(backend)
    # The CLI takes no backend options; PostgreSQL reads its schema from
    # the URL's query instead.
    url = spec.url
    if "schema" in spec.options:
        url = f"{url}?schema={spec.options['schema']}"
    path = tmp_path / "import.jsonl"
    good = [_good_line(n) for n in range(200)]
    path.write_text("\n".join([*good, '{"session_id": "s"']) + "\n")
    status, err = _import(url, path, capsys)
    assert status == 2 and "Line 201" in err, err
    with chatmem.open(url) as store:
        assert store.count() == 0

    path.write_text("\n".join(good) + "\n")
    status, _ = _import(url, path, capsys)
    assert status == 0
    with chatmem.open(url) as store:
        _sync(store)
        assert store.count() == 200

    record.tried("`chatmem import` of 200 valid lines and a truncated 201st")
    record.held(
        "exit status 2 naming line 201 and nothing stored; the same file "
        "without the bad line stored all 200"
    )


# -- coverage-guided fuzzing ---------------------------------------------------

FUZZ = str(Path(__file__).with_name("fuzz.py"))

# Runs per property-test example: an open of sqlite writes a file, so
# that target runs a twentieth as many.
FUZZ_TARGETS = [
    pytest.param("redis", "url-redis", 500, id="url-redis"),
    pytest.param("postgres", "url-postgresql", 500, id="url-postgresql"),
    pytest.param("sqlite", "url-sqlite", 500, id="url-sqlite"),
    pytest.param("rabbitmq", "url-rabbitmq", 500, id="url-rabbitmq"),
    pytest.param("kafka", "url-kafka", 500, id="url-kafka"),
    pytest.param("all", "open", 25, id="open"),
    pytest.param("all", "message", 500, id="message"),
]


@pytest.mark.parametrize(("backend", "target", "scale"), FUZZ_TARGETS)
def test_fuzzed_parsers_raise_only_documented_errors(
    backend: str,
    target: str,
    scale: int,
    counts: Counts,
    record: Record,
    tmp_path: Path,
) -> None:
    """Coverage-guided fuzzing (atheris) finds no undocumented exception."""
    pytest.importorskip("atheris", reason="atheris is not installed")
    runs = counts.examples * scale
    done = subprocess.run(
        [
            sys.executable,
            FUZZ,
            target,
            f"-runs={runs}",
            f"-seed={SEED}",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record.tried(f"atheris target {target!r}, {runs:,} runs, seed {SEED}")
    record.held("every input was accepted or refused with a chatmem error")
