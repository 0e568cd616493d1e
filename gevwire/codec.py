"""The codec interface: frames are cut from a connection's input and replies encoded.

Codecs are sans-I/O: they see a :class:`~gevwire.ringbuffer.RingBuffer` or a memoryview
of bytes, never a socket, so they are tested on byte strings alone.
"""

from __future__ import annotations

import io
import struct
import sys
from collections.abc import Callable
from typing import Any, Generic

import construct  # type: ignore[import-untyped]

from gevwire._fastcodec import Buffer, FrameLayout, analyse, prefix_cutter
from gevwire._typing import FrameT
from gevwire.errors import EncodeError, FrameError, FrameTooLarge
from gevwire.ringbuffer import RingBuffer

__all__ = ["BaseCodec", "Codec", "CutAheadDecoder", "Decoder", "RawCodec"]


class Decoder(Generic[FrameT]):
    """Cuts frames for one connection; holds whatever state framing needs across reads.

    ``decode`` is the contract; ``decode_bytes`` (on epoll / kqueue) and ``decode_view``
    (on io_uring, and on the ring's bytes when they lie in one piece) are optional fast
    paths the connection uses when its input ring is empty, so whole frames that arrive
    in one read are cut at once, without being copied into the ring first.
    """

    __slots__ = ()

    def decode(self, ring: RingBuffer) -> FrameT | None:
        """Consume and return the next whole frame from ``ring``, or None if incomplete.

        Raise :class:`~gevwire.errors.FrameError` for bytes that can never be a frame.
        A decoder may cut several buffered frames at once and return them one per call,
        consuming their bytes together when it returns the last of them; so call
        ``decode`` until it returns None before anything else reads from the ring.
        """
        raise NotImplementedError

    def decode_view(self, view: memoryview) -> tuple[list[FrameT], int]:
        """Cut every whole frame from the start of ``view``: ``(frames, bytes used)``.

        Frames must not refer to ``view``'s memory (it is reused by the next read).  The
        connection moves the bytes after ``used`` to the ring and at once calls
        :meth:`decode` on them, so ``decode_view`` may stop early at anything it does not
        want to handle itself (an incomplete frame, an error, a discard) and must never
        raise a non-fatal error: ``decode`` reports it, in order.  The default cuts
        nothing.
        """
        return [], 0

    def decode_bytes(self, data: bytes) -> tuple[list[FrameT], int]:
        """:meth:`decode_view` for one read that arrived as an immutable ``bytes``: frames
        may be slices of ``data``, or ``data`` itself.  The default calls
        ``decode_view(memoryview(data))``; decoders that copy a read to ``bytes`` before
        cutting it override this to spare the copy.
        """
        return self.decode_view(memoryview(data))

    def announced_length(self, ring: RingBuffer) -> int:
        """The whole length of the incomplete frame at the start of ``ring`` when its
        header has said it (and it is within the codec's limit), else 0.

        The pipeline asks when a partial frame grows large, and reserves that much input
        storage at once rather than doubling it as the bytes come.  The default: not
        known.
        """
        return 0


