"""Handlers that wait (``async def`` and blocking ones): off the loop thread, replies in
frame order, a cap on frames in flight, cancellation on close, timeouts, graceful stop.

Every server here has one loop, so "another connection is answered while one waits"
means the loop thread itself was free.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import recv_until_eof, set_linger_reset, wait_until

import gevwire
from gevwire.codecs import length_field
from gevwire.codecs.line import line
from gevwire.pipeline import FramePipeline
from gevwire.waiting import WaitingPipeline

pytestmark = pytest.mark.io


def lines(sock: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` lines (without their ``\\n``)."""
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n")[:count]


def client(server: gevwire.Server) -> socket.socket:
    sock = socket.create_connection(server.address[:2])
    sock.settimeout(10)
    return sock


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[gevwire.Server] = []

    def start(handler: Any, **kwargs: Any) -> gevwire.Server:
        server = gevwire.Server(handler, address="127.0.0.1:0", codec=line(), **kwargs)
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


class Sleepy(gevwire.Handler):
    """``async``: ``sleep <seconds> <tag>`` waits, anything else is echoed upper-cased."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.started: list[str] = []
        self.errors: list[BaseException] = []
        self.closed = threading.Event()

    async def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
        if frame.startswith(b"sleep"):
            _, seconds, tag = frame.split()
            self.started.append(tag.decode())
            try:
                await asyncio.sleep(float(seconds))
            except asyncio.CancelledError:
                self.events.append(f"cancelled {tag.decode()}")
                raise
            return tag
        return frame.upper()

    def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
        self.errors.append(error)
        super().on_error(conn, error)

    def on_close(self, conn: gevwire.Connection) -> None:
        self.events.append("on_close")
        self.closed.set()


def test_a_waiting_handler_never_stalls_the_loop(serve: Any) -> None:
    server = serve(Sleepy())
    slow, other = client(server), client(server)
    slow.sendall(b"sleep 1.0 a\n")
    time.sleep(0.05)
    started = time.monotonic()
    other.sendall(b"ping\n")
    assert lines(other, 1) == [b"PING"]
    assert time.monotonic() - started < 0.5  # not behind the 1 s wait
    assert lines(slow, 1) == [b"a"]
    assert server.stats()["frames_offloaded"] == 2
    slow.close()
    other.close()


def test_replies_leave_in_frame_order_when_later_work_ends_first(serve: Any) -> None:
    server = serve(Sleepy())
    sock = client(server)
    sock.sendall(b"sleep 0.3 first\nsleep 0.05 second\nthird\nsleep 0 fourth\n")
    assert lines(sock, 4) == [b"first", b"second", b"THIRD", b"fourth"]
    sock.close()


def test_unordered_replies_leave_as_they_are_ready(serve: Any) -> None:
    server = serve(Sleepy(), ordered_replies=False)
    sock = client(server)
    sock.sendall(b"sleep 0.4 slow\nsleep 0 fast\n")
    assert lines(sock, 2) == [b"fast", b"slow"]
    sock.close()


def test_router_mixes_plain_async_and_blocking_routes_in_frame_order(serve: Any) -> None:
    router = gevwire.Router(key=lambda frame: frame.split()[0])
    threads: dict[str, str] = {}

    @router.on(b"plain")
    def plain(conn: gevwire.Connection, frame: bytes) -> bytes:
        threads["plain"] = threading.current_thread().name
        return b"p"

    @router.on(b"async")
    async def waits(conn: gevwire.Connection, frame: bytes) -> bytes:
        await asyncio.sleep(0.2)
        threads["async"] = threading.current_thread().name
        return b"a"

    @router.on(b"block", blocking=True)
    def blocks(conn: gevwire.Connection, frame: bytes) -> bytes:
        time.sleep(0.1)
        threads["block"] = threading.current_thread().name
        return b"b"

    assert router.may_wait
    server = serve(router)
    sock = client(server)
    sock.sendall(b"async\nplain\nblock\nplain\n")
    assert lines(sock, 4) == [b"a", b"p", b"b", b"p"]
    assert threads["plain"] == server.loops[0].name
    assert threads["async"] == "gevwire-asyncio"
    assert threads["block"].startswith("gevwire-blocking")
    sock.close()


def test_blocking_handler_runs_on_the_pool_and_frees_the_loop(serve: Any) -> None:
    class Report(gevwire.Handler):
        @gevwire.blocking
        def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            if frame == b"slow":
                time.sleep(0.8)
            return threading.current_thread().name.encode()

    server = serve(Report())
    slow, other = client(server), client(server)
    slow.sendall(b"slow\n")
    time.sleep(0.05)
    started = time.monotonic()
    other.sendall(b"fast\n")
    assert lines(other, 1)[0].startswith(b"gevwire-blocking")
    assert time.monotonic() - started < 0.5
    assert lines(slow, 1)[0].startswith(b"gevwire-blocking")
    slow.close()
    other.close()


def test_sync_handlers_keep_the_plain_pipeline(serve: Any) -> None:
    class Echo(gevwire.Handler):
        def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            return frame

    seen: list[type] = []

    class Watch(Echo):
        def on_connect(self, conn: gevwire.Connection) -> None:
            seen.append(type(conn._pipe))

    server = serve(Watch())
    sock = client(server)
    sock.sendall(b"x\n")
    assert lines(sock, 1) == [b"x"]
    assert seen == [FramePipeline]
    sock.close()
    router = gevwire.Router(key=lambda frame: frame)
    router.on(b"x")(lambda conn, frame: frame)
    assert not router.may_wait
    router.on(b"y")(Sleepy().on_message)
    assert router.may_wait


def test_cap_on_frames_in_flight_pauses_reading_and_keeps_order(serve: Any) -> None:
    release = threading.Event()
    running: list[int] = []
    most = [0]

    class Gate(gevwire.Handler):
        async def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            running.append(1)
            most[0] = max(most[0], len(running))
            while not release.is_set():
                await asyncio.sleep(0.01)
            running.pop()
            return frame

    server = serve(Gate(), max_pending_per_connection=3)
    sock = client(server)
    sock.sendall(b"".join(b"%d\n" % i for i in range(50)))
    assert wait_until(lambda: server.stats()["frames_waiting"] == 3)
    time.sleep(0.1)
    assert server.stats()["frames_waiting"] == 3  # no more started
    (conn,) = server.connections()
    assert conn._holds  # reading is held
    release.set()
    assert lines(sock, 50) == [b"%d" % i for i in range(50)]
    assert most[0] == 3
    assert wait_until(lambda: server.stats()["frames_waiting"] == 0)
    assert wait_until(lambda: not conn._holds)
    sock.sendall(b"again\n")
    assert lines(sock, 1) == [b"again"]
    sock.close()


def test_close_cancels_coroutines_then_runs_on_close(serve: Any) -> None:
    handler = Sleepy()
    server = serve(handler)
    sock = client(server)
    sock.sendall(b"sleep 30 one\nsleep 30 two\n")
    assert wait_until(lambda: len(handler.started) == 2)  # both coroutines are running
    set_linger_reset(sock)
    sock.close()  # RST (a FIN would be a half-close: the replies would still be sent)
    assert handler.closed.wait(3)
    assert sorted(handler.events[:2]) == ["cancelled one", "cancelled two"]
    assert handler.events[2:] == ["on_close"]
    assert server.stats()["frames_waiting"] == 0
    assert handler.errors == []


def test_a_closed_connections_late_thread_result_is_dropped(serve: Any) -> None:
    finished = threading.Event()
    closed = threading.Event()
    errors: list[BaseException] = []

    class Slow(gevwire.Handler):
        @gevwire.blocking
        def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            time.sleep(0.4)
            finished.set()
            return frame

        def on_close(self, conn: gevwire.Connection) -> None:
            closed.set()

        def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
            errors.append(error)

    server = serve(Slow())
    sock = client(server)
    sock.sendall(b"x\n")
    assert wait_until(lambda: server.stats()["frames_waiting"] == 1)
    set_linger_reset(sock)
    sock.close()  # RST: the server closes at once, the thread still runs
    assert closed.wait(2)
    assert not finished.is_set()  # on_close did not wait for the thread
    assert finished.wait(2)
    time.sleep(0.05)
    assert errors == []
    assert server.stats()["frames_waiting"] == 0


def test_handler_exception_goes_to_on_error_of_that_connection_only(serve: Any) -> None:
    class Boom(Sleepy):
        async def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            if frame == b"boom":
                raise RuntimeError("boom")
            return await super().on_message(conn, frame)

    handler = Boom()
    server = serve(handler)
    bad, good = client(server), client(server)
    bad.sendall(b"boom\n")
    assert recv_until_eof(bad) == b""  # default policy: closed
    good.sendall(b"sleep 0.05 fine\n")
    assert lines(good, 1) == [b"fine"]
    assert [type(e) for e in handler.errors] == [RuntimeError]
    assert server.stats()["errors"] == {"RuntimeError": 1}
    good.close()


@pytest.mark.parametrize("kind", ["async", "blocking"])
def test_handler_timeout_is_an_error_for_on_error(serve: Any, kind: str) -> None:
    class Stuck(gevwire.Handler):
        def __init__(self) -> None:
            self.errors: list[BaseException] = []
            self.cancelled = threading.Event()

        def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
            self.errors.append(error)
            super().on_error(conn, error)

    class AsyncStuck(Stuck):
        async def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return frame

    class BlockingStuck(Stuck):
        @gevwire.blocking
        def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            time.sleep(0.6)
            return frame

    handler = AsyncStuck() if kind == "async" else BlockingStuck()
    server = serve(handler, handler_timeout=0.2)
    sock = client(server)
    started = time.monotonic()
    sock.sendall(b"x\n")
    assert recv_until_eof(sock) == b""  # the reply will never come: closed
    assert 0.15 < time.monotonic() - started < 0.55
    assert [type(e) for e in handler.errors] == [gevwire.HandlerTimeout]
    assert handler.errors[0].timeout == 0.2  # type: ignore[attr-defined]
    assert server.stats()["errors"] == {"HandlerTimeout": 1}
    if kind == "async":
        assert handler.cancelled.wait(1)


def test_close_timeout_bounds_a_graceful_close_waiting_for_work(serve: Any) -> None:
    handler = Sleepy()
    server = serve(handler, close_timeout=0.3)
    sock = client(server)
    sock.sendall(b"sleep 30 never\n")
    sock.shutdown(socket.SHUT_WR)  # EOF: the server waits for the reply, not for ever
    started = time.monotonic()
    assert recv_until_eof(sock) == b""
    assert 0.2 < time.monotonic() - started < 2
    assert handler.closed.wait(2)
    assert handler.events == ["cancelled never", "on_close"]
    sock.close()


def test_graceful_stop_waits_for_work_in_flight() -> None:
    server = gevwire.Server(Sleepy(), address="127.0.0.1:0", codec=line()).start()
    sock = client(server)
    sock.sendall(b"sleep 0.3 done\n")
    assert wait_until(lambda: server.stats()["frames_waiting"] == 1)
    stopper = threading.Thread(target=server.stop, args=(5.0,))
    stopper.start()
    assert recv_until_eof(sock) == b"done\n"
    stopper.join(5)
    assert not stopper.is_alive()
    sock.close()


def test_peer_eof_after_requests_still_gets_their_replies(serve: Any) -> None:
    server = serve(Sleepy())
    sock = client(server)
    sock.sendall(b"sleep 0.2 a\nb\n")
    sock.shutdown(socket.SHUT_WR)
    assert recv_until_eof(sock) == b"a\nB\n"
    sock.close()


def test_async_on_connect_runs_before_any_frame(serve: Any) -> None:
    class Greeter(gevwire.Handler):
        async def on_connect(self, conn: gevwire.Connection) -> None:
            await asyncio.sleep(0.2)
            conn.context = b"ready"
            conn.send(b"hello")

        def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            return conn.context + b" " + frame  # type: ignore[no-any-return]

    server = serve(Greeter())
    sock = client(server)
    sock.sendall(b"one\ntwo\n")  # before on_connect has ended
    assert lines(sock, 3) == [b"hello", b"ready one", b"ready two"]
    sock.close()


def test_router_async_connect_hooks_are_awaited_in_turn(serve: Any) -> None:
    router = gevwire.Router(key=lambda frame: b"any")
    order: list[str] = []

    @router.on_connect
    def plain(conn: gevwire.Connection) -> None:
        order.append("plain")

    @router.on_connect
    async def first(conn: gevwire.Connection) -> None:
        await asyncio.sleep(0.1)
        order.append("first")

    @router.on_connect
    async def second(conn: gevwire.Connection) -> None:
        order.append("second")

    @router.on(b"any")
    def echo(conn: gevwire.Connection, frame: bytes) -> bytes:
        order.append("frame")
        return frame

    server = serve(router)
    sock = client(server)
    sock.sendall(b"x\n")
    assert lines(sock, 1) == [b"x"]
    assert order == ["plain", "first", "second", "frame"]
    sock.close()


def test_send_from_an_async_handler(serve: Any) -> None:
    class Streamer(gevwire.Handler):
        async def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            for i in range(3):
                conn.send(b"part %d" % i)
                await asyncio.sleep(0.01)
            return b"end"

    server = serve(Streamer())
    sock = client(server)
    sock.sendall(b"go\n")
    assert lines(sock, 4) == [b"part 0", b"part 1", b"part 2", b"end"]
    sock.close()


def test_a_users_asyncio_loop_and_executor() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="app-asyncio", daemon=True)
    thread.start()
    pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="app-pool")
    router = gevwire.Router(key=lambda frame: frame)

    @router.on(b"async")
    async def where(conn: gevwire.Connection, frame: bytes) -> bytes:
        assert asyncio.get_running_loop() is loop
        return threading.current_thread().name.encode()

    @router.on(b"block", blocking=True)
    def pooled(conn: gevwire.Connection, frame: bytes) -> bytes:
        return threading.current_thread().name.encode()

    try:
        with gevwire.Server(router, address="127.0.0.1:0", codec=line(),
                            asyncio_loop=loop, executor=pool) as server:
            sock = client(server)
            sock.sendall(b"async\nblock\n")
            reply = lines(sock, 2)
            assert reply[0] == b"app-asyncio"
            assert reply[1].startswith(b"app-pool")
            sock.close()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        pool.shutdown()


def test_stats_count_frames_in_flight_and_their_wait(serve: Any) -> None:
    server = serve(Sleepy())
    sock = client(server)
    sock.sendall(b"sleep 0.2 a\nsleep 0.2 b\n")
    assert wait_until(lambda: server.stats()["frames_waiting"] == 2)
    assert lines(sock, 2) == [b"a", b"b"]
    assert wait_until(lambda: server.stats()["frames_waiting"] == 0)
    stats = server.stats()
    assert stats["frames_offloaded"] == 2
    assert 0.3 < stats["offload_wait_seconds"] < 2.0
    assert stats["frames_in"] == stats["frames_out"] == 2
    sock.close()


def test_a_reply_queued_behind_work_counts_against_max_write_buffer(serve: Any) -> None:
    router = gevwire.Router(key=lambda frame: frame.split()[0])

    @router.on(b"wait")
    async def waits(conn: gevwire.Connection, frame: bytes) -> bytes:
        await asyncio.sleep(1)
        return b"late"

    @router.on(b"big")
    def big(conn: gevwire.Connection, frame: bytes) -> bytes:
        return b"x" * 40_000

    handler_errors: list[BaseException] = []
    router.on_error(lambda conn, error: (handler_errors.append(error), conn.abort()))
    server = serve(router, max_write_buffer=100_000, write_high_water=50_000,
                   write_low_water=10_000)
    sock = client(server)
    sock.sendall(b"wait\n" + b"big\n" * 5)  # 200 kB of replies behind the wait
    assert recv_until_eof(sock) == b""
    assert [type(e) for e in handler_errors] == [gevwire.WriteBufferFull]


def test_waiting_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_pending_per_connection"):
        gevwire.Server(Sleepy(), address="127.0.0.1:0", max_pending_per_connection=0)
    with pytest.raises(ValueError, match="handler_timeout"):
        gevwire.Server(Sleepy(), address="127.0.0.1:0", handler_timeout=0)


def test_waiting_pipeline_is_chosen_for_waiting_handlers(serve: Any) -> None:
    kinds: list[type] = []

    class Watch(Sleepy):
        def on_connect(self, conn: gevwire.Connection) -> None:
            kinds.append(type(conn._pipe))

    server = serve(Watch())
    sock = client(server)
    sock.sendall(b"x\n")
    assert lines(sock, 1) == [b"X"]
    assert kinds == [WaitingPipeline]
    sock.close()


def test_handler_harness_runs_waiting_handlers_to_their_end() -> None:
    from gevwire.testing import HandlerHarness

    router = gevwire.Router(key=lambda frame: frame.split()[0])

    @router.on_connect
    async def hello(conn: gevwire.Connection) -> None:
        await asyncio.sleep(0)
        conn.send(b"hi")

    @router.on(b"async")
    async def waits(conn: gevwire.Connection, frame: bytes) -> bytes:
        await asyncio.sleep(0.01)
        return b"a"

    @router.on(b"block", blocking=True)
    def blocks(conn: gevwire.Connection, frame: bytes) -> bytes:
        return b"b"

    harness = HandlerHarness(router, line())
    assert harness.replies == [b"hi"]
    assert harness.feed(b"async\nblock\n") == [b"a", b"b"]
    assert harness.output == b"hi\na\nb\n"
    harness.disconnect()
    assert harness.closed


def test_a_users_loop_or_executor_cannot_cross_into_workers() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with pytest.raises(ValueError, match="workers"):
            gevwire.Server(Sleepy(), address="127.0.0.1:0", workers=2, executor=pool)
    finally:
        pool.shutdown()


def test_a_client_connection_can_have_a_waiting_handler(serve: Any) -> None:
    class Echo(gevwire.Handler):
        def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            return frame

    server = serve(Echo())
    got: list[bytes] = []
    done = threading.Event()

    class Caller(gevwire.Handler):
        async def on_connect(self, conn: gevwire.Connection) -> None:
            await asyncio.sleep(0.01)
            conn.send(b"hello")

        async def on_message(self, conn: gevwire.Connection, frame: bytes) -> None:
            await asyncio.sleep(0.01)
            got.append(frame)
            done.set()

    with gevwire.Client(Caller(), codec=line()) as client:
        client.connect(f"127.0.0.1:{server.port}")
        assert done.wait(5)
    assert got == [b"hello"]


def test_waiting_for_a_handler_is_not_idle(serve: Any) -> None:
    server = serve(Sleepy(), idle_timeout=0.2)
    sock = client(server)
    sock.sendall(b"sleep 0.6 late\n")  # three idle periods with nothing on the wire
    assert lines(sock, 1) == [b"late"]
    answered = time.monotonic()
    assert recv_until_eof(sock) == b""  # then idle for real: closed, idle_timeout
    assert time.monotonic() - answered > 0.05  # counted from the wait, not the request
    assert server.stats()["errors"] == {"idle_timeout": 1}
    sock.close()


# -- when_sent / drained: learning that bytes left the process ------------------------------


def test_when_sent_fires_once_the_socket_took_every_byte(serve: Any) -> None:
    fired: list[tuple[bool, int]] = []
    big = b"x" * (8 << 20)

    class Streamer(gevwire.Handler):
        def on_message(self, conn: gevwire.Connection, frame: bytes) -> None:
            conn.send(big)
            conn.when_sent(lambda ok: fired.append((ok, conn.write_buffer_length)))

    server = serve(Streamer(), max_write_buffer=32 << 20)
    sock = socket.create_connection(server.address[:2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.settimeout(10)
    sock.sendall(b"go\n")
    time.sleep(0.3)
    assert fired == []  # the peer has not read: most of 8 MiB is still in the process
    got = 0
    while got < len(big) + 1:
        got += len(sock.recv(1 << 20))
    assert wait_until(lambda: fired == [(True, 0)])
    sock.close()


def test_when_sent_reports_false_when_the_connection_closes_first(serve: Any) -> None:
    fired: list[bool] = []

    class Streamer(gevwire.Handler):
        def on_message(self, conn: gevwire.Connection, frame: bytes) -> None:
            conn.send(b"y" * (8 << 20))
            conn.when_sent(fired.append)

    server = serve(Streamer(), max_write_buffer=32 << 20)
    sock = socket.create_connection(server.address[:2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.sendall(b"go\n")
    time.sleep(0.2)
    set_linger_reset(sock)
    sock.close()
    assert wait_until(lambda: fired == [False])


def test_when_sent_with_nothing_unsent_fires_at_once(serve: Any) -> None:
    fired: list[bool] = []

    class Quiet(gevwire.Handler):
        def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            conn.when_sent(fired.append)
            return b"ok"

    server = serve(Quiet())
    sock = client(server)
    sock.sendall(b"x\n")
    assert lines(sock, 1) == [b"ok"]
    assert wait_until(lambda: fired == [True])
    sock.close()


def test_an_async_handler_awaits_drained_between_chunks(serve: Any) -> None:
    chunk = b"z" * (16 << 20)  # more than loopback's socket buffers hold
    progress: list[int] = []

    class Streamer(gevwire.Handler):
        async def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            for i in range(4):
                conn.send(chunk)
                await conn.drained()  # produce the next chunk only once this one left
                progress.append(i)
            return b"done"

    server = serve(Streamer(), max_write_buffer=64 << 20)
    sock = socket.create_connection(server.address[:2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.settimeout(10)
    sock.sendall(b"go\n")
    time.sleep(0.3)
    assert progress == []  # the first chunk has not left: the peer did not read
    size = 0
    tail = b""
    while not tail.endswith(b"done\n"):
        got = sock.recv(1 << 20)
        assert got
        size += len(got)
        tail = (tail + got)[-8:]
    assert size == 4 * (len(chunk) + 1) + 5
    assert progress == [0, 1, 2, 3]
    sock.close()


@pytest.mark.parametrize("closing", [False, True])
def test_a_large_reply_behind_work_in_flight_reaches_the_peer_whole_in_order(
        closing: bool) -> None:
    """A 4 MiB reply queued behind an ``async`` frame, and the ``async`` frame's own large
    reply, leave unjoined (see test_pipeline) and reach the peer whole, in frame order;
    also when the client's EOF asks for a graceful close while the work is in flight."""
    payload = os.urandom(4 << 20)
    router = gevwire.Router(key=lambda frame: frame[:3])

    @router.on(b"slo")
    async def slow(conn: gevwire.Connection, frame: bytes) -> bytes:
        await asyncio.sleep(0.2)
        return frame + payload

    @router.on(b"big")
    def big(conn: gevwire.Connection, frame: bytes) -> bytes:
        return payload

    router.on(b"sma")(lambda conn, frame: frame)
    codec = length_field(initial_bytes_to_strip=4, max_frame_size=8 << 20)
    server = gevwire.Server(router, address="127.0.0.1:0", codec=codec).start()
    try:
        sock = client(server)
        frames = [b"slow", b"small 1", b"big", b"small 2"]
        sock.sendall(b"".join(struct.pack(">I", len(f)) + f for f in frames))
        replies = [b"slow" + payload, b"small 1", payload, b"small 2"]
        expected = b"".join(struct.pack(">I", len(r)) + r for r in replies)
        if closing:
            sock.shutdown(socket.SHUT_WR)
            assert recv_until_eof(sock) == expected
        else:
            data = b""
            while len(data) < len(expected):
                chunk = sock.recv(1 << 20)
                assert chunk, f"EOF after {len(data)} of {len(expected)} bytes"
                data += chunk
            assert data == expected
        sock.close()
    finally:
        server.stop()
