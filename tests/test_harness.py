"""HandlerHarness (no sockets), serve() and BlockingClient over loopback, and the pytest plugin's
fixtures."""

from __future__ import annotations

from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest
from construct import this
from hypothesis import given, settings
from hypothesis import strategies as st

from gevwire import (
    Codec,
    ConnectionClosed,
    FrameError,
    Handler,
    RawCodec,
    Router,
    RoutingError,
    Server,
    codecs,
)
from gevwire.testing import BlockingClient, HandlerHarness, serve, strategy_for

pytestmark = pytest.mark.io

SCHEMA = c.Struct(
    "kind" / c.Enum(c.Int8ub, ping=1, pong=2, put=3, get=4, value=5, bye=6),
    "id" / c.Int16ub,
    "length" / c.Int16ub,
    "body" / c.Bytes(this.length),
)
CODEC = Codec(SCHEMA, max_frame_size=4096)


def msg(kind: str, ident: int = 0, body: bytes = b"") -> Any:
    """A frame as the codec decodes it (a Container: fields by attribute too)."""
    return c.Container(kind=kind, id=ident, length=len(body), body=body)


def make_router() -> Router:
    router = Router(key="kind")
    events: list[str] = []
    router.events = events  # type: ignore[attr-defined]

    @router.on_connect
    def connected(conn: Any) -> None:
        events.append("connect")
        conn.set("store", {})

    @router.on_close
    def closed(conn: Any) -> None:
        events.append("close")

    @router.on("ping")
    def ping(conn: Any, frame: Any) -> Any:
        return msg("pong", frame.id, frame.body)

    @router.on("put")
    def put(conn: Any, frame: Any) -> None:
        conn.get("store")[frame.id] = frame.body

    @router.on("get")
    def get(conn: Any, frame: Any) -> Any:
        conn.send(msg("value", frame.id, conn.get("store").get(frame.id, b"")))
        return None

    @router.on("bye")
    def bye(conn: Any, frame: Any) -> Any:
        conn.close()
        return msg("bye", frame.id)

    return router


# -- the harness ---------------------------------------------------------------------------


def test_deliver_frames_and_collect_replies() -> None:
    router = make_router()
    harness = HandlerHarness(router, CODEC)
    assert router.events == ["connect"]  # type: ignore[attr-defined]
    assert harness.deliver(msg("ping", 7, b"hi")) == [msg("pong", 7, b"hi")]
    assert harness.deliver(msg("put", 1, b"one")) == []
    assert harness.deliver(msg("get", 1)) == [msg("value", 1, b"one")]
    assert harness.replies == [msg("pong", 7, b"hi"), msg("value", 1, b"one")]
    assert harness.output == CODEC.encode(msg("pong", 7, b"hi")) + CODEC.encode(
        msg("value", 1, b"one"))
    assert harness.conn.connected and not harness.closed


def test_feed_cuts_frames_as_a_connection() -> None:
    harness = HandlerHarness(make_router(), CODEC)
    stream = CODEC.encode(msg("ping", 1, b"abc")) + CODEC.encode(msg("ping", 2))
    assert harness.feed(stream[:4]) == []  # a partial frame waits in the ring
    assert harness.conn.read_buffer_length == 4
    replies = harness.feed(stream[4:])
    assert [r["id"] for r in replies] == [1, 2]
    assert harness.conn.read_buffer_length == 0
    assert harness.feed_message(msg("ping", 3)) == [msg("pong", 3)]


def test_close_stops_dispatch_and_runs_on_close_once() -> None:
    router = make_router()
    harness = HandlerHarness(router, CODEC)
    stream = b"".join(CODEC.encode(m) for m in (msg("bye", 1), msg("ping", 2)))
    assert harness.feed(stream) == [msg("bye", 1)]  # the reply of the closing frame goes out
    assert harness.closed and not harness.conn.connected
    assert router.events == ["connect", "close"]  # type: ignore[attr-defined]
    assert harness.feed(CODEC.encode(msg("ping", 3))) == []  # nothing after the close
    harness.disconnect()
    assert router.events == ["connect", "close"]  # type: ignore[attr-defined]
    with pytest.raises(ConnectionClosed):
        harness.conn.send(msg("ping"))


def test_handler_errors_propagate_by_default() -> None:
    router = Router(key="kind")
    harness = HandlerHarness(router, CODEC)
    with pytest.raises(RoutingError, match="no handler for kind 'ping'"):
        harness.deliver(msg("ping"))


