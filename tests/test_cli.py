"""The chatmem command line, run as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import chatmem
from chatmem.cli import main


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_add_then_read_back(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "--url", url, "add", "s1", "user", "hi", "--user", "u1"
    )
    assert status == 0
    message_id = out.strip()
    calls = json.dumps({"tool_calls": [{"id": "c1", "type": "function"}]})
    run(capsys, "--url", url, "add", "s1", "assistant", "", "--metadata", calls)

    status, out, _ = run(capsys, "--url", url, "get", message_id)
    got = json.loads(out)
    assert (got["content"], got["user_id"], got["role"]) == ("hi", "u1", "user")

    status, out, _ = run(capsys, "--url", url, "history", "s1", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [m["role"] for m in lines] == ["user", "assistant"]
    assert lines[1]["metadata"] == json.loads(calls)

    _, out, _ = run(capsys, "--url", url, "history", "s1", "--last", "1")
    assert "[tool calls]" in out
    _, out, _ = run(capsys, "--url", url, "sessions", "--user", "u1")
    assert out.split() == ["s1"]
    _, out, _ = run(capsys, "--url", url, "query", "--user", "u1", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [message_id]


def test_delete_forms(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    for session, user in [("s1", "u1"), ("s1", "u2"), ("s2", "u1")]:
        run(capsys, "--url", url, "add", session, "user", "x", "--user", user)
    assert run(capsys, "--url", url, "delete", "--user", "u1")[1] == (
        "deleted 2 messages\n"
    )
    assert run(capsys, "--url", url, "delete", "--session", "s1")[1] == (
        "deleted 1 messages\n"
    )
    status, _, err = run(capsys, "--url", url, "delete", "--id", "12345")
    assert status == 2
    assert "No message with id '12345'" in err


def test_stats_shows_n_equals_m_over_s(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--url", "memory://", "stats", "--size", "100")
    assert status == 0
    assert "n = M / s (s=100 B)  unbounded" in out

    budget = 1 << 20
    status, out, _ = run(
        capsys,
        "--url",
        "memory://",
        "--capacity-bytes",
        str(budget),
        "stats",
        "--size",
        "100",
    )
    with chatmem.open("memory://", capacity_bytes=budget) as memory:
        expected = memory.max_messages(100)
    assert expected is not None
    assert f"n = M / (s + o) (s=100 B)  {expected:,} messages" in out
    assert "n' = what still fits" in out


def test_export_import_round_trip(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with chatmem.open(url) as memory:
        memory.add("s1", "user", "héllo 👋", user_id="u1", metadata={"k": [1, None]})
        memory.add("s1", "tool", "{}", metadata={"tool_call_id": "c9"})
        memory.add("s2", "assistant", "\x00 nul")
        before = memory.query()
    dump = tmp_path / "dump.jsonl"
    assert run(capsys, "--url", url, "export", str(dump))[0] == 0

    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    status, out, _ = run(capsys, "--url", copy, "import", str(dump))
    assert (status, out) == (0, "imported 3 messages\n")
    with chatmem.open(copy) as memory:
        after = memory.query()
    strip = [
        (m.session_id, m.role, m.content, m.user_id, m.created_at, m.metadata)
        for m in before
    ]
    assert strip == [
        (m.session_id, m.role, m.content, m.user_id, m.created_at, m.metadata)
        for m in after
    ]


def test_corrupt_import_applies_nothing(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = {"session_id": "s1", "role": "user", "content": "ok"}
    bad_role = {"session_id": "s1", "role": "robot", "content": "no"}
    for lines in (
        [json.dumps(good), "{not json"],
        [json.dumps(good), json.dumps({"role": "user"})],
        [json.dumps(good), json.dumps(bad_role)],
    ):
        dump = tmp_path / "bad.jsonl"
        dump.write_text("\n".join(lines) + "\n")
        status, _, err = run(capsys, "--url", url, "import", str(dump))
        assert status == 2
        assert "chatmem:" in err
        with chatmem.open(url) as memory:
            assert memory.count() == 0


def test_demo_fills_and_reads_back(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "--url", url, "demo", "--sessions", "40")
    assert status == 0
    assert "The last turns of ticket-" in out
    assert "n = M / (s + o)" in out
    assert "demo [" in err
    with chatmem.open(url) as memory:
        count = memory.count()
        assert len(memory.sessions()) == 40
    # Running it again replaces the earlier run.
    run(capsys, "--url", url, "demo", "--sessions", "40")
    with chatmem.open(url) as memory:
        assert memory.count() == count


def test_unknown_scheme_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "--url", "sqlit:///x.db", "sessions")
    assert status == 2
    assert "Did you mean 'sqlite'" in err


def test_console_script_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "chatmem.cli", "--url", "memory://", "stats"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert "messages" in out.stdout
