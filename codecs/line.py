"""Delimited frames: lines (``line``) and netty's ``DelimiterBasedFrameDecoder``
(``delimiter``).

    >>> codec = line()
    >>> codec.encode(b"hello")
    b'hello\\n'
    >>> line(b"\\r\\n", encoding="utf-8").encode("héllo")
    b'h\\xc3\\xa9llo\\r\\n'

Every frame is bounded: a line (without its delimiter) longer than ``max_length`` is
:class:`~gevwire.errors.FrameTooLarge`, detected as soon as the buffered bytes prove it,
so an endless line never holds more than about ``max_length`` bytes.

Scanning resumes where the last search stopped: a long line that arrives in many pieces
is searched once, not once per piece (O(n), not O(n²)).

With several delimiters the match that *ends* first wins, and among matches ending at
the same byte the longest delimiter wins (so ``b"\\r\\n"`` beats ``b"\\n"``).  netty picks
the match that *starts* first; the two agree except where netty's choice depends on how
the stream was split into reads (one delimiter inside or overlapping another), which a
decoder that must give the same frames for any split cannot copy.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from gevwire.codec import BaseCodec, CutAheadDecoder, Decoder
from gevwire.errors import EncodeError, FrameError, FrameTooLarge
from gevwire.ringbuffer import RingBuffer

from ._util import as_bytes

__all__ = ["DelimiterCodec", "delimiter", "line"]

_U8 = struct.Struct("B")
_CR = 13

# find(needle, start, end) -> index or -1, on a bytes object or a ring.
_Find = Callable[[bytes, int, int], int]


def _first_match(
    find: _Find, delimiters: tuple[bytes, ...], base: int, scanned: int, stop: int
) -> tuple[int, int]:
    """Earliest-ending match (longest on ties) ending at or before ``stop``.

    ``base`` is where the frame starts; ``scanned`` how many bytes after ``base`` are
    known to hold no match ending inside them.  Returns ``(index, delimiter length)``,
    or ``(-1, 0)``.
    """
    best, best_len = -1, 0
    for delim in delimiters:
        size = len(delim)
        start = base + scanned - size + 1
        if start < base:
            start = base
        i = find(delim, start, stop)
        if i >= 0 and (best < 0 or i + size < best + best_len or size > best_len):
            # i + size <= best + best_len here: the search below is limited to it.
            best, best_len = i, size
            stop = i + size
    return best, best_len


class _DelimiterDecoder(CutAheadDecoder):
    __slots__ = ("_delims", "_encoding", "_max", "_scanned", "_single", "_strip",
                 "_strip_cr", "_window")

    def __init__(self, codec: DelimiterCodec) -> None:
        super().__init__()
        self._delims = codec.delimiters
        self._single = codec.delimiters[0] if len(codec.delimiters) == 1 else None
        self._max = codec.max_length
        self._window = codec.max_frame_size
        self._strip = codec.strip
        self._strip_cr = codec.strip_cr
        self._encoding = codec.encoding
        # Bytes at the start of the ring known to hold no whole delimiter.  decode_view
        # sets it for the tail it leaves to the ring (the connection calls it only when
        # the ring is empty, and then writes exactly that tail there).
        self._scanned = 0

    def _too_long(self, size: int) -> FrameTooLarge:
        """``size``: the line's length, or minus a lower bound of it (no delimiter yet)."""
        return FrameTooLarge(size, self._max)

    def _frame(self, data: bytes) -> Any:
        if self._encoding is None:
            return data
        try:
            return data.decode(self._encoding)
        except UnicodeDecodeError as exc:
            raise FrameError(f"line is not valid {self._encoding}: {exc}") from exc

    def decode_one(self, ring: RingBuffer) -> Any | None:
        available = ring.length
        window = self._window
        stop = available if available < window else window
        single = self._single
        if single is not None:
            start = self._scanned - len(single) + 1
            i = ring.find(single, start if start > 0 else 0, stop)
            size = len(single)
        else:
            i, size = _first_match(ring.find, self._delims, 0, self._scanned,
                                   stop)
        if i < 0:
            if stop >= window:
                raise self._too_long(-stop)
            self._scanned = stop
            return None
        self._scanned = 0
        content = i
        if self._strip_cr and i and ring.unpack_from(_U8, i - 1)[0] == _CR:
            content -= 1
        if content > self._max:
            raise self._too_long(content)
        if self._strip:
            data = ring.read(content)
            ring.retrieve(i + size - content)
        else:
            data = ring.read(i + size)
        return self._frame(data)

    def cut_view(self, view: memoryview) -> tuple[list[Any], int]:
        # memoryview has no find(): search one bytes copy (one memcpy of at most a read).
        return self.cut_bytes(view.tobytes())

    def cut_bytes(self, data: bytes) -> tuple[list[Any], int]:
        end = len(data)
        frames: list[Any] = []
        pos = 0
        window = self._window
        single = self._single
        strip = self._strip
        strip_cr = self._strip_cr
        max_length = self._max
        encoded = self._encoding is not None
        find = data.find
        try:
            while pos < end:
                stop = pos + window
                if stop > end:
                    stop = end
                if single is not None:
                    i = find(single, pos, stop)
                    size = len(single)
                else:
                    i, size = _first_match(find, self._delims, pos, 0, stop)
                if i < 0:
                    if stop - pos >= window:
                        raise self._too_long(pos - stop)
                    break
                content = i
                if strip_cr and i > pos and data[i - 1] == _CR:
                    content -= 1
                if content - pos > max_length:
                    raise self._too_long(content - pos)
                frame = data[pos:content] if strip else data[pos : i + size]
                frames.append(self._frame(frame) if encoded else frame)
                pos = i + size
        except FrameError:
            self._scanned = 0
            if not frames:
                raise
            # Hand on the lines before the bad one; decode() raises on it in the ring.
            return frames, pos
        self._scanned = end - pos
        return frames, pos


