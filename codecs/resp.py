"""RESP2, the Redis serialization protocol: simple strings, errors, integers, bulk
strings, arrays, and (for servers) inline commands.

    >>> codec = resp()
    >>> codec.encode([b"SET", "key", 42, None, SimpleString("OK")])
    b'*5\\r\\n$3\\r\\nSET\\r\\n$3\\r\\nkey\\r\\n:42\\r\\n$-1\\r\\n+OK\\r\\n'

Two decoding modes:

- ``resp()`` decodes any RESP2 value (what a client reads): ``+`` → :class:`SimpleString`,
  ``-`` → :class:`RespError`, ``:`` → ``int``, ``$`` → ``bytes`` (``$-1`` →
  :data:`NULL_BULK`), ``*`` → ``list`` (``*-1`` → :data:`NULL_ARRAY`); any other first
  byte is a protocol error.  The nulls are falsy singletons, not ``None`` (which means
  "no frame yet" to a decoder and "no reply" to a handler).
- ``resp(commands=True)`` decodes what a Redis *server* reads: every frame is a
  non-empty ``list[bytes]``.  ``*`` starts an array whose elements must be non-null bulk
  strings; a line starting with anything else is an inline command (``PING\\r\\n``, split
  on whitespace with Redis's quoting rules).  Empty arrays and blank lines are skipped.

``encode`` takes Python values: ``bytes``-like → bulk string, ``str`` → bulk string
(UTF-8), :class:`SimpleString` → ``+``, :class:`RespError` → ``-``, ``int`` (and
``bool``) → ``:``, :data:`NULL_BULK` and ``None`` → null bulk string, :data:`NULL_ARRAY`
→ null array, ``list`` / ``tuple`` → array, :class:`RawResp` → sent as it is
(pre-encoded replies).  A handler's ``None`` means *no reply* in gevwire: return
:data:`NULL_BULK` for nil.
:func:`encode_command` encodes a command the way clients send it (every argument a
bulk string).

Bounds, all configurable: ``max_frame_size`` (a whole frame on the wire),
``max_bulk_length``, ``max_array_length``, ``max_depth`` (array nesting),
``max_inline_length`` (an inline command or a ``+`` / ``-`` line).  A bulk string or an
array over its limit is rejected from its header, before its body is buffered.  Size
violations raise :class:`RespTooLarge` (a :class:`~gevwire.errors.FrameTooLarge`),
malformed input :class:`RespProtocolError` (a :class:`~gevwire.errors.FrameError`); both
are fatal, as in Redis, which closes the connection after a protocol error.

Frames are cut with ``bytes.find`` and slices, never a per-byte loop.  A frame that
arrives in many pieces is not re-parsed per piece: the decoder keeps the arrays it has
parsed so far, the number of bytes it needs before trying again (a bulk string's end),
and, while a line is incomplete, searches only the bytes that arrived since.  Lengths
with leading zeros (``$03``) are accepted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import TYPE_CHECKING, Any, Final

from gevwire.codec import BaseCodec, Decoder
from gevwire.errors import EncodeError, FrameError, FrameTooLarge
from gevwire.ringbuffer import RingBuffer

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "NULL_ARRAY",
    "NULL_BULK",
    "RawResp",
    "RespCodec",
    "RespError",
    "RespNull",
    "RespProtocolError",
    "RespTooLarge",
    "SimpleString",
    "encode_command",
    "resp",
]

#: Default bounds.  Redis itself allows 512 MB bulk strings; a gevwire connection holds a
#: whole frame in memory, so the defaults are smaller (raise them for big values).
MAX_FRAME_SIZE: Final = 16 << 20
MAX_BULK_LENGTH: Final = 8 << 20
MAX_ARRAY_LENGTH: Final = 1 << 20
MAX_DEPTH: Final = 32
MAX_INLINE_LENGTH: Final = 64 << 10  # Redis's PROTO_INLINE_MAX_SIZE

_CRLF: Final = b"\r\n"
# A length or integer line: type byte, at most 20 characters ("-9223372036854775808"),
# CRLF.  No CRLF within this many bytes of the type byte is a protocol error.
_NUMBER_LINE: Final = 23
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_BULK, _ARRAY, _INTEGER, _SIMPLE, _ERROR = 36, 42, 58, 43, 45  # $ * : + -
_NAMES: Final = {_BULK: "bulk length", _ARRAY: "array length", _INTEGER: "integer"}

# The command fast path (see _RespDecoder._cut_commands) recognises headers by table
# lookup: arrays of up to _FAST_ARGS bulk strings of up to _FAST_BULK bytes.  Frames
# beyond these go to the general parser.
_FAST_ARGS: Final = 64
_FAST_BULK: Final = 1023
_FAST_ARRAYS: Final = {b"*%d" % n: n for n in range(1, _FAST_ARGS + 1)}
_FAST_BULKS: Final = {b"$%d" % n: n for n in range(_FAST_BULK + 1)}
# The largest frame the fast path can cut; it is used only under bounds at least this.
_FAST_FRAME: Final = 4 + _FAST_ARGS * (_FAST_BULK + 9)


class SimpleString(str):
    """A RESP simple string (``+OK``); a ``str``, so ``SimpleString("OK") == "OK"``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"SimpleString({str.__repr__(self)})"