class CutAheadDecoder(Decoder):
    """A :class:`Decoder` whose ``decode`` cuts ahead with the batch path.

    Subclasses implement :meth:`decode_one` (what ``decode`` would otherwise be) and
    :meth:`cut_view` (the batch cutter; :meth:`cut_bytes` too where a read that is
    ``bytes`` is cut without a copy).  When ``decode_one`` returns a frame and bytes
    remain, the frames whole in the rest of the ring's first piece are cut at once with
    ``cut_view`` and returned by the next calls; their bytes leave the ring with the
    last of them.  A sans-I/O caller that calls ``decode`` once per frame then pays
    about what the connection's batch path pays, not 2-6 times as much.

    This class owns the rule that comes with it: while frames cut ahead wait,
    ``decode_view`` and ``decode_bytes`` cut nothing, so a read never jumps the queue.
    """

    __slots__ = ("_ahead", "_ahead_used")

    def __init__(self) -> None:
        self._ahead: list[Any] = []  # frames cut ahead, the next one last
        self._ahead_used = 0  # the bytes they all used, still in the ring

    def decode_one(self, ring: RingBuffer) -> Any | None:
        """Consume and return one whole frame from ``ring`` (the ``decode`` contract)."""
        raise NotImplementedError

    def cut_view(self, view: memoryview) -> tuple[list[Any], int]:
        """The batch cutter: :meth:`Decoder.decode_view`'s contract, without the rule
        about frames waiting (this class applies it).  The default cuts nothing."""
        return [], 0

    def cut_bytes(self, data: bytes) -> tuple[list[Any], int]:
        """:meth:`cut_view` for a read that is ``bytes`` (frames may be slices of it)."""
        return self.cut_view(memoryview(data))

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        if self._ahead:
            return [], 0
        return self.cut_view(view)

    def decode_bytes(self, data: bytes) -> tuple[list[Any], int]:
        if self._ahead:
            return [], 0
        return self.cut_bytes(data)

    def decode(self, ring: RingBuffer) -> Any | None:
        ahead = self._ahead
        if ahead:
            frame = ahead.pop()
            if not ahead:
                ring.retrieve(self._ahead_used)
            return frame
        return self._next_frame(ring)

    def _next_frame(self, ring: RingBuffer) -> Any | None:
        """``decode`` when no frame waits: one frame, and the whole ones after it cut."""
        frame = self.decode_one(ring)
        if frame is not None and ring._len:
            try:
                frames, used = self.cut_view(ring.peek(ring._len)[0])
            except FrameError:
                return frame  # decode_one raises it next call, in order
            if frames:
                self._keep_ahead(frames, used)
            elif used:
                ring.retrieve(used)  # what decode_view skipped is consumed, as always
        return frame

    def _keep_ahead(self, frames: list[Any], used: int) -> None:
        """Hold ``frames`` (cut from the ring's first ``used`` bytes) for the next calls."""
        frames.reverse()
        self._ahead = frames
        self._ahead_used = used


class BaseCodec(Generic[FrameT]):
    """A protocol's framing (through per-connection :class:`Decoder`\\s) and encoding.

    Generic in the frames its decoders cut (``BaseCodec[bytes]``; unparameterised:
    ``Any``), as :class:`~gevwire.Handler` and :class:`~gevwire.Router` are in the
    frames they take.
    """

    #: Largest frame accepted; the framing rejects longer ones from their header.
    max_frame_size: int = 1 << 20

    def decoder(self) -> Decoder[FrameT]:
        """A decoder for one new connection."""
        raise NotImplementedError

    def encode(self, message: Any) -> bytes:
        """The bytes that carry ``message`` (a handler's reply or a ``send`` argument)."""
        raise NotImplementedError

    def encode_into(self, parts: list[bytes], message: Any) -> int:
        """Append the bytes that carry ``message`` to ``parts``; return how many.

        The connection gathers the replies of one read this way and writes them with
        one join.  A codec whose frames are a header plus the message's own bytes
        overrides it to append the two pieces, sparing a copy of every payload.
        """
        data = self.encode(message)
        parts.append(data)
        return len(data)


class _RawDecoder(Decoder[bytes]):
    __slots__ = ()

    def decode(self, ring: RingBuffer) -> bytes | None:
        if not ring.length:
            return None
        return ring.read_all()

    def decode_view(self, view: memoryview) -> tuple[list[bytes], int]:
        return [view.tobytes()], len(view)

    def decode_bytes(self, data: bytes) -> tuple[list[bytes], int]:
        return [data], len(data)  # the read itself: no copy


_RAW_DECODER = _RawDecoder()


class RawCodec(BaseCodec[bytes]):
    """No framing: each read's bytes are one frame, replies are sent as they are.

    gev's ``DefaultProtocol``.  ``encode`` takes ``bytes``, ``bytearray``, ``memoryview``
    or ``str`` (UTF-8).
    """

    def decoder(self) -> Decoder[bytes]:
        return _RAW_DECODER

    def encode(self, message: Any) -> bytes:
        if type(message) is bytes:
            return message
        if isinstance(message, (bytearray, memoryview)):
            return bytes(message)
        if isinstance(message, str):
            return message.encode()
        raise TypeError(f"RawCodec sends bytes-like or str, not {type(message).__name__}")


# -- construct schemas -----------------------------------------------------------------

_OVERSIZE_MODES = ("close", "discard")


class _RecordingStream(io.BytesIO):
    """A stream that remembers the smallest total size a short read asked for.

    construct raises ``StreamError`` on a short read; the recorded size tells the
    decoder not to try again before that many bytes are buffered, so a frame that
    arrives in many pieces is not re-parsed on every piece (no O(n²)).
    """

    need = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and size >= 0 and len(data) < size:
            self.need = self.tell() + size - len(data)
        return data


