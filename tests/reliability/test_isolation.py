"""Isolation: no query under one namespace returns another's data.

Two handles on one store, under a generated pair of namespaces (chosen to
collide if anything treated a namespace as a prefix, a pattern or text
to normalise), write the same session and user ids. Every read of one
must return only its own messages, and its deletions must leave the
other's untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chatmem
from chatmem import BaseChatMessageMemory, MessageNotFound

from .backends import BACKENDS, SHARED, Spec
from .conftest import Counts, Record

TRICKY_PAIRS = [
    ("", "a"),
    ("a", "a:"),
    ("a", "a:b"),
    ("a:b", "a%3Ab"),
    ("a", "A"),
    ("\u00e9", "e\u0301"),
    ("a", "a "),
    ("*", "a"),
    ("chatmem", "chatmem:a"),
    ("t1", "t1\n"),
    ("x", "x%"),
    ("_", "-"),
    ("' OR 1=1 --", "a"),
    ("h", "h:s"),
]

NAMESPACE = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=12,
)
PAIRS = st.one_of(
    st.sampled_from(TRICKY_PAIRS),
    st.tuples(NAMESPACE, NAMESPACE).filter(lambda pair: pair[0] != pair[1]),
)


def _sync(store: BaseChatMessageMemory) -> None:
    sync: Callable[[], None] | None = getattr(store, "sync", None)
    if sync is not None:
        sync()


def _fill(store: BaseChatMessageMemory, tag: str) -> list[str]:
    ids = []
    for session in ("s", "shared", "*"):
        for user in ("u", None):
            message = store.add(session, "user", f"{tag} {session}", user_id=user)
            ids.append(str(message.id))
    return ids


def _only(store: BaseChatMessageMemory, tag: str, theirs: list[str]) -> None:
    reads = [
        *store.history("s"),
        *store.history("shared", last=10),
        *store.query(),
        *store.query(user_id="u"),
        *store.query(session_id="*", role="user"),
    ]
    assert reads and all(m.content.startswith(f"{tag} ") for m in reads)
    assert store.sessions() == ["*", "s", "shared"]
    assert store.sessions(user_id="u") == ["*", "s", "shared"]
    assert store.count() == 6
    assert store.count(user_id="u") == 3
    for message_id in theirs:
        with pytest.raises(MessageNotFound):
            store.get(message_id)
    # One delete is enough to show it: on a log backend each delete of an
    # id the index lacks first syncs with the log.
    with pytest.raises(MessageNotFound):
        store.delete(theirs[0])


@pytest.mark.parametrize("backend", SHARED)
def test_no_query_crosses_namespaces(
    backend: str,
    make_spec: Callable[[str], Spec],
    counts: Counts,
    record: Record,
) -> None:
    """Under any namespace pair, reads and deletes stay in their namespace."""
    spec = make_spec(backend)
    pairs: list[tuple[str, str]] = []
    examples = max(8, int(counts.examples * BACKENDS[backend].open_examples))

    @settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(pair=PAIRS)
    def check(pair: tuple[str, str]) -> None:
        first, second = pair
        one = spec.open(namespace=first)
        two = spec.open(namespace=second)
        try:
            # Side by side: a log handle's first write waits for its
            # producer, and the two waits need not add up.
            with ThreadPoolExecutor(2) as pool:
                filled = pool.map(_fill, (one, two), ("one", "two"))
                mine, theirs = list(filled)
            _sync(one)
            _sync(two)
            _only(one, "one", theirs)
            _only(two, "two", mine)

            # Deletes under one namespace leave the other whole.
            assert one.delete_session("s") == 2
            assert one.delete_user("u") == 2
            _sync(two)
            _only(two, "two", mine)
            pairs.append(pair)
        finally:
            for store in (one, two):
                for session in store.sessions():
                    store.delete_session(session)
                store.close()

    check()
    record.tried(
        f"{len(pairs)} namespace pairs ({len(TRICKY_PAIRS)} chosen to collide: "
        "default and named, prefixes, separators, their escapes, case, "
        "Unicode normal forms, trailing space and newline, globs, SQL; the "
        "rest generated), each writing the same session and user ids "
        "through two handles on one store"
    )
    record.held(
        "history, query, sessions and count under each namespace returned "
        "its own messages only; get of each of the other's ids and delete "
        "of one raised "
        "MessageNotFound; delete_session and delete_user left the other "
        "namespace whole"
    )


@pytest.mark.parametrize("backend", ["memory"])
def test_in_process_stores_share_nothing(backend: str, record: Record) -> None:
    """Every memory:// open is a store of its own."""
    one = chatmem.open("memory://", namespace="a")
    two = chatmem.open("memory://", namespace="a")
    message = one.add("s", "user", "one")
    assert two.count() == 0 and two.sessions() == []
    with pytest.raises(MessageNotFound):
        two.get(str(message.id))
    record.tried("two memory:// stores under the same namespace")
    record.held(
        "neither saw the other's messages: namespaces of one arena cannot "
        "meet, since each open is a separate store"
    )
