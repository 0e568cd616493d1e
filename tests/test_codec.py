"""Codec(schema): framing from headers, generic short-read tracking, limits, encode."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gevwire import Codec, EncodeError, FrameError, FrameTooLarge, RawCodec, RingBuffer
from gevwire.codec import CutAheadDecoder, Decoder

HEADER = c.Struct(
    "kind" / c.Enum(c.Int8ub, ping=1, pong=2, data=3),
    "flags" / c.Int8ub,
    "id" / c.Int16ub,
    "length" / c.Int32ub,
    "payload" / c.Bytes(c.this.length),
)
PREFIXED = c.Prefixed(c.Int32ub, c.GreedyBytes)
VARINT = c.Prefixed(c.VarInt, c.GreedyBytes)
# Not derivable into a struct decoder (CString): the construct interpreter parses it,
# but the Prefixed header still gives the frame length.
PREFIXED_GENERIC = c.Prefixed(c.Int16ub, c.Struct("name" / c.CString("utf8"), "n" / c.Int8ub))
# No header layout at all: the generic stream path.
GENERIC = c.Struct("name" / c.PascalString(c.Int8ub, "utf8"), "tag" / c.CString("ascii"))


def header_values() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda kind, flags, ident, payload: {
            "kind": kind, "flags": flags, "id": ident, "length": len(payload), "payload": payload
        },
        st.sampled_from(["ping", "pong", "data"]),
        st.integers(0, 255),
        st.integers(0, 65535),
        st.binary(max_size=300),
    )


SCHEMAS: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "header": (HEADER, header_values()),
    "prefixed": (PREFIXED, st.binary(max_size=300)),
    "varint": (VARINT, st.binary(max_size=300)),
    "prefixed_includelength": (
        c.Prefixed(c.Int16ul, c.GreedyBytes, includelength=True),
        st.binary(max_size=300),
    ),
    "prefixed_generic": (
        PREFIXED_GENERIC,
        st.builds(lambda s, n: {"name": s, "n": n},
                  st.text(alphabet=st.characters(blacklist_characters="\0",
                                                 blacklist_categories=("Cs",)), max_size=40),
                  st.integers(0, 255)),
    ),
    "generic": (
        GENERIC,
        st.builds(lambda s, t: {"name": s, "tag": t},
                  st.text(max_size=30).filter(lambda s: len(s.encode()) < 256),
                  st.text(alphabet="abcdefgh", max_size=20)),
    ),
}


def feed(decoder: Decoder, chunks: list[bytes]) -> list[Any]:
    """Do exactly what Connection does with each read."""
    ring = RingBuffer()
    frames: list[Any] = []
    for chunk in chunks:
        if ring.length == 0:
            got, used = decoder.decode_view(memoryview(chunk))
            frames.extend(got)
            if used < len(chunk):
                ring.write(chunk[used:])
        else:
            ring.write(chunk)
        while ring.length:
            frame = decoder.decode(ring)
            if frame is None:
                break
            frames.append(frame)
    return frames


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(0, x), len(data)) for x in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_split_yields_the_same_frames(name: str, data: st.DataObject) -> None:
    schema, values = SCHEMAS[name]
    codec = Codec(schema)
    messages = data.draw(st.lists(values, min_size=1, max_size=6))
    stream = b"".join(codec.encode(m) for m in messages)
    expected = [schema.parse(schema.build(m)) for m in messages]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    frames = feed(codec.decoder(), split(stream, cuts))
    assert frames == expected
    # byte by byte too
    assert feed(codec.decoder(), [bytes([b]) for b in stream]) == expected


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_truncated_frames_never_decode(name: str, data: st.DataObject) -> None:
    schema, values = SCHEMAS[name]
    codec = Codec(schema)
    frame = codec.encode(data.draw(values))
    cut = data.draw(st.integers(0, len(frame) - 1))
    assert feed(codec.decoder(), [frame[:cut]]) == []


def test_fast_path_is_used_for_struct_schemas() -> None:
    assert Codec(HEADER).fast is not None
    assert Codec(PREFIXED).layout is not None
    assert Codec(PREFIXED_GENERIC).fast is None
    assert Codec(PREFIXED_GENERIC).layout is not None
    assert Codec(GENERIC).layout is None


def test_round_trip_values_match_construct() -> None:
    codec = Codec(HEADER)
    msg = {"kind": "data", "flags": 3, "id": 9, "length": 4, "payload": b"abcd"}
    frame = codec.encode(msg)
    assert frame == HEADER.build(msg)
    (decoded,), used = codec.decoder().decode_view(memoryview(frame))
    assert used == len(frame)
    assert decoded == HEADER.parse(frame)
    assert decoded.kind == "data"


@pytest.mark.parametrize("mode", ["close", "discard"])
def test_oversized_header_rejected_before_the_body_is_buffered(mode: str) -> None:
    codec = Codec(PREFIXED, max_frame_size=1024, on_oversize=mode)
    decoder = codec.decoder()
    ring = RingBuffer()
    ring.write(struct.pack(">I", 2**31) + b"x" * 10)
    with pytest.raises(FrameTooLarge) as info:
        decoder.decode(ring)
    assert info.value.size == 2**31 + 4
    assert info.value.fatal is (mode == "close")
    if mode == "discard":
        # Discard mode drops what it has of the frame at once and keeps nothing after.
        assert ring.length == 0
        for _ in range(100):
            ring.write(b"y" * 4096)
            assert decoder.decode(ring) is None
            assert ring.length == 0
            assert ring.capacity == 0


def test_discard_mode_skips_exactly_the_oversized_frame() -> None:
    codec = Codec(PREFIXED, max_frame_size=16, on_oversize="discard")
    big = PREFIXED.build(b"B" * 100)
    good = PREFIXED.build(b"good")
    stream = good + big + good + PREFIXED.build(b"also")
    for size in (1, 3, 7, 50, len(stream)):
        decoder = codec.decoder()
        ring = RingBuffer()
        frames: list[Any] = []
        errors = 0
        for i in range(0, len(stream), size):
            ring.write(stream[i : i + size])
            while True:
                try:
                    frame = decoder.decode(ring)
                except FrameTooLarge as exc:
                    assert not exc.fatal
                    errors += 1
                    continue
                if frame is None:
                    break
                frames.append(frame)
        assert frames == [b"good", b"good", b"also"]
        assert errors == 1


def test_discard_needs_a_header_layout() -> None:
    with pytest.raises(ValueError, match="header"):
        Codec(GENERIC, on_oversize="discard")
    with pytest.raises(ValueError):
        Codec(PREFIXED, on_oversize="drop")
    with pytest.raises(ValueError):
        Codec(PREFIXED, max_frame_size=0)


class CountingCodec(Codec):
    """Counts parses of whole frames."""

    def __init__(self, schema: Any, **kw: Any) -> None:
        super().__init__(schema, **kw)
        self.parses = 0
        inner = self.parse_frame

        def counting(data: Any, start: int, end: int) -> Any:
            self.parses += 1
            return inner(data, start, end)

        self.parse_frame = counting


def test_one_mib_frame_in_1k_pieces_is_parsed_once() -> None:
    codec = CountingCodec(HEADER, max_frame_size=2 << 20)
    payload = bytes(range(256)) * 4096
    frame = codec.encode(
        {"kind": "data", "flags": 0, "id": 1, "length": len(payload), "payload": payload}
    )
    frames = feed(codec.decoder(), split(frame, list(range(1024, len(frame), 1024))))
    assert len(frames) == 1
    assert frames[0].payload == payload
    assert codec.parses == 1


def test_generic_path_waits_for_the_bytes_a_short_read_asked_for() -> None:
    schema = c.Struct("n" / c.Int32ub, "data" / c.Bytes(c.this.n), "tail" / c.CString("ascii"))
    codec = Codec(schema)
    assert codec.layout is None
    decoder = codec.decoder()
    attempts = 0

    class Spy:
        def parse_stream(self, stream: Any) -> Any:
            nonlocal attempts
            attempts += 1
            return schema.parse_stream(stream)

    decoder._schema = Spy()  # type: ignore[attr-defined]
    frame = schema.build({"n": 100_000, "data": b"z" * 100_000, "tail": "end"})
    ring = RingBuffer()
    frames = []
    for i in range(0, len(frame), 1000):
        ring.write(frame[i : i + 1000])
        got = decoder.decode(ring)
        if got is not None:
            frames.append(got)
    assert len(frames) == 1
    assert frames[0].tail == "end"
    # header, then body, then the tail: a handful of attempts, not one per piece (~100)
    assert attempts <= 6, attempts


def test_generic_frame_larger_than_the_limit_is_rejected() -> None:
    schema = c.Struct("n" / c.Int32ub, "data" / c.Bytes(c.this.n), "t" / c.CString("ascii"))
    codec = Codec(schema, max_frame_size=100)
    ring = RingBuffer()
    ring.write(struct.pack(">I", 10_000) + b"x" * 50)
    with pytest.raises(FrameTooLarge):
        codec.decoder().decode(ring)


def test_malformed_frame_is_a_frame_error() -> None:
    schema = c.Prefixed(c.Int8ub, c.Struct("magic" / c.Const(b"GW"), "v" / c.Int8ub))
    ring = RingBuffer()
    ring.write(b"\x03XX\x01")
    with pytest.raises(FrameError):
        Codec(schema).decoder().decode(ring)
    ring = RingBuffer()
    ring.write(b"\x03XX\x01")
    generic = c.Prefixed(c.Int8ub, c.Struct("magic" / c.Const(b"GW"), "s" / c.CString("ascii")))
    with pytest.raises(FrameError):
        Codec(generic).decoder().decode(ring)


def test_encode_errors_are_typed() -> None:
    with pytest.raises(EncodeError):
        Codec(HEADER).encode({"kind": "nope"})
    with pytest.raises(EncodeError):
        Codec(GENERIC).encode({"name": 5})
    with pytest.raises(TypeError):
        RawCodec().encode(12)


@pytest.mark.parametrize(
    "schema",
    [PREFIXED, c.Prefixed(c.Int16ul, c.GreedyBytes, includelength=True),
     c.Prefixed(c.Int32sb, c.GreedyBytes)],
    ids=["unsigned", "includelength", "signed"],
)
@settings(max_examples=40, deadline=None)
@given(payloads=st.lists(st.integers(0, 6000), max_size=12), cut=st.integers(0, 80000))
def test_prefixed_bytes_reads_of_any_size_yield_the_same_frames(
        schema: Any, payloads: list[int], cut: int) -> None:
    """Small and large reads, small and large first frames: decode_view copies a read
    once or slices it per frame; both give every frame, in order, and stop at a cut."""
    frames = [bytes([i % 251]) * size for i, size in enumerate(payloads)]
    codec = Codec(schema, max_frame_size=8000)
    stream = b"".join(codec.encode(f) for f in frames)
    assert feed(codec.decoder(), [stream]) == frames
    assert feed(codec.decoder(), split(stream, [cut])) == frames


def test_prefixed_bytes_negative_length_is_a_frame_error() -> None:
    codec = Codec(c.Prefixed(c.Int32sb, c.GreedyBytes))
    good = codec.encode(b"ok")
    bad = struct.pack(">i", -5) + b"xxxxx"
    frames, used = codec.decoder().decode_view(memoryview(good + bad))
    assert (frames, used) == ([b"ok"], len(good))  # the error is left to decode()
    ring = RingBuffer()
    ring.write(bad)
    with pytest.raises(FrameError):
        codec.decoder().decode(ring)


@pytest.mark.parametrize("schema", [PREFIXED, HEADER, VARINT])
def test_encode_into_appends_what_encode_returns(schema: Any) -> None:
    codec = Codec(schema)
    message: Any = b"payload" if schema is not HEADER else {
        "kind": "ping", "flags": 1, "id": 2, "length": 3, "payload": b"abc"}
    parts: list[bytes] = [b"before"]
    size = codec.encode_into(parts, message)
    assert parts[0] == b"before"
    assert b"".join(parts[1:]) == codec.encode(message)
    assert size == len(codec.encode(message))


def test_encode_into_reports_encode_errors() -> None:
    parts: list[bytes] = []
    with pytest.raises(EncodeError):
        Codec(c.Prefixed(c.Int8ub, c.GreedyBytes)).encode_into(parts, b"x" * 300)
    with pytest.raises(EncodeError):
        Codec(HEADER).encode_into(parts, {"kind": "nope"})
    assert parts == []


def test_a_subclass_encode_is_used_for_replies_too() -> None:
    """The prefix fast path must not shadow a subclass's own encode."""

    class Upper(Codec):
        def encode(self, message: Any) -> bytes:
            return super().encode(message.upper())

    codec = Upper(PREFIXED)
    assert codec.encode(b"abc") == b"\x00\x00\x00\x03ABC"
    parts: list[bytes] = []
    assert codec.encode_into(parts, b"abc") == 7
    assert b"".join(parts) == b"\x00\x00\x00\x03ABC"


