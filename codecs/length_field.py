"""Length-field frames with netty's ``LengthFieldBasedFrameDecoder`` semantics, and the
matching ``LengthFieldPrepender``.

A frame is ``length_field_offset`` header bytes, the length field, and whatever the field
says follows it::

    frame length = length_field_offset + length_field_length + value + length_adjustment

The decoder hands on the frame without its first ``initial_bytes_to_strip`` bytes.  A
4-byte big-endian length before each payload, stripped on the way in and written on the
way out::

    >>> codec = length_field(length_field_length=4, initial_bytes_to_strip=4)
    >>> codec.encode(b"hello")
    b'\\x00\\x00\\x00\\x05hello'

Oversized frames are rejected from their header, before their body is buffered, as
:class:`~gevwire.errors.FrameTooLarge` (``size`` is the whole frame as announced).
``on_oversize="close"``: the error is fatal and the connection closes.  ``"discard"``
(netty's discard mode): the decoder skips exactly that frame's bytes, across as many
reads as it takes, and reports it once as a *non-fatal* ``FrameTooLarge``: the
connection hands it to the handler's ``on_error`` (by default a logged warning), keeps
the connection open, and goes on with the next frame.  With ``fail_fast=True`` it is
reported as soon as the header is seen, otherwise once the whole frame has been skipped
(where the frame would have been).  ``fail_fast`` only matters for ``"discard"``:
``"close"`` always fails from the header.

Negative lengths (an 8-byte field is signed, as netty's ``long``), adjusted lengths
shorter than the header, and frames shorter than ``initial_bytes_to_strip`` are
:class:`~gevwire.errors.FrameError`.
"""

from __future__ import annotations

import struct
from typing import Any, Literal

import construct  # type: ignore[import-untyped]

from gevwire.codec import BaseCodec, CutAheadDecoder, Decoder
from gevwire.errors import EncodeError, FrameError, FrameTooLarge
from gevwire.ringbuffer import RingBuffer

from ._util import as_bytes

__all__ = [
    "LengthFieldCodec",
    "LengthFieldPrepender",
    "length_field",
    "length_field_prepender",
]

ByteOrder = Literal["big", "little"]
OnOversize = Literal["close", "discard"]

_FIELD_LENGTHS = (1, 2, 3, 4, 8)
# struct codes for the field (3 bytes has none: int.from_bytes).  netty reads 1-4 byte
# fields unsigned and an 8-byte field as a signed long (a negative one is an error).
_CODES = {1: "B", 2: "H", 4: "I", 8: "q"}


def _check_field(byte_order: str, length: int) -> None:
    if byte_order not in ("big", "little"):
        raise ValueError(f"byte_order must be 'big' or 'little', not {byte_order!r}")
    if length not in _FIELD_LENGTHS:
        raise ValueError(f"length_field_length must be one of {_FIELD_LENGTHS}, not {length}")


def _field_schema(byte_order: str, length: int) -> Any:
    return construct.BytesInteger(length, signed=length == 8, swapped=byte_order == "little")


class LengthFieldPrepender:
    """netty's ``LengthFieldPrepender``: writes ``len(payload) + length_adjustment`` (plus
    ``length_field_length`` if ``length_includes_length_field``) before the payload.

        >>> length_field_prepender(2).encode(b"HELLO, WORLD")
        b'\\x00\\x0cHELLO, WORLD'
    """

    __slots__ = ("_adjust", "_limit", "_order", "_struct", "byte_order", "length_adjustment",
                 "length_field_length", "length_includes_length_field", "schema")

    def __init__(
        self,
        length_field_length: int = 4,
        *,
        byte_order: ByteOrder = "big",
        length_adjustment: int = 0,
        length_includes_length_field: bool = False,
    ) -> None:
        _check_field(byte_order, length_field_length)
        self.length_field_length = length_field_length
        self.byte_order = byte_order
        self.length_adjustment = length_adjustment
        self.length_includes_length_field = length_includes_length_field
        #: The field's declaration; :meth:`header` writes the same bytes with ``struct``.
        self.schema: Any = _field_schema(byte_order, length_field_length)
        self._adjust = length_adjustment + (
            length_field_length if length_includes_length_field else 0
        )
        self._order: Literal["big", "little"] = byte_order
        code = _CODES.get(length_field_length)
        self._struct = (
            struct.Struct((">" if byte_order == "big" else "<") + code) if code else None
        )
        # Largest value the field holds (8 bytes: netty's signed long, so a decoder that
        # reads it signed never sees a negative length).
        self._limit = (1 << 63) - 1 if length_field_length == 8 else (
            1 << (8 * length_field_length)
        ) - 1

    def header(self, payload_length: int) -> bytes:
        """The length field for a payload of ``payload_length`` bytes."""
        value = payload_length + self._adjust
        if value < 0:
            raise EncodeError(f"adjusted length {value} is negative")
        if value > self._limit:
            raise EncodeError(
                f"length {value} does not fit a {self.length_field_length}-byte length field"
            )
        if self._struct is not None:
            return self._struct.pack(value)
        return value.to_bytes(self.length_field_length, self._order)

    def encode(self, payload: Any) -> bytes:
        """``header(len(payload)) + payload``."""
        data = as_bytes(payload)
        return self.header(len(data)) + data


