"""Shared fixtures and helpers for the server-level tests (real loopback sockets).

Helpers here are imported by the test modules (``from conftest import ...``); fixtures
track every server and client socket they create and close them at teardown.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import gevwire
from gevwire.ringbuffer import RingBuffer

#: How long a blocking client socket operation may take before the test fails.
SOCKET_TIMEOUT = 10.0


# -- small helpers ---------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is truthy (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes (the socket's timeout bounds each ``recv``)."""
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            got = sum(len(c) for c in chunks)
            raise ConnectionError(f"EOF after {got} bytes, {size} more expected")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    """Read until the peer's FIN; fails on more than ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise AssertionError(f"more than {limit} bytes before EOF")


def peer_closed(sock: socket.socket, timeout: float = SOCKET_TIMEOUT) -> bool:
    """True once the peer closed (EOF or reset), discarding anything still sent before."""
    old = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    finally:
        sock.settimeout(old)


def fd_count() -> int:
    """Open fds of this process (the listing's own fd is counted every time alike)."""
    return len(os.listdir("/proc/self/fd"))


def raise_nofile_limit(needed: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit toward the hard limit; skip if ``needed`` can't fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")


def set_linger_reset(sock: socket.socket) -> None:
    """Make ``close()`` send RST instead of FIN (no TIME_WAIT left behind)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- handlers --------------------------------------------------------------------------


class Recorder(gevwire.Handler):
    """Records every callback (thread-safe for readers: lists only grow by append).

    ``echo``: return each frame as the reply.  ``on_error`` records the error and then
    does the default (log with traceback, close).
    """

    def __init__(self, *, echo: bool = True) -> None:
        self.echo = echo
        self.connected: list[gevwire.Connection] = []
        self.closed: list[gevwire.Connection] = []
        self.frames: list[tuple[gevwire.Connection, Any]] = []
        self.errors: list[tuple[gevwire.Connection, BaseException]] = []
        self.threads: list[tuple[str, gevwire.Connection, bool]] = []  # (callback, conn, ok)

    def on_connect(self, conn: gevwire.Connection) -> None:
        self.threads.append(("on_connect", conn, conn.loop.in_loop_thread()))
        self.connected.append(conn)

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        self.threads.append(("on_message", conn, conn.loop.in_loop_thread()))
        self.frames.append((conn, frame))
        return frame if self.echo else None

    def on_close(self, conn: gevwire.Connection) -> None:
        self.closed.append(conn)

    def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
        self.errors.append((conn, error))
        super().on_error(conn, error)

    def conn_for(
        self, sock: socket.socket, timeout: float = SOCKET_TIMEOUT
    ) -> gevwire.Connection:
        """The server side of client ``sock`` (waits for ``on_connect``)."""
        local = sock.getsockname()[:2]
        found: list[gevwire.Connection] = []

        def look() -> bool:
            found[:] = [c for c in list(self.connected) if c.peer_addr[:2] == local]
            return bool(found)

        assert wait_until(look, timeout), f"no connection from {local} reached on_connect"
        assert len(found) == 1
        return found[0]

    def data_from(self, conn: gevwire.Connection) -> bytes:
        """Every frame ``conn`` received, joined (for bytes frames)."""
        return b"".join(f for c, f in list(self.frames) if c is conn)


class _LineDecoder(gevwire.Decoder):
    """Cuts ``b"\\n"``-terminated lines from the ring only (the default ``decode_view``)."""

    __slots__ = ()

    def decode(self, ring: RingBuffer) -> bytes | None:
        end = ring.find(b"\n")
        if end < 0:
            return None
        line = ring.read(end + 1)
        return line[:-1]


class _FastLineDecoder(_LineDecoder):
    """Also cuts whole lines straight from a read's bytes (``decode_view``)."""

    __slots__ = ()

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        data = view.tobytes()
        frames: list[Any] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            frames.append(data[start:end])
            start = end + 1
        return frames, start


class LineCodec(gevwire.BaseCodec):
    """Newline-delimited frames; ``replies`` end in a newline too.

    ``view_fast_path=False`` leaves ``decode_view`` at the default (cut nothing), so every
    frame is cut from the ring.
    """

    def __init__(self, *, view_fast_path: bool = True) -> None:
        self.view_fast_path = view_fast_path

    def decoder(self) -> gevwire.Decoder:
        return _FastLineDecoder() if self.view_fast_path else _LineDecoder()

    def encode(self, message: Any) -> bytes:
        return bytes(message) + b"\n"


# -- backend ---------------------------------------------------------------------------
# Every Server without an explicit backend= uses $GEVWIRE_BACKEND (default epoll).
# ``pytest --backend=io_uring`` (or auto, or epoll) sets it for the run, subprocesses
# (the examples) included. Test modules that serve sockets are marked ``io``:
# ``make test`` runs them a second time with ``--backend=auto -m io``, and a test that
# starts a server in this process without the mark fails (it would skip io_uring).


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", choices=("epoll", "io_uring", "auto"), default=None,
                     help="the backend of every Server without backend= "
                          "(default: $GEVWIRE_BACKEND, else epoll)")


def pytest_configure(config: pytest.Config) -> None:
    backend = config.getoption("--backend")
    if backend:
        os.environ["GEVWIRE_BACKEND"] = backend


@pytest.fixture(autouse=True)
def _io_tests_are_marked(request: pytest.FixtureRequest,
                         monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail a test that starts a server on the default backend here while its module is
    not marked ``io`` (one that names its backend tests that backend on purpose)."""
    if request.node.get_closest_marker("io") is not None:
        yield
        return
    defaults: set[int] = set()  # id() of the servers made without backend=
    started: list[str] = []
    original_init = gevwire.Server.__init__
    original_start = gevwire.Server.start

    def init(self: gevwire.Server, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("backend") is None:
            defaults.add(id(self))
        original_init(self, *args, **kwargs)

    def start(self: gevwire.Server) -> gevwire.Server:
        if id(self) in defaults:
            started.append(repr(self))
        return original_start(self)

    monkeypatch.setattr(gevwire.Server, "__init__", init)
    monkeypatch.setattr(gevwire.Server, "start", start)
    yield
    if started:
        pytest.fail(f"{request.node.nodeid} starts a server on the default backend but its "
                    "module is not marked pytest.mark.io: make test would not run it on "
                    "io_uring")


def pytest_report_header() -> str:
    backend = os.environ.get("GEVWIRE_BACKEND") or "epoll"
    from gevwire._uring.loop import uring_available

    ok, reason = uring_available()
    state = "available" if ok else "unavailable: " + reason
    return f"gevwire backend: {backend} (io_uring {state})"


# -- fixtures --------------------------------------------------------------------------

ServeFn = Callable[..., gevwire.Server]
ConnectFn = Callable[..., socket.socket]


@pytest.fixture
def serve() -> Iterator[ServeFn]:
    """``serve(handler, **server_kwargs)``: a started server on ``127.0.0.1:0``."""
    servers: list[gevwire.Server] = []

    def start(handler: Any, **kwargs: Any) -> gevwire.Server:
        kwargs.setdefault("address", "127.0.0.1:0")
        server = gevwire.Server(handler, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop(timeout=2.0)
        assert server.wait(10), "server did not stop"


@pytest.fixture
def connect() -> Iterator[ConnectFn]:
    """``connect(server_or_address, rcvbuf=None, timeout=10)``: a tracked client socket."""
    socks: list[socket.socket] = []

    def open_client(
        target: gevwire.Server | tuple[Any, ...],
        *,
        rcvbuf: int | None = None,
        timeout: float = SOCKET_TIMEOUT,
    ) -> socket.socket:
        address = target.address if isinstance(target, gevwire.Server) else target
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        socks.append(sock)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(address[:2])
        return sock

    yield open_client
    for sock in socks:
        sock.close()


@pytest.fixture
def background() -> Iterator[Callable[..., threading.Thread]]:
    """``background(fn, *args)``: a started daemon thread, joined (bounded) at teardown."""
    threads: list[threading.Thread] = []

    def start(fn: Callable[..., Any], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        threads.append(thread)
        thread.start()
        return thread

    yield start
    for thread in threads:
        thread.join(15)
