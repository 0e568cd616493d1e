"""Server options beyond gev's core: timers, idle cleanup, connection limits, load
balancing, Unix sockets and IPv6, stats."""

from __future__ import annotations

import gc
import os
import socket
import tempfile
import time
import weakref
from typing import Any

import pytest
from conftest import ipv6_loopback_available, recv_exactly, wait_until

import gevwire

pytestmark = pytest.mark.io


class Echo(gevwire.Handler):
    def __init__(self) -> None:
        self.loops: list[gevwire.EventLoop] = []

    def on_connect(self, conn: gevwire.Connection) -> None:
        self.loops.append(conn.loop)

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame


def client(server: gevwire.Server) -> socket.socket:
    sock = socket.create_connection(server.address[:2])
    sock.settimeout(10)
    return sock


def test_idle_connection_is_closed_and_active_one_is_not() -> None:
    with gevwire.Server(Echo(), address="127.0.0.1:0", idle_timeout=0.3) as server:
        idle, active = client(server), client(server)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # keep one busy for 5 idle periods
            active.sendall(b"ping")
            assert recv_exactly(active, 4) == b"ping"
            time.sleep(0.05)
        assert idle.recv(10) == b""  # closed by the server
        active.sendall(b"still")
        assert recv_exactly(active, 5) == b"still"
        assert server.stats()["errors"].get("idle_timeout") == 1
        idle.close()
        active.close()


def test_a_closed_connection_is_not_kept_until_its_timers_deadlines() -> None:
    """A connection's idle, frame and close timers are cancelled when it closes; their
    deadlines (an hour here) are far off, and the loop's timer heap keeps a cancelled
    timer until then: the connection must not be kept with it."""

    class Remember(Echo):
        def __init__(self) -> None:
            super().__init__()
            self.connections: list[weakref.ref[gevwire.Connection]] = []

        def on_connect(self, conn: gevwire.Connection) -> None:
            self.connections.append(weakref.ref(conn))

    handler = Remember()
    with gevwire.Server(handler, address="127.0.0.1:0", idle_timeout=3600,
                        frame_timeout=3600) as server:
        # A live timer due before theirs: the heap drops a cancelled timer when it
        # reaches the top, so without one ahead they would leave at the next turn.
        ahead = [loop.run_after(1800, lambda: None) for loop in server.loops]
        for _ in range(3):
            with client(server) as sock:
                sock.sendall(b"\x00" * 8)
                assert recv_exactly(sock, 8) == b"\x00" * 8
        assert wait_until(lambda: server.stats()["connections_open"] == 0, 5)
        gc.collect()
        assert len(handler.connections) == 3
        assert [ref() for ref in handler.connections] == [None] * 3
        for timer in ahead:
            timer.cancel()


def test_idle_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        gevwire.Server(Echo(), address="127.0.0.1:0", idle_timeout=0)


def test_max_connections_refuses_extra_connections_and_recovers() -> None:
    with gevwire.Server(Echo(), address="127.0.0.1:0", max_connections=2) as server:
        first, second = client(server), client(server)
        assert wait_until(lambda: server.connection_count == 2)
        third = client(server)
        assert third.recv(10) == b""  # accepted and closed at once
        assert server.stats()["connections_refused"] == 1
        first.sendall(b"ok")
        assert recv_exactly(first, 2) == b"ok"
        first.close()
        assert wait_until(lambda: server.connection_count == 1)
        fourth = client(server)  # capacity is back
        fourth.sendall(b"back")
        assert recv_exactly(fourth, 4) == b"back"
        for sock in (second, third, fourth):
            sock.close()


@pytest.mark.parametrize("strategy", ["round_robin", "least_connections"])
def test_balancers_spread_connections_evenly(strategy: str) -> None:
    handler = Echo()
    with gevwire.Server(handler, address="127.0.0.1:0", loops=3,
                        load_balance=strategy) as server:
        socks = [client(server) for _ in range(9)]
        assert wait_until(lambda: len(handler.loops) == 9)
        counts = [d["connections_open"] for d in server.stats()["loops"]]
        assert counts == [3, 3, 3]
        if strategy == "least_connections":
            for sock in socks[:3]:  # empty whichever loops the first three landed on
                sock.close()
            assert wait_until(lambda: server.connection_count == 6)
            before = [d["connections_open"] for d in server.stats()["loops"]]
            more = [client(server) for _ in range(3)]
            assert wait_until(lambda: server.connection_count == 9)
            after = [d["connections_open"] for d in server.stats()["loops"]]
            assert after == [3, 3, 3], (before, after)
            socks += more
        for sock in socks:
            sock.close()


