"""Router: dispatch by kind, nested and callable keys, hooks, over real connections."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest

import gevwire
from gevwire import Codec, Connection, Router, RoutingError, Server

pytestmark = pytest.mark.io

KIND = c.Enum(c.Int8ub, ping=1, pong=2, echo=3, unknown=9)
MESSAGE = c.Prefixed(
    c.Int32ub,
    c.Struct("kind" / KIND, "id" / c.Int16ub, "data" / c.GreedyBytes),
)
NESTED = c.Prefixed(
    c.Int16ub,
    c.Struct("header" / c.Struct("kind" / KIND, "id" / c.Int16ub), "data" / c.GreedyBytes),
)


def recv_frames(sock: socket.socket, schema: Any, count: int, timeout: float = 5.0) -> list[Any]:
    sock.settimeout(timeout)
    data = b""
    frames: list[Any] = []
    while len(frames) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        while len(data) >= 4:
            try:
                size = len(schema.build(schema.parse(data)))
            except c.ConstructError:
                break
            frames.append(schema.parse(data[:size]))
            data = data[size:]
    return frames


def make_router() -> Router:
    router = Router(key="kind")

    @router.on("ping")
    def ping(conn: Connection, frame: Any) -> Any:
        return {"kind": "pong", "id": frame.id, "data": frame.data}

    @router.on("echo")
    def echo(conn: Connection, frame: Any) -> Any:
        conn.send({"kind": "echo", "id": frame.id, "data": b"first"})
        return {"kind": "echo", "id": frame.id, "data": frame.data}

    return router


def test_dispatch_by_kind_with_many_frames_in_one_read() -> None:
    router = make_router()
    with Server(router, address="127.0.0.1:0", codec=Codec(MESSAGE)) as server:
        with socket.create_connection(server.address[:2]) as sock:
            burst = b"".join(
                MESSAGE.build({"kind": "ping", "id": i, "data": b"p%d" % i}) for i in range(50)
            )
            sock.sendall(burst)
            frames = recv_frames(sock, MESSAGE, 50)
    assert [f.id for f in frames] == list(range(50))
    assert all(f.kind == "pong" for f in frames)
    assert frames[7].data == b"p7"


def test_one_frame_across_many_reads() -> None:
    router = make_router()
    with Server(router, address="127.0.0.1:0", codec=Codec(MESSAGE)) as server:
        with socket.create_connection(server.address[:2]) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            payload = bytes(range(256)) * 1024
            frame = MESSAGE.build({"kind": "ping", "id": 7, "data": payload})
            for i in range(0, len(frame), 4096):
                sock.sendall(frame[i : i + 4096])
                if i % (16 * 4096) == 0:
                    time.sleep(0.001)
            (reply,) = recv_frames(sock, MESSAGE, 1)
    assert reply.kind == "pong"
    assert reply.data == payload


def test_send_inside_a_handler_keeps_order() -> None:
    router = make_router()
    with Server(router, address="127.0.0.1:0", codec=Codec(MESSAGE)) as server:
        with socket.create_connection(server.address[:2]) as sock:
            sock.sendall(MESSAGE.build({"kind": "echo", "id": 1, "data": b"second"}))
            frames = recv_frames(sock, MESSAGE, 2)
    assert [f.data for f in frames] == [b"first", b"second"]


def test_unknown_kind_without_default_closes_with_a_clear_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = make_router()
    with caplog.at_level(logging.ERROR, logger="gevwire"):
        with Server(router, address="127.0.0.1:0", codec=Codec(MESSAGE)) as server:
            with socket.create_connection(server.address[:2]) as sock:
                sock.settimeout(5)
                sock.sendall(MESSAGE.build({"kind": "unknown", "id": 1, "data": b""}))
                assert sock.recv(100) == b""
                # other connections still work
                with socket.create_connection(server.address[:2]) as other:
                    other.sendall(MESSAGE.build({"kind": "ping", "id": 2, "data": b"ok"}))
                    (reply,) = recv_frames(other, MESSAGE, 1)
                    assert reply.data == b"ok"
    assert any("no handler for kind 'unknown'" in r.getMessage() or
               (r.exc_info and "no handler for kind 'unknown'" in str(r.exc_info[1]))
               for r in caplog.records)


def test_default_handler_and_hooks() -> None:
    router = Router(key="header.kind")
    events: list[str] = []

    @router.on("ping")
    def ping(conn: Connection, frame: Any) -> Any:
        return {"header": {"kind": "pong", "id": frame.header.id}, "data": b""}

    @router.default
    def other(conn: Connection, frame: Any) -> Any:
        return {"header": {"kind": "unknown", "id": frame.header.id}, "data": b"default"}

    @router.on_connect
    def connected(conn: Connection) -> None:
        events.append("connect")

    @router.on_close
    def closed(conn: Connection) -> None:
        events.append("close")

    with Server(router, address="127.0.0.1:0", codec=Codec(NESTED)) as server:
        with socket.create_connection(server.address[:2]) as sock:
            sock.sendall(NESTED.build({"header": {"kind": "ping", "id": 1}, "data": b""}))
            sock.sendall(NESTED.build({"header": {"kind": "echo", "id": 2}, "data": b""}))
            frames = recv_frames(sock, NESTED, 2)
        deadline = time.monotonic() + 5
        while "close" not in events and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [f.header.kind for f in frames] == ["pong", "unknown"]
    assert frames[1].data == b"default"
    assert events == ["connect", "close"]


def test_error_hook_gets_frame_errors_and_handler_exceptions() -> None:
    router = Router(key=lambda frame: frame.kind)
    errors: list[BaseException] = []

    @router.on("ping")
    def ping(conn: Connection, frame: Any) -> Any:
        raise RuntimeError("boom")

    @router.on_error
    def on_error(conn: Connection, error: BaseException) -> None:
        errors.append(error)
        conn.close()

    with Server(router, address="127.0.0.1:0", codec=Codec(MESSAGE)) as server:
        with socket.create_connection(server.address[:2]) as sock:
            sock.settimeout(5)
            sock.sendall(MESSAGE.build({"kind": "ping", "id": 1, "data": b""}))
            assert sock.recv(10) == b""
        with socket.create_connection(server.address[:2]) as sock:
            sock.settimeout(5)
            sock.sendall(b"\x00\x00\x00\x01\x07")  # kind 7 is not in the Enum: still parses
            sock.sendall(b"\x00\x00\x00\x00")  # too short for the struct: FrameError
            assert sock.recv(10) == b""
    assert isinstance(errors[0], RuntimeError)
    assert any(isinstance(e, gevwire.FrameError) for e in errors[1:])


def test_registration_errors() -> None:
    router = Router()

    @router.on("a", "b")
    def handler(conn: Connection, frame: Any) -> None:
        return None

    assert router.kinds == ["a", "b"]
    with pytest.raises(ValueError):
        router.on("a")(handler)
    with pytest.raises(TypeError):
        router.on()
    with pytest.raises(RoutingError):
        router.on_message(None, {"nokind": 1})  # type: ignore[arg-type]
    with pytest.raises(RoutingError, match="no handler"):
        router.on_message(None, {"kind": "zzz"})  # type: ignore[arg-type]


def test_a_kind_the_schemas_enum_cannot_produce_fails_at_registration() -> None:
    import construct as c  # type: ignore[import-untyped]

    schema = c.Prefixed(c.Int32ub, c.Struct(
        "header" / c.Struct("kind" / c.Enum(c.Int8ub, ping=1, pong=2)), "id" / c.Int16ub))
    router = gevwire.Router(key="header.kind", schema=schema)
    router.on("ping")(lambda conn, frame: None)
    with pytest.raises(ValueError, match=r"'pnog'.*has no such name.*ping, pong"):
        router.on("pnog")(lambda conn, frame: None)
    late = gevwire.Router(key="header.kind")  # no schema: checked when served with one
    late.on("pong", "pnig")(lambda conn, frame: None)
    with pytest.raises(ValueError, match="'pnig'"):
        gevwire.Server(late, address="127.0.0.1:0", codec=gevwire.Codec(schema))
    other = gevwire.Router(key="id", schema=schema)  # not an Enum: nothing to check
    other.on("anything")(lambda conn, frame: None)
