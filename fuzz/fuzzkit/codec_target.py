"""Codec harnesses: one stream of bytes, cut into reads three ways, must give one answer.

For a case (a stream, the points where it is split into reads, the input ring's size,
and optionally the codec's limit), :class:`CodecTarget` checks:

- *one answer*: the frames and errors (in order; errors by class and ``fatal``) are the
  same when the stream arrives in one read, in the case's reads (fed exactly as a
  connection feeds its decoder, :class:`gevwire.testing.FrameCutter`), and when it is
  cut by ``Decoder.decode`` alone from one ring (the contract, no ``decode_view``); and
  the same number of bytes is left buffered;
- *only FrameError*: any other exception from the decoder is a bug, as is a decoder
  that returns more frames without consuming bytes than there are bytes buffered;
- *bounded*: after every read, at most the codec's ``max_frame_size`` + 16 bytes stay
  buffered (unless the stream already failed);
- *re-encoding*: each decoded frame, encoded again, reads back as exactly that frame.

A case that cannot finish is a hang (:func:`fuzzkit.target.time_limit`).
"""

from __future__ import annotations

import io
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import construct  # type: ignore[import-untyped]

from fuzzkit.case import Case, split
from fuzzkit.target import RINGS, ByteReader, HarnessFailure, HarnessHang, Target
from gevwire._fastcodec import FrameLengthError
from gevwire.codec import BaseCodec, Codec
from gevwire.errors import FrameError
from gevwire.ringbuffer import COMPACT_MAX, BufferPool, RingBuffer
from gevwire.testing import DecodeProgress, FrameCutter
from gevwire.testing import same_frames as same  # the equality check_codec uses

if TYPE_CHECKING:
    from hypothesis.strategies import DrawFn, SearchStrategy

__all__ = ["SKIP", "SLACK", "CodecTarget", "ConstructTarget", "Feed", "compare", "decode_only",
           "feed_reads", "same"]

#: Bytes a decoder may hold beyond ``max_frame_size`` (a length prefix the limit does
#: not count, as a varint codec's).  The same slack as ``check_codec``'s.
SLACK = 16

#: Returned by a target's ``reencode`` for a frame that is not expected to re-encode to
#: itself (a line ending in ``\r`` under ``strip_cr``, documented as read back without it).
SKIP: Any = object()

# Error bytes ops for damaged streams: a byte set to one of these often hits an edge.
_EDGE_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)


@dataclass
class Feed:
    """What a decoder made of a stream: events in order, and what it left buffered.

    An event is ``("frame", frame)`` or ``("error", class name, fatal)``.
    """

    events: list[tuple[Any, ...]] = field(default_factory=list)
    buffered: int = 0
    failed: bool = False

    @property
    def frames(self) -> list[Any]:
        return [e[1] for e in self.events if e[0] == "frame"]

    def error(self, exc: BaseException, how: str) -> None:
        if isinstance(exc, HarnessHang):
            raise exc
        if not isinstance(exc, FrameError):
            raise HarnessFailure(f"{how} raised {exc!r}, not a FrameError") from exc
        self.events.append(("error", type(exc).__name__, exc.fatal))
        if exc.fatal:
            self.failed = True


def feed_reads(codec: BaseCodec, chunks: Sequence[bytes], ring: int = 4096,
               bound: int | None = None, view_reads: bool = False) -> Feed:
    """Feed ``chunks`` (one read each) as a connection does; see :class:`Feed`.

    With ``bound``, more than that many bytes buffered after a read is a failure.  A
    ring under 4096 bytes never moves bytes to its front, so it wraps around often.
    ``view_reads``: reads go to ``decode_view`` (io_uring), not ``decode_bytes`` (epoll).
    """
    cutter = FrameCutter(codec, ring_capacity=ring,
                         compact_max=0 if ring < 4096 else COMPACT_MAX, view_reads=view_reads)
    out = Feed()
    for i, chunk in enumerate(chunks):
        try:
            for frame, error in cutter.cut(chunk):
                if error is None:
                    out.events.append(("frame", frame))
                else:
                    out.error(error, f"read {i} of {len(chunks)}")
        except RuntimeError as exc:  # FrameCutter: what would hang a connection
            raise HarnessFailure(f"read {i} of {len(chunks)}: {exc}") from exc
        if cutter.failed is not None:
            out.failed = True
            break
        if bound is not None and cutter.buffered > bound:
            raise HarnessFailure(f"{cutter.buffered} bytes buffered after read {i} of "
                                 f"{len(chunks)}: more than max_frame_size + {SLACK} = {bound}")
    out.buffered = cutter.buffered
    return out


