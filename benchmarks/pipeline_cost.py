#!/usr/bin/env python3
"""Where the framed-echo time goes, without sockets: one read of N length-prefixed frames.

The framed echo (``run_echo.py --framed``) compares gevwire's pipeline with an asyncio
``Protocol`` whose framing is written by hand and that calls no handler. This splits the
pipeline's cost per read into what any Python framing pays and what the pipeline adds.
Each row handles the same read (``--frames`` frames of ``--size`` bytes, each a 4-byte
big-endian length + payload) and produces the same reply bytes (checked before timing):

- ``hand-written, no handler``: one loop that cuts each frame with
  ``struct.unpack_from``, slices its payload and packs its reply's prefix; the replies
  joined. The least Python can do for this framing.
- ``hand-written + a handler call``: the same loop calling the echo handler's
  ``on_message(conn, payload)`` per frame. What an API with one call per frame costs
  at least.
- ``asyncio Protocol``: ``servers/framed_asyncio.py``'s ``data_received`` (the framed
  benchmark's baseline on asyncio and uvloop) with a transport that keeps what it is
  given.
- ``gevwire pipeline``: ``FramePipeline.received`` with ``examples/framed_echo.py``'s codec
  and handler and a transport that keeps what it is given: cut, dispatch, the checks a
  connection needs (its close, the write water mark, ``max_write_buffer``, errors,
  counters), encode, gather. Compiled (``gevwire._speedups``) where it was built, and
  then once more on the Python path.

A connection adds its read, write and loop turn to every row alike; on uvloop those are
C. ``run_echo.py --framed`` gives the whole figure.

Usage::

    .venv/bin/python benchmarks/pipeline_cost.py                # 8 x 64 B, Markdown table
    .venv/bin/python benchmarks/pipeline_cost.py --frames 1 --size 1024
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import construct as c  # type: ignore[import-untyped]

import gevwire
from gevwire.codec import Codec
from gevwire.pipeline import COMPILED, Counters, FramePipeline

BENCH_DIR = Path(__file__).resolve().parent
_PREFIX = struct.Struct(">I")


class Echo(gevwire.Handler):
    """``examples/framed_echo.py``'s handler: the payload back."""

    def on_message(self, conn: Any, frame: Any) -> Any:
        return frame


class KeepingTransport:
    """A pipeline's transport that keeps what it is given to write."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def _write(self, data: bytes) -> None:
        self.written.append(data)

    _write_batch = _write

    def write(self, data: bytes) -> None:  # (an asyncio transport's spelling)
        self.written.append(data)

    # Neither a close nor a partial frame happens here.
    def close(self) -> None:
        raise AssertionError("closed")

    _close_gracefully = _close_now = close

    def _refuses_sends(self) -> bool:
        return False

    def _partial_frame_started(self) -> None:
        raise AssertionError("a partial frame")


def hand_written(handler_call: bool) -> Callable[[bytes], bytes]:
    """The framing loop written by hand, with or without a handler call per frame."""
    on_message = Echo().on_message
    unpack_from, pack = _PREFIX.unpack_from, _PREFIX.pack

    def cut_and_answer(data: bytes) -> bytes:
        replies: list[bytes] = []
        append = replies.append
        pos, n = 0, len(data)
        while n - pos >= 4:
            start = pos + 4
            end = start + unpack_from(data, pos)[0]
            if end > n:
                break
            payload = data[start:end]
            reply = on_message(None, payload) if handler_call else payload
            append(pack(len(reply)))
            append(reply)
            pos = end
        return b"".join(replies)

    return cut_and_answer


def asyncio_protocol() -> tuple[Callable[[bytes], None], KeepingTransport]:
    spec = importlib.util.spec_from_file_location(
        "framed_asyncio", BENCH_DIR / "servers" / "framed_asyncio.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    protocol = module.FramedEchoProtocol()
    transport = KeepingTransport()
    protocol.connection_made(transport)
    return protocol.data_received, transport


def gevwire_pipeline(compiled: bool = True) -> tuple[Callable[[bytes], Any], KeepingTransport]:
    transport = KeepingTransport()
    codec = Codec(c.Prefixed(c.Int32ub, c.GreedyBytes))
    pipeline = FramePipeline(object(), Echo(), codec, transport, Counters())
    if not compiled:
        pipeline._spans = None  # (the Python path, as without gevwire._speedups)

    def received(data: bytes) -> None:
        reply = pipeline.received(data)  # (one frame: the reply, for the caller to write)
        if reply is not None:
            transport.written.append(reply)

    return received, transport


def _returned(call: Callable[[bytes], bytes], data: bytes) -> Callable[[], bytes]:
    return lambda: call(data)


def _written(call: Callable[[bytes], Any], transport: KeepingTransport, data: bytes
             ) -> Callable[[], bytes]:
    def output() -> bytes:
        transport.written.clear()
        call(data)
        out = b"".join(transport.written)
        transport.written.clear()
        return out

    return output


def best_of(call: Callable[[bytes], Any], data: bytes, repeat: int, min_time: float
            ) -> tuple[float, float]:
    """(best, median) seconds per call, timeit-style, the cyclic GC off while timing."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            call(data)
        if time.perf_counter() - start >= min_time:
            break
        number *= 2
    samples = []
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(number):
                call(data)
            samples.append((time.perf_counter() - start) / number)
    finally:
        gc.enable()
    return min(samples), statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8, help="frames per read (8)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes per frame (64)")
    parser.add_argument("--repeat", type=int, default=7, help="samples per row (7)")
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds per sample, at least (0.2)")
    args = parser.parse_args(argv)
    payload = bytes(range(256)) * (args.size // 256 + 1)
    frame = _PREFIX.pack(args.size) + payload[:args.size]
    data = frame * args.frames

    rows: list[tuple[str, Callable[[bytes], Any], Callable[[], bytes]]] = []
    for name, handler_call in (("hand-written, no handler", False),
                               ("hand-written + a handler call", True)):
        cut = hand_written(handler_call)
        rows.append((name, cut, _returned(cut, data)))
    makers: list[tuple[str, Callable[[], tuple[Callable[[bytes], Any], KeepingTransport]]]] = [
        ("asyncio Protocol", asyncio_protocol),
        ("gevwire pipeline" + (", compiled" if COMPILED else ""), gevwire_pipeline)]
    if COMPILED:
        makers.append(("gevwire pipeline, Python path", lambda: gevwire_pipeline(False)))
    for name, make in makers:
        call, transport = make()
        rows.append((name, call, _written(call, transport, data)))
    for name, _, output in rows:
        if output() != data:
            print(f"{name}: its replies differ from the echo expected", file=sys.stderr)
            return 1

    print(f"One read of {args.frames} x {args.size} B frames, Python "
          f"{sys.version.split()[0]}, best of {args.repeat}:\n")
    print("| per read | best µs | median µs | vs hand-written + a handler call |")
    print("|---|---:|---:|---:|")
    results = [(name, *best_of(call, data, args.repeat, args.min_time))
               for name, call, _ in rows]
    base = results[1][1]
    for name, best, median in results:
        print(f"| {name} | {best * 1e6:.2f} | {median * 1e6:.2f} | {best / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
