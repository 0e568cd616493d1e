"""A real HAProxy sends PROXY headers (v1 and v2) that ``ProxyHeaderDecoder`` reads.

HAProxy listens on a loopback port in TCP mode and forwards to a small blocking Python
backend with ``send-proxy`` / ``send-proxy-v2``.  The backend reads the header with
``ProxyHeaderDecoder`` over a ``RingBuffer``, then the client's first line, and replies
with what it parsed; the client checks that the source is its own ``getsockname()`` and
the destination HAProxy's address.  HAProxy is installed (Debian's package) if missing.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest_haproxy import haproxy_binary, haproxy_version, run_haproxy

from gevwire.proxy_protocol import ProxyHeaderDecoder, ProxyInfo, ProxyProtocolError
from gevwire.ringbuffer import RingBuffer

# The first test may install haproxy (apt-get update + install) inside its time budget.
pytestmark = [pytest.mark.timeout(900), pytest.mark.io]

IO_TIMEOUT = 10.0


class ProxyBackend:
    """A one-thread blocking server: reads a PROXY header, then a line; replies in JSON.

    Every connection's outcome (a :class:`ProxyInfo` or the error) is kept in ``seen``,
    including HAProxy's health checks, which send a header and close.
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.seen: list[ProxyInfo | BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="proxy-backend", daemon=True)

    def __enter__(self) -> ProxyBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=IO_TIMEOUT + 5)
        self.listener.close()
        assert not self._thread.is_alive()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(IO_TIMEOUT)
                try:
                    self._handle(conn)
                except (OSError, ProxyProtocolError) as exc:
                    self.seen.append(exc)

    def _handle(self, conn: socket.socket) -> None:
        ring = RingBuffer(256)
        decoder = ProxyHeaderDecoder()
        info: ProxyInfo | None = None
        while info is None:
            chunk = conn.recv(4096)
            if not chunk:
                raise ConnectionError(f"EOF after {ring.length} bytes of a PROXY header")
            ring.write(chunk)
            info = decoder.decode(ring)
        self.seen.append(info)
        while ring.find(b"\n") < 0:  # the client's line, after the header
            try:
                chunk = conn.recv(4096)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return  # a health check: HAProxy sends the header, then closes (or resets)
            ring.write(chunk)
        line = ring.read(ring.find(b"\n") + 1)
        reply = {
            "version": info.version,
            "command": info.command,
            "family": info.family,
            "source": info.source,
            "destination": info.destination,
            "tlvs": {str(k): v.hex() for k, v in info.tlvs.items()},
            "line": line.decode(),
        }
        conn.sendall(json.dumps(reply).encode() + b"\n")


@pytest.fixture(scope="module")
def haproxy() -> str:
    binary = haproxy_binary()
    print(haproxy_version(binary))
    return binary


@pytest.fixture
def backend() -> Iterator[ProxyBackend]:
    with ProxyBackend() as server:
        yield server


def ask(host: str, port: int) -> tuple[dict[str, Any], socket.socket]:
    """Connect through HAProxy, send a line, return the backend's reply and the socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(IO_TIMEOUT)
    try:
        client.connect((host, port))
        client.sendall(b"hello through haproxy\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = client.recv(4096)
            if not chunk:
                raise ConnectionError(f"EOF from haproxy after {data!r}")
            data += chunk
    except BaseException:
        client.close()
        raise
    return json.loads(data), client


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def check_reply(reply: dict[str, Any], client: socket.socket, version: int) -> None:
    host, port = client.getsockname()[:2]
    peer_host, peer_port = client.getpeername()[:2]
    assert reply["version"] == version
    assert reply["command"] == "PROXY"
    assert reply["family"] == ("TCP6" if ":" in host else "TCP4")
    assert reply["source"] == [host, port]
    assert reply["destination"] == [peer_host, peer_port]
    assert reply["line"] == "hello through haproxy\n"


@pytest.mark.parametrize("front_host", ["127.0.0.1", "::1"])
def test_haproxy_send_proxy_v1(haproxy: str, backend: ProxyBackend, front_host: str) -> None:
    if front_host == "::1" and not ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    with run_haproxy(backend.port, "send-proxy", front_host=front_host) as proxy:
        for _ in range(3):
            reply, client = ask(proxy.host, proxy.port)
            with client:
                check_reply(reply, client, 1)
                assert reply["tlvs"] == {}
    assert not [e for e in backend.seen if isinstance(e, BaseException)]


@pytest.mark.parametrize("front_host", ["127.0.0.1", "::1"])
def test_haproxy_send_proxy_v2(haproxy: str, backend: ProxyBackend, front_host: str) -> None:
    if front_host == "::1" and not ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    with run_haproxy(backend.port, "send-proxy-v2", front_host=front_host) as proxy:
        for _ in range(3):
            reply, client = ask(proxy.host, proxy.port)
            with client:
                check_reply(reply, client, 2)
    assert not [e for e in backend.seen if isinstance(e, BaseException)]


def test_haproxy_send_proxy_v2_with_tlvs(haproxy: str, backend: ProxyBackend) -> None:
    """HAProxy's CRC32C (verified by the decoder) and unique-id TLVs."""
    options = "send-proxy-v2 proxy-v2-options crc32c,unique-id"
    extra = "    unique-id-format gevwire-%ci-%cp"
    with run_haproxy(backend.port, options, extra=extra) as proxy:
        reply, client = ask(proxy.host, proxy.port)
        with client:
            check_reply(reply, client, 2)
            host, port = client.getsockname()[:2]
    tlvs = {int(k): bytes.fromhex(v) for k, v in reply["tlvs"].items()}
    assert len(tlvs[0x03]) == 4  # the decoder checked it against the header
    assert tlvs[0x05] == f"gevwire-{host}-{port}".encode()
    assert not [e for e in backend.seen if isinstance(e, BaseException)]


def test_haproxy_v2_health_checks_send_local(haproxy: str, backend: ProxyBackend) -> None:
    """With ``check-send-proxy``, HAProxy's v2 health checks are LOCAL headers."""
    options = "send-proxy-v2 check check-send-proxy inter 100ms"
    with run_haproxy(backend.port, options) as proxy:
        deadline = time.monotonic() + 10
        while len(backend.seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        reply, client = ask(proxy.host, proxy.port)  # a proxied connection still works
        with client:
            check_reply(reply, client, 2)
    local = ProxyInfo(2, "LOCAL", "UNKNOWN", None, None)
    assert backend.seen.count(local) >= 2
    assert not [e for e in backend.seen if isinstance(e, BaseException)]
