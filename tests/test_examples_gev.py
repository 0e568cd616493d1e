"""gev's maxconnection and pushmessage examples, run in-process."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_until

import gevwire

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import maxconnection
import pushmessage

pytestmark = pytest.mark.io


def test_maxconnection_refuses_politely_over_the_limit() -> None:
    handler = maxconnection.LimitedEcho(limit=2)
    with gevwire.Server(handler, address="127.0.0.1:0") as server:
        served = [socket.create_connection(server.address[:2], timeout=10) for _ in range(2)]
        assert wait_until(lambda: handler.open == 2)
        extra = socket.create_connection(server.address[:2], timeout=10)
        notice = b""
        while chunk := extra.recv(100):
            notice += chunk
        assert notice == b"server busy: too many connections\n"  # then EOF
        served[0].sendall(b"echo")
        assert served[0].recv(10) == b"echo"
        extra.close()
        served[0].close()
        assert wait_until(lambda: handler.open == 1)
        again = socket.create_connection(server.address[:2], timeout=10)
        again.sendall(b"room again")
        assert again.recv(20) == b"room again"
        for sock in (served[1], again):
            sock.close()


def test_pushmessage_pushes_to_every_client() -> None:
    handler = pushmessage.Push()
    server = gevwire.Server(handler, address="127.0.0.1:0")
    server.run_every(0.05, handler.push)
    with server:
        clients = [socket.create_connection(server.address[:2], timeout=10) for _ in range(3)]
        assert wait_until(lambda: len(handler.clients) == 3)
        for sock in clients:
            got = b""
            deadline = time.monotonic() + 5
            while got.count(b"\n") < 2 and time.monotonic() < deadline:
                got += sock.recv(200)
            assert got.startswith(b"server time ")
            assert got.count(b"server time ") >= 2
        for sock in clients:
            sock.close()
        assert wait_until(lambda: not handler.clients)
