"""The frameworks stay optional: chatmem imports none of them unasked."""

from __future__ import annotations

import subprocess
import sys

import pytest

FRAMEWORKS = ("langchain", "langchain_core", "agents", "llama_index", "openai")

ADAPTERS = [
    ("langchain", "langchain_core", "langchain"),
    ("openai_agents", "agents", "openai-agents"),
    ("llama_index", "llama_index", "llama-index"),
]


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_using_chatmem_imports_no_framework() -> None:
    code = f"""
import asyncio, sys
import chatmem, chatmem.integrations

with chatmem.open("memory://") as memory:
    memory.add("s1", "user", "hi")
    memory.history_window("s1", 100)

async def main():
    async with await chatmem.open_async("memory://") as memory:
        await memory.add("s1", "user", "hi")

asyncio.run(main())
roots = {{name.split(".")[0] for name in sys.modules}}
print(sorted(roots & set({FRAMEWORKS!r})))
"""
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("adapter", "framework", "extra"), ADAPTERS)
def test_a_missing_framework_names_the_extra(
    adapter: str, framework: str, extra: str
) -> None:
    # A None entry in sys.modules makes the import fail as if the
    # package were not installed.
    code = f"""
import sys
sys.modules[{framework!r}] = None
try:
    import chatmem.integrations.{adapter}
except ImportError as exc:
    print(exc)
"""
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert f"pip install 'chatmem[{extra}]'" in done.stdout
