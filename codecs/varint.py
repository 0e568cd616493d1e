"""Varint-prefixed frames: a protobuf base-128 varint length, then that many bytes (the
framing of protobuf's ``writeDelimitedTo`` / ``parseDelimitedFrom``, netty's
``ProtobufVarint32FrameDecoder`` / ``ProtobufVarint32LengthFieldPrepender``).

    >>> codec = varint()
    >>> codec.encode(b"x" * 300)[:2]
    b'\\xac\\x02'

The length is bounded by ``max_frame_size`` (the payload, prefix not counted): a larger
one is :class:`~gevwire.errors.FrameTooLarge` from the prefix alone.  A prefix longer
than 10 bytes, or a 10-byte one over 64 bits, is a :class:`~gevwire.errors.FrameError`
(construct's ``VarInt`` has no such cap).

Non-minimal prefixes (``b"\\x85\\x00"`` for 5) are accepted by default, as protobuf's
own parsers accept them and some writers pad a length to a fixed width to patch it in
later; ``canonical=True`` rejects them.  ``encode`` always writes the minimal form.
"""

from __future__ import annotations

from typing import Any

import construct  # type: ignore[import-untyped]

from gevwire.codec import BaseCodec, CutAheadDecoder, Decoder
from gevwire.errors import EncodeError, FrameError, FrameTooLarge
from gevwire.ringbuffer import RingBuffer

from ._util import as_bytes

__all__ = ["MAX_VARINT_BYTES", "VarintCodec", "encode_varint", "varint"]

MAX_VARINT_BYTES = 10
"""Longest prefix accepted: 10 bytes carry 64 bits, protobuf's widest integer."""


def encode_varint(value: int) -> bytes:
    """The minimal base-128 varint for ``value`` (0 <= value < 2**64)."""
    if value < 0x80:
        if value < 0:
            raise EncodeError("a varint length is not negative")
        return bytes((value,))
    if value >> 64:
        raise EncodeError("varint value exceeds 64 bits")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: Any, pos: int, end: int, canonical: bool) -> tuple[int, int]:
    """``(value, prefix size)`` of the varint at ``buf[pos:end]``; size 0 if incomplete."""
    b = buf[pos]
    if b < 0x80:
        return b, 1
    value = b & 0x7F
    shift = 7
    i = pos + 1
    limit = pos + MAX_VARINT_BYTES
    if limit > end:
        limit = end
    while i < limit:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            size = i - pos
            if size == MAX_VARINT_BYTES and b > 1:
                raise FrameError("varint length prefix exceeds 64 bits")
            if canonical and b == 0:
                raise FrameError("non-minimal varint length prefix")
            return value, size
        shift += 7
    if i - pos >= MAX_VARINT_BYTES:
        raise FrameError(f"varint length prefix longer than {MAX_VARINT_BYTES} bytes")
    return 0, 0


class _VarintDecoder(CutAheadDecoder):
    __slots__ = ("_canonical", "_max")

    def __init__(self, max_frame_size: int, canonical: bool) -> None:
        super().__init__()
        self._max = max_frame_size
        self._canonical = canonical

    def decode_one(self, ring: RingBuffer) -> bytes | None:
        first, second = ring.peek(MAX_VARINT_BYTES)
        if not first:
            return None
        head = bytes(first) + bytes(second) if second else first
        length, size = _read_varint(head, 0, len(head), self._canonical)
        if not size:
            return None
        if length > self._max:
            raise FrameTooLarge(length, self._max)
        if ring.length < size + length:
            return None
        ring.retrieve(size)
        return ring.read(length)

    def cut_view(self, view: memoryview) -> tuple[list[Any], int]:
        frames: list[Any] = []
        end = len(view)
        pos = 0
        max_size = self._max
        canonical = self._canonical
        try:
            while pos < end:
                b = view[pos]
                if b < 0x80:  # a one-byte prefix: skip the call
                    length, size = b, 1
                else:
                    length, size = _read_varint(view, pos, end, canonical)
                    if not size:
                        break
                if length > max_size:
                    raise FrameTooLarge(length, max_size)
                start = pos + size
                stop = start + length
                if stop > end:
                    break
                frames.append(view[start:stop].tobytes())
                pos = stop
        except FrameError:
            if not frames:
                raise
            # Hand on the frames before the bad prefix; decode() raises on it.
        return frames, pos


class VarintCodec(BaseCodec):
    """Varint length prefix + payload; see the module docstring."""

    def __init__(self, *, max_frame_size: int = 1 << 20, canonical: bool = False) -> None:
        if max_frame_size < 0:
            raise ValueError("max_frame_size must be >= 0")
        self.max_frame_size = max_frame_size
        self.canonical = canonical
        #: The declaration (construct's VarInt is uncapped: the decoder adds the caps).
        self.schema: Any = construct.Prefixed(construct.VarInt, construct.GreedyBytes)

    def decoder(self) -> Decoder:
        return _VarintDecoder(self.max_frame_size, self.canonical)

    def encode(self, message: Any) -> bytes:
        data = as_bytes(message)
        return encode_varint(len(data)) + data

    def encode_into(self, parts: list[bytes], message: Any) -> int:
        """Prefix and payload as two parts (no copy of the payload)."""
        data = as_bytes(message)
        prefix = encode_varint(len(data))
        parts.append(prefix)
        parts.append(data)
        return len(prefix) + len(data)


def varint(*, max_frame_size: int = 1 << 20, canonical: bool = False) -> VarintCodec:
    """Protobuf-style varint length-prefixed frames.

        # one serialized protobuf message per frame
        Server(handler, codec=varint(max_frame_size=64 << 10))
    """
    return VarintCodec(max_frame_size=max_frame_size, canonical=canonical)
