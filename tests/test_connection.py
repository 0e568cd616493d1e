"""One ``Connection`` on a loop over a socketpair: its close states and their transitions."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import recv_exactly, wait_until

import gevwire
from gevwire import ConnectionClosed
from gevwire._socket_io import ReadinessIO, SocketIO
from gevwire._uring import UringIO, UringLoop, uring_available
from gevwire.codecs import line
from gevwire.connection import Connection, ConnectionOptions, ConnState
from gevwire.loop import EventLoop

pytestmark = [pytest.mark.timeout(60), pytest.mark.io]


class Lines(gevwire.Handler):
    """Echoes each line upper-cased; ``half`` shuts the writing half after its reply,
    ``bye`` closes after its reply, ``big`` sends 8 MiB."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.closed: list[ConnState] = []
        self.conn: Connection | None = None

    def on_connect(self, conn: gevwire.Connection) -> None:
        self.conn = conn

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        self.frames.append(frame)
        if frame == b"half":
            conn.send(b"HALF")
            conn.shutdown_write()
            return None
        if frame == b"bye":
            conn.close()
            return b"BYE"
        if frame == b"big":
            conn.send(b"z" * (8 << 20))
            return None
        return bytes(frame).upper()

    def on_close(self, conn: gevwire.Connection) -> None:
        self.closed.append(conn.state)


@pytest.fixture(params=["epoll", "io_uring"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Lines, Connection, socket.socket]]:
    """A started connection on a running loop of each backend, and the peer's socket."""
    loop: EventLoop
    io: type[SocketIO] = ReadinessIO
    if request.param == "io_uring":
        ok, reason = uring_available()
        if not ok:
            pytest.skip(f"io_uring unavailable: {reason}")
        loop, io = UringLoop("test-connection"), UringIO
    else:
        loop = EventLoop("test-connection")
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(10)
    handler = Lines()
    conn = Connection(loop, ours.detach(), "pair", handler, line(),
                      ConnectionOptions(linger_timeout=5.0, max_write_buffer=64 << 20), io=io)
    loop.call_soon(conn.start)
    assert wait_until(lambda: handler.conn is conn)
    yield handler, conn, peer
    conn.abort()
    assert wait_until(lambda: conn.state is ConnState.CLOSED)
    loop.stop()
    thread.join(10)
    loop.close()
    peer.close()


def test_an_open_connection_echoes_and_says_so_in_its_repr(
    pair: tuple[Lines, Connection, socket.socket],
) -> None:
    _, conn, peer = pair
    peer.sendall(b"ping\n")
    assert recv_exactly(peer, 5) == b"PING\n"
    assert conn.state is ConnState.OPEN and conn.connected
    assert "open" in repr(conn)


def test_shutdown_write_sends_fin_after_the_replies_and_reading_goes_on(
    pair: tuple[Lines, Connection, socket.socket],
) -> None:
    handler, conn, peer = pair
    peer.sendall(b"half\n")
    assert recv_exactly(peer, 5) == b"HALF\n"
    assert peer.recv(16) == b""  # our FIN
    assert conn.state is ConnState.WRITE_SHUT
    assert "write-shut" in repr(conn)
    with pytest.raises(ConnectionClosed):
        conn.send(b"late")
    peer.sendall(b"still\n")  # we still read
    assert wait_until(lambda: handler.frames[-1:] == [b"still"])
    peer.shutdown(socket.SHUT_WR)  # the peer's EOF ends it
    assert wait_until(lambda: handler.closed == [ConnState.CLOSED])


def test_send_raises_at_once_after_shutdown_write_from_another_thread(
    pair: tuple[Lines, Connection, socket.socket],
) -> None:
    _, conn, peer = pair
    conn.shutdown_write()  # this (non-loop) thread
    assert conn.state in (ConnState.WRITE_SHUTTING, ConnState.WRITE_SHUT)
    with pytest.raises(ConnectionClosed):
        conn.send(b"x")
    assert peer.recv(16) == b""
    assert conn.state is ConnState.WRITE_SHUT


def test_close_flushes_unsent_output_first(
    pair: tuple[Lines, Connection, socket.socket],
) -> None:
    handler, conn, peer = pair
    peer.sendall(b"big\n")
    assert wait_until(lambda: conn.write_buffer_length > 0)  # the peer is not reading
    conn.close()
    assert wait_until(lambda: conn.state is ConnState.FLUSHING)
    assert not conn.connected
    assert "flushing" in repr(conn)
    got = recv_exactly(peer, (8 << 20) + 1)  # the whole reply, then the close
    assert got == b"z" * (8 << 20) + b"\n"
    assert peer.recv(16) == b""
    assert wait_until(lambda: handler.closed == [ConnState.CLOSED])