def _prefix_layout(schema: Any) -> tuple[struct.Struct, bool] | None:
    """``(length struct, includelength)`` for a top-level ``Prefixed(<int field>, ...)``."""
    while type(schema) is construct.Renamed:
        schema = schema.subcon
    if type(schema) is not construct.Prefixed:
        return None
    length = schema.lengthfield
    while type(length) is construct.Renamed:
        length = length.subcon
    if type(length) is not construct.FormatField or length.fmtstr[-1] not in "BHILQbhilq":
        return None
    return struct.Struct(length.fmtstr), bool(schema.includelength)


class Codec(BaseCodec[Any]):
    """Frames declared by a construct schema.

    The frame boundary comes first, the parse second.  When the schema's frame length
    can be read from a fixed header (``Prefixed(<int>, ...)``, ``Prefixed(VarInt, ...)``,
    a ``Struct`` of fixed-size fields then ``Bytes(this.length)`` ...), the header is read
    with ``struct``, a length over ``max_frame_size`` is rejected before the body is
    buffered, and the frame is parsed once, when it is whole.  Schemas made only of
    fixed-size fields, ``Bytes(this.x)`` and ``Prefixed`` are parsed by a ``struct``
    decoder derived from the schema (same values as construct, about ten times faster); anything
    else is parsed by construct's interpreter.  (construct's *compiled* parser is not
    used: it returns silently truncated ``Bytes`` for a malformed frame instead of
    raising.)

    Other schemas are parsed from the buffered bytes and retried only once as many
    bytes are buffered as the last short read asked for.  Such a schema must be
    self-delimiting: a top-level ``GreedyBytes`` or ``GreedyRange`` would take whatever
    one read happened to bring.

    ``on_oversize="close"`` reports a fatal :class:`FrameTooLarge` (the connection
    closes); ``"discard"`` skips exactly that frame's bytes, reports a non-fatal
    ``FrameTooLarge`` to ``on_error`` and goes on with the next frame (netty's discard
    mode; needs a schema whose length is in its header).

    ``encode`` builds a message (a dict or ``Container``) with the schema.
    """

    def __init__(
        self,
        schema: Any,
        *,
        max_frame_size: int = 1 << 20,
        on_oversize: str = "close",
    ) -> None:
        if max_frame_size <= 0:
            raise ValueError("max_frame_size must be positive")
        if on_oversize not in _OVERSIZE_MODES:
            raise ValueError(f"on_oversize must be one of {_OVERSIZE_MODES}")
        self.schema = schema
        self.max_frame_size = max_frame_size
        self.on_oversize = on_oversize
        self.fast = analyse(schema)
        self.layout: FrameLayout | None = None
        # Prefixed(<int>, GreedyBytes) — length + opaque payload, the most common framing
        # of all — gets a decoder and encoder of its own: one unpack and one slice per
        # frame, the cost of hand-written framing.
        self._bytes_prefix = _bytes_prefix(schema)
        #: For the compiled cutter, when the bytes-prefix encoder is this codec's.
        self.spans: SpanParams | None = None
        if self.fast is not None:
            self.layout = self.fast.layout
            self.parse_frame: Callable[[Buffer, int, int], Any] = self.fast.decode
            self._build: Callable[[Any], bytes] = self.fast.encode
        else:
            self.parse_frame = self._construct_parse
            self._build = schema.build
            prefix = _prefix_layout(schema)
            if prefix is not None:
                self.layout = _int_prefix_layout(*prefix)
        if self._bytes_prefix is not None and self.fast is not None:
            fmt, adjust = self._bytes_prefix
            # The decoders' own cut_view: the one length-prefix loop with this codec's
            # limit as its default (see _BytesPrefixDecoder).
            self._prefix_cut = prefix_cutter(fmt.unpack_from, fmt.size, 0, adjust,
                                             fmt.format[-1] in "bhilq", limit=max_frame_size)
            self._parse_payload = _payload_parser(fmt.size)
        if on_oversize == "discard" and self.layout is None:
            raise ValueError("on_oversize='discard' needs a schema with its length in a header")
        if self._bytes_prefix is not None and type(self).encode is Codec.encode:
            # Only where a subclass has not overridden encode (instance attributes
            # would shadow its method).
            self.encode = self._prefix_encoder(*self._bytes_prefix)  # type: ignore[method-assign,assignment]
            if type(self).encode_into is BaseCodec.encode_into:
                self.encode_into = self._prefix_encoder_into(*self._bytes_prefix)  # type: ignore[method-assign,assignment]
                self.spans = _span_params(*self._bytes_prefix, max_frame_size)

    def _prefix_encoder(self, fmt: struct.Struct, extra: int) -> Callable[[Any], bytes]:
        """``encode`` for ``Prefixed(<int>, GreedyBytes)``: one pack for bytes payloads."""
        pack = _length_packer(fmt, extra)
        general: Callable[[Any], bytes] = Codec.encode.__get__(self)

        def encode(message: Any) -> bytes:
            if type(message) is bytes:
                try:
                    return pack(len(message)) + message
                except struct.error as exc:
                    raise EncodeError(f"payload of {len(message)} bytes: {exc}") from exc
            return general(message)

        return encode

    def _prefix_encoder_into(self, fmt: struct.Struct,
                             extra: int) -> Callable[[list[bytes], Any], int]:
        """``encode_into`` for ``Prefixed(<int>, GreedyBytes)``: the header and the
        payload as two parts (no concatenation: one copy less per reply)."""
        pack = _length_packer(fmt, extra)
        header = fmt.size
        encode = self.encode

        def encode_into(parts: list[bytes], message: Any) -> int:
            if type(message) is bytes:
                size = len(message)
                try:
                    parts.append(pack(size))
                except struct.error as exc:
                    raise EncodeError(f"payload of {size} bytes: {exc}") from exc
                parts.append(message)
                return header + size
            data = encode(message)
            parts.append(data)
            return len(data)

        return encode_into

    def _construct_parse(self, data: Buffer, start: int, end: int) -> Any:
        try:
            return self.schema.parse(bytes(data[start:end]))
        except construct.ConstructError as exc:
            raise FrameError(f"malformed frame: {_first_line(exc)}") from exc

    def decoder(self) -> Decoder:
        if (self._bytes_prefix is not None and self.layout is not None
                and self.fast is not None and self.parse_frame is self.fast.decode
                and self.on_oversize == "close"):
            return _BytesPrefixDecoder(self, self.layout, self._prefix_cut,
                                       self._parse_payload)
        if self.layout is not None:
            return _LayoutDecoder(self, self.layout)
        return _StreamDecoder(self)

    def encode(self, message: Any) -> bytes:
        try:
            return self._build(message)
        except (construct.ConstructError, ValueError, TypeError, KeyError) as exc:
            raise self._encode_error(message, exc) from exc

    def _encode_error(self, message: Any, exc: BaseException) -> EncodeError:
        """What is wrong with ``message``, naming the field (``header.version``)."""
        if self._build is not self.schema.build:
            # The compiled encoder failed: construct's own build names the field's path.
            try:
                self.schema.build(message)
            except (construct.ConstructError, ValueError, TypeError, KeyError) as again:
                exc = again
        path = _missing_field(self.schema, message)
        if path is None:
            where = str(getattr(exc, "path", "") or "").replace("(building)", "").strip()
            path = ".".join(part.strip() for part in where.split("->") if part.strip())
        reason = _first_line(exc)
        if isinstance(exc, KeyError) and path:
            reason = "missing"
        at = f" at {path}" if path else ""
        return EncodeError(f"cannot encode {message!r}{at}: {reason}")


