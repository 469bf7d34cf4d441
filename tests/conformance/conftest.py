"""Fixtures that run every conformance test on every backend.

Every persistent backend runs twice: bare, and behind a hot tier
(``cache_bytes``) as the variant ``<name>+tier``. The variants are derived
from ``TARGETS``, so a backend added there is tested both ways.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from chatmem import BaseChatMessageMemory
from chatmem.registry import BUILTIN, backend_class

from .targets import TARGETS, Target

# Large enough for every session a conformance test writes, small enough
# that a test writing many sessions sees the tier evict.
TIER_BYTES = 256 << 10

Factory = Callable[[pytest.FixtureRequest, Path], Target]


def _tiered(factory: Factory) -> Factory:
    def make(request: pytest.FixtureRequest, tmp: Path) -> Target:
        bare = factory(request, tmp)
        options = {**bare.options, "cache_bytes": TIER_BYTES}
        return replace(bare, name=f"{bare.name}+tier", options=options)

    return make


def _persistent(name: str) -> bool:
    # Only a name that is a URL scheme says which class it opens.
    return name not in BUILTIN or backend_class(name).persistent


ALL_TARGETS: dict[str, Factory] = {
    **TARGETS,
    **{f"{n}+tier": _tiered(f) for n, f in TARGETS.items() if _persistent(n)},
}


@pytest.fixture(params=sorted(ALL_TARGETS))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A backend's fresh store, closed after the test."""
    made = ALL_TARGETS[request.param](request, tmp_path)
    try:
        yield made
    finally:
        made.close_all()


@pytest.fixture
def memory(target: Target) -> BaseChatMessageMemory:
    """A fresh, empty store of the backend under test."""
    return target.open()