def length_field_prepender(
    length_field_length: int = 4,
    *,
    byte_order: ByteOrder = "big",
    length_adjustment: int = 0,
    length_includes_length_field: bool = False,
) -> LengthFieldPrepender:
    """netty's ``LengthFieldPrepender`` on its own (see :class:`LengthFieldPrepender`)."""
    return LengthFieldPrepender(
        length_field_length,
        byte_order=byte_order,
        length_adjustment=length_adjustment,
        length_includes_length_field=length_includes_length_field,
    )


class _LengthFieldDecoder(CutAheadDecoder):
    __slots__ = ("_adjust", "_discard", "_end", "_fail_fast", "_max", "_offset", "_order",
                 "_pending", "_skip", "_strip", "_struct")

    def __init__(self, codec: LengthFieldCodec) -> None:
        super().__init__()
        self._offset = codec.length_field_offset
        self._end = codec.length_field_offset + codec.length_field_length
        self._adjust = codec.length_adjustment + self._end
        self._strip = codec.initial_bytes_to_strip
        self._max = codec.max_frame_size
        self._discard = codec.on_oversize == "discard"
        self._fail_fast = codec.fail_fast
        self._order: Literal["big", "little"] = codec.byte_order
        code = _CODES.get(codec.length_field_length)
        self._struct = (
            struct.Struct((">" if codec.byte_order == "big" else "<") + code) if code else None
        )
        # Discard state: bytes of an oversized frame still to skip, and that frame's size
        # if it is to be reported once skipped (fail_fast=False), else 0.
        self._skip = 0
        self._pending = 0

    def _frame_length(self, value: int) -> int:
        """Whole frame length from the field's value; raise for impossible ones (netty)."""
        if value < 0:
            raise FrameError(f"negative length field {value}")
        frame = value + self._adjust
        if frame < self._end:
            raise FrameError(
                f"adjusted frame length {frame} is less than the length field's end "
                f"offset {self._end}"
            )
        # netty checks this once the whole frame is buffered; it depends on the header
        # alone, so it is checked here.  Oversize is judged first, as in netty.
        if frame < self._strip and frame <= self._max:
            raise FrameError(
                f"frame length {frame} is less than initial_bytes_to_strip {self._strip}"
            )
        return frame

    def _oversize(self, ring: RingBuffer, frame: int, available: int) -> None:
        """An oversized frame's header is at the ring's start: fail, or start skipping.

        Returns (None for decode) only when the discard is to be reported later.
        """
        if not self._discard:
            raise FrameTooLarge(frame, self._max)
        used = frame if frame < available else available
        ring.retrieve(used)
        self._skip = frame - used
        if self._fail_fast or not self._skip:
            raise FrameTooLarge(frame, self._max, fatal=False)
        self._pending = frame

    def announced_length(self, ring: RingBuffer) -> int:
        available = ring._len
        if self._skip or self._ahead or available < self._end:
            return 0
        try:
            frame = self._frame_length(self._field(ring))
        except FrameError:
            return 0  # decode() reports it
        return frame if available < frame <= self._max else 0

    def _field(self, ring: RingBuffer) -> int:
        """The length field's value, from the frame at the start of ``ring``."""
        if self._struct is not None:
            value: int = ring.unpack_from(self._struct, self._offset)[0]  # type: ignore[assignment]
            return value
        first, second = ring.peek(self._end)
        head = bytes(first) + bytes(second) if second else first
        return int.from_bytes(head[self._offset :], self._order)

    def decode_one(self, ring: RingBuffer) -> Any | None:
        if self._skip:
            n = min(self._skip, ring.length)
            ring.retrieve(n)
            self._skip -= n
            if self._skip:
                return None
            if self._pending:
                frame, self._pending = self._pending, 0
                raise FrameTooLarge(frame, self._max, fatal=False)
        available = ring.length
        if available < self._end:
            return None
        frame = self._frame_length(self._field(ring))
        if frame > self._max:
            self._oversize(ring, frame, available)
            return None  # the ring is empty: the rest is skipped as it arrives
        if available < frame:
            return None
        strip = self._strip
        if strip:
            ring.retrieve(strip)
        return ring.read(frame - strip)

    def cut_view(self, view: memoryview) -> tuple[list[Any], int]:
        # Errors, including the non-fatal report of a discarded frame, are left to
        # decode(): the connection calls it on the bytes after ``used`` at once, and only
        # decode() can report an error and then go on (or hand on the frames cut before
        # a fatal one).
        size = len(view)
        pos = 0
        if self._skip:
            n = self._skip if self._skip < size else size
            if n == self._skip and self._pending:
                n -= 1  # leave the frame's last byte: decode() ends the skip and reports
            self._skip -= n
            if self._skip:
                return [], n
            pos = n
        frames: list[Any] = []
        end = self._end
        offset = self._offset
        unpack = self._struct.unpack_from if self._struct is not None else None
        max_size = self._max
        strip = self._strip
        while size - pos >= end:
            if unpack is not None:
                value: int = unpack(view, pos + offset)[0]
            else:
                value = int.from_bytes(view[pos + offset : pos + end], self._order)
            try:
                frame = self._frame_length(value)
            except FrameError:
                if frames:
                    break
                raise
            if frame > max_size:
                if not frames and not self._discard:
                    raise FrameTooLarge(frame, max_size)
                break
            stop = pos + frame
            if stop > size:
                break
            frames.append(view[pos + strip : stop].tobytes())
            pos = stop
        return frames, pos


