"""``FramePipeline``: one connection's bytes → frames → handler → reply bytes, sans I/O.

The framing loop is written here once (netty's ``ByteToMessageDecoder.callDecode``), and
every transport drives it: the epoll connection hands it each read as ``bytes``, the
io_uring connection as a view of a provided buffer, :class:`~gevwire.testing.FrameCutter`
and :class:`~gevwire.testing.HandlerHarness` (hence ``check_codec`` and the fuzz targets)
as byte strings.  It never touches a socket (h11's rule): replies leave through the
:class:`Transport` its owner gives it, and so do close requests.

A read, as it arrives (:meth:`FramePipeline.received`):

1. Nothing buffered: the whole read goes to the decoder's batch cutter (``decode_bytes``
   for ``bytes``, ``decode_view`` for a view).  Only what it leaves (an incomplete frame,
   or bytes it leaves to ``decode``) is copied into the input ring.
2. Something buffered (or left by step 1): the ring's bytes are cut with ``decode_view``
   where they are contiguous, then ``decode(ring)`` runs until it returns None
   (:meth:`FramePipeline.cut_ring`; a readiness backend ``readv``\\s into the ring
   itself and calls that).
3. Every frame is handed to ``on_message``; the replies of a read are encoded into one
   list and leave as one write, at the transport's end of turn (``write_batch``).  A read
   of one frame whose reply is ready is the echo fast path: its reply is *returned* to
   the transport, which writes it at once — one Python call level less per message than
   calling back (each level costs ~0.1 µs; measured in ``benchmarks/``).

The error policy is here too: a decoder or handler exception goes to the handler's
``on_error`` (default: log and close); a fatal :class:`~gevwire.FrameError` closes
whatever the hook did (the stream is out of sync); a non-fatal one skips just its frame.
A decoder that breaks its contract (more bytes used than given, frames returned forever
without consuming bytes) is a :class:`DecoderContractError` instead of a hung loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from gevwire._compiled import speedups as _speedups
from gevwire._fastcodec import COPY_ONCE_READ
from gevwire.codec import (
    BaseCodec,
    Decoder,
    RawCodec,
    SpanParams,
    _BytesPrefixDecoder,
    _RawDecoder,
)
from gevwire.errors import ConnectionClosed, DecoderContractError, FrameError, WriteBufferFull
from gevwire.ringbuffer import RingBuffer

__all__ = ["Counters", "DecodeProgress", "FramePipeline", "PipelineCounters", "Transport"]

# The compiled cutting and dispatch of Prefixed(<int>, GreedyBytes) reads, when it was
# built (see gevwire._compiled; without it the pure path below serves alone).
_span: Callable[..., tuple[int, int]] | None = getattr(_speedups, "span", None)
_dispatch_span: Callable[..., tuple[int, int, BaseException | None]] | None = getattr(
    _speedups, "dispatch", None)

#: True when the compiled path is in use (see above).
COMPILED = _span is not None

log = logging.getLogger("gevwire")


class Transport(Protocol):
    """What a pipeline asks of the connection that owns it (all on its loop thread).

    The owner implements these itself, so a connection costs no extra object or
    bound method for them (memory per idle connection is a target: see
    ``benchmarks/idle_memory.py``); the names are private because handlers never call
    them.
    """

    def _write(self, data: bytes) -> None:
        """Send ``data`` now, after every byte written before it."""

    def _write_batch(self, data: bytes) -> None:
        """Send the joined replies of a read; may wait for the end of the loop turn."""

    def _close_gracefully(self) -> None:
        """Stop reading, send what is queued, then close."""

    def _close_now(self) -> None:
        """Close at once, dropping unsent output."""

    def _refuses_sends(self) -> bool:
        """True once ``close`` or ``shutdown_write`` was asked for (``send`` raises)."""

    def _partial_frame_started(self) -> None:
        """A partial frame began to be buffered: arm the ``frame_timeout`` timer."""


class PipelineCounters(Protocol):
    """Where a pipeline counts its traffic: the event loop's counters (``stats()``)."""

    frames_in: int
    frames_out: int
    errors: dict[str, int]
    now: float


