"""Server and Connection over real loopback sockets."""

from __future__ import annotations

import logging
import random
import re
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest
from conftest import (
    ConnectFn,
    LineCodec,
    Recorder,
    ServeFn,
    fd_count,
    ipv6_loopback_available,
    peer_closed,
    raise_nofile_limit,
    recv_exactly,
    recv_until_eof,
    set_linger_reset,
    wait_until,
)

import gevwire
from gevwire import ConnectionClosed, WriteBufferFull
from gevwire._uring.loop import uring_available
from gevwire.connection import ConnState

pytestmark = [pytest.mark.timeout(60), pytest.mark.io]

MiB = 1 << 20
KiB = 1 << 10


def payload(size: int, seed: int) -> bytes:
    """Non-repeating bytes: a reordered or dropped chunk cannot go unnoticed."""
    return random.Random(seed).randbytes(size)


# -- many connections ------------------------------------------------------------------


@pytest.mark.parametrize("loops", [1, 4])
def test_thousand_concurrent_connections_echo(
    serve: ServeFn, connect: ConnectFn, loops: int
) -> None:
    count = 1000
    raise_nofile_limit(2 * count + 256)
    handler = Recorder()
    server = serve(handler, loops=loops)
    clients = [connect(server) for _ in range(count)]
    # Every connection is open on the server at the same time.
    assert wait_until(lambda: server.connection_count == count, 15), server.connection_count
    messages = [b"conn-%d:" % i + b"x" * (i % 41) + b"." for i in range(count)]
    for client, message in zip(clients, messages, strict=True):
        client.sendall(message)
    for client, message in zip(clients, messages, strict=True):
        assert recv_exactly(client, len(message)) == message
    per_loop = Counter(conn.loop for conn in handler.connected)
    assert set(per_loop) == set(server.loops)
    assert sum(per_loop.values()) == count
    for client in clients:
        client.close()
    assert wait_until(lambda: len(handler.closed) == count, 15), len(handler.closed)
    assert server.connection_count == 0


def test_loops_spread_connections_and_callbacks_run_on_the_owning_loop(
    serve: ServeFn, connect: ConnectFn
) -> None:
    handler = Recorder()
    server = serve(handler, loops=4)
    assert len(server.loops) == 4
    assert len({id(loop) for loop in server.loops}) == 4
    clients = [connect(server) for _ in range(8)]
    for i, client in enumerate(clients):
        client.sendall(b"ping %d" % i)
        assert recv_exactly(client, len(b"ping %d" % i)) == b"ping %d" % i
    conns = [handler.conn_for(client) for client in clients]
    per_loop = Counter(conn.loop for conn in conns)
    # Round-robin over the four I/O loops: two connections each.
    assert per_loop == {loop: 2 for loop in server.loops}
    # Each loop is its own thread, and every callback ran on its connection's loop.
    assert len({loop.thread_id for loop in server.loops}) == 4
    assert handler.threads and all(ok for _, _, ok in handler.threads)


# -- big and concurrent sends ----------------------------------------------------------


@pytest.mark.parametrize("sender", ["on_connect", "thread"])
def test_ten_mib_to_a_slow_reader_arrives_whole_and_in_order(
    serve: ServeFn,
    connect: ConnectFn,
    background: Callable[..., threading.Thread],
    sender: str,
) -> None:
    size = 10 * MiB
    data = payload(size, seed=10)

    class Push(Recorder):
        def on_connect(self, conn: gevwire.Connection) -> None:
            super().on_connect(conn)
            if sender == "on_connect":
                conn.send(data)

    handler = Push(echo=False)
    server = serve(handler)
    client = connect(server, rcvbuf=16 * KiB)
    conn = handler.conn_for(client)
    if sender == "thread":
        chunk = 64 * KiB

        def push() -> None:
            for offset in range(0, size, chunk):
                conn.send(data[offset : offset + chunk])

        background(push)
    # The peer is not reading yet: the rest waits in the output ring, under EPOLLOUT.
    assert wait_until(lambda: conn.write_buffer_length > 0, 10)
    received = bytearray()
    deadline = time.monotonic() + 40
    while len(received) < size:
        assert time.monotonic() < deadline, f"only {len(received)} bytes in time"
        chunk_in = client.recv(64 * KiB)
        assert chunk_in, f"EOF after {len(received)} bytes"
        received += chunk_in
        time.sleep(0.001)  # a slow reader: the server sees EAGAIN again and again
    assert len(received) == size
    assert received == data
    assert wait_until(lambda: conn.write_buffer_length == 0, 5)
    assert conn.connected


def test_eight_threads_sending_on_one_connection_never_interleave(
    serve: ServeFn, connect: ConnectFn, background: Callable[..., threading.Thread]
) -> None:
    threads, per_thread = 8, 1000
    handler = Recorder(echo=False)
    server = serve(handler)
    client = connect(server)
    conn = handler.conn_for(client)

    def message(t: int, seq: int) -> bytes:
        # Self-delimiting, with a thread-specific pad of a length known from (t, seq).
        pad = chr(ord("a") + t).encode() * ((seq * 7 + t * 13) % 97)
        return b"%d:%d:%s;" % (t, seq, pad)

    barrier = threading.Barrier(threads)

    def run(t: int) -> None:
        barrier.wait(10)
        for seq in range(per_thread):
            conn.send(message(t, seq))

    expected_size = sum(len(message(t, s)) for t in range(threads) for s in range(per_thread))
    workers = [background(run, t) for t in range(threads)]
    received = recv_exactly(client, expected_size)
    for worker in workers:
        worker.join(10)
    pattern = re.compile(rb"(\d+):(\d+):([a-z]*)")
    next_seq = [0] * threads
    parts = received.split(b";")
    assert parts[-1] == b""
    for part in parts[:-1]:
        match = pattern.fullmatch(part)
        assert match is not None, f"interleaved or torn message: {part[:80]!r}"
        t, seq = int(match[1]), int(match[2])
        assert match[3] + b";" == message(t, seq)[len(b"%d:%d:" % (t, seq)) :]
        assert seq == next_seq[t], f"thread {t}: got seq {seq}, expected {next_seq[t]}"
        next_seq[t] += 1
    assert next_seq == [per_thread] * threads