FIXED_CONST = c.Struct("magic" / c.Const(b"GW"), "kind" / c.Enum(c.Int8ub, a=1, b=2),
                       "n" / c.Int16ub)
HEADER_CONST = c.Struct("magic" / c.Const(b"GW"), "length" / c.Int16ub,
                        "payload" / c.Bytes(c.this.length))


@pytest.mark.parametrize("schema", [FIXED_CONST, HEADER_CONST], ids=["fixed", "header"])
def test_one_loop_cut_stops_before_a_malformed_frame(schema: Any) -> None:
    """A read's frames are cut in one loop (FastCodec.cut); a frame that fails a check
    (a Const) ends the batch just before it, and decode() then reports it."""
    codec = Codec(schema)
    assert codec.fast is not None and codec.fast.cut is not None
    good = codec.encode({"kind": "a", "n": 7} if schema is FIXED_CONST
                        else {"length": 3, "payload": b"abc"})
    bad = b"XX" + good[2:]
    decoder = codec.decoder()
    frames, used = decoder.decode_view(memoryview(good * 3 + bad + good))
    assert used == 3 * len(good) and len(frames) == 3
    assert all(f == codec.schema.parse(good) for f in frames)
    ring = RingBuffer()
    ring.write(bad + good)
    with pytest.raises(FrameError):
        decoder.decode(ring)