class LengthFieldCodec(BaseCodec):
    """Frames delimited by a length field (netty's ``LengthFieldBasedFrameDecoder``).

    See the module docstring for the arithmetic and the oversize modes.  ``encode`` is
    the matching prepender: ``message`` is the frame without its length field (the
    first ``length_field_offset`` bytes of ``message`` go before the field), and the
    field gets the value that makes this codec's decoder read the frame back, so
    ``decode(encode(m)) == (m with the field inserted)[initial_bytes_to_strip:]``; for the
    usual ``length_field_offset=0, initial_bytes_to_strip=length_field_length`` that is
    ``m`` itself.  A length field that counts itself (netty's prepender with
    ``length_includes_length_field``) is ``length_adjustment=-length_field_length``
    here; :class:`LengthFieldPrepender` is netty's prepender on its own.
    """

    def __init__(
        self,
        *,
        byte_order: ByteOrder = "big",
        length_field_offset: int = 0,
        length_field_length: int = 4,
        length_adjustment: int = 0,
        initial_bytes_to_strip: int = 0,
        max_frame_size: int = 1 << 20,
        fail_fast: bool = True,
        on_oversize: OnOversize = "close",
    ) -> None:
        _check_field(byte_order, length_field_length)
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        if length_field_offset < 0:
            raise ValueError("length_field_offset must be >= 0")
        if initial_bytes_to_strip < 0:
            raise ValueError("initial_bytes_to_strip must be >= 0")
        if length_field_offset > max_frame_size - length_field_length:
            raise ValueError("the length field must end within max_frame_size")
        if on_oversize not in ("close", "discard"):
            raise ValueError(f"on_oversize must be 'close' or 'discard', not {on_oversize!r}")
        self.byte_order: ByteOrder = byte_order
        self.length_field_offset = length_field_offset
        self.length_field_length = length_field_length
        self.length_adjustment = length_adjustment
        self.initial_bytes_to_strip = initial_bytes_to_strip
        self.max_frame_size = max_frame_size
        self.fail_fast = fail_fast
        self.on_oversize: OnOversize = on_oversize
        #: The length field's declaration; the decoder reads it with ``struct``.
        self.length_field_schema: Any = _field_schema(byte_order, length_field_length)
        #: Writes the field for :meth:`encode`: the inverse of the decoder's arithmetic.
        self.prepender = LengthFieldPrepender(
            length_field_length,
            byte_order=byte_order,
            length_adjustment=-(length_field_offset + length_adjustment),
        )

    def decoder(self) -> Decoder:
        return _LengthFieldDecoder(self)

    def encode(self, message: Any) -> bytes:
        data = as_bytes(message)
        offset = self.length_field_offset
        if len(data) < offset:
            raise EncodeError(f"message shorter than length_field_offset={offset}")
        header = self._header(data)
        if offset:
            return data[:offset] + header + data[offset:]
        return header + data

    def encode_into(self, parts: list[bytes], message: Any) -> int:
        """Header and payload as two parts (no copy of the payload) when the length
        field is at offset 0."""
        if self.length_field_offset:
            return super().encode_into(parts, message)
        data = as_bytes(message)
        header = self._header(data)
        parts.append(header)
        parts.append(data)
        return len(header) + len(data)

    def _header(self, data: bytes) -> bytes:
        frame_length = len(data) + self.length_field_length
        if frame_length < self.initial_bytes_to_strip:
            raise EncodeError(
                f"frame of {frame_length} bytes is shorter than initial_bytes_to_strip"
            )
        return self.prepender.header(len(data))


def length_field(
    *,
    byte_order: ByteOrder = "big",
    length_field_offset: int = 0,
    length_field_length: int = 4,
    length_adjustment: int = 0,
    initial_bytes_to_strip: int = 0,
    max_frame_size: int = 1 << 20,
    fail_fast: bool = True,
    on_oversize: OnOversize = "close",
) -> LengthFieldCodec:
    """Length-field framing with netty's semantics (see :class:`LengthFieldCodec`).

        # 2-byte length, then the payload; handlers see the payload only
        Server(handler, codec=length_field(length_field_length=2, initial_bytes_to_strip=2))
    """
    return LengthFieldCodec(
        byte_order=byte_order,
        length_field_offset=length_field_offset,
        length_field_length=length_field_length,
        length_adjustment=length_adjustment,
        initial_bytes_to_strip=initial_bytes_to_strip,
        max_frame_size=max_frame_size,
        fail_fast=fail_fast,
        on_oversize=on_oversize,
    )