def test_source_addr_hash_keeps_one_client_address_on_one_loop() -> None:
    handler = Echo()
    with gevwire.Server(handler, address="127.0.0.1:0", loops=4,
                        load_balance="source_addr_hash") as server:
        socks = [client(server) for _ in range(8)]
        assert wait_until(lambda: len(handler.loops) == 8)
        assert len(set(map(id, handler.loops))) == 1  # every client is 127.0.0.1
        for sock in socks:
            sock.close()


def test_callable_balancer_and_bad_strategy() -> None:
    handler = Echo()
    with gevwire.Server(handler, address="127.0.0.1:0", loops=3,
                        load_balance=lambda loops, peer: len(loops) - 1) as server:
        sock = client(server)
        assert wait_until(lambda: len(handler.loops) == 1)
        assert handler.loops[0] is server.loops[2]
        sock.close()
    with pytest.raises(ValueError):
        gevwire.Server(handler, address="127.0.0.1:0", load_balance="random")


def test_unix_socket_round_trip_and_cleanup() -> None:
    path = os.path.join(tempfile.mkdtemp(), "gevwire.sock")
    with gevwire.Server(Echo(), address=f"unix:{path}") as server:
        assert server.address == path
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b"over unix")
            assert recv_exactly(sock, 9) == b"over unix"
    assert not os.path.exists(path)
    # a stale socket file left by a crashed server does not stop a new one
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    with gevwire.Server(Echo(), address=f"unix:{path}"), socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)


def test_unix_address_never_removes_a_regular_file() -> None:
    path = os.path.join(tempfile.mkdtemp(), "not-a-socket")
    with open(path, "w") as f:
        f.write("keep me")
    with pytest.raises(OSError):
        gevwire.Server(Echo(), address=f"unix:{path}").start()
    with open(path) as f:
        assert f.read() == "keep me"


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")
def test_ipv6_any_address_serves_v6_and_v4_clients() -> None:
    with gevwire.Server(Echo(), address="[::]:0") as server:
        port = server.address[1]
        for host in ("::1", "127.0.0.1"):
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(host.encode())
                assert recv_exactly(sock, len(host)) == host.encode()


def test_server_timers_run_cancel_and_survive_errors() -> None:
    server = gevwire.Server(Echo(), address="127.0.0.1:0")
    ticks: list[float] = []
    order: list[str] = []
    armed = time.monotonic()
    every = server.run_every(0.05, lambda: ticks.append(time.monotonic()))
    server.run_after(0.02, order.append, "second")
    server.run_after(0.01, order.append, "first")
    server.run_after(0.015, lambda: 1 / 0)  # logged; later timers still fire
    with server:
        assert wait_until(lambda: len(ticks) >= 4, 5)
        every.cancel()
        count = len(ticks)
        time.sleep(0.2)
        assert len(ticks) <= count + 1  # at most one already running when cancelled
        assert order == ["first", "second"]
        # never early: tick k is due 50 ms x (k + 1) after run_every, on a grid a late
        # tick does not shift (so one late tick may be followed by a shorter gap)
        for k, tick in enumerate(ticks):
            assert tick >= armed + 0.05 * (k + 1) - 0.001, (k, tick - armed)


def test_stats_count_traffic() -> None:
    with gevwire.Server(Echo(), address="127.0.0.1:0") as server:
        sock = client(server)
        for _ in range(10):
            sock.sendall(b"12345")
            assert recv_exactly(sock, 5) == b"12345"
        # A write is counted when the syscall returns, which may be just after the peer
        # has read its bytes.
        assert wait_until(lambda: server.stats()["bytes_out"] == 50, 2)
        stats = server.stats()
        assert stats["connections_open"] == 1
        assert stats["connections_total"] == 1
        assert stats["frames_in"] == stats["frames_out"] == 10
        assert stats["bytes_in"] == stats["bytes_out"] == 50
        assert stats["loop_turns"] >= 10
        sock.close()
        assert wait_until(lambda: server.stats()["connections_open"] == 0)


# -- metrics -----------------------------------------------------------------------