def test_a_replaced_parse_frame_sees_every_frame_of_a_read() -> None:
    codec = CountingCodec(HEADER)
    frame = codec.encode({"kind": "ping", "flags": 0, "id": 1, "length": 2, "payload": b"hi"})
    frames, used = codec.decoder().decode_view(memoryview(frame * 5))
    assert len(frames) == 5 and used == 5 * len(frame)
    assert codec.parses == 5  # the one-loop cut is off when parse_frame is wrapped


@pytest.mark.parametrize("inner", ["bytes", "struct"])
def test_varint_prefixed_reads_cut_in_one_loop(inner: str) -> None:
    schema = VARINT if inner == "bytes" else c.Prefixed(
        c.VarInt, c.Struct("n" / c.Int16ub, "rest" / c.GreedyBytes))
    codec = Codec(schema, max_frame_size=64 << 10)
    assert codec.fast is not None and codec.fast.cut is not None

    def message(size: int) -> Any:
        payload = bytes([size % 251]) * size
        return payload if inner == "bytes" else {"n": size & 0xFFFF, "rest": payload}

    sizes = [0, 5, 127, 128, 300, 20000, 3]  # one- to three-byte varints, a >16 KiB read
    stream = b"".join(codec.encode(message(size)) for size in sizes)
    frames, used = codec.decoder().decode_view(memoryview(stream))
    assert used == len(stream)
    assert frames == [schema.parse(codec.encode(message(size))) for size in sizes]
    # An overlong varint in the middle: the frames before it, then decode() reports it.
    bad = b"\x80" * 11 + b"\x01"
    first = codec.encode(message(7))
    frames, used = codec.decoder().decode_view(memoryview(first + bad + first))
    assert used == len(first) and len(frames) == 1
    ring = RingBuffer()
    ring.write(bad + first)
    with pytest.raises(FrameError):
        codec.decoder().decode(ring)


