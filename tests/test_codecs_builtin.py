"""The ready-made codecs in ``gevwire.codecs``.

Each codec is driven the way ``Connection`` drives it (``ConnectionSim``): a read into an
empty ring goes through ``decode_view`` on a reused read buffer, and only the tail is
copied into the ring; otherwise the bytes are appended to the ring and ``decode`` is
called until it finds nothing.  The properties: any split of a stream into reads gives
the same frames (and the same error, after a prefix of the same frames); encode then
decode gives the message back; a truncated frame never yields one; oversized frames are
rejected from their header with the ring staying small; long frames arriving in many
pieces cost linear work.  Then one echo over a real loopback socket per codec.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import construct as cs  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gevwire
from gevwire import BufferPool, EncodeError, FrameError, FrameTooLarge, RingBuffer
from gevwire.codec import BaseCodec
from gevwire.codecs import (
    DelimiterCodec,
    FixedLengthCodec,
    LengthFieldCodec,
    VarintCodec,
    delimiter,
    encode_varint,
    fixed_length,
    length_field,
    length_field_prepender,
    line,
    raw,
    varint,
)
from gevwire.testing import DecodeProgress

pytestmark = [pytest.mark.timeout(60), pytest.mark.io]

settings.register_profile(
    "codecs_builtin",
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("codecs_builtin")

KiB = 1 << 10
MiB = 1 << 20


# -- the connection, simulated ----------------------------------------------------------


class ConnectionSim:
    """Feeds reads to a decoder exactly as ``Connection._on_events`` does.

    An empty ring: ``decode_view`` on the read buffer (io_uring's way) or, every other
    read, ``decode_bytes`` on the read as ``bytes`` (epoll's), the rest into the ring, then
    ``decode`` on the ring (``_cut_from_ring``) if anything was left.  Otherwise: the
    read into the ring, then ``decode`` until it returns None.  An exception from
    ``decode_view`` loses that call's frames (the connection fails at once); one from
    ``decode`` comes after the frames cut before it.  A non-fatal ``FrameError`` from
    ``decode`` (a discarded frame) goes to ``on_error`` and cutting goes on: it is
    recorded among the frames as ``Discarded(size)``.

    ``ring_min`` is small by default so that the ring wraps and grows often.  After each
    ``decode_view`` the read buffer is overwritten, as the loop's spare buffer is by the
    next read: a frame that still pointed into it would show garbage.
    """

    def __init__(self, codec: BaseCodec, ring: RingBuffer | None = None) -> None:
        self.decoder = codec.decoder()
        self.ring = ring if ring is not None else RingBuffer(min_capacity=16, compact_max=0)
        self.frames: list[Any] = []
        self.max_ring = 0  # most bytes the ring held after a read was handled
        self.reads = 0

    def feed(self, chunk: bytes) -> list[Any]:
        """One read of ``chunk`` (non-empty); returns the frames it completed."""
        assert chunk, "a read returns at least one byte"
        ring = self.ring
        got: list[Any] = []
        used = 0  # bytes of the read that decode_view consumed
        self.reads += 1
        try:
            if ring.length == 0 and self.reads % 2 == 0:
                data = bytes(chunk)
                try:
                    frames, used = self.decoder.decode_bytes(data)
                except FrameError as exc:
                    assert exc.fatal, "decode_bytes raised a non-fatal error"
                    raise
                assert 0 <= used <= len(chunk)
                if used < len(chunk):
                    ring.write(memoryview(data)[used:])
                got = list(frames)
            elif ring.length == 0:
                spare = bytearray(chunk)
                view = memoryview(spare)
                try:
                    frames, used = self.decoder.decode_view(view)
                except FrameError as exc:
                    # the connection drops the rest of the read: only fatal errors here
                    assert exc.fatal, "decode_view raised a non-fatal error"
                    raise
                assert 0 <= used <= len(chunk)
                if used < len(chunk):
                    ring.write(view[used:])
                view.release()
                spare[:] = b"\xa5" * len(spare)
                got = list(frames)
            else:
                ring.write(chunk)
            if used < len(chunk):  # the connection cuts what is left in the ring at once
                progress = DecodeProgress(ring)
                while ring.length:
                    try:
                        frame = self.decoder.decode(ring)
                    except FrameError as exc:
                        if exc.fatal:
                            raise
                        got.append(discarded(exc))
                        progress.reset()
                        continue
                    if frame is None:
                        break
                    progress.returned(frame)
                    got.append(frame)
        finally:
            self.frames.extend(got)
            self.max_ring = max(self.max_ring, ring.length)
        return got


class Discarded(NamedTuple):
    """A non-fatal ``FrameTooLarge`` (a skipped frame), in the stream's order."""

    size: int
    limit: int


def discarded(exc: FrameError) -> Discarded:
    assert type(exc) is FrameTooLarge, exc
    return Discarded(exc.size, exc.limit)


def run(codec: BaseCodec, chunks: Sequence[bytes], **kwargs: Any) -> tuple[list[Any], Any]:
    """Frames delivered for ``chunks`` and the error that stopped them (or None)."""
    sim = ConnectionSim(codec, **kwargs)
    for chunk in chunks:
        if chunk:
            try:
                sim.feed(chunk)
            except FrameError as exc:
                return sim.frames, exc
    return sim.frames, None


def frames_of(codec: BaseCodec, chunks: Sequence[bytes]) -> list[Any]:
    frames, error = run(codec, chunks)
    assert error is None, error
    return frames


def ring_only(codec: BaseCodec, data: bytes) -> tuple[list[Any], Any]:
    """Reference: every byte written to the ring first, then ``decode`` until None."""
    decoder = codec.decoder()
    ring = RingBuffer()
    ring.write(data)
    frames: list[Any] = []
    progress = DecodeProgress(ring)
    while ring.length:
        try:
            frame = decoder.decode(ring)
        except FrameError as exc:
            if exc.fatal:
                return frames, exc
            frames.append(discarded(exc))
            progress.reset()
            continue
        if frame is None:
            break
        progress.returned(frame)
        frames.append(frame)
    return frames, None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@st.composite
def splits_of(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into reads: anywhere, byte by byte, or whole."""
    how = draw(st.sampled_from(["random", "random", "bytes", "whole"]))
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    if how == "whole" or len(data) < 2:
        return [data]
    cuts = draw(st.lists(st.integers(1, len(data) - 1), max_size=min(40, len(data))))
    return split(data, cuts)


def check_split_invariance(codec: BaseCodec, stream: bytes, chunks: list[bytes]) -> None:
    """The same frames and error for ``chunks`` as for the ring-only reference."""
    ref_frames, ref_error = ring_only(codec, stream)
    whole_frames, whole_error = run(codec, [stream])
    frames, error = run(codec, chunks)
    if ref_error is None:
        assert error is None and whole_error is None, (error, whole_error)
        assert frames == ref_frames
        assert whole_frames == ref_frames
    else:
        assert type(error) is type(ref_error), (error, ref_error)
        assert type(whole_error) is type(ref_error)
        # every frame before the bad bytes is handed on: decode_view stops at them and
        # leaves them to decode() rather than raising with frames in hand
        assert frames == ref_frames
        assert whole_frames == ref_frames


class CountingRing(RingBuffer):
    """A ring that counts the work codecs ask of it (bytes searched, copied, moved)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.find_calls = 0
        self.searched = 0
        self.copied = 0
        self.moved = 0
        self.full_copies = 0

    def find(self, needle: bytes, start: int = 0, end: int | None = None) -> int:
        stop = self.length if end is None else min(end, self.length)
        self.find_calls += 1
        self.searched += max(0, stop - start)
        return super().find(needle, start, end)

    def read(self, n: int) -> bytes:
        self.copied += min(n, self.length)
        return super().read(n)

    def contiguous(self, n: int) -> memoryview:
        _, second = self.peek(n)
        if second:
            self.moved += self.length
        return super().contiguous(n)

    def to_bytes(self) -> bytes:
        self.full_copies += 1
        return super().to_bytes()


# -- fixed length ------------------------------------------------------------------------


@st.composite
def fixed_streams(draw: st.DrawFn) -> tuple[FixedLengthCodec, list[bytes]]:
    size = draw(st.integers(1, 9))
    frames = draw(st.lists(st.binary(min_size=size, max_size=size), max_size=30))
    return fixed_length(size), frames


@given(fixed_streams(), st.data())
def test_fixed_any_split_gives_the_frames(case: Any, data: st.DataObject) -> None:
    codec, frames = case
    stream = b"".join(codec.encode(f) for f in frames)
    assert frames_of(codec, data.draw(splits_of(stream))) == frames
    # construct's declaration agrees on every frame
    assert [codec.schema.parse(f) for f in frames] == frames


@given(st.integers(1, 9), st.binary(max_size=60), st.data())
def test_fixed_truncated_stream_yields_only_whole_frames(
    size: int, stream: bytes, data: st.DataObject
) -> None:
    codec = fixed_length(size)
    sim = ConnectionSim(codec)
    for chunk in data.draw(splits_of(stream)) if stream else []:
        sim.feed(chunk)
    whole = len(stream) // size * size
    assert sim.frames == [stream[i : i + size] for i in range(0, whole, size)]
    assert sim.ring.length == len(stream) - whole


def test_fixed_encode_checks_size_and_rejects_bad_arguments() -> None:
    codec = fixed_length(3)
    assert codec.encode(bytearray(b"abc")) == b"abc"
    assert codec.max_frame_size == 3
    with pytest.raises(EncodeError):
        codec.encode(b"ab")
    with pytest.raises(EncodeError):
        codec.encode(3)
    with pytest.raises(ValueError):
        fixed_length(0)
    with pytest.raises(ValueError):
        fixed_length(4, max_frames_per_read=0)


def test_fixed_max_frames_per_read_is_a_flood_guard_on_both_paths() -> None:
    codec = fixed_length(2, max_frames_per_read=3)
    # three frames per read are fine, on the fast path and through the ring
    assert frames_of(codec, [b"aabbcc", b"ddee", b"f", b"fgghh"]) == [
        b"aa", b"bb", b"cc", b"dd", b"ee", b"ff", b"gg", b"hh"
    ]
    frames, error = run(codec, [b"aabbccdd"])
    assert frames == [b"aa", b"bb", b"cc"] and type(error) is FrameError
    frames, error = run(codec, [b"a", b"abbccdd"])  # the ring path counts per read too
    assert frames == [b"aa", b"bb", b"cc"] and type(error) is FrameError
    # decode(ring) alone: with a cap it does not cut ahead (that would count a batch
    # as one call), so the fourth call raises.
    decoder = codec.decoder()
    ring = RingBuffer()
    ring.write(b"aabbccdd")
    assert [decoder.decode(ring) for _ in range(3)] == [b"aa", b"bb", b"cc"]
    with pytest.raises(FrameError):
        decoder.decode(ring)


# -- length field ------------------------------------------------------------------------

NETTY_HELLO = b"HELLO, WORLD"

# The examples of netty's LengthFieldBasedFrameDecoder Javadoc:
# (offset, field length, adjustment, strip, bytes in, frame out).
NETTY_EXAMPLES = [
    pytest.param(0, 2, 0, 0, b"\x00\x0c" + NETTY_HELLO, b"\x00\x0c" + NETTY_HELLO,
                 id="2-byte length, header kept"),
    pytest.param(0, 2, 0, 2, b"\x00\x0c" + NETTY_HELLO, NETTY_HELLO,
                 id="2-byte length, header stripped"),
    pytest.param(0, 2, -2, 0, b"\x00\x0e" + NETTY_HELLO, b"\x00\x0e" + NETTY_HELLO,
                 id="length counts the whole message"),
    pytest.param(2, 3, 0, 0, b"\xca\xfe\x00\x00\x0c" + NETTY_HELLO,
                 b"\xca\xfe\x00\x00\x0c" + NETTY_HELLO, id="3-byte length after a header"),
    pytest.param(0, 3, 2, 0, b"\x00\x00\x0c\xca\xfe" + NETTY_HELLO,
                 b"\x00\x00\x0c\xca\xfe" + NETTY_HELLO, id="3-byte length before a header"),
    pytest.param(1, 2, 1, 3, b"\xca\x00\x0c\xfe" + NETTY_HELLO, b"\xfe" + NETTY_HELLO,
                 id="length between two headers, first three bytes stripped"),
    pytest.param(1, 2, -3, 3, b"\xca\x00\x10\xfe" + NETTY_HELLO, b"\xfe" + NETTY_HELLO,
                 id="length between headers counts the whole message"),
]


@pytest.mark.parametrize(("offset", "field", "adjust", "strip", "wire", "frame"), NETTY_EXAMPLES)
def test_length_field_netty_javadoc_examples(
    offset: int, field: int, adjust: int, strip: int, wire: bytes, frame: bytes
) -> None:
    codec = length_field(length_field_offset=offset, length_field_length=field,
                         length_adjustment=adjust, initial_bytes_to_strip=strip)
    stream = wire * 3
    assert frames_of(codec, [stream]) == [frame] * 3
    for cut in range(1, len(stream)):  # every two-read split
        assert frames_of(codec, [stream[:cut], stream[cut:]]) == [frame] * 3
    assert frames_of(codec, [stream[i : i + 1] for i in range(len(stream))]) == [frame] * 3
    # encode is the inverse: the message is the frame without its length field
    message = wire[:offset] + wire[offset + field :]
    assert codec.encode(message) == wire


@st.composite
def length_field_cases(draw: st.DrawFn) -> tuple[LengthFieldCodec, list[bytes], list[bytes]]:
    """A random netty configuration, messages for it, and the frames they must give."""
    field = draw(st.sampled_from([1, 2, 3, 4, 8]))
    order = draw(st.sampled_from(["big", "little"]))
    offset = draw(st.integers(0, 3))
    adjust = draw(st.integers(-(offset + field), 4))
    strip = draw(st.integers(0, offset + field + 2))
    codec = length_field(byte_order=order, length_field_offset=offset, length_field_length=field,
                         length_adjustment=adjust, initial_bytes_to_strip=strip)
    shortest = max(offset, offset + adjust, strip - field, 0)
    messages = draw(st.lists(st.binary(min_size=shortest, max_size=shortest + 60), max_size=8))
    # Expected frames, from netty's arithmetic and construct's declaration of the field.
    schema = cs.BytesInteger(field, signed=field == 8, swapped=order == "little")
    frames = []
    for m in messages:
        value = len(m) - offset - adjust  # frame = offset + field + value + adjust
        frames.append((m[:offset] + schema.build(value) + m[offset:])[strip:])
    return codec, messages, frames


@given(length_field_cases(), st.data())
def test_length_field_any_split_gives_the_frames(case: Any, data: st.DataObject) -> None:
    codec, messages, frames = case
    stream = b"".join(codec.encode(m) for m in messages)
    assert frames_of(codec, data.draw(splits_of(stream))) == frames


@given(length_field_cases(), st.data())
def test_length_field_truncated_frame_yields_nothing(case: Any, data: st.DataObject) -> None:
    codec, messages, _ = case
    if not messages:
        return
    wire = codec.encode(messages[0])
    cut = data.draw(st.integers(0, len(wire) - 1))
    if cut:
        assert frames_of(codec, data.draw(splits_of(wire[:cut]))) == []


def valid_then_garbage(codec: BaseCodec, messages: st.SearchStrategy[bytes]) -> Any:
    """Streams of whole frames with arbitrary bytes somewhere among them."""
    return st.tuples(
        st.lists(messages, max_size=4), st.binary(max_size=40), st.lists(messages, max_size=4)
    ).map(lambda t: b"".join(
        [*(codec.encode(m) for m in t[0]), t[1], *(codec.encode(m) for m in t[2])]))


@given(
    st.sampled_from([1, 2, 3, 4, 8]),
    st.sampled_from(["big", "little"]),
    st.integers(-6, 3),
    st.sampled_from(["close", "discard"]),
    st.booleans(),
    st.data(),
)
def test_length_field_arbitrary_bytes_same_outcome_for_any_split(
    field: int, order: Any, adjust: int, mode: Any, fail_fast: bool, data: st.DataObject
) -> None:
    codec = length_field(length_field_length=field, byte_order=order, length_adjustment=adjust,
                         initial_bytes_to_strip=data.draw(st.integers(0, field + 2)),
                         max_frame_size=40, on_oversize=mode, fail_fast=fail_fast)
    stream = data.draw(valid_then_garbage(codec, st.binary(min_size=3, max_size=12)))
    if stream:
        check_split_invariance(codec, stream, data.draw(splits_of(stream)))


@pytest.mark.parametrize(
    ("kwargs", "wire", "message"),
    [
        (dict(length_field_length=2, length_adjustment=-3), b"\x00\x02", "less than"),
        (dict(length_field_length=8), b"\xff" * 8, "negative"),
        (dict(length_field_length=2, initial_bytes_to_strip=5), b"\x00\x01x", "strip"),
    ],
)
def test_length_field_impossible_lengths_are_frame_errors(
    kwargs: dict[str, Any], wire: bytes, message: str
) -> None:
    for chunks in ([wire], [wire[:1], wire[1:]]):
        frames, error = run(length_field(**kwargs), chunks)
        assert frames == []
        assert type(error) is FrameError and message in str(error)


def test_length_field_oversize_close_mode_raises_from_the_header() -> None:
    codec = length_field(initial_bytes_to_strip=4, max_frame_size=64 * KiB)
    before = codec.encode(b"before")
    oversized = struct.pack(">I", 10 * MiB) + bytes(KiB)  # 10 MiB announced, 1 KiB sent
    sim = ConnectionSim(codec)
    assert sim.feed(before + oversized[:2]) == [b"before"]
    with pytest.raises(FrameTooLarge) as info:
        sim.feed(oversized[2:KiB])  # the header is complete: rejected before the body
    assert info.value.size == 10 * MiB + 4 and info.value.limit == 64 * KiB
    assert sim.ring.length <= KiB
    # on the fast path too
    with pytest.raises(FrameTooLarge):
        ConnectionSim(codec).feed(oversized)


@pytest.mark.parametrize("fail_fast", [True, False])
@pytest.mark.parametrize("piece", [KiB, 1000, 7])
def test_length_field_discard_mode_skips_exactly_one_frame_and_resyncs(
    fail_fast: bool, piece: int
) -> None:
    codec = length_field(initial_bytes_to_strip=4, max_frame_size=64 * KiB,
                         on_oversize="discard", fail_fast=fail_fast)
    marker = Discarded(size=4 + 300 * KiB, limit=64 * KiB)
    a, c = codec.encode(b"before"), codec.encode(b"after")
    b = struct.pack(">I", 300 * KiB) + bytes(range(256)) * (300 * 4)
    stream = a + b + c
    sim = ConnectionSim(codec)
    delivered_at = []
    for pos in range(0, len(stream), piece):
        for frame in sim.feed(stream[pos : pos + piece]):
            delivered_at.append((frame, min(pos + piece, len(stream))))
        assert sim.ring.length < piece + 8  # the oversized body is never buffered
    assert [f for f, _ in delivered_at] == [b"before", marker, b"after"]
    marker_at = delivered_at[1][1]
    if fail_fast:  # reported (once) with the read that completed the header
        assert marker_at < len(a) + 4 + piece
    else:  # reported once the frame was skipped, where it would have been
        assert len(a) + len(b) <= marker_at < len(a) + len(b) + piece
    assert sim.max_ring < piece + 8


def test_length_field_discard_mode_whole_frame_in_one_read() -> None:
    codec = length_field(length_field_length=2, initial_bytes_to_strip=2, max_frame_size=10,
                         on_oversize="discard", fail_fast=False)
    stream = codec.encode(b"ok") + b"\x00\x0b" + b"x" * 11 + codec.encode(b"next")
    expected = [b"ok", Discarded(13, 10), b"next"]
    assert frames_of(codec, [stream]) == expected
    assert ring_only(codec, stream) == (expected, None)


def test_length_field_prepender_is_netty_s() -> None:
    assert length_field_prepender(2).encode(NETTY_HELLO) == b"\x00\x0c" + NETTY_HELLO
    assert length_field_prepender(
        2, length_includes_length_field=True).encode(NETTY_HELLO) == b"\x00\x0e" + NETTY_HELLO
    assert length_field_prepender(3, byte_order="little", length_adjustment=1).encode(
        b"abc") == b"\x04\x00\x00abc"
    assert length_field_prepender(8).header(5) == b"\x00" * 7 + b"\x05"
    assert length_field_prepender(8).header(2**63 - 1) == b"\x7f" + b"\xff" * 7
    with pytest.raises(EncodeError):  # netty's long is signed: this would read as negative
        length_field_prepender(8).header(2**63)
    assert length_field_prepender(3).header(2**24 - 1) == b"\xff" * 3
    with pytest.raises(EncodeError):
        length_field_prepender(3).header(2**24)
    with pytest.raises(EncodeError):
        length_field_prepender(1).encode(bytes(256))
    with pytest.raises(EncodeError):
        length_field_prepender(2, length_adjustment=-3).encode(b"ab")
    with pytest.raises(ValueError):
        length_field_prepender(5)
    # what netty's prepender writes, netty's decoder (length_adjustment=-2) reads back
    codec = length_field(length_field_length=2, length_adjustment=-2, initial_bytes_to_strip=2)
    wire = length_field_prepender(2, length_includes_length_field=True).encode(b"abc")
    assert frames_of(codec, [wire]) == [b"abc"] and codec.encode(b"abc") == wire


def test_length_field_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        length_field(length_field_length=5)
    with pytest.raises(ValueError):
        length_field(byte_order="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        length_field(on_oversize="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        length_field(length_field_offset=10, max_frame_size=12)
    with pytest.raises(EncodeError):
        length_field(length_field_length=1).encode(bytes(300))


def test_length_field_one_mib_frame_in_1_kib_pieces_is_linear() -> None:
    codec = length_field(initial_bytes_to_strip=4, max_frame_size=2 * MiB)
    payload = bytes(range(256)) * (MiB // 256)
    wire = codec.encode(payload) + codec.encode(b"x")
    ring = CountingRing()
    sim = ConnectionSim(codec, ring=ring)
    for pos in range(0, len(wire), KiB):
        sim.feed(wire[pos : pos + KiB])
    assert sim.frames == [payload, b"x"]
    assert ring.copied <= len(wire)  # each byte copied out once
    assert ring.moved == 0 and ring.full_copies == 0


# -- line and delimiter ------------------------------------------------------------------

ALPHABET = b"ab\r\n\0|END"
LINE_DELIMITERS = [b"\n", b"\r\n", b"\0", b"END"]
DELIMITER_SETS = [[b"\r\n", b"\n"], [b"\n", b"\r\n"], [b"\0", b"|", b"END"], [b"ab", b"b"]]


def without(payload: bytes, delimiters: Sequence[bytes]) -> bytes:
    """``payload`` with every delimiter removed (repeatedly, so none is left)."""
    while any(d in payload for d in delimiters):
        for d in delimiters:
            payload = payload.replace(d, b"")
    return payload


@st.composite
def line_cases(draw: st.DrawFn) -> tuple[DelimiterCodec, list[bytes], list[bytes]]:
    delim = draw(st.sampled_from(LINE_DELIMITERS))
    strip = draw(st.booleans())
    codec = line(delim, strip=strip, max_length=40)
    raw_lines = draw(st.lists(st.binary(max_size=40).map(
        lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b)), max_size=10))
    lines = [without(p, [delim]) for p in raw_lines]
    if strip:
        # with b"\n", a "\r" before it is part of the line ending
        expected = [p[:-1] if delim == b"\n" and p.endswith(b"\r") else p for p in lines]
    else:
        expected = [p + delim for p in lines]
    return codec, lines, expected


@given(line_cases(), st.data())
def test_line_any_split_gives_the_lines(case: Any, data: st.DataObject) -> None:
    codec, lines, expected = case
    stream = b"".join(codec.encode(p) for p in lines)
    assert frames_of(codec, data.draw(splits_of(stream))) == expected


@given(line_cases(), st.data())
def test_line_truncated_line_yields_nothing(case: Any, data: st.DataObject) -> None:
    codec, lines, _ = case
    if lines:
        wire = codec.encode(lines[0])
        cut = data.draw(st.integers(0, len(wire) - 1))
        if cut:
            assert frames_of(codec, data.draw(splits_of(wire[:cut]))) == []


@given(st.sampled_from(DELIMITER_SETS), st.booleans(), st.data())
def test_delimiter_any_split_gives_the_frames(
    delims: list[bytes], strip: bool, data: st.DataObject
) -> None:
    codec = delimiter(delims, strip=strip, max_length=40)
    payloads = data.draw(st.lists(st.binary(max_size=40).map(
        lambda b: without(bytes(ALPHABET[x % len(ALPHABET)] for x in b), delims)), max_size=10))
    stream = b"".join(codec.encode(p) for p in payloads)
    # each encoded message is one frame; stripped, the message itself
    expected = payloads if strip else [codec.encode(p) for p in payloads]
    for p, frame in zip(payloads, expected, strict=True):
        assert frame[: len(p)] == p and (strip or frame[len(p) :] in delims)
    assert frames_of(codec, data.draw(splits_of(stream))) == expected


@given(
    st.sampled_from([[d] for d in LINE_DELIMITERS] + DELIMITER_SETS),
    st.booleans(),
    st.integers(0, 12),
    st.lists(st.sampled_from([b"a", b"b", b"\r", b"\n", b"\0", b"|", b"E", b"N", b"D", b"END",
                              b"\r\n", b"\xff", b"\xc3\xa9"]), max_size=60),
    st.data(),
)
def test_delimited_arbitrary_bytes_same_outcome_for_any_split(
    delims: list[bytes], as_line: bool, max_length: int, pieces: list[bytes],
    data: st.DataObject,
) -> None:
    stream = b"".join(pieces)
    encoding = data.draw(st.sampled_from([None, "utf-8"]))
    strip = data.draw(st.booleans())
    if as_line and len(delims) == 1:
        codec = line(delims[0], max_length=max_length, strip=strip, encoding=encoding)
    else:
        codec = delimiter(delims, max_length=max_length, strip=strip, encoding=encoding)
    if stream:
        check_split_invariance(codec, stream, data.draw(splits_of(stream)))


@pytest.mark.parametrize(
    ("delims", "stream", "frames"),
    [
        # the match that ends first wins; on a tie the longer delimiter (netty agrees)
        ([b"\n", b"\r\n"], b"a\r\nb\nc\r\r\n", [b"a", b"b", b"c\r"]),
        ([b"\r\n", b"\n"], b"a\r\nb\n", [b"a", b"b"]),
        ([b"ab", b"b"], b"xab" + b"yb" + b"b", [b"x", b"y", b""]),
        # netty would take the delimiter that starts first ("x\ny" at 0, frame b"") when
        # it has all bytes, but "\n" (frame b"x") when "y" arrives in a later read
        ([b"\n", b"x\ny"], b"x\nyz\n", [b"x", b"yz"]),
    ],
)
def test_delimiter_earliest_ending_match_wins(
    delims: list[bytes], stream: bytes, frames: list[bytes]
) -> None:
    codec = delimiter(delims)
    assert frames_of(codec, [stream]) == frames
    assert frames_of(codec, [stream[i : i + 1] for i in range(len(stream))]) == frames


def test_line_strip_options_and_text() -> None:
    assert frames_of(line(), [b"a\r\nb\n\r\n"]) == [b"a", b"b", b""]
    assert frames_of(line(), [b"\nab\r"]) == [b""]  # the "\r" is not this line's
    assert frames_of(line(strip=False), [b"a\r\nb\n"]) == [b"a\r\n", b"b\n"]
    assert frames_of(line(b"\r\n"), [b"a\rb\r\n"]) == [b"a\rb"]  # only b"\n" strips a "\r"
    text = line(encoding="utf-8")
    assert frames_of(text, [b"h\xc3\xa9", b"llo\r\nw\n"]) == ["héllo", "w"]
    assert text.encode("héllo") == b"h\xc3\xa9llo\n"
    frames, error = run(text, [b"ok\n\xff\xfe\n"])
    assert frames == ["ok"] and type(error) is FrameError  # not UTF-8
    # a frame received with strip=False goes back as it is
    assert line(strip=False).encode(b"a\r\n") == b"a\r\n"
    assert delimiter([b"\0", b"|"]).encode(b"x|") == b"x|"


def test_line_empty_line_at_the_ring_start_ignores_stale_bytes() -> None:
    # Storage comes back from the pool with old bytes; one before the line is not a "\r".
    ring = RingBuffer(min_capacity=16, pool=BufferPool())
    ring.write(b"x" * 15 + b"\r")
    ring.retrieve_all()
    ring.write(b"\nabc")
    assert line().decoder().decode(ring) == b""
    assert ring.to_bytes() == b"abc"


def test_line_encode_refuses_messages_that_would_not_read_back() -> None:
    with pytest.raises(EncodeError):
        line().encode(b"two\nlines")
    with pytest.raises(EncodeError):
        delimiter([b"\0", b"|"]).encode(b"a|b")
    with pytest.raises(EncodeError):
        delimiter([b"aa"]).encode(b"xa")  # b"xaaa" would read back as b"x", b"a..."
    # ... unless another delimiter reads back right: b"x|" + b"aa" would end at b"|a"
    assert delimiter([b"aa", b"|a"]).encode(b"x|") == b"x||a"
    with pytest.raises(ValueError):
        delimiter([])
    with pytest.raises(ValueError):
        delimiter([b""])
    with pytest.raises(TypeError):
        delimiter(b"\n")  # type: ignore[arg-type]


@pytest.mark.parametrize("strip", [True, False])
def test_line_too_long_is_rejected_as_bytes_accumulate(strip: bool) -> None:
    codec = line(max_length=100, strip=strip)
    assert codec.max_frame_size == 102  # 100 bytes, "\r", "\n"
    # exactly max_length, even with "\r\n": fine
    assert frames_of(codec, [b"x" * 100 + b"\r\n"]) == [b"x" * 100 if strip else
                                                        b"x" * 100 + b"\r\n"]
    # one byte more: FrameTooLarge, even when the delimiter is in the same read
    for wire in (b"x" * 101 + b"\n", b"x" * 101 + b"\r\n"):
        frames, error = run(codec, [wire])
        assert frames == [] and type(error) is FrameTooLarge
    # An endless line fails once 102 bytes without a delimiter are buffered (101 bytes
    # could still be 100 + "\r" before a "\n").
    sim = ConnectionSim(codec)
    sim.feed(b"ok\n" + b"x" * 50)
    sim.feed(b"x" * 26)
    sim.feed(b"x" * 24 + b"\r")
    with pytest.raises(FrameTooLarge):
        sim.feed(b"x")
    assert sim.ring.length == 102


def test_delimiter_too_long_counts_the_content_not_the_delimiter() -> None:
    codec = delimiter([b"\0", b"END"], max_length=4)
    assert frames_of(codec, [b"abcdEND", b"abcd\0"]) == [b"abcd", b"abcd"]
    assert type(run(codec, [b"abcde\0"])[1]) is FrameTooLarge
    # "abcdEN" may still end as "abcd" + "END"; one more byte cannot
    sim = ConnectionSim(codec)
    sim.feed(b"abcdEN")
    with pytest.raises(FrameTooLarge):
        sim.feed(b"x")


@pytest.mark.parametrize("piece", [KiB, 1000])
@pytest.mark.parametrize("delims", [[b"\n"], [b"\r\n", b"\n", b"\0"]])
def test_delimited_one_mib_line_in_pieces_is_scanned_in_linear_time(
    piece: int, delims: list[bytes]
) -> None:
    codec = delimiter(delims, max_length=2 * MiB)
    long_line = b"z" * MiB
    # A short line split across reads first, so the long one starts mid-ring.
    stream = b"short" + b"\n" + long_line + b"\n" + b"tail\n"
    ring = CountingRing(min_capacity=64)
    sim = ConnectionSim(codec, ring=ring)
    sim.feed(stream[:3])
    for pos in range(3, len(stream), piece):
        sim.feed(stream[pos : pos + piece])
    assert sim.frames == [b"short", long_line, b"tail"]
    reads = len(stream) // piece + 2
    assert ring.find_calls <= 2 * len(delims) * reads
    # every byte is searched about once per delimiter (plus the delimiter's overlap)
    assert ring.searched <= len(delims) * (len(stream) + 4 * reads)
    assert ring.full_copies == 0
    assert ring.moved <= 2 * len(stream)


def test_line_wrapped_ring_is_searched_without_copying_it_all() -> None:
    # Force the ring's bytes to wrap around the end of its storage while a line grows.
    codec = line(max_length=MiB)
    ring = CountingRing(min_capacity=4096, compact_max=0)
    sim = ConnectionSim(codec, ring=ring)
    sim.feed(b"x" * 3000)
    assert sim.feed(b"\n" + b"y" * 900) == [b"x" * 3000]  # the ring now starts at 3001
    for _ in range(60):
        sim.feed(b"y" * 50)
    assert sim.feed(b"\n") == [b"y" * 3900]
    assert ring.full_copies == 0
    assert 0 < ring.moved <= 4096  # the wrapped bytes were moved once, not copied per read


# -- varint ------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=400), max_size=10), st.data())
def test_varint_any_split_gives_the_frames(payloads: list[bytes], data: st.DataObject) -> None:
    codec = varint()
    stream = b"".join(codec.encode(p) for p in payloads)
    assert frames_of(codec, data.draw(splits_of(stream))) == payloads
    # construct's declaration reads the same frames
    assert cs.GreedyRange(codec.schema).parse(stream) == payloads


@given(st.binary(max_size=400), st.data())
def test_varint_truncated_frame_yields_nothing(payload: bytes, data: st.DataObject) -> None:
    wire = varint().encode(payload)
    cut = data.draw(st.integers(0, len(wire) - 1))
    if cut:
        assert frames_of(varint(), data.draw(splits_of(wire[:cut]))) == []


@given(st.integers(0, 2**64 - 1))
def test_varint_prefix_matches_construct(value: int) -> None:
    assert encode_varint(value) == cs.VarInt.build(value)
    assert cs.VarInt.parse(encode_varint(value)) == value


@given(st.booleans(), st.data())
def test_varint_arbitrary_bytes_same_outcome_for_any_split(
    canonical: bool, data: st.DataObject
) -> None:
    codec = varint(max_frame_size=30, canonical=canonical)
    stream = data.draw(valid_then_garbage(codec, st.binary(max_size=30)))
    if stream:
        check_split_invariance(codec, stream, data.draw(splits_of(stream)))


@pytest.mark.parametrize(
    ("wire", "error", "canonical"),
    [
        (b"\x80" * 10 + b"\x00", FrameError, False),  # 11 bytes
        (b"\xff" * 9 + b"\x02", FrameError, False),  # 2**64: over 64 bits
        (b"\x85\x00", FrameError, True),  # 5, not minimal
        (encode_varint(MiB + 1), FrameTooLarge, False),
    ],
)
def test_varint_bad_prefixes(wire: bytes, error: type[Exception], canonical: bool) -> None:
    for chunks in ([wire], [wire[i : i + 1] for i in range(len(wire))]):
        frames, got = run(varint(canonical=canonical), chunks)
        assert frames == [] and type(got) is error


def test_varint_non_minimal_prefix_is_accepted_by_default() -> None:
    assert frames_of(varint(), [b"\x85\x00hello", b"\x80\x80\x80\x80\x00"]) == [b"hello", b""]
    assert frames_of(varint(), [b"\x80" * 9 + b"\x00"]) == [b""]  # 10 bytes: the most
    # 2**64 - 1 is a valid 10-byte prefix, just too large
    assert type(run(varint(), [b"\xff" * 9 + b"\x01"])[1]) is FrameTooLarge
    assert varint().encode(b"x" * 300)[:2] == b"\xac\x02"  # encode writes the minimal form


def test_varint_oversize_rejected_before_the_body() -> None:
    sim = ConnectionSim(varint(max_frame_size=1000))
    with pytest.raises(FrameTooLarge) as info:
        sim.feed(encode_varint(10 * MiB) + b"x" * 10)
    assert info.value.size == 10 * MiB
    sim = ConnectionSim(varint(max_frame_size=1000))
    sim.feed(b"\x80")
    with pytest.raises(FrameTooLarge):
        sim.feed(b"\x80\x80\x05")


def test_varint_one_mib_frame_in_1_kib_pieces_is_linear() -> None:
    codec = varint(max_frame_size=2 * MiB)
    payload = bytes(range(256)) * (MiB // 256)
    wire = codec.encode(payload) + codec.encode(b"x")
    ring = CountingRing()
    sim = ConnectionSim(codec, ring=ring)
    for pos in range(0, len(wire), KiB):
        sim.feed(wire[pos : pos + KiB])
    assert sim.frames == [payload, b"x"]
    assert ring.copied <= len(wire)
    assert ring.moved == 0 and ring.full_copies == 0


# -- real sockets ------------------------------------------------------------------------


class Echo(gevwire.Handler):
    """Echoes frames; a discarded frame (a non-fatal error) is answered with its size."""

    def __init__(self, reply: Callable[[Any], Any] | None = None) -> None:
        self.reply = reply
        self.errors: list[BaseException] = []

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame if self.reply is None else self.reply(frame)

    def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
        if isinstance(error, FrameTooLarge) and not error.fatal:
            conn.send(b"discarded %d" % error.size)
            return
        self.errors.append(error)
        conn.close()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            raise ConnectionError(f"EOF with {size} bytes still expected")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def send_in_pieces(sock: socket.socket, data: bytes, piece: int) -> None:
    """Separate writes with tiny pauses, so the server sees many reads."""
    for pos in range(0, len(data), piece):
        sock.sendall(data[pos : pos + piece])
        if pos // piece % 16 == 0:
            time.sleep(0.001)


def echo_roundtrip(codec: BaseCodec, messages: list[Any], expected_wire: bytes,
                   handler: Echo | None = None, piece: int = 777) -> Echo:
    handler = handler or Echo()
    wire = b"".join(codec.encode(m) for m in messages)
    with gevwire.Server(handler, address="127.0.0.1:0", codec=codec) as server, \
            socket.create_connection(server.address[:2], timeout=10) as client:
        sender = threading.Thread(target=send_in_pieces, args=(client, wire, piece))
        sender.start()
        got = recv_exactly(client, len(expected_wire))
        sender.join(10)
    assert got == expected_wire
    assert handler.errors == []
    return handler


def test_socket_fixed_length_echo() -> None:
    codec = fixed_length(10)
    messages = [b"%010d" % i for i in range(2000)]
    echo_roundtrip(codec, messages, b"".join(messages))


def test_socket_length_field_echo_and_discard() -> None:
    codec = length_field(length_field_length=2, initial_bytes_to_strip=2, max_frame_size=4000,
                         on_oversize="discard")
    messages = [bytes([i % 256]) * (i % 3000) for i in range(300)]
    oversized = b"\xff\xff" + bytes(0xFFFF)  # announced 65537 bytes in all
    wire = b"".join(codec.encode(m) for m in messages)
    expected = wire + codec.encode(b"discarded 65537") + codec.encode(b"last")
    handler = Echo()
    with gevwire.Server(handler, address="127.0.0.1:0", codec=codec) as server, \
            socket.create_connection(server.address[:2], timeout=10) as client:
        send_in_pieces(client, wire + oversized + codec.encode(b"last"), 1500)
        assert recv_exactly(client, len(expected)) == expected
    assert handler.errors == []
    # close mode: the connection is closed from the oversized header alone
    close_codec = length_field(length_field_length=2, initial_bytes_to_strip=2,
                               max_frame_size=4000)
    handler = Echo()
    with gevwire.Server(handler, address="127.0.0.1:0", codec=close_codec) as server, \
            socket.create_connection(server.address[:2], timeout=10) as client:
        # one read: the frame before the bad header is still answered
        client.sendall(close_codec.encode(b"hi") + b"\xff\xff")
        assert recv_exactly(client, 4) == close_codec.encode(b"hi")
        assert client.recv(100) == b""
        assert len(handler.errors) == 1 and isinstance(handler.errors[0], FrameTooLarge)


def test_socket_line_echo() -> None:
    codec = line(encoding="utf-8")
    messages = [f"line {i}: {'é' * (i % 50)}" for i in range(1000)] + ["x" * 60000]
    # sent as "...\r\n" (the "\r" is stripped), answered upper-cased with "\n"
    expected = "".join(m.upper() + "\n" for m in messages).encode()
    echo_roundtrip(codec, [m + "\r" for m in messages], expected, Echo(reply=str.upper),
                   piece=999)


def test_socket_delimiter_echo() -> None:
    codec = delimiter([b"\r\n", b"\0"], max_length=5000)
    messages = [b"msg-%d" % i * (i % 7) for i in range(1500)]
    echo_roundtrip(codec, messages, b"".join(m + b"\r\n" for m in messages), piece=333)


def test_socket_varint_echo() -> None:
    codec = varint()
    messages = [bytes([i % 256]) * (i * 37 % 5000) for i in range(400)] + [b"z" * 300_000]
    echo_roundtrip(codec, messages, b"".join(codec.encode(m) for m in messages), piece=4096)


def test_raw_is_still_exported() -> None:
    assert isinstance(raw(), gevwire.RawCodec)
    assert isinstance(varint(), VarintCodec)


# -- encode_into (how a connection gathers replies) ---------------------------------------

def resp_codec() -> BaseCodec:
    from gevwire.codecs.resp import resp

    return resp()


class _Count(int):
    """An int subclass: RESP finds its encoder through isinstance."""


ENCODE_INTO_CASES = [
    ("length_field", lambda: length_field(), b"payload"),
    ("length_field_offset", lambda: length_field(length_field_offset=2, length_field_length=2),
     b"hdpayload"),
    ("length_field_strip", lambda: length_field(initial_bytes_to_strip=4), "text"),
    ("varint", lambda: varint(), b"x" * 300),
    ("line", lambda: line(), b"a line"),
    ("fixed", lambda: fixed_length(4), b"four"),
    ("raw", lambda: raw(), bytearray(b"raw")),
    ("resp", lambda: resp_codec(), [b"SET", "k", 1, None]),
    ("resp_subclass", lambda: resp_codec(), _Count(7)),
]


@pytest.mark.parametrize(("name", "make", "message"), ENCODE_INTO_CASES,
                         ids=[c[0] for c in ENCODE_INTO_CASES])
def test_encode_into_appends_exactly_what_encode_returns(
        name: str, make: Callable[[], BaseCodec], message: Any) -> None:
    codec = make()
    parts: list[bytes] = [b"earlier"]
    size = codec.encode_into(parts, message)
    assert parts[0] == b"earlier"
    assert b"".join(parts[1:]) == codec.encode(message)
    assert size == len(codec.encode(message))
    assert all(type(p) is bytes for p in parts)


def test_encode_into_errors_leave_the_parts_alone() -> None:
    parts: list[bytes] = []
    with pytest.raises(EncodeError):
        varint().encode_into(parts, 12)
    with pytest.raises(EncodeError):
        length_field(initial_bytes_to_strip=9).encode_into(parts, b"ab")
    with pytest.raises(EncodeError):
        length_field(length_field_length=1).encode_into(parts, b"x" * 300)
    assert parts == []


# -- decode(ring) once per frame: cut ahead with the batch path --------------------------

CUT_AHEAD = {
    # codec, frames, bytes that end the stream with an error (None: a partial frame)
    "length_field": (lambda: length_field(length_field_length=2, max_frame_size=64),
                     [b"a", b"bb", b"", b"ccc"], struct.pack(">H", 500)),
    "line": (lambda: line(max_length=8), [b"one", b"two", b"", b"four"], b"x" * 20 + b"\n"),
    "varint": (lambda: varint(max_frame_size=64), [b"a", b"bb", b"", b"ccc"],
               encode_varint(500)),
    "mqtt": (lambda: gevwire.codecs.MqttCodec(), [b"\xc0\x00", b"\xd0\x00", b"\xe0\x00"], None),
    "fixed_length": (lambda: fixed_length(2), [b"ab", b"cd", b"ef"], None),
}


def _cut_ahead_stream(name: str) -> tuple[BaseCodec, list[bytes], list[Any]]:
    """The codec, its encoded frames, and what they decode to."""
    make, payloads, _ = CUT_AHEAD[name]
    codec = make()
    encoded = payloads if name == "mqtt" else [codec.encode(p) for p in payloads]
    frames = ring_only(codec, b"".join(encoded))[0]
    assert len(frames) == len(payloads)
    return codec, encoded, frames


@pytest.mark.parametrize("name", sorted(CUT_AHEAD))
def test_decode_once_per_frame_cuts_the_rest_ahead_in_order(name: str) -> None:
    codec, encoded, expected = _cut_ahead_stream(name)
    stream = b"".join(encoded)
    partial = stream[:1]  # the start of a frame, after the whole ones
    decoder = codec.decoder()
    ring = RingBuffer()
    ring.write(stream + partial)
    got = [decoder.decode(ring)]
    # The rest of the buffered frames wait, cut: reads must not jump the queue, and
    # their bytes stay in the ring until the last of them is returned.
    assert decoder.decode_view(memoryview(stream)) == ([], 0)
    assert decoder.decode_bytes(stream) == ([], 0)
    assert ring.length == len(stream) - len(encoded[0]) + len(partial)
    while (frame := decoder.decode(ring)) is not None:
        got.append(frame)
    assert got == expected
    assert ring.to_bytes() == partial
    assert decoder.decode_bytes(stream)[0] == expected  # the fast paths are back


@pytest.mark.parametrize("name", sorted(n for n in CUT_AHEAD if CUT_AHEAD[n][2] is not None))
def test_frames_cut_ahead_come_before_the_error_after_them(name: str) -> None:
    codec, encoded, expected = _cut_ahead_stream(name)
    stream = b"".join(encoded)
    bad = CUT_AHEAD[name][2]
    assert bad is not None
    decoder = codec.decoder()
    ring = RingBuffer()
    ring.write(stream + bad)
    got: list[Any] = []
    with pytest.raises(FrameTooLarge):
        while (frame := decoder.decode(ring)) is not None:
            got.append(frame)
    assert got == expected


def test_gevwire_codecs_is_an_attribute_after_a_bare_import_gevwire() -> None:
    """The README writes ``gevwire.codecs.resp``; a fresh interpreter must find it after
    ``import gevwire`` alone (and ``gevwire.nope`` must still be an AttributeError)."""
    import subprocess
    import sys

    code = ("import gevwire; print(gevwire.codecs.resp.RespCodec.__name__)\n"
            "try:\n    gevwire.nope\nexcept AttributeError as e:\n    print('ok', e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split("\n")
    assert out[0] == "RespCodec"
    assert out[1] == "ok module 'gevwire' has no attribute 'nope'"
