"""Every backend against a plain-list model under random operations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .targets import Target, unique

SESSIONS = st.sampled_from(["s1", "s2", "s:3", "s*{4}"])
USERS = st.sampled_from([None, "u1", "u2"])
ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
T0 = datetime(2026, 1, 1, tzinfo=UTC)

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            SESSIONS,
            ROLES,
            st.text(max_size=20),
            USERS,
            st.integers(0, 5),
        ),
        st.tuples(st.just("delete"), st.integers(0, 50)),
        st.tuples(st.just("delete_session"), SESSIONS),
        st.tuples(st.just("delete_user"), USERS.filter(bool)),
    ),
    max_size=25,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=operations, last=st.integers(1, 6), start=st.integers(0, 5))
def test_backend_matches_list_model(
    target: Target, ops: list[tuple[Any, ...]], last: int, start: int
) -> None:
    # Every example gets a namespace of its own within the test's store.
    memory = target.open(namespace=unique("model"))
    model: list[tuple[str, str, str, str, str | None, datetime]] = []
    try:
        for op in ops:
            if op[0] == "add":
                _, session, role, content, user, minute = op
                when = T0 + timedelta(minutes=minute)
                stored = memory.add(
                    session, role, content, user_id=user, created_at=when
                )
                model.append((stored.id or "", session, role, content, user, when))
            elif op[0] == "delete":
                if model:
                    victim = model.pop(op[1] % len(model))
                    memory.delete(victim[0])
            elif op[0] == "delete_session":
                gone = [m for m in model if m[1] == op[1]]
                assert memory.delete_session(op[1]) == len(gone)
                model = [m for m in model if m[1] != op[1]]
            else:
                gone = [m for m in model if m[4] == op[1]]
                assert memory.delete_user(op[1]) == len(gone)
                model = [m for m in model if m[4] != op[1]]

        for session in {m[1] for m in model}:
            expected = [m[0] for m in model if m[1] == session]
            assert [m.id for m in memory.history(session)] == expected
            assert [m.id for m in memory.history(session, last=last)] == expected[
                -last:
            ]
        order = {m[0]: i for i, m in enumerate(model)}
        since = T0 + timedelta(minutes=start)
        in_range = [m for m in model if m[5] >= since]
        in_range.sort(key=lambda m: (m[5], order[m[0]]))
        assert [m.id for m in memory.query(start=since)] == [m[0] for m in in_range]
        for user in ("u1", "u2"):
            mine = sorted(
                (m for m in model if m[4] == user), key=lambda m: (m[5], order[m[0]])
            )
            assert [m.id for m in memory.query(user_id=user)] == [m[0] for m in mine]
        assert memory.count() == len(model)
        assert memory.sessions() == sorted({m[1] for m in model})
        for entry in model:
            got = memory.get(entry[0])
            assert (got.session_id, got.role, got.content, got.user_id) == entry[1:5]
    finally:
        memory.close()