# -- decode_bytes: the epoll read path -------------------------------------------------


def test_raw_decode_bytes_hands_on_the_read_itself() -> None:
    data = b"a read of some bytes"
    frames, used = RawCodec().decoder().decode_bytes(data)
    assert frames[0] is data and used == len(data)


DECODE_BYTES_CODECS = {
    "prefixed": lambda: Codec(PREFIXED, max_frame_size=300),
    "prefixed_signed_adjusted": lambda: Codec(
        c.Prefixed(c.Int16sb, c.GreedyBytes, includelength=True), max_frame_size=300),
    "header": lambda: Codec(HEADER, max_frame_size=300),
    "varint": lambda: Codec(VARINT, max_frame_size=300),
    "prefixed_generic": lambda: Codec(PREFIXED_GENERIC, max_frame_size=300),
    "generic": lambda: Codec(GENERIC, max_frame_size=300),
}


@pytest.mark.parametrize("name", sorted(DECODE_BYTES_CODECS))
@settings(max_examples=150, deadline=None)
@given(frames=st.lists(st.binary(max_size=400), max_size=6), tail=st.binary(max_size=12),
       big=st.booleans())
def test_decode_bytes_cuts_what_decode_view_cuts(name: str, frames: list[bytes], tail: bytes,
                                                  big: bool) -> None:
    # Whole frames, then junk or a partial frame: both paths cut the same frames and
    # stop at the same byte, whether the read is small (copied once) or not.
    codec = DECODE_BYTES_CODECS[name]()
    if name == "header":
        encoded = [codec.encode({"kind": "data", "flags": 1, "id": i, "length": len(p),
                                 "payload": p}) for i, p in enumerate(frames)]
    elif name.startswith(("prefixed", "varint")) and name != "prefixed_generic":
        encoded = [codec.encode(p[:250]) for p in frames]
    else:
        encoded = frames  # arbitrary bytes: whatever they frame as
    stream = b"".join(encoded) + tail
    if big:
        stream = stream * (20000 // max(len(stream), 1) + 1)
    with_bytes = codec.decoder().decode_bytes(stream)
    with_view = codec.decoder().decode_view(memoryview(bytearray(stream)))
    assert with_bytes == with_view
    assert all(type(f) is not memoryview for f in with_bytes[0])


@pytest.mark.parametrize("schema", [PREFIXED, HEADER, VARINT], ids=["prefixed", "header",
                                                                 "varint"])
def test_decode_cuts_buffered_frames_at_once_and_returns_them_in_order(schema: Any) -> None:
    """decode(ring) with many frames buffered cuts them in one batch and returns one per
    call; their bytes leave the ring with the last, and the fast paths wait till then."""
    codec = Codec(schema)
    values = [b"p%d" % i for i in range(5)] if schema is not HEADER else [
        {"kind": "data", "flags": i, "id": i, "length": 2, "payload": b"p%d" % i}
        for i in range(5)]
    stream = b"".join(codec.encode(v) for v in values)
    expected = [schema.parse(schema.build(v)) for v in values]
    tail = codec.encode(values[0])[:-1]  # a partial frame after the whole ones
    decoder = codec.decoder()
    ring = RingBuffer()
    ring.write(stream + tail)
    got = [decoder.decode(ring)]
    # The rest of the batch is waiting: the read fast paths must not jump the queue.
    assert decoder.decode_view(memoryview(stream)) == ([], 0)
    assert decoder.decode_bytes(stream) == ([], 0)
    assert ring.length == len(stream) + len(tail)  # consumed with the last frame
    while (frame := decoder.decode(ring)) is not None:
        got.append(frame)
    assert got == expected
    assert ring.length == len(tail) and ring.to_bytes() == tail
    # Afterwards the fast paths cut again.
    assert decoder.decode_bytes(stream)[0] == expected


def test_a_while_ring_length_loop_gets_every_frame_cut_ahead() -> None:
    codec = Codec(PREFIXED)
    stream = b"".join(codec.encode(b"x" * i) for i in range(1, 9))
    decoder = codec.decoder()
    ring = RingBuffer()
    ring.write(stream)
    frames = []
    while ring.length:
        frame = decoder.decode(ring)
        assert frame is not None
        frames.append(frame)
    assert frames == [b"x" * i for i in range(1, 9)]


class _Pairs(CutAheadDecoder):
    """A decoder of one's own: two-byte frames, written as decode_one and cut_view only."""

    def decode_one(self, ring: RingBuffer) -> Any | None:
        return ring.read(2) if ring.length >= 2 else None

    def cut_view(self, view: memoryview) -> tuple[list[Any], int]:
        used = len(view) - len(view) % 2
        return [view[i:i + 2].tobytes() for i in range(0, used, 2)], used


def test_a_cut_ahead_decoder_of_ones_own_gets_the_waiting_rule_from_its_base() -> None:
    decoder = _Pairs()
    ring = RingBuffer()
    ring.write(b"aabbccd")
    assert decoder.decode(ring) == b"aa"  # bb and cc are cut ahead, their bytes held
    assert ring.length == 5  # "bbccd": the bytes of the frames waiting stay
    # While they wait, the batch paths cut nothing: a read never jumps the queue.
    assert decoder.decode_view(memoryview(b"eeff")) == ([], 0)
    assert decoder.decode_bytes(b"eeff") == ([], 0)
    assert [decoder.decode(ring), decoder.decode(ring)] == [b"bb", b"cc"]
    assert ring.length == 1 and decoder.decode(ring) is None
    assert decoder.decode_bytes(b"eeff") == ([b"ee", b"ff"], 4)  # nothing waits now


@pytest.mark.parametrize("mode", ["close", "discard"])
def test_decode_batch_stops_before_an_oversized_frame(mode: str) -> None:
    """Frames cut ahead come first, then the oversized frame's error, in stream order;
    in discard mode the frames after it follow."""
    codec = Codec(PREFIXED, max_frame_size=16, on_oversize=mode)
    good = [codec.encode(b"g%d" % i) for i in range(3)]
    big = PREFIXED.build(b"B" * 100)
    decoder = codec.decoder()
    ring = RingBuffer()
    ring.write(b"".join(good) + big + b"".join(good))
    events: list[Any] = []
    while ring.length:
        try:
            frame = decoder.decode(ring)
        except FrameTooLarge as exc:
            events.append(("too large", exc.fatal))
            if exc.fatal:
                break
            continue
        if frame is None:
            break
        events.append(frame)
    head = [b"g0", b"g1", b"g2"]
    if mode == "close":
        assert events == [*head, ("too large", True)]
    else:
        assert events == [*head, ("too large", False), *head]
        assert ring.length == 0


@pytest.mark.parametrize("fast", [True, False])
def test_an_encode_error_names_the_field_once(fast: bool) -> None:
    """A nested field's error says where (``header.version``) and shows the message
    once, whether the compiled encoder or construct's build failed."""
    schema = c.Prefixed(c.Int32ub, c.Struct(
        "header" / c.Struct("version" / c.Int8ub, "kind" / c.Int8ub,
                            "magic" / c.Const(b"GW")),
        "data" / c.GreedyBytes))
    codec = Codec(schema)
    if not fast:
        codec._build = schema.build  # as for a schema the compiler does not take
    message = {"header": {"version": 300, "kind": 1}, "data": b"x"}
    with pytest.raises(EncodeError) as info:
        codec.encode(message)
    text = str(info.value)
    assert " at header.version: " in text and text.count("cannot encode") == 1
    with pytest.raises(EncodeError, match=r" at header\.kind: missing$"):
        codec.encode({"header": {"version": 1}, "data": b""})  # (magic builds itself)


# The length-prefix cutter (``_fastcodec.prefix_cutter``) serves Prefixed(<int>,
# GreedyBytes) and fixed fields + Bytes(this.x +- k).  Each: how a header announcing a
# payload of n bytes is written, and one whose length is negative (None: cannot be).
_CUTTER_FORMATS: dict[str, tuple[Any, Any, bytes | None]] = {
    "prefixed": (PREFIXED, lambda n: struct.pack(">I", n), None),
    "includelength": (c.Prefixed(c.Int16ul, c.GreedyBytes, includelength=True),
                      lambda n: struct.pack("<H", n + 2), struct.pack("<H", 1)),
    "signed": (c.Prefixed(c.Int32sb, c.GreedyBytes), lambda n: struct.pack(">i", n),
               struct.pack(">i", -5)),
    "header": (HEADER, lambda n: struct.pack(">BBHI", 1, 0, 7, n), None),
    "header_adjusted": (
        c.Struct("len" / c.Int16ub, "kind" / c.Int8ub, "data" / c.Bytes(c.this.len - 3)),
        lambda n: struct.pack(">HB", n + 3, 9), struct.pack(">HB", 1, 9)),
    "header_signed": (c.Struct("n" / c.Int16sb, "d" / c.Bytes(c.this.n + 1)),
                      lambda n: struct.pack(">h", n - 1), struct.pack(">h", -5)),
}
# Reads: bytes (decode_bytes) or a memoryview (decode_view); within max_frame_size (4 KiB
# here) or longer; a small view copied once, one over 16 KiB or whose first payload is
# over 2 KiB cut with a copy per frame.  (goods before the stop, first payload size)
_CUTTER_READS = {
    "bytes": (False, 3, 10),
    "bytes_over_limit": (False, 400, 10),
    "view_copied_once": (True, 3, 10),
    "view_over_16k": (True, 1200, 10),
    "view_first_over_2k": (True, 1, 3000),
}


@pytest.mark.parametrize(("fmt", "read", "stop"), [
    (fmt, read, stop) for fmt in sorted(_CUTTER_FORMATS) for read in sorted(_CUTTER_READS)
    for stop in ("none", "incomplete", "too_large", "negative")
    if stop != "negative" or _CUTTER_FORMATS[fmt][2] is not None])
def test_length_prefix_cut_stops_just_before_what_decode_reports(
        fmt: str, read: str, stop: str) -> None:
    """Every branch of the one length-prefix loop cuts every whole frame before the
    stop, uses exactly their bytes, and leaves the stop to decode(): an incomplete
    frame waits, one over the limit is FrameTooLarge, a negative length a FrameError."""
    schema, header, negative = _CUTTER_FORMATS[fmt]
    as_view, count, first = _CUTTER_READS[read]
    codec = Codec(schema, max_frame_size=4096)
    goods = [header(size) + bytes([i % 251]) * size
             for i, size in enumerate([first] + [10 + i % 7 for i in range(count - 1)])]
    after = header(3) + b"end"  # a whole frame after the stop: never cut
    over = 4097 - len(header(0))  # the payload of a frame one byte over the limit
    if stop == "too_large":  # a frame of exactly the limit is cut, one byte more is not
        goods.append(header(over - 1) + b"L" * (over - 1))
    rest = {"none": b"",
            "incomplete": goods[0][:-1],
            "too_large": header(over) + b"x" * over + after,
            "negative": (negative or b"") + b"x" * 20 + after}[stop]
    stream = b"".join(goods) + rest
    decoder = codec.decoder()
    if as_view:
        frames, used = decoder.decode_view(memoryview(bytearray(stream)))
    else:
        frames, used = decoder.decode_bytes(stream)
    assert used == sum(map(len, goods))
    assert frames == [schema.parse(g) for g in goods]
    payloads = [f if type(f) is bytes else f[list(f)[-1]] for f in frames]
    assert all(type(p) is bytes for p in payloads)
    ring = RingBuffer()
    ring.write(stream[used:])
    if stop in ("none", "incomplete"):
        assert decoder.decode(ring) is None and ring.length == len(rest)
    else:
        with pytest.raises(FrameTooLarge if stop == "too_large" else FrameError) as info:
            decoder.decode(ring)
        assert stop != "negative" or not isinstance(info.value, FrameTooLarge)


def test_a_replaced_parse_frame_sees_every_prefixed_bytes_frame() -> None:
    codec = CountingCodec(PREFIXED)
    frames, used = codec.decoder().decode_view(memoryview(codec.encode(b"hi") * 5))
    assert frames == [b"hi"] * 5 and used == 30
    assert codec.parses == 5
