"""The framer harness: connection-side frame cutting of valid streams with big frames.

The codec harnesses fuzz the bytes; this one fuzzes the *delivery*: streams of valid
frames from a few bytes to three spare buffers (64 KiB each) long, split at arbitrary
points and at the edges that matter (the spare buffer's size, the ring's capacity, frame
boundaries), fed through :class:`gevwire.testing.FrameCutter` and
:func:`gevwire.testing.feed` exactly as a connection reads: the view path while the ring
is empty, the ring's free space plus the spare buffer while it holds a partial frame.
The frames must be the ones encoded, in order, whatever the split, equal to one-shot
decoding and to ``decode`` alone, with nothing left buffered.

A case's plan: ``{"codec": key, "frames": [[size, fill], ...], "cuts": [...], "ring":
n}``; its data is the encoded stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import construct  # type: ignore[import-untyped]
from construct import this

from fuzzkit.case import Case, split
from fuzzkit.codec_target import compare, decode_only, feed_reads, same
from fuzzkit.target import RINGS, ByteReader, HarnessFailure, Target
from gevwire import codecs
from gevwire.codec import BaseCodec, Codec
from gevwire.loop import SPARE_SIZE
from gevwire.testing import feed

if TYPE_CHECKING:
    from hypothesis.strategies import DrawFn, SearchStrategy

__all__ = ["FRAMER_CODECS", "FramerTarget", "payload"]

S = SPARE_SIZE
#: Frame sizes on the edges of the spare buffer and of the rings.
EDGES = (0, 1, 2, 15, 16, 17, 63, 64, 65, 4095, 4096, 4097, S - 5, S - 4, S - 1, S, S + 1,
         S + 4, 2 * S - 3, 2 * S + 7)
MAX_SIZE = 3 * S  # frames are smaller
_BASE = bytes(range(251))  # a prime period: a frame shifted by a few bytes never matches
_NO_NEWLINE = bytes.maketrans(b"\n\r", b"..")

_HEADER = construct.Struct("kind" / construct.Int8ub, "length" / construct.Int32ub,
                           "payload" / construct.Bytes(this.length))
_FIXED = 4099


def payload(size: int, fill: int) -> bytes:
    """``size`` bytes of a pattern that starts at ``fill``."""
    start = fill % len(_BASE)
    return ((_BASE[start:] + _BASE[:start]) * (size // len(_BASE) + 1))[:size]


def _line_frame(size: int, fill: int) -> bytes:
    return payload(size, fill).translate(_NO_NEWLINE)


def _header_frame(size: int, fill: int) -> Any:
    return construct.Container(kind=fill & 0xFF, length=size, payload=payload(size, fill))


#: key -> (codec factory, frame for (size, fill), which is also the message to encode).
FRAMER_CODECS: dict[str, tuple[Callable[[], BaseCodec], Callable[[int, int], Any]]] = {
    "length_field": (lambda: codecs.length_field(initial_bytes_to_strip=4), payload),
    "varint": (codecs.varint, payload),
    "line": (lambda: codecs.line(b"\r\n", max_length=MAX_SIZE), _line_frame),
    "prefixed": (lambda: Codec(construct.Prefixed(construct.Int32ub, construct.GreedyBytes)),
                 payload),
    "header": (lambda: Codec(_HEADER), _header_frame),
    "fixed": (lambda: codecs.fixed_length(_FIXED), lambda size, fill: payload(_FIXED, fill)),
}


def _sizes(frames: list[Any]) -> list[int]:
    return [len(f) if isinstance(f, bytes) else len(f.payload) for f in frames[:6]]


class FramerTarget(Target):
    name = "framer"
    about = "frame cutting as a connection reads, big frames, edge splits"

    def __init__(self, max_frames: int = 5) -> None:
        self.max_frames = max_frames

    def check(self, case: Case) -> None:
        plan = case.plan
        make, frame_for = FRAMER_CODECS[plan["codec"]]
        codec = make()
        expected = [frame_for(int(size), int(fill)) for size, fill in plan["frames"]]
        stream = case.data
        chunks = split(stream, plan.get("cuts", []))
        ring = int(plan.get("ring", 4096))
        reads = feed_reads(codec, chunks, ring)
        label = f"{len(chunks)} reads (ring {ring})"
        compare("one read", feed_reads(codec, [stream] if stream else []), label, reads)
        compare("decode() alone", decode_only(codec, stream), label, reads)
        frames = reads.frames
        if len(reads.events) != len(frames) or reads.buffered:
            raise HarnessFailure(f"a valid stream gave errors or left {reads.buffered} bytes "
                                 f"buffered: {reads.events[:4]!r}")
        if len(frames) != len(expected) or not all(map(same, frames, expected)):
            raise HarnessFailure(f"{label} gave {len(frames)} frames, expected "
                                 f"{len(expected)}: sizes {_sizes(frames)}, expected "
                                 f"{_sizes(expected)}")
        via_feed = feed(codec, chunks)
        if len(via_feed) != len(frames) or not all(map(same, via_feed, frames)):
            raise HarnessFailure("gevwire.testing.feed disagrees with FrameCutter")

    @staticmethod
    def build(key: str, frames: list[list[int]], cuts: list[int], ring: int) -> Case:
        """The case for ``frames`` (``[size, fill]`` each) encoded by codec ``key``."""
        make, frame_for = FRAMER_CODECS[key]
        codec = make()
        stream = b"".join(codec.encode(frame_for(size, fill)) for size, fill in frames)
        cuts = sorted({c for c in cuts if 0 < c < len(stream)})
        return Case(stream, {"codec": key, "frames": frames, "cuts": cuts, "ring": ring})

    # -- inputs --------------------------------------------------------------------------

    def cases(self) -> SearchStrategy[Case]:
        from hypothesis import strategies as st

        sizes = st.one_of(st.sampled_from(EDGES), st.integers(0, MAX_SIZE - 1))
        frame = st.tuples(sizes, st.integers(0, 255)).map(list)

        @st.composite
        def draw_case(draw: DrawFn) -> Case:
            key = draw(st.sampled_from(sorted(FRAMER_CODECS)), label="codec")
            frames = draw(st.lists(frame, min_size=1, max_size=self.max_frames))
            ring = draw(st.sampled_from(RINGS), label="ring")
            case = self.build(key, frames, [], ring)
            n = len(case.data)
            # Cut near where a connection's reads change path: the spare buffer's size,
            # the ring's capacity, and a few bytes either side.
            near = st.builds(lambda base, d: base + d,
                             st.sampled_from([S, 2 * S, ring, n - S, n // 2]),
                             st.integers(-3, 3))
            cuts = draw(st.lists(st.one_of(st.integers(0, n), near), max_size=8),
                        label="cuts")
            return Case(case.data, {**case.plan, "cuts": sorted({c for c in cuts
                                                                 if 0 < c < n})})

        return draw_case()

    def from_bytes(self, raw: bytes) -> Case:
        """Layout: codec, ring, frame count, 4 bytes a frame (kind, size as 2 bytes,
        fill), cut count, 3 bytes a cut."""
        reader = ByteReader(raw)
        keys = sorted(FRAMER_CODECS)
        key = keys[reader.byte() % len(keys)]
        ring = RINGS[reader.byte() % len(RINGS)]
        frames = []
        for _ in range(reader.byte() % self.max_frames + 1):
            kind, value, fill = reader.byte(), reader.u16(), reader.byte()
            size = EDGES[value % len(EDGES)] if kind & 1 else value + (kind >> 1) % 3 * S
            frames.append([size, fill])
        cuts = [reader.byte() << 16 | reader.u16() for _ in range(reader.byte() % 16)]
        case = self.build(key, frames, [], ring)
        n = len(case.data)
        return Case(case.data, {**case.plan, "cuts": sorted({c % (n + 1) for c in cuts}
                                                            - {0, n})})

    def to_bytes(self, case: Case) -> bytes:
        plan = case.plan
        keys = sorted(FRAMER_CODECS)
        ring = int(plan.get("ring", 4096))
        frames = list(plan["frames"])[: self.max_frames]
        out = bytearray([keys.index(plan["codec"]), RINGS.index(ring) if ring in RINGS else 2,
                         len(frames) - 1])
        for size, fill in frames:
            size = min(int(size), MAX_SIZE - 1)
            out += bytes([2 * (size // S)]) + (size % S).to_bytes(2, "big") + bytes([fill])
        cuts = list(plan.get("cuts", []))[:15]
        out.append(len(cuts))
        for cut in cuts:
            out += min(cut, (1 << 24) - 1).to_bytes(3, "big")
        return bytes(out)
