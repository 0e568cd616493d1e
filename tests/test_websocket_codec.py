"""``gevwire.codecs.websocket`` on byte strings: the handshake, frames, every protocol
error with its close code or HTTP status, limits read from headers, any split of a
stream, ``check_codec``; then ``WebSocketHandler`` through ``HandlerHarness`` (no
sockets).  The codec is fed exactly as a connection feeds it (``FrameCutter``), with
small input rings so that frames wrap around the ring's end."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websocket_support import (
    ACCEPT,
    KEY,
    MASK,
    close_frame,
    frame,
    text,
    upgrade_request,
)

from gevwire.codecs.websocket import (
    FRAME_HEADER,
    Close,
    CloseCode,
    Handshake,
    HttpError,
    HttpRequest,
    HttpResponse,
    Opcode,
    Ping,
    Pong,
    WebSocketApp,
    WebSocketCodec,
    WebSocketError,
    WebSocketHandler,
    accept_key,
    close_websocket,
    encode_frame,
    valid_close_code,
    websocket,
)
from gevwire.errors import EncodeError, FrameError
from gevwire.testing import FrameCutter, HandlerHarness, check_codec

pytestmark = pytest.mark.timeout(120)

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

T, B, C, P = Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION, Opcode.PING
PONG = Opcode.PONG


def cut(data: bytes, chunks: list[bytes] | None = None, *, codec: WebSocketCodec | None = None,
        ring: int = 4096) -> tuple[list[Any], list[BaseException]]:
    """Events and errors from ``data`` (or from ``chunks``, one read each)."""
    cutter = FrameCutter(codec or websocket(), ring_capacity=ring,
                         compact_max=0 if ring < 4096 else 8192)
    events: list[Any] = []
    errors: list[BaseException] = []
    for chunk in chunks if chunks is not None else [data]:
        got, errs = cutter.push(chunk)
        events += got
        errors += errs
    return events, errors


def each_split(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and halves."""
    half = len(data) // 2
    return [[data], [data[i : i + 1] for i in range(len(data))], [data[:half], data[half:]]]


def opened(*frames: bytes) -> bytes:
    """A handshake followed by ``frames``."""
    return upgrade_request() + b"".join(frames)


# -- the handshake -----------------------------------------------------------------------


def test_accept_key_is_rfc_6455s_example() -> None:
    assert accept_key(KEY) == ACCEPT


def test_handshake_yields_the_request_and_its_accept_for_any_split() -> None:
    for chunks in each_split(opened(text("hi"))):
        events, errors = cut(b"", chunks)
        assert not errors
        assert len(events) == 2 and events[1] == "hi"
        handshake = events[0]
        assert isinstance(handshake, Handshake)
        assert handshake.accept == ACCEPT
        assert handshake.request.method == "GET" and handshake.request.path == "/ws"
        assert handshake.request.header("sec-websocket-key") == KEY


def test_101_response_bytes() -> None:
    handshake = Handshake(HttpRequest("GET", "/", "HTTP/1.1"), ACCEPT)
    assert websocket().encode(handshake.response()) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n\r\n")
    assert b"Sec-WebSocket-Protocol: chat\r\n" in websocket().encode(handshake.response("chat"))