# -- half-closes -----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["on_connect", "thread", "on_message"])
def test_shutdown_write_flushes_pending_output_then_keeps_reading(
    serve: ServeFn, connect: ConnectFn, where: str
) -> None:
    # where="on_message" fails at the time of writing: see the comment in the test below
    # (shutdown_write during dispatch cuts off the replies not yet written).
    # The loopback kernel buffers take a few MiB at once; 8 MiB leaves >= 1 MiB queued.
    data = payload(8 * MiB, seed=1)

    class HalfClose(Recorder):
        def push(self, conn: gevwire.Connection) -> None:
            conn.send(data)
            conn.shutdown_write()

        def on_connect(self, conn: gevwire.Connection) -> None:
            super().on_connect(conn)
            if where == "on_connect":
                self.push(conn)

        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            super().on_message(conn, frame)
            if where == "on_message" and len(self.frames) == 1:
                self.push(conn)
            return None

    handler = HalfClose(echo=False)
    server = serve(handler)
    client = connect(server, rcvbuf=16 * KiB)
    conn = handler.conn_for(client)
    if where == "thread":
        handler.push(conn)
    elif where == "on_message":
        client.sendall(b"go")
    # >= 1 MiB is still queued after shutdown_write was called, so the FIN must wait.
    # (Both conditions: on the loop thread, send() may have queued the bytes while
    # shutdown_write, the next statement, has not run yet.)
    assert wait_until(lambda: conn.write_buffer_length >= MiB
                      and conn.state is not ConnState.OPEN, 10), conn.write_buffer_length
    with pytest.raises(ConnectionClosed):
        conn.send(b"too late")
    received = recv_until_eof(client, limit=len(data))
    assert len(received) == len(data)
    assert received == data
    # Half-closed, not closed: the server still reads what the peer sends now.
    assert conn.connected
    client.sendall(b"after-eof")
    assert wait_until(lambda: handler.data_from(conn).endswith(b"after-eof"), 10)
    assert handler.closed == []
    client.close()
    assert wait_until(lambda: handler.closed == [conn], 10)


@pytest.mark.parametrize("case", ["reply-one-frame", "send-batched", "reply-batched"])
def test_shutdown_write_inside_on_message_keeps_earlier_output(
    serve: ServeFn, connect: ConnectFn, case: str
) -> None:
    # Regression: shutdown_write() inside on_message used to send the FIN before the
    # replies of the read being handled (still in Connection._pending or not yet
    # returned), which then hit a shut socket and the peer got EOF and nothing else.
    class HalfCloseInHandler(Recorder):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            super().on_message(conn, frame)
            if case == "send-batched":
                conn.send(b"ack:" + frame)
                if frame == b"two":
                    conn.shutdown_write()
                return None
            if frame in (b"request", b"two"):
                conn.shutdown_write()
            return b"ack:" + frame

    handler = HalfCloseInHandler(echo=False)
    if case == "reply-one-frame":
        server = serve(handler)  # raw bytes: one frame per read
        client = connect(server)
        client.sendall(b"request")
        expected = b"ack:request"
    else:
        server = serve(handler, codec=LineCodec())
        client = connect(server)
        client.sendall(b"one\ntwo\n")  # one read, two frames: the batched dispatch path
        expected = b"ack:one\nack:two\n"
    assert recv_until_eof(client) == expected
    client.sendall(b"x\n")  # still readable after the half-close
    assert wait_until(lambda: len(handler.frames) == expected.count(b"ack:") + 1, 5)


def test_close_inside_on_message_still_sends_the_returned_reply(
    serve: ServeFn, connect: ConnectFn
) -> None:
    # Regression: close() inside on_message used to close at once and drop the reply
    # that on_message then returned (gev queues the close behind the reply).
    class Quit(Recorder):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            super().on_message(conn, frame)
            conn.close()
            return b"bye"

    handler = Quit(echo=False)
    server = serve(handler)
    client = connect(server)
    client.sendall(b"quit")
    assert recv_until_eof(client) == b"bye"


@pytest.mark.parametrize("view_fast_path", [True, False])
def test_codec_frames_in_a_single_read_are_dispatched(
    serve: ServeFn, connect: ConnectFn, view_fast_path: bool
) -> None:
    # Regression guard (a1c99fb, fixed in 0b9d51c): a codec that keeps the default
    # decode_view (cut nothing) had the read copied into the input ring, but the inlined
    # read path in Connection._on_events never called _cut_from_ring() for it, so its
    # frames waited until the peer sent more bytes.
    handler = Recorder()
    server = serve(handler, codec=LineCodec(view_fast_path=view_fast_path))
    client = connect(server)
    client.sendall(b"hello\n")
    assert recv_exactly(client, 6) == b"hello\n"
    client.sendall(b"a\nb\nc\n")
    assert recv_exactly(client, 6) == b"a\nb\nc\n"
    assert [f for _, f in handler.frames] == [b"hello", b"a", b"b", b"c"]