def decode_only(codec: BaseCodec, stream: bytes) -> Feed:
    """The whole stream in one ring, cut by ``decode`` alone (the decoder contract)."""
    decoder = codec.decoder()
    ring = RingBuffer(4096, pool=BufferPool())
    ring.write(stream)
    out = Feed()
    progress = DecodeProgress(ring)
    while ring.length and not out.failed:
        try:
            frame = decoder.decode(ring)
        except Exception as exc:
            out.error(exc, "decode() on the whole stream")
            progress.reset()
            continue
        if frame is None:
            break
        try:
            progress.returned(frame)
        except RuntimeError as exc:
            raise HarnessFailure(str(exc)) from exc
        out.events.append(("frame", frame))
    out.buffered = ring.length
    return out


def _show(events: list[tuple[Any, ...]], limit: int = 6) -> str:
    shown = [e if e[0] == "error" or len(repr(e[1])) < 60 else (e[0], repr(e[1])[:60] + "...")
             for e in events[:limit]]
    more = f" ... ({len(events)} events)" if len(events) > limit else ""
    return f"{shown!r}{more}"


def compare(name_a: str, a: Feed, name_b: str, b: Feed) -> None:
    """Fail unless ``a`` and ``b`` have the same events (and leftovers, if neither failed)."""
    for i, (x, y) in enumerate(zip(a.events, b.events, strict=False)):
        if x[0] != y[0] or not (same(x[1], y[1]) if x[0] == "frame" else x == y):
            raise HarnessFailure(f"event {i} differs: {name_a} gave {x!r}, {name_b} gave "
                                 f"{y!r}\n  {name_a}: {_show(a.events)}\n  {name_b}: "
                                 f"{_show(b.events)}")
    if len(a.events) != len(b.events):
        raise HarnessFailure(f"{name_a} gave {len(a.events)} events, {name_b} "
                             f"{len(b.events)}\n  {name_a}: {_show(a.events)}\n  {name_b}: "
                             f"{_show(b.events)}")
    if not a.failed and not b.failed and a.buffered != b.buffered:
        raise HarnessFailure(f"{name_a} left {a.buffered} bytes buffered, {name_b} "
                             f"{b.buffered}")


def _identity(frame: Any) -> Any:
    return frame


def _encoder(codec: BaseCodec) -> Callable[[Any], bytes]:
    encode: Callable[[Any], bytes] = codec.encode
    return encode


def _wire_size(message: Any, encoded: bytes) -> int:
    return len(encoded)


def _one_frame(message: Any) -> int:
    return 1


def _never(message: Any) -> bool:
    return False


