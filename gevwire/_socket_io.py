"""A connection's I/O on a readiness loop (epoll / kqueue): :class:`ReadinessIO`.

A :class:`~gevwire.connection.Connection` is the same on every backend (its states,
timers, water marks, holds, sends from other threads, the pipeline); what differs is
how its bytes move, and that is one small object per connection, made by the
connection: this module's :class:`ReadinessIO` here, ``UringIO`` (``gevwire._uring``)
on io_uring.  :class:`SocketIO` is what the two share.

Foreign calls per echoed message on the readiness path: one ``read`` (a new ``bytes``,
because the connection's input ring is empty) and one ``write``; ``epoll_wait`` is
shared by every connection that was ready in the turn.  Frames are cut from the read
itself; only an incomplete tail is copied into the connection's input ring.

Output is written first and buffered only for what the socket did not take; the output
ring then drains on ``EV_WRITE``.
"""

from __future__ import annotations

import abc
import errno
import logging
import socket
from typing import TYPE_CHECKING, Any, ClassVar

from gevwire._connstate import _CLOSED, _FLUSHING, _LINGERING
from gevwire._sys import (
    EAGAIN,
    EINTR,
    EV_ERROR,
    EV_HUP,
    EV_RDHUP,
    EV_READ,
    EV_WRITE,
    get_errno,
    peer_closed,
    raw_read,
    raw_readv,
    raw_writev,
    read_bytes,
    write_bytes,
)
from gevwire._sys import (
    close as sys_close,
)
from gevwire._sys import (
    shutdown as sys_shutdown,
)
from gevwire.loop import SPARE_SIZE
from gevwire.pipeline import LARGE_RING
from gevwire.ringbuffer import RingBuffer

if TYPE_CHECKING:
    from gevwire.connection import Connection, TLSConnection
    from gevwire.loop import EventLoop

__all__ = ["READ_MAX", "ReadinessIO", "ReadinessTLSIO", "SocketIO"]

log = logging.getLogger("gevwire")

_EWOULDBLOCK = errno.EWOULDBLOCK
#: Most bytes one ``readv`` puts in a connection's input ring (plus the spare buffer).
READ_MAX = 256 << 10
_READ_EVENTS = EV_READ | EV_ERROR | EV_HUP | EV_RDHUP


