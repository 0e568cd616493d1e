"""TLS servers over real sockets: ``Server(ssl=...)`` against clients nobody here wrote
(``openssl s_client``, Python's ``ssl``), on every backend (marked ``io``)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import LineCodec, Recorder, ServeFn, peer_closed, recv_exactly, wait_until
from system_packages import require_program
from tls_support import Certs, make_certs

import gevwire
import gevwire.connection
from gevwire import TLSHandshakeError, TLSHandshakeTimeout
from gevwire._compiled import speedups

pytestmark = [pytest.mark.io, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


class TLSRecorder(Recorder):
    """Records what TLS negotiated as ``on_connect`` saw it; closes after a ``bye`` line."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []

    def on_connect(self, conn: gevwire.Connection) -> None:
        self.seen.append({"alpn": conn.alpn_protocol, "sni": conn.server_hostname,
                          "version": conn.tls_version, "cipher": conn.cipher,
                          "cert": conn.peer_certificate})
        super().on_connect(conn)

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        super().on_message(conn, frame)
        if frame == b"bye":
            conn.close()
        return frame


def tls_client(server: gevwire.Server, ctx: ssl.SSLContext,
               hostname: str | None = "localhost") -> ssl.SSLSocket:
    raw = socket.create_connection(server.address[:2], timeout=10)
    return ctx.wrap_socket(raw, server_hostname=hostname)


def s_client(server: gevwire.Server, certs: Certs, *args: str,
             data: bytes = b"hello\nbye\n") -> subprocess.CompletedProcess[bytes]:
    openssl = require_program("openssl", package="openssl")
    cmd = [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}", "-CAfile",
           str(certs.ca_file), "-verify_return_error", "-servername", "localhost",
           "-ign_eof", *args]
    return subprocess.run(cmd, input=data, capture_output=True, timeout=20, check=False)


# -- openssl s_client ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_openssl_s_client_handshake_alpn_and_echo(serve: ServeFn, certs: Certs,
                                                  version: str) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context(alpn=["echo", "h2"]))
    result = s_client(server, certs, version, "-alpn", "echo")
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert "Verify return code: 0 (ok)" in out
    assert "ALPN protocol: echo" in out
    assert out.index("hello\n") < out.index("bye\n")  # echoed, in order
    expected = "TLSv1.3" if version == "-tls1_3" else "TLSv1.2"
    assert wait_until(lambda: handler.closed)
    (seen,) = handler.seen
    assert seen["version"] == expected and seen["alpn"] == "echo"
    assert seen["sni"] == "localhost"
    assert seen["cipher"] is not None and seen["cert"] is None
    assert [f for _, f in handler.frames] == [b"hello", b"bye"]
    assert server.stats()["errors"] == {}


def test_openssl_s_client_mutual_tls(serve: ServeFn, certs: Certs) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(),
                   ssl=certs.server_context(client_certs=ssl.CERT_REQUIRED))
    result = s_client(server, certs, "-cert", str(certs.client_cert_file),
                      "-key", str(certs.client_key_file))
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert b"bye\n" in result.stdout
    assert wait_until(lambda: handler.seen)
    cert = handler.seen[0]["cert"]
    assert cert is not None
    assert dict(item[0] for item in cert["subject"])["commonName"] == "test client"


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_openssl_s_client_without_the_required_certificate_is_refused(
        serve: ServeFn, certs: Certs, version: str) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(),
                   ssl=certs.server_context(client_certs=ssl.CERT_REQUIRED))
    result = s_client(server, certs, version)
    assert b"hello\n" not in result.stdout  # nothing was served
    err = (result.stdout + result.stderr).decode(errors="replace").lower()
    assert "alert" in err and "certificate" in err, err[-2000:]
    assert wait_until(lambda: server.stats()["errors"].get("TLSHandshakeError") == 1)
    assert wait_until(lambda: server.connection_count == 0)
    assert handler.seen == []  # on_connect never ran
    (_, error), = handler.errors
    assert isinstance(error, TLSHandshakeError)
    assert error.reason in {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"}


# -- Python's ssl --------------------------------------------------------------------------


def test_python_ssl_client_echo_large_and_pipelined(serve: ServeFn, certs: Certs) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context())
    with tls_client(server, certs.client_context()) as sock:
        lines = [b"%06d-" % i + b"x" * (i * 37 % 3000) for i in range(400)]
        data = b"".join(line + b"\n" for line in lines)
        # (One thread: an SSLSocket must not read and write from two at once.  Less
        # than the server's write_high_water, so it never has to wait for our reads.)
        sock.sendall(data)
        assert recv_exactly(sock, len(data)) == data
        big = b"y" * (512 << 10) + b"\n"
        sock.sendall(big)
        assert recv_exactly(sock, len(big)) == big
    stats = server.stats()
    assert stats["frames_in"] == 401 and stats["errors"] == {}


