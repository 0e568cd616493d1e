"""The properties behind ``testing.check_codec`` (imports hypothesis: test-time only)."""

from __future__ import annotations

import copy
import io
import itertools
import threading
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gevwire._cutter import FrameCutter
from gevwire._fastcodec import FrameLengthError
from gevwire._strategies import build_strategy
from gevwire._testbase import CheckReport, CodecCheckFailed, same_frames
from gevwire.codec import BaseCodec, Codec, RawCodec
from gevwire.errors import FrameError
from gevwire.ringbuffer import COMPACT_MAX

__all__ = ["SLACK", "run_checks"]

#: Bytes a decoder may buffer beyond ``max_frame_size`` (a length prefix the limit does
#: not count, as a varint codec's).
SLACK = 16

_PROPERTIES = ("round trip", "splits", "fast decoder", "truncation", "max_frame_size",
               "garbage")


class _Hung(CodecCheckFailed):
    pass


class _Guard:
    """Runs each feed in a worker thread, so a decoder that never returns fails the
    check instead of hanging it.  After one hang every later call fails at once (the
    stuck thread cannot be stopped; hypothesis then shrinks without starting more)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.hung: str | None = None

    def run(self, fn: Callable[[], Any], what: Callable[[], str]) -> Any:
        if self.hung is not None:
            raise _Hung(self.hung, prop="garbage")
        box: list[Any] = []

        def work() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))

        thread = threading.Thread(target=work, name="gevwire-check-codec", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if not box:
            self.hung = f"the decoder did not return within {self.timeout}s on {what()}"
            raise _Hung(self.hung, prop="garbage")
        ok, value = box[0]
        if not ok:
            raise value
        return value


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(0, c), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def _draw_ring(data: st.DataObject) -> int:
    """A small input ring (which then never moves bytes to its front: see ``feed``)
    wraps around often, the state in which ``decode`` (not ``decode_view``) cuts frames
    from the ring; 4096 is the connection's own.  With a 64-byte ring, reads go to
    ``decode_view`` (as on io_uring), otherwise to ``decode_bytes`` (as on epoll)."""
    ring: int = data.draw(st.sampled_from([16, 64, 4096]), label="ring capacity")
    return ring


def _fail(prop: str, message: str) -> CodecCheckFailed:
    return CodecCheckFailed(f"{prop}: {message}", prop=prop)


class _Checker:
    def __init__(self, codec: BaseCodec, messages: st.SearchStrategy[Any],
                 frame_of: Callable[[Any], Any] | None, parse_shaped: bool,
                 max_frames: int, limits: bool, timeout: float) -> None:
        self.codec = codec
        self.messages = messages
        self.frame_of = frame_of
        self.parse_shaped = parse_shaped  # messages equal what the schema parses
        self.max_frames = max_frames
        self.limits = limits
        self.guard = _Guard(timeout)
        self.schema: Any = codec.schema if isinstance(codec, Codec) else None
        self.raw = isinstance(codec, RawCodec)

    # -- helpers -------------------------------------------------------------------------

    def expected(self, message: Any) -> Any:
        return message if self.frame_of is None else self.frame_of(message)

    def encode(self, prop: str, message: Any, codec: BaseCodec | None = None) -> bytes:
        try:
            data = (codec or self.codec).encode(message)
        except Exception as exc:
            raise _fail(prop, f"encode({message!r}) raised {exc!r}") from exc
        return bytes(data)

    def draw_frame(self, data: st.DataObject, prop: str) -> tuple[Any, bytes]:
        message = data.draw(self.messages, label="message")
        encoded = self.encode(prop, message)
        assume(encoded and len(encoded) <= self.codec.max_frame_size)
        return message, encoded

    def feed(self, codec: BaseCodec, chunks: list[bytes], prop: str, ring: int,
             bound: int | None = None) -> tuple[list[Any], list[BaseException]]:
        """Frames and errors from ``chunks``, one read each, stopping at a fatal error;
        ``ring``: the input ring's smallest capacity; with ``bound``, fails if more than
        that many bytes stay buffered after a read."""

        def run() -> tuple[list[Any], list[BaseException]]:
            cutter = FrameCutter(codec, ring_capacity=ring,
                                 compact_max=0 if ring < 4096 else COMPACT_MAX,
                                 view_reads=ring == 64)
            frames: list[Any] = []
            errors: list[BaseException] = []
            for i, chunk in enumerate(chunks):
                got, errs = cutter.push(chunk)
                frames.extend(got)
                errors.extend(errs)
                if cutter.failed is not None:
                    break
                if bound is not None and cutter.buffered > bound:
                    raise _fail(prop, f"{cutter.buffered} bytes buffered after read {i} of "
                                      f"{chunks!r}: more than max_frame_size + {SLACK} "
                                      f"= {bound}")
            return frames, errors

        try:
            result: tuple[list[Any], list[BaseException]] = self.guard.run(
                run, lambda: f"reads {chunks!r}")
        except RuntimeError as exc:
            raise _fail(prop, f"{exc} (reads {chunks!r})") from exc
        return result

    def clean_feed(self, codec: BaseCodec, chunks: list[bytes], prop: str,
                   ring: int = 4096) -> list[Any]:
        frames, errors = self.feed(codec, chunks, prop, ring)
        if errors:
            raise _fail(prop, f"valid stream {chunks!r} raised {errors[0]!r}") from errors[0]
        return frames

    def with_limit(self, limit: int) -> BaseCodec:
        limited = copy.copy(self.codec)
        limited.max_frame_size = limit
        return limited

    # -- properties ----------------------------------------------------------------------

    def round_trip(self, data: st.DataObject) -> None:
        prop = "round trip"
        message, encoded = self.draw_frame(data, prop)
        frames = self.clean_feed(self.codec, [encoded], prop)
        if self.raw:
            if b"".join(frames) != encoded:
                raise _fail(prop, f"{encoded!r} read back as {frames!r}")
            return
        if len(frames) != 1:
            raise _fail(prop, f"{message!r} encoded as {encoded!r} decoded to {len(frames)} "
                              f"frames: {frames!r}")
        frame = frames[0]
        if self.schema is not None:
            built = self.schema.build(message)
            if built != encoded:
                raise _fail(prop, f"encode({message!r}) = {encoded!r}, construct builds "
                                  f"{built!r}")
            parsed = self.schema.parse(encoded)
            if not same_frames(frame, parsed):
                raise _fail(prop, f"decoded {frame!r} from {encoded!r}, construct parses "
                                  f"{parsed!r}")
        if (self.frame_of is not None or self.parse_shaped or self.schema is None) \
                and frame != self.expected(message):
            raise _fail(prop, f"{message!r} encoded as {encoded!r} decoded to {frame!r}, "
                              f"expected {self.expected(message)!r}")
        if self.frame_of is None:
            again = self.encode(prop, frame)
            if again != encoded:
                raise _fail(prop, f"decoded frame {frame!r} re-encodes to {again!r}, not "
                                  f"{encoded!r}")

    def splits(self, data: st.DataObject) -> None:
        prop = "splits"
        messages = data.draw(st.lists(self.messages, min_size=1, max_size=self.max_frames),
                             label="messages")
        parts = [self.encode(prop, m) for m in messages]
        for part in parts:
            assume(part and len(part) <= self.codec.max_frame_size)
        stream = b"".join(parts)
        if data.draw(st.integers(0, 4), label="byte by byte?") == 0:
            chunks = [stream[i : i + 1] for i in range(len(stream))]
        else:
            cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=2 * len(parts) + 4),
                             label="cuts")
            chunks = _split(stream, cuts)
        frames = self.clean_feed(self.codec, chunks, prop, _draw_ring(data))
        if self.raw:
            if b"".join(frames) != stream:
                raise _fail(prop, f"reads {chunks!r} gave frames {frames!r}")
            return
        expected = [self.expected(m) for m in messages]
        if frames != expected:
            raise _fail(prop, f"reads {chunks!r} gave frames {frames!r}, expected {expected!r}")

    def fast_decoder(self, data: st.DataObject) -> None:
        prop = "fast decoder"
        codec = self.codec
        assert isinstance(codec, Codec) and codec.fast is not None
        fast, schema = codec.fast, codec.schema
        message = data.draw(self.messages, label="message")
        built = schema.build(message)
        try:
            encoded = fast.encode(message)
        except Exception as exc:
            raise _fail(prop, f"fast encode({message!r}) raised {exc!r}") from exc
        if encoded != built:
            raise _fail(prop, f"fast encode({message!r}) = {encoded!r}, construct builds "
                              f"{built!r}")
        frame = bytearray(built)
        for _ in range(data.draw(st.integers(0, 2), label="damage")):
            kind = data.draw(st.sampled_from(["cut", "flip", "grow", "random"]))
            if kind == "cut" and frame:
                del frame[data.draw(st.integers(0, len(frame) - 1)):]
            elif kind == "flip" and frame:
                i = data.draw(st.integers(0, len(frame) - 1))
                frame[i] ^= 1 << data.draw(st.integers(0, 7))
            elif kind == "grow":
                frame += data.draw(st.binary(min_size=1, max_size=8))
            elif kind == "random":
                frame = bytearray(data.draw(st.binary(max_size=64)))
        raw = bytes(frame)
        try:
            expected: Any = schema.parse_stream(io.BytesIO(raw))
            ok = True
        except Exception:
            ok = False
        try:
            got = fast.decode(raw)
        except FrameLengthError:
            return  # deliberate: VarInt prefixes over 10 bytes are refused even by construct
        except FrameError as exc:
            if ok:
                raise _fail(prop, f"fast decoder refused {raw!r} ({exc}); construct parses "
                                  f"{expected!r}") from exc
            return
        except Exception as exc:
            raise _fail(prop, f"fast decoder raised {exc!r} on {raw!r}, not a FrameError") \
                from exc
        if not ok:
            raise _fail(prop, f"fast decoder parsed {raw!r} as {got!r}; construct refuses it")
        if not same_frames(got, expected):
            raise _fail(prop, f"fast decoder parsed {raw!r} as {got!r}; construct parses "
                              f"{expected!r}")

    def truncation(self, data: st.DataObject) -> None:
        prop = "truncation"
        _, encoded = self.draw_frame(data, prop)
        cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
        head = encoded[:cut]
        split = data.draw(st.integers(0, cut), label="split")
        ring = _draw_ring(data)
        for chunks in ([head], _split(head, [split])):
            frames, errors = self.feed(self.codec, chunks, prop, ring)
            if frames or errors:
                raise _fail(prop, f"{encoded!r} cut to {head!r} (reads {chunks!r}) gave "
                                  f"frames {frames!r}, errors {errors!r}")

    def max_frame_size(self, data: st.DataObject) -> None:
        prop = "max_frame_size"
        message, encoded = self.draw_frame(data, prop)
        limited = self.with_limit(len(encoded))
        stream = encoded * 2
        split = data.draw(st.integers(0, len(stream)), label="split")
        expected = self.expected(message)
        ring = _draw_ring(data)
        for chunks, count in (([encoded], 1),
                              ([encoded[i : i + 1] for i in range(len(encoded))], 1),
                              (_split(stream, [split]), 2)):
            frames, errors = self.feed(limited, chunks, prop, ring)
            if self.raw:
                wrong = b"".join(frames) != b"".join(chunks)
            else:
                wrong = frames != [expected] * count
            if errors or wrong:
                raise _fail(prop, f"with max_frame_size={len(encoded)}, the frame "
                                  f"{encoded!r} (reads {chunks!r}) gave frames {frames!r}, "
                                  f"errors {errors!r}")

    def garbage(self, data: st.DataObject) -> None:
        prop = "garbage"
        codec = self.codec
        limit = codec.max_frame_size
        message = data.draw(self.messages, label="message")
        sample = self.encode(prop, message)
        if self.limits and sample and data.draw(st.booleans(), label="limited copy"):
            limit = len(sample)
            codec = self.with_limit(limit)
        kind = data.draw(st.sampled_from(["random", "damaged", "flood"]), label="kind")
        if kind == "random":
            stream = data.draw(st.binary(min_size=1, max_size=256), label="bytes")
        elif kind == "damaged":
            more = data.draw(st.lists(self.messages, max_size=2), label="more")
            buf = bytearray(sample + b"".join(self.encode(prop, m) for m in more))
            for _ in range(data.draw(st.integers(1, 3), label="damage")):
                op = data.draw(st.sampled_from(["flip", "insert", "delete", "set"]))
                i = data.draw(st.integers(0, len(buf)))
                if op == "insert" or not buf or i == len(buf):
                    buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
                elif op == "delete":
                    del buf[i : i + data.draw(st.integers(1, 8))]
                elif op == "flip":
                    buf[i] ^= 1 << data.draw(st.integers(0, 7))
                else:
                    buf[i] = data.draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
            stream = bytes(buf) or b"\0"
        else:
            head = sample[: data.draw(st.integers(0, len(sample)), label="header")]
            byte = data.draw(st.sampled_from([0x00, 0x0A, 0x61, 0x7F, 0x80, 0xFF]))
            # Past the limit when it is small; a few KiB otherwise (parsing a MiB of
            # garbage through construct would take seconds per example).
            size = limit + 2 * SLACK + 64 if limit <= 1 << 12 else 1 << 12
            stream = head + bytes([byte]) * size
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts")
        chunks = _split(stream, cuts)
        bound = limit + SLACK if not self.raw else None
        _, errors = self.feed(codec, chunks, prop, _draw_ring(data), bound)
        for error in errors:
            if not isinstance(error, FrameError):
                raise _fail(prop, f"reads {chunks!r} raised {error!r}, not a FrameError") \
                    from error


def _body(prop: Callable[[st.DataObject], None]) -> Callable[[st.DataObject], None]:
    def body(data: st.DataObject) -> None:
        prop(data)

    return body


def _messages_for(codec: BaseCodec, messages: st.SearchStrategy[Any] | None
                  ) -> tuple[st.SearchStrategy[Any], bool]:
    """The strategy of messages, and whether its values are what the schema parses."""
    if messages is not None:
        return messages, False
    example = getattr(codec, "example_strategy", None)
    if callable(example):
        return example(), False
    if isinstance(codec, Codec):
        return build_strategy(codec.schema, None, 32), True
    if isinstance(codec, RawCodec):
        return st.binary(min_size=1, max_size=64), False
    raise TypeError(
        f"check_codec needs messages= (a strategy of messages {type(codec).__name__}.encode "
        "takes), or a codec with an example_strategy() method"
    )


def run_checks(codec: BaseCodec, *, messages: st.SearchStrategy[Any] | None,
               frame_of: Callable[[Any], Any] | None, examples: int, max_frames: int,
               limits: bool, timeout: float) -> CheckReport:
    """See :func:`gevwire.testing.check_codec`."""
    if examples < 1:
        raise ValueError("examples must be at least 1")
    strategy, parse_shaped = _messages_for(codec, messages)
    if frame_of is None and messages is None:
        example_frame = getattr(codec, "example_frame", None)
        if callable(example_frame):
            frame_of = example_frame
    checker = _Checker(codec, strategy, frame_of, parse_shaped, max_frames, limits, timeout)
    report = CheckReport()
    runs: dict[str, Callable[[st.DataObject], None]] = {
        "round trip": checker.round_trip,
        "splits": checker.splits,
        "fast decoder": checker.fast_decoder,
        "truncation": checker.truncation,
        "max_frame_size": checker.max_frame_size,
        "garbage": checker.garbage,
    }
    if not (isinstance(codec, Codec) and codec.fast is not None):
        report.skipped["fast decoder"] = "the codec has no fast decoder"
    if checker.raw:
        report.skipped["truncation"] = "a RawCodec has no framing"
    if not limits:
        report.skipped["max_frame_size"] = "limits=False"
    config = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example, HealthCheck.filter_too_much],
    )
    for name in _PROPERTIES:
        if name in report.skipped:
            continue
        test = config(given(data=st.data())(_body(runs[name])))
        try:
            test()
        except CodecCheckFailed as exc:
            raise CodecCheckFailed(f"check_codec({codec!r}) failed: {exc}", prop=name) \
                from None
        except Exception as exc:
            raise CodecCheckFailed(f"check_codec({codec!r}) failed: {name}: {exc!r}",
                                   prop=name) from exc
        report.passed.append(name)
    return report
