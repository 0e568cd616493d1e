"""The io_uring backend end to end: ``UringLoop`` on its own, ``backend=`` selection, the
per-message budget (no foreign call per message), cancellation on close, and EMFILE
back-off.  The rest of the behaviour is the shared suite run with
``GEVWIRE_BACKEND=io_uring`` (see the Makefile note in the report)."""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest
from conftest import Recorder, recv_exactly, wait_until

import gevwire
from gevwire import _socket_io as connection_module
from gevwire._sys import EV_READ, _uring
from gevwire._uring.connection import UringIO
from gevwire._uring.loop import UringLoop

AVAILABLE, REASON = _uring.availability()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"io_uring unavailable: {REASON}")


class Echo(gevwire.Handler):
    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame


@pytest.fixture
def loop() -> Any:
    lp = UringLoop("test-uring")
    thread = threading.Thread(target=lp.run, daemon=True)
    thread.start()
    assert wait_until(lambda: lp.running)
    yield lp
    lp.stop()
    thread.join(5)
    assert not thread.is_alive()
    lp.close()


# -- the loop ----------------------------------------------------------------------------


def test_call_soon_from_another_thread_wakes_the_loop(loop: UringLoop) -> None:
    done = threading.Event()
    seen: list[bool] = []
    time.sleep(0.05)  # the loop is asleep in io_uring_enter now
    loop.call_soon(lambda: (seen.append(loop.in_loop_thread()), done.set()))
    assert done.wait(5)
    assert seen == [True]


def test_timers_fire_in_order_and_cancel(loop: UringLoop) -> None:
    fired: list[str] = []
    loop.run_after(0.06, fired.append, "late")
    loop.run_after(0.02, fired.append, "early")
    loop.run_after(0.04, fired.append, "never").cancel()
    ticks: list[float] = []
    handle = loop.run_every(0.01, lambda: ticks.append(time.monotonic()))
    assert wait_until(lambda: len(fired) == 2 and len(ticks) >= 3, 5)
    handle.cancel()
    time.sleep(0.1)
    assert fired == ["early", "late"]


def test_readiness_registration_runs_on_the_embedded_epoll(loop: UringLoop) -> None:
    a, b = socket.socketpair()
    got: list[bytes] = []
    try:
        def on_ready(events: int) -> None:
            got.append(a.recv(100))

        loop.call_soon(loop.register, a.fileno(), on_ready, EV_READ)
        b.send(b"ping")
        assert wait_until(lambda: got == [b"ping"])
        b.send(b"pong")
        assert wait_until(lambda: got == [b"ping", b"pong"])
    finally:
        a.close()
        b.close()


def test_stop_returns_and_close_releases_the_ring() -> None:
    lp = UringLoop("stop-test")
    thread = threading.Thread(target=lp.run, daemon=True)
    thread.start()
    assert wait_until(lambda: lp.running)
    lp.stop()
    thread.join(5)
    assert not lp.running
    ring_fd = lp.ring.fd
    lp.close()
    with pytest.raises(OSError):
        os.fstat(ring_fd)


# -- backend selection -----------------------------------------------------------------


def test_backend_option_selects_and_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gevwire.Server(Echo(), address="127.0.0.1:0", backend="io_uring").backend == "io_uring"
    assert gevwire.Server(Echo(), address="127.0.0.1:0", backend="auto").backend == "io_uring"
    assert gevwire.Server(Echo(), address="127.0.0.1:0", backend="epoll").backend == "epoll"
    with pytest.raises(ValueError, match="backend"):
        gevwire.Server(Echo(), address="127.0.0.1:0", backend="kqueue-please")
    monkeypatch.setenv("GEVWIRE_BACKEND", "io_uring")
    assert gevwire.Server(Echo(), address="127.0.0.1:0").backend == "io_uring"
    monkeypatch.setenv("GEVWIRE_BACKEND", "epoll")
    assert gevwire.Server(Echo(), address="127.0.0.1:0").backend == "epoll"


def test_auto_falls_back_to_epoll_and_explicit_io_uring_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEVWIRE_NO_URING", "1")
    try:
        _uring.availability(refresh=True)
        assert gevwire.Server(Echo(), address="127.0.0.1:0", backend="auto").backend == "epoll"
        with pytest.raises(RuntimeError, match="GEVWIRE_NO_URING"):
            gevwire.Server(Echo(), address="127.0.0.1:0", backend="io_uring")
    finally:
        monkeypatch.delenv("GEVWIRE_NO_URING")
        _uring.availability(refresh=True)


# -- the per-message budget ------------------------------------------------------------