class Counters:
    """Counters of a pipeline with no event loop behind it (the test tools)."""

    __slots__ = ("errors", "frames_in", "frames_out", "now")

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.errors: dict[str, int] = {}
        self.now = 0.0


class DecodeProgress:
    """Checks that a loop calling ``decode(ring)`` while frames come will end.

    A decoder may return frames it cut together before their bytes leave the ring
    (:class:`~gevwire.codec.CutAheadDecoder`), but every frame takes at least one byte:
    more frames than buffered bytes with the ring never shrinking would loop forever.
    Call :meth:`returned` for each frame and :meth:`reset` after an error.
    """

    __slots__ = ("_mark", "_ring", "_unconsumed")

    def __init__(self, ring: RingBuffer, mark: int | None = None) -> None:
        self._ring = ring
        #: The bytes buffered when counting began (``mark``: before the first ``decode``).
        self._mark = ring.length if mark is None else mark
        self._unconsumed = 0

    def reset(self) -> None:
        """Start counting again from the bytes buffered now."""
        self._mark = self._ring.length
        self._unconsumed = 0

    def returned(self, frame: Any) -> None:
        """``decode`` returned ``frame``; raise :class:`DecoderContractError` (a
        ``RuntimeError``) if the loop cannot be ending."""
        if self._ring.length < self._mark:
            self.reset()
            return
        self._unconsumed += 1
        if self._unconsumed > self._mark:
            raise DecoderContractError(
                f"decode returned {frame!r} {self._unconsumed} times in a row without "
                f"consuming bytes (of {self._mark} buffered): a connection would loop "
                "forever")


