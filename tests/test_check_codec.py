"""check_codec: passes on Codec(schema) and every ready-made codec; finds planted framing
bugs within its default budget; catches wrong exceptions, unbounded buffering, hangs."""

from __future__ import annotations

import dataclasses
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest
from construct import len_, this
from hypothesis import strategies as st

from gevwire import BaseCodec, Codec, Decoder, FrameTooLarge, RingBuffer, codecs
from gevwire.testing import CodecCheckFailed, check_codec, feed

HEADER = struct.Struct(">I")


# -- planted bugs ---------------------------------------------------------------------------


class PlantedDecoder(Decoder):
    """A 4-byte big-endian payload length, then the payload; frames are the payloads.

    ``bug="split"``: ``decode`` (the ring path, which cuts frames that arrived in
    pieces) thinks a frame is whole one byte early and hands it on without its last byte.
    ``bug="limit"``: a frame of exactly ``max_frame_size`` bytes is rejected (``>=``).
    """

    def __init__(self, limit: int, bug: str | None) -> None:
        self.limit = limit
        self.bug = bug

    def _total(self, n: int) -> int:
        total = HEADER.size + n
        too_big = total >= self.limit if self.bug == "limit" else total > self.limit
        if too_big:
            raise FrameTooLarge(total, self.limit)
        return total

    def decode(self, ring: RingBuffer) -> bytes | None:
        if ring.length < HEADER.size:
            return None
        (n,) = ring.unpack_from(HEADER)
        total = self._total(n)  # type: ignore[arg-type]
        if ring.length < (total - 1 if self.bug == "split" else total):
            return None
        ring.retrieve(HEADER.size)
        return ring.read(n)  # type: ignore[arg-type]

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        frames: list[Any] = []
        pos = 0
        while len(view) - pos >= HEADER.size:
            (n,) = HEADER.unpack_from(view, pos)
            total = self._total(n)
            if len(view) - pos < total:
                break
            frames.append(view[pos + HEADER.size : pos + total].tobytes())
            pos += total
        return frames, pos


class PlantedCodec(BaseCodec):
    def __init__(self, bug: str | None = None, max_frame_size: int = 1 << 20) -> None:
        self.bug = bug
        self.max_frame_size = max_frame_size

    def decoder(self) -> Decoder:
        return PlantedDecoder(self.max_frame_size, self.bug)

    def encode(self, message: Any) -> bytes:
        return HEADER.pack(len(message)) + bytes(message)


PAYLOADS = st.binary(max_size=64)


def test_planted_split_bug_is_found() -> None:
    # Whole frames in one read never show it; check_codec splits the stream.
    assert feed(PlantedCodec("split"), [PlantedCodec().encode(b"abc")]) == [b"abc"]
    with pytest.raises(CodecCheckFailed) as info:
        check_codec(PlantedCodec("split"), messages=PAYLOADS)
    assert info.value.prop == "splits"
    assert "gave frames" in str(info.value)


def test_planted_limit_bug_is_found() -> None:
    with pytest.raises(CodecCheckFailed) as info:
        check_codec(PlantedCodec("limit"), messages=PAYLOADS)
    assert info.value.prop == "max_frame_size"
    assert "FrameTooLarge" in str(info.value)


def test_the_correct_codec_passes() -> None:
    start = time.monotonic()
    report = check_codec(PlantedCodec(), messages=PAYLOADS)
    assert report.passed == ["round trip", "splits", "truncation", "max_frame_size", "garbage"]
    assert report.skipped == {"fast decoder": "the codec has no fast decoder"}
    assert time.monotonic() - start < 10  # the default budget is seconds, not minutes


class WrappedDecoder(Decoder):
    """Delegates to another decoder, with one fault injected by subclasses."""

    def __init__(self, inner: Decoder) -> None:
        self.inner = inner

    def decode(self, ring: RingBuffer) -> Any | None:
        return self.inner.decode(ring)

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        return self.inner.decode_view(view)


class FaultyCodec(PlantedCodec):
    def __init__(self, make: Callable[[Decoder], Decoder], **kw: Any) -> None:
        super().__init__(**kw)
        self.make = make

    def decoder(self) -> Decoder:
        return self.make(PlantedDecoder(self.max_frame_size, None))


