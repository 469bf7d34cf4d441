"""Writer processes for the crash and concurrency tests.

Run as a script by the tests, never imported by chatmem::

    python child.py crash '<spec json>' <session> <seed>
    python child.py write '<spec json>' <writer> <count> <sessions>

``crash`` writes batches of one to four messages into one session for as
long as it lives and prints, after each batch was acknowledged, one line
``<n of its first message> <id> <id> ...`` flushed at once; the test
kills it with SIGKILL. ``write`` opens the store, prints ``ready``, waits
for a line on stdin, adds ``count`` messages round-robin over the shared
sessions, and prints the ids it was given as one JSON list.

Both sides build the messages with :func:`expected`, so the test knows
what every acknowledged message must hold.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from typing import Any

import chatmem
from chatmem import Message

ROLES = ("user", "assistant", "tool", "system")

# A crash writer stops by itself after this many batches, so that a test
# whose kill never comes cannot leave it running.
MAX_BATCHES = 20_000


def expected(key: str, n: int) -> Message:
    """Return message ``n`` of the writer ``key``, without id or time."""
    digest = hashlib.sha256(f"{key}/{n}".encode()).digest()
    filler = "é€𝄞 ".join(digest.hex() for _ in range(digest[0] % 4))
    metadata: dict[str, Any] = {"key": key, "n": n}
    if n % 5 == 0:
        metadata["tool_calls"] = [{"id": f"c{n}", "args": {"q": [n, None, 1.5]}}]
    return Message(
        session_id=key,
        role=ROLES[n % 4],
        content=f"{key} message {n}: {filler}",
        user_id=f"user-{n % 3}",
        metadata=metadata,
    )


def batch_sizes(seed: int) -> list[int]:
    """Return the sizes of the crash writer's batches, in order."""
    rng = random.Random(seed)
    return [rng.choice((1, 1, 1, 2, 3, 4)) for _ in range(MAX_BATCHES)]


def crash(spec: dict[str, Any], session: str, seed: int) -> None:
    memory = chatmem.open(spec["url"], **spec["options"])
    n = 0
    for size in batch_sizes(seed):
        batch = [expected(session, n + i) for i in range(size)]
        stored = memory.add_messages(batch)
        ids = " ".join(str(message.id) for message in stored)
        sys.stdout.write(f"{n} {ids}\n")
        sys.stdout.flush()
        n += size
    memory.close()


def write(spec: dict[str, Any], writer: int, count: int, sessions: int) -> None:
    memory = chatmem.open(spec["url"], **spec["options"])
    print("ready", flush=True)
    sys.stdin.readline()

    ids = []
    for i in range(count):
        session = f"shared-{i % sessions}"
        message = memory.add(
            session, "user", f"w{writer} i{i}", metadata={"w": writer, "i": i}
        )
        ids.append(message.id)
    print(json.dumps(ids), flush=True)
    memory.close()


def main(argv: list[str]) -> None:
    mode, spec = argv[0], json.loads(argv[1])
    if mode == "crash":
        crash(spec, argv[2], int(argv[3]))
    elif mode == "write":
        write(spec, int(argv[2]), int(argv[3]), int(argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