def test_close_sends_close_notify_after_the_replies(serve: ServeFn, certs: Certs) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context())
    with tls_client(server, certs.client_context()) as sock:
        sock.sendall(b"one\ntwo\nbye\nnever\n")
        assert recv_exactly(sock, 12) == b"one\ntwo\nbye\n"
        # close_notify: Python's ssl reads it as a clean EOF (b""), not SSLEOFError.
        assert sock.recv(100) == b""
        sock.unwrap()  # our close_notify back: the server closes at once
    assert wait_until(lambda: server.connection_count == 0, 5)
    assert [f for _, f in handler.frames] == [b"one", b"two", b"bye"]


def test_peer_close_notify_is_eof_and_replies_still_go_out(serve: ServeFn,
                                                           certs: Certs) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context())
    sock = tls_client(server, certs.client_context())
    sock.sendall(b"last\n")
    assert recv_exactly(sock, 5) == b"last\n"
    raw = sock.unwrap()  # close_notify, and the server's in answer
    assert peer_closed(raw)
    raw.close()
    assert wait_until(lambda: handler.closed)
    assert server.stats()["errors"] == {}


def test_peer_that_drops_without_close_notify_is_an_eof(
        serve: ServeFn, certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context())
    sock = tls_client(server, certs.client_context())
    sock.sendall(b"x\n")
    assert recv_exactly(sock, 2) == b"x\n"
    with caplog.at_level("DEBUG", logger="gevwire"):
        sock.close()  # (Python's SSLSocket.close sends no close_notify)
        assert wait_until(lambda: handler.closed)
    assert server.stats()["errors"] == {}
    assert any("without close_notify" in r.getMessage() for r in caplog.records)


def test_handshake_timeout_closes_and_counts(serve: ServeFn, certs: Certs) -> None:
    handler = TLSRecorder()
    server = serve(handler, ssl=certs.server_context(), ssl_handshake_timeout=0.3)
    with socket.create_connection(server.address[:2], timeout=10) as idle:
        start = time.monotonic()
        assert peer_closed(idle, timeout=5)
        assert 0.25 < time.monotonic() - start < 3
    assert wait_until(lambda: server.stats()["errors"].get("TLSHandshakeTimeout") == 1)
    assert server.stats()["tls_failures"] == {"HANDSHAKE_TIMEOUT": 1}
    (_, error), = handler.errors
    assert isinstance(error, TLSHandshakeTimeout) and error.timeout == 0.3
    assert handler.connected == [] and len(handler.closed) == 1


def test_plain_connections_have_no_tls_attributes(serve: ServeFn) -> None:
    handler = Recorder()
    server = serve(handler)
    with socket.create_connection(server.address[:2], timeout=10) as sock:
        conn = handler.conn_for(sock)
        assert (conn.alpn_protocol, conn.server_hostname, conn.peer_certificate,
                conn.tls_version, conn.cipher) == (None, None, None, None, None)


