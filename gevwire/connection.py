"""``Connection``: one socket's connection, the same on every backend.

A connection keeps its states (:class:`ConnState`), its timers (idle, frame, close,
PROXY header), the output water marks and the reasons reading is held, sends from
other threads, and its :class:`~gevwire.pipeline.FramePipeline` (read → frames →
handler → replies, sans I/O).  How its bytes move is one small object per connection,
its backend's: ``ReadinessIO`` (``gevwire._socket_io``: epoll / kqueue readiness,
``read`` / ``write``) or ``UringIO`` (``gevwire._uring``: io_uring completions), each
with a TLS variant that decrypts what it reads for :class:`TLSConnection`.

Water marks on unsent output pause and resume reading from the peer (so a peer that
sends but never reads cannot make us buffer without bound), and a hard cap closes the
connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gevwire._compiled import speedups as _speedups
from gevwire._connstate import (
    _CLOSED,
    _FLUSHING,
    _LINGERING,
    _OPEN,
    _STATE_LOCK,
    _WRITE_SHUT,
    _WRITE_SHUTTING,
    ConnState,
)
from gevwire._socket_io import READ_MAX, ReadinessIO, SocketIO
from gevwire.codec import BaseCodec
from gevwire.errors import (
    ConnectionClosed,
    FrameError,
    FrameTimeout,
    ProxyHeaderTimeout,
    TLSError,
    TLSHandshakeTimeout,
    WriteBufferFull,
)
from gevwire.handler import handler_waits
from gevwire.pipeline import FramePipeline
from gevwire.proxy_protocol import ProxyHeaderDecoder, ProxyInfo
from gevwire.ringbuffer import RingBuffer
from gevwire.tls import TLSSession
from gevwire.waiting import DEFAULT_MAX_PENDING, Offloader, WaitingPipeline

if TYPE_CHECKING:
    from collections.abc import Callable

    from gevwire.loop import EventLoop
    from gevwire.timers import TimerHandle

__all__ = ["READ_MAX", "ConnState", "Connection", "ConnectionOptions", "TLSConnection"]

log = logging.getLogger("gevwire")

# Why reading is held (Connection._holds): the server's memory budget, the application.
_BUDGET, _APPLICATION, _WAITING = 1, 2, 4
_XSEND_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """Per-connection limits, shared by every connection of a server.

    ``write_high_water`` / ``write_low_water``: reading from the peer pauses when unsent
    output exceeds the high mark and resumes below the low mark.  ``max_write_buffer``:
    unsent output beyond this closes the connection (:class:`WriteBufferFull`).
    ``linger_timeout``: when a connection is closed while the peer is still sending,
    it is half-closed and the peer's bytes are discarded until its EOF, for at most this
    long (a lingering close: closing a socket with unread input sends RST, which can
    destroy the last replies in flight).
    ``close_timeout``: how long :meth:`Connection.close` waits for unsent output to drain
    before dropping it.  ``idle_timeout``: close a connection after this many seconds
    with nothing read or written (None: never).  ``frame_timeout``: a frame whose first
    bytes have arrived must be complete within this many seconds, else
    :class:`~gevwire.FrameTimeout` goes to ``on_error`` (default: close) — slowloris
    peers that trickle bytes never look idle (None: no deadline).  ``proxy_protocol``:
    expect a PROXY protocol v1 or v2 header before the first frame; it must be complete
    within ``proxy_timeout`` seconds of the connect, else
    :class:`~gevwire.ProxyHeaderTimeout` goes to ``on_error`` (nginx's
    ``proxy_protocol_timeout``; a proxy sends it at once).

    For handlers that wait (``async def`` or :func:`~gevwire.blocking`; see
    :mod:`gevwire.waiting`): ``max_pending_per_connection`` frames in flight at most
    (reading pauses at the cap); ``handler_timeout``: seconds a frame's work may take,
    else :class:`~gevwire.HandlerTimeout` goes to ``on_error`` (None: no limit);
    ``ordered_replies``: replies leave in frame order (False: as they are ready);
    ``offloader``: where the waiting runs (None: the process's own asyncio loop thread
    and thread pool).
    """

    write_high_water: int = 1 << 20
    write_low_water: int = 256 << 10
    max_write_buffer: int = 64 << 20
    close_timeout: float = 10.0
    linger_timeout: float = 2.0
    tcp_nodelay: bool = True
    idle_timeout: float | None = None
    frame_timeout: float | None = None
    proxy_protocol: bool = False
    proxy_timeout: float = 10.0
    max_pending_per_connection: int = DEFAULT_MAX_PENDING
    handler_timeout: float | None = None
    ordered_replies: bool = True
    offloader: Offloader | None = None
    ssl_handshake_timeout: float = 10.0
    ssl_shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.write_low_water <= self.write_high_water <= self.max_write_buffer:
            raise ValueError(
                "need 0 <= write_low_water <= write_high_water <= max_write_buffer"
            )
        if self.close_timeout < 0:
            raise ValueError("close_timeout must be >= 0")
        if self.linger_timeout < 0:
            raise ValueError("linger_timeout must be >= 0")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive (or None for no limit)")
        if self.frame_timeout is not None and self.frame_timeout <= 0:
            raise ValueError("frame_timeout must be positive (or None for no limit)")
        if self.proxy_timeout <= 0:
            raise ValueError("proxy_timeout must be positive")
        if self.max_pending_per_connection < 1:
            raise ValueError("max_pending_per_connection must be at least 1")
        if self.handler_timeout is not None and self.handler_timeout <= 0:
            raise ValueError("handler_timeout must be positive (or None for no limit)")
        if self.ssl_handshake_timeout <= 0:
            raise ValueError("ssl_handshake_timeout must be positive")
        if self.ssl_shutdown_timeout < 0:
            raise ValueError("ssl_shutdown_timeout must be >= 0")


class Connection:
    """A TCP (or Unix) connection owned by one event loop.

    ``send``, ``close``, ``shutdown_write`` and ``abort`` may be called from any thread;
    from another thread they are queued to the loop.  Everything else about the
    connection changes on its loop's thread only.
    """

    __slots__ = (
        "__weakref__",
        "_close_timer",
        "_frame_timer",
        "_holds",
        "_idle_timer",
        "_input",
        "_io",
        "_last_active",
        "_on_closed",
        "_options",
        "_pipe",
        "_proxy",
        "_read_paused",
        "_sent_waiters",
        "_state",
        "_values",
        "_xsend",
        "_xsend_bytes",
        "_xsend_scheduled",
        "context",
        "loop",
        "peer_addr",
        "proxy_info",
    )

    def __init__(
        self,
        loop: EventLoop,
        fd: int,
        peer_addr: Any,
        handler: Any,
        codec: BaseCodec,
        options: ConnectionOptions,
        on_closed: Callable[[Connection], None] | None = None,
        *,
        io: type[SocketIO] = ReadinessIO,
    ) -> None:
        """``io``: the backend's I/O class (``ReadinessIO`` for epoll / kqueue, and on
        io_uring loops for connections read by readiness; ``UringIO`` otherwise)."""
        self.loop = loop
        self.peer_addr = peer_addr
        #: Free for the application: anything it wants to keep with the connection.
        self.context: Any = None
        self._values: dict[str, Any] | None = None  # made by the first set() or values
        self._options = options
        self._on_closed = on_closed
        # Framing, dispatch, reply gathering and the error policy: the one pipeline
        # every transport drives, this connection being its transport (it keeps the
        # close states; its I/O object moves the bytes).
        self._io: SocketIO = io(self, loop, fd)
        view_reads = io.view_reads
        pool = loop.pool
        if handler_waits(handler):  # (coroutines or blocking calls: see gevwire.waiting)
            pipe: FramePipeline = WaitingPipeline(
                self, handler, codec, self, loop, view_reads=view_reads,
                high_water=options.write_high_water, max_output=options.max_write_buffer,
                frame_timeout=options.frame_timeout, input_ring=RingBuffer(pool=pool),
                offloader=options.offloader, max_pending=options.max_pending_per_connection,
                handler_timeout=options.handler_timeout, ordered=options.ordered_replies)
        else:
            pipe = FramePipeline(
                self, handler, codec, self, loop, view_reads=view_reads,
                high_water=options.write_high_water, max_output=options.max_write_buffer,
                frame_timeout=options.frame_timeout, input_ring=RingBuffer(pool=pool))
        self._pipe = pipe
        self._input: RingBuffer = pipe.input
        self._state = _OPEN
        self._read_paused = False  # by output backpressure
        self._holds = 0  # reading held by the memory budget (_BUDGET) or the application
        # Sends from other threads, made by the first (an idle connection holds none:
        # an empty deque is 600 bytes, more than the rest of a connection's state).
        self._xsend: deque[bytes] | None = None
        self._xsend_scheduled = False
        self._xsend_bytes = 0  # queued by other threads since the last drain (approximate)
        self._close_timer: TimerHandle | None = None
        self._idle_timer: TimerHandle | None = None
        self._frame_timer: TimerHandle | None = None
        self._proxy: ProxyHeaderDecoder | None = None
        #: The PROXY protocol header (``proxy_protocol=True``), else None.
        self.proxy_info: ProxyInfo | None = None
        self._last_active = 0.0
        # when_sent callbacks waiting for the output to drain (None: none waits).
        self._sent_waiters: list[Callable[[bool], Any]] | None = None

    # -- public API --------------------------------------------------------------------

    @property
    def fd(self) -> int:
        """The socket's fd (-1 once closed)."""
        return self._io._fd

    @property
    def connected(self) -> bool:
        """True until the connection starts closing."""
        return self._state < _FLUSHING and not self._pipe.stopped

    @property
    def state(self) -> ConnState:
        """Where the connection is in its life (see :class:`ConnState`)."""
        return self._state

    @property
    def read_buffer_length(self) -> int:
        """Bytes received but not yet cut into a frame."""
        return self._input._len

    @property
    def write_buffer_length(self) -> int:
        """Bytes waiting to be written to the socket."""
        return self._io.unsent() + sum(len(d) for d in self._pipe.pending)

    def get(self, key: str, default: Any = None) -> Any:
        """A value stored with :meth:`set` (gev's ``Get``)."""
        return self._values.get(key, default) if self._values is not None else default

    def set(self, key: str, value: Any) -> None:
        """Store a value with the connection (gev's ``Set``)."""
        self.values[key] = value

    @property
    def values(self) -> dict[str, Any]:
        """The values stored with :meth:`set`, free for the application as a dict."""
        if self._values is None:
            self._values = {}
        return self._values

    @values.setter
    def values(self, values: dict[str, Any]) -> None:
        self._values = values

    def send(self, message: Any) -> None:
        """Encode ``message`` with the connection's codec and send it; from any thread.

        On the loop thread the bytes are written at once (or with the other replies of
        the frame being handled); from another thread they are queued to the loop, and
        each ``send`` reaches the peer whole and in the order of the calls.
        Raises :class:`ConnectionClosed` (and nothing else of gevwire's) once the
        connection is closing or its writing half is shut down.  When a message alone
        encodes to more than ``max_write_buffer`` (measured before it is joined), or
        sends from other threads queue more than that the loop has not yet taken (a peer
        that does not read), the message that passed the cap is dropped and *this*
        connection is closed: its own ``on_error`` gets :class:`WriteBufferFull`, and
        the sender (a handler serving someone else) gets no exception for it; its later
        sends raise :class:`ConnectionClosed` as to any closing connection.
        """
        pipe = self._pipe
        if self._state != _OPEN or pipe.stopped:
            raise ConnectionClosed(f"{self} is closed for writing")
        try:
            data = pipe.encode(message)
        except WriteBufferFull as error:  # alone past the cap: never joined, and this
            self._refuse_send(error)  # connection closes, as for any send past it
            return
        if threading.get_ident() == self.loop.thread_id:
            self.loop.frames_out += 1
            if pipe.dispatching:
                # Written with the read's replies; early only past the hard cap (the
                # ring's check then closes), so a handler's send then shutdown_write
                # stay together.
                if pipe.gather(data) + self._io._output._len > self._options.max_write_buffer:
                    pipe.flush_gathered()
            else:
                self._write(data)
        else:
            queued = self._xsend_bytes + len(data)
            limit = self._options.max_write_buffer
            if queued + self._io._output._len > limit:
                # A producer thread outrunning the peer: without this, sends queued
                # between two loop turns would take memory without bound.
                self._refuse_send(WriteBufferFull(
                    f"{queued} bytes queued by send() from other threads exceed "
                    f"max_write_buffer={limit}"))
                return
            self._xsend_bytes = queued
            queue = self._xsend
            if queue is None:
                with _XSEND_LOCK:  # two threads' first sends must not make two queues
                    queue = self._xsend
                    if queue is None:
                        queue = self._xsend = deque()
            queue.append(data)
            if not self._xsend_scheduled:
                self._xsend_scheduled = True
                self.loop.call_soon(self._drain_xsend)

    def when_sent(self, callback: Callable[[bool], Any]) -> None:
        """Call ``callback(True)`` on the loop thread once every byte sent on this
        connection so far (replies, and messages sent from any thread) has left the process
        (written to the socket); ``callback(False)`` if the connection closes first
        (those bytes are lost).  From any thread; netty's write future, for a
        handler that streams and must know when to produce more or when it is done.
        """
        self.loop.call_soon(self._add_sent_waiter, callback)  # after sends queued before

    async def drained(self) -> None:
        """In an ``async def`` handler: wait until every byte sent so far has left the
        process (:meth:`when_sent`); raises :class:`ConnectionClosed` if the connection
        closed first (asyncio's ``StreamWriter.drain``)."""
        import asyncio

        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def sent(ok: bool) -> None:
            loop.call_soon_threadsafe(_settle_future, done, ok)

        self.when_sent(sent)
        if not await done:
            raise ConnectionClosed(f"{self} closed before its output was sent")

    def close(self) -> None:
        """Stop reading, flush unsent output (up to ``close_timeout``), then close.

        Idempotent; from any thread.  Called in a handler, the reply that handler
        returns is still sent; later frames of the same read are not dispatched.
        ``on_close`` runs once, after the fd is closed.
        """
        if not self._pipe.stopped:
            self._pipe.stopped = True
            self.loop.call_soon(self._close_gracefully)

    def abort(self) -> None:
        """Close at once, dropping unsent output; from any thread."""
        self.loop.run_in_loop(self._close_now)

    def shutdown_write(self) -> None:
        """Half-close: send FIN once every queued byte has been written; from any thread.

        Reading goes on until the peer closes.  Unlike gev's, this never cuts off output
        that is still buffered.
        """
        with _STATE_LOCK:
            if self._state != _OPEN:
                return
            self._state = _WRITE_SHUTTING
        # Queued even on the loop thread: replies of the frame being handled (and of the
        # rest of its read) are written this turn, before the FIN.
        self.loop.call_soon(self._shutdown_write_in_loop)

    def pause_reading(self) -> None:
        """Stop reading from the peer until :meth:`resume_reading` (asyncio's
        ``Transport.pause_reading``, netty's ``autoRead``); from any thread.

        The frames of the read being handled are still dispatched; no read follows.
        Replies and sends still go out, EOF is seen once reading resumes, and
        ``frame_timeout`` does not count the pause against the peer.
        """
        self.loop.run_in_loop(self._hold, _APPLICATION)

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading` (output backpressure or the server's
        memory budget may still hold it); from any thread."""
        self.loop.run_in_loop(self._unhold, _APPLICATION)

    @property
    def reading_paused(self) -> bool:
        """True between :meth:`pause_reading` and :meth:`resume_reading`."""
        return bool(self._holds & _APPLICATION)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._io._fd} peer={self.peer_addr!r} {self._state}>"

    # What TLS negotiated (see TLSConnection): None on a plain connection.

    @property
    def alpn_protocol(self) -> str | None:
        """The protocol ALPN chose (TLS), else None."""
        return None

    @property
    def server_hostname(self) -> str | None:
        """The SNI host name: the one the client sent (TLS, server side), the one dialed
        (TLS, client side); else None."""
        return None

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """The peer's verified certificate as ``getpeercert()`` gives it (mutual TLS),
        else None."""
        return None

    @property
    def tls_version(self) -> str | None:
        """``"TLSv1.3"``, ``"TLSv1.2"`` ... (TLS, once the handshake is done), else None."""
        return None

    @property
    def cipher(self) -> tuple[str, str, int] | None:
        """``(name, protocol, secret bits)`` of the TLS cipher, else None."""
        return None

    # -- loop side ---------------------------------------------------------------------

    def start(self) -> None:
        """Register with the loop and call ``on_connect`` (loop thread only; the server,
        the client and ``Server.connect`` call it once for each connection they make)."""
        self._last_active = self.loop.now
        if self._options.idle_timeout:
            self._idle_timer = self.loop.run_after(self._options.idle_timeout,
                                                   self._check_idle)
        if self._options.proxy_protocol:
            # Read the PROXY header first (its own callback, so the hot path pays
            # nothing for it); on_connect runs once peer_addr is the real client's.
            self._proxy = ProxyHeaderDecoder()
            self._io.start(proxy=True)
            # The header's deadline, on the frame timer (frames come after the header).
            self._frame_timer = self.loop.run_after(self._options.proxy_timeout,
                                                    self._check_proxy_deadline)
            return
        self._io.start()
        self._connected()

    def _proxy_header_read(self) -> bool:
        """Bytes came while the PROXY header is awaited: True once it is whole (the
        bytes after it stay in the input ring)."""
        assert self._proxy is not None
        try:
            info = self._proxy.decode(self._input)
        except FrameError as exc:
            self._pipe.fail(exc)
            return False
        if info is None:
            return False
        self._proxy = None
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        self.proxy_info = info
        if info.source is not None:
            self.peer_addr = info.source
        return True

    def _check_proxy_deadline(self) -> None:
        """PROXY timer: the header is overdue (idle_timeout cannot tell: a trickle of
        bytes keeps the connection active)."""
        self._frame_timer = None
        if self._proxy is not None and self._state < _FLUSHING:
            self._pipe.fail(ProxyHeaderTimeout(self._options.proxy_timeout,
                                               self._input._len))

    def _finish_close(self) -> None:
        """A graceful close has flushed its output: close, lingering if the peer is
        still sending (loop thread; state is FLUSHING).

        ``close(2)`` with unread input makes the kernel answer with RST, which can
        destroy replies still in flight to the peer (an error reply, a close frame).
        One read tells: nothing pending closes now; EOF closes now; bytes mean the peer
        is still sending, so half-close (it sees our FIN after our last reply), discard
        its bytes until its EOF, and close then or after ``linger_timeout``.
        """
        if not self._io.peer_still_sending() or not self._options.linger_timeout:
            self._close_now()
            return
        self._start_lingering(self._options.linger_timeout)
        self._io.linger()

    def _start_lingering(self, timeout: float) -> None:
        """Into LINGERING: nothing more is framed, FIN is sent, ``timeout`` bounds it."""
        self._state = _LINGERING
        self._input.reset()  # nothing more is framed: give the storage back now
        self._io.shutdown_write()  # (again, if shutdown_write came first: harmless)
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = self.loop.run_after(timeout, self._close_now)

    def _connected(self) -> None:
        self._pipe.connected()

    def _partial_frame_started(self) -> None:
        """Arm the frame deadline (once per partial frame, not per read)."""
        if self._frame_timer is None and self._state < _FLUSHING:
            timeout = self._options.frame_timeout
            assert timeout is not None
            self._frame_timer = self.loop.run_after(timeout, self._check_frame_deadline)

    def _check_frame_deadline(self) -> None:
        """Frame timer: fail with FrameTimeout if the partial frame is overdue."""
        self._frame_timer = None
        if self._state >= _FLUSHING:
            return
        left = self._pipe.frame_time_left(time.monotonic())
        if left is None:
            return
        timeout = self._options.frame_timeout
        assert timeout is not None
        if left > 0 or self._read_paused or self._holds:
            # (Paused by us, for backpressure or the memory budget: not the peer's fault.)
            self._frame_timer = self.loop.run_after(left if left > 0 else timeout,
                                                    self._check_frame_deadline)
            return
        self._pipe.fail(FrameTimeout(timeout, self._input._len))

    def _on_drained(self) -> None:
        """Every byte handed over has been written (the I/O object calls this): resume
        reading paused by backpressure, call the ``when_sent`` waiters, finish a
        ``shutdown_write`` or a graceful close."""
        resumed = self._read_paused
        if resumed:
            self._read_paused = False
            if self._state < _FLUSHING and not self._holds:
                self._io.set_reading(True)
        if resumed:
            self._writable_changed(True)
        if self._sent_waiters is not None:
            self._notify_sent(True)
        if self._state == _WRITE_SHUTTING:
            self._state = _WRITE_SHUT
            self._io.shutdown_write()
        elif self._state == _FLUSHING and not self._pipe.in_flight:
            self._finish_close()

    # -- the pipeline's transport side (writes go to the I/O object) ------------------

    def _write(self, data: bytes) -> None:
        """Write ``data``, buffering what the socket does not take (loop thread)."""
        self._io.write(data)

    def _write_batch(self, data: bytes) -> None:
        """A read's joined replies (a readiness backend writes them at the turn's end)."""
        self._io.write_batch(data)

    def _refuse_send(self, error: WriteBufferFull) -> None:
        """A ``send`` past the cap: drop it and close this connection (its ``on_error``
        gets ``error`` on the loop thread; the sender gets nothing)."""
        if threading.get_ident() == self.loop.thread_id:
            self._pipe.fail(error, abort=True)
        else:
            self._pipe.stopped = True
            self.loop.call_soon(self._fail_and_abort, error)

    def _fail_and_abort(self, error: BaseException) -> None:
        self._pipe.fail(error, abort=True)

    def _over_cap(self, size: int) -> None:
        self._pipe.fail(WriteBufferFull(
            f"{size} unsent bytes exceed max_write_buffer={self._options.max_write_buffer}"
        ), abort=True)

    def _check_high_water(self) -> None:
        """Unsent output grew: past the cap close, past the high water mark pause."""
        size = self._io.queued()
        options = self._options
        if size > options.max_write_buffer:
            self._over_cap(size)
        elif size > options.write_high_water and not self._read_paused:
            self._pause_for_output()

    def _pause_for_output(self) -> None:
        """Unsent output passed the high water mark: stop reading, tell the handler."""
        self._read_paused = True
        self._io.set_reading(False)
        self._writable_changed(False)

    def _resume_reading(self) -> None:
        self._read_paused = False
        if self._state < _FLUSHING and not self._holds:
            self._io.set_reading(True)
        self._writable_changed(True)

    def _writable_changed(self, writable: bool) -> None:
        """The handler's ``on_writable_changed(conn, writable)``, if it has one."""
        hook = getattr(self._pipe.handler, "on_writable_changed", None)
        if hook is not None and self._state != _CLOSED:
            try:
                hook(self, writable)
            except Exception as exc:
                self._pipe.fail(exc)

    # -- the server's memory budget (gevwire.budget; loop thread) ----------------------

    def _buffered_bytes(self) -> int:
        """Storage held by this connection's input and output rings."""
        return self._input._cap + self._io.storage()

    @property
    def _budget_paused(self) -> bool:
        return bool(self._holds & _BUDGET)

    def _pause_for_budget(self) -> None:
        self._hold(_BUDGET)

    def _resume_for_budget(self) -> None:
        self._unhold(_BUDGET)

    def _hold(self, why: int) -> None:
        """Stop reading for ``why`` (loop thread)."""
        self._holds |= why
        self._io.set_reading(False)

    def _unhold(self, why: int) -> None:
        """Read again, unless another hold or output backpressure remains (loop thread)."""
        self._holds &= ~why
        if not self._holds and self._state < _FLUSHING and not self._read_paused:
            self._io.set_reading(True)

    def _gone_while_paused(self) -> bool:
        """Paused by the budget, nothing is read: whether the peer went away must be
        asked (closed here if it did)."""
        if self._state != _CLOSED and self._io.peer_closed():
            self._close_now()
            return True
        return False

    def _fail_for_budget(self, error: BaseException) -> None:
        if self._state != _CLOSED:
            self._pipe.fail(error, abort=True)

    def _drain_xsend(self) -> None:
        self._xsend_scheduled = False  # before draining: see send()
        self._xsend_bytes = 0
        queue = self._xsend
        if queue is None:
            return
        if self._state == _CLOSED or not queue:
            queue.clear()
            return
        chunks = [queue.popleft() for _ in range(len(queue))]
        self.loop.frames_out += len(chunks)
        self._write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _add_sent_waiter(self, callback: Callable[[bool], Any]) -> None:
        if self._state == _CLOSED:
            self._call_sent_waiter(callback, False)
        elif not self._has_unsent_bytes():
            self._call_sent_waiter(callback, True)
        else:
            if self._sent_waiters is None:
                self._sent_waiters = []
            self._sent_waiters.append(callback)
            self._io.flush()  # its drain calls the waiters

    def _has_unsent_bytes(self) -> bool:
        """True while bytes handed to this connection have not all left the process."""
        return bool(self._io.has_unsent() or self._pipe.pending)

    def _notify_sent(self, ok: bool) -> None:
        """The output drained (``ok``) or the connection closed: the waiters' turn."""
        waiters = self._sent_waiters
        if waiters:
            self._sent_waiters = None
            for callback in waiters:
                self._call_sent_waiter(callback, ok)

    def _call_sent_waiter(self, callback: Callable[[bool], Any], ok: bool) -> None:
        try:
            callback(ok)
        except Exception as exc:
            if self._state != _CLOSED:
                self._pipe.fail(exc)
            else:
                log.exception("%r: a when_sent callback failed", self)

    def _check_idle(self) -> None:
        """Idle timer: close if nothing was read or written for ``idle_timeout``.

        Reads and writes only stamp ``_last_active`` (the loop's per-turn clock); the
        timer re-arms itself for the time left, so activity never touches the timer heap.
        """
        self._idle_timer = None
        if self._state == _CLOSED:
            return
        timeout = self._options.idle_timeout
        assert timeout is not None
        pipe = self._pipe
        # Waiting for a handler's work, or its reply just now, is not idle (the
        # pipeline stamps when work ends: no stamp on the write paths).
        last_active = max(self._last_active, pipe.work_ended)
        left = last_active + timeout - time.monotonic()
        if pipe.in_flight:
            self._last_active = self.loop.now
            left = timeout
        if left > 0:
            self._idle_timer = self.loop.run_after(left, self._check_idle)
            return
        log.debug("%r: idle for %.1fs, closing", self, timeout)
        self.loop.errors["idle_timeout"] = self.loop.errors.get("idle_timeout", 0) + 1
        if self._state < _FLUSHING:
            self._pipe.stopped = True
            self._close_gracefully()
        else:
            self._close_now()

    def _has_unsent(self) -> bool:
        """True while output is buffered, gathered, or (completion backends) in flight,
        or while frames are in flight (their replies are still to come)."""
        return bool(self._io.has_unsent() or self._pipe.pending or self._pipe.in_flight)

    # -- the waiting pipeline's transport side (see gevwire.waiting) -------------------

    def _hold_for_work(self) -> None:
        self._hold(_WAITING)

    def _unhold_for_work(self) -> None:
        self._unhold(_WAITING)

    def _work_done(self) -> None:
        """A graceful close waited for frames in flight: they have ended."""
        if self._state == _FLUSHING and not self._has_unsent():
            self._finish_close()

    def _on_eof(self) -> None:
        """The peer shut down its writing half: finish replies, then close (as asyncio)."""
        if self._has_unsent():
            self._close_gracefully()
        else:
            self._close_now()

    def _shutdown_write_in_loop(self) -> None:
        if self._state == _WRITE_SHUTTING and not self._has_unsent():
            self._state = _WRITE_SHUT
            self._io.shutdown_write()

    def _refuses_sends(self) -> bool:
        """True once close or shutdown_write was asked for (``send`` raises)."""
        return self._pipe.stopped or self._state != _OPEN

    def _close_gracefully(self) -> None:
        with _STATE_LOCK:
            if self._state >= _FLUSHING:
                return
            self._state = _FLUSHING
        self._pipe.stopped = True
        if not self._has_unsent():
            self._finish_close()
            return
        self._io.flush_for_close(self._pipe.take_pending())
        timeout = self._options.close_timeout
        self._close_timer = self.loop.run_after(timeout, self._close_now)

    def _close_now(self) -> None:
        with _STATE_LOCK:
            if self._state == _CLOSED:
                return
            self._state = _CLOSED
        self._pipe.stopped = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        self._io.release()  # (the fd closed, unsent output dropped)
        closed = self._pipe.release()
        if self._xsend is not None:
            self._xsend.clear()
        if self._sent_waiters is not None:
            self._notify_sent(False)
        if closed:  # (else the pipeline calls _closed once the work it cancels ends)
            self._closed()

    def _closed(self) -> None:
        """Closed and nothing of the handler's still running: ``on_close``."""
        try:
            self._pipe.handler.on_close(self)
        except Exception:
            log.exception("%r: on_close failed", self)
        self.loop.connections_closed += 1
        if self._on_closed is not None:
            self._on_closed(self)


def _settle_future(future: Any, ok: bool) -> None:
    if not future.done():
        future.set_result(ok)


class TLSConnection(Connection):
    """A :class:`Connection` over TLS: ciphertext through a :class:`~gevwire.tls.TLSSession`
    between the socket and the pipeline, so codecs and handlers see plaintext frames.

    Its I/O object is its backend's TLS variant (a plain connection's read path is
    untouched: it never asks whether it is TLS): each read is handed to
    :meth:`_tls_received`, decrypted, and the plaintext to ``FramePipeline.received``;
    a partial frame is buffered as plaintext in the input ring.  Every write (replies,
    ``send`` from any thread) is encrypted in ``_write``; the output ring holds
    ciphertext, so the water marks and ``max_write_buffer`` count ciphertext (plaintext
    plus 22 bytes per record of up to 16 KiB); replies gathered during a read count as
    plaintext until they are encrypted.  ``read_buffer_length`` is plaintext.

    ``on_connect`` runs once the handshake is done (after the PROXY header, when there is
    one), so ``alpn_protocol``, ``server_hostname``, ``peer_certificate``, ``tls_version``
    and ``cipher`` are known there.  A handshake not done within
    ``ssl_handshake_timeout`` is a :class:`~gevwire.TLSHandshakeTimeout`; a failed one
    a :class:`~gevwire.TLSHandshakeError` (for ``on_error``: counted, the alert sent,
    the connection closed whatever the hook does).  A peer that closes without
    ``close_notify`` is an EOF (logged at debug).  ``close()`` sends ``close_notify``
    after the replies, then waits for the peer's up to ``ssl_shutdown_timeout``.
    """

    __slots__ = ("_record_since", "_tls", "_tls_read", "_tls_timer")

    def __init__(
        self,
        loop: EventLoop,
        fd: int,
        peer_addr: Any,
        handler: Any,
        codec: BaseCodec,
        options: ConnectionOptions,
        on_closed: Callable[[Connection], None] | None = None,
        *,
        io: type[SocketIO] = ReadinessIO,
        tls: TLSSession,
    ) -> None:
        """``io``: the backend's I/O class, as for :class:`Connection` (its TLS variant
        is used); ``tls``: the session, made for this connection."""
        self._tls = tls
        # The handshake's deadline, then (with frame_timeout) a partial record's.
        self._tls_timer: TimerHandle | None = None
        self._record_since = 0.0  # loop.now when the buffered partial record began
        tls.track_records = options.frame_timeout is not None
        #: What the I/O object hands each read's ciphertext to: _tls_received, or once
        #: the handshake is done, the compiled step's (see _use_compiled_path).
        self._tls_read: Callable[[bytes | memoryview], None] = self._tls_received
        super().__init__(loop, fd, peer_addr, handler, codec, options, on_closed,
                         io=io.tls_io)

    @property
    def tls(self) -> TLSSession:
        """The TLS session (what was negotiated; see :class:`~gevwire.tls.TLSSession`)."""
        return self._tls

    @property
    def alpn_protocol(self) -> str | None:
        return self._tls.alpn_protocol

    @property
    def server_hostname(self) -> str | None:
        return self._tls.server_hostname

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        return self._tls.peer_certificate

    @property
    def tls_version(self) -> str | None:
        return self._tls.tls_version

    @property
    def cipher(self) -> tuple[str, str, int] | None:
        return self._tls.cipher

    # -- handshake ---------------------------------------------------------------------

    def _connected(self) -> None:
        """Registered (and past the PROXY header): start the handshake; ``on_connect``
        waits for its end."""
        tls = self._tls
        if tls.handshake_done:
            super()._connected()
            self._use_compiled_path()
            return
        self._tls_timer = self.loop.run_after(self._options.ssl_handshake_timeout,
                                                    self._check_handshake)
        try:
            hello = tls.start()  # a client's ClientHello; a server's b""
        except TLSError as exc:
            self._tls_failed(exc)
            return
        if hello:
            self._io.write(hello)
        ring = self._input
        if ring._len and self._state < _FLUSHING:
            # Bytes after the PROXY header: the start of the ClientHello.
            self._tls_received(ring.read(ring._len))

    def _check_handshake(self) -> None:
        self._tls_timer = None
        if not self._tls.handshake_done and self._state < _FLUSHING:
            self._tls_failed(TLSHandshakeTimeout(self._options.ssl_handshake_timeout))

    def _tls_failed(self, error: TLSError) -> None:
        """The session failed: send OpenSSL's alert, tell ``on_error``, and close (the
        stream cannot go on, whatever the hook decided)."""
        if self._state == _CLOSED:
            return
        failures = self.loop.tls_failures
        failures[error.reason] = failures.get(error.reason, 0) + 1
        # Its traceback (and its cause's, the ssl.SSLError) would keep the session's
        # frames, and so OpenSSL's state, alive for as long as a handler keeps the
        # error; OpenSSL's reason and message are in the error itself.
        error.__traceback__ = None
        if error.__cause__ is not None:
            error.__cause__.__traceback__ = None
        alert = self._tls.outgoing()
        if alert:
            self._io.write(alert)
        self._pipe.fail(error)
        if self._state < _FLUSHING:
            self._close_gracefully()

    # -- reading -----------------------------------------------------------------------

    def _tls_received(self, data: bytes | memoryview) -> None:
        """Ciphertext from the peer: decrypt, answer the handshake, frame the plaintext."""
        tls = self._tls
        was_done = tls.handshake_done
        try:
            plain = tls.receive(data)
        except TLSError as exc:
            self._tls_failed(exc)
            return
        out = tls.outgoing()
        if out and self._state != _CLOSED:
            self._io.write(out)
        if not was_done and tls.handshake_done:
            if self._tls_timer is not None:
                self._tls_timer.cancel()
                self._tls_timer = None
            if self._state < _FLUSHING:
                super()._connected()  # on_connect, with the session known
                self._use_compiled_path()
        if plain and self._state < _FLUSHING:
            reply = self._pipe.received(plain)
            if reply is not None:
                self._write(reply)
        if tls.eof and self._state < _FLUSHING:
            self._on_eof()
        elif self._options.frame_timeout is not None and tls.handshake_done:
            self._track_partial_record(bool(plain))

    def _use_compiled_path(self) -> None:
        """The handshake is done: the compiled step (``gevwire._speedups.TLSPath``, when
        built) takes the records from here on; it hands back to the methods of this
        class every case but the steady one.  Not with ``frame_timeout``, whose record
        tracking stays here."""
        tls = self._tls
        if _speedups is None or tls.track_records or self._state >= _FLUSHING:
            return
        path = _speedups.TLSPath(self, self._io, tls, *tls.compiled_parts())
        self._tls_read = path.received
        self._io.attach_tls_path(path)

    def _track_partial_record(self, progress: bool) -> None:
        """``frame_timeout`` for a partial TLS record: the plaintext ring cannot see a
        record trickled a byte at a time (and each byte keeps the peer from looking
        idle), so the time since the record began is kept here, on the TLS timer."""
        if not self._tls.buffered or self._state >= _FLUSHING:
            self._record_since = 0.0
        elif progress or not self._record_since:
            self._record_since = self.loop.now
            if self._tls_timer is None:
                timeout = self._options.frame_timeout
                assert timeout is not None
                self._tls_timer = self.loop.run_after(timeout, self._check_record_deadline)

    def _check_record_deadline(self) -> None:
        self._tls_timer = None
        if self._state >= _FLUSHING or not self._record_since or not self._tls.buffered:
            return
        timeout = self._options.frame_timeout
        assert timeout is not None
        left = self._record_since + timeout - time.monotonic()
        if left > 0 or self._read_paused or self._holds:  # (paused by us: not its fault)
            self._tls_timer = self.loop.run_after(left if left > 0 else timeout,
                                                  self._check_record_deadline)
            return
        self._pipe.fail(FrameTimeout(timeout, self._tls.buffered))

    def _on_eof(self) -> None:
        """The peer's end (close_notify or a bare EOF): replies, our close_notify, close."""
        if self._state < _FLUSHING:
            self._close_gracefully()

    def _tls_eof(self) -> None:
        """The socket's EOF: after close_notify a clean end; without it, still an EOF."""
        if not self._tls.eof:
            log.debug("%r: EOF without close_notify", self)
            self._tls.eof = True  # (its close_notify cannot come now: not waited for)
        if not self._tls.handshake_done:
            self._close_now()  # left during the handshake: nobody to answer
        else:
            self._on_eof()

    # -- writing -----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Encrypt plaintext and write the ciphertext (loop thread only)."""
        if self._state == _CLOSED:
            return
        try:
            cipher = self._tls.send(data)
        except TLSError as exc:
            if self._tls.failed and not self._pipe.stopped:
                self._tls_failed(exc)
            return  # (else closed for writing: nothing more can be sent)
        if cipher:
            self._io.write(cipher)

    def _write_batch(self, data: bytes) -> None:
        """A read's joined replies: encrypted and written now (the plain path defers
        them to the end of the turn; here they are encrypted in one call anyway)."""
        self._write(data)

    def _send_close_notify(self) -> None:
        notify = self._tls.close()
        if notify and self._state != _CLOSED:
            self._io.write(notify)

    # -- closing -----------------------------------------------------------------------

    def _shutdown_write_in_loop(self) -> None:
        """``shutdown_write``: close_notify after everything queued, then FIN."""
        if self._state == _WRITE_SHUTTING:
            self._send_close_notify()
        super()._shutdown_write_in_loop()

    def _close_gracefully(self) -> None:
        """Encrypt what is gathered, add close_notify behind it, then close as a plain
        connection does (its output drained within ``close_timeout``).  With frames in
        flight (a handler that waits), close_notify waits for their replies."""
        if self._state < _FLUSHING:
            gathered = self._pipe.take_pending()
            if gathered is not None:
                self._write(gathered)
            if not self._pipe.in_flight:
                self._send_close_notify()
        super()._close_gracefully()

    def _work_done(self) -> None:
        """The frames a graceful close waited for have ended: close_notify after their
        replies, then close as a plain connection does."""
        if self._state == _FLUSHING:
            self._send_close_notify()
        super()._work_done()

    def _close_now(self) -> None:
        if self._tls_timer is not None:
            self._tls_timer.cancel()
            self._tls_timer = None
        super()._close_now()
        self._tls_read = self._tls_received  # (the compiled step holds OpenSSL's state)
        # After on_close (which may read what was negotiated: it stays readable).
        # Connections are freed by the cyclic GC; OpenSSL's state must not wait for it.
        self._tls.release()

    def _finish_close(self) -> None:
        """Output (close_notify last) is written: wait for the peer's close_notify or
        EOF up to ``ssl_shutdown_timeout``, discarding what it still sends."""
        tls = self._tls
        timeout = self._options.ssl_shutdown_timeout
        if not tls.closed or tls.eof or tls.failed or not timeout:
            super()._finish_close()
            return
        self._start_lingering(timeout)
        self._io.await_close_notify()

    def _shutdown_received(self, data: bytes | memoryview) -> None:
        """While waiting for the peer's close_notify: its records are dropped; the
        close_notify (or a broken record) closes."""
        try:
            self._tls.receive(data)
        except TLSError:
            self._close_now()
            return
        if self._tls.eof:
            self._close_now()