BAD_REQUESTS = {
    "no key": (upgrade_request(drop=("Sec-WebSocket-Key",)), 400),
    "short key": (upgrade_request(key="c2hvcnQ="), 400),
    "key not base64": (upgrade_request(key="!" * 24), 400),
    "version 8": (upgrade_request(extra=(("Sec-WebSocket-Version", "8"),)), 426),
    "no version": (upgrade_request(drop=("Sec-WebSocket-Version",)), 426),
    "POST": (upgrade_request(method="POST"), 400),
    "HTTP/1.0": (upgrade_request(version="HTTP/1.0"), 400),
    "HTTP/2.0": (upgrade_request(version="HTTP/2.0"), 505),
    "no Connection: upgrade": (upgrade_request(extra=(("Connection", "keep-alive"),)), 400),
    "no Host": (upgrade_request(drop=("Host",)), 400),
    "request line": (b"GET /ws\r\nHost: x\r\n\r\n", 400),
    "version syntax": (b"GET / HTTX/1.1\r\nHost: x\r\n\r\n", 400),
    "blank head": (b"\r\n\r\n", 400),
    "header without colon": (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "folded header": (b"GET / HTTP/1.1\r\nHost: x\r\n y\r\n\r\n", 400),
    "bare LF in a header": (b"GET / HTTP/1.1\r\nHost: x\ny: z\r\n\r\n", 400),
    "chunked body": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    "Content-Length syntax": (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    "Content-Lengths differ": (b"POST / HTTP/1.1\r\nContent-Length: 1\r\n"
                               b"Content-Length: 2\r\n\r\n", 400),
    "body too large": (b"POST / HTTP/1.1\r\nContent-Length: 20000\r\n\r\n", 413),
    "upgrade with a body": (upgrade_request(extra=(("Content-Length", "1"),)) + b"x", 400),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_get_their_status(name: str) -> None:
    data, status = BAD_REQUESTS[name]
    for chunks in each_split(data):
        events, errors = cut(b"", chunks)
        assert events == []
        assert len(errors) == 1 and isinstance(errors[0], HttpError), errors
        # Not fatal: the handler closes after a lingering drain, so the codec must
        # ignore what follows.
        assert errors[0].status == status and not errors[0].fatal
    if status == 426:
        assert b"Sec-WebSocket-Version: 13\r\n" in websocket().encode(errors[0].response())


def test_everything_after_an_error_is_ignored() -> None:
    for bad in (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", opened(frame(T, b"x", mask=None))):
        cutter = FrameCutter(websocket(), ring_capacity=16, compact_max=0)
        _, errors = cutter.push(bad + text("after"))
        assert len(errors) == 1 and cutter.failed is None
        assert cutter.push(text("later") + upgrade_request()) == ([], [])
        assert cutter.buffered == 0


def test_request_head_is_bounded_before_its_end_arrives() -> None:
    codec = websocket(max_request_size=1024)
    cutter = FrameCutter(codec)
    _, errors = cutter.push(b"GET / HTTP/1.1\r\nX: " + b"a" * 1000)
    assert not errors and cutter.buffered < 1024
    _, errors = cutter.push(b"a" * 100)  # still no blank line within 1024 bytes
    assert [getattr(e, "status", None) for e in errors] == [431]


def test_plain_requests_keep_alive_and_bodies_for_any_split() -> None:
    stream = (b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
              b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
              b"GET /c HTTP/1.0\r\n\r\n")
    for chunks in each_split(stream):
        events, errors = cut(b"", chunks, ring=16)
        assert not errors
        assert [(e.method, e.target, e.path, e.body) for e in events] == [
            ("GET", "/a?x=1", "/a", b""), ("POST", "/b", "/b", b"hello"), ("GET", "/c", "/c", b"")]
        assert [e.keep_alive for e in events] == [True, True, False]


def test_an_upgrade_to_something_else_is_a_plain_request() -> None:
    events, errors = cut(
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    assert not errors and isinstance(events[0], HttpRequest)


# -- frames --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_lengths_7_16_and_64_bit_round_trip(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    encoded = frame(B, payload)
    header = FRAME_HEADER.parse(encoded)
    assert header.length == size and header.mask_key == MASK
    assert header.bits.length7 == (size if size < 126 else 126 if size < 65536 else 127)
    for ring in (16, 4096):
        events, errors = cut(opened(encoded, frame(T, payload.hex().encode())), ring=ring)
        assert not errors
        assert events[1:] == [payload, payload.hex()]


def test_a_header_that_wraps_around_the_rings_end() -> None:
    """The 16-bit length lies past the end of the ring's storage: read across the wrap."""
    cutter = FrameCutter(websocket(), ring_capacity=16, compact_max=0)
    assert isinstance(cutter.push(upgrade_request())[0][0], Handshake)
    first, second = text("abcdefgh"), frame(B, bytes(range(200)))
    assert len(first) == 14 and second[1] & 0x7F == 126
    assert cutter.push(first[:10]) == ([], [])  # the ring holds 10 of its 16 bytes
    assert cutter.push(first[10:] + second[:2]) == (["abcdefgh"], [])  # full; 2 left at 14
    assert cutter.ring.capacity == 16
    assert cutter.push(second[2:8]) == ([], [])  # length and mask wrap to the start
    assert cutter.ring.capacity == 16 and cutter.buffered == 8
    assert cutter.push(second[8:]) == ([bytes(range(200))], [])


def test_server_frames_are_unmasked_and_minimal() -> None:
    codec = websocket()
    assert codec.encode("hé") == b"\x81\x03h\xc3\xa9"
    assert codec.encode(b"\x00" * 126)[:4] == b"\x82\x7e\x00\x7e"
    assert codec.encode(bytearray(70000))[:10] == b"\x82\x7f" + struct.pack("!Q", 70000)
    assert codec.encode(Ping(b"p")) == b"\x89\x01p"
    assert codec.encode(Pong(b"")) == b"\x8a\x00"
    assert codec.encode(Close(1000, "bye")) == b"\x88\x05\x03\xe8bye"
    assert codec.encode(Close(CloseCode.NO_STATUS)) == b"\x88\x00"


@pytest.mark.parametrize("message", [
    Ping(b"x" * 126), Pong(b"x" * 126), Close(1000, "r" * 124), Close(1006), Close(999),
    Close(CloseCode.NO_STATUS, "why"), 42, HttpResponse(200, headers=(("Bad Name", "v"),)),
    HttpResponse(200, headers=(("X", "a\r\nb"),)),
])
def test_unsendable_messages_are_encode_errors(message: Any) -> None:
    with pytest.raises(EncodeError):
        websocket().encode(message)


def test_http_response_encoding() -> None:
    codec = websocket()
    assert codec.encode(HttpResponse(200, "hi", content_type="text/html")) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi")
    assert codec.encode(HttpResponse(204)) == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert codec.encode(HttpResponse(299, b"", reason="Odd")) == (
        b"HTTP/1.1 299 Odd\r\nContent-Length: 0\r\n\r\n")


def test_fragments_with_interleaved_control_frames() -> None:
    word = "naïve €uro 🙂".encode()
    frames = [frame(T, word[:3], fin=False), frame(P, b"1"), frame(C, word[3:9], fin=False),
              frame(PONG, b"2"), frame(C, word[9:], fin=True),
              frame(B, b"ab", fin=False), frame(C, b"", fin=False), frame(C, b"cd")]
    for chunks in each_split(opened(*frames)):
        events, errors = cut(b"", chunks, ring=64)
        assert not errors
        assert events[1:] == [Ping(b"1"), Pong(b"2"), word.decode(), b"abcd"]


def test_bytes_after_close_are_ignored() -> None:
    stream = opened(text("a"), close_frame(1000, b"done"), text("b"), b"\x00garbage")
    for chunks in each_split(stream):
        events, errors = cut(b"", chunks)
        assert not errors
        assert events[1:] == ["a", Close(1000, "done")]
    events, _ = cut(opened(close_frame()))
    assert events[1:] == [Close(CloseCode.NO_STATUS, "")]


# -- protocol errors -------------------------------------------------------------------------

PE, BAD_DATA, TOO_BIG = 1002, 1007, 1009

PROTOCOL_ERRORS: dict[str, tuple[bytes, int]] = {
    "unmasked": (frame(T, b"hi", mask=None), PE),
    "rsv1": (frame(T, b"hi", rsv=4), PE),
    "rsv2": (frame(B, b"hi", rsv=2), PE),
    "rsv3": (frame(P, b"", rsv=1), PE),
    "opcode 3": (frame(3, b""), PE),
    "opcode 7": (frame(7, b""), PE),
    "opcode 0xB": (frame(0xB, b""), PE),
    "opcode 0xF": (frame(0xF, b""), PE),
    "fragmented ping": (frame(P, b"", fin=False), PE),
    "fragmented close": (frame(Opcode.CLOSE, b"", fin=False), PE),
    "ping of 126 bytes": (frame(P, b"x" * 126), PE),
    "continuation first": (frame(C, b"x"), PE),
    "text inside a fragmented message": (frame(T, b"a", fin=False) + frame(T, b"b"), PE),
    "binary inside a fragmented message": (frame(B, b"a", fin=False) + frame(B, b"b"), PE),
    "non-minimal 16-bit length": (b"\x82\xfe\x00\x7d" + MASK + bytes(125), PE),
    "non-minimal 64-bit length": (b"\x82\xff" + struct.pack("!Q", 65535) + MASK, PE),
    "64-bit length with its top bit": (b"\x82\xff" + struct.pack("!Q", 1 << 63) + MASK, PE),
    "close of one byte": (frame(Opcode.CLOSE, b"\x03"), PE),
    "bad UTF-8 text": (frame(T, b"\xff"), BAD_DATA),
    "a UTF-16 surrogate": (frame(T, b"\xed\xa0\x80"), BAD_DATA),
    "overlong UTF-8": (frame(T, b"\xc0\xaf"), BAD_DATA),
    "text ending mid-character": (frame(T, "€".encode()[:2]), BAD_DATA),
    "fragments ending mid-character": (frame(T, b"a", fin=False) + frame(C, b"\xe2\x82"),
                                       BAD_DATA),
    "bad UTF-8 in a close reason": (close_frame(1000, b"\xff"), BAD_DATA),
    "message over the limit": (frame(B, bytes(1025)), TOO_BIG),
    "fragments over the limit": (frame(B, bytes(600), fin=False) + frame(C, bytes(600)), TOO_BIG),
}
for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
    PROTOCOL_ERRORS[f"close code {code}"] = (close_frame(code), PE)


@pytest.mark.parametrize("name", list(PROTOCOL_ERRORS))
def test_protocol_errors_close_with_their_code(name: str) -> None:
    bad, code = PROTOCOL_ERRORS[name]
    codec = websocket(max_message_size=1024)
    for ring in (16, 4096):
        for chunks in each_split(opened(text("before"), bad, text("after"))):
            events, errors = cut(b"", chunks, codec=codec, ring=ring)
            assert events[1:] == ["before"], name  # what came before is delivered, not after
            assert len(errors) == 1 and isinstance(errors[0], WebSocketError), errors
            assert errors[0].code == code and not errors[0].fatal


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999])
def test_valid_close_codes(code: int) -> None:
    assert valid_close_code(code)
    events, errors = cut(opened(close_frame(code, "ok ✓".encode())))
    assert not errors and events[1] == Close(code, "ok ✓")


def test_oversized_frames_fail_from_the_header_alone() -> None:
    codec = websocket(max_message_size=1 << 20)
    for header in (b"\x82\xff" + struct.pack("!Q", (1 << 20) + 1),
                   b"\x82\xff" + struct.pack("!Q", 1 << 40)):
        events, errors = cut(opened(header), codec=codec)  # no mask key, no payload yet
        assert [getattr(e, "code", None) for e in errors] == [TOO_BIG]
    # Fragments: the second header already takes the message over the limit.
    first = frame(B, bytes(1 << 19), fin=False)
    _, errors = cut(opened(first, b"\x00\xff" + struct.pack("!Q", (1 << 19) + 1)), codec=codec)
    assert [getattr(e, "code", None) for e in errors] == [TOO_BIG]
    # At the limit exactly: accepted.
    events, errors = cut(opened(frame(B, bytes(1 << 20))), codec=codec)
    assert not errors and events[1] == bytes(1 << 20)


def test_bad_utf8_fails_at_its_fragment_before_the_message_ends() -> None:
    cutter = FrameCutter(websocket())
    cutter.push(upgrade_request())
    events, errors = cutter.push(frame(T, b"ok \xff", fin=False))
    assert events == [] and [getattr(e, "code", None) for e in errors] == [BAD_DATA]


@pytest.mark.parametrize("pieces", [
    # Autobahn 6.4.3: valid, then a code point past U+10FFFF, inside one frame.
    [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", b"\xf4\x90\x80\x80"],
    # Autobahn 6.4.4: the same, its bad part arriving byte by byte.
    [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", b"\xf4", b"\x90"],
    [b"x" * 100_000, b"\xff"],  # late in a large frame
])
def test_bad_utf8_fails_as_it_arrives_inside_a_partial_frame(pieces: list[bytes]) -> None:
    """The frame announces more than ever comes: the error must not wait for it."""
    payload = b"".join(pieces)
    wire = frame(T, payload + b"edited" * 1000)
    cutter = FrameCutter(websocket(), ring_capacity=64, compact_max=0)
    cutter.push(upgrade_request())
    header = len(wire) - len(payload) - 6000
    pos = header
    for i, piece in enumerate(pieces):
        end = pos + len(piece)
        events, errors = cutter.push(wire[(0 if i == 0 else pos) : end])
        pos = end
        if i < len(pieces) - 1:
            assert events == [] and errors == []
    assert events == [] and [getattr(e, "code", None) for e in errors] == [BAD_DATA]


def test_valid_text_in_a_partial_frame_is_not_refused_early() -> None:
    word = "€𝄞 ✓".encode() * 5000  # every read ends somewhere inside a character
    wire = opened(frame(T, word, fin=False), frame(C, word))
    cutter = FrameCutter(websocket(), ring_capacity=64, compact_max=0)
    events = []
    for start in range(0, len(wire), 7):
        got, errors = cutter.push(wire[start : start + 7])
        assert not errors
        events += got
    assert events[1:] == [(word * 2).decode()]


def test_a_multibyte_character_split_over_fragments_is_fine() -> None:
    word = "€𝄞".encode()  # 3 + 4 bytes, cut inside both characters
    frames = [frame(T, word[:1], fin=False), frame(C, word[1:5], fin=False),
              frame(C, word[5:])]
    events, errors = cut(opened(*frames))
    assert not errors and events[1] == "€𝄞"


# -- properties --------------------------------------------------------------------------------

masks = st.binary(min_size=4, max_size=4)
payloads = st.one_of(st.binary(max_size=40), st.binary(min_size=126, max_size=400))


@st.composite
def message_frames(draw: st.DrawFn) -> tuple[bytes, list[Any]]:
    """Frames of one message or control frame, and the events they decode to."""
    kind = draw(st.sampled_from(["text", "binary", "ping", "pong"]))
    if kind in ("ping", "pong"):
        payload = draw(st.binary(max_size=125))
        opcode = P if kind == "ping" else PONG
        event: Any = Ping(payload) if kind == "ping" else Pong(payload)
        return frame(opcode, payload, mask=draw(masks)), [event]
    if kind == "text":
        message: Any = draw(st.text(max_size=60))
        data = message.encode()
    else:
        message = data = draw(payloads)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    wire = b""
    controls: list[Any] = []
    for i, piece in enumerate(pieces):
        opcode = (T if kind == "text" else B) if i == 0 else C
        wire += frame(opcode, piece, fin=i == len(pieces) - 1, mask=draw(masks))
        if i < len(pieces) - 1 and draw(st.booleans()):
            ping = draw(st.binary(max_size=8))
            wire += frame(P, ping, mask=draw(masks))
            controls.append(Ping(ping))
    return wire, [*controls, message]


@PROPERTY
@given(items=st.lists(message_frames(), max_size=6), data=st.data())
def test_any_split_of_a_stream_gives_the_same_events(
        items: list[tuple[bytes, list[Any]]], data: st.DataObject) -> None:
    stream = opened(*(wire for wire, _ in items))
    expected = [event for _, events in items for event in events]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    ring = data.draw(st.sampled_from([16, 64, 4096]))
    events, errors = cut(b"", [c for c in chunks if c], ring=ring)
    assert not errors
    assert isinstance(events[0], Handshake)
    assert events[1:] == expected
    assert all(type(a) is type(b) for a, b in zip(events[1:], expected, strict=True))


@PROPERTY
@given(head=st.binary(min_size=14, max_size=14), fragmenting=st.booleans())
def test_struct_header_reader_agrees_with_the_construct_declaration(
        head: bytes, fragmenting: bool) -> None:
    """The hot path reads what FRAME_HEADER declares, and refuses exactly what RFC 6455
    forbids (no message in progress unless ``fragmenting``; limits out of the way)."""
    h = FRAME_HEADER.parse(head)
    bits = h.bits
    control = bits.opcode >= 8
    forbidden = [
        bits.rsv != 0,
        not bits.masked,
        bits.opcode not in (0, 1, 2, 8, 9, 10),
        control and (not bits.fin or h.length > 125),
        not control and (bits.opcode == 0) != fragmenting,
        bits.length7 == 126 and h.length < 126,
        bits.length7 == 127 and (h.length < 65536 or h.length >> 63 != 0),
    ]
    verdict = PE if any(forbidden) else 0
    decoder = WebSocketCodec(handshake=False, max_message_size=1 << 64).decoder()
    if fragmenting:  # a binary message in progress
        FrameCutter(decoder).push(frame(B, b"", fin=False))
    try:
        found = decoder._header(head, 0, len(head))
    except WebSocketError as exc:
        assert exc.code == verdict != 0
        return
    assert verdict == 0
    size = 2 + {126: 2, 127: 8}.get(bits.length7, 0) + 4
    assert found == (size, h.length, head[0])


class _MaskingCodec(WebSocketCodec):
    """Frames only, encoded as a client sends them (masked, one fixed key), so that
    check_codec can round-trip them through the server's decoder."""

    def encode(self, message: Any) -> bytes:
        data = super().encode(message)
        opcode, payload = data[0] & 0x0F, data[2 + {126: 2, 127: 8}.get(data[1], 0):]
        return encode_frame(opcode, payload, mask_key=MASK)


def test_check_codec() -> None:
    """The server codec itself cannot round-trip (it sends unmasked frames and reads
    masked ones behind a handshake): its decoder is checked through a frames-only codec
    that masks as a client does."""
    messages = st.one_of(
        st.text(max_size=40), st.binary(max_size=40), st.binary(min_size=126, max_size=300),
        st.builds(Ping, st.binary(max_size=125)), st.builds(Pong, st.binary(max_size=125)))
    report = check_codec(_MaskingCodec(handshake=False), messages=messages)
    assert report.passed == ["round trip", "splits", "truncation", "max_frame_size",
                             "garbage"]


@PROPERTY
@given(items=st.lists(message_frames(), min_size=1, max_size=4), data=st.data())
def test_partial_frames_unmasked_as_they_come_give_the_same_events(
        items: list[tuple[bytes, list[Any]]], data: st.DataObject) -> None:
    """Every partial data frame worked on as it arrives (unmasked in place, however the
    reads and the ring's wrap cut it): the same events as whole frames give."""
    import gevwire.codecs.websocket as ws  # type: ignore[import-not-found,unused-ignore]

    stream = opened(*(wire for wire, _ in items))
    expected = [event for _, events in items for event in events]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    ring = data.draw(st.sampled_from([16, 64, 4096]))
    block = data.draw(st.sampled_from([4, 8, 1 << 16]))
    c_loop = data.draw(st.booleans())  # websockets' C loop, or the pure-Python one
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ws, "_PROGRESS_FROM", 1)
        patch.setattr(ws, "_MASK_BLOCK", block)
        patch.setattr(ws, "_C_MASK_CHUNK", block)
        if not c_loop:
            patch.setattr(ws, "_c_apply_mask", None)
        events, errors = cut(b"", [c for c in chunks if c], ring=ring)
    assert not errors
    assert events[1:] == expected
    assert all(type(a) is type(b) for a, b in zip(events[1:], expected, strict=True))


@pytest.mark.parametrize("c_loop", [True, False], ids=["c", "python"])
@pytest.mark.parametrize("size", [1, 5, (1 << 16) - 1, 1 << 16, (1 << 16) + 3, 200_003,
                                  (1 << 18) + 7])
def test_block_unmasking_equals_a_byte_loop(
        size: int, c_loop: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import gevwire.codecs.websocket as ws  # type: ignore[import-not-found,unused-ignore]

    if not c_loop:
        monkeypatch.setattr(ws, "_c_apply_mask", None)
    data = bytes(range(251)) * (size // 251 + 1)
    data = data[:size]
    key = b"\x01\x80\x33\xfe"
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    assert ws._apply_mask(data, key) == expected
    buffer = bytearray(data)
    ws._unmask_in_place(memoryview(buffer), key, ws._mask_int(key, ws._MASK_BLOCK))
    assert buffer == expected


def test_the_c_unmasking_loop_is_used_when_websockets_is_installed() -> None:
    """The ``websocket`` extra (installed with the tests) brings the C loop: without
    it a 16 MiB payload unmasks 6x slower, so its absence must not go unnoticed."""
    from websockets.speedups import apply_mask

    import gevwire.codecs.websocket as ws  # type: ignore[import-not-found,unused-ignore]

    assert ws._c_apply_mask is apply_mask


@PROPERTY
@given(data=st.binary(max_size=64) | st.text(max_size=16).map(str.encode),
       cuts=st.lists(st.integers(0, 64), max_size=8))
def test_utf8_checked_piece_by_piece_agrees_with_a_whole_decode(
        data: bytes, cuts: list[int]) -> None:
    """However a text payload is split (a character cut anywhere, pieces as views), the
    piece-by-piece check fails exactly when decoding the whole would."""
    import gevwire.codecs.websocket as ws  # type: ignore[import-not-found,unused-ignore]

    try:
        data.decode()
        valid = True
    except UnicodeDecodeError:
        valid = False
    bounds = sorted({min(cut, len(data)) for cut in cuts})
    check = ws._Utf8Check()
    view = memoryview(data)
    try:
        for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True):
            check.decode(view[a:b], False)
        check.decode(b"", True)
        checked = True
    except UnicodeDecodeError:
        checked = False
    assert checked == valid


@pytest.mark.parametrize("size", [0, 125, 126, 0xFFFF, 0x10000, 1 << 20])
@pytest.mark.parametrize("kind", [str, bytes])
def test_encode_into_appends_the_frame_encode_makes_a_large_payload_by_reference(
        size: int, kind: type) -> None:
    codec = websocket()
    message = "é" * (size // 2) if kind is str else bytes(size)
    parts: list[bytes] = []
    n = codec.encode_into(parts, message)
    assert b"".join(parts) == codec.encode(message) and n == len(b"".join(parts))
    if kind is bytes and size >= 0x10000:
        assert len(parts) == 2 and parts[1] is message  # the header, then the payload


def test_unmasking_a_large_payload_is_linear_not_a_byte_loop() -> None:
    payload = bytes(range(256)) * (4 << 12)  # 4 MiB
    events, errors = cut(opened(frame(B, payload)),
                         codec=websocket(max_message_size=8 << 20))
    assert not errors and events[1] == payload


# -- WebSocketHandler (no sockets) -------------------------------------------------------


class RecordingApp(WebSocketApp):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_request(self, conn: Any, request: HttpRequest) -> HttpResponse | None:
        self.calls.append(("request", request.path))
        return HttpResponse(200, "page") if request.path == "/" else None

    def on_upgrade(self, conn: Any, request: HttpRequest) -> HttpResponse | None:
        return HttpResponse(403, "no") if request.path == "/private" else None

    def on_open(self, conn: Any, request: HttpRequest) -> Any:
        self.calls.append(("open", request.path))
        return "welcome"

    def on_message(self, conn: Any, message: str | bytes) -> Any:
        self.calls.append(("message", message))
        if message == "boom":
            raise RuntimeError("app failure")
        if message == "bye":
            close_websocket(conn, 4001, "server bye")
            return None
        return message

    def on_pong(self, conn: Any, payload: bytes) -> None:
        self.calls.append(("pong", payload))

    def on_close_frame(self, conn: Any, code: int, reason: str) -> None:
        self.calls.append(("close frame", code, reason))

    def on_close(self, conn: Any) -> None:
        self.calls.append(("closed",))


def harness() -> tuple[HandlerHarness, RecordingApp]:
    app = RecordingApp()
    return HandlerHarness(WebSocketHandler(app), websocket(max_message_size=64),
                          raise_errors=False), app


def test_handler_handshake_echo_ping_and_close() -> None:
    h, app = harness()
    replies = h.feed(upgrade_request())
    assert isinstance(replies[0], HttpResponse) and replies[0].status == 101
    assert h.sent[0].startswith(b"HTTP/1.1 101 ") and ACCEPT.encode() in h.sent[0]
    assert replies[1:] == ["welcome"]
    assert h.feed(text("hi") + frame(B, b"\x00\x01")) == ["hi", b"\x00\x01"]
    assert h.feed(frame(P, b"are you there")) == [Pong(b"are you there")]
    assert h.feed(frame(PONG, b"yes")) == []
    assert h.feed(close_frame(4000, b"done")) == [Close(4000)]  # the code echoed
    assert h.closed and h.sent[-1] == b"\x88\x02\x0f\xa0"
    assert app.calls == [("open", "/ws"), ("message", "hi"), ("message", b"\x00\x01"),
                         ("pong", b"yes"), ("close frame", 4000, "done"), ("closed",)]


def test_handler_answers_a_close_without_code_with_an_empty_close() -> None:
    h, _ = harness()
    h.feed(upgrade_request())
    h.feed(close_frame())
    assert h.closed and h.sent[-1] == b"\x88\x00"


@pytest.mark.parametrize("bad,code", [
    (frame(T, b"x", mask=None), 1002), (frame(T, b"\xc3"), 1007), (frame(B, bytes(65)), 1009),
    (close_frame(1005), 1002)])
def test_handler_closes_protocol_errors_with_their_code(bad: bytes, code: int) -> None:
    h, _ = harness()
    h.feed(upgrade_request())
    h.feed(text("ok") + bad + text("never"))
    assert h.closed
    assert h.replies[-2] == "ok"
    last = h.replies[-1]
    assert isinstance(last, Close) and last.code == code
    assert h.sent[-1][:4] == b"\x88" + bytes([len(h.sent[-1]) - 2]) + struct.pack("!H", code)
    assert h.conn.write_shut  # a lingering close: FIN first, unread input never resets


def test_handler_answers_an_app_exception_with_1011() -> None:
    h, _ = harness()
    h.feed(upgrade_request())
    h.feed(text("boom"))
    assert h.closed and h.replies[-1] == Close(CloseCode.INTERNAL_ERROR)
    assert isinstance(h.errors[0], RuntimeError)


def test_handler_server_initiated_close_drops_messages_until_the_peers_close() -> None:
    h, app = harness()
    h.feed(upgrade_request())
    assert h.feed(text("bye")) == [Close(4001, "server bye")]
    assert not h.closed
    assert h.feed(text("late") + frame(P, b"")) == []  # no data, no pong after our Close
    assert h.feed(close_frame(4001)) == []  # the answer to ours: not echoed
    assert h.closed
    assert ("message", "late") not in app.calls


def test_handler_serves_plain_http_and_refuses_bad_requests() -> None:
    h, _ = harness()
    replies = h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r.status for r in replies] == [200, 404]
    assert h.sent[0] == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                         b"Content-Length: 4\r\n\r\npage")
    assert not h.closed  # keep-alive
    h.feed(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert h.sent[-1] == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
    assert h.closed
    h2, _ = harness()
    h2.feed(upgrade_request(extra=(("Sec-WebSocket-Version", "7"),)))
    assert h2.closed and h2.sent[0].startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"Sec-WebSocket-Version: 13\r\n" in h2.sent[0]
    assert b"Connection: close\r\n" in h2.sent[0]
    assert isinstance(h2.errors[0], FrameError)


def test_handler_on_upgrade_can_refuse() -> None:
    h, app = harness()
    h.feed(upgrade_request("/private"))
    assert h.closed and h.sent[0].startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert not any(call[0] == "open" for call in app.calls)
