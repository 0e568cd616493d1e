"""Calls out of Python per message on the echo path: the budget DESIGN.md sets.

A call into C (a ctypes foreign call, or the stdlib's os.read / os.write the fast path
uses) costs more than a loop turn of Python bookkeeping, so the echo path must make
exactly one read and one write per message (plus the poller's wait, shared by every
connection ready in the turn), and no readv / writev / epoll_ctl unless a partial frame
or a partial write forces it.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest
from conftest import recv_exactly

import gevwire
from gevwire import _socket_io as connection_module
from gevwire._sys import _epoll

pytestmark = pytest.mark.io

MESSAGES = 300


def counting(name: str, fn: Callable[..., Any], calls: Counter[str]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        calls[name] += 1
        return fn(*args)

    return wrapper


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    counter: Counter[str] = Counter()
    for name in ("raw_read", "raw_readv", "raw_writev", "read_bytes", "write_bytes"):
        monkeypatch.setattr(connection_module, name,
                            counting(name, getattr(connection_module, name), counter))
    monkeypatch.setattr(_epoll, "_epoll_ctl", counting("epoll_ctl", _epoll._epoll_ctl, counter))
    monkeypatch.setattr(_epoll, "_epoll_wait",
                        counting("epoll_wait", _epoll._epoll_wait, counter))
    return counter


class Echo(gevwire.Handler):
    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame


def ping_pong(server: gevwire.Server, make: Callable[[int], bytes], calls: Counter[str]
              ) -> tuple[Counter[str], int]:
    with socket.create_connection(server.address[:2]) as sock:
        sock.settimeout(10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = make(0)  # settle the connection before counting
        sock.sendall(first)
        assert recv_exactly(sock, len(first)) == first
        calls.clear()
        turns = server.loops[0].turn_count
        for i in range(1, MESSAGES + 1):
            message = make(i)
            sock.sendall(message)
            assert recv_exactly(sock, len(message)) == message
        snapshot = Counter(calls)
        turns = server.loops[0].turn_count - turns
    return snapshot, turns


@pytest.mark.skipif(_epoll._epoll_wait is None, reason="epoll only (Linux)")
def test_raw_echo_costs_one_read_and_one_write_per_message(calls: Counter[str]) -> None:
    # The epoll budget (io_uring's, no foreign call per message: test_uring_server.py).
    with gevwire.Server(Echo(), address="127.0.0.1:0", backend="epoll") as server:
        got, turns = ping_pong(server, lambda i: b"m%05d" % i, calls)
    assert got["read_bytes"] == MESSAGES
    assert got["write_bytes"] == MESSAGES
    assert got["raw_read"] == got["raw_readv"] == got["raw_writev"] == got["epoll_ctl"] == 0
    # One wait per loop turn, and one turn per message when messages come one at a time.
    # The counts are taken from this thread while the loop runs: a wait counted before
    # calls.clear() may end in a counted turn, and the last wait may not have ended yet.
    assert turns - 1 <= got["epoll_wait"] <= turns + 1
    assert turns <= MESSAGES + 2


@pytest.mark.skipif(_epoll._epoll_wait is None, reason="epoll only (Linux)")
def test_framed_echo_costs_one_read_and_one_write_per_batch(calls: Counter[str]) -> None:
    codec = gevwire.Codec(c.Prefixed(c.Int32ub, c.GreedyBytes))
    batch = 8

    def make(i: int) -> bytes:  # eight frames in one write: one read, one write back
        return b"".join(codec.encode(b"frame %d/%d" % (i, k)) for k in range(batch))

    with gevwire.Server(Echo(), address="127.0.0.1:0", codec=codec, backend="epoll") as server:
        got, _ = ping_pong(server, make, calls)
    assert got["read_bytes"] == MESSAGES
    assert got["write_bytes"] == MESSAGES
    assert got["raw_read"] == got["raw_readv"] == got["raw_writev"] == got["epoll_ctl"] == 0