def test_idle_timeout_applies_to_tls_connections(serve: ServeFn, certs: Certs) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context(), idle_timeout=0.3)
    with tls_client(server, certs.client_context()) as sock:
        sock.sendall(b"a\n")
        assert recv_exactly(sock, 2) == b"a\n"
        start = time.monotonic()
        assert sock.recv(10) == b""  # close_notify when idle
        assert time.monotonic() - start < 3
    assert server.stats()["errors"].get("idle_timeout") == 1


def test_frame_timeout_counts_plaintext_frames(serve: ServeFn, certs: Certs) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context(), frame_timeout=0.3)
    with tls_client(server, certs.client_context()) as sock:
        sock.sendall(b"whole\npart")
        assert recv_exactly(sock, 6) == b"whole\n"
        assert sock.recv(10) == b""
    assert wait_until(lambda: server.stats()["errors"].get("FrameTimeout") == 1)


def test_send_from_another_thread_is_encrypted_in_order(serve: ServeFn,
                                                       certs: Certs) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context())
    with tls_client(server, certs.client_context()) as sock:
        sock.sendall(b"hi\n")
        assert recv_exactly(sock, 3) == b"hi\n"
        conn = handler.connected[0]
        for i in range(500):
            conn.send(b"%d" % i)
        expected = b"".join(b"%d\n" % i for i in range(500))
        assert recv_exactly(sock, len(expected)) == expected


def test_tls_stats_in_prometheus_metrics(serve: ServeFn, certs: Certs) -> None:
    pytest.importorskip("prometheus_client")
    import urllib.request

    server = serve(TLSRecorder(), ssl=certs.server_context(), metrics_address="127.0.0.1:0")
    with socket.create_connection(server.address[:2], timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # plain HTTP to the TLS port
        assert peer_closed(sock)
    assert wait_until(lambda: server.stats()["errors"].get("TLSHandshakeError") == 1)
    host, port = server.metrics_address  # type: ignore[misc]
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    assert 'gevwire_errors_total{kind="TLSHandshakeError"} 1.0' in text
    assert 'gevwire_tls_failures_total{reason="HTTP_REQUEST"} 1.0' in text
    assert server.stats()["tls_failures"] == {"HTTP_REQUEST": 1}


def test_proxy_header_is_read_before_the_client_hello(serve: ServeFn, certs: Certs) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context(),
                   proxy_protocol=True)
    raw = socket.create_connection(server.address[:2], timeout=10)
    raw.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 1833\r\n")
    with certs.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(b"via proxy\n")
        assert recv_exactly(sock, 10) == b"via proxy\n"
        conn = handler.connected[0]
        assert conn.peer_addr == ("203.0.113.7", 51000)
        assert conn.tls_version == "TLSv1.3"


def test_ssl_must_be_a_context() -> None:
    with pytest.raises(TypeError):
        gevwire.Server(Recorder(), ssl="cert.pem")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        gevwire.Server(Recorder(), ssl_handshake_timeout=0)


# -- the client side ----------------------------------------------------------------------


def test_client_connects_over_tls_with_sni_alpn_and_a_client_certificate(
        serve: ServeFn, certs: Certs) -> None:
    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context(
        alpn=["line"], client_certs=ssl.CERT_REQUIRED))
    ctx = certs.client_context(alpn=["line"], with_cert=True)
    with gevwire.Client(codec=LineCodec()) as client:
        conn = client.connect(f"127.0.0.1:{server.port}", ssl=ctx,
                              server_hostname="localhost")
        conn.send(b"sent before the handshake ended")
        assert client.receive(conn) == b"sent before the handshake ended"
        assert conn.tls_version == "TLSv1.3" and conn.alpn_protocol == "line"
        assert conn.server_hostname == "localhost"
        assert conn.peer_certificate is not None  # the server's, verified
        for i in range(100):
            conn.send(b"%d" % i)
        assert [client.receive(conn) for _ in range(100)] == [b"%d" % i for i in range(100)]
        assert handler.seen[0]["sni"] == "localhost"
        assert handler.seen[0]["cert"] is not None
        conn.close()
        with pytest.raises(gevwire.ConnectionClosed):
            client.receive(conn)
    assert wait_until(lambda: server.connection_count == 0)
    assert server.stats()["errors"] == {}