class DuckLineCodec:
    """A codec that does not derive from BaseCodec: only decoder() and encode()."""

    max_frame_size = 1 << 20

    def decoder(self) -> gevwire.Decoder:
        return LineCodec().decoder()

    def encode(self, message: Any) -> bytes:
        return bytes(message).upper() + b"\n"


def test_a_duck_typed_codec_serves_several_frames_per_read(
    serve: ServeFn, connect: ConnectFn
) -> None:
    server = serve(Recorder(), codec=DuckLineCodec())
    client = connect(server)
    client.sendall(b"a\nbb\nccc\n")  # one read: the batch path gathers three replies
    assert recv_exactly(client, 9) == b"A\nBB\nCCC\n"


class LastLineEnds(gevwire.Handler):
    """Echoes lines; on ``b"end"`` replies, then shuts down writing or closes."""

    def __init__(self, how: str) -> None:
        self.how = how

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        if frame == b"end":
            if self.how == "shutdown_write":
                conn.shutdown_write()
            else:
                conn.close()
            return b"bye"
        return frame


@pytest.mark.parametrize("how", ["shutdown_write", "close"])
def test_replies_of_a_whole_read_go_out_before_a_fin_asked_for_in_it(
    serve: ServeFn, connect: ConnectFn, how: str
) -> None:
    # A read's replies are written once the turn's events are handled; a FIN asked for
    # while handling that read must still come after them.
    server = serve(LastLineEnds(how), codec=LineCodec())
    client = connect(server)
    client.sendall(b"one\ntwo\nthree\nend\nnot dispatched after close\n"
                   if how == "close" else b"one\ntwo\nthree\nend\n")
    assert recv_until_eof(client) == b"one\ntwo\nthree\nbye\n"


def test_replies_of_many_connections_in_one_turn_reach_each_peer_in_order(
    serve: ServeFn, connect: ConnectFn
) -> None:
    server = serve(Recorder(), codec=LineCodec())
    clients = [connect(server) for _ in range(40)]
    for round_ in range(5):
        for i, client in enumerate(clients):  # each read holds several frames
            client.sendall(b"".join(b"%d-%d-%d\n" % (i, round_, k) for k in range(6)))
        for i, client in enumerate(clients):
            want = b"".join(b"%d-%d-%d\n" % (i, round_, k) for k in range(6))
            assert recv_exactly(client, len(want)) == want


def test_a_send_after_a_deferred_batch_keeps_the_order(
    serve: ServeFn, connect: ConnectFn
) -> None:
    class SendLater(gevwire.Handler):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            if frame == b"last":
                # Runs after this turn's events, behind the batch's deferred replies.
                conn.loop.call_soon(conn.send, b"sent later")
                conn.loop.run_after(0.01, conn.send, b"timer")
            return frame

    server = serve(SendLater(), codec=LineCodec())
    client = connect(server)
    client.sendall(b"a\nb\nlast\n")
    want = b"a\nb\nlast\nsent later\ntimer\n"
    assert recv_exactly(client, len(want)) == want


def test_peer_half_close_still_gets_every_reply(serve: ServeFn, connect: ConnectFn) -> None:
    # ~10 MiB of replies to 100 small requests: more than the kernel buffers hold, so
    # output is still queued when the server reads the FIN.  A high write_high_water
    # keeps reading on, so the FIN is read at once rather than after the output drained.
    class Amplify(Recorder):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            super().on_message(conn, frame)
            return (frame + b" ") * 8000

    handler = Amplify()
    server = serve(handler, codec=LineCodec(), write_high_water=32 * MiB)
    client = connect(server, rcvbuf=16 * KiB)
    requests = [b"request-%04d" % i for i in range(100)]
    client.sendall(b"".join(r + b"\n" for r in requests))
    client.shutdown(socket.SHUT_WR)
    conn = handler.conn_for(client)
    assert wait_until(lambda: len(handler.frames) == len(requests), 10)
    assert wait_until(lambda: conn.write_buffer_length > 0, 5)
    time.sleep(0.2)  # let the server see the FIN while its replies are still queued
    expected = b"".join((r + b" ") * 8000 + b"\n" for r in requests)
    received = recv_until_eof(client, limit=len(expected))
    assert len(received) == len(expected)
    assert received == expected
    assert wait_until(lambda: handler.closed == [conn], 10)