class SocketIO(abc.ABC):
    """What every backend's per-connection I/O object holds and does alike.

    The interface a :class:`~gevwire.connection.Connection` uses (loop thread only):
    ``start`` (arm reading), ``set_reading`` (pause / resume), ``write`` /
    ``write_batch`` (send), ``flush`` (drain the output, then call the connection's
    ``_on_drained``), ``flush_for_close``, ``shutdown_write``, ``linger`` (discard what
    the peer still sends until its EOF), ``release`` (stop, close the fd) and the
    counts ``unsent`` / ``queued`` / ``storage``.  The object calls back into its
    connection for what reading and writing change (EOF, errors, drained output).
    """

    __slots__ = ("_conn", "_fd", "_output", "_token", "loop")

    #: Reads reach the pipeline as views of a reused buffer, not ``bytes``.
    view_reads: ClassVar[bool] = False
    #: The variant of this class for a TLS connection (ciphertext in and out).
    tls_io: ClassVar[type[SocketIO]]

    def __init__(self, conn: Connection, loop: EventLoop, fd: int) -> None:
        self._conn = conn
        self.loop = loop
        self._fd = fd
        self._output = RingBuffer(pool=loop.pool)  # what the socket has not taken yet
        self._token = -1

    @property
    def fd(self) -> int:
        """The socket's fd (-1 once released)."""
        return self._fd

    @abc.abstractmethod
    def start(self, proxy: bool = False) -> None:
        """Arm reading (first the PROXY header's reader, with ``proxy``: readiness only)."""

    @abc.abstractmethod
    def set_reading(self, on: bool) -> None:
        """Resume (``on``) or pause reading."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Write now, buffering what the socket does not take (the cap checked first)."""

    @abc.abstractmethod
    def write_batch(self, data: bytes) -> None:
        """A read's joined replies (a readiness backend writes them at the turn's end)."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Drain the output; the connection's ``_on_drained`` runs once it is empty."""

    @abc.abstractmethod
    def flush_for_close(self, gathered: bytes | None) -> None:
        """Closing: stop reading; send what is queued, then ``gathered``, then drain."""

    @abc.abstractmethod
    def linger(self) -> None:
        """Read and discard until the peer's EOF, which closes the connection."""

    def await_close_notify(self) -> None:
        """TLS: read the peer's records for the connection's ``_shutdown_received``
        until its close_notify or EOF (which close the connection)."""
        self.linger()

    def attach_tls_path(self, path: Any) -> None:
        """TLS, the handshake done: the compiled step (``gevwire._speedups.TLSPath``)
        now takes the connection's reads (a completion backend hands them to it through
        ``conn._tls_read``; a readiness backend lets it read the socket too)."""
        return  # (a completion backend: nothing more)

    @abc.abstractmethod
    def release(self) -> None:
        """Stop reading and writing, close the fd, drop unsent output."""

    @abc.abstractmethod
    def unsent(self) -> int:
        """Bytes handed over and not yet written."""

    @abc.abstractmethod
    def has_unsent(self) -> bool:
        """Whether any byte handed over is not yet written."""

    def queued(self) -> int:
        """Unsent bytes the water marks count (the output ring, and a completion
        backend's send in flight)."""
        return self._output._len

    def storage(self) -> int:
        """Bytes of storage the output ring holds (the memory budget's count)."""
        return self._output._cap

    def peer_closed(self) -> bool:
        """Whether the peer has gone (asked while nothing is read: the memory budget)."""
        return peer_closed(self._fd)

    def shutdown_write(self) -> None:
        """Send FIN (errors logged: the peer may be gone already)."""
        try:
            sys_shutdown(self._fd, socket.SHUT_WR)
        except OSError as exc:
            log.debug("%r: shutdown failed: %s", self._conn, exc)

    def peer_still_sending(self) -> bool:
        """Discard what the peer has sent; True if it is still sending: bytes came (or
        the connection already lingers) and neither EOF nor an error did."""
        loop = self.loop
        got = self._conn._state == _LINGERING
        for _ in range(16):  # bounded per event: a fast sender cannot hold the loop
            n = raw_read(self._fd, loop.spare_ptr, SPARE_SIZE)
            if n > 0:
                got = True
                continue
            if n == 0:
                return False
            err = get_errno()
            return got and (err == EAGAIN or err == EINTR or err == _EWOULDBLOCK)
        return True

    def _close_fd(self) -> None:
        """``close(2)``, errors logged: the one place every backend closes a socket."""
        fd, self._fd = self._fd, -1
        try:
            sys_close(fd)
        except OSError as exc:
            log.debug("close(%d) failed: %s", fd, exc)