def test_a_close_while_the_peer_still_sends_lingers_until_its_eof(
    pair: tuple[Lines, Connection, socket.socket],
) -> None:
    handler, conn, peer = pair
    # More than one read takes: bytes are still arriving when the close comes.
    peer.sendall(b"a\n" * 1000 + b"bye\n" + b"m" * (256 << 10))
    reply = recv_exactly(peer, 2000 + 4)
    assert reply.endswith(b"BYE\n")
    assert peer.recv(16) == b""  # FIN after the last reply, not RST
    # epoll finds the peer's bytes still in the socket; io_uring's RECV has taken some
    # of them after close() was asked for: either way the peer is still sending.
    assert wait_until(lambda: conn.state is ConnState.LINGERING)
    assert handler.closed == []
    peer.sendall(b"discarded\n")
    peer.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: handler.closed == [ConnState.CLOSED])
    assert b"discarded" not in handler.frames
    assert handler.frames[-1] == b"bye"


def test_abort_closes_at_once(pair: tuple[Lines, Connection, socket.socket]) -> None:
    handler, conn, peer = pair
    conn.abort()
    assert wait_until(lambda: handler.closed == [ConnState.CLOSED])
    assert conn.fd == -1 and "closed" in repr(conn)
    assert peer.recv(16) == b""


def test_pause_reading_holds_frames_until_resume_reading(
    pair: tuple[Lines, Connection, socket.socket],
) -> None:
    """asyncio's pause_reading / resume_reading: nothing is read meanwhile (even with a
    partial frame buffered), replies and sends still go out, and the bytes that came
    are framed, in order, once reading resumes."""
    handler, conn, peer = pair
    peer.sendall(b"one\ntw")
    assert recv_exactly(peer, 4) == b"ONE\n"
    conn.pause_reading()
    assert wait_until(lambda: conn.reading_paused)
    peer.sendall(b"o\nthree\n")
    conn.send(b"pushed")  # output is not held
    assert recv_exactly(peer, 7) == b"pushed\n"
    threading.Event().wait(0.3)
    assert handler.frames == [b"one"]  # nothing read while paused
    conn.resume_reading()
    assert recv_exactly(peer, 10) == b"TWO\nTHREE\n"
    assert handler.frames == [b"one", b"two", b"three"] and not conn.reading_paused
    conn.pause_reading()
    conn.pause_reading()  # idempotent, as resume_reading
    conn.resume_reading()
    peer.sendall(b"four\n")
    assert recv_exactly(peer, 5) == b"FOUR\n"


def test_on_writable_changed_follows_the_water_marks(
    pair: tuple[Lines, Connection, socket.socket],
) -> None:
    """asyncio's pause_writing / resume_writing: False once unsent output passes the high
    water mark (16 MiB to a peer that is not reading yet), True once it drained."""
    handler, _, peer = pair
    changes: list[bool] = []
    handler.on_writable_changed = lambda c, writable: changes.append(writable)  # type: ignore[method-assign]
    peer.sendall(b"big\nbig\n")  # (io_uring: the second queues behind the SEND in flight)
    assert wait_until(lambda: changes == [False])
    assert recv_exactly(peer, 2 * ((8 << 20) + 1)) == (b"z" * (8 << 20) + b"\n") * 2
    assert wait_until(lambda: changes == [False, True])
    peer.sendall(b"small\n")  # below the mark: no change
    assert recv_exactly(peer, 6) == b"SMALL\n"
    assert changes == [False, True]


def test_a_large_reply_waits_for_the_socket_by_reference_not_copied(
    pair: tuple[Lines, Connection, socket.socket],
) -> None:
    """The 8 MiB the socket does not take at once (epoll: the rest of a short write;
    io_uring: a reply behind the SEND in flight) stays in the reply's own bytes; a later
    reply is buffered after it, and the peer gets both, in order."""
    _, conn, peer = pair
    uring = isinstance(conn._io, UringIO)
    peer.sendall(b"big\nbig\n" if uring else b"big\n")
    assert wait_until(lambda: conn._io._output.length > 0)
    held = conn._io._output._buf
    assert type(held) is bytes and held.startswith(b"zzzz") and held.endswith(b"z\n")
    peer.sendall(b"ping\n")
    big = b"z" * (8 << 20) + b"\n"
    expected = big * (2 if uring else 1) + b"PING\n"
    assert recv_exactly(peer, len(expected)) == expected
    assert wait_until(lambda: conn.loop.bytes_out == len(expected))  # counted once each