# -- fds -------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_ten_thousand_connect_close_cycles_leak_no_fds(serve: ServeFn) -> None:
    cycles, batch = 10_000, 50
    raise_nofile_limit(4 * batch + 256)
    handler = Recorder()
    server = serve(handler)
    address = server.address[:2]
    before = fd_count()
    for round_ in range(cycles // batch):
        clients = [socket.create_connection(address, timeout=10) for _ in range(batch)]
        for i, client in enumerate(clients):
            if (round_ + i) % 2:
                set_linger_reset(client)  # RST: the server's read fails (ECONNRESET)
            client.close()  # otherwise FIN: the server reads EOF
    assert wait_until(lambda: len(handler.closed) == cycles, 30), len(handler.closed)
    assert len(handler.connected) == cycles
    assert wait_until(lambda: server.connection_count == 0, 10)
    assert wait_until(lambda: fd_count() <= before, 5), (before, fd_count())
    assert fd_count() == before


def test_server_stop_releases_every_fd(serve: ServeFn, connect: ConnectFn) -> None:
    before = fd_count()
    handler = Recorder()
    server = serve(handler, loops=3)
    clients = [connect(server) for _ in range(6)]
    assert wait_until(lambda: server.connection_count == 6, 10)
    server.stop()
    assert server.wait(10)
    for client in clients:
        assert peer_closed(client)
        client.close()
    assert wait_until(lambda: fd_count() <= before, 5), (before, fd_count())
    assert len(handler.closed) == 6


def test_accept_backs_off_when_out_of_fds(serve: ServeFn) -> None:
    import resource

    handler = Recorder()
    server = serve(handler)
    if server.backend == "io_uring":
        pytest.skip("io_uring's ACCEPT reads RLIMIT_NOFILE when armed: the listener re-arms "
                    "on a changed limit one connection late, where this test expects none; "
                    "test_uring_server.py and test_hostile.py cover EMFILE back-off")
    loop = server.loops[0]
    clients = [socket.socket() for _ in range(5)]  # made now: no new fd is needed later
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for client in clients:
            client.settimeout(10)
        turns = loop.turn_count
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))  # every new fd: EMFILE
        try:
            for client in clients:
                client.connect(server.address[:2])  # completes in the kernel's backlog
            time.sleep(0.5)
            spun = loop.turn_count - turns
            accepted = server.connection_count
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert accepted == 0
        # Backing off (0.1 s) costs a few turns; a readable listener polled in a loop
        # would cost thousands in 0.5 s.
        assert spun < 100, spun
        # Once fds are available again every waiting connection is accepted and served.
        assert wait_until(lambda: server.connection_count == len(clients), 10)
        for i, client in enumerate(clients):
            client.sendall(b"late %d" % i)
            assert recv_exactly(client, len(b"late %d" % i)) == b"late %d" % i
    finally:
        for client in clients:
            client.close()