#: What the compiled cutter (``gevwire._speedups``) needs of a ``Prefixed(<int>,
#: GreedyBytes)`` codec: header size, big-endian, signed, the adjustment to the payload
#: size, the largest payload, and the length packer of its replies.
SpanParams = tuple[int, bool, bool, int, int, Callable[[int], bytes]]


def _span_params(fmt: struct.Struct, adjust: int, max_frame_size: int) -> SpanParams:
    order = fmt.format[0]
    big = order in ">!" or (order in "@=" and sys.byteorder == "big")
    return (fmt.size, big, fmt.format[-1] in "bhilq", adjust, max_frame_size - fmt.size,
            _length_packer(fmt, adjust))


def _length_packer(fmt: struct.Struct, extra: int) -> Callable[[int], bytes]:
    """The prefix for a payload of a given size (``fmt.pack`` itself when ``extra`` is 0,
    the common case: a subtraction less per reply)."""
    if not extra:
        return fmt.pack
    pack = fmt.pack
    return lambda size: pack(size - extra)


# Fields construct fills in by itself when building: a message may leave them out.
_SELF_BUILT = frozenset({"Const", "Computed", "Rebuild", "Default", "Padding", "Checksum",
                         "Pass", "Terminated"})


def _missing_field(schema: Any, value: Any, path: tuple[str, ...] = ()) -> str | None:
    """The dotted path of the first field a ``Struct`` needs and ``value`` lacks."""
    while not isinstance(schema, construct.Struct) and hasattr(schema, "subcon"):
        if type(schema).__name__ in _SELF_BUILT:
            return None
        schema = schema.subcon
    if not isinstance(schema, construct.Struct) or not isinstance(value, dict):
        return None
    for sub in schema.subcons:
        name = sub.name
        if name is None:
            continue
        inner = sub.subcon if type(sub) is construct.Renamed else sub
        if name not in value:
            if type(inner).__name__ in _SELF_BUILT:
                continue
            return ".".join((*path, name))
        found = _missing_field(inner, value[name], (*path, name))
        if found is not None:
            return found
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _bytes_prefix(schema: Any) -> tuple[struct.Struct, int] | None:
    """``(length struct, adjustment)`` for ``Prefixed(<int>, GreedyBytes)``, else None.

    The adjustment is what to add to the prefix value to get the payload size (minus
    the prefix's own size when ``includelength`` is set).
    """
    prefix = _prefix_layout(schema)
    if prefix is None:
        return None
    while type(schema) is construct.Renamed:
        schema = schema.subcon
    inner = schema.subcon
    while type(inner) is construct.Renamed:
        inner = inner.subcon
    if type(inner) is not type(construct.GreedyBytes):
        return None
    fmt, includelength = prefix
    return fmt, -fmt.size if includelength else 0