class ReadinessIO(SocketIO):
    """A connection's I/O on a readiness loop (see the module docstring)."""

    __slots__ = ("_deferred", "_events")

    def __init__(self, conn: Connection, loop: EventLoop, fd: int) -> None:
        super().__init__(conn, loop, fd)
        # A read's joined replies, written when the loop turn's events are handled (see
        # write_batch); None when there are none.
        self._deferred: bytes | None = None
        self._events = EV_READ

    # -- the connection's side ---------------------------------------------------------

    def start(self, proxy: bool = False) -> None:
        self._token = self.loop.register(
            self._fd, self._on_proxy_events if proxy else self._on_events, EV_READ)

    def set_reading(self, on: bool) -> None:
        events = self._events
        self._set_events(events | EV_READ if on else events & ~EV_READ)

    def unsent(self) -> int:
        """Bytes handed over and not yet written (buffered or deferred)."""
        deferred = self._deferred
        return self._output._len + (len(deferred) if deferred is not None else 0)

    def has_unsent(self) -> bool:
        return bool(self._output._len or self._deferred is not None)

    def flush(self) -> None:
        self._set_events(self._events | EV_WRITE)

    def flush_for_close(self, gathered: bytes | None) -> None:
        """Closing: stop reading; write what is deferred, then ``gathered``, then drain."""
        if self._deferred is not None:
            self._output.write(self._deferred)  # before what is gathered: it came first
            self._deferred = None
        if gathered is not None:
            self._output.write(gathered)
        self._set_events(EV_WRITE)

    def linger(self) -> None:
        self.loop.replace_callback(self._token, self._on_linger_events)
        self._set_events(EV_READ)

    def release(self) -> None:
        """Stop watching the fd, close it and drop unsent output."""
        try:
            self.loop.unregister(self._fd, self._token)
        except OSError as exc:
            log.debug("%r: unregister failed: %s", self._conn, exc)
        self._close_fd()
        self._output.reset()
        self._deferred = None

    # -- reading -----------------------------------------------------------------------

    def _on_events(self, events: int) -> None:
        # The echo fast path is inlined here and in FramePipeline.received: each Python
        # call level costs ~0.1 µs, a sixth of a foreign call (measured in benchmarks/).
        conn = self._conn
        if events & _READ_EVENTS:
            if conn._state >= _FLUSHING:
                if events & (EV_HUP | EV_ERROR):  # closing, and the peer is gone too
                    conn._close_now()
                    return
            elif conn._input._len == 0:
                loop = self.loop
                try:
                    # Into a new bytes (os.read): cheaper than ctypes plus a copy out of
                    # a buffer, and the decoder may keep slices of it (see _sys).
                    received = read_bytes(self._fd, SPARE_SIZE)
                except OSError as exc:
                    self._read_error(exc)
                    return
                n = len(received)
                if n:
                    loop.bytes_in += n
                    conn._last_active = loop.now
                    # Cut, dispatch and answer (the pipeline); a read that was one frame
                    # returns its reply, written here without another call level.
                    data = conn._pipe.received(received)
                    if data is not None:
                        if self._output._len or self._deferred is not None:
                            self.write(data)
                        elif conn._state != _CLOSED:
                            try:
                                written = write_bytes(self._fd, data)
                            except OSError as exc:
                                self._write_error(data, exc)
                            else:
                                if written == len(data):
                                    loop.bytes_out += written
                                else:
                                    self._write_rest(data, written)
                else:
                    conn._on_eof()
                    return
            # A partial frame is buffered: readv into the ring's free space + spare
            # (not when paused in this turn, after epoll reported the fd).
            elif not conn._holds and self._fill_ring() > 0:
                conn._pipe.cut_ring()
        if events & EV_WRITE and conn._state != _CLOSED:
            self._handle_write()

    def _on_proxy_events(self, events: int) -> None:
        """Reading the PROXY header (its own callback: the hot path pays nothing)."""
        conn = self._conn
        if events & _READ_EVENTS and conn._state < _FLUSHING and conn._proxy is not None:
            if self._fill_ring() <= 0:
                return
            if conn._proxy_header_read():
                self.loop.replace_callback(self._token, self._on_events)
                conn._connected()
                if conn._input._len and conn._state < _FLUSHING:
                    conn._pipe.cut_ring()
        elif events & (EV_HUP | EV_ERROR) and conn._state >= _FLUSHING:
            conn._close_now()
            return
        if events & EV_WRITE and conn._state != _CLOSED:
            self._handle_write()

    def _fill_ring(self) -> int:
        """``readv`` into the input ring (plus spare); returns bytes read, or <= 0 after
        handling EOF or an error."""
        conn = self._conn
        ring = conn._input
        loop = self.loop
        a1, l1, a2, l2 = ring.write_regions()
        spare = SPARE_SIZE
        if l1 + l2 > READ_MAX:  # a ring sized for a large frame: take it in steps, so
            if l1 >= READ_MAX:  # one turn's reads stay bounded (the memory budget's
                l1, l2 = READ_MAX, 0  # checks run between turns) and other
            else:  # connections are not kept waiting
                l2 = READ_MAX - l1
            spare = 0  # (the ring has room past the step: no bytes to copy over)
        iov = loop.iovecs
        iov.formats[3].pack_into(iov.buffer, 0, a1, l1, a2, l2, loop.spare_address, spare)
        n = raw_readv(self._fd, iov.ptr, 3)
        if n > 0:
            loop.bytes_in += n
            conn._last_active = loop.now
            room = l1 + l2
            if n <= room:
                ring.commit(n)
            else:
                ring.commit(room)
                if ring._cap > LARGE_RING:
                    # Sized by a frame's header, and that frame is whole now: cut it
                    # before the bytes after it go in (else the ring would double,
                    # copying the frame, for them).  Handlers do not read: the spare
                    # buffer is not reused meanwhile.
                    conn._pipe.cut_ring()
                ring.write(loop.spare_view[: n - room])
        elif n == 0:
            conn._on_eof()
        else:
            err = get_errno()
            if err != EAGAIN and err != EINTR and err != _EWOULDBLOCK:
                log.debug("%r: read failed: %s", conn, errno.errorcode.get(err, err))
                conn._close_now()
        return int(n)

    def _read_error(self, exc: OSError) -> None:
        """A ``read_bytes`` that raised: nothing to read yet, or the connection is gone."""
        err = exc.errno
        if err == EAGAIN or err == EINTR or err == _EWOULDBLOCK:
            return
        log.debug("%r: read failed: %s", self._conn, exc)
        self._conn._close_now()

    def _on_linger_events(self, events: int) -> None:
        conn = self._conn
        if conn._state == _CLOSED:
            return
        if events & (EV_HUP | EV_ERROR) or not self.peer_still_sending():
            conn._close_now()

    # -- writing -----------------------------------------------------------------------

    def write_batch(self, data: bytes) -> None:
        """Write a read's joined replies (the pipeline's ``write_batch``)."""
        if self._output._len or self._deferred is not None:
            if self._conn._state != _CLOSED:
                self.write(data)
        elif self._conn._state != _CLOSED:
            # Written once the turn's events are handled: the replies of every
            # connection served in a turn then go out back to back, and the peers
            # they wake find the next ones already written (redis-benchmark -P 16:
            # 0.84 -> 0.28 us of kernel time per request, measured).
            self._deferred = data
            self.loop.after_events.append(self._write_deferred)

    def _write_deferred(self) -> None:
        """Write the replies write_batch deferred to the end of the turn."""
        data = self._deferred
        if data is not None:
            self._deferred = None
            if self._conn._state == _CLOSED:
                return
            if self._output._len:  # (not expected: a write flushes _deferred first)
                self.write(data)
                return
            # write, inlined: one Python call less per read.
            try:
                n = write_bytes(self._fd, data)
            except OSError as exc:
                self._write_error(data, exc)
                return
            if n == len(data):
                self.loop.bytes_out += n
            else:
                self._write_rest(data, n)

    def write(self, data: bytes) -> None:
        """Write now, buffering what the socket does not take."""
        if self._deferred is not None:
            self._write_deferred()  # first: bytes go out in the order they were sent
            if self._conn._state == _CLOSED:
                return
        output = self._output
        if output._len:
            conn = self._conn
            if output._len + len(data) > conn._options.max_write_buffer:
                conn._over_cap(output._len + len(data))  # before the ring grows past it
                return
            output.write(data)
            conn._check_high_water()
            return
        try:
            n = write_bytes(self._fd, data)
        except OSError as exc:
            self._write_error(data, exc)
            return
        if n == len(data):
            self.loop.bytes_out += n
        else:
            self._write_rest(data, n)

    def _write_error(self, data: bytes, exc: OSError) -> None:
        """A ``write_bytes`` of ``data`` that raised: buffer it all, or close."""
        err = exc.errno
        if err != EAGAIN and err != EINTR and err != _EWOULDBLOCK:
            log.debug("%r: write failed: %s", self._conn, exc)
            self._conn._close_now()
            return
        self._write_rest(data, 0)

    def _write_rest(self, data: bytes, n: int) -> None:
        """Buffer what a write of ``data`` did not take (``n`` of its bytes went out)."""
        self.loop.bytes_out += n
        conn = self._conn
        if self._output._len + len(data) - n > conn._options.max_write_buffer:
            conn._over_cap(self._output._len + len(data) - n)
            return
        self._output.write_from(data, n)  # (a large rest by reference)
        self._set_events(self._events | EV_WRITE)
        conn._check_high_water()

    def _handle_write(self) -> None:
        output = self._output
        conn = self._conn
        if output._len:
            a1, l1, a2, l2 = output.read_regions()
            iov = self.loop.iovecs
            if l2:
                iov.formats[2].pack_into(iov.buffer, 0, a1, l1, a2, l2)
                n = raw_writev(self._fd, iov.ptr, 2)
            else:
                iov.formats[1].pack_into(iov.buffer, 0, a1, l1)
                n = raw_writev(self._fd, iov.ptr, 1)
            if n < 0:
                err = get_errno()
                if err == EAGAIN or err == EINTR or err == _EWOULDBLOCK:
                    return
                log.debug("%r: writev failed: %s", conn, errno.errorcode.get(err, err))
                conn._close_now()
                return
            output.retrieve(n)
            self.loop.bytes_out += n
            conn._last_active = self.loop.now
            if output._len:
                if conn._read_paused and output._len <= conn._options.write_low_water:
                    conn._resume_reading()
                return
        # Drained: stop watching writability (reading back in the same change when
        # backpressure paused it), then the connection's part.
        events = self._events & ~EV_WRITE
        if conn._read_paused and conn._state < _FLUSHING and not conn._holds:
            events |= EV_READ
        self._set_events(events)
        conn._on_drained()

    def _set_events(self, events: int) -> None:
        if events != self._events and self._conn._state != _CLOSED:
            self._events = events
            self.loop.modify(self._fd, self._token, events)


