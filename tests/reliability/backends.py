"""The backends the reliability suite runs against, one entry each.

An entry says how to make a fresh store of its backend (a :class:`Spec`:
URL, options and the server behind it) and what the backend can be asked
to survive. Adding a backend to every reliability test is one entry in
``BACKENDS``; the tests that need a server skip a backend without one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import chatmem
from chatmem import BaseChatMessageMemory
from tests.servers import LocalServer


@dataclass(frozen=True)
class Spec:
    """One fresh store of a backend: what ``chatmem.open`` takes, and the
    server that holds it (None for embedded backends)."""

    backend: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    server: LocalServer | None = None

    def open(self, **extra: Any) -> BaseChatMessageMemory:
        """Open a new handle on this store."""
        return chatmem.open(self.url, **{**self.options, **extra})

    def to_json(self) -> str:
        """Return the URL and options for a child process."""
        return json.dumps({"url": self.url, "options": self.options})

    def via(self, host: str, port: int) -> Spec:
        """Return the same store reached through another address."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rpartition("@")
        userinfo = f"{netloc[0]}@" if netloc[1] else ""
        moved = parts._replace(netloc=f"{userinfo}{host}:{port}")
        return replace(self, url=urlunsplit(moved))


Maker = Callable[[pytest.FixtureRequest, Path], Spec]


@dataclass(frozen=True)
class Backend:
    """What the suite knows about one backend."""

    name: str
    make: Maker
    #: Messages outlive the process that wrote them.
    persistent: bool
    #: Several processes can open the same store at once.
    shared: bool
    #: The session fixture of tests/servers.py that runs its server.
    server_fixture: str | None = None
    #: A restarted server still holds what it acknowledged.
    server_keeps_data: bool = True
    #: Seconds the timeout options are set to in the fault tests.
    fault_timeout: float = 2.0
    #: Keyword options that bound the time and retries of a call.
    fault_options: dict[str, Any] = field(default_factory=dict)
    #: Reads are served by a local index, without the server.
    reads_local: bool = False
    #: Writes per round of the connection-cut test; a cut costs a log
    #: client a reconnect backoff, so the log backends do fewer.
    cut_writes: int = 60
    #: Share of the property-test examples that open stores per example:
    #: a Kafka handle's first write waits about a second for the producer.
    open_examples: float = 1.0


def unique(prefix: str) -> str:
    """Return a name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def _memory(request: pytest.FixtureRequest, tmp: Path) -> Spec:
    return Spec("memory", "memory://")


def _sqlite(request: pytest.FixtureRequest, tmp: Path) -> Spec:
    return Spec("sqlite", f"sqlite:///{tmp / unique('chat')}.db")


def _redis(request: pytest.FixtureRequest, tmp: Path) -> Spec:
    # Database 2, emptied for each store: the conformance suite uses 1,
    # and a store's statistics count its whole database.
    import redis

    server = request.getfixturevalue("redis_server")
    url = urlsplit(server.url)._replace(path="/2").geturl()
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return Spec("redis", url, server=server)


def _postgres(request: pytest.FixtureRequest, tmp: Path) -> Spec:
    server = request.getfixturevalue("postgres_server")
    return Spec("postgres", server.url, {"schema": unique("r")}, server=server)


def _kafka(request: pytest.FixtureRequest, tmp: Path) -> Spec:
    server = request.getfixturevalue("kafka_server")
    url = f"{server.url.rstrip('/')}/{unique('reliability')}"
    return Spec("kafka", url, server=server)


def _rabbitmq(request: pytest.FixtureRequest, tmp: Path) -> Spec:
    server = request.getfixturevalue("rabbitmq_server")
    url = f"{server.url.rstrip('/')}/{unique('reliability')}"
    return Spec("rabbitmq", url, server=server)


BACKENDS: dict[str, Backend] = {
    "memory": Backend("memory", _memory, persistent=False, shared=False),
    "sqlite": Backend("sqlite", _sqlite, persistent=True, shared=True),
    "redis": Backend(
        "redis",
        _redis,
        persistent=True,
        shared=True,
        server_fixture="redis_server",
        fault_options={"timeout": 2.0, "retries": 3},
    ),
    "postgres": Backend(
        "postgres",
        _postgres,
        persistent=True,
        shared=True,
        server_fixture="postgres_server",
        fault_options={"timeout": 2.0, "retries": 2},
    ),
    "kafka": Backend(
        "kafka",
        _kafka,
        persistent=True,
        shared=True,
        server_fixture="kafka_server",
        # Tansu keeps topics in memory: a restarted broker is empty.
        server_keeps_data=False,
        fault_options={"timeout": 2.0},
        reads_local=True,
        cut_writes=12,
        open_examples=0.25,
    ),
    "rabbitmq": Backend(
        "rabbitmq",
        _rabbitmq,
        persistent=True,
        shared=True,
        server_fixture="rabbitmq_server",
        fault_options={"timeout": 2.0},
        reads_local=True,
        cut_writes=12,
        open_examples=0.25,
    ),
}

PERSISTENT = sorted(name for name, b in BACKENDS.items() if b.persistent)
SHARED = sorted(name for name, b in BACKENDS.items() if b.shared)
SERVERS = sorted(name for name, b in BACKENDS.items() if b.server_fixture)
ALL = sorted(BACKENDS)
