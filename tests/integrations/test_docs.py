"""The examples in docs/integrations run as written, with no network."""

from __future__ import annotations

import re
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "integrations"

# Page, and the module its examples need.
PAGES = [
    ("langchain.md", "langchain_core"),
    ("openai-agents.md", "agents"),
    ("llama-index.md", "llama_index.core"),
]

CODE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def examples(page: str) -> list[str]:
    return CODE.findall((DOCS / page).read_text(encoding="utf-8"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse every connection and name lookup beyond this machine."""
    real_connect = socket.socket.connect
    real_lookup = socket.getaddrinfo

    def local(host: Any) -> bool:
        return host in (None, "localhost", "127.0.0.1", "::1") or (
            isinstance(host, (bytes, bytearray)) and host == b"localhost"
        )

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
            raise OSError(f"The docs tests run offline; refused {address!r}.")
        real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not local(host):
            raise OSError(f"The docs tests run offline; refused to look up {host!r}.")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


def test_every_page_has_examples_and_an_install_line() -> None:
    extras = {
        "langchain.md": "langchain",
        "openai-agents.md": "openai-agents",
        "llama-index.md": "llama-index",
    }
    assert sorted(p.name for p in DOCS.glob("*.md")) == sorted(extras)
    for page, extra in extras.items():
        assert examples(page), page
        text = (DOCS / page).read_text(encoding="utf-8")
        assert f"pip install 'chatmem[{extra}]'" in text


@pytest.mark.parametrize(("page", "module"), PAGES)
@pytest.mark.usefixtures("offline")
def test_examples_run(
    page: str,
    module: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip(module)
    # The examples write chat.db in the working directory.
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for index, code in enumerate(examples(page)):
        with warnings.catch_warnings():
            # langchain-core deprecates RunnableWithMessageHistory; the
            # page says so, and chatmem supports it while it ships.
            warnings.filterwarnings(
                "ignore", "RunnableWithMessageHistory is deprecated"
            )
            exec(compile(code, f"{page} example {index + 1}", "exec"), namespace)
    assert capsys.readouterr().out
    assert (tmp_path / "chat.db").exists()
