"""Fixed-length frames: every frame is exactly ``size`` bytes (netty's
``FixedLengthFrameDecoder``).

    >>> codec = fixed_length(4)
    >>> codec.encode(b"ping")
    b'ping'
"""

from __future__ import annotations

from typing import Any

import construct  # type: ignore[import-untyped]

from gevwire.codec import BaseCodec, CutAheadDecoder, Decoder
from gevwire.errors import EncodeError, FrameError
from gevwire.ringbuffer import RingBuffer

from ._util import as_bytes

__all__ = ["FixedLengthCodec", "fixed_length"]


class _FixedDecoder(CutAheadDecoder):
    __slots__ = ("_count", "_limit", "_size")

    def __init__(self, size: int, limit: int | None) -> None:
        super().__init__()
        self._size = size
        self._limit = limit
        # Frames cut from the current read (only counted when there is a limit).  A read
        # ends when decode() finds nothing more or empties the ring: the connection calls
        # decode_view, not decode, for the next read when the ring is empty.
        self._count = 0

    def _next_frame(self, ring: RingBuffer) -> Any | None:
        if self._limit is not None:
            # Frames are counted per decode call against the per-read cap: not cut ahead.
            return self.decode_one(ring)
        return super()._next_frame(ring)

    def decode_one(self, ring: RingBuffer) -> bytes | None:
        size = self._size
        if ring.length < size:
            self._count = 0
            return None
        if self._limit is not None:
            self._count += 1
            if self._count > self._limit:
                raise FrameError(f"more than {self._limit} frames in one read")
        frame = ring.read(size)
        if not ring.length:
            self._count = 0
        return frame

    def cut_view(self, view: memoryview) -> tuple[list[Any], int]:
        size = self._size
        count = len(view) // size
        self._count = 0
        if self._limit is not None and count > self._limit:
            # Hand on the frames up to the limit and leave the rest in the ring, where
            # decode() (which the connection calls next) raises on the first of them.
            count = self._count = self._limit
        used = count * size
        return [view[i : i + size].tobytes() for i in range(0, used, size)], used


class FixedLengthCodec(BaseCodec):
    """Frames of exactly ``size`` bytes; ``encode`` checks the size.

    ``max_frames_per_read``: a flood guard.  One read that completes more frames than
    this is a :class:`~gevwire.errors.FrameError` after the first that many frames were
    handed on (the connection's error hook; by default it closes).  It is not a
    fairness cap that defers frames to a later turn: the connection cuts every frame a
    read completed, so it could not defer them.
    """

    def __init__(self, size: int, *, max_frames_per_read: int | None = None) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        if max_frames_per_read is not None and max_frames_per_read < 1:
            raise ValueError("max_frames_per_read must be at least 1 (or None)")
        self.size = size
        self.max_frame_size = size
        self.max_frames_per_read = max_frames_per_read
        #: The declaration: what construct would parse each frame with.
        self.schema: Any = construct.Bytes(size)

    def decoder(self) -> Decoder:
        return _FixedDecoder(self.size, self.max_frames_per_read)

    def encode(self, message: Any) -> bytes:
        data = as_bytes(message)
        if len(data) != self.size:
            raise EncodeError(f"frame must be exactly {self.size} bytes, not {len(data)}")
        return data


def fixed_length(size: int, *, max_frames_per_read: int | None = None) -> FixedLengthCodec:
    """Every frame is exactly ``size`` bytes.

        Server(handler, codec=fixed_length(16))
    """
    return FixedLengthCodec(size, max_frames_per_read=max_frames_per_read)