# -- faults ----------------------------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["on_message", "on_connect"])
def test_handler_exception_closes_only_that_connection(
    serve: ServeFn, connect: ConnectFn, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    caplog.set_level(logging.ERROR, logger="gevwire")

    class Raises(Recorder):
        def on_connect(self, conn: gevwire.Connection) -> None:
            super().on_connect(conn)
            if where == "on_connect" and len(self.connected) == 3:
                raise Boom("boom in on_connect")

        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            if frame.startswith(b"boom"):
                raise Boom("boom in on_message")
            return super().on_message(conn, frame)

    handler = Raises()
    server = serve(handler, loops=2)
    clients = []
    for _ in range(5):
        clients.append(connect(server))
        handler.conn_for(clients[-1])  # connect one at a time: the third is the bad one
    bad = clients[2]
    bad_conn = handler.conn_for(bad)
    if where == "on_message":
        bad.sendall(b"boom")
    assert peer_closed(bad)
    assert wait_until(lambda: bad_conn in handler.closed, 5)
    assert not bad_conn.connected
    assert [type(e) for _, e in handler.errors] == [Boom]
    assert handler.errors[0][0] is bad_conn
    # The default on_error logged the exception with its traceback.
    records = [r for r in caplog.records if r.exc_info and r.exc_info[0] is Boom]
    assert records, caplog.text
    assert "Traceback" in caplog.text and f"boom in {where}" in caplog.text
    # Every other connection goes on, on both loops.
    for i, client in enumerate(clients):
        if client is bad:
            continue
        client.sendall(b"still here %d" % i)
        assert recv_exactly(client, len(b"still here %d" % i)) == b"still here %d" % i
    assert server.connection_count == 4


def test_send_after_close_raises_connection_closed(serve: ServeFn, connect: ConnectFn) -> None:
    outcomes: list[str] = []

    class CloseThenSend(Recorder):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            super().on_message(conn, frame)
            if frame == b"close":
                conn.close()
                try:
                    conn.send(b"after close")
                except ConnectionClosed:
                    outcomes.append("raised")
                else:
                    outcomes.append("sent")
            return None

    handler = CloseThenSend(echo=False)
    server = serve(handler)
    # Closed by the server from the loop thread (inside on_message).
    first = connect(server)
    first.sendall(b"close")
    assert peer_closed(first)
    assert outcomes == ["raised"]
    # Closed by the peer; send from another thread afterwards.
    second = connect(server)
    conn = handler.conn_for(second)
    conn.send(b"hello")
    assert recv_exactly(second, 5) == b"hello"
    second.close()
    assert wait_until(lambda: conn in handler.closed, 5)
    assert not conn.connected
    with pytest.raises(ConnectionClosed):
        conn.send(b"after close")
    # Closed by the server from another thread.
    third = connect(server)
    conn3 = handler.conn_for(third)
    conn3.close()
    assert wait_until(lambda: conn3 in handler.closed, 5)
    with pytest.raises(ConnectionClosed):
        conn3.send(b"after close")
    assert peer_closed(third)


def test_on_close_is_called_exactly_once_per_connection(
    serve: ServeFn, connect: ConnectFn
) -> None:
    class Mixed(Recorder):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            super().on_message(conn, frame)
            if frame == b"raise":
                raise Boom("on purpose")
            if frame == b"close-twice":
                conn.close()
                conn.close()
                conn.abort()
            return None

    handler = Mixed(echo=False)
    server = serve(handler, loops=2)
    clients = [connect(server) for _ in range(7)]
    conns = [handler.conn_for(c) for c in clients]
    clients[0].close()  # peer FIN
    set_linger_reset(clients[1])
    clients[1].close()  # peer RST
    conns[2].close()  # server close from another thread ...
    conns[2].close()
    conns[2].abort()  # ... then abort: still one on_close
    clients[3].sendall(b"raise")  # handler error
    clients[4].sendall(b"close-twice")  # close twice + abort on the loop thread
    conns[5].abort()
    # conns[6] stays open until the server stops.
    others = conns[:6]
    assert wait_until(lambda: all(c in handler.closed for c in others), 10)
    assert conns[6] not in handler.closed
    server.stop()
    assert server.wait(10)
    time.sleep(0.1)  # a second on_close, if any, has had its chance
    counts = Counter(id(c) for c in handler.closed)
    assert len(handler.closed) == len(conns)
    assert all(counts[id(c)] == 1 for c in conns)


def test_no_frame_is_dispatched_after_close_from_another_thread(
    serve: ServeFn, connect: ConnectFn
) -> None:
    handler = Recorder(echo=False)
    server = serve(handler)
    client = connect(server)
    conn = handler.conn_for(client)
    # Hold the loop in a task so that close() is queued behind it and the peer's bytes
    # are readable in the same turn that runs the queued close.
    conn.loop.call_soon(time.sleep, 0.3)
    time.sleep(0.05)
    conn.close()
    client.sendall(b"sent after close()")
    assert wait_until(lambda: conn in handler.closed, 5)
    assert handler.frames == []
    assert peer_closed(client)


def test_sends_queued_from_another_thread_are_bounded_by_max_write_buffer(
    serve: ServeFn, connect: ConnectFn
) -> None:
    handler = Recorder(echo=False)
    server = serve(handler, max_write_buffer=1 << 20, write_high_water=256 << 10)
    client = connect(server)
    conn = handler.conn_for(client)
    conn.loop.call_soon(time.sleep, 0.5)  # the loop takes nothing from the queue meanwhile
    time.sleep(0.05)
    chunk = b"x" * (64 << 10)
    sent = 0
    # The sender (another thread: another loop's handler, say) is not failed for the
    # slow peer: the send past the cap is dropped and closes the connection, whose own
    # on_error gets WriteBufferFull; sends after it raise ConnectionClosed.
    with pytest.raises(ConnectionClosed):
        for _ in range(100):  # 6.4 MiB if nothing stopped it
            conn.send(chunk)
            sent += 1
    assert sent == 17  # 16 x 64 KiB = the 1 MiB cap; the 17th is dropped, the 18th raises
    assert wait_until(lambda: conn in handler.closed, 5)
    assert any(isinstance(e, WriteBufferFull) for _, e in handler.errors)
    with pytest.raises(ConnectionClosed):
        conn.send(b"after")


def test_a_slow_peer_past_its_cap_never_fails_a_sender_on_another_loop(
    serve: ServeFn, connect: ConnectFn
) -> None:
    """A publisher's handler sends to a subscriber on another loop that never reads: the
    subscriber is closed at its cap (WriteBufferFull to its own on_error); the publisher
    sees at most ConnectionClosed, the documented exception, and is served throughout."""

    class Relay(gevwire.Handler):
        def __init__(self) -> None:
            self.subscriber: gevwire.Connection | None = None
            self.errors: list[tuple[gevwire.Connection, BaseException]] = []

        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            if frame == b"sub":
                self.subscriber = conn
                return b"subscribed"
            assert self.subscriber is not None
            try:
                self.subscriber.send(b"x" * (64 << 10))
            except ConnectionClosed:
                return b"gone"
            return b"ok"

        def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
            self.errors.append((conn, error))
            conn.abort()

    handler = Relay()
    server = serve(handler, codec=LineCodec(), loops=2, max_write_buffer=1 << 20,
                   write_high_water=256 << 10)
    subscriber = connect(server, rcvbuf=16 << 10)
    subscriber.sendall(b"sub\n")
    assert recv_exactly(subscriber, 11) == b"subscribed\n"  # then it never reads again
    publisher = connect(server)
    replies = []
    for _ in range(100):  # 6.4 MiB towards a 1 MiB cap
        publisher.sendall(b"pub\n")
        reply = recv_exactly(publisher, 3)  # b"ok\n" or the start of b"gone\n"
        replies.append(reply if reply == b"ok\n" else reply + recv_exactly(publisher, 2))
    assert set(replies) == {b"ok\n", b"gone\n"} and replies[-1] == b"gone\n"
    sub_conn = handler.subscriber
    assert sub_conn is not None
    assert wait_until(lambda: [type(e) for c, e in handler.errors] == [WriteBufferFull])
    assert handler.errors[0][0] is sub_conn
    assert server.connection_count == 1  # the publisher, served throughout


class SayByeAndClose(gevwire.Handler):
    """Answers the first read with ``reply`` and closes, as a server does after an error."""

    def __init__(self, reply: bytes = b"bye") -> None:
        self.reply = reply

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        if conn.context is None:
            conn.context = "done"
            conn.send(self.reply)
            conn.close()


def _received_while_sending(port: int, payload: bytes) -> int | str:
    """Bytes received (until EOF) while another thread sends ``payload``."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(10)

    def pump() -> None:
        try:
            sock.sendall(payload)
        except OSError:
            pass  # the server closes; what matters is what arrives

    sender = threading.Thread(target=pump)
    sender.start()
    time.sleep(0.3)  # the reply backs up in the server's send queue meanwhile
    got = 0
    try:
        while chunk := sock.recv(1 << 16):
            got += len(chunk)
    except OSError as exc:
        return f"{type(exc).__name__} after {got} bytes"
    finally:
        sender.join(10)
        sock.close()
    return got


@pytest.mark.parametrize("backend", ["epoll", "io_uring"])
def test_close_while_the_peer_still_sends_delivers_the_whole_reply(
    serve: ServeFn, backend: str
) -> None:
    # close(2) with unread input sends RST and discards the send queue: measured, the
    # peer got ~127 KiB of this 2 MiB reply.  The lingering close half-closes and
    # drains the peer's bytes until its EOF instead.
    if backend == "io_uring" and not uring_available()[0]:
        pytest.skip(f"io_uring unavailable: {uring_available()[1]}")
    reply = b"r" * (2 << 20)
    server = serve(SayByeAndClose(reply), backend=backend)
    for _ in range(3):
        assert _received_while_sending(server.port, b"x" * (4 << 20)) == len(reply)
    assert wait_until(lambda: server.connection_count == 0, 10)


@pytest.mark.parametrize("backend", ["epoll", "io_uring"])
def test_linger_timeout_bounds_a_peer_that_never_stops_sending(
    serve: ServeFn, backend: str
) -> None:
    if backend == "io_uring" and not uring_available()[0]:
        pytest.skip(f"io_uring unavailable: {uring_available()[1]}")
    server = serve(SayByeAndClose(), backend=backend, linger_timeout=0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"first")
        assert recv_exactly(sock, 3) == b"bye"
        deadline = time.monotonic() + 5
        sock.settimeout(0.05)
        while server.connection_count and time.monotonic() < deadline:
            try:
                sock.send(b"y" * 4096)  # keeps sending, never closes
            except OSError:
                time.sleep(0.01)
        assert server.connection_count == 0  # closed by linger_timeout, not by the peer


# -- connection state ------------------------------------------------------------------


def test_peer_addr_context_and_values(serve: ServeFn, connect: ConnectFn) -> None:
    class Stateful(Recorder):
        def on_connect(self, conn: gevwire.Connection) -> None:
            super().on_connect(conn)
            conn.context = {"n": 0}
            conn.set("name", b"conn-%d" % len(self.connected))

        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            super().on_message(conn, frame)
            conn.context["n"] += 1
            missing = conn.get("missing", b"default")
            return b"%s/%d/%s/%s" % (conn.get("name"), conn.context["n"], missing,
                                     str(conn.get("missing")).encode())

    handler = Stateful(echo=False)
    server = serve(handler, codec=LineCodec())
    a, b = connect(server), connect(server)
    for client in (a, b):
        conn = handler.conn_for(client)
        assert conn.peer_addr[:2] == client.getsockname()[:2]
        assert conn.connected
    a_name = handler.conn_for(a).get("name")
    b_name = handler.conn_for(b).get("name")
    assert {a_name, b_name} == {b"conn-1", b"conn-2"}
    for n in (1, 2, 3):
        a.sendall(b"x\n")
        expected = b"%s/%d/default/None\n" % (a_name, n)
        assert recv_exactly(a, len(expected)) == expected
    b.sendall(b"y\n")
    expected = b"%s/1/default/None\n" % b_name
    assert recv_exactly(b, len(expected)) == expected
    assert handler.conn_for(a).context == {"n": 3}


def test_read_buffer_length_counts_an_incomplete_frame(
    serve: ServeFn, connect: ConnectFn
) -> None:
    handler = Recorder()
    server = serve(handler, codec=LineCodec())
    client = connect(server)
    conn = handler.conn_for(client)
    assert conn.read_buffer_length == 0
    client.sendall(b"partial")
    assert wait_until(lambda: conn.read_buffer_length == 7, 5), conn.read_buffer_length
    assert handler.frames == []
    client.sendall(b"-rest\nnext")
    assert recv_exactly(client, len(b"partial-rest\n")) == b"partial-rest\n"
    assert wait_until(lambda: conn.read_buffer_length == 4, 5), conn.read_buffer_length
    client.sendall(b"\n")
    assert recv_exactly(client, 5) == b"next\n"
    assert wait_until(lambda: conn.read_buffer_length == 0, 5)


def test_write_buffer_length_grows_while_the_peer_does_not_read(
    serve: ServeFn, connect: ConnectFn
) -> None:
    data = payload(8 * MiB, seed=4)

    class Push(Recorder):
        def on_connect(self, conn: gevwire.Connection) -> None:
            super().on_connect(conn)
            conn.send(data)

    handler = Push()
    server = serve(handler)
    client = connect(server, rcvbuf=16 * KiB)
    conn = handler.conn_for(client)
    assert wait_until(lambda: conn.write_buffer_length > 0, 5)
    time.sleep(0.1)
    backlog = conn.write_buffer_length
    # What the kernel did not take is ours: more than nothing, never more than was sent.
    assert 0 < backlog <= len(data)
    assert recv_exactly(client, len(data)) == data
    assert wait_until(lambda: conn.write_buffer_length == 0, 5)


# -- back-pressure ---------------------------------------------------------------------


def test_reading_pauses_when_a_peer_sends_but_never_reads(
    serve: ServeFn, connect: ConnectFn
) -> None:
    high, low = 256 * KiB, 64 * KiB
    handler = Recorder()  # echo: the peer's own bytes back up the output
    server = serve(handler, write_high_water=high, write_low_water=low,
                   max_write_buffer=64 * MiB)
    client = connect(server, rcvbuf=16 * KiB)
    conn = handler.conn_for(client)
    client.setblocking(False)
    chunk = payload(64 * KiB, seed=64)
    limit = 48 * MiB  # far more than every kernel buffer on the way can hold
    sent = 0
    peak = 0
    deadline = time.monotonic() + 30
    while sent < limit and time.monotonic() < deadline:
        _, writable, _ = select.select([], [client], [], 1.5)
        peak = max(peak, conn.write_buffer_length)
        if not writable:
            break  # the server stopped reading: its kernel buffers and ours are full
        try:
            sent += client.send(chunk[sent % len(chunk) :])
        except BlockingIOError:
            continue
    backlog = conn.write_buffer_length
    peak = max(peak, backlog)
    assert sent < limit, "the peer could send without end: reading was never paused"
    assert conn.connected
    # Paused above the high-water mark, and bounded near it (one read's reply over it),
    # not growing with everything the peer sent.
    assert high < backlog <= high + 256 * KiB, (backlog, sent)
    assert peak <= high + 256 * KiB, (peak, sent)
    # Reading resumes once the peer drains its replies: every byte comes back, in order.
    client.setblocking(True)
    client.settimeout(10)
    received = recv_exactly(client, sent)
    stream = chunk * (sent // len(chunk) + 1)
    assert received == stream[:sent]
    client.sendall(b"and more")
    assert recv_exactly(client, 8) == b"and more"


def test_max_write_buffer_closes_the_connection(serve: ServeFn, connect: ConnectFn) -> None:
    sends: list[str] = []

    class Flood(Recorder):
        def on_connect(self, conn: gevwire.Connection) -> None:
            super().on_connect(conn)
            block = b"z" * MiB
            for _ in range(64):
                try:
                    conn.send(block)
                except ConnectionClosed:
                    sends.append("closed")
                    return
                sends.append("ok")

    handler = Flood()
    server = serve(handler, write_high_water=1 * MiB, write_low_water=256 * KiB,
                   max_write_buffer=4 * MiB)
    client = connect(server, rcvbuf=16 * KiB)
    assert wait_until(lambda: len(handler.closed) == 1, 10)
    conn = handler.connected[0]
    assert not conn.connected
    assert sends[-1] == "closed"
    assert sends.count("ok") < 64
    assert [type(e) for _, e in handler.errors] == [WriteBufferFull]
    assert server.connection_count == 0
    assert peer_closed(client)


# -- addresses and construction --------------------------------------------------------


def test_ipv4_loopback_address(serve: ServeFn, connect: ConnectFn) -> None:
    handler = Recorder()
    server = serve(handler, address="127.0.0.1:0")
    host, port = server.address[:2]
    assert host == "127.0.0.1" and port > 0 and server.port == port
    client = connect(server)
    client.sendall(b"v4")
    assert recv_exactly(client, 2) == b"v4"
    assert handler.conn_for(client).peer_addr[:2] == client.getsockname()[:2]


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
def test_ipv6_loopback_address(serve: ServeFn, connect: ConnectFn) -> None:
    handler = Recorder()
    server = serve(handler, address="[::1]:0")
    assert server.address[0] == "::1" and server.port > 0
    client = connect(server)
    assert client.family == socket.AF_INET6
    client.sendall(b"v6")
    assert recv_exactly(client, 2) == b"v6"
    assert handler.conn_for(client).peer_addr[:2] == client.getsockname()[:2]


@pytest.mark.parametrize(
    "address",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:http",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:1:2",
        "::1:0",
        "[::1]",
        "[::1]:",
        "[::1]0",
    ],
)
def test_bad_address_raises_value_error(address: str) -> None:
    with pytest.raises(ValueError):
        gevwire.Server(Recorder(), address=address)


def test_handler_missing_methods_raises_type_error() -> None:
    class OnlyMessage:
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            return frame

    class NotCallable(Recorder):
        on_close = None  # type: ignore[assignment]

    for handler in (object(), OnlyMessage(), NotCallable()):
        with pytest.raises(TypeError):
            gevwire.Server(handler, address="127.0.0.1:0")


def test_bad_loops_and_water_marks_raise_value_error() -> None:
    with pytest.raises(ValueError):
        gevwire.Server(Recorder(), address="127.0.0.1:0", loops=0)
    with pytest.raises(ValueError):
        gevwire.Server(Recorder(), address="127.0.0.1:0", write_high_water=10,
                       write_low_water=20)


# -- lifecycle -------------------------------------------------------------------------


def test_start_twice_raises_and_stop_is_idempotent(connect: ConnectFn) -> None:
    server = gevwire.Server(Recorder(), address="127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(RuntimeError):
            server.start()
        address = server.address[:2]
        client = connect(address)
        client.sendall(b"up")
        assert recv_exactly(client, 2) == b"up"
    finally:
        server.stop()
    assert server.wait(10)
    server.stop()
    server.stop()
    assert server.wait(0)
    with pytest.raises(RuntimeError):
        server.start()
    with pytest.raises(ConnectionRefusedError):
        connect(address)


@pytest.mark.parametrize("loops", [1, 2])
def test_stop_from_inside_a_handler_does_not_deadlock(
    serve: ServeFn, connect: ConnectFn, loops: int
) -> None:
    returned: list[bool] = []
    holder: list[gevwire.Server] = []

    class Stopper(Recorder):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            super().on_message(conn, frame)
            holder[0].stop()
            holder[0].stop()  # idempotent on the loop thread too
            returned.append(True)
            return b"bye"

    handler = Stopper(echo=False)
    server = serve(handler, loops=loops)
    holder.append(server)
    address = server.address[:2]
    client = connect(server)
    client.sendall(b"stop")
    assert server.wait(10), "stop() called from a handler never finished"
    assert returned == [True]
    assert recv_until_eof(client) == b"bye"  # the reply was flushed before closing
    assert all(not loop.running for loop in server.loops)
    assert handler.closed == handler.connected
    server.stop()  # and once more from outside
    with pytest.raises(ConnectionRefusedError):
        connect(address)


def test_graceful_stop_flushes_pending_output(
    serve: ServeFn, connect: ConnectFn, background: Callable[..., threading.Thread]
) -> None:
    data = payload(8 * MiB, seed=44)

    class Push(Recorder):
        def on_connect(self, conn: gevwire.Connection) -> None:
            super().on_connect(conn)
            conn.send(data)

    handler = Push()
    server = serve(handler)
    client = connect(server, rcvbuf=16 * KiB)
    conn = handler.conn_for(client)
    assert wait_until(lambda: conn.write_buffer_length > 0, 5)
    background(server.stop, 10.0)
    assert recv_until_eof(client, limit=len(data)) == data
    assert server.wait(10)
    assert handler.closed == [conn]


# -- frames cut from the input ring ----------------------------------------------------


class EchoFrames(gevwire.Handler):
    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame


class CountingDecoder(gevwire.Decoder):
    """Delegates to a codec's decoder, counting the frames each path returns."""

    def __init__(self, inner: gevwire.Decoder, counts: Counter[str]) -> None:
        self.inner = inner
        self.counts = counts

    def decode(self, ring: Any) -> Any:
        frame = self.inner.decode(ring)
        if frame is not None:
            self.counts["decode"] += 1
        return frame

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        frames, used = self.inner.decode_view(view)
        self.counts["decode_view"] += len(frames)
        return frames, used


def test_frames_split_across_reads_are_cut_in_batches_from_one_view(serve: ServeFn) -> None:
    # 1004-byte frames in 1500-byte reads: the input ring keeps a partial frame at a
    # read position that moves on every read.  The ring moves those few bytes to its
    # front rather than wrap around, so every whole frame is cut by decode_view (the
    # batch path) and decode() only finds the partial tail.
    counts: Counter[str] = Counter()

    class Counted(gevwire.Codec):
        def decoder(self) -> gevwire.Decoder:
            return CountingDecoder(super().decoder(), counts)

    server = serve(EchoFrames(), codec=Counted(c.Prefixed(c.Int32ub, c.GreedyBytes)))
    frames = [payload(1000, seed) for seed in range(60)]
    stream = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
    with socket.create_connection(server.address[:2]) as client:
        client.settimeout(10)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = replied = 0
        for start in range(0, len(stream), 1500):
            client.sendall(stream[start : start + 1500])
            sent = min(start + 1500, len(stream))
            whole = sent // 1004 * 1004  # the frames this read completes are echoed
            assert recv_exactly(client, whole - replied) == stream[replied:whole]
            replied = whole
    assert replied == len(stream)
    assert counts == {"decode_view": 60}, counts


def test_a_readable_event_with_nothing_to_read_changes_nothing(
    serve: ServeFn, connect: ConnectFn
) -> None:
    # The fast path reads with os.read, which raises BlockingIOError when the socket
    # has nothing (a spurious or stale readiness event): that is not an error.
    handler = Recorder()
    server = serve(handler, backend="epoll")
    client = connect(server)
    client.sendall(b"one")
    assert recv_exactly(client, 3) == b"one"
    [conn] = handler.connected
    done = threading.Event()

    def spurious() -> None:
        conn._io._on_events(gevwire._sys.EV_READ)  # nothing to read: EAGAIN
        done.set()

    conn.loop.call_soon(spurious)
    assert done.wait(5)
    assert conn.connected and not handler.errors and not handler.closed
    client.sendall(b"two")
    assert recv_exactly(client, 3) == b"two"


def test_a_reset_peer_closes_the_connection_on_the_fast_path(
    serve: ServeFn, connect: ConnectFn
) -> None:
    # os.read raising ConnectionResetError closes this connection only, quietly.
    handler = Recorder()
    server = serve(handler, backend="epoll")
    client = connect(server)
    other = connect(server)
    client.sendall(b"x")
    assert recv_exactly(client, 1) == b"x"
    set_linger_reset(client)
    client.close()  # RST
    assert wait_until(lambda: len(handler.closed) == 1, 5)
    assert not handler.errors
    other.sendall(b"still here")
    assert recv_exactly(other, 10) == b"still here"


class EchoPayload(gevwire.Handler):
    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame


def test_a_large_frames_storage_is_kept_for_the_next_one_then_dropped(
    serve: ServeFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 2 MiB storage of a large frame goes back to the pool and is kept: the next
    large frame is read into the same pages (no page faults); the loop's timer drops it
    ``keep_seconds`` after its last use."""
    from gevwire.ringbuffer import DEFAULT_POOL

    monkeypatch.setattr(DEFAULT_POOL, "keep_seconds", 0.3)
    codec = gevwire.Codec(c.Prefixed(c.Int32ub, c.GreedyBytes), max_frame_size=8 << 20)
    server = serve(EchoPayload(), codec=codec)
    frame = struct.pack(">I", 2 << 20) + random.Random(3).randbytes(2 << 20)
    before = DEFAULT_POOL.retained()
    with socket.create_connection(server.address[:2], timeout=10) as sock:
        for _ in range(3):
            sock.sendall(frame)
            assert recv_exactly(sock, len(frame)) == frame
            assert wait_until(lambda: DEFAULT_POOL.retained() - before >= 2 << 20, 2)
        # (Small buffers the pool keeps, for the rings' first bytes, are well under.)
        assert wait_until(lambda: DEFAULT_POOL.retained() - before < 1 << 20, 5)
        sock.sendall(frame)  # and a frame after that is served as ever
        assert recv_exactly(sock, len(frame)) == frame
