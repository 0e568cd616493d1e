"""The compiled TLS step (``gevwire._speedups.TLSPath``) equals the pure one in every
effect.

A TLS connection on a socketpair is driven turn by turn (a real epoll loop, no thread):
a client session's records are fed to it cut at random places, with a small send buffer
so that replies are written in part and the rest waits for writability.  Handlers answer,
close, raise, send or answer nothing by the frame's first byte; the stream may end with
the client's close_notify, its EOF, or a forged record.  Everything the client receives,
what the handler saw, the errors, the counters and the connection's state must be the
same with the compiled step as without it (the connection's own methods).
"""

from __future__ import annotations

import gc
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import LineCodec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tls_support import Certs, make_certs

import gevwire
from gevwire import connection as connection_module
from gevwire._compiled import speedups
from gevwire._socket_io import ReadinessIO
from gevwire.connection import ConnectionOptions, TLSConnection
from gevwire.loop import EventLoop
from gevwire.tls import TLSSession

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(speedups is None,
                       reason="gevwire._speedups is not built here (no C compiler at "
                              "install, or GEVWIRE_PURE_PYTHON set)"),
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


class Actor(gevwire.Handler):
    """By the frame's first byte: ``r`` raises, ``c`` closes and answers, ``n`` answers
    nothing, ``s`` sends a copy first, ``e`` answers empty bytes; else echoes."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.errors: list[str] = []
        self.closed = 0

    def on_message(self, conn: Any, frame: Any) -> Any:
        self.seen.append(bytes(frame))
        kind = frame[:1]
        if kind == b"r":
            raise ValueError("raised")
        if kind == b"c":
            conn.close()
        if kind == b"n":
            return None
        if kind == b"s":
            conn.send(b"sent " + bytes(frame))
        if kind == b"e":
            return b""
        return frame

    def on_error(self, conn: Any, error: BaseException) -> None:
        self.errors.append(f"{type(error).__name__}: {getattr(error, 'reason', '')} "
                           f"from {type(error.__cause__).__name__}")

    def on_close(self, conn: Any) -> None:
        self.closed += 1


class Peer:
    """A server-side ``TLSConnection`` on one end of a socketpair, the client's session
    on the other; the loop is turned by hand."""

    def __init__(self, certs: Certs, codec: Any, compiled: bool,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        with monkeypatch.context() as patch:
            if not compiled:
                patch.setattr(connection_module, "_speedups", None)
            self.loop = EventLoop()
            self.loop.thread_id = threading.get_ident()
            server_sock, self.sock = socket.socketpair()
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            server_sock.setblocking(False)
            self.sock.setblocking(False)
            self.handler = Actor()
            self.conn = TLSConnection(
                self.loop, server_sock.detach(), "peer", self.handler, codec,
                ConnectionOptions(), io=ReadinessIO,
                tls=TLSSession(certs.server_context(), server_side=True))
            self.conn.start()
            self.client = TLSSession(certs.client_context(), server_side=False,
                                     server_hostname="localhost")
            self.received = bytearray()
            self.peer_eof = False
            self.send(self.client.start())
            for _ in range(20):
                self.settle()
                out = self.client.outgoing()
                if out:
                    self.send(out)
                elif self.client.handshake_done and self.conn.tls.handshake_done:
                    break
            assert self.client.handshake_done and self.conn.tls.handshake_done
        token = self.conn._io._token
        self.path_installed = self.loop._callbacks[token] != self.conn._io._on_events
        self.loop.bytes_in = self.loop.bytes_out = 0

    def send(self, data: bytes) -> None:
        """Send all of ``data``, turning the loop while the socket is full."""
        view = memoryview(data)
        for _ in range(10_000):
            if not view:
                return
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                self.turn()
                self.read_client()
        raise AssertionError("the server stopped reading")

    def turn(self) -> None:
        loop = self.loop
        got = loop.backend.wait(0)
        loop.now = time.monotonic()
        loop.backend.dispatch(got)
        if loop.after_events:
            loop.run_after_events()
        if loop._tasks:
            loop._run_tasks()

    def settle(self, turns: int = 50) -> None:
        """Turn and read the client's side until neither has anything more to do."""
        for _ in range(turns):
            self.turn()
            got = self.read_client()
            if not got and not self.conn._io.has_unsent() and not self.loop.after_events:
                self.turn()
                if not self.read_client():
                    return

    def read_client(self) -> bool:
        got = False
        while not self.peer_eof:
            try:
                chunk = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except ConnectionResetError:
                self.peer_eof = True
                break
            if not chunk:
                self.peer_eof = True
                break
            got = True
            try:
                self.received += self.client.receive(chunk)
            except gevwire.TLSError:
                self.received += b"<client failed>"
        return got

    def observed(self) -> dict[str, Any]:
        loop = self.loop
        return {
            "received": bytes(self.received),
            "client eof": (self.client.eof, self.peer_eof),
            "seen": self.handler.seen,
            "errors": self.handler.errors,
            "closed": self.handler.closed,
            "state": self.conn.state,
            "bytes": (loop.bytes_in, loop.bytes_out),
            "frames": (loop.frames_in, loop.frames_out),
            "tls failures": loop.tls_failures,
            "loop errors": loop.errors,
        }

    def close(self) -> None:
        self.sock.close()
        if self.conn.state != gevwire.connection.ConnState.CLOSED:
            self.conn._close_now()
        self.loop.close()


