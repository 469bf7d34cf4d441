"""A loopback TCP proxy that a test can cut, stall or close like a network.

The client under test connects to the proxy instead of the server. The
proxy forwards bytes both ways until the test changes its mode:

``cut()``
    closes every open connection at once, both sides, as a reset router
    or a killed server connection would; new connections work again.
``refuse(True)``
    accepts each new connection and closes it at once, so every connect
    fails; ``accepted`` counts them, which shows how often a client
    retried.
``stall(True)``
    keeps connections open but forwards nothing, like a server that
    stopped answering; bytes sent meanwhile are delivered on resume.

Connections cut by the proxy count in ``cuts``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

HOST = "127.0.0.1"


class Proxy:
    """Forward one loopback port to another; see the module docstring."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self._listener = socket.create_server((HOST, port), reuse_port=False)
        self.host = HOST
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._refusing = False
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def open_connections(self) -> int:
        """How many client connections are being forwarded now."""
        with self._lock:
            return len(self._pairs)

    def cut(self) -> int:
        """Close every forwarded connection; return how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self.cuts += len(pairs)
        for pair in pairs:
            for sock in pair:
                _shut(sock)
        return len(pairs)

    def refuse(self, refusing: bool) -> None:
        """Close new connections at once (True) or forward them (False)."""
        self._refusing = refusing

    def stall(self, stalled: bool) -> None:
        """Stop forwarding bytes (True) or resume (False)."""
        if stalled:
            self._flowing.clear()
        else:
            self._flowing.set()

    def close(self) -> None:
        """Stop listening and cut every connection."""
        self._closed = True
        self._flowing.set()
        _shut(self._listener)
        self.cut()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            if self._refusing:
                _shut(client)
                continue
            try:
                upstream = socket.create_connection((HOST, self.target_port), 5)
            except OSError:
                _shut(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if data:
                self._flowing.wait()
            try:
                if not data:
                    break
                sink.sendall(data)
            except OSError:
                break
        # One side ended: end the other too, as a closed connection would.
        self._forget(source, sink)
        _shut(source)
        _shut(sink)

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            self._pairs = [
                pair for pair in self._pairs if not any(s in pair for s in socks)
            ]


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
