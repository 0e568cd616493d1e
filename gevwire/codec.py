"""The codec interface: frames are cut from a connection's input and replies encoded.

Codecs are sans-I/O: they see a :class:`~gevwire.ringbuffer.RingBuffer` or a memoryview
of bytes, never a socket, so they are tested on byte strings alone.
"""

from __future__ import annotations

from typing import Any

from gevwire.ringbuffer import RingBuffer

__all__ = ["BaseCodec", "Decoder", "RawCodec"]


class Decoder:
    """Cuts frames for one connection; holds whatever state framing needs across reads.

    ``decode`` is the contract; ``decode_view`` is an optional fast path the connection
    uses when its input ring is empty, so whole frames that arrive in one read are cut
    straight from the loop's read buffer without being copied into the ring first.
    """

    __slots__ = ()

    def decode(self, ring: RingBuffer) -> Any | None:
        """Consume and return the next whole frame from ``ring``, or None if incomplete.

        Raise :class:`~gevwire.errors.FrameError` for bytes that can never be a frame.
        """
        raise NotImplementedError

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        """Cut every whole frame from the start of ``view``: ``(frames, bytes used)``.

        Frames must not refer to ``view``'s memory (it is reused by the next read).  The
        bytes after ``used`` are an incomplete frame; the connection moves them to the
        ring and calls :meth:`decode` once more data arrives.  The default cuts nothing.
        """
        return [], 0


class BaseCodec:
    """A protocol's framing (through per-connection :class:`Decoder`\\s) and encoding."""

    #: Largest frame accepted; the framing rejects longer ones from their header.
    max_frame_size: int = 1 << 20

    def decoder(self) -> Decoder:
        """A decoder for one new connection."""
        raise NotImplementedError

    def encode(self, message: Any) -> bytes:
        """The bytes that carry ``message`` (a handler's reply or a ``send`` argument)."""
        raise NotImplementedError


class _RawDecoder(Decoder):
    __slots__ = ()

    def decode(self, ring: RingBuffer) -> bytes | None:
        if not ring.length:
            return None
        return ring.read_all()

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        return [view.tobytes()], len(view)


_RAW_DECODER = _RawDecoder()


class RawCodec(BaseCodec):
    """No framing: each read's bytes are one frame, replies are sent as they are.

    gev's ``DefaultProtocol``.  ``encode`` takes ``bytes``, ``bytearray``, ``memoryview``
    or ``str`` (UTF-8).
    """

    def decoder(self) -> Decoder:
        return _RAW_DECODER

    def encode(self, message: Any) -> bytes:
        if type(message) is bytes:
            return message
        if isinstance(message, (bytearray, memoryview)):
            return bytes(message)
        if isinstance(message, str):
            return message.encode()
        raise TypeError(f"RawCodec sends bytes-like or str, not {type(message).__name__}")
