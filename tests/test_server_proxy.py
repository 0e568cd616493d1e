"""Server(proxy_protocol=True) behind a real HAProxy: peer_addr is the original client."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from conftest import recv_exactly, wait_until
from conftest_haproxy import haproxy_binary, run_haproxy

import gevwire
from gevwire.proxy_protocol import ProxyInfo, encode_v1

pytestmark = pytest.mark.io


class ReportPeer(gevwire.Handler):
    """Replies to every frame with the peer address the server believes in."""

    def __init__(self) -> None:
        self.infos: list[ProxyInfo | None] = []

    def on_connect(self, conn: gevwire.Connection) -> None:
        self.infos.append(conn.proxy_info)

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        host, port = conn.peer_addr[:2]
        return f"{host} {port} {frame.decode()}\n".encode()


@pytest.fixture(scope="module")
def haproxy() -> str:
    return haproxy_binary()


@pytest.mark.parametrize("option", ["send-proxy", "send-proxy-v2"])
def test_peer_addr_through_haproxy(haproxy: str, option: str) -> None:
    handler = ReportPeer()
    with gevwire.Server(handler, address="127.0.0.1:0", proxy_protocol=True) as server:
        with run_haproxy(server.port, option) as proxy:
            for _ in range(3):
                with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
                    sock.sendall(b"hello")
                    reply = sock.recv(200).decode().split()
                    host, port = sock.getsockname()[:2]
                    # the server saw the client, not HAProxy's outgoing connection
                    assert reply == [host, str(port), "hello"]
    infos = [info for info in handler.infos if info is not None and info.command == "PROXY"]
    assert len(infos) >= 3
    assert {info.version for info in infos} == {1 if option == "send-proxy" else 2}


def test_malformed_header_closes_only_that_connection() -> None:
    handler = ReportPeer()
    with gevwire.Server(handler, address="127.0.0.1:0", proxy_protocol=True) as server:
        with socket.create_connection(server.address[:2], timeout=10) as bad:
            bad.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert bad.recv(100) == b""
        with socket.create_connection(server.address[:2], timeout=10) as good:
            info = ProxyInfo(1, "PROXY", "TCP4", ("192.0.2.7", 4242), ("127.0.0.1", 80), {})
            # header and first frame in one segment: the frame must not be lost
            good.sendall(encode_v1(info) + b"first")
            assert recv_exactly(good, len(b"192.0.2.7 4242 first\n")) == b"192.0.2.7 4242 first\n"
        assert wait_until(lambda: server.connection_count == 0)
        assert server.stats()["errors"].get("ProxyProtocolError") == 1
        assert len(handler.infos) == 1  # on_connect only after a valid header


def test_a_proxy_header_not_complete_in_time_closes_only_that_connection() -> None:
    """A peer that trickles a PROXY header (or is no proxy at all) is closed at
    proxy_timeout: idle_timeout cannot catch it, every byte counts as activity."""
    handler = ReportPeer()
    with gevwire.Server(handler, address="127.0.0.1:0", proxy_protocol=True,
                        proxy_timeout=0.5, idle_timeout=30) as server:
        info = ProxyInfo(1, "PROXY", "TCP4", ("192.0.2.7", 4242), ("127.0.0.1", 80), {})
        with socket.create_connection(server.address[:2], timeout=10) as slow, \
                socket.create_connection(server.address[:2], timeout=10) as good:
            good.sendall(encode_v1(info))
            header = encode_v1(info)
            for byte in header[:4]:  # a byte every 0.1 s: never idle, never done
                slow.sendall(bytes([byte]))
                time.sleep(0.1)
            assert wait_until(lambda: server.stats()["errors"].get("ProxyHeaderTimeout") == 1)
            assert slow.recv(16) == b""  # closed
            # The good connection's header came in time: it is served past proxy_timeout.
            good.sendall(b"still here")
            reply = b"192.0.2.7 4242 still here\n"
            assert recv_exactly(good, len(reply)) == reply
        assert len(handler.infos) == 1  # on_connect for the good one only


def test_proxy_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="proxy_timeout"):
        gevwire.Server(ReportPeer(), address="127.0.0.1:0", proxy_protocol=True,
                       proxy_timeout=0)