class FramePipeline:
    """Cuts, dispatches and gathers replies for one connection (loop thread only).

    ``conn`` is what handlers receive; ``codec`` a codec (or, for tools that only cut
    frames, a bare decoder); ``transport`` moves the bytes; ``counters`` counts frames
    and errors (the loop).  ``view_reads``: reads arrive as views of a
    buffer the transport reuses (io_uring), so they are cut with ``decode_view`` and
    nothing of them is kept; otherwise as ``bytes``, cut with ``decode_bytes``.
    ``high_water``: replies gathered past it are written in the middle of a read, so
    a read of many requests cannot hold its replies outside the output buffer's marks.
    ``max_output``: replies (and a handler's sends) that add up to more bytes than
    this, before they are joined, close the connection with
    :class:`~gevwire.WriteBufferFull` instead of being built (the transport's
    ``max_write_buffer``: a reply of references to large values must not be copied
    into one bytes object only to be refused).
    ``reraise(error)``: errors for which it is true propagate to the caller instead of
    ``on_error`` (test tools; a server never sets it).
    """

    __slots__ = (
        "_codec",
        "_counters",
        "_decoder",
        "_frame_timeout",
        "_high_water",
        "_max_output",
        "_raw",
        "_reraise",
        "_spans",
        "_transport",
        "_view_reads",
        "conn",
        "dispatching",
        "gathered",
        "handler",
        "input",
        "partial_since",
        "pending",
        "stopped",
    )

    #: Frames whose handler has not ended (only a pipeline whose handler waits has any).
    in_flight = 0
    #: ``counters.now`` when the last of those ended (idle deadlines count from it).
    work_ended = 0.0

    # Per connection this holds state and the objects it calls, never bound methods:
    # each would cost 64 bytes per connection, and the methods are found per read.

    def __init__(
        self,
        conn: Any,
        handler: Any,
        codec: BaseCodec | Decoder | Any,
        transport: Transport,
        counters: PipelineCounters,
        *,
        view_reads: bool = False,
        high_water: int = 1 << 20,
        max_output: int | None = None,
        frame_timeout: float | None = None,
        input_ring: RingBuffer | None = None,
        reraise: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self.conn = conn
        #: The handler frames are dispatched to.
        self.handler = handler
        self._transport = transport
        self._counters = counters
        if isinstance(codec, Decoder) or not hasattr(codec, "decoder"):
            # A bare decoder (test tools): frames only, no replies to encode.
            decoder: Any = codec
            codec = _NO_ENCODER
        else:
            decoder = codec.decoder()
            if not hasattr(codec, "encode_into"):  # duck-typed, not derived from BaseCodec
                codec = _EncodeInto(codec)
        if not hasattr(decoder, "decode_bytes"):  # duck-typed, not derived from Decoder
            decoder = _DecodeBytes(decoder)
        self._codec = codec
        self._decoder = decoder
        self._view_reads = view_reads
        self._high_water = high_water
        self._max_output = max_output if max_output is not None else _UNBOUNDED
        self._frame_timeout = frame_timeout
        self._reraise = reraise
        #: Bytes received and not yet cut: a partial frame, or what a batch left.
        self.input = input_ring if input_ring is not None else RingBuffer()
        #: Replies gathered while a read is dispatched (written when it is done); a
        #: list of its own from the first read of several frames (until then a shared
        #: empty one that is never appended to: a ping-pong connection makes none).
        self.pending: list[bytes] = _NO_PENDING
        #: Bytes put in ``pending`` by ``send`` since the last write.
        self.gathered = 0
        #: True while handlers run for a read (``send`` then gathers into ``pending``).
        self.dispatching = False
        #: Set when the connection closes (or is asked to): no frame is dispatched after.
        self.stopped = False
        #: ``counters.now`` when the buffered partial frame began (0.0: none).
        self.partial_since = 0.0
        # The compiled path: a bytes-prefix codec's decoder and encoder, and the plain
        # dispatch (not a subclass's).
        self._spans: SpanParams | None = None
        # RawCodec itself (not a subclass): a bytes read is one frame and a bytes reply
        # is sent as it is, so neither its decoder nor its encode is called for them.
        self._raw = type(decoder) is _RawDecoder and type(codec) is RawCodec
        if (_span is not None and type(decoder) is _BytesPrefixDecoder
                and type(self).dispatch is FramePipeline.dispatch):
            self._spans = getattr(codec, "spans", None)

    def encode(self, message: Any) -> bytes:
        """``message`` encoded by the connection's codec (what ``send`` writes).

        Raises :class:`~gevwire.WriteBufferFull` (nothing joined) when it alone is
        longer than ``max_output``.
        """
        if type(message) is bytes:  # its encoding costs at most its own size
            data = self._codec.encode(message)
        else:  # a container of references may encode to much more: measured first
            parts = self.encode_parts(message)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data if type(data) is bytes else bytes(data)

    def encode_parts(self, message: Any) -> list[bytes]:
        """``message`` encoded as the parts the codec's ``encode_into`` gives, unjoined
        (a large payload stays the object it was).

        Raises :class:`~gevwire.WriteBufferFull` when they add up to more than
        ``max_output``.
        """
        parts: list[bytes] = []
        size = self._codec.encode_into(parts, message)
        if size > self._max_output:
            raise WriteBufferFull(
                f"a message of {size} bytes exceeds max_write_buffer={self._max_output}")
        return parts

    # -- reads -------------------------------------------------------------------------

    def received(self, data: Any) -> bytes | None:
        """Cut, dispatch and answer one read (``bytes``, or a view with ``view_reads``).

        Returns the reply of a read that was one whole frame, for the caller to write
        at once; every other reply is handed to the transport.
        """
        if self.input._len or self.stopped:
            if not self.stopped:  # (stopped: closing, the read is dropped)
                ring = self.input
                if ring._cap > LARGE_RING and len(data) > ring._cap - ring._len:
                    self.received_past_large_frame(data)
                    return None
                ring.write(data)
                self.cut_ring()
            return None
        if self._raw:  # RawCodec: the read is the frame (a view's copy), a bytes reply
            frame: Any = data if type(data) is bytes else bytes(data)  # is sent as it is
        else:
            spans = self._spans
            try:
                if spans is not None and _span is not None and (
                        type(data) is bytes or len(data) <= COPY_ONCE_READ):
                    if type(data) is not bytes:  # a view read: copied once (as the batch
                        data = bytes(data)  # cutter copies a small one), never kept
                    used, cut = _span(data, spans[0], spans[1], spans[2], spans[3],
                                      spans[4])
                    if cut > 0:
                        self._dispatch_compiled(data, used, cut, spans)
                        return None
                    frames = [data[spans[0]:]] if cut < 0 else []  # (-1: one whole frame)
                elif self._view_reads:
                    frames, used = self._decoder.decode_view(data)
                else:
                    frames, used = self._decoder.decode_bytes(data)
            except Exception as exc:
                self.fail(exc)  # the read is dropped: the decoder could not say where it ends
                return None
            if used != len(data):
                self.keep_rest(data, used, frames)
                return None
            if len(frames) != 1:
                if frames:
                    self.dispatch(frames)
                return None
            frame = frames[0]
        counters = self._counters
        counters.frames_in += 1
        # Not "dispatching": a handler's send() is written at once, before this reply.
        try:
            reply = self.handler.on_message(self.conn, frame)
            if reply is not None:
                if type(reply) is bytes:  # (encode, inlined for the echo path)
                    data = reply if self._raw else self._codec.encode(reply)
                    counters.frames_out += 1
                    return data if type(data) is bytes else bytes(data)
                encoded = self.encode(reply)
                counters.frames_out += 1
                return encoded
        except WriteBufferFull as exc:
            self.fail(exc, abort=True)
        except Exception as exc:
            self.fail(exc)
        return None

    def _dispatch_compiled(self, data: bytes, used: int, cut: int, spans: SpanParams) -> None:
        """``keep_rest`` and ``dispatch`` for the ``cut`` whole frames in
        ``data[:used]``, compiled (``gevwire._speedups``): the same effects in the same
        order."""
        assert _dispatch_span is not None
        rest = used != len(data)
        if rest:
            self.input.write(memoryview(data)[used:])
        pending = self.pending
        if pending is _NO_PENDING:
            pending = self.pending = []
        counters = self._counters
        counters.frames_in += cut
        self.gathered = 0
        self.dispatching = True
        replies, gathered, error = _dispatch_span(
            data, used, self, self.handler.on_message, self.conn, pending,
            self._codec.encode_into, spans[5], spans[0], spans[1], spans[2], spans[3],
            self._high_water)
        counters.frames_out += replies
        self.dispatching = False
        if error is not None:
            if pending:
                self.flush_gathered()
            self.fail(error)
        elif pending:
            self._write_dispatched(gathered)
        if rest and not self.stopped:
            self.cut_ring(batch=False)

    def keep_rest(self, data: Any, used: int, frames: list[Any]) -> None:
        """The batch cutter used ``used`` bytes of a read (not all): dispatch its
        ``frames``, keep the rest in the ring and cut it with ``decode``."""
        n = len(data)
        if not 0 <= used <= n:
            how = "decode_view" if self._view_reads else "decode_bytes"
            self.fail(DecoderContractError(
                f"{type(self._decoder).__name__}.{how} used {used} of {n} bytes"))
            return
        # An incomplete frame, or one the batch cutter leaves to decode() (errors,
        # discards): the ring takes it, and decode() runs after this read's frames.
        # (Not the batch cutter again: it has just declined these very bytes.)
        self.input.write(memoryview(data)[used:])
        if frames:
            self.dispatch(frames)
        if not self.stopped:
            self.cut_ring(batch=False)

    def cut_ring(self, *, batch: bool = True) -> None:
        """Cut every whole frame buffered in ``input`` and dispatch them.

        For a transport that reads into the ring itself (``readv`` while a partial frame
        is buffered) and for what :meth:`received` left there.  ``batch=False``: the
        batch cutter is not tried first (``decode`` alone is the contract; the caller
        knows the batch cutter declined what is buffered).
        """
        if self.stopped:  # closing: nothing more is cut
            return
        ring = self.input
        buffered = ring._len
        frames: list[Any] = []
        if batch:
            first, second = ring.peek_all()
            if not second:
                # Contiguous: cut whole frames with the batch path, leaving decode() only
                # the tail or whatever the batch cutter declined.
                try:
                    frames, used = self._decoder.decode_view(first)
                except Exception as exc:
                    self.fail(exc)
                    return
                if used:
                    if not 0 <= used <= len(first):
                        self.fail(DecoderContractError(
                            f"{type(self._decoder).__name__}.decode_view used {used} of "
                            f"{len(first)} bytes"))
                        return
                    ring.retrieve(used)
        decode = self._decoder.decode
        progress: DecodeProgress | None = None
        start = ring._len
        while ring._len and not self.stopped:
            try:
                frame = decode(ring)
                if frame is None:
                    break
                if progress is None:  # made for the first frame only: most reads
                    progress = DecodeProgress(ring, start)  # have none left to decode
                progress.returned(frame)
            except Exception as exc:
                if frames:
                    self.dispatch(frames)
                    frames = []
                if not self.stopped:
                    self.fail(exc)
                if getattr(exc, "fatal", True) or not isinstance(exc, FrameError):
                    return
                if progress is not None:
                    progress.reset()
                continue  # the codec skipped just that frame: go on with the next
            frames.append(frame)
        if frames:
            self.dispatch(frames)
        if ring._cap > LARGE_RING and ring._len < buffered and ring._len <= ring._cap >> 2:
            ring.shrink()  # a large frame was cut: its storage (resident) goes back
        if ring._len > ANNOUNCED_FROM and not self.stopped:
            self._reserve_announced(ring)
        if self._frame_timeout is not None:
            self._track_partial_frame(ring._len < buffered)

    def _reserve_announced(self, ring: RingBuffer) -> None:
        """A large partial frame is buffered: if its header said how long it is, make
        the ring that long at once (page-rounded) rather than let it double as the
        bytes come: memory by what the frame needs, no copy per doubling."""
        announced = getattr(self._decoder, "announced_length", None)
        if announced is None:
            return  # (a duck-typed decoder without it)
        length = announced(ring)
        if length > ring._cap:
            pool = ring._pool
            if pool.in_use + length - ring._cap > pool.alarm:
                return  # past the server's memory budget: grow only as bytes come
            ring.reserve(length - ring._len, exact=True)

    def received_past_large_frame(self, data: Any) -> None:
        """A read that overflows a large ring (one sized by a frame's header): the part
        that fits completes the frame and is cut first, so the ring is not grown (and
        the frame copied) for the bytes that follow it."""
        ring = self.input
        room = ring._cap - ring._len
        view = memoryview(data)
        ring.write(view[:room])
        self.cut_ring()
        if not self.stopped:
            ring.write(view[room:])
            self.cut_ring()

    # -- dispatch ----------------------------------------------------------------------

    def dispatch(self, frames: list[Any]) -> None:
        """Hand each frame to ``on_message`` and send the replies as one write."""
        if self.stopped:  # closing: no frame after it
            return
        on_message = self.handler.on_message
        encode_into = self._codec.encode_into
        pending = self.pending
        if pending is _NO_PENDING:
            pending = self.pending = []
        counters = self._counters
        conn = self.conn
        counters.frames_in += len(frames)
        replies = 0
        gathered = 0  # reply bytes in pending (a handler's sends count in self.gathered)
        high_water = self._high_water
        self.gathered = 0
        self.dispatching = True
        try:
            for frame in frames:
                reply = on_message(conn, frame)
                if reply is not None:
                    replies += 1
                    gathered += encode_into(pending, reply)
                    if gathered > high_water:
                        gathered = 0
                        self.flush_gathered()
                if self.stopped:
                    break
        except Exception as exc:
            counters.frames_out += replies
            self.dispatching = False
            if pending:
                self.flush_gathered()
            self.fail(exc)
            return
        self.dispatching = False
        counters.frames_out += replies
        if pending:
            self._write_dispatched(gathered)

    def _write_dispatched(self, gathered: int) -> None:
        """Write a read's replies (``gathered`` bytes of them, plus the handlers'
        sends), or close past ``max_output``."""
        size = gathered + self.gathered  # (a bound: the exact sum is taken only
        if size > self._max_output:  # when it might be over)
            size = sum(map(len, self.pending))
            if size > self._max_output:
                self._over_cap(size)
                return
        self._write_gathered(size, self._transport._write_batch)

    def gather(self, data: bytes) -> int:
        """A handler's ``send`` during dispatch: queue ``data`` with the read's replies;
        returns the bytes so queued since the last write."""
        if self.pending is _NO_PENDING:
            self.pending = []
        self.pending.append(data)
        self.gathered += len(data)
        return self.gathered

    def flush_gathered(self) -> None:
        """Write what is gathered so far, in the middle of a read.

        One read can hold thousands of small requests whose replies are large: gathered
        until the whole read is dispatched, they would bypass the water marks and the
        hard cap (``max_write_buffer``) and take memory without bound.  Past
        ``max_output`` nothing is joined: the connection is closed.
        """
        self.gathered = 0
        size = sum(map(len, self.pending))  # (rare: past the high water mark)
        if size > self._max_output:
            self._over_cap(size)
        elif self.pending:
            self._write_gathered(size, self._transport._write)

    def take_pending(self) -> bytes | None:
        """Remove and return what is gathered (the connection is closing), or None."""
        pending = self.pending
        if not pending or self.dispatching:
            return None
        data = b"".join(pending)
        pending.clear()
        return data

    def _over_cap(self, size: int) -> None:
        """Drop what is gathered (``size`` bytes, never joined) and abort: the replies
        cannot fit the output buffer's hard cap."""
        if self.pending is not _NO_PENDING:
            self.pending.clear()
        self.fail(WriteBufferFull(
            f"replies of {size} bytes exceed max_write_buffer={self._max_output}"), abort=True)

    def _flush_pending(self) -> None:
        """Write what is gathered now (outside a read's dispatch)."""
        pending = self.pending
        if pending:
            self._write_gathered(sum(map(len, pending)), self._transport._write)

    def _write_gathered(self, size: int, write: Callable[[bytes], None]) -> None:
        """Write what is gathered (``size`` bytes, or a bound over them) with ``write``:
        one part as it is; several as one join and one write while ``size`` is at most
        ``_JOIN_MAX`` (no part can be over it); else by :meth:`_write_parts`, which
        keeps a large part out of the joins."""
        pending = self.pending
        if len(pending) == 1:
            data = pending[0]
        elif size > _JOIN_MAX:
            self._write_parts(write)
            return
        else:
            data = b"".join(pending)
        pending.clear()
        write(data if type(data) is bytes else bytes(data))

    def _write_parts(self, write: Callable[[bytes], None]) -> None:
        """Write what is gathered with ``write``: runs of small parts joined, a part
        over ``_JOIN_MAX`` (a large payload after its frame header) by itself, never
        copied into a joined one.

        A write may close the connection (past the hard cap): the pipeline is then
        reset, and the parts left are dropped with the rest of its output.  A graceful
        close asked for meanwhile (``stopped``) is no reason to stop: the reply it cut
        would leave a frame header without its payload.
        """
        pending = self.pending
        parts = pending.copy()
        pending.clear()
        run: list[bytes] = []
        for part in parts:
            if len(part) <= _JOIN_MAX:
                run.append(part)
                continue
            if run:
                write(b"".join(run))
                run.clear()
                if self.pending is not pending:  # reset: the connection closed
                    return
            write(part if type(part) is bytes else bytes(part))
            if self.pending is not pending:
                return
        if run:
            write(b"".join(run))

    def connected(self) -> None:
        """Run ``on_connect`` under the error policy."""
        try:
            self.handler.on_connect(self.conn)
        except Exception as exc:
            self.fail(exc)
            return
        if self.pending and not self.stopped:
            self._flush_pending()

    def reset(self) -> None:
        """Drop what is buffered and gathered; dispatch no more frames."""
        self.stopped = True
        self.input.reset()
        self.pending = _NO_PENDING
        self.partial_since = 0.0

    def release(self) -> bool:
        """The connection is closed: :meth:`reset`.  True: ``on_close`` may run now
        (a :class:`~gevwire.waiting.WaitingPipeline` may first have work to cancel)."""
        self.reset()
        return True

    # -- errors and deadlines ----------------------------------------------------------

    def fail(self, error: BaseException, *, abort: bool = False) -> None:
        """Report ``error`` to the handler's ``on_error`` (default: log and close)."""
        transport = self._transport
        if isinstance(error, ConnectionClosed) and transport._refuses_sends():
            # A handler's ``send`` lost a race with ``close`` / ``shutdown_write`` called
            # from another thread (they refuse ``send`` at once, while the handler runs):
            # the connection is closing or half-closed as asked, so this is nobody's
            # error — not one to log with a traceback, count, or close the connection for.
            log.debug("%r: a handler's send came after close: %s", self.conn, error)
            return
        if self._reraise is not None and self._reraise(error):
            raise error
        errors = self._counters.errors
        kind = type(error).__name__
        errors[kind] = errors.get(kind, 0) + 1
        on_error = getattr(self.handler, "on_error", None)
        try:
            if on_error is not None:
                on_error(self.conn, error)
            else:
                log.error("closing %r after error", self.conn, exc_info=error)
                transport._close_gracefully()
        except Exception:
            log.exception("%r: on_error failed", self.conn)
            transport._close_now()
        if abort:
            transport._close_now()
        elif isinstance(error, FrameError) and error.fatal:
            # The stream is out of sync: no later byte can be framed, whatever the hook
            # decided.  Replies already queued still go out.
            transport._close_gracefully()

    def _track_partial_frame(self, consumed: bool) -> None:
        """Stamp when a partial frame starts; the transport arms the deadline once per
        partial frame, not per read."""
        if not self.input._len or self.stopped:
            self.partial_since = 0.0
        elif consumed or not self.partial_since:
            self.partial_since = self._counters.now
            self._transport._partial_frame_started()

    def frame_time_left(self, now: float) -> float | None:
        """Seconds until the buffered partial frame is overdue (<= 0: it is), or None
        when no partial frame is buffered or there is no ``frame_timeout``."""
        timeout = self._frame_timeout
        if timeout is None or not self.partial_since or not self.input._len or self.stopped:
            return None
        return self.partial_since + timeout - now

    @property
    def frame_timeout(self) -> float | None:
        """Seconds a started frame may take to complete (None: no deadline)."""
        return self._frame_timeout


#: A partial frame buffered past this many bytes has its announced length asked for.
ANNOUNCED_FROM = 1 << 16
#: Rings larger than this (never pooled: see BufferPool) are sized by frame headers.
LARGE_RING = 1 << 20

_NO_PENDING: list[bytes] = []  # never appended to: see FramePipeline.pending
#: Gathered replies are joined into one write up to this size; a larger part (a big
#: payload a codec appended after its header) is written by itself, not copied.
_JOIN_MAX = 1 << 18
_UNBOUNDED = 1 << 62  # max_output when there is none (an int: compared per reply)


class _NoEncoder:
    """The codec of a pipeline built on a bare decoder: it cuts frames, never answers."""

    def encode(self, message: Any) -> bytes:
        raise TypeError(f"a pipeline built on a bare decoder cannot encode {message!r}")

    def encode_into(self, parts: list[bytes], message: Any) -> int:
        return len(self.encode(message))


_NO_ENCODER = _NoEncoder()


class _EncodeInto:
    """A duck-typed codec (``decoder`` and ``encode`` only) with ``encode_into``."""

    __slots__ = ("_codec",)

    def __init__(self, codec: Any) -> None:
        self._codec = codec

    def encode(self, message: Any) -> Any:
        return self._codec.encode(message)

    def encode_into(self, parts: list[bytes], message: Any) -> int:
        return BaseCodec.encode_into(self._codec, parts, message)


class _DecodeBytes:
    """A duck-typed decoder with ``decode_bytes`` (as :class:`~gevwire.Decoder`'s)."""

    __slots__ = ("_decoder",)

    def __init__(self, decoder: Any) -> None:
        self._decoder = decoder

    def decode(self, ring: RingBuffer) -> Any:
        return self._decoder.decode(ring)

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        result: tuple[list[Any], int] = self._decoder.decode_view(view)
        return result

    def decode_bytes(self, data: bytes) -> tuple[list[Any], int]:
        return Decoder.decode_bytes(self._decoder, data)
