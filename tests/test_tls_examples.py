"""The examples over TLS (``--ssl-certfile`` / ``--ssl-keyfile``), against clients nobody
here wrote: ``redis-cli --tls``, ``redis-benchmark --tls``, ``mosquitto_pub`` /
``mosquitto_sub --cafile``, ``curl --cacert``, the ``websockets`` library over
``wss://``, and Python's ``ssl`` for the echo server."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import recv_exactly
from example_process import EXAMPLES, assert_stops_cleanly, example_env, example_server
from system_packages import require_program
from test_workers import ServerProcess
from tls_support import Certs, make_certs

pytestmark = [pytest.mark.io, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


@contextmanager
def tls_example(script: str, certs: Certs, *extra: str) -> Iterator[int]:
    with example_server(script, "--ssl-certfile", str(certs.server_cert_file),
                        "--ssl-keyfile", str(certs.server_key_file), *extra) as (proc, port):
        yield port
        assert_stops_cleanly(proc)


@contextmanager
def echo_example(*extra: str) -> Iterator[int]:
    """examples/echo.py (it logs, rather than prints, where it listens)."""
    run = ServerProcess([str(EXAMPLES / "echo.py"), "--port", "0", *extra])
    try:
        yield int(run.wait_for(r"gevwire listening on \('127\.0\.0\.1', (\d+)\)")[0][1])
        assert run.stop() == 0, run.output
    finally:
        run.close()


def test_echo_example_over_tls(certs: Certs) -> None:
    with echo_example("--ssl-certfile", str(certs.server_cert_file), "--ssl-keyfile",
                      str(certs.server_key_file)) as port, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            certs.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.version() == "TLSv1.3"
        data = bytes(range(256)) * 400
        sock.sendall(data)
        assert recv_exactly(sock, len(data)) == data


def _redis_cli_has_tls() -> str:
    cli = require_program("redis-cli", package="redis-tools")
    help_text = subprocess.run([cli, "--help"], capture_output=True, text=True,
                               timeout=10).stdout + subprocess.run(
        [cli, "--help"], capture_output=True, text=True, timeout=10).stderr
    if "--tls" not in help_text:
        pytest.skip("this redis-cli was built without TLS")
    return cli


def test_redis_cli_and_redis_benchmark_over_tls(certs: Certs) -> None:
    cli = _redis_cli_has_tls()
    with tls_example("redis_server.py", certs) as port:
        base = [cli, "--tls", "--cacert", str(certs.ca_file), "--sni", "localhost",
                "-h", "127.0.0.1", "-p", str(port)]

        def redis(*args: str) -> str:
            done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=20)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        assert redis("PING") == "PONG"
        assert redis("SET", "tls:key", "over TLS") == "OK"
        assert redis("GET", "tls:key") == "over TLS"
        value = "v" * 100_000  # several TLS records each way
        assert redis("SET", "tls:big", value) == "OK"
        assert redis("GET", "tls:big") == value
        # An untrusted server: redis-cli refuses it.
        refused = subprocess.run([cli, "--tls", "-h", "127.0.0.1", "-p", str(port),
                                  "PING"], capture_output=True, text=True, timeout=20)
        assert "PONG" not in refused.stdout
        bench = require_program("redis-benchmark", package="redis-tools")
        done = subprocess.run([bench, "--tls", "--cacert", str(certs.ca_file), "--sni",
                               "localhost", "-h", "127.0.0.1", "-p", str(port), "-n", "2000",
                               "-c", "4", "-P", "8", "-t", "set,get", "-q"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "SET:" in done.stdout and "GET:" in done.stdout, done.stdout


def test_mosquitto_clients_over_tls(certs: Certs) -> None:
    pub = require_program("mosquitto_pub", package="mosquitto-clients")
    sub = require_program("mosquitto_sub", package="mosquitto-clients")
    with tls_example("mqtt_broker.py", certs) as port:
        tls = ["-h", "localhost", "-p", str(port), "--cafile", str(certs.ca_file)]
        listener = subprocess.Popen([sub, *tls, "-t", "tls/#", "-C", "2", "-v", "-q", "1"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)  # subscribed before the publishes
            for i in range(2):
                done = subprocess.run([pub, *tls, "-t", f"tls/{i}", "-m", f"secret {i}",
                                       "-q", "1"], capture_output=True, text=True, timeout=20)
                assert done.returncode == 0, done.stderr
            out, err = listener.communicate(timeout=20)
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait(5)
        assert out.decode().splitlines() == ["tls/0 secret 0", "tls/1 secret 1"], err
        # A client that does not trust the broker's CA is refused.
        done = subprocess.run([pub, "-h", "localhost", "-p", str(port), "--capath",
                               "/nonexistent", "-t", "x", "-m", "y"], capture_output=True,
                              text=True, timeout=20)
        assert done.returncode != 0


def test_curl_and_websockets_over_tls(certs: Certs) -> None:
    curl = require_program("curl", package="curl")
    from websockets.sync.client import connect

    with tls_example("websocket_echo.py", certs) as port:
        page = subprocess.run([curl, "-sS", "--cacert", str(certs.ca_file),
                               f"https://localhost:{port}/"], capture_output=True,
                              timeout=20)
        assert page.returncode == 0, page.stderr
        assert b"<script>" in page.stdout and b"wss://" in page.stdout
        insecure = subprocess.run([curl, "-sS", f"https://localhost:{port}/"],
                                  capture_output=True, timeout=20)
        assert insecure.returncode != 0  # an unknown CA: curl refuses
        ctx = certs.client_context()
        with connect(f"wss://localhost:{port}/ws", ssl=ctx, open_timeout=10) as ws:
            for message in ("hello", "é" * 5000, b"\x00\x01" * 40000):
                ws.send(message)
                assert ws.recv(timeout=10) == message


def test_examples_refuse_unusable_tls_flags(certs: Certs, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / "echo.py"), "--port", "0",
                           "--ssl-certfile", str(tmp_path / "missing.pem")],
                          capture_output=True, text=True, timeout=20, env=example_env())
    assert done.returncode == 2
    assert "cannot load the TLS certificate" in done.stderr


def test_without_the_flags_the_example_serves_plain_tcp() -> None:
    with echo_example() as port, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"plain")
        assert recv_exactly(sock, 5) == b"plain"
        with pytest.raises((ssl.SSLError, OSError)), socket.create_connection(
                ("127.0.0.1", port), timeout=10) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")


@pytest.mark.timeout(1000)  # the first run may install the Debian package
def test_chromium_loads_the_page_over_https_and_echoes_over_wss(certs: Certs) -> None:
    """Headless Chromium trusts the server's key by its SPKI hash, loads the WebSocket
    example's page over https:// and the page's script talks to it over wss://."""
    import base64
    import hashlib
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from test_websocket_example import load_echo_page

    chromium = require_program("chromium", package="chromium")
    cert = x509.load_pem_x509_certificate(certs.server.cert_chain_pems[0].bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    message = f"tls-{os.getpid()}"
    with tls_example("websocket_echo.py", certs) as port:
        title, shown = load_echo_page(
            chromium, f"https://localhost:{port}/?msg={message}", message,
            f"--ignore-certificate-errors-spki-list={pin}")
    assert title == f"echo: {message}", f"page log: {shown!r}"
    assert shown is not None and shown.splitlines()[0] == "open (permessage-deflate)"