def _forbid_foreign_io(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    calls: Counter[str] = Counter()
    for name in ("raw_read", "raw_readv", "raw_writev", "read_bytes", "write_bytes"):
        original = getattr(connection_module, name)

        def wrapper(*args: Any, _name: str = name, _fn: Callable[..., Any] = original) -> Any:
            calls[_name] += 1
            return _fn(*args)

        monkeypatch.setattr(connection_module, name, wrapper)
    return calls


def _ping_pong(server: gevwire.Server, make: Callable[[int], bytes], count: int) -> int:
    loop = server.loops[0]
    assert isinstance(loop, UringLoop)
    with socket.create_connection(server.address[:2]) as sock:
        sock.settimeout(10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = make(0)
        sock.sendall(first)
        assert recv_exactly(sock, len(first)) == first
        enters = loop.enters
        for i in range(1, count + 1):
            message = make(i)
            sock.sendall(message)
            assert recv_exactly(sock, len(message)) == message
        return loop.enters - enters


def test_raw_echo_makes_no_foreign_call_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _forbid_foreign_io(monkeypatch)
    with gevwire.Server(Echo(), address="127.0.0.1:0", backend="io_uring") as server:
        enters = _ping_pong(server, lambda i: b"m%05d" % i, 300)
    assert sum(calls.values()) == 0
    # one io_uring_enter per turn; a ping-pong message needs about one turn (its SEND is
    # submitted by the enter that waits for the next RECV)
    assert enters <= 300 * 2 + 4


def test_framed_echo_submits_a_batch_in_one_send(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _forbid_foreign_io(monkeypatch)
    codec = gevwire.Codec(c.Prefixed(c.Int32ub, c.GreedyBytes))

    def make(i: int) -> bytes:
        return b"".join(codec.encode(b"frame %d/%d" % (i, k)) for k in range(8))

    with gevwire.Server(Echo(), address="127.0.0.1:0", codec=codec,
                        backend="io_uring") as server:
        enters = _ping_pong(server, make, 200)
        stats = server.stats()
    assert sum(calls.values()) == 0
    assert enters <= 200 * 2 + 4
    assert stats["frames_in"] == stats["frames_out"] == 201 * 8


# -- close, cancellation, fd reuse -----------------------------------------------------


def test_closed_connections_forget_their_user_data_and_reused_fds_are_safe() -> None:
    handler = Recorder()
    with gevwire.Server(handler, address="127.0.0.1:0", backend="io_uring") as server:
        loop = server.loops[0]
        assert isinstance(loop, UringLoop)
        baseline = loop.targets
        for _round in range(20):
            clients = [socket.create_connection(server.address[:2], timeout=10)
                       for _ in range(10)]
            for i, client in enumerate(clients):
                client.sendall(b"x%d" % i)
            for i, client in enumerate(clients):
                assert recv_exactly(client, len(b"x%d" % i)) == b"x%d" % i
            for client in clients:
                client.close()
            assert wait_until(lambda: server.connection_count == 0)
            # fd numbers are reused by the next round: every echo above was exact, so no
            # completion of a closed connection reached a new one
        assert wait_until(lambda: loop.targets == baseline), (loop.targets, baseline)
        assert len(handler.closed) == 200
        assert len({id(conn) for conn in handler.closed}) == 200


def test_abort_with_a_send_in_flight_cancels_it() -> None:
    class Flood(gevwire.Handler):
        conn: gevwire.Connection | None = None

        def on_connect(self, conn: gevwire.Connection) -> None:
            Flood.conn = conn

        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            return None

    handler = Flood()
    with gevwire.Server(handler, address="127.0.0.1:0", backend="io_uring") as server:
        loop = server.loops[0]
        assert isinstance(loop, UringLoop)
        baseline = loop.targets
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(server.address[:2])
        assert wait_until(lambda: handler.conn is not None)
        conn = handler.conn
        assert isinstance(conn._io, UringIO)
        big = b"z" * (8 << 20)
        conn.send(big)  # the socket cannot take it all: the SEND stays in flight
        assert wait_until(lambda: conn._io._sending is not None)
        conn.abort()
        assert wait_until(lambda: server.connection_count == 0)
        assert wait_until(lambda: loop.targets == baseline - 1 or loop.targets == baseline)
        client.close()


def test_emfile_backs_off_and_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    handler = Recorder()
    server = gevwire.Server(handler, address="127.0.0.1:0", backend="io_uring")
    clients = [socket.socket() for _ in range(3)]
    for client in clients:
        client.settimeout(10)
    try:
        # The limit is set before the ACCEPT is armed: io_uring reads RLIMIT_NOFILE then.
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 64), hard))
        server.start()
        loop = server.loops[0]
        filler = []
        try:
            while True:
                filler.append(os.dup(0))
        except OSError:
            pass
        turns = loop.turn_count
        for client in clients:
            client.connect(server.address[:2])
        assert wait_until(lambda: server.stats()["accept_backoffs"] >= 1)
        time.sleep(0.3)
        assert server.connection_count == 0
        assert loop.turn_count - turns < 100, "spinning on EMFILE"
        for fd in filler:
            os.close(fd)
        assert wait_until(lambda: server.connection_count == 3, 5)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for client in clients:
            client.close()
        server.stop(timeout=2)


def test_outbound_and_proxy_connections_use_the_readiness_path() -> None:
    with gevwire.Server(Echo(), address="127.0.0.1:0", backend="io_uring") as target, \
            gevwire.Server(Recorder(echo=False), address="127.0.0.1:0",
                           backend="io_uring") as dialer:
        conn = dialer.connect(f"127.0.0.1:{target.port}")
        assert type(conn) is gevwire.Connection  # an ordinary Connection on the UringLoop
        conn.send(b"over epoll-in-io_uring")
        assert wait_until(lambda: target.stats()["frames_in"] == 1)
        assert wait_until(lambda: dialer.stats()["frames_in"] == 1)