class RespError(str):
    """A RESP error reply (``-ERR unknown command``); a ``str`` holding the message."""

    __slots__ = ()

    @property
    def kind(self) -> str:
        """The error's first word, Redis's error code (``"ERR"``, ``"WRONGTYPE"``)."""
        return self.split(" ", 1)[0]

    def __repr__(self) -> str:
        return f"RespError({str.__repr__(self)})"


class RawResp(bytes):
    """Bytes that already are RESP (one or more whole values): ``encode`` sends them as
    they are.  For constant replies: ``OK = RawResp(b"+OK\\r\\n")``."""

    __slots__ = ()


class RespNull:
    """A RESP2 null: :data:`NULL_BULK` (``$-1``) or :data:`NULL_ARRAY` (``*-1``).

    Decoded nulls are these two singletons, never ``None``: a decoder's ``None`` means
    "no whole frame yet", and a handler's ``None`` means "no reply".  They are falsy and
    encode back to the same bytes.
    """

    __slots__ = ("name", "wire")

    def __init__(self, name: str, wire: bytes) -> None:
        self.name = name
        self.wire = wire

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.name

    def __copy__(self) -> RespNull:
        return self

    def __deepcopy__(self, memo: Any) -> RespNull:
        return self

    def __reduce__(self) -> str:
        return self.name


#: The null bulk string ``$-1`` (what ``GET`` of a missing key returns).  ``encode(None)``
#: writes it too.
NULL_BULK: Final = RespNull("NULL_BULK", b"$-1\r\n")
#: The null array ``*-1``.
NULL_ARRAY: Final = RespNull("NULL_ARRAY", b"*-1\r\n")


class RespProtocolError(FrameError):
    """Bytes that are not RESP (a bad type byte, length, or terminator)."""


class RespTooLarge(FrameTooLarge):
    """A RESP value or frame over one of the codec's bounds.

    ``what`` names the bound (``"max_bulk_length"``, ``"max_frame_size"`` ...); ``size``
    is the announced size, or minus a lower bound of it when no header announced it.
    """

    def __init__(self, what: str, size: int, limit: int) -> None:
        at_least = "at least " if size < 0 else ""
        FrameError.__init__(self, f"{at_least}{abs(size)} exceeds {what}={limit}")
        self.what = what
        self.size = size
        self.limit = limit
        self.fatal = True


# -- decoding --------------------------------------------------------------------------


