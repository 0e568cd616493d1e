"""permessage-deflate (RFC 7692) in ``gevwire.codecs.websocket``, on byte strings: the
negotiation of every parameter, compressed messages whole, fragmented and split any
way, context takeover both ways, RSV1 rules, the inflated-size bound (a zip bomb is a
1009 before it is allocated), and the memory the zlib streams hold.  The client side
is ``websocket_support.ClientDeflate`` (zlib used as the RFC says)."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websocket_support import (
    ClientDeflate,
    close_frame,
    frame,
    server_frames,
    text,
    upgrade_request,
)

from gevwire.codecs.websocket import (
    Close,
    CloseCode,
    EncodedFrame,
    Handshake,
    HttpRequest,
    Opcode,
    PerMessageDeflate,
    WebSocketApp,
    WebSocketCodec,
    WebSocketHandler,
    parse_extensions,
    send_message,
    websocket,
)
from gevwire.testing import FrameCutter, HandlerHarness

pytestmark = pytest.mark.timeout(120)

PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
T, B, C = Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION
DEFLATE = "permessage-deflate"


def offer(value: str | None, path: str = "/ws") -> bytes:
    extra = () if value is None else (("Sec-WebSocket-Extensions", value),)
    return upgrade_request(path, extra=extra)


def opened(value: str | None = DEFLATE, codec: WebSocketCodec | None = None,
           ring: int = 4096) -> tuple[FrameCutter, Handshake]:
    """A cutter past a handshake that offered ``value``."""
    cutter = FrameCutter(codec or websocket(), ring_capacity=ring,
                         compact_max=0 if ring < 4096 else 8192)
    events, errors = cutter.push(offer(value))
    assert not errors and isinstance(events[0], Handshake)
    return cutter, events[0]


def codes(errors: list[BaseException]) -> list[int | None]:
    return [getattr(e, "code", None) for e in errors]


# -- the header's grammar ----------------------------------------------------------------


def test_parse_extensions() -> None:
    assert parse_extensions('permessage-deflate; client_max_window_bits, '
                            'permessage-deflate;Server_Max_Window_Bits="10" ,x-foo') == [
        ("permessage-deflate", [("client_max_window_bits", None)]),
        ("permessage-deflate", [("server_max_window_bits", "10")]),
        ("x-foo", [])]
    assert parse_extensions("") == []
    for bad in ("permessage-deflate;", "a;;b", "a=1", 'a; b="1 2"', "a b", "a; b=", ",a"):
        with pytest.raises(ValueError):
            parse_extensions(bad)


# -- negotiation ----------------------------------------------------------------------------

NEGOTIATION = [
    # (offer, codec arguments, accepted response or None: declined)
    (DEFLATE, {}, DEFLATE),
    (f"{DEFLATE}; client_max_window_bits", {}, DEFLATE),
    (f"{DEFLATE}; client_max_window_bits", {"client_max_window_bits": 10},
     f"{DEFLATE}; client_max_window_bits=10"),
    (f"{DEFLATE}; client_max_window_bits=9", {}, f"{DEFLATE}; client_max_window_bits=9"),
    (f"{DEFLATE}; client_max_window_bits=13", {"client_max_window_bits": 11},
     f"{DEFLATE}; client_max_window_bits=11"),
    (f"{DEFLATE}; server_max_window_bits=10", {}, f"{DEFLATE}; server_max_window_bits=10"),
    (f"{DEFLATE}; server_max_window_bits=15", {}, f"{DEFLATE}; server_max_window_bits=12"),
    (f"{DEFLATE}; server_max_window_bits=8", {}, f"{DEFLATE}; server_max_window_bits=8"),
    (f'{DEFLATE}; server_max_window_bits="14"', {"server_max_window_bits": 15},
     f"{DEFLATE}; server_max_window_bits=14"),
    (f"{DEFLATE}; server_no_context_takeover; client_no_context_takeover", {},
     f"{DEFLATE}; server_no_context_takeover; client_no_context_takeover"),
    (DEFLATE, {"server_no_context_takeover": True, "client_no_context_takeover": True},
     f"{DEFLATE}; server_no_context_takeover; client_no_context_takeover"),
    # declined offers, alone or before an acceptable one
    (f"{DEFLATE}; foo", {}, None),
    (f"{DEFLATE}; foo, {DEFLATE}; client_no_context_takeover", {},
     f"{DEFLATE}; client_no_context_takeover"),
    (f"{DEFLATE}; server_max_window_bits", {}, None),
    (f"{DEFLATE}; server_max_window_bits=7", {}, None),
    (f"{DEFLATE}; server_max_window_bits=16", {}, None),
    (f"{DEFLATE}; server_max_window_bits=010", {}, None),
    (f"{DEFLATE}; client_max_window_bits=x", {}, None),
    (f"{DEFLATE}; server_no_context_takeover=1", {}, None),
    (f"{DEFLATE}; server_no_context_takeover; server_no_context_takeover", {}, None),
    ("x-webkit-deflate-frame", {}, None),
    (f"{DEFLATE};;", {}, None),  # malformed: no extension at all
    (DEFLATE, {"compression": False}, None),
    (None, {}, None),
]


@pytest.mark.parametrize(("value", "args", "response"), NEGOTIATION)
def test_negotiation(value: str | None, args: dict[str, Any], response: str | None) -> None:
    _, handshake = opened(value, websocket(**args))
    header = handshake.response().headers
    extensions = [v for k, v in header if k == "Sec-WebSocket-Extensions"]
    if response is None:
        assert handshake.deflate is None and extensions == []
    else:
        assert handshake.deflate is not None and extensions == [response]


def test_codec_arguments_are_checked() -> None:
    for bad in ({"compression_level": 10}, {"compression_mem_level": 0},
                {"server_max_window_bits": 8}, {"client_max_window_bits": 16}):
        with pytest.raises(ValueError):
            websocket(**bad)


# -- compressed messages from the client -------------------------------------------------


def test_compressed_messages_whole_and_fragmented_with_context_takeover() -> None:
    cutter, _ = opened(f"{DEFLATE}; client_max_window_bits")
    client = ClientDeflate()
    repeated = random.Random(1).randbytes(300).hex()  # compresses to ~330 bytes alone
    stream = (client.frames(repeated) + client.frames(repeated, cuts=(1, 3))
              + client.frames(b"\x00" * 5000, cuts=(2,)) + client.frames("") + text("plain"))
    events, errors = cutter.push(stream)
    assert not errors
    assert events == [repeated, repeated, b"\x00" * 5000, "", "plain"]
    # Another copy refers back to the first: a few bytes on the wire.
    assert len(ClientDeflate().frames(repeated)) > 300 > 30 > len(client.frames(repeated))


def test_no_context_takeover_frees_the_inflater_between_messages() -> None:
    cutter, handshake = opened(f"{DEFLATE}; client_no_context_takeover")
    assert handshake.deflate is not None and handshake.deflate.client_no_context_takeover
    client = ClientDeflate(no_context_takeover=True)
    decoder: Any = cutter.decoder
    for message in ["one " * 50, "two " * 50]:
        assert cutter.push(client.frames(message)) == ([message], [])
        assert decoder._inflater is None
    # With takeover the inflater stays, and a message that uses the context decodes.
    cutter, _ = opened(DEFLATE)
    client = ClientDeflate()
    for message in ["three " * 50, "three " * 50]:
        assert cutter.push(client.frames(message)) == ([message], [])
    assert cutter.decoder._inflater is not None  # type: ignore[attr-defined]


def test_a_window_the_client_agreed_to_limit_is_the_inflaters() -> None:
    cutter, handshake = opened(f"{DEFLATE}; client_max_window_bits",
                               websocket(client_max_window_bits=9))
    assert handshake.deflate is not None and handshake.deflate.client_max_window_bits == 9
    client = ClientDeflate(window_bits=9)
    message = bytes(range(256)) * 40
    assert cutter.push(client.frames(message)) == ([message], [])
    inflater = cutter.decoder._inflater  # type: ignore[attr-defined]
    assert inflater is not None  # (its 512-byte window: see the memory test)


@pytest.mark.parametrize(("name", "data", "code"), [
    ("RSV1 without agreement", frame(T, b"x", rsv=4), 1002),
    ("RSV2", frame(T, b"x", rsv=2), 1002),
    ("RSV1 on a continuation", frame(T, b"x", fin=False) + frame(C, b"y", rsv=4), 1002),
    ("RSV1 on a ping", frame(Opcode.PING, b"x", rsv=4), 1002),
    ("not deflate", frame(B, b"\xff\xff\xff\xff", rsv=4), 1007),
    ("compressed bad UTF-8", frame(T, ClientDeflate().compress(b"ok \xff"), rsv=4), 1007),
    ("compressed cut UTF-8", frame(T, ClientDeflate().compress(b"ok \xe2\x82"), rsv=4), 1007),
])
def test_bad_compressed_frames(name: str, data: bytes, code: int) -> None:
    agreed = name != "RSV1 without agreement"
    cutter, _ = opened(DEFLATE if agreed else None)
    events, errors = cutter.push(data + text("never"))
    assert events == [] and codes(errors) == [code], name


def test_bad_utf8_in_compressed_text_fails_at_its_fragment() -> None:
    cutter, _ = opened(DEFLATE)
    payload = ClientDeflate().compress(b"fine so far " * 10 + b"\xc3\x28")
    events, errors = cutter.push(frame(T, payload, fin=False, rsv=4))
    assert events == [] and codes(errors) == [CloseCode.INVALID_DATA]


# -- the inflated size --------------------------------------------------------------------


def test_max_message_size_bounds_the_inflated_message() -> None:
    limit = 10_000
    codec = websocket(max_message_size=limit)
    for size, ok in ((limit, True), (limit + 1, False)):
        cutter, _ = opened(DEFLATE, codec)
        events, errors = cutter.push(ClientDeflate().frames(b"a" * size, cuts=(5, 9)))
        if ok:
            assert events == [b"a" * size] and not errors
        else:
            assert events == [] and codes(errors) == [CloseCode.MESSAGE_TOO_BIG]


def test_a_zip_bomb_is_1009_before_it_is_inflated() -> None:
    """1 GiB of zeros deflates to ~1 MiB; with a 1 MiB limit it must fail having
    allocated about the limit, not the gigabyte."""
    bomb = ClientDeflate().compress(bytes(64 << 20)) * 16  # 16 x 64 MiB of zeros
    codec = websocket(max_message_size=1 << 20)
    assert len(bomb) < codec.max_frame_size
    cutter, _ = opened(DEFLATE, codec)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        events, errors = cutter.push(frame(B, bomb, rsv=4))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert events == [] and codes(errors) == [CloseCode.MESSAGE_TOO_BIG]
    assert peak < 3 * len(bomb) + (4 << 20), f"{peak} bytes allocated"


def test_a_compressed_message_may_take_more_than_the_limit_on_the_wire() -> None:
    """Random bytes grow a little when deflated: a message of max_message_size
    compressed is accepted; past what deflate can make of it, the header is refused."""
    import os

    data = os.urandom(1 << 16)
    codec = websocket(max_message_size=1 << 16)
    cutter, _ = opened(DEFLATE, codec)
    client = ClientDeflate()
    wire = client.frames(data)
    assert len(wire) > (1 << 16) + 14
    assert cutter.push(wire) == ([data], [])
    cutter, _ = opened(DEFLATE, codec)
    _, errors = cutter.push(frame(B, bytes(codec.max_frame_size), rsv=4))
    assert codes(errors) == [CloseCode.MESSAGE_TOO_BIG]


# -- properties ---------------------------------------------------------------------------

messages = st.one_of(st.text(max_size=300), st.binary(max_size=300),
                     st.text(alphabet="ab", min_size=1000, max_size=5000))


@PROPERTY
@given(items=st.lists(st.tuples(messages, st.lists(st.integers(0, 400), max_size=3),
                                st.booleans()), min_size=1, max_size=6),
       client_takeover=st.booleans(), window=st.integers(9, 15), data=st.data())
def test_compressed_messages_split_any_way_round_trip(
        items: list[tuple[str | bytes, list[int], bool]], client_takeover: bool,
        window: int, data: st.DataObject) -> None:
    """Compressed (or not) messages, fragmented at any point of the compressed payload,
    the stream cut into any reads with rings that wrap: the same messages."""
    value = f"{DEFLATE}; client_max_window_bits" + (
        "" if client_takeover else "; client_no_context_takeover")
    ring = data.draw(st.sampled_from([16, 64, 4096]))
    cutter, handshake = opened(value, websocket(client_max_window_bits=window), ring=ring)
    assert handshake.deflate is not None
    client = ClientDeflate(window_bits=window, no_context_takeover=not client_takeover)
    stream = b""
    for message, cuts, compressed in items:
        if compressed:
            stream += client.frames(message, tuple(cuts))
        else:
            stream += frame(T if isinstance(message, str) else B,
                            message.encode() if isinstance(message, str) else message)
    points = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    got: list[Any] = []
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        events, errors = cutter.push(stream[a:b])
        assert not errors
        got += events
    assert got == [message for message, _, _ in items]
    assert all(type(a) is type(b) for a, (b, _, _) in zip(got, items, strict=True))


@PROPERTY
@given(batch=st.lists(messages, min_size=1, max_size=6), takeover=st.booleans(),
       window=st.integers(9, 15), level=st.integers(0, 9))
def test_the_servers_compressed_messages_inflate_to_themselves(
        batch: list[str | bytes], takeover: bool, window: int, level: int) -> None:
    deflate = PerMessageDeflate(server_max_window_bits=window, level=level,
                                server_no_context_takeover=not takeover)
    client = ClientDeflate(server_window_bits=window, server_no_context_takeover=not takeover)
    codec = websocket()
    for message in batch:
        encoded = deflate.encode(message)
        assert isinstance(encoded, EncodedFrame)
        [(opcode, rsv, payload)] = server_frames(codec.encode(encoded))
        assert rsv == 4 and opcode == (T if isinstance(message, str) else B)
        plain = client.inflate(payload)
        assert plain == (message.encode() if isinstance(message, str) else message)
    assert (deflate._compressor is None) == (not takeover)


def test_a_window_of_8_bits_is_agreed_and_the_server_sends_uncompressed() -> None:
    deflate = PerMessageDeflate(server_max_window_bits=8)
    assert deflate.encode("hi") == "hi" and deflate.encode(b"x") == b"x"


# -- the handler --------------------------------------------------------------------------


class Echo(WebSocketApp):
    def on_open(self, conn: Any, request: HttpRequest) -> Any:
        send_message(conn, b"sent " * 10)
        return "welcome " * 10

    def on_message(self, conn: Any, message: str | bytes) -> Any:
        return message


def test_the_handler_compresses_replies_and_frees_the_streams_on_close() -> None:
    h = HandlerHarness(WebSocketHandler(Echo()), websocket(), raise_errors=False)
    h.feed(offer(f"{DEFLATE}; server_no_context_takeover"))
    assert b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n" \
        in h.sent[0]
    client = ClientDeflate(server_no_context_takeover=True)
    h.feed(client.frames("hello " * 30) + text("plain"))
    sent = server_frames(b"".join(h.sent[1:]))
    assert [(op, rsv) for op, rsv, _ in sent] == [(B, 4), (T, 4), (T, 4), (T, 4)]
    assert [client.inflate(p) for _, _, p in sent] == [
        b"sent " * 10, b"welcome " * 10, b"hello " * 30, b"plain"]
    deflate = h.conn.values["gevwire.websocket.deflate"]
    assert isinstance(deflate, PerMessageDeflate)
    h.feed(close_frame(1000))
    assert h.closed and h.replies[-1] == Close(1000)
    assert "gevwire.websocket.deflate" not in h.conn.values
    assert deflate._compressor is None
    assert h.pipeline._decoder._inflater is None  # type: ignore[attr-defined]


def test_without_an_offer_nothing_is_compressed() -> None:
    h = HandlerHarness(WebSocketHandler(Echo()), websocket(), raise_errors=False)
    h.feed(offer(None))
    assert b"Sec-WebSocket-Extensions" not in h.sent[0]
    h.feed(text("hi"))
    assert server_frames(h.sent[-1]) == [(T, 0, b"hi")]


# -- memory ---------------------------------------------------------------------------------


def _held(codec: WebSocketCodec, offer_value: str, client: ClientDeflate) -> int:
    """Bytes allocated in the codec's module (zlib's streams, made there) that a
    connection still holds after one compressed message each way."""
    import gevwire.codecs.websocket as module

    only = [tracemalloc.Filter(True, module.__file__)]
    h = HandlerHarness(WebSocketHandler(Echo()), codec, raise_errors=False)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(only)
        h.feed(offer(offer_value))
        h.feed(client.frames(bytes(range(256)) * 16))
        h.sent.clear()
        h.replies.clear()
        after = tracemalloc.take_snapshot().filter_traces(only)
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def test_zlib_memory_per_connection_is_what_the_docstring_says() -> None:
    """The figures in WebSocketCodec's docstring, measured (zlib allocates through
    Python's raw allocator, which tracemalloc sees): deflate 2 ** (window + 2) +
    2 ** (mem level + 9) and ~7 KiB of state, inflate 2 ** window + ~7 KiB."""
    KiB = 1024
    cases = [
        # (codec, offer, client, expected zlib bytes)
        (websocket(server_max_window_bits=15, compression_mem_level=8), DEFLATE,
         ClientDeflate(), 256 * KiB + 32 * KiB + 14 * KiB),
        (websocket(), DEFLATE, ClientDeflate(), 32 * KiB + 32 * KiB + 14 * KiB),
        (websocket(client_max_window_bits=10), f"{DEFLATE}; client_max_window_bits",
         ClientDeflate(window_bits=10), 32 * KiB + 1 * KiB + 14 * KiB),
        (websocket(server_no_context_takeover=True, client_no_context_takeover=True),
         DEFLATE, ClientDeflate(no_context_takeover=True), 0),
    ]
    for codec, value, client, expected in cases:
        held = _held(codec, value, client)
        assert expected - 8 * KiB < held < expected + 8 * KiB, (codec, value, held, expected)
