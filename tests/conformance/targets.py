"""The stores the conformance suite runs against, one entry per backend.

A target opens fresh, empty stores for one test and can open the same store
again (a second handle, or a reopen after close). Adding a backend to the
whole suite is one entry in ``TARGETS``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import chatmem
from chatmem import BaseChatMessageMemory


@dataclass
class Target:
    """How to reach one fresh store of a backend."""

    name: str
    url: str
    persistent: bool
    options: dict[str, Any] = field(default_factory=dict)
    opened: list[BaseChatMessageMemory] = field(default_factory=list)

    def open(self, **options: Any) -> BaseChatMessageMemory:
        """Open (another handle on) this target's store."""
        store = chatmem.open(self.url, **{**self.options, **options})
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


def memory_target(request: pytest.FixtureRequest, tmp: Path) -> Target:
    return Target("memory", "memory://", persistent=False)


def sqlite_target(request: pytest.FixtureRequest, tmp: Path) -> Target:
    return Target("sqlite", f"sqlite:///{tmp / 'chat.db'}", persistent=True)


def postgres_target(request: pytest.FixtureRequest, tmp: Path) -> Target:
    # A schema per test: a fresh, empty set of tables in a few DDL
    # statements, much cheaper than CREATE DATABASE and a new pool.
    server = request.getfixturevalue("postgres_server")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    return Target("postgres", server.url, persistent=True, options={"schema": schema})


def redis_target(request: pytest.FixtureRequest, tmp: Path) -> Target:
    # Database 1 of the test server, emptied for each test: stats() counts
    # the whole database, so a key prefix per test would not do.
    import redis

    server = request.getfixturevalue("redis_server")
    url = urlsplit(server.url)._replace(path="/1").geturl()
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return Target("redis", url, persistent=True)


def kafka_target(request: pytest.FixtureRequest, tmp: Path) -> Target:
    # A topic per test: fresh and empty, on the one broker of the run.
    server = request.getfixturevalue("kafka_server")
    url = f"{server.url.rstrip('/')}/{unique('conformance')}"
    return Target("kafka", url, persistent=True)


def rabbitmq_target(request: pytest.FixtureRequest, tmp: Path) -> Target:
    # A stream per test: fresh and empty, on the one node of the run.
    server = request.getfixturevalue("rabbitmq_server")
    url = f"{server.url.rstrip('/')}/{unique('conformance')}"
    return Target("rabbitmq", url, persistent=True)


def unique(prefix: str) -> str:
    """Return a name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


TARGETS: dict[str, Callable[[pytest.FixtureRequest, Path], Target]] = {
    "memory": memory_target,
    "sqlite": sqlite_target,
    "postgres": postgres_target,
    "redis": redis_target,
    "kafka": kafka_target,
    "rabbitmq": rabbitmq_target,
}