def test_server_error_handling_on_request() -> None:
    class Fails(Handler):
        def __init__(self) -> None:
            self.seen: list[BaseException] = []

        def on_message(self, conn: Any, frame: Any) -> Any:
            raise RuntimeError("boom")

        def on_error(self, conn: Any, error: BaseException) -> None:
            self.seen.append(error)
            conn.close()

    handler = Fails()
    harness = HandlerHarness(handler, RawCodec(), raise_errors=False)
    harness.feed(b"x")
    assert [str(e) for e in handler.seen] == ["boom"] and harness.closed
    assert harness.errors == handler.seen


def test_frame_errors_go_to_on_error_and_close() -> None:
    harness = HandlerHarness(Handler(), codecs.line(max_length=4))
    assert harness.feed(b"ok\n") == []
    harness.feed(b"far too long\n")
    assert len(harness.errors) == 1 and isinstance(harness.errors[0], FrameError)
    assert harness.closed


def test_unencodable_replies_fail_like_on_a_server() -> None:
    class Bad(Handler):
        def on_message(self, conn: Any, frame: Any) -> Any:
            return {"kind": "nonsense"}

    with pytest.raises(ValueError):
        HandlerHarness(Bad(), CODEC).deliver(msg("ping"))


def test_connection_api_surface() -> None:
    harness = HandlerHarness(Handler(), peer_addr=("10.0.0.1", 5))
    conn = harness.conn
    assert conn.peer_addr == ("10.0.0.1", 5) and conn.context is None
    conn.context = "mine"
    conn.set("k", 1)
    assert conn.get("k") == 1 and conn.get("missing", 2) == 2
    conn.send(b"a")
    conn.shutdown_write()
    with pytest.raises(ConnectionClosed):
        conn.send(b"b")
    conn.abort()
    assert conn.aborted and not conn.connected and harness.sent == [b"a"]


# A handler property test with strategy_for: whatever valid frames arrive, every ping
# gets exactly its pong and stored values read back.
@settings(max_examples=40, deadline=None)
@given(st.lists(strategy_for(SCHEMA, overrides={"kind": st.sampled_from(["ping", "put",
                                                                          "get"])}),
                max_size=8))
def test_fuzz_a_handler(frames: list[Any]) -> None:
    harness = HandlerHarness(make_router(), CODEC)
    store: dict[int, bytes] = {}
    for frame in frames:
        replies = harness.feed_message(frame)
        if frame.kind == "ping":
            assert replies == [msg("pong", frame.id, frame.body)]
        elif frame.kind == "put":
            assert replies == []
            store[frame.id] = frame.body
        else:
            assert replies == [msg("value", frame.id, store.get(frame.id, b""))]


# -- loopback ------------------------------------------------------------------------------


def test_serve_and_client_round_trip() -> None:
    with serve(make_router(), CODEC) as server, BlockingClient(server) as client:
        assert server.address[0] == "127.0.0.1" and server.port > 0
        assert client.request(msg("ping", 9, b"x" * 1000)) == msg("pong", 9, b"x" * 1000)
        for i in range(20):  # pipelined: frames arrive cut anywhere, decoded in order
            client.send(msg("ping", i))
        assert [client.recv().id for _ in range(20)] == list(range(20))
        client.send(msg("bye", 1))
        assert client.recv() == msg("bye", 1)
        assert client.wait_closed()
        with pytest.raises(ConnectionClosed):
            client.recv()
    assert server.wait(1)


def test_client_recv_times_out() -> None:
    with serve(make_router(), CODEC) as server, BlockingClient(server, timeout=0.2) as client:
        client.send(msg("put", 1, b"v"))  # no reply
        with pytest.raises(TimeoutError):
            client.recv()
        assert not client.wait_closed(timeout=0.05)


def test_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("gevwire")


def test_plugin_fixtures(gevwire_server: Any, gevwire_client: Any) -> None:
    server = gevwire_server(make_router(), CODEC)
    assert isinstance(server, Server) and server.port > 0
    other = gevwire_server(Handler())  # several per test; RawCodec by default
    client = gevwire_client(server)
    assert client.request(msg("ping", 1)) == msg("pong", 1)
    raw = gevwire_client(other.address)
    raw.send(b"hello")
    assert not raw.wait_closed(timeout=0.1)  # the default handler ignores, keeps open
