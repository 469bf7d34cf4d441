"""Read a child process's output line by line, never past a deadline."""

from __future__ import annotations

import os
import select
import subprocess
import time


class LineReader:
    """Lines from a child's stdout pipe, each awaited up to a deadline.

    Reads the raw file descriptor, so that no line waits in a buffer that
    ``select`` cannot see.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        self._buffer = b""
        self._ended = False

    def readline(self, deadline: float) -> str | None:
        """Return the next line without its newline, or None at the end.

        Raises :class:`TimeoutError` when no full line came by ``deadline``
        (a ``time.monotonic()`` value).
        """
        while b"\n" not in self._buffer:
            if self._ended:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the child printed no line before the deadline")
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self._ended = True
                if self._buffer:
                    # A line cut by the kill: the child never finished it,
                    # so it acknowledges nothing.
                    self._buffer = b""
                continue
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    @property
    def fileno(self) -> int:
        """The pipe's file descriptor, for ``select``."""
        return self._fd

    @property
    def ended(self) -> bool:
        """Whether the child closed its output."""
        return self._ended and b"\n" not in self._buffer

    def available(self) -> list[str]:
        """Read what the pipe holds now; return the full lines in it."""
        ready, _, _ = select.select([self._fd], [], [], 0)
        if ready:
            chunk = os.read(self._fd, 65536)
            if chunk:
                self._buffer += chunk
            else:
                self._ended = True
        *lines, self._buffer = self._buffer.split(b"\n")
        if self._ended:
            self._buffer = b""
        return [line.decode() for line in lines]

    def rest(self, deadline: float) -> list[str]:
        """Return every remaining full line, up to the end of the output."""
        lines = []
        while (line := self.readline(deadline)) is not None:
            lines.append(line)
        return lines