@dataclass(repr=False)
class CodecTarget(Target):
    """A harness for one codec configuration: see the module docstring.

    - ``make(limit)``: a fresh codec whose limit is ``limit``, applied the way the codec
      counts it (``max_frame_size``, a line's ``max_length``, a fixed frame's size);
      ``limit`` is the default, best small so that limits are hit often;
    - ``messages``: valid messages, from which hypothesis builds streams (then damages
      some); for a codec whose ``encode`` does not make its frames, ``encoder(codec)``
      gives the function that does (a separate prepender);
    - ``limit_of(message, encoded)``: the ``limit`` at which that message is exactly
      at the codec's limit, so cases probe ``limit`` and ``limit - 1``; a stream of valid
      messages that are all within the limit must read back as ``frames_of(message)``
      frames each (default one), with no error, up to the first message for which
      ``ends_stream(message)`` holds (a WebSocket Close: nothing after it is read) (the
      plan's ``expect``, which a saved case may also set by hand);
      ``fits(limit_of(...), limit)`` says whether a message is within a limit (``<=``;
      ``==`` for a fixed size);
    - ``reencode(frame)``: the message that encodes to ``frame`` (or :data:`SKIP`);
      None to skip the re-encoding property;
    - ``framing=False`` (a raw codec): frames depend on the reads by design, so every
      delivery must only give frames that concatenate to the stream, and no errors;
    - ``bounded=False``: no bound on buffered bytes;
    - ``same_errors=False``: any split must give the same frames and errors as fatal or
      not, but the error's class may differ (a codec that reports whichever of two
      faults its bytes prove first: too large or malformed).
    """

    name: str = ""
    make: Callable[[int], BaseCodec] = field(default=lambda limit: BaseCodec())
    messages: Any = None  # SearchStrategy of messages (hypothesis is imported lazily)
    about: str = ""
    limit: int = 64
    encoder: Callable[[BaseCodec], Callable[[Any], bytes]] = _encoder
    limit_of: Callable[[Any, bytes], int] = _wire_size
    fits: Callable[[int, int], bool] = operator.le
    frames_of: Callable[[Any], int] = _one_frame
    ends_stream: Callable[[Any], bool] = _never
    reencode: Callable[[Any], Any] | None = _identity
    framing: bool = True
    bounded: bool = True
    same_errors: bool = True
    max_messages: int = 4

    # -- checking ------------------------------------------------------------------------

    def check(self, case: Case) -> None:
        plan = case.plan
        codec = self.make(int(plan.get("limit", self.limit)))
        stream = case.data
        chunks = split(stream, plan.get("cuts", []))
        ring = int(plan.get("ring", 4096))
        bound = codec.max_frame_size + SLACK if self.bounded else None
        whole = feed_reads(codec, [stream] if stream else [], 4096, bound)
        reads = feed_reads(codec, chunks, ring, bound)
        viewed = feed_reads(codec, chunks, ring, bound, view_reads=True)
        alone = decode_only(codec, stream)
        if not self.same_errors:
            for feed in (whole, reads, viewed, alone):
                feed.events = [("error", "FrameError", e[2]) if e[0] == "error" else e
                               for e in feed.events]
        if not self.framing:
            for label, feed in (("one read", whole), (f"{len(chunks)} reads", reads),
                                (f"{len(chunks)} reads into views", viewed)):
                joined = b"".join(feed.frames)
                if len(feed.frames) != len(feed.events) or joined != stream:
                    raise HarnessFailure(f"{label} of {stream!r} gave {_show(feed.events)}")
            return
        compare("one read", whole, f"{len(chunks)} reads (ring {ring})", reads)
        compare(f"{len(chunks)} reads", reads, f"{len(chunks)} reads into views (io_uring)",
                viewed)
        compare("one read", whole, "decode() alone", alone)
        expect = plan.get("expect")
        if expect is not None:
            got = [["frame"] if e[0] == "frame" else ["error", e[1]] for e in whole.events]
            if got != [list(x) for x in expect]:
                raise HarnessFailure(f"expected {expect!r}, got {_show(whole.events)}")
        if self.reencode is not None:
            self._check_reencode(codec, whole.frames[:8])
        self.extra_checks(codec, case)

    def extra_checks(self, codec: BaseCodec, case: Case) -> None:
        """More properties of a subclass; the framing ones have passed."""

    def _check_reencode(self, codec: BaseCodec, frames: list[Any]) -> None:
        assert self.reencode is not None
        encode = self.encoder(codec)
        for frame in frames:
            message = self.reencode(frame)
            if message is SKIP:
                continue
            try:
                encoded = encode(message)
            except Exception as exc:
                raise HarnessFailure(f"decoded frame {frame!r} does not encode: {exc!r}") \
                    from exc
            again = feed_reads(codec, [encoded])
            if len(again.events) != 1 or not same(again.events[0][1], frame):
                raise HarnessFailure(f"decoded frame {frame!r} encodes to {encoded!r}, "
                                     f"which reads back as {_show(again.events)}")

    # -- hypothesis ----------------------------------------------------------------------

    def cases(self) -> SearchStrategy[Case]:
        from hypothesis import assume
        from hypothesis import strategies as st

        @st.composite
        def draw_case(draw: DrawFn) -> Case:
            messages = draw(st.lists(self.messages, max_size=self.max_messages),
                            label="messages")
            codec = self.make(self.limit)
            encode = self.encoder(codec)
            parts: list[bytes] = []
            for message in messages:
                try:
                    parts.append(bytes(encode(message)))
                except Exception:
                    assume(False)  # a message this codec cannot frame: draw another
            limit: int | None = None  # None: the target's default
            how = draw(st.sampled_from(["default", "exact", "below", "any"]), label="limit")
            if how == "any":
                limit = draw(st.integers(1, 255))
            elif how != "default" and messages:
                k = draw(st.integers(0, len(messages) - 1))
                limit = self.limit_of(messages[k], parts[k]) - (how == "below")
                assume(1 <= limit <= 255)  # the byte layout (to_bytes) holds up to 255
            stream = bytearray(b"".join(parts))
            kind = draw(st.sampled_from(["valid", "damaged", "random"]), label="kind")
            if kind == "random":
                stream = bytearray(draw(st.binary(max_size=200)))
            elif kind == "damaged":
                for _ in range(draw(st.integers(1, 3))):
                    op = draw(st.sampled_from(["flip", "insert", "delete", "set", "cut"]))
                    i = draw(st.integers(0, len(stream)))
                    if op == "insert" or i == len(stream):
                        stream[i:i] = draw(st.binary(min_size=1, max_size=8))
                    elif op == "delete":
                        del stream[i : i + draw(st.integers(1, 8))]
                    elif op == "flip":
                        stream[i] ^= 1 << draw(st.integers(0, 7))
                    elif op == "set":
                        stream[i] = draw(st.sampled_from(_EDGE_BYTES))
                    else:
                        del stream[i:]
            data = bytes(stream)
            plan = {}
            effective = self.limit if limit is None else limit
            if kind == "valid" and self.framing and all(
                    self.fits(self.limit_of(m, e), effective)
                    for m, e in zip(messages, parts, strict=True)):
                count = 0
                for message in messages:
                    count += self.frames_of(message)
                    if self.ends_stream(message):
                        break
                plan["expect"] = [["frame"]] * count
            if len(data) > 1 and draw(st.integers(0, 5)) == 0:
                cuts = list(range(1, len(data)))  # byte by byte
            else:
                cuts = draw(st.lists(st.integers(0, len(data)), max_size=12), label="cuts")
            ring = draw(st.sampled_from(RINGS), label="ring")
            cuts = sorted({c for c in cuts if 0 < c < len(data)})
            return Case(data, {**_plan(cuts, ring, limit), **plan})

        return draw_case()

    # -- raw buffers (atheris) -----------------------------------------------------------

    def from_bytes(self, raw: bytes) -> Case:
        """Layout: ring choice, limit (0: the default), number of cuts (255: byte by
        byte), the cuts (2 bytes each, modulo the stream's length + 1), then the
        stream."""
        reader = ByteReader(raw)
        ring = RINGS[reader.byte() % len(RINGS)]
        limit = reader.byte() or None
        count = reader.byte()
        points = [reader.u16() for _ in range(count % 16)] if count != 255 else []
        data = reader.rest()
        if count == 255:
            points = list(range(1, len(data)))
        cuts = sorted({p % (len(data) + 1) for p in points} - {0, len(data)})
        return Case(data, _plan(cuts, ring, limit))

    def to_bytes(self, case: Case) -> bytes:
        """The buffer for ``case`` (a limit over 255 becomes 255; at most 15 cuts are
        kept unless the case is split byte by byte)."""
        plan = case.plan
        cuts = list(plan.get("cuts", []))
        ring = int(plan.get("ring", 4096))
        ring_index = RINGS.index(ring) if ring in RINGS else len(RINGS) - 1
        limit = plan.get("limit") or 0
        if len(case.data) > 2 and cuts == list(range(1, len(case.data))):
            head = bytes([ring_index, min(limit, 255), 255])
        else:
            cuts = cuts[:15]
            head = bytes([ring_index, min(limit, 255), len(cuts)]) + b"".join(
                min(c, 0xFFFF).to_bytes(2, "big") for c in cuts)
        return head + case.data


