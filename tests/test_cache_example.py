"""examples/cache_server.py against a real redis-server: handlers that wait (async
routes through redis.asyncio, a blocking route on the thread pool) never stall the loop.

Redis is slowed with ``CLIENT PAUSE``: its clients' commands wait, as they would behind
a slow disk or a busy server, while the test measures the other connections.
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from example_process import EXAMPLES, REPO, assert_stops_cleanly, example_env, example_server
from system_packages import require_program

import gevwire
from gevwire.ringbuffer import RingBuffer

pytestmark = [pytest.mark.timeout(120), pytest.mark.io]

redis = pytest.importorskip("redis")


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cache = load_example("cache_server")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A redis-server of its own on a free loopback port, no persistence."""
    program = require_program("redis-server", package="redis-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        pytest.fail("redis-server did not start")
                    time.sleep(0.05)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def admin(redis_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    client.flushdb()
    yield client
    client.close()


class Client:
    """Requests and replies of the example's protocol over one socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.codec = gevwire.Codec(cache.MESSAGE)
        self.decoder = self.codec.decoder()
        self.ring = RingBuffer()
        self.next_id = 1

    def send(self, kind: str, key: bytes = b"", value: bytes = b"") -> int:
        request_id = self.next_id
        self.next_id += 1
        self.sock.sendall(self.codec.encode(
            {"kind": kind, "id": request_id, "key": key, "value": value}))
        return request_id

    def reply(self) -> Any:
        while (frame := self.decoder.decode(self.ring)) is None:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.ring.write(chunk)
        return frame

    def call(self, kind: str, key: bytes = b"", value: bytes = b"") -> Any:
        request_id = self.send(kind, key, value)
        frame = self.reply()
        assert frame.id == request_id
        return frame

    def close(self) -> None:
        self.sock.close()


def pause_redis(admin: Any, seconds: float) -> None:
    """Every Redis client's next commands wait ``seconds`` (a slow backend)."""
    assert admin.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")


def test_kv_client_runs_against_the_cache(redis_url: str, admin: Any) -> None:
    with example_server("cache_server.py", "--redis", redis_url, "--quiet") as (proc, port):
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "kv_client.py"), "--port", str(port)],
            cwd=REPO, env=example_env(), stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "all replies as expected" in result.stdout
        assert admin.get(b"key7") == b"value7"  # it is Redis that stored it
        assert_stops_cleanly(proc, signal.SIGTERM)


def test_a_request_waiting_for_redis_never_stalls_the_loop(redis_url: str,
                                                          admin: Any) -> None:
    admin.set(b"k", b"v")
    with example_server("cache_server.py", "--redis", redis_url, "--quiet",
                        "--loops", "1") as (proc, port):
        waiting, blocking, other = Client(port), Client(port), Client(port)
        assert other.call("ping", value=b"warm").kind == "pong"
        assert waiting.call("get", b"k").value == b"v"  # the asyncio client connected
        pause_redis(admin, 1.0)
        started = time.monotonic()
        waiting.send("get", b"k")  # async route: waits for Redis
        blocking.send("report", b"k")  # blocking route: a pool thread waits for Redis
        time.sleep(0.05)
        answered = []
        for i in range(5):  # the same loop answers at once meanwhile
            asked = time.monotonic()
            assert other.call("ping", value=b"%d" % i).value == b"%d" % i
            answered.append(time.monotonic() - asked)
        assert max(answered) < 0.1, answered
        assert time.monotonic() - started < 0.5  # all while Redis was paused
        got = waiting.reply()
        assert (got.kind, got.value) == ("value", b"v")
        assert time.monotonic() - started > 0.7  # it did wait for Redis
        assert blocking.reply().value == b"keys=1 bytes=1"
        for client in (waiting, blocking, other):
            client.close()
        assert_stops_cleanly(proc, signal.SIGTERM)


def test_pipelined_replies_keep_request_order(redis_url: str, admin: Any) -> None:
    with example_server("cache_server.py", "--redis", redis_url, "--quiet") as (proc, port):
        client = Client(port)
        ids = [client.send("set", b"a", b"1"), client.send("report", b"a"),
               client.send("ping", value=b"p"), client.send("get", b"a"),
               client.send("get", b"missing"), client.send("delete", b"a"),
               client.send("get", b"a")]
        replies = [client.reply() for _ in ids]
        assert [r.id for r in replies] == ids
        assert [str(r.kind) for r in replies] == [
            "ok", "value", "pong", "value", "not_found", "ok", "not_found"]
        assert replies[1].value == b"keys=1 bytes=1"
        assert replies[3].value == b"1"
        client.close()
        assert_stops_cleanly(proc, signal.SIGINT)


def test_report_counts_keys_under_a_prefix(redis_url: str, admin: Any) -> None:
    admin.mset({b"user:1": b"abc", b"user:2": b"de", b"user*3": b"x", b"other": b"zzzz"})
    with example_server("cache_server.py", "--redis", redis_url, "--quiet") as (_proc, port):
        client = Client(port)
        assert client.call("report", b"user:").value == b"keys=2 bytes=5"
        assert client.call("report", b"user*").value == b"keys=1 bytes=1"  # * is literal
        client.close()


def test_a_request_past_handler_timeout_closes_only_its_connection(
        redis_url: str, admin: Any) -> None:
    with example_server("cache_server.py", "--redis", redis_url, "--quiet",
                        "--handler-timeout", "0.3") as (_proc, port):
        slow, other = Client(port), Client(port)
        assert slow.call("get", b"k").kind == "not_found"
        pause_redis(admin, 1.5)
        started = time.monotonic()
        slow.send("get", b"k")
        with pytest.raises(ConnectionError):
            slow.reply()
        assert 0.2 < time.monotonic() - started < 1.2
        assert other.call("ping", value=b"still").value == b"still"
        slow.close()
        other.close()


def test_stop_sends_the_replies_in_flight_first(redis_url: str, admin: Any) -> None:
    admin.set(b"k", b"late")
    with example_server("cache_server.py", "--redis", redis_url, "--quiet") as (proc, port):
        client = Client(port)
        assert client.call("get", b"k").value == b"late"
        pause_redis(admin, 0.5)
        client.send("get", b"k")
        time.sleep(0.1)
        stopper = threading.Thread(target=assert_stops_cleanly, args=(proc,))
        stopper.start()
        assert client.reply().value == b"late"
        stopper.join(20)
        client.close()
