"""The compiled path (``gevwire._speedups``) equals the pure one in every effect.

Two pipelines over the same codec take the same reads: one with the compiled cutting and
dispatch (when it is built), one forced to the pure path (the decoder's batch cutter
and ``FramePipeline.dispatch``).  Handlers answer, send, close or raise by the frame's
first byte; everything the transport is asked, the counters, the errors, the frames the
handler saw and what is left in the ring must be the same.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pipeline import Wire

import gevwire
from gevwire import pipeline as pipeline_module
from gevwire.pipeline import Counters, FramePipeline

pytestmark = pytest.mark.skipif(not pipeline_module.COMPILED,
                                reason="gevwire._speedups is not built here (no C compiler "
                                       "at install, or GEVWIRE_PURE_PYTHON set)")

#: (schema, struct format of its prefix, adjustment from the prefix to the payload size)
FORMATS = {
    "Int32ub": (c.Prefixed(c.Int32ub, c.GreedyBytes), ">I", 0),
    "Int16ul": (c.Prefixed(c.Int16ul, c.GreedyBytes), "<H", 0),
    "Int8ub": (c.Prefixed(c.Int8ub, c.GreedyBytes), ">B", 0),
    "Int32sb": (c.Prefixed(c.Int32sb, c.GreedyBytes), ">i", 0),
    "Int64ul": (c.Prefixed(c.Int64ul, c.GreedyBytes), "<Q", 0),
    "Int16ub including itself": (c.Prefixed(c.Int16ub, c.GreedyBytes, includelength=True),
                                 ">H", -2),
}


class Actor(gevwire.Handler):
    """By the payload's first byte: ``r`` raises, ``c`` closes and answers, ``n`` answers
    nothing, ``s`` sends a copy first, ``b`` answers a bytearray, ``L`` 300 bytes (too
    long for a 1-byte prefix), ``X`` more than ``max_output``; else echoes."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.errors: list[str] = []

    def on_message(self, conn: Any, frame: Any) -> Any:
        self.seen.append(bytes(frame))
        kind = frame[:1]
        if kind == b"r":
            raise ValueError("raised")
        if kind == b"c":
            conn.close()
        if kind == b"n":
            return None
        if kind == b"s":
            conn.send(b"sent " + frame)
        if kind == b"b":
            return bytearray(frame)
        if kind == b"L":
            return bytes(300)
        if kind == b"X":
            return bytes(5000)
        return frame

    def on_error(self, conn: Any, error: BaseException) -> None:
        self.errors.append(type(error).__name__)


def make(codec: gevwire.Codec, compiled: bool, view_reads: bool = False,
         high_water: int = 64) -> tuple[FramePipeline, Wire, Counters, Actor]:
    wire, counters, handler = Wire(), Counters(), Actor()

    class Conn:
        pipeline: FramePipeline

        def close(self) -> None:
            wire._close_gracefully()

        def send(self, data: bytes) -> None:
            encoded = self.pipeline.encode(data)
            if self.pipeline.dispatching:
                self.pipeline.gather(encoded)
            else:
                wire._write(encoded)

    conn = Conn()
    pipeline = FramePipeline(conn, handler, codec, wire, counters, high_water=high_water,
                             max_output=4096, view_reads=view_reads)
    conn.pipeline = wire.pipeline = pipeline
    assert (pipeline._spans is not None) is True  # (the codec qualifies)
    if not compiled:
        pipeline._spans = None
    return pipeline, wire, counters, handler


def _frame(fmt: str, adjust: int, payload: bytes) -> bytes:
    return struct.pack(fmt, len(payload) - adjust) + payload


kinds = st.sampled_from([b"", b"e", b"r", b"c", b"n", b"s", b"b", b"L", b"X"])


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(FORMATS)),
       frames=st.lists(st.tuples(kinds, st.binary(max_size=40)), max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=6),
       garbage=st.binary(max_size=6), view_reads=st.booleans(),
       high_water=st.sampled_from([64, 1 << 20]))
def test_compiled_and_pure_paths_do_the_same(name: str, frames: list[tuple[bytes, bytes]],
                                             cuts: list[int], garbage: bytes,
                                             view_reads: bool, high_water: int) -> None:
    """(``view_reads``: each read is a view of a buffer reused for the next, as on
    io_uring; nothing may keep a reference to it.  ``high_water``: replies flushed in
    the middle of a read, or ``max_output`` checked at its end.)"""
    schema, fmt, adjust = FORMATS[name]
    codec = gevwire.Codec(schema, max_frame_size=64)
    stream = b"".join(_frame(fmt, adjust, kind + body) for kind, body in frames) + garbage
    bounds = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    reads = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    results = []
    for compiled in (True, False):
        pipeline, wire, counters, handler = make(codec, compiled, view_reads, high_water)
        returned = []
        buffer = bytearray(max(map(len, reads), default=0))
        for read in reads:
            if view_reads:
                buffer[:len(read)] = read
                returned.append(pipeline.received(memoryview(buffer)[:len(read)]))
                buffer[:] = b"X" * len(buffer)  # (reused by the kernel)
            else:
                returned.append(pipeline.received(read))
        results.append((returned, wire.calls, counters.frames_in, counters.frames_out,
                        counters.errors, handler.seen, handler.errors,
                        pipeline.input.length, pipeline.stopped))
    assert results[0] == results[1]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_read_of_many_frames_takes_the_compiled_path(name: str) -> None:
    schema, fmt, adjust = FORMATS[name]
    codec = gevwire.Codec(schema)
    pipeline, wire, counters, _ = make(codec, True)
    calls: list[Any] = []
    original = FramePipeline._dispatch_compiled

    def counted(self: FramePipeline, *args: Any) -> None:
        calls.append(args[2])
        original(self, *args)

    FramePipeline._dispatch_compiled = counted  # type: ignore[method-assign]
    try:
        read = b"".join(_frame(fmt, adjust, b"e%d" % i) for i in range(5))
        assert pipeline.received(read + _frame(fmt, adjust, b"partial")[:3]) is None
    finally:
        FramePipeline._dispatch_compiled = original  # type: ignore[method-assign]
    assert calls == [5]
    assert wire.calls == [("batch", read)]
    assert (counters.frames_in, counters.frames_out) == (5, 5)
    assert pipeline.input.length == 3


def test_codecs_that_do_not_qualify_keep_the_pure_path() -> None:
    class Wrapped(gevwire.Codec):
        def encode_into(self, parts: list[bytes], message: Any) -> int:
            return super().encode_into(parts, message)

    for codec in (Wrapped(c.Prefixed(c.Int32ub, c.GreedyBytes)),
                  gevwire.Codec(c.Prefixed(c.Int32ub, c.GreedyBytes), on_oversize="discard"),
                  gevwire.Codec(c.Struct("n" / c.Int8ub, "b" / c.Bytes(c.this.n)))):
        wire, counters = Wire(), Counters()
        pipeline = FramePipeline(object(), Actor(), codec, wire, counters)
        assert pipeline._spans is None, codec
