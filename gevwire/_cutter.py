"""Cutting frames from reads exactly as a connection does, through its
:class:`~gevwire.pipeline.FramePipeline` (re-exported by :mod:`gevwire.testing`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gevwire.codec import BaseCodec, Decoder
from gevwire.errors import DecoderContractError, FrameError
from gevwire.loop import SPARE_SIZE
from gevwire.pipeline import Counters, FramePipeline
from gevwire.ringbuffer import COMPACT_MAX, RingBuffer

__all__ = ["FrameCutter", "feed", "feed_reads"]


class FrameCutter:
    """Cuts frames from successive reads with the :class:`~gevwire.pipeline.FramePipeline`
    that serves a :class:`~gevwire.Connection`: the same object, so what passes here
    passes on a server.

    Each read of at most the loop's 64 KiB spare buffer goes to the pipeline as a
    connection hands it one: while the input ring is empty, to
    ``decoder.decode_bytes`` (``decode_view`` with ``view_reads=True``, as on io_uring),
    only what it leaves being copied into the ring; while the ring holds a partial frame,
    into the ring's free space (plus the spare buffer), then ``decode_view`` on the
    ring's bytes if they are contiguous and ``decoder.decode(ring)`` until it returns
    None.  A non-fatal :class:`~gevwire.FrameError` is reported and cutting goes on;
    any other error ends the stream (``failed`` is set and later reads are ignored), as
    the connection closes.

    ``ring_capacity`` is the input ring's smallest size (the connection's is 4096) and
    ``compact_max`` how many buffered bytes it moves to its front rather than wrap (the
    connection's: :data:`~gevwire.ringbuffer.COMPACT_MAX`); a small ring with
    ``compact_max=0`` wraps around often, the case where ``decode`` rather than
    ``decode_view`` cuts frames.  What would hang a connection raises
    :class:`~gevwire.DecoderContractError` (a ``RuntimeError``): a ``decode`` that returns
    more frames without consuming bytes than are buffered (each frame takes at least
    one), or a batch cutter reporting more bytes used than it was given.
    """

    def __init__(self, codec: BaseCodec | Decoder, *, ring_capacity: int = 4096,
                 compact_max: int = COMPACT_MAX, view_reads: bool = False) -> None:
        self.decoder: Decoder = codec.decoder() if isinstance(codec, BaseCodec) else codec
        self.ring = RingBuffer(ring_capacity, compact_max=compact_max)
        self.view_reads = view_reads
        self.failed: BaseException | None = None
        self._events: list[tuple[Any, BaseException | None]] = []
        # This cutter is the pipeline's handler (it records) and its transport.
        self.pipeline = FramePipeline(
            self, self, self.decoder, self, Counters(), view_reads=view_reads,
            input_ring=self.ring, reraise=_is_contract_error)

    @property
    def buffered(self) -> int:
        """Bytes held in the ring: a partial frame."""
        return self.ring.length

    def cut(
        self, data: bytes | bytearray | memoryview
    ) -> Iterator[tuple[Any, BaseException | None]]:
        """Process ``data`` as it arrives (one read, or several if it exceeds what one
        read of the connection takes): yields ``(frame, None)`` or ``(None, error)`` in
        stream order, each read's once the pipeline has cut all of it.
        """
        for _ in feed_reads(self.pipeline, data, self.view_reads):
            events, self._events = self._events, []
            yield from events
            if self.failed is not None:
                return

    def push(self, data: bytes | bytearray | memoryview) -> tuple[list[Any], list[BaseException]]:
        """Process one read: every frame cut from it, and every error raised."""
        frames: list[Any] = []
        errors: list[BaseException] = []
        for frame, error in self.cut(data):
            if error is None:
                frames.append(frame)
            else:
                errors.append(error)
        return frames, errors

    # The pipeline's handler: frames and errors are recorded, nothing is answered.

    def on_message(self, conn: Any, frame: Any) -> None:
        self._events.append((frame, None))

    def on_error(self, conn: Any, error: BaseException) -> None:
        self._events.append((None, error))
        if not isinstance(error, FrameError) or error.fatal:
            self.failed = error
            self.pipeline.stopped = True

    # The pipeline's transport: nothing is ever written; closing ends the stream.

    def _write(self, data: bytes) -> None:
        _refuse_bytes(data)

    _write_batch = _write

    def _close_gracefully(self) -> None:
        self.pipeline.stopped = True

    _close_now = _close_gracefully

    def _refuses_sends(self) -> bool:
        return False

    def _partial_frame_started(self) -> None:
        pass


def _refuse_bytes(data: bytes) -> None:
    raise RuntimeError("FrameCutter's handler answered a frame")


def _is_contract_error(error: BaseException) -> bool:
    return isinstance(error, DecoderContractError)


def feed_reads(pipeline: FramePipeline, data: bytes | bytearray | memoryview,
           view_reads: bool, write: Callable[[bytes], None] = _refuse_bytes
           ) -> Iterator[None]:
    """Hand ``data`` to ``pipeline`` in the reads a connection would make of it (at most
    the ring's free space plus the 64 KiB spare buffer each); yields after each."""
    view = memoryview(data)
    ring = pipeline.input
    while len(view) and not pipeline.stopped:
        if ring.length == 0:
            piece, view = view[:SPARE_SIZE], view[SPARE_SIZE:]
            reply = pipeline.received(piece if view_reads else piece.tobytes())
            if reply is not None:  # the one-frame read's reply: the transport writes it
                write(reply)
        else:
            room = ring.free
            piece, view = view[: room + SPARE_SIZE], view[room + SPARE_SIZE :]
            ring.write(piece[:room])  # readv into the ring's free space ...
            ring.write(piece[room:])  # ... and the spare buffer, then appended
            pipeline.cut_ring()
        yield None


def feed(codec: BaseCodec | Decoder, chunks: Iterable[bytes]) -> list[Any]:
    """The frames ``codec`` (or one decoder) cuts from ``chunks``, each chunk one read.

    Raises the first error the decoder raises (a fatal one ends the stream anyway).
    """
    cutter = FrameCutter(codec)
    frames: list[Any] = []
    for chunk in chunks:
        got, errors = cutter.push(chunk)
        frames.extend(got)
        if errors:
            raise errors[0]
    return frames
