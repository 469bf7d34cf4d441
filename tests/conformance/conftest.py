"""Fixtures that run every conformance test on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatmem import BaseChatMessageMemory

from .targets import TARGETS, Target


@pytest.fixture(params=sorted(TARGETS))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A backend's fresh store, closed after the test."""
    made = TARGETS[request.param](request, tmp_path)
    try:
        yield made
    finally:
        made.close_all()


@pytest.fixture
def memory(target: Target) -> BaseChatMessageMemory:
    """A fresh, empty store of the backend under test."""
    return target.open()