def _plan(cuts: list[int], ring: int, limit: int | None) -> dict[str, Any]:
    plan: dict[str, Any] = {"cuts": cuts, "ring": ring}
    if limit is not None:
        plan["limit"] = limit
    return plan


@dataclass(repr=False)
class ConstructTarget(CodecTarget):
    """A :class:`gevwire.Codec` harness: the framing properties, plus, when the schema
    has a fast decoder, that it parses the case's bytes (as one frame: damaged, short,
    with bytes after it) exactly as construct does, or refuses exactly what construct
    refuses."""

    def extra_checks(self, codec: BaseCodec, case: Case) -> None:
        assert isinstance(codec, Codec)
        if codec.fast is None:
            return
        data = case.data
        try:
            expected: Any = codec.schema.parse_stream(io.BytesIO(data))
            ok = True
        except construct.ConstructError:
            ok = False
        try:
            got = codec.fast.decode(data)
        except FrameLengthError:
            return  # deliberate: VarInt prefixes over 10 bytes, which construct takes
        except FrameError as exc:
            if ok:
                raise HarnessFailure(f"the fast decoder refused {data!r} ({exc}); construct "
                                     f"parses {expected!r}") from exc
            return
        except Exception as exc:
            raise HarnessFailure(f"the fast decoder raised {exc!r} on {data!r}, not a "
                                 f"FrameError") from exc
        if not ok:
            raise HarnessFailure(f"the fast decoder parsed {data!r} as {got!r}; construct "
                                 "refuses it")
        if not same(got, expected):
            raise HarnessFailure(f"the fast decoder parsed {data!r} as {got!r}; construct "
                                 f"parses {expected!r}")