class WrongError(WrappedDecoder):
    """Rejects an oversized length with ValueError instead of FrameTooLarge."""

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        if len(view) >= 4 and HEADER.unpack_from(view)[0] > 1 << 20:
            raise ValueError("frame too large")
        return self.inner.decode_view(view)


class Unbounded(WrappedDecoder):
    """Never checks the limit: a header announcing 4 GiB makes it buffer forever."""

    def decode(self, ring: RingBuffer) -> Any | None:
        if ring.length < 4 or ring.length < 4 + ring.unpack_from(HEADER)[0]:  # type: ignore[operator]
            return None
        (n,) = ring.unpack_from(HEADER)
        ring.retrieve(4)
        return ring.read(n)  # type: ignore[arg-type]

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        return [], 0


class Hangs(WrappedDecoder):
    """Loops forever on an empty frame (it forgets to step past its header)."""

    stop = threading.Event()  # set by the test, so the stuck thread ends at last

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        while len(view) >= 4 and HEADER.unpack_from(view)[0] == 0 and not self.stop.is_set():
            continue
        return self.inner.decode_view(view)


class NoProgress(WrappedDecoder):
    def decode(self, ring: RingBuffer) -> Any | None:
        return b"" if ring.length else None  # a frame, but nothing consumed


@pytest.mark.parametrize(("make", "prop", "words"), [
    (WrongError, "garbage", "not a FrameError"),
    (Unbounded, "garbage", "bytes buffered"),
    (Hangs, "round trip", "did not return within"),
    (NoProgress, "splits", "without consuming bytes"),
], ids=["other exception", "unbounded buffering", "hang", "no progress"])
def test_garbage_faults_are_found(make: Callable[[Decoder], Decoder], prop: str,
                                  words: str) -> None:
    Hangs.stop.clear()
    try:
        with pytest.raises(CodecCheckFailed) as info:
            check_codec(FaultyCodec(make), messages=PAYLOADS, timeout=0.3)
    finally:
        Hangs.stop.set()
    assert info.value.prop == prop
    assert words in str(info.value)


def test_a_fast_decoder_that_differs_from_construct_is_found() -> None:
    codec = Codec(SCHEMAS["header"])
    assert codec.fast is not None
    good = codec.fast.decode

    def wrong(data: Any, offset: int = 0, end: int | None = None) -> Any:
        value = good(data, offset, end)
        value.flags = value.flags & 0x7F  # loses the top bit
        return value

    codec.fast = dataclasses.replace(codec.fast, decode=wrong)
    with pytest.raises(CodecCheckFailed) as info:
        check_codec(codec)
    assert info.value.prop == "fast decoder"


def test_a_schema_that_cannot_delimit_a_stream_fails() -> None:
    codec = Codec(c.Struct("n" / c.Int8ub, "rest" / c.GreedyBytes))
    with pytest.raises(CodecCheckFailed) as info:
        check_codec(codec)
    assert info.value.prop in ("splits", "truncation")


# -- Codec(schema) -------------------------------------------------------------------------

