"""Wait for a condition with a deadline, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable

# Between checks: short enough not to slow a test, long enough not to
# spin a core that the server under test needs.
_POLL = 0.02


def wait_for(condition: Callable[[], object], seconds: float = 30.0) -> None:
    """Return once ``condition()`` is true; fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {seconds:g} s")
        time.sleep(_POLL)