def _payload_parser(size: int) -> Callable[[Buffer, int, int], bytes]:
    """A whole ``Prefixed(<int>, GreedyBytes)`` frame's payload (its layout checked it)."""

    def parse(data: Buffer, start: int, end: int) -> bytes:
        return bytes(data[start + size : end])

    return parse


def _int_prefix_layout(fmt: struct.Struct, includelength: bool) -> FrameLayout:
    size = fmt.size
    unpack_from = fmt.unpack_from

    def frame_length(buf: Buffer, offset: int = 0) -> int:
        if len(buf) - offset < size:
            return -1
        (value,) = unpack_from(buf, offset)
        total: int = value if includelength else value + size
        if total < size:
            raise FrameError(f"impossible frame length {value}")
        return total

    return FrameLayout(size, size, frame_length)


class _LayoutDecoder(CutAheadDecoder):
    """Frames whose length is in a header: checked before the body is buffered."""

    __slots__ = ("_cut", "_discard", "_frame_length", "_header", "_limit", "_max_header",
                 "_mode_discard", "_parse")

    def __init__(self, codec: Codec, layout: FrameLayout) -> None:
        super().__init__()
        self._header = layout.header_size
        self._max_header = layout.max_header_size
        self._frame_length = layout.frame_length
        self._parse = codec.parse_frame
        fast = codec.fast
        # The fast codec's one-loop cutter, unless parse_frame was replaced (a subclass
        # that wraps it must see every frame).
        self._cut = fast.cut if fast is not None and codec.parse_frame is fast.decode \
            else None
        self._limit = codec.max_frame_size
        self._mode_discard = codec.on_oversize == "discard"
        self._discard = 0  # bytes of an oversized frame still to skip

    def decode_one(self, ring: RingBuffer) -> Any | None:
        return self._decode(ring, batch=False)

    def _next_frame(self, ring: RingBuffer) -> Any | None:
        # The header says whether the first frame is whole: then it is cut in the batch
        # too (not parsed on its own first).
        return self._decode(ring, batch=True)

    def _decode(self, ring: RingBuffer, *, batch: bool) -> Any | None:
        if self._discard:
            skip = min(self._discard, ring._len)
            ring.retrieve(skip)
            self._discard -= skip
            if self._discard:
                return None
        n = ring._len
        if n < self._header:
            return None
        head = min(n, self._max_header)
        length = self._frame_length(ring.contiguous(head), 0)
        if length < 0:
            return None
        if length > self._limit:
            if not self._mode_discard:
                raise FrameTooLarge(length, self._limit)
            skip = min(length, n)
            ring.retrieve(skip)
            self._discard = length - skip
            raise FrameTooLarge(length, self._limit, fatal=False)
        if n < length:
            return None
        if batch and n > length:
            # More than this frame is buffered: cut every whole frame in the readable
            # bytes' first piece at once, as the connection does, and return them one
            # per call (a per-frame decode costs 3-9 times as much per frame).  Their
            # bytes leave the ring with the last: a retrieve per frame would cost a
            # third of what the batch saves.
            first = ring.peek(n)[0]
            if len(first) > length:
                frames, used = self.cut_view(first)
                if len(frames) > 1:
                    self._keep_ahead(frames, used)
                    return frames.pop()
                if frames:
                    ring.retrieve(used)
                    return frames[0]
        frame = self._parse(ring.contiguous(length), 0, length)
        ring.retrieve(length)
        return frame

    def announced_length(self, ring: RingBuffer) -> int:
        n = ring._len
        if self._discard or self._ahead or n < self._header:
            return 0
        try:
            length = self._frame_length(ring.contiguous(min(n, self._max_header)), 0)
        except FrameError:
            return 0  # decode() reports it
        return length if n < length <= self._limit else 0

    def cut_view(self, view: memoryview | bytes) -> tuple[list[Any], int]:
        if self._discard:
            return [], 0  # the ring path does the skipping
        if self._cut is not None:
            try:
                return self._cut(view, self._limit)
            except FrameError:
                pass  # a malformed field: the loop below stops just before that frame
        frames: list[Any] = []
        pos = 0
        n = len(view)
        header = self._header
        frame_length = self._frame_length
        parse = self._parse
        limit = self._limit
        try:
            while n - pos >= header:
                length = frame_length(view, pos)
                if length < 0 or length > limit or n - pos < length:
                    break
                frames.append(parse(view, pos, pos + length))
                pos += length
        except FrameError:
            pass  # decode() meets the same bytes again and raises in order
        return frames, pos

    # The cut functions and the parsers take bytes as well as memoryviews (and spare the
    # copy of a read that already is bytes).
    cut_bytes = cut_view  # type: ignore[assignment]


