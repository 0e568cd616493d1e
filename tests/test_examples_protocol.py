"""The protocol examples as a user runs them: each server in a subprocess, its client
against it, and a clean exit on SIGTERM / SIGINT.

Servers are started with ``--port 0`` and print ``listening on HOST:PORT`` once they
accept, so there is no race for a free port. Every wait is bounded and every process
is killed in ``finally``.
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
from types import ModuleType

import pytest
from example_process import EXAMPLES, REPO, assert_stops_cleanly, example_env, example_server

CLIENT_TIMEOUT = 60.0

pytestmark = [pytest.mark.timeout(120), pytest.mark.io]


def run_client(script: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--port", str(port)],
        cwd=REPO,
        env=example_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
    )


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- protocol: 4-byte length + payload -------------------------------------------------

PROTOCOL_LINES = [
    "reply 1: b'hello, gevwire' ok",
    "reply 2: b'one' ok",
    "reply 3: b'two' ok",
    "reply 4: b'three' ok",
    "reply 5: b'' ok",
    "all 6 frames echoed",
]


@pytest.mark.parametrize("script", ["protocol_server.py", "framed_echo.py"])
def test_protocol_client_against_length_prefixed_servers(script: str) -> None:
    with example_server(script) as (proc, port):
        result = run_client("protocol_client.py", port)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        for line in PROTOCOL_LINES:
            assert line in lines, result.stdout
        assert any(line.startswith("reply 6: <65536 bytes") and line.endswith(" ok")
                   for line in lines), result.stdout
        assert "in 5 writes" in result.stdout
        # A client still connected must not keep the server from stopping.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            assert_stops_cleanly(proc, signal.SIGTERM)


def test_protocol_server_stops_on_sigint() -> None:
    with example_server("protocol_server.py", "--quiet") as (proc, _port):
        assert_stops_cleanly(proc, signal.SIGINT)


def test_protocol_client_reports_an_unreachable_server() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        result = run_client("protocol_client.py", port)
    assert result.returncode == 2
    assert "error:" in result.stderr


# -- key-value server ------------------------------------------------------------------

KV_LINES = [
    "PING 'hello' -> pong 'hello'",
    "SET greeting='hello, world' -> ok",
    "GET greeting -> value 'hello, world'",
    "SET greeting='bonjour' -> ok",
    "GET greeting -> value 'bonjour'",
    "GET missing -> not_found",
    "DEL greeting -> ok",
    "DEL greeting -> not_found",
    "GET greeting -> not_found",
    "pipelined: 100 SET + 100 GET in one write -> 200 replies, 200 as expected",
    "all replies as expected",
]


def test_kv_client_against_kv_server() -> None:
    with example_server("kv_server.py") as (proc, port):
        result = run_client("kv_client.py", port)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        for line in KV_LINES:
            assert line in lines, result.stdout
        # The store belongs to the server, not to a connection: a second client sees it.
        again = run_client("kv_client.py", port)
        assert again.returncode == 0, again.stdout + again.stderr
        assert_stops_cleanly(proc, signal.SIGTERM)


def test_kv_server_answers_an_unexpected_kind_with_an_error() -> None:
    kv = load_example("kv_server")
    message = kv.MESSAGE
    with example_server("kv_server.py", "--quiet") as (proc, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(message.build({"kind": "pong", "id": 42, "key": b"k", "value": b""}))
            data = b""
            while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                chunk = sock.recv(65536)
                assert chunk, "server closed the connection"
                data += chunk
            reply = message.parse(data)
        assert reply.kind == "error"
        assert reply.id == 42
        assert b"unexpected message kind pong" in reply.value
        assert_stops_cleanly(proc, signal.SIGINT)