def scrape(address: tuple[str, int]) -> dict[str, float]:
    """``/metrics`` as ``{"name{labels}": value}``."""
    import urllib.request

    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_address_serves_prometheus_text_of_stats() -> None:
    pytest.importorskip("prometheus_client")
    server = gevwire.Server(Echo(), address="127.0.0.1:0", loops=2,
                            metrics_address="127.0.0.1:0")
    with server:
        metrics = server.metrics_address
        assert metrics is not None and metrics[1] != 0
        socks = [client(server) for _ in range(3)]
        for sock in socks:
            for _ in range(5):
                sock.sendall(b"12345678")
                assert recv_exactly(sock, 8) == b"12345678"
        assert wait_until(lambda: server.stats()["frames_out"] >= 15)
        samples = scrape(metrics)
        open_now = sum(v for k, v in samples.items()
                       if k.startswith("gevwire_connections_open{"))
        assert open_now == 3
        assert samples["gevwire_connections_total"] == 3
        frames_in = sum(v for k, v in samples.items() if k.startswith("gevwire_frames_in_total{"))
        bytes_out = sum(v for k, v in samples.items() if k.startswith("gevwire_bytes_out_total{"))
        assert frames_in >= 15  # a read may carry two writes: at least one frame per read
        assert bytes_out == 3 * 5 * 8
        assert any(k.startswith("gevwire_busy_seconds_total{") for k in samples)
        assert sum(v for k, v in samples.items()
                   if k.startswith("gevwire_frames_waiting{")) == 0  # (a plain handler)
        assert any(k.startswith("gevwire_frames_offloaded_total{") for k in samples)
        for sock in socks:
            sock.close()
    with pytest.raises(OSError):  # stop() closed the metrics endpoint too
        socket.create_connection(metrics, timeout=2).close()


def test_metrics_report_the_memory_budget_when_there_is_one() -> None:
    pytest.importorskip("prometheus_client")
    server = gevwire.Server(Echo(), address="127.0.0.1:0", metrics_address="127.0.0.1:0",
                            max_buffered_bytes=1 << 20)
    with server:
        assert server.metrics_address is not None
        stats = server.stats()
        assert (stats["buffered_bytes"], stats["budget_pauses"], stats["budget_closes"]) \
            == (0, 0, 0)
        samples = scrape(server.metrics_address)
        assert samples["gevwire_buffered_bytes"] == 0
        assert samples["gevwire_budget_closes_total"] == 0
    plain = gevwire.Server(Echo(), address="127.0.0.1:0")
    assert "buffered_bytes" not in plain.stats()  # no budget: no such figures


def test_metrics_address_must_be_tcp() -> None:
    with pytest.raises(ValueError):
        gevwire.Server(Echo(), address="127.0.0.1:0", metrics_address="unix:/tmp/m.sock")


# -- outbound connections from a server ----------------------------------------------


class Collector(gevwire.Handler):
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.connected: list[gevwire.Connection] = []
        self.closed: list[gevwire.Connection] = []

    def on_connect(self, conn: gevwire.Connection) -> None:
        self.connected.append(conn)

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        self.frames.append(frame)
        return None

    def on_close(self, conn: gevwire.Connection) -> None:
        self.closed.append(conn)


def test_server_connect_runs_an_outbound_connection_on_its_loops() -> None:
    upstream = gevwire.Server(Echo(), address="127.0.0.1:0").start()
    collector = Collector()
    server = gevwire.Server(Echo(), address="127.0.0.1:0", loops=2).start()
    try:
        host, port = upstream.address[:2]
        conn = server.connect(f"{host}:{port}", handler=collector)
        conn.send(b"through the upstream")
        assert wait_until(lambda: b"".join(collector.frames) == b"through the upstream")
        assert conn.loop in server.loops
        assert collector.connected == [conn]
        assert conn in server.connections()
        assert server.connection_count == 1
    finally:
        server.stop()
        upstream.stop()
    assert server.wait(10)
    assert collector.closed == [conn]  # stop() closes outbound connections too


def test_server_connect_failure_raises_and_needs_a_started_server() -> None:
    server = gevwire.Server(Echo(), address="127.0.0.1:0")
    with pytest.raises(RuntimeError):
        server.connect("127.0.0.1:1")
    with server:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
        probe.close()
        with pytest.raises(ConnectionRefusedError):
            server.connect(f"127.0.0.1:{free}", timeout=2)
        assert server.connection_count == 0


# -- frame deadline (slowloris) ------------------------------------------------------


def test_frame_timeout_closes_a_peer_that_trickles_a_frame() -> None:
    from gevwire.codecs import line

    errors: list[BaseException] = []

    class Lines(Echo):
        def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
            errors.append(error)
            super().on_error(conn, error)

    with gevwire.Server(Lines(), address="127.0.0.1:0", codec=line(),
                        frame_timeout=0.5, idle_timeout=30) as server:
        slow, good = client(server), client(server)
        started = time.monotonic()
        closed_at = None
        for _ in range(100):  # one byte every 0.1 s, never a newline: never idle
            try:
                slow.sendall(b"x")
            except OSError:
                closed_at = time.monotonic()
                break
            good.sendall(b"ping\n")  # a well-behaved peer is served throughout
            assert recv_exactly(good, 5) == b"ping\n"
            time.sleep(0.1)
            slow.setblocking(False)
            try:
                if slow.recv(1) == b"":
                    closed_at = time.monotonic()
                    break
            except BlockingIOError:
                pass
            finally:
                slow.setblocking(True)
        assert closed_at is not None, "the trickling peer was never closed"
        assert 0.45 <= closed_at - started < 8.0  # generous: a loaded machine is slow
        assert len(errors) == 1 and isinstance(errors[0], gevwire.FrameTimeout)
        assert server.stats()["errors"].get("FrameTimeout") == 1
        good.sendall(b"after\n")
        assert recv_exactly(good, 6) == b"after\n"
        slow.close()
        good.close()