def stream(client: TLSSession, messages: list[bytes], ending: str) -> bytes:
    data = b"".join(client.send(m) for m in messages)
    if ending == "close_notify":
        data += client.close()
    elif ending == "forged":
        data += b"\x17\x03\x03\x00\x20" + bytes(range(32))
    return data


def run(certs: Certs, codec: Any, compiled: bool, monkeypatch: pytest.MonkeyPatch,
        messages: list[bytes], cuts: list[int], ending: str) -> dict[str, Any]:
    peer = Peer(certs, codec, compiled, monkeypatch)
    try:
        assert peer.path_installed == compiled
        data = stream(peer.client, messages, ending)
        pos = 0
        for cut in [*cuts, len(data)]:
            piece = data[pos:pos + cut]
            pos += len(piece)
            if piece:
                try:
                    peer.send(piece)
                except (BrokenPipeError, ConnectionResetError, AssertionError):
                    break  # (closed by the server: what it did is observed below)
                peer.settle()
        if ending == "eof":
            peer.sock.shutdown(socket.SHUT_WR)
        peer.settle()
        return peer.observed()
    finally:
        peer.close()


kinds = st.sampled_from([b"x", b"x", b"x", b"r", b"c", b"n", b"s", b"e"])
message = st.tuples(kinds, st.integers(0, 3000) | st.sampled_from([20000, 70000]))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(message, min_size=1, max_size=8),
       cuts=st.lists(st.integers(1, 20000), max_size=12),
       ending=st.sampled_from(["none", "close_notify", "eof", "forged"]),
       lines=st.booleans())
def test_the_compiled_tls_step_equals_the_connections_own_methods(
        certs: Certs, monkeypatch: pytest.MonkeyPatch, messages: list[tuple[bytes, int]],
        cuts: list[int], ending: str, lines: bool) -> None:
    if lines:  # several frames per read, partial ones, replies gathered in a batch
        frames = [kind + b"a" * size + b"\n" for kind, size in messages]
        codec: Any = LineCodec()
    else:  # each read's plaintext is a frame: the TLS echo's codec
        frames = [kind + b"a" * size for kind, size in messages]
        codec = gevwire.RawCodec()
    compiled = run(certs, codec, True, monkeypatch, frames, cuts, ending)
    pure = run(certs, codec, False, monkeypatch, frames, cuts, ending)
    assert compiled == pure


def test_the_compiled_step_serves_echo_and_is_dropped_at_close(
        certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    peer = Peer(certs, gevwire.RawCodec(), True, monkeypatch)
    try:
        assert peer.path_installed
        path = peer.conn._tls_read.__self__  # type: ignore[attr-defined]
        assert type(path).__name__ == "TLSPath"
        peer.send(peer.client.send(b"hello"))
        peer.settle()
        assert peer.received == b"hello"
        peer.conn._close_now()
        assert peer.conn._tls_read == peer.conn._tls_received
        del path
        # It holds the session's OpenSSL objects: nothing keeps it once the connection
        # has closed (the loop's callback went with the fd), so they are not left for
        # the cyclic GC.
        assert not [o for o in gc.get_objects() if type(o).__name__ == "TLSPath"]
    finally:
        peer.close()


def test_frame_timeout_keeps_the_records_on_the_connections_methods(
        certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """``frame_timeout`` follows record boundaries in ``TLSSession``: no compiled step."""
    loop = EventLoop()
    loop.thread_id = threading.get_ident()
    a, b = socket.socketpair()
    try:
        conn = TLSConnection(loop, a.detach(), "peer", Actor(), gevwire.RawCodec(),
                             ConnectionOptions(frame_timeout=5.0), io=ReadinessIO,
                             tls=TLSSession(certs.server_context(), server_side=True))
        conn._use_compiled_path()
        assert conn._tls_read == conn._tls_received
    finally:
        b.close()
        loop.close()
