"""Secrets: a password in a URL never shows in logs, errors, repr or CLI output.

Every record logged at DEBUG by any logger is captured, every exception
is formatted whole (with its chained causes, as a traceback would show
it), and the CLI runs as a child process; none may hold the password,
plain or percent-escaped, whether the server accepted it or refused.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest

import chatmem
from chatmem import ChatMemoryError
from tests.servers import RedisServer, ServerUnavailable

from .backends import Spec, unique
from .conftest import Record

PASSWORD = "pw-S3cr3t/xy:zz@y"
FORMS = (PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD))


def leaked(text: str) -> bool:
    return any(form in text for form in FORMS)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GuardedRedis(RedisServer):
    """A Redis server that requires the password."""

    def _command(self) -> list[str]:
        return [*super()._command(), "--requirepass", PASSWORD]

    def _probe(self) -> bool:
        auth = f"*2\r\n$4\r\nAUTH\r\n${len(PASSWORD)}\r\n{PASSWORD}\r\n".encode()
        with socket.create_connection((self.host, self.port), 2) as sock:
            sock.sendall(auth + b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
        return reply == b"+OK\r\n+PONG\r\n"


@pytest.fixture(scope="module")
def guarded_redis() -> Iterator[GuardedRedis]:
    try:
        server = GuardedRedis()
        server.start()
    except ServerUnavailable as exc:
        pytest.skip(f"TEST SERVER UNAVAILABLE: {exc}")
    try:
        yield server
    finally:
        server.close()


def _cases(
    request: pytest.FixtureRequest, backend: str, make_spec: Callable[[str], Spec]
) -> list[tuple[str, str, dict[str, object]]]:
    """Return (what, url, options) for a server that accepts the password
    and ones that refuse it or cannot be reached."""
    secret = quote(PASSWORD, safe="")
    closed = _closed_port()
    if backend == "redis":
        good = request.getfixturevalue("guarded_redis")
        plain = request.getfixturevalue("redis_server")
        return [
            ("accepted", f"redis://:{secret}@127.0.0.1:{good.port}/0", {}),
            ("wrong password", f"redis://:{secret}x@127.0.0.1:{good.port}/0", {}),
            ("no password set", f"redis://u:{secret}@127.0.0.1:{plain.port}/0", {}),
            ("unreachable", f"redis://:{secret}@127.0.0.1:{closed}/0", {}),
        ]
    if backend == "rabbitmq":
        node = request.getfixturevalue("rabbitmq_server")
        user = unique("user")
        node.rabbitmqctl("add_user", user, PASSWORD)
        node.rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        stream = unique("secrets")
        where = f"127.0.0.1:{node.stream_port}/{stream}"
        return [
            ("accepted", f"rabbitmq://{user}:{secret}@{where}", {}),
            ("wrong password", f"rabbitmq://{user}:{secret}x@{where}", {}),
            ("unreachable", f"rabbitmq://{user}:{secret}@127.0.0.1:{closed}/s", {}),
        ]
    spec = make_spec("postgres")
    assert spec.server is not None
    port = spec.server.port
    schema = f"?schema={spec.options['schema']}"
    base = f"postgresql://postgres:{secret}@127.0.0.1"
    return [
        # The test cluster trusts loopback, so it takes any password.
        ("accepted", f"{base}:{port}/chatmem_test{schema}", {}),
        ("no such database", f"{base}:{port}/missing_db{schema}", {}),
        ("unreachable", f"{base}:{closed}/chatmem_test", {}),
    ]


@pytest.mark.parametrize("backend", ["redis", "postgres", "rabbitmq"])
def test_passwords_never_shown(
    backend: str,
    request: pytest.FixtureRequest,
    make_spec: Callable[[str], Spec],
    caplog: pytest.LogCaptureFixture,
    record: Record,
) -> None:
    """A URL's password shows in no log record, error, repr or CLI output."""
    caplog.set_level(logging.DEBUG)
    cases = _cases(request, backend, make_spec)
    shown: list[str] = []
    outcomes = []

    for what, url, options in cases:
        try:
            store = chatmem.open(url, timeout=2, **options)
        except ChatMemoryError as exc:
            shown.append("".join(traceback.format_exception(exc)))
            shown.append(repr(exc))
            outcomes.append(f"{what}: {type(exc).__name__}")
        else:
            with store:
                store.add("s", "user", "hello", user_id="u")
                shown += [repr(store), str(store), repr(store.history("s"))]
                shown.append(repr(store.stats()))
            outcomes.append(f"{what}: opened")

        cli = subprocess.run(
            [sys.executable, "-m", "chatmem.cli", "--url", url, "stats"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        shown += [cli.stdout, cli.stderr]
        assert "Traceback" not in cli.stderr, cli.stderr

    assert outcomes[0].endswith("opened"), outcomes
    assert all(not o.endswith("opened") for o in outcomes[1:]), outcomes
    logged = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert caplog.records, "nothing was logged at DEBUG"
    for text in shown + logged:
        assert not leaked(text), text

    record.tried(
        "a password holding '/', ':' and '@' (percent-escaped in the URL) "
        f"against {'; '.join(outcomes)}; each also through `chatmem --url ... "
        "stats` as a child process; every logger at DEBUG"
    )
    record.held(
        f"the password, plain or escaped, was in none of {len(logged)} log "
        f"records, {len(shown)} error tracebacks, reprs and CLI outputs"
    )


@pytest.mark.parametrize("backend", ["kafka"])
def test_kafka_credentials_never_shown(
    backend: str,
    make_spec: Callable[[str], Spec],
    caplog: pytest.LogCaptureFixture,
    record: Record,
) -> None:
    """Kafka SASL credentials show in no log record, error or repr."""
    caplog.set_level(logging.DEBUG)
    spec = make_spec(backend)
    config = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "chatmem",
        "sasl.password": PASSWORD,
    }
    shown = []
    with pytest.raises(ChatMemoryError) as refused:
        chatmem.open(spec.url, timeout=2, client_config=config)
    shown.append("".join(traceback.format_exception(refused.value)))

    host = spec.url.removeprefix("kafka://")
    with pytest.raises(ChatMemoryError) as in_url:
        chatmem.open(f"kafka://u:{quote(PASSWORD, safe='')}@{host}", timeout=2)
    shown.append("".join(traceback.format_exception(in_url.value)))

    logged = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    for text in shown + logged:
        assert not leaked(text), text

    record.tried(
        "SASL credentials in client_config against a broker without SASL, "
        "and credentials written into a kafka:// URL; every logger at DEBUG"
    )
    record.held(
        f"both refused with {type(refused.value).__name__} and "
        f"{type(in_url.value).__name__}; the password was in none of "
        f"{len(logged)} log records or the two tracebacks"
    )
