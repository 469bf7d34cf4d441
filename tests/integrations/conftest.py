"""Stores the adapter tests run on: the in-process arena and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import chatmem
from chatmem import BaseChatMessageMemory


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store."""
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'chat.db'}"


@pytest.fixture
def memory(store_url: str) -> Iterator[BaseChatMessageMemory]:
    """A fresh, empty synchronous store, closed after the test."""
    with chatmem.open(store_url) as store:
        yield store