def test_client_default_server_hostname_is_the_dialed_host(serve: ServeFn,
                                                          certs: Certs) -> None:
    server = serve(TLSRecorder(), codec=LineCodec(), ssl=certs.server_context())
    with gevwire.Client(codec=LineCodec()) as client:
        # The certificate holds 127.0.0.1 as an IP address: verified without a name.
        conn = client.connect(f"127.0.0.1:{server.port}", ssl=certs.client_context())
        conn.send(b"ip")
        assert client.receive(conn) == b"ip"
        assert conn.server_hostname == "127.0.0.1"


def test_client_refuses_an_untrusted_server(serve: ServeFn, certs: Certs,
                                            tmp_path: Path) -> None:
    server = serve(TLSRecorder(), codec=LineCodec(), ssl=certs.server_context())
    other = make_certs(tmp_path)  # a CA that did not sign the server's certificate

    class Errors(gevwire.Handler):
        def __init__(self) -> None:
            self.errors: list[BaseException] = []
            self.closed = threading.Event()

        def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
            self.errors.append(error)
            conn.close()

        def on_close(self, conn: gevwire.Connection) -> None:
            self.closed.set()

    handler = Errors()
    with gevwire.Client(handler, codec=LineCodec()) as client:
        client.connect(f"127.0.0.1:{server.port}", ssl=other.client_context(),
                       server_hostname="localhost")
        assert handler.closed.wait(10)
    (error,) = handler.errors
    assert isinstance(error, TLSHandshakeError)
    assert error.reason == "CERTIFICATE_VERIFY_FAILED"


def test_server_connect_dials_tls(serve: ServeFn, certs: Certs) -> None:
    upstream = serve(TLSRecorder(), codec=LineCodec(), ssl=certs.server_context())
    replies: list[bytes] = []

    class Collect(gevwire.Handler):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            replies.append(frame)

    server = serve(Collect(), codec=LineCodec())
    conn = server.connect(f"127.0.0.1:{upstream.port}", ssl=certs.client_context(),
                          server_hostname="localhost")
    conn.send(b"through server.connect")
    assert wait_until(lambda: replies == [b"through server.connect"])
    assert conn.tls_version == "TLSv1.3"


def test_each_backend_serves_tls_with_its_own_connection_class(serve: ServeFn,
                                                               certs: Certs) -> None:
    from gevwire._uring.loop import uring_available

    backends = ["epoll"] + (["io_uring"] if uring_available()[0] else [])
    for backend in backends:
        for proxy in (False, True):
            handler = TLSRecorder()
            server = serve(handler, codec=LineCodec(), ssl=certs.server_context(),
                           backend=backend, proxy_protocol=proxy)
            raw = socket.create_connection(server.address[:2], timeout=10)
            if proxy:
                raw.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 1833\r\n")
            with certs.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(b"which\n")
                assert recv_exactly(sock, 6) == b"which\n"
                conn = handler.connected[0]
                # After the handshake, the compiled step takes its records, if built.
                reader = type(getattr(conn._tls_read, "__self__", None)).__name__
                assert reader == ("TLSPath" if speedups is not None else "TLSConnection")
            name = type(conn).__name__, type(conn._io).__name__
            # io_uring's completions, except behind a PROXY header (read on its epoll)
            want = ("TLSConnection",
                    "UringTLSIO" if backend == "io_uring" and not proxy else "ReadinessTLSIO")
            assert name == want, (backend, proxy, name)