def test_frame_timeout_resets_for_each_frame() -> None:
    from gevwire.codecs import line

    with gevwire.Server(Echo(), address="127.0.0.1:0", codec=line(),
                        frame_timeout=1.0) as server:
        sock = client(server)
        # Each frame takes 0.3 s to arrive; 6 frames take far longer than the deadline,
        # and every one is on time (with 0.7 s to spare for a loaded machine).
        for i in range(6):
            sock.sendall(b"frame")
            time.sleep(0.3)
            sock.sendall(f"{i}\n".encode())
            assert recv_exactly(sock, 7) == f"frame{i}\n".encode()
        assert server.stats()["errors"] == {}
        sock.close()


def test_frame_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        gevwire.Server(Echo(), address="127.0.0.1:0", frame_timeout=0)


_RUN_SCRIPT = """
import signal
import gevwire

# As an interactive shell leaves it: a pytest started in the background inherits SIGINT
# ignored, and Python keeps an inherited SIG_IGN.
signal.signal(signal.SIGINT, signal.default_int_handler)

BIG = bytes(range(256)) * (32 << 10)  # 8 MiB: still in flight when the signal comes


class Big(gevwire.Handler):
    def on_message(self, conn, frame):
        return BIG

    def on_close(self, conn):
        print("on_close", flush=True)


server = gevwire.Server(Big(), address="127.0.0.1:0")
server.start()
print(server.address[1], flush=True)
server.run()
print("run returned", flush=True)
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_stops_run_gracefully_with_replies_in_flight(signame: str) -> None:
    """Docker and systemd send SIGTERM: ``run()`` stops as for Ctrl-C, flushing the reply
    in flight and calling ``on_close``, and the process exits 0 (not 143)."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _RUN_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            sock.sendall(b"go")
            time.sleep(0.3)  # the 8 MiB reply is written as far as the socket takes it
            proc.send_signal(getattr(signal, signame))
            time.sleep(0.3)
            got = recv_exactly(sock, 8 << 20)  # all of it, though the stop began first
            assert got == bytes(range(256)) * (32 << 10)
            assert sock.recv(1) == b""  # then the server closed
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert out.split() == ["on_close", "run", "returned"], (out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_a_construct_schema_as_codec_is_wrapped_in_codec() -> None:
    import construct as c  # type: ignore[import-untyped]

    schema = c.Prefixed(c.Int16ub, c.GreedyBytes)
    with gevwire.Server(Echo(), address="127.0.0.1:0", codec=schema) as server:
        assert isinstance(server.codec, gevwire.Codec)
        sock = client(server)
        with sock:
            sock.sendall(b"\x00\x03abc\x00\x01d")
            assert recv_exactly(sock, 8) == b"\x00\x03abc\x00\x01d"


def test_what_is_not_a_codec_is_refused_at_construction() -> None:
    for bad in (object(), "line", gevwire.RawCodec):  # (the class, not an instance)
        with pytest.raises(TypeError, match="codec must be a gevwire codec"):
            gevwire.Server(Echo(), address="127.0.0.1:0", codec=bad)


def test_a_codec_failing_per_connection_is_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever fails while a connection is set up refuses that connection (closed at
    once), counts the error in stats() and logs its cause once, not per connection."""

    class Flaky(gevwire.RawCodec):
        made = 0

        def decoder(self) -> Any:
            Flaky.made += 1
            if Flaky.made > 1:  # the check at construction passes; connections fail
                raise RuntimeError("out of decoders")
            return super().decoder()

    with gevwire.Server(Echo(), address="127.0.0.1:0", codec=Flaky()) as server:
        for _ in range(3):
            sock = client(server)
            with sock:
                sock.settimeout(5)
                assert sock.recv(1) == b""  # refused: closed at once
        assert wait_until(lambda: server.stats()["errors"].get("RuntimeError") == 3)
        assert server.stats()["connections_open"] == 0
    logged = [r for r in caplog.records if "out of decoders" in r.getMessage()]
    assert len(logged) == 1
