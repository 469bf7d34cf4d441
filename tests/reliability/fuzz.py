"""Coverage-guided fuzzing of chatmem's parsers with atheris.

Run as a script by test_hostile.py, since atheris ends the process when
it is done::

    python fuzz.py <target> -runs=<n> -seed=<seed>

Targets:

``url-<scheme>``
    the URL parser of one backend (``redis``, ``postgresql``, ``kafka``,
    ``sqlite``, ``rabbitmq``) on ``<scheme>://<the bytes as text>``; no
    parser connects anywhere.
``open``
    ``chatmem.open`` of ``memory://<text>`` and of ``sqlite:///<folder>/
    <text>`` with the text made a plain file name.
``message``
    ``Message.from_dict`` on a record of fuzzed fields (lone surrogates
    included) and fuzzed JSON metadata, then the checks a store runs
    before it writes (``chatmem.message.prepare``).

Any exception other than a :class:`chatmem.ChatMemoryError` is a crash,
and atheris exits non-zero with the input that caused it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from typing import Any

import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

with atheris.instrument_imports(include=["chatmem"]):
    import chatmem
    from chatmem.backends import kafka, postgres, rabbitmq, redis, sqlite
    from chatmem.message import Message, prepare

FOLDER = tempfile.mkdtemp(prefix="chatmem-fuzz-")
NOW = datetime(2026, 12, 4, tzinfo=UTC)

PARSERS: dict[str, Any] = {
    "redis": redis.parse_url,
    "postgresql": postgres.split_url,
    "kafka": kafka.parse_url,
    "sqlite": sqlite.path_from_url,
    "rabbitmq": rabbitmq.parse_url,
}


def url_target(scheme: str) -> Any:
    """Return a target feeding ``scheme://<fuzzed text>`` to a parser."""
    parse = PARSERS[scheme]

    def fuzz(data: bytes) -> None:
        text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(200)
        with contextlib.suppress(chatmem.ChatMemoryError):
            parse(f"{scheme}://{text}")

    return fuzz


def fuzz_open(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    in_memory = provider.ConsumeBool()
    text = provider.ConsumeUnicodeNoSurrogates(200)
    try:
        if in_memory:
            chatmem.open(f"memory://{text}").close()
        else:
            # Only a name inside the folder: the URL path is the caller's.
            name = text.replace("/", "_").replace("%", "_").replace("..", "_")
            chatmem.open(f"sqlite:///{FOLDER}/{name}").close()
    except chatmem.ChatMemoryError:
        pass


def fuzz_message(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    record: dict[str, Any] = {}
    for field in ("session_id", "role", "content", "user_id", "created_at"):
        if provider.ConsumeBool():
            record[field] = provider.ConsumeUnicode(40)
    # Text that is not JSON leaves the metadata out.
    with contextlib.suppress(ValueError, RecursionError):
        record["metadata"] = json.loads(provider.ConsumeUnicode(120))
    with contextlib.suppress(chatmem.ChatMemoryError):
        prepare(Message.from_dict(record), 1 << 16, NOW)


TARGETS = {
    **{f"url-{scheme}": url_target(scheme) for scheme in PARSERS},
    "open": fuzz_open,
    "message": fuzz_message,
}


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    try:
        atheris.Fuzz()
    finally:
        for name in os.listdir(FOLDER):
            os.remove(os.path.join(FOLDER, name))
        os.rmdir(FOLDER)


if __name__ == "__main__":
    main()