def test_haproxy_send_proxy_v2_in_front_of_a_tls_listener(serve: ServeFn,
                                                          certs: Certs) -> None:
    """HAProxy in TCP mode passes TLS through, with a PROXY v2 header before it: the
    header is read first, then the client's handshake, and on_connect sees both."""
    from conftest_haproxy import run_haproxy

    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), proxy_protocol=True,
                   ssl=certs.server_context(alpn=["line"]))
    with run_haproxy(server.port, "send-proxy-v2") as proxy:
        for i in range(3):
            raw = socket.create_connection((proxy.host, proxy.port), timeout=10)
            ctx = certs.client_context(alpn=["line"])
            with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(b"through haproxy %d\n" % i)
                assert recv_exactly(sock, 18) == b"through haproxy %d\n" % i
                conn = handler.connected[i]
                assert conn.peer_addr[:2] == sock.getsockname()[:2]  # the real client
                assert conn.proxy_info is not None and conn.proxy_info.version == 2
                assert (conn.tls_version, conn.alpn_protocol) == ("TLSv1.3", "line")
    assert server.stats()["errors"] == {}


def test_shutdown_write_sends_close_notify_and_reading_goes_on(serve: ServeFn,
                                                               certs: Certs) -> None:
    class HalfClose(TLSRecorder):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            self.frames.append((conn, frame))
            if frame == b"half":
                conn.shutdown_write()
                return b"last reply"
            return None

    handler = HalfClose()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context())
    with tls_client(server, certs.client_context()) as sock:
        sock.sendall(b"half\n")
        assert recv_exactly(sock, 11) == b"last reply\n"
        assert sock.recv(10) == b""  # close_notify: the server's writing half is done
        sock.sendall(b"still read\n")  # (TLS 1.3: our half is still open)
        assert wait_until(lambda: [f for _, f in handler.frames] == [b"half", b"still read"])
        assert handler.connected[0].state == gevwire.connection.ConnState.WRITE_SHUT
    assert wait_until(lambda: server.connection_count == 0)
    assert server.stats()["errors"] == {}


def test_closed_connections_free_openssl_without_waiting_for_the_gc(
        serve: ServeFn, certs: Certs) -> None:
    """Connections are freed by the cyclic GC, which may run rarely; OpenSSL's state
    (~20 KiB each) is released at close, so 1,000 failed handshakes cannot hold 20 MB."""
    import gc

    handler = TLSRecorder()
    server = serve(handler, codec=LineCodec(), ssl=certs.server_context(),
                   ssl_handshake_timeout=0.2)
    gc.collect()
    gc.disable()
    try:
        for i in range(60):
            with socket.create_connection(server.address[:2], timeout=10) as sock:
                if i % 3 == 0:
                    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # a handshake error
                elif i % 3 == 1:
                    sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # stalled: the timeout
                else:  # a good one, closed by the client
                    with certs.client_context().wrap_socket(
                            sock, server_hostname="localhost") as tls:
                        tls.sendall(b"hi\n")
                        assert recv_exactly(tls, 3) == b"hi\n"
                    continue
                assert peer_closed(sock)
        assert wait_until(lambda: server.connection_count == 0)
        live = [o for o in gc.get_objects() if isinstance(o, ssl.SSLObject)
                or type(o).__name__ == "TLSPath"]  # (the compiled step holds its C part)
        closed = [c for c in handler.closed if c.tls_version is not None]
    finally:
        gc.enable()
    assert live == []  # (the test's own client sockets are SSLSockets, not SSLObjects)
    assert len(closed) == 20  # and what was negotiated is still there after close


# -- handlers that wait, over TLS ------------------------------------------------------


def test_async_handler_replies_before_close_notify(serve: ServeFn, certs: Certs) -> None:
    """A graceful close with a frame in flight: its reply is encrypted and sent, then
    close_notify (not close_notify first, which would make the reply unsendable)."""
    import asyncio

    class SlowEcho(gevwire.Handler):
        async def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            if frame == b"bye":
                conn.close()  # while "slow" is still in flight
                return None
            await asyncio.sleep(0.3)
            return frame

    server = serve(SlowEcho(), codec=LineCodec(), ssl=certs.server_context())
    with tls_client(server, certs.client_context()) as sock:
        sock.sendall(b"slow\nbye\n")
        assert recv_exactly(sock, 5) == b"slow\n"
        assert sock.recv(100) == b""  # then close_notify: a clean EOF
        sock.unwrap()
    assert wait_until(lambda: server.connection_count == 0, 5)
    assert server.stats()["errors"] == {}
