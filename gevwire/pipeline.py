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

import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from gevwire.codec import BaseCodec, Decoder
from gevwire.errors import ConnectionClosed, DecoderContractError, FrameError
from gevwire.ringbuffer import RingBuffer

__all__ = ["Counters", "DecodeProgress", "FramePipeline", "PipelineCounters", "Transport"]

log = logging.getLogger("gevwire")


class Transport:
    """What a pipeline asks of the connection that owns it, as callables (all called
    on the connection's loop thread).

    ``write(data)``: send now, after every byte written before.  ``write_batch(data)``:
    send the joined replies of a read; may wait for the end of the loop turn.
    ``close()``: stop reading, send what is queued, then close (the graceful close).
    ``abort()``: close at once, dropping unsent output.  ``refuses_sends()``: True once
    ``close`` or ``shutdown_write`` was asked for (``send`` then raises).
    ``partial_frame_started()``: a partial frame began to be buffered (arm the
    ``frame_timeout`` timer).  Bound methods are stored as they are, so calling one
    costs no extra Python call level.
    """

    __slots__ = ("abort", "close", "partial_frame_started", "refuses_sends", "write",
                 "write_batch")

    def __init__(
        self,
        *,
        write: Callable[[bytes], None],
        write_batch: Callable[[bytes], None] | None = None,
        close: Callable[[], None],
        abort: Callable[[], None],
        refuses_sends: Callable[[], bool],
        partial_frame_started: Callable[[], None] | None = None,
    ) -> None:
        self.write = write
        self.write_batch = write_batch if write_batch is not None else write
        self.close = close
        self.abort = abort
        self.refuses_sends = refuses_sends
        self.partial_frame_started = (partial_frame_started if partial_frame_started
                                      is not None else _nothing)


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
    ``reraise(error)``: errors for which it is true propagate to the caller instead of
    ``on_error`` (test tools; a server never sets it).
    """

    __slots__ = (
        "_counters",
        "_decode",
        "_decode_read",
        "_decode_view",
        "_decoder",
        "_encode_into",
        "_frame_timeout",
        "_handler",
        "_high_water",
        "_on_message",
        "_reraise",
        "_transport",
        "conn",
        "dispatching",
        "encode",
        "gathered",
        "input",
        "partial_since",
        "pending",
        "stopped",
    )

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
        frame_timeout: float | None = None,
        input_ring: RingBuffer | None = None,
        reraise: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self.conn = conn
        self._handler = handler
        self._on_message = handler.on_message
        self._transport = transport
        self._counters = counters
        if isinstance(codec, Decoder) or not hasattr(codec, "decoder"):
            # A bare decoder (test tools): frames only, no replies to encode.
            decoder: Any = codec
            encode_into: Any = _cannot_encode
            self.encode: Callable[[Any], bytes] = _cannot_encode_one
        else:
            decoder = codec.decoder()
            encode_into = getattr(codec, "encode_into", None)
            if encode_into is None:  # a duck-typed codec, not derived from BaseCodec
                encode_into = functools.partial(BaseCodec.encode_into, codec)
            self.encode = codec.encode
        self._decoder = decoder
        self._encode_into: Callable[[list[bytes], Any], int] = encode_into
        self._decode = decoder.decode
        self._decode_view = decoder.decode_view
        if view_reads:
            self._decode_read: Callable[[Any], tuple[list[Any], int]] = decoder.decode_view
        else:
            decode_bytes = getattr(decoder, "decode_bytes", None)
            if decode_bytes is None:  # a duck-typed decoder, not derived from Decoder
                decode_bytes = functools.partial(Decoder.decode_bytes, decoder)
            self._decode_read = decode_bytes
        self._high_water = high_water
        self._frame_timeout = frame_timeout
        self._reraise = reraise
        #: Bytes received and not yet cut: a partial frame, or what a batch left.
        self.input = input_ring if input_ring is not None else RingBuffer()
        #: Replies gathered while a read is dispatched (written when it is done).
        self.pending: list[bytes] = []
        #: Bytes put in ``pending`` by ``send`` since the last write.
        self.gathered = 0
        #: True while handlers run for a read (``send`` then gathers into ``pending``).
        self.dispatching = False
        #: Set when the connection closes (or is asked to): no frame is dispatched after.
        self.stopped = False
        #: ``counters.now`` when the buffered partial frame began (0.0: none).
        self.partial_since = 0.0

    # -- reads -------------------------------------------------------------------------

    def received(self, data: Any) -> bytes | None:
        """Cut, dispatch and answer one read (``bytes``, or a view with ``view_reads``).

        Returns the reply of a read that was one whole frame, for the caller to write
        at once; every other reply is handed to the transport.
        """
        if self.input._len:
            self.input.write(data)
            self.cut_ring()
            return None
        try:
            frames, used = self._decode_read(data)
        except Exception as exc:
            self.fail(exc)  # the read is dropped: the decoder could not say where it ends
            return None
        n = len(data)
        if used != n:
            if not 0 <= used <= n:
                self.fail(DecoderContractError(
                    f"{type(self._decoder).__name__} used {used} of {n} bytes"))
                return None
            # An incomplete frame, or one the batch cutter leaves to decode() (errors,
            # discards): the ring takes it, and decode() runs after this read's frames.
            self.input.write(memoryview(data)[used:])
            if frames:
                self.dispatch(frames)
            if not self.stopped:
                self.cut_ring()
            return None
        if len(frames) == 1 and not self.stopped:
            counters = self._counters
            counters.frames_in += 1
            # Not "dispatching": a handler's send() is written at once, before this reply.
            try:
                reply = self._on_message(self.conn, frames[0])
                if reply is not None:
                    data = self.encode(reply)
                    counters.frames_out += 1
                    return data if type(data) is bytes else bytes(data)
            except Exception as exc:
                self.fail(exc)
            return None
        if frames:
            self.dispatch(frames)
        return None

    def cut_ring(self) -> None:
        """Cut every whole frame buffered in ``input`` and dispatch them.

        For a transport that reads into the ring itself (``readv`` while a partial frame
        is buffered) and for what :meth:`received` left there.
        """
        ring = self.input
        buffered = ring._len
        frames: list[Any] = []
        first, second = ring.peek_all()
        if not second:
            # Contiguous: cut whole frames with the batch path, leaving decode() only
            # the tail or whatever the batch cutter declined.
            try:
                frames, used = self._decode_view(first)
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
        decode = self._decode
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
        if self._frame_timeout is not None:
            self._track_partial_frame(ring._len < buffered)

    # -- dispatch ----------------------------------------------------------------------

    def dispatch(self, frames: list[Any]) -> None:
        """Hand each frame to ``on_message`` and send the replies as one write."""
        if self.stopped:  # closing: no frame after it
            return
        on_message = self._on_message
        encode_into = self._encode_into
        pending = self.pending
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
                self._flush_pending()
            self.fail(exc)
            return
        self.dispatching = False
        counters.frames_out += replies
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            self._transport.write_batch(data if type(data) is bytes else bytes(data))

    def gather(self, data: bytes) -> int:
        """A handler's ``send`` during dispatch: queue ``data`` with the read's replies;
        returns the bytes so queued since the last write."""
        self.pending.append(data)
        self.gathered += len(data)
        return self.gathered

    def flush_gathered(self) -> None:
        """Write what is gathered so far, in the middle of a read.

        One read can hold thousands of small requests whose replies are large: gathered
        until the whole read is dispatched, they would bypass the water marks and the
        hard cap (``max_write_buffer``) and take memory without bound.
        """
        self.gathered = 0
        self._flush_pending()

    def take_pending(self) -> bytes | None:
        """Remove and return what is gathered (the connection is closing), or None."""
        pending = self.pending
        if not pending or self.dispatching:
            return None
        data = b"".join(pending)
        pending.clear()
        return data

    def _flush_pending(self) -> None:
        pending = self.pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._transport.write(data if type(data) is bytes else bytes(data))

    def connected(self) -> None:
        """Run ``on_connect`` under the error policy."""
        try:
            self._handler.on_connect(self.conn)
        except Exception as exc:
            self.fail(exc)
            return
        if self.pending and not self.stopped:
            self._flush_pending()

    def reset(self) -> None:
        """The connection is closed: drop what is buffered and gathered."""
        self.stopped = True
        self.input.reset()
        self.pending.clear()
        self.partial_since = 0.0

    # -- errors and deadlines ----------------------------------------------------------

    def fail(self, error: BaseException, *, abort: bool = False) -> None:
        """Report ``error`` to the handler's ``on_error`` (default: log and close)."""
        transport = self._transport
        if isinstance(error, ConnectionClosed) and transport.refuses_sends():
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
        on_error = getattr(self._handler, "on_error", None)
        try:
            if on_error is not None:
                on_error(self.conn, error)
            else:
                log.error("closing %r after error", self.conn, exc_info=error)
                transport.close()
        except Exception:
            log.exception("%r: on_error failed", self.conn)
            transport.abort()
        if abort:
            transport.abort()
        elif isinstance(error, FrameError) and error.fatal:
            # The stream is out of sync: no later byte can be framed, whatever the hook
            # decided.  Replies already queued still go out.
            transport.close()

    def _track_partial_frame(self, consumed: bool) -> None:
        """Stamp when a partial frame starts; the transport arms the deadline once per
        partial frame, not per read."""
        if not self.input._len or self.stopped:
            self.partial_since = 0.0
        elif consumed or not self.partial_since:
            self.partial_since = self._counters.now
            self._transport.partial_frame_started()

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


def _cannot_encode(parts: list[bytes], message: Any) -> int:
    raise TypeError(f"a pipeline built on a bare decoder cannot encode {message!r}")


def _cannot_encode_one(message: Any) -> bytes:
    return bytes(_cannot_encode([], message))


def _nothing() -> None:
    pass
