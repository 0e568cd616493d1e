"""Outbound connections: gevwire.Client round trips over TCP, IPv6 and Unix sockets."""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest
from conftest import ipv6_loopback_available, wait_until

import gevwire

pytestmark = pytest.mark.io

FRAMES = gevwire.Codec(c.Prefixed(c.Int16ub, c.GreedyBytes))


class Echo(gevwire.Handler):
    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame


def test_client_round_trip_with_a_codec() -> None:
    with gevwire.Server(Echo(), address="127.0.0.1:0", codec=FRAMES) as server, \
            gevwire.Client(codec=FRAMES) as client:
        conn = client.connect(f"127.0.0.1:{server.port}")
        for i in range(100):
            conn.send(b"frame %d" % i)  # from this thread: queued to the client's loop
        assert [client.receive(conn) for _ in range(100)] == [b"frame %d" % i for i in range(100)]
        assert conn.peer_addr[:2] == ("127.0.0.1", server.port)
        assert client.connections == [conn]
        conn.close()
        with pytest.raises(gevwire.ConnectionClosed):
            client.receive(conn, timeout=5)
        assert wait_until(lambda: not client.connections)


def test_receive_times_out() -> None:
    with gevwire.Server(Echo(), address="127.0.0.1:0") as server, gevwire.Client() as client:
        conn = client.connect(f"127.0.0.1:{server.port}")
        with pytest.raises(TimeoutError):
            client.receive(conn, timeout=0.05)


def test_client_with_a_handler_gets_the_same_callbacks() -> None:
    events: list[str] = []
    done = threading.Event()

    class Talker(gevwire.Handler):
        def on_connect(self, conn: gevwire.Connection) -> None:
            events.append("connect")
            conn.send(b"hi")

        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            events.append(frame.decode())
            conn.close()

        def on_close(self, conn: gevwire.Connection) -> None:
            events.append("close")
            done.set()

    with gevwire.Server(Echo(), address="127.0.0.1:0") as server, \
            gevwire.Client(Talker()) as client:
        client.connect(f"127.0.0.1:{server.port}")
        assert done.wait(10)
    assert events == ["connect", "hi", "close"]


def test_unix_and_ipv6_round_trips() -> None:
    path = os.path.join(tempfile.mkdtemp(), "c.sock")
    addresses = [f"unix:{path}"]
    if ipv6_loopback_available():
        addresses.append("[::1]:0")
    for address in addresses:
        with gevwire.Server(Echo(), address=address) as server, gevwire.Client() as client:
            target = address if address.startswith("unix:") else f"[::1]:{server.port}"
            conn = client.connect(target)
            conn.send(b"over " + address.encode())
            assert client.receive(conn) == b"over " + address.encode()


def test_connect_refused_raises() -> None:
    with gevwire.Server(Echo(), address="127.0.0.1:0") as server:
        port = server.port
    with gevwire.Client() as client, pytest.raises(ConnectionRefusedError):
        client.connect(f"127.0.0.1:{port}", timeout=5)