def _split_inline(line: bytes) -> list[bytes]:
    """An inline command's arguments: whitespace-separated, with Redis's quoting (double
    quotes with ``\\n \\r \\t \\b \\a \\\\ \\" \\xHH`` escapes, single quotes with ``\\'``)."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i : i + 1].isspace():
            i += 1
        if i >= n:
            return args
        arg = bytearray()
        quote = 0
        while True:
            if i >= n:
                if quote:
                    raise RespProtocolError("unbalanced quotes in inline request")
                break
            ch = line[i]
            if quote == 34:  # inside "..."
                if ch == 92 and i + 3 < n and line[i + 1] == 120 and _is_hex(line[i + 2 : i + 4]):
                    arg.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif ch == 92 and i + 1 < n:
                    arg.append(_ESCAPES.get(line[i + 1], line[i + 1]))
                    i += 1
                elif ch == 34:
                    if i + 1 < n and not line[i + 1 : i + 2].isspace():
                        raise RespProtocolError("unbalanced quotes in inline request")
                    quote = 0
                    i += 1
                    break
                else:
                    arg.append(ch)
            elif quote == 39:  # inside '...'
                if ch == 92 and i + 1 < n and line[i + 1] == 39:
                    arg.append(39)
                    i += 1
                elif ch == 39:
                    if i + 1 < n and not line[i + 1 : i + 2].isspace():
                        raise RespProtocolError("unbalanced quotes in inline request")
                    quote = 0
                    i += 1
                    break
                else:
                    arg.append(ch)
            elif line[i : i + 1].isspace():
                break
            elif ch == 34 or ch == 39:
                quote = ch
            else:
                arg.append(ch)
            i += 1
        args.append(bytes(arg))


_ESCAPES: Final = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(c in b"0123456789abcdefABCDEF" for c in two)


def _number(kind: int, digits: bytes) -> int:
    """The integer on a ``$`` / ``*`` / ``:`` line (ASCII digits, optional minus)."""
    if digits.isdigit():
        return int(digits)
    if digits[:1] == b"-" and digits[1:].isdigit():
        return -int(digits[1:])
    raise RespProtocolError(f"invalid {_NAMES[kind]} {digits[:_NUMBER_LINE]!r}")


_NOTHING: Final[Any] = object()


class _RespDecoder(Decoder):
    """One connection's RESP framing state (see the module docstring).

    Offsets kept between calls count from the first byte of the frame in progress, which
    is the first byte of the next buffer the decoder is given (the connection keeps the
    unused tail at the start of its input ring).
    """

    __slots__ = ("_commands", "_counts", "_done", "_fast", "_fast_inline", "_frame_start",
                 "_line_limit", "_max_array", "_max_bulk", "_max_depth", "_max_frame",
                 "_max_inline", "_need", "_queue", "_scan", "_stack")

    def __init__(self, codec: RespCodec) -> None:
        self._commands = codec.commands
        self._max_frame = codec.max_frame_size
        self._max_bulk = codec.max_bulk_length
        self._max_array = codec.max_array_length
        self._max_depth = 1 if codec.commands else codec.max_depth
        self._max_inline = codec.max_inline_length
        self._fast = (codec.commands and self._max_bulk >= _FAST_BULK
                      and self._max_array >= _FAST_ARGS and self._max_frame >= _FAST_FRAME)
        # Longest inline line the fast path takes (longer ones: the general parser).
        self._fast_inline = min(self._max_inline, self._max_frame - 2)
        self._stack: list[list[Any]] = []  # open arrays of the frame in progress, outermost first
        self._counts: list[int] = []  # their announced lengths
        self._done = 0  # bytes of the frame in progress already parsed into _stack
        self._need = 0  # no progress is possible before this many bytes are buffered
        self._scan = -1  # a line is incomplete: no line end before this offset (-1: none)
        self._line_limit = 0  # ... and with this many bytes buffered it is too long
        self._frame_start = 0  # while parsing: where the frame in progress starts
        # Frames cut by decode() beyond the one it returned, with the bytes each used.
        self._queue: deque[tuple[Any, int]] = deque()

    def _reset(self) -> None:
        self._stack.clear()
        self._counts.clear()
        self._done = self._need = 0
        self._scan = -1

    # -- the connection's entry points -----------------------------------------------

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        n = len(view)
        if n < self._need or self._queue:
            return [], 0
        if self._scan >= 0 and not self._line_may_end(view[self._scan :].tobytes(), n):
            return [], 0
        self._need = 0
        frames: list[Any] = []
        if self._fast and not self._done:  # the hot path: whole commands from a read
            data = view.tobytes()
            pos = self._cut_commands(data, frames)
            if pos == n:
                return frames, n
            return frames, self._cut(data, pos, pos, frames, None)
        return frames, self._cut_view(view, frames, None)

    def decode_bytes(self, data: bytes) -> tuple[list[Any], int]:
        n = len(data)
        if self._fast and not self._done and not self._queue and self._scan < 0 \
                and n >= self._need:
            # decode_view's hot path, without its copy of the read.
            self._need = 0
            frames: list[Any] = []
            pos = self._cut_commands(data, frames)
            if pos == n:
                return frames, n
            return frames, self._cut(data, pos, pos, frames, None)
        return self.decode_view(memoryview(data))

    def decode(self, ring: RingBuffer) -> Any | None:
        queue = self._queue
        if queue:
            frame, used = queue.popleft()
            ring.retrieve(used)
            return frame
        n = ring._len
        if n < self._need or not n:
            return None
        if self._scan >= 0 and not self._line_may_end(b"\n" if ring.find(b"\n", self._scan)
                                                      >= 0 else b"", n):
            return None
        self._need = 0
        frames: list[Any] = []
        ends: list[int] = []
        used = self._cut_view(ring.contiguous(n), frames, ends)
        if not frames:
            ring.retrieve(used)  # blank inline lines, skipped
            return None
        previous = 0
        ends[-1] = used  # blank lines after the last frame go with it
        for frame, end in zip(frames, ends, strict=True):
            queue.append((frame, end - previous))
            previous = end
        frame, size = queue.popleft()
        ring.retrieve(size)
        return frame

    def announced_length(self, ring: RingBuffer) -> int:
        # The frame in progress cannot go on before _need bytes (a bulk string's end,
        # once its header is parsed; checked against max_frame_size by _pause).
        need = self._need
        return need if not self._queue and need > ring._len and self._scan < 0 else 0

    def _line_may_end(self, new: bytes, buffered: int) -> bool:
        """While a line is incomplete: False if ``new`` (the bytes since the last search)
        holds no line end and the line is not yet too long (nothing to do)."""
        if buffered < self._line_limit and b"\n" not in new:
            self._scan = buffered - 1
            self._need = buffered + 1
            return False
        self._scan = -1
        return True

    def _cut_view(self, view: memoryview, frames: list[Any], ends: list[int] | None) -> int:
        """Cut frames from ``view`` (which starts with the frame in progress); returns the
        bytes used.  With ``ends``, also the offset in ``view`` where each frame ends."""
        done = self._done
        if not done:
            return self._cut(view.tobytes(), 0, 0, frames, ends)
        data = view[done:].tobytes()
        if ends is not None or not self._fast:
            if ends is None:
                return self._cut(data, 0, -done, frames, None) + done
            used = self._cut(data, 0, -done, frames, ends) + done
            ends[:] = [end + done for end in ends]
            return used
        # Finish the frame in progress, then the rest goes through the fast path again.
        pos = self._cut(data, 0, -done, frames, None, one=True)
        if not frames or pos == len(data):
            return pos + done
        rest = data[pos:]
        more = self._cut_commands(rest, frames)
        if more < len(rest):
            more = self._cut(rest, more, more, frames, None)
        return done + pos + more

    # -- the parser --------------------------------------------------------------------

    def _cut(self, data: bytes, pos: int, start: int, frames: list[Any],
             ends: list[int] | None, *, one: bool = False) -> int:
        """Cut frames from ``data``, parsing from ``pos``; the frame in progress starts at
        ``start`` (before ``pos``, negative even, when part of it is on the stack).
        Appends whole frames (and, with ``ends``, the offset where each ends; ``one``:
        stop after one); returns the offset where the unfinished frame starts:
        everything before it is used.

        A malformed frame raises, unless frames were cut before it (in this call of the
        decoder): then the frames are kept and the next call, starting at the bad frame,
        raises.
        """
        try:
            return self._parse(data, pos, start, frames, ends, one)
        except FrameError:
            self._reset()
            if not frames:
                raise
            return self._frame_start

    def _cut_commands(self, data: bytes, frames: list[Any]) -> int:
        """The fast path for commands: cut whole frames from the start of ``data`` while
        they are arrays of small bulk strings or plain inline commands; return where it
        stopped (the general parser goes on from there).

        One ``split`` cuts the bytes at every CRLF.  A frame ``*n`` then is the 2n
        segments after its header, alternately ``$len`` and the content, and it is well
        formed exactly when every ``$len`` (read through a table) equals its content's
        length: a bulk string holding CRLF, a big or malformed length, or a frame cut
        short all show as a mismatch.  Pipelines mostly repeat one command shape, so a
        run of frames with the same header is checked column by column (one ``map`` per
        argument position for the whole run) and its frames are built with ``zip``: no
        Python code runs per frame or per argument.
        """
        parts = data.split(_CRLF)
        last = len(parts) - 1  # the segment after the last CRLF: not a whole line
        arrays = _FAST_ARRAYS.get
        bulks = _FAST_BULKS.get
        fast_inline = self._fast_inline
        extend = frames.extend
        i = 0
        while i < last:
            head = parts[i]
            count = arrays(head)
            if count is not None:
                period = 2 * count + 1
                run = (last - i) // period  # frames that fit, if all have this header
                if not run:
                    break
                stop = i + run * period
                heads = parts[i:stop:period]
                if heads.count(head) != run:
                    run = 1
                    while heads[run] == head:
                        run += 1
                    stop = i + run * period
                columns = [parts[i + 2 + 2 * j : stop : period] for j in range(count)]
                for j in range(count):
                    sizes = parts[i + 1 + 2 * j : stop : period]
                    size = bulks(sizes[0])
                    column = columns[j]
                    first = column[0]
                    # A column of one repeated argument (a command's name, above all)
                    # is checked with one count instead of a len() per argument.
                    same_size = size is not None and sizes.count(sizes[0]) == run and (
                        (len(first) == size and column.count(first) == run)
                        or list(map(len, column)) == [size] * run)
                    if not same_size and list(map(bulks, sizes)) != list(map(len, column)):
                        # Some frame of the run is not what its headers say: cut the run
                        # frame by frame, to stop exactly at that one.
                        return self._cut_commands_checked(parts, i, last, frames)
                if count == 1:
                    extend(map(list, zip(columns[0])))
                else:
                    extend(map(list, zip(*columns, strict=True)))
                i = stop
            elif head[:1] != b"*" and b"\n" not in head and len(head) <= fast_inline \
                    and b'"' not in head and b"'" not in head:
                args = head.split()
                rest = parts[i:last]
                if rest.count(head) == len(rest):  # the same line to the end (a benchmark)
                    if args:
                        extend(map(list, repeat(args, len(rest))))
                    i = last
                else:
                    if args:
                        frames.append(args)
                    i += 1
            else:
                break
        if i == last:
            return len(data) - len(parts[last])
        return sum(map(len, parts[:i])) + 2 * i

    def _cut_commands_checked(self, parts: list[bytes], i: int, last: int,
                              frames: list[Any]) -> int:
        """:meth:`_cut_commands` from segment ``i``, one frame at a time, stopping at the
        first frame it cannot prove well formed."""
        arrays = _FAST_ARRAYS.get
        bulks = _FAST_BULKS.get
        while i < last:
            head = parts[i]
            count = arrays(head)
            if count is None:
                break
            stop = i + 1 + 2 * count
            if stop > last:
                break
            args = parts[i + 2 : stop : 2]
            if list(map(bulks, parts[i + 1 : stop : 2])) != list(map(len, args)):
                break
            frames.append(args)
            i = stop
        return sum(map(len, parts[:i])) + 2 * i

    def _parse(self, data: bytes, pos: int, start: int, frames: list[Any],
               ends: list[int] | None, one: bool) -> int:
        """See :meth:`_cut`: parse from ``pos``; ``start`` is where the frame in progress
        starts in ``data`` (before ``pos`` when part of it is on the stack)."""
        stack = self._stack
        counts = self._counts
        commands = self._commands
        max_frame = self._max_frame
        max_bulk = self._max_bulk
        find = data.find
        end = len(data)
        frame_end = start + max_frame  # the frame in progress must end by here
        fast_end = end if end < frame_end else frame_end
        self._frame_start = start
        while True:
            value: Any = _NOTHING
            if stack:
                # The common case: a run of bulk strings filling the innermost array.  Any
                # surprise (another type, an incomplete or malformed element, a bound)
                # drops to the general parse below, which handles it.
                top = stack[-1]
                left = counts[-1] - len(top)
                append = top.append
                while left:
                    if pos >= fast_end or data[pos] != _BULK:
                        break
                    e = find(_CRLF, pos + 1, pos + _NUMBER_LINE)
                    if e < 0:
                        break
                    digits = data[pos + 1 : e]
                    if not digits.isdigit():
                        break
                    size = int(digits)
                    body = e + 2
                    stop = body + size
                    if size > max_bulk or stop + 2 > fast_end or data[stop : stop + 2] != _CRLF:
                        break
                    append(data[body:stop])
                    pos = stop + 2
                    left -= 1
                if not left:
                    value = stack.pop()
                    counts.pop()
            if value is _NOTHING:
                if pos >= end:
                    if stack:
                        self._pause(pos, start, pos + 1, end)
                    else:
                        self._reset()
                    return start
                kind = data[pos]
                if commands:
                    if stack:
                        if kind != _BULK:
                            raise RespProtocolError(f"expected '$', got {bytes([kind])!r}")
                    elif kind != _ARRAY:
                        value, pos = self._inline(data, pos, start, end)
                        if value is None:  # incomplete line: state saved
                            return start
                        if not value:  # a blank line: skipped
                            start = pos
                            frame_end = start + max_frame
                            fast_end = end if end < frame_end else frame_end
                            self._frame_start = start
                            continue
                if value is not _NOTHING:
                    pass  # an inline command
                elif kind == _BULK or kind == _ARRAY or kind == _INTEGER:
                    e = find(_CRLF, pos + 1, pos + _NUMBER_LINE)
                    # Bytes arriving one by one would meet "too large" (more than
                    # max_frame buffered, the line incomplete) before the line's end or
                    # its length limit: so must a read that has them all, or the error
                    # would depend on how the stream was split.
                    too_large = start + max_frame + 1
                    if too_large < (e + 2 if e >= 0 else pos + _NUMBER_LINE) \
                            and end >= too_large:
                        raise RespTooLarge("max_frame_size", start - too_large, max_frame)
                    if e < 0:
                        if end - pos >= _NUMBER_LINE:
                            raise RespProtocolError(
                                f"invalid {_NAMES[kind]} line {data[pos : pos + 24]!r}")
                        self._pause(pos, start, end + 1, end, pos + _NUMBER_LINE)
                        return start
                    number = _number(kind, data[pos + 1 : e])
                    line_end = e + 2
                    if kind == _BULK:
                        if number < 0:
                            if number != -1 or commands:
                                raise RespProtocolError(f"invalid bulk length {number}")
                            value = NULL_BULK
                            pos = line_end
                        else:
                            if number > max_bulk:
                                raise RespTooLarge("max_bulk_length", number, max_bulk)
                            stop = line_end + number
                            if stop + 2 > frame_end:
                                raise RespTooLarge("max_frame_size", start - stop - 2,
                                                   max_frame)
                            if stop + 2 > end:
                                self._pause(pos, start, stop + 2, end)
                                return start
                            if data[stop : stop + 2] != _CRLF:
                                raise RespProtocolError(
                                    f"bulk string of {number} bytes not followed by CRLF")
                            value = data[line_end:stop]
                            pos = stop + 2
                    elif kind == _ARRAY:
                        if line_end > frame_end:
                            raise RespTooLarge("max_frame_size", start - line_end, max_frame)
                        if number > 0:
                            if number > self._max_array:
                                raise RespTooLarge("max_array_length", number,
                                                   self._max_array)
                            if len(stack) >= self._max_depth:
                                raise RespProtocolError(
                                    f"arrays nested deeper than max_depth={self._max_depth}")
                            stack.append([])
                            counts.append(number)
                            pos = line_end
                            continue
                        if commands:  # Redis skips empty and null (or negative) arrays
                            pos = start = line_end
                            frame_end = start + max_frame
                            fast_end = end if end < frame_end else frame_end
                            self._frame_start = start
                            continue
                        if number < -1:
                            raise RespProtocolError(f"invalid array length {number}")
                        value = [] if number == 0 else NULL_ARRAY
                        pos = line_end
                    else:
                        if not _INT64_MIN <= number <= _INT64_MAX:
                            raise RespProtocolError(f"integer {number} out of range")
                        value = number
                        pos = line_end
                elif kind == _SIMPLE or kind == _ERROR:
                    limit = pos + 1 + self._max_inline + 2
                    e = find(_CRLF, pos + 1, limit)
                    if e < 0:
                        if end >= limit:
                            raise RespTooLarge("max_inline_length", pos - end,
                                               self._max_inline)
                        self._pause(pos, start, end + 1, end, limit)
                        return start
                    text = data[pos + 1 : e].decode("utf-8", "surrogateescape")
                    value = SimpleString(text) if kind == _SIMPLE else RespError(text)
                    pos = e + 2
                else:
                    raise RespProtocolError(f"invalid RESP type byte {bytes([kind])!r}")
                if pos > frame_end:
                    raise RespTooLarge("max_frame_size", start - pos, max_frame)
            # A whole value: into its array, or out as a frame.
            while stack:
                top = stack[-1]
                top.append(value)
                if len(top) < counts[-1]:
                    break
                value = stack.pop()
                counts.pop()
            else:
                frames.append(value)
                start = pos
                self._frame_start = start
                if ends is not None:
                    ends.append(pos)
                if one:
                    self._reset()
                    return pos
                frame_end = start + max_frame
                fast_end = end if end < frame_end else frame_end

    def _pause(self, pos: int, start: int, need: int, end: int, line_limit: int = -1) -> None:
        """The frame starting at ``start`` is incomplete at ``pos``: remember how far it
        got (offsets from ``start``), or fail if it is already too large."""
        if end - start > self._max_frame:
            raise RespTooLarge("max_frame_size", start - end, self._max_frame)
        self._done = pos - start
        self._need = need - start
        if line_limit >= 0:
            self._scan = end - 1 - start
            limit = line_limit - start
            self._line_limit = limit if limit < self._max_frame + 1 else self._max_frame + 1
        else:
            self._scan = -1

    def _inline(self, data: bytes, pos: int, start: int, end: int) -> tuple[Any, int]:
        """An inline command at ``pos``: ``(args, next pos)``, ``([], next pos)`` for a
        blank line, or ``(None, pos)`` (state saved) if its line is incomplete."""
        limit = pos + self._max_inline + 1
        e = data.find(b"\n", pos, limit)
        if e < 0:
            if end >= limit:
                raise RespTooLarge("max_inline_length", pos - end, self._max_inline)
            self._pause(pos, start, end + 1, end, limit)
            return None, pos
        if e + 1 - start > self._max_frame:
            raise RespTooLarge("max_frame_size", start - e - 1, self._max_frame)
        return _split_inline(data[pos:e]), e + 1


# -- encoding --------------------------------------------------------------------------


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _bulk_copy(value: bytearray | memoryview) -> bytes:
    return _bulk(bytes(value))


def _text(value: str) -> bytes:
    try:
        return _bulk(value.encode())
    except UnicodeEncodeError as exc:
        raise EncodeError(f"cannot encode {value!r} as UTF-8: {exc}") from exc


def _line(prefix: bytes, value: str) -> bytes:
    data = value.encode("utf-8", "surrogateescape")
    if b"\r" in data or b"\n" in data:
        raise EncodeError(f"a RESP simple string or error cannot hold CR or LF: {value!r}")
    return prefix + data + _CRLF


def _simple(value: str) -> bytes:
    return _line(b"+", value)


def _error(value: str) -> bytes:
    # As redis-server does: an error message never ends its line early (a client's own
    # argument may hold CR or LF, and an error that quotes it must still be one line).
    if "\r" in value or "\n" in value:
        value = value.replace("\r", " ").replace("\n", " ")
    return _line(b"-", value)


def _integer(value: int) -> bytes:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise EncodeError(f"integer {value} does not fit RESP's signed 64 bits")
    return b":%d\r\n" % value


def _null(value: None) -> bytes:
    return b"$-1\r\n"


def _null_value(value: RespNull) -> bytes:
    return value.wire


def _raw(value: RawResp) -> bytes:
    return value  # a bytes subclass: sent as it is


# A bulk string at least this long is sent as header, value, CRLF: three parts, the
# value itself not copied (an MGET of large values is then measured, and refused past
# the connection's cap, before any byte of it is copied).
_BULK_BY_REFERENCE = 4096


def _array(value: list[Any] | tuple[Any, ...]) -> bytes:
    parts: list[bytes] = [b"*%d\r\n" % len(value)]
    _array_parts(value, parts, 0)
    return b"".join(parts)


def _array_into(value: list[Any] | tuple[Any, ...], parts: list[bytes]) -> int:
    """Append the array ``value`` to ``parts`` (its large values as parts of their own,
    not copied); return the length appended."""
    mine: list[bytes] = [b"*%d\r\n" % len(value)]
    if _array_parts(value, mine, 0):
        parts.extend(mine)
        return sum(map(len, mine))
    data = b"".join(mine)
    parts.append(data)
    return len(data)


def _array_parts(value: list[Any] | tuple[Any, ...], parts: list[bytes], depth: int) -> bool:
    """Append the items of ``value``; True if a large value was appended by reference."""
    if depth > 1000:
        raise EncodeError("arrays nested more than 1000 deep")
    append = parts.append
    referenced = False
    for item in value:
        kind = type(item)
        if kind is bytes:
            if len(item) < _BULK_BY_REFERENCE:
                append(b"$%d\r\n%b\r\n" % (len(item), item))
            else:
                append(b"$%d\r\n" % len(item))
                append(item)
                append(_CRLF)
                referenced = True
        elif kind is list or kind is tuple:
            append(b"*%d\r\n" % len(item))
            if _array_parts(item, parts, depth + 1):
                referenced = True
        else:
            append(_encode_value(item))
    return referenced


_ENCODERS: Final[dict[type, Callable[[Any], bytes]]] = {
    bytes: _bulk,
    bytearray: _bulk_copy,
    memoryview: _bulk_copy,
    str: _text,
    SimpleString: _simple,
    RespError: _error,
    int: _integer,
    bool: _integer,
    type(None): _null,
    RespNull: _null_value,
    list: _array,
    tuple: _array,
    RawResp: _raw,
}
# Subclasses (IntEnum, a str subclass ...) are found through isinstance, most specific first.
_BASES: Final = (RawResp, SimpleString, RespError, bytes, bytearray, memoryview, str, int,
                 list, tuple)


def _encode_value(value: Any) -> bytes:
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        for base in _BASES:
            if isinstance(value, base):
                encoder = _ENCODERS[base]
                break
        else:
            raise EncodeError(f"RESP cannot encode a {type(value).__name__}: {value!r}")
    return encoder(value)


def encode_command(*args: bytes | bytearray | memoryview | str | int | float) -> bytes:
    """A command as clients send it: an array of bulk strings (numbers as their text).

        >>> encode_command("SET", "k", 1)
        b'*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$1\\r\\n1\\r\\n'
    """
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (int, float)):
            data = repr(arg).encode()
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        else:
            raise EncodeError(f"a command argument cannot be a {type(arg).__name__}")
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


# -- the codec ---------------------------------------------------------------------------


class RespCodec(BaseCodec):
    """RESP2 frames; see the module docstring for the value types and bounds.

    ``commands=True``: decode what a Redis server reads (every frame a non-empty
    ``list[bytes]``, inline commands allowed); otherwise any RESP2 value.
    """

    def __init__(
        self,
        *,
        commands: bool = False,
        max_frame_size: int = MAX_FRAME_SIZE,
        max_bulk_length: int = MAX_BULK_LENGTH,
        max_array_length: int = MAX_ARRAY_LENGTH,
        max_depth: int = MAX_DEPTH,
        max_inline_length: int = MAX_INLINE_LENGTH,
    ) -> None:
        for name, value in (("max_frame_size", max_frame_size),
                            ("max_bulk_length", max_bulk_length),
                            ("max_array_length", max_array_length),
                            ("max_depth", max_depth),
                            ("max_inline_length", max_inline_length)):
            if value < (0 if name == "max_bulk_length" else 1):
                raise ValueError(f"{name} must be positive, not {value}")
        self.commands = commands
        self.max_frame_size = max_frame_size
        self.max_bulk_length = max_bulk_length
        self.max_array_length = max_array_length
        self.max_depth = max_depth
        self.max_inline_length = max_inline_length

    def decoder(self) -> Decoder:
        return _RespDecoder(self)

    def encode(self, message: Any) -> bytes:
        encoder = _ENCODERS.get(type(message))
        if encoder is not None:
            return encoder(message)
        return _encode_value(message)

    def encode_into(self, parts: list[bytes], message: Any) -> int:
        # encode, inlined: a reply costs one Python call level, not two.
        kind = type(message)
        if kind is list or kind is tuple:  # parts, not joined: see _BULK_BY_REFERENCE
            return _array_into(message, parts)
        encoder = _ENCODERS.get(kind)
        data = encoder(message) if encoder is not None else _encode_value(message)
        parts.append(data)
        return len(data)

    # -- for gevwire.testing.check_codec -----------------------------------------------

    def example_strategy(self) -> SearchStrategy[Any]:
        """Messages ``encode`` takes (commands: lists of bytes / str arguments)."""
        from hypothesis import strategies as st

        text = st.text(st.characters(exclude_categories=["Cs"]), max_size=16)
        binary = st.binary(max_size=24)
        if self.commands:
            arg = st.one_of(binary, text)
            return st.lists(arg, min_size=1, max_size=6)
        line = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"),
                       max_size=16)
        scalars = st.one_of(
            binary, text, st.none(), st.just(NULL_BULK), st.just(NULL_ARRAY), st.booleans(),
            st.integers(_INT64_MIN, _INT64_MAX), line.map(SimpleString), line.map(RespError),
        )
        if self.max_depth == 1:
            return st.one_of(scalars, st.lists(scalars, max_size=5))
        return st.recursive(
            scalars,
            lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner),
            max_leaves=12,
        )

    def example_frame(self, message: Any) -> Any:
        """The frame ``message`` reads back as."""
        if isinstance(message, (list, tuple)):
            return [self.example_frame(item) for item in message]
        if message is None:
            return NULL_BULK
        if type(message) is str:
            return message.encode()
        if type(message) is bool:
            return int(message)
        return message


def resp(
    *,
    commands: bool = False,
    max_frame_size: int = MAX_FRAME_SIZE,
    max_bulk_length: int = MAX_BULK_LENGTH,
    max_array_length: int = MAX_ARRAY_LENGTH,
    max_depth: int = MAX_DEPTH,
    max_inline_length: int = MAX_INLINE_LENGTH,
) -> RespCodec:
    """RESP2 frames (Redis).  ``commands=True`` for a server: frames are commands.

        # a Redis-compatible server: on_message gets [b"SET", b"key", b"value"]
        Server(handler, codec=resp(commands=True, max_bulk_length=64 << 20))
    """
    return RespCodec(commands=commands, max_frame_size=max_frame_size,
                     max_bulk_length=max_bulk_length, max_array_length=max_array_length,
                     max_depth=max_depth, max_inline_length=max_inline_length)