class DelimiterCodec(BaseCodec):
    """Frames ended by one of ``delimiters``; see the module docstring for the rules.

    ``max_length`` bounds a frame without its delimiter (and without the ``\\r`` that
    ``strip_cr`` drops); ``max_frame_size`` is the most bytes one frame can take on the
    wire.  ``strip`` drops the delimiter (and, with ``strip_cr``, a ``\\r`` before it)
    from the frames handed on.  ``encoding``: frames are ``str`` decoded with it
    (undecodable bytes are a :class:`~gevwire.errors.FrameError`).

    ``encode`` takes bytes-like or ``str`` (encoded with ``encoding``, default UTF-8)
    and appends ``delimiters[0]`` (or the first delimiter after which the message reads
    back as exactly one frame), unless the message already ends with a delimiter: then
    it is sent as it is, so a frame received with ``strip=False`` can be sent back.  A
    message that would not read back as one frame (it holds a delimiter) is an
    :class:`~gevwire.errors.EncodeError`.  With ``strip_cr`` a line ending in ``\\r``
    reads back without it.
    """

    def __init__(
        self,
        delimiters: Sequence[bytes],
        *,
        max_length: int = 64 << 10,
        strip: bool = True,
        strip_cr: bool = False,
        encoding: str | None = None,
    ) -> None:
        if isinstance(delimiters, (bytes, bytearray)):
            raise TypeError("delimiters is a list of bytes, not one bytes object")
        delims = tuple(bytes(d) for d in delimiters)
        if not delims:
            raise ValueError("at least one delimiter is needed")
        if any(not d for d in delims):
            raise ValueError("a delimiter must not be empty")
        if max_length < 0:
            raise ValueError("max_length must be >= 0")
        if encoding is not None:
            "".encode(encoding)  # LookupError for an unknown encoding, now
        self.delimiters = delims
        self.max_length = max_length
        self.strip = strip
        self.strip_cr = strip_cr
        self.encoding = encoding
        self.max_frame_size = max_length + max(len(d) for d in delims) + int(strip_cr)

    def decoder(self) -> Decoder:
        return _DelimiterDecoder(self)

    def encode(self, message: Any) -> bytes:
        if isinstance(message, str):
            data = message.encode(self.encoding or "utf-8")
        else:
            data = as_bytes(message)
        delims = self.delimiters
        if len(delims) == 1:
            delim = delims[0]
            if not data.endswith(delim):
                data += delim
            if data.find(delim) != len(data) - len(delim):
                raise EncodeError("message contains the delimiter")
            return data
        if any(data.endswith(d) for d in delims):  # already terminated: as it is
            i, size = _first_match(data.find, delims, 0, 0, len(data))
            if i + size == len(data):
                return data
        else:
            # The first delimiter that reads back as exactly this frame: with
            # [b"\n", b"\r\n"], b"x\r" must end in b"\r\n", not b"\n".
            for delim in delims:
                out = data + delim
                i, size = _first_match(out.find, delims, 0, 0, len(out))
                if i == len(data) and size == len(delim):
                    return out
        raise EncodeError("message contains a delimiter")


def line(
    delimiter: bytes = b"\n",
    *,
    max_length: int = 64 << 10,
    strip: bool = True,
    encoding: str | None = None,
) -> DelimiterCodec:
    """Lines ended by ``delimiter``; with ``b"\\n"``, ``strip`` also drops a ``\\r`` before it.

        # text lines of up to 1 KiB, handed on as str
        Server(handler, codec=line(max_length=1024, encoding="utf-8"))
    """
    return DelimiterCodec(
        [delimiter],
        max_length=max_length,
        strip=strip,
        strip_cr=delimiter == b"\n",
        encoding=encoding,
    )


def delimiter(
    delimiters: Sequence[bytes],
    *,
    max_length: int = 64 << 10,
    strip: bool = True,
    encoding: str | None = None,
) -> DelimiterCodec:
    """netty's ``DelimiterBasedFrameDecoder``: frames end at any of ``delimiters``.

        # NUL- or newline-terminated messages
        Server(handler, codec=delimiter([b"\\0", b"\\n"], max_length=4096))
    """
    return DelimiterCodec(delimiters, max_length=max_length, strip=strip, encoding=encoding)