class _BytesPrefixDecoder(_LayoutDecoder):
    """``Prefixed(<int>, GreedyBytes)`` (closing on an oversized frame, its parse not
    replaced): frames are the payload bytes.

    ``cut_view`` and ``cut_bytes`` are the codec's length-prefix loop itself, its limit
    the default argument (a slot holding the function, shared by every decoder of the
    codec): ``decode_bytes`` calls the loop with no method between, as the hand-written
    cutter this replaces did (through ``_LayoutDecoder.cut_view``, +4-7% per frame on
    reads of 16 frames of 16-256 B).  No discard state can stop it: discarding codecs
    get a ``_LayoutDecoder``.  A frame whole in the ring alone is sliced by ``parse``,
    one call level less than the fast decode.
    """

    __slots__ = ("cut_bytes", "cut_view")

    def __init__(self, codec: Codec, layout: FrameLayout, cut: Callable[..., Any],
                 parse: Callable[[Buffer, int, int], bytes]) -> None:
        super().__init__(codec, layout)
        self.cut_view = self.cut_bytes = cut  # type: ignore[method-assign]
        self._parse = parse


class _StreamDecoder(Decoder):
    """Frames of schemas with no header layout: parse, remembering short reads."""

    __slots__ = ("_limit", "_need", "_schema")

    def __init__(self, codec: Codec) -> None:
        self._schema = codec.schema
        self._limit = codec.max_frame_size
        self._need = 0

    def decode(self, ring: RingBuffer) -> Any | None:
        n = ring._len
        if n < self._need or not n:
            return None
        size = min(n, self._limit)
        stream = _RecordingStream(ring.contiguous(size).tobytes())
        try:
            frame = self._schema.parse_stream(stream)
        except construct.StreamError as exc:
            need = stream.need
            if need > self._limit:
                raise FrameTooLarge(need, self._limit) from exc
            if need > size:
                self._need = need
                return None
            if size == self._limit and n > size:
                raise FrameTooLarge(-size, self._limit) from exc
            raise FrameError(f"malformed frame: {_first_line(exc)}") from exc
        except construct.ConstructError as exc:
            raise FrameError(f"malformed frame: {_first_line(exc)}") from exc
        used = stream.tell()
        if used == 0:
            raise FrameError("the schema parsed an empty frame: it cannot delimit a stream")
        ring.retrieve(used)
        self._need = 0
        return frame