class ReadinessTLSIO(ReadinessIO):
    """:class:`ReadinessIO` for a TLS connection: each read is ciphertext, handed to the
    connection's session (never the ``readv``-into-the-ring path: the input ring holds
    plaintext); writes are ciphertext already."""

    __slots__ = ()

    _conn: TLSConnection

    def _on_events(self, events: int) -> None:
        conn = self._conn
        if events & _READ_EVENTS:
            if conn._state >= _FLUSHING:
                if events & (EV_HUP | EV_ERROR):  # closing, and the peer is gone too
                    conn._close_now()
                    return
            elif not conn._holds:
                loop = self.loop
                try:
                    received = read_bytes(self._fd, SPARE_SIZE)
                except OSError as exc:
                    self._read_error(exc)
                    return
                if received:
                    loop.bytes_in += len(received)
                    conn._last_active = loop.now
                    conn._tls_read(received)
                else:
                    conn._tls_eof()
                    return
        if events & EV_WRITE and conn._state != _CLOSED:
            self._handle_write()

    def attach_tls_path(self, path: Any) -> None:
        """Read events go to the compiled step, which reads into the loop's spare
        buffer and writes records itself (this class's ``_on_events`` serves the rest:
        it hands them back)."""
        path.read_into(self.loop.spare)
        self.loop.replace_callback(self._token, path.on_events)

    def await_close_notify(self) -> None:
        self.loop.replace_callback(self._token, self._on_shutdown_events)
        self._set_events(EV_READ)

    def _on_shutdown_events(self, events: int) -> None:
        conn = self._conn
        if conn._state == _CLOSED:
            return
        try:
            data = read_bytes(self._fd, SPARE_SIZE)
        except OSError as exc:
            err = exc.errno
            if err != EAGAIN and err != EINTR and err != _EWOULDBLOCK:
                conn._close_now()
            return
        if not data:
            conn._close_now()
            return
        conn._shutdown_received(data)


ReadinessIO.tls_io = ReadinessTLSIO