SCHEMAS: dict[str, Any] = {
    "header": c.Struct(
        "kind" / c.Enum(c.Int8ub, ping=1, pong=2, data=3),
        "flags" / c.Int8ub,
        "id" / c.Int16ub,
        "length" / c.Int32ub,
        "payload" / c.Bytes(this.length),
    ),
    "prefixed": c.Prefixed(c.Int32ub, c.GreedyBytes),
    "varint": c.Prefixed(c.VarInt, c.GreedyBytes),
    "prefixed_generic": c.Prefixed(c.Int16ub, c.Struct("name" / c.CString("utf8"),
                                                      "n" / c.Int8ub)),
    "generic": c.Struct("name" / c.PascalString(c.Int8ub, "utf8"), "tag" / c.CString("ascii")),
    "switch_rebuild": c.Struct(
        "kind" / c.Enum(c.Int8ub, text=1, nums=2),
        "len" / c.Rebuild(c.Int16ub, len_(this.body)),
        "body" / c.Switch(this.kind, {
            "text": c.Bytes(this.len),
            "nums": c.Array(this.len, c.Int16ub),
        }),
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_codec_schemas_pass(name: str) -> None:
    report = check_codec(Codec(SCHEMAS[name]), examples=50)
    assert "splits" in report.passed and "garbage" in report.passed


def test_small_limit_in_discard_mode_passes() -> None:
    codec = Codec(SCHEMAS["header"], max_frame_size=40, on_oversize="discard")
    assert "max_frame_size" in check_codec(codec, examples=50).passed


def test_codecs_may_offer_examples() -> None:
    class Offers(PlantedCodec):
        def example_strategy(self) -> st.SearchStrategy[Any]:
            return st.binary(min_size=1, max_size=8)

        def example_frame(self, message: Any) -> Any:
            return message

    assert check_codec(Offers(), examples=20).passed
    with pytest.raises(TypeError, match="messages="):
        check_codec(PlantedCodec())


# -- the ready-made codecs -----------------------------------------------------------------

NO_NL = st.binary(max_size=64).filter(lambda b: b"\n" not in b)

CODECS: dict[str, tuple[Callable[[], BaseCodec], Any, Callable[[Any], Any] | None]] = {
    "raw": (codecs.raw, None, None),
    "fixed_length": (lambda: codecs.fixed_length(4), st.binary(min_size=4, max_size=4), None),
    "fixed_length(flood guard)": (
        lambda: codecs.fixed_length(3, max_frames_per_read=64),
        st.binary(min_size=3, max_size=3), None,
    ),
    "length_field(strip)": (
        lambda: codecs.length_field(length_field_length=2, initial_bytes_to_strip=2),
        PAYLOADS, None,
    ),
    "length_field(keep header)": (
        lambda: codecs.length_field(length_field_length=4),
        PAYLOADS, lambda m: HEADER.pack(len(m)) + m,
    ),
    "length_field(offset)": (
        lambda: codecs.length_field(length_field_offset=2, length_field_length=2,
                                    initial_bytes_to_strip=4),
        st.binary(min_size=2, max_size=64), lambda m: m[2:],
    ),
    "length_field(3 bytes, little, counts itself)": (
        lambda: codecs.length_field(byte_order="little", length_field_length=3,
                                    length_adjustment=-3, initial_bytes_to_strip=3,
                                    max_frame_size=512),
        PAYLOADS, None,
    ),
    "length_field(discard)": (
        lambda: codecs.length_field(length_field_length=2, initial_bytes_to_strip=2,
                                    max_frame_size=40, on_oversize="discard"),
        st.binary(max_size=38), None,
    ),
    "line": (codecs.line, NO_NL.filter(lambda b: not b.endswith(b"\r")), None),
    "line(crlf, utf-8)": (
        lambda: codecs.line(b"\r\n", encoding="utf-8"),
        st.text(alphabet="ab\r\né\0", max_size=30).filter(lambda s: "\r\n" not in s), None,
    ),
    "line(keep delimiter)": (lambda: codecs.line(strip=False), NO_NL,
                             lambda m: m + b"\n"),
    "delimiter": (
        lambda: codecs.delimiter([b"\0", b"\n"], max_length=100),
        NO_NL.filter(lambda b: b"\0" not in b), None,
    ),
    "varint": (codecs.varint, st.binary(max_size=300), None),
    "varint(canonical)": (lambda: codecs.varint(canonical=True, max_frame_size=200),
                          st.binary(max_size=200), None),
}


@pytest.mark.parametrize("name", sorted(CODECS))
def test_ready_made_codecs_pass(name: str) -> None:
    make, messages, frame_of = CODECS[name]
    report = check_codec(make(), messages=messages, frame_of=frame_of, examples=60)
    assert {"round trip", "splits", "max_frame_size", "garbage"} <= set(report.passed)


def test_decode_progress_allows_frames_cut_ahead_but_not_a_decoder_that_never_consumes() -> None:
    from gevwire import RingBuffer
    from gevwire.testing import DecodeProgress

    ring = RingBuffer()
    ring.write(b"abc")
    progress = DecodeProgress(ring)
    for frame in (b"a", b"b"):  # two frames returned, their bytes still in the ring
        progress.returned(frame)
    ring.retrieve(3)  # ... consumed with the third
    progress.returned(b"c")
    ring.write(b"xy")
    progress.reset()
    progress.returned(b"x")
    progress.returned(b"x")
    with pytest.raises(RuntimeError, match="loop forever"):
        progress.returned(b"x")  # a third frame from two bytes, none consumed
