"""``UringConnection``: a :class:`~gevwire.connection.Connection` whose I/O is io_uring
completions on a :class:`~gevwire._uring.loop.UringLoop`.

Only the I/O differs; framing, dispatch, output buffering, water marks, idle and frame
timers, half-close and close are :class:`Connection`'s own code.

* Input: one multishot RECV per connection into the loop's provided-buffer ring.  A
  completion names the buffer that holds the bytes; frames are cut from it as the epoll
  path cuts them from the loop's spare buffer (only an incomplete tail is copied into
  the connection's input ring), then the buffer goes back to the kernel with two stores
  into shared memory.  Pausing input (high water mark, closing) cancels the RECV; resuming
  arms a new one.  A multishot RECV that ends by itself (``ENOBUFS`` when every buffer
  was in use, or a kernel limit) is re-armed.
* Output: one SEND in flight per connection, pointing at an immutable ``bytes`` object
  kept referenced until its completion.  Replies produced while it is in flight gather in
  the output ring and leave in one SEND after it.  A short send is resubmitted for the
  rest.
* Foreign calls per message: none.  The loop's single ``io_uring_enter`` per turn
  submits every SEND and re-arm and reaps every completion.
* Close: the RECV (and a SEND in flight, when aborting) is cancelled by ``user_data``,
  then ``close(2)``.  The in-flight requests keep the socket itself open until they
  end; their completions still reach this object (its ``user_data`` is never reused),
  which recycles their buffers and then forgets its ``user_data``.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from typing import TYPE_CHECKING

from gevwire._sys import EV_READ, EV_WRITE
from gevwire._sys._uring import (
    BYTES_OFFSET,
    CQE_F_MORE,
    MSG_NOSIGNAL,
    OP_SEND,
    SQE_HEAD,
    bytes_address,
)
from gevwire.connection import (
    _CLOSED,
    _FLUSHING,
    _LINGERING,
    _WRITE_SHUTTING,
    Connection,
    _TLSTransport,
)
from gevwire.errors import TLSError, WriteBufferFull

if TYPE_CHECKING:

    from gevwire._uring.loop import UringLoop

__all__ = ["UringConnection", "UringTLSConnection"]

log = logging.getLogger("gevwire")

_ECANCELED = errno.ECANCELED
_ENOBUFS = errno.ENOBUFS
_MAX_SEND = 1 << 20  # bytes handed to one SEND from the output ring (counted as unsent)


class UringConnection(Connection):
    """A connection served by io_uring completions (see the module docstring)."""

    __slots__ = ("_discarded", "_held", "_recv_armed", "_send_ud", "_sending", "_sent")

    _view_reads = True
    loop: UringLoop  # (narrowed: its ring and provided buffers are used directly)

    def _init_io(self) -> None:
        """The requests' state: RECV and SEND ``user_data``, the SEND in flight."""
        loop = self.loop
        # The RECV's user_data is the token (as an epoll connection's registration).
        self._token = ud = loop.add_target(self)
        self._send_ud = ud + 1
        self._recv_armed = False
        self._sending: bytes | None = None  # the bytes a SEND in flight points into
        self._sent = 0  # of them, bytes already taken by the socket
        # Bytes that arrived while input was paused (the RECV's cancellation takes a turn),
        # fed one completion's worth at a time when reading resumes, as epoll would read.
        # (made by the first such completion: an empty deque is 600 bytes per connection)
        self._held: deque[bytes] | None = None
        # Bytes came after close() was asked for: the peer is still sending, so the
        # close lingers (the RECV takes them from the socket, where _linger_read looks).
        self._discarded = False

    @property
    def write_buffer_length(self) -> int:
        """Bytes waiting to be written to the socket (in flight included)."""
        inflight = self._in_flight()
        return self._output._len + sum(len(d) for d in self._pipe.pending) + inflight

    # -- loop side ---------------------------------------------------------------------

    def start(self) -> None:
        """Arm the RECV and call ``on_connect`` (loop thread only)."""
        loop = self.loop
        self._last_active = loop.now
        if self._options.idle_timeout:
            self._idle_timer = loop.run_after(self._options.idle_timeout, self._check_idle)
        self.loop.ring.recv_multishot(self._fd, self.loop.buffers.group, self._token)
        self._recv_armed = True
        self._connected()

    def _on_recv(self, res: int, flags: int) -> None:
        """Completion of the multishot RECV."""
        if not flags & CQE_F_MORE:
            self._recv_armed = False
        if res > 0:
            bufs = self.loop.buffers
            bid = flags >> 16
            try:
                if self._state < _FLUSHING:
                    start = bid * bufs.size
                    view = bufs.view[start: start + res]
                    loop = self.loop
                    loop.bytes_in += res
                    self._last_active = loop.now
                    if not self._events & EV_READ or self._held:
                        # Paused while this was already received: keep it, frame it
                        # when reading resumes.
                        if self._held is None:
                            self._held = deque()
                        self._held.append(bytes(view))
                    else:
                        # Cut, dispatch and answer (the pipeline), as on epoll; a read
                        # that was one frame returns its reply, sent here.
                        data = self._pipe.received(view)
                        if data is not None:
                            if self._sending is not None or self._output._len:
                                self._write(data)
                            elif self._state != _CLOSED:  # _write's SEND, inlined
                                self._sending = data
                                self._sent = 0
                                size = len(data)
                                loop.bytes_out += size
                                ring = self.loop.ring
                                if ring.pending >= ring.sq_entries:
                                    ring.submit()
                                tail = ring.sq_tail
                                SQE_HEAD.pack_into(
                                    ring.sqes, (tail & ring.sq_mask) << 6, OP_SEND, 0,
                                    0, self._fd, 0, id(data) + BYTES_OFFSET, size,
                                    MSG_NOSIGNAL, self._send_ud)
                                ring.sq_tail = (tail + 1) & 0xFFFFFFFF
                                ring.pending += 1
                        elif self._pipe.stopped:
                            self._discarded = True
                else:
                    self._discarded = True
            finally:
                bufs.put(bid)  # the loop publishes the ring tail once per turn
                if not self._recv_armed:
                    self._recv_ended()
        elif res == 0:
            if self._state == _LINGERING:
                self._close_now()  # the peer's EOF ends the lingering close
            elif self._held:  # (not None: it holds bytes)
                self._held.append(b"")  # EOF, after the held bytes
            elif self._state < _FLUSHING:
                self._on_eof()
            self._recv_ended()
        else:
            if res != -_ECANCELED and res != -_ENOBUFS and (
                    self._state < _FLUSHING or self._state == _LINGERING):
                log.debug("%r: recv failed: %s", self, errno.errorcode.get(-res, res))
                self._close_now()
            self._recv_ended()

    def _recv_ended(self) -> None:
        """The multishot RECV is over: re-arm it if reading is wanted, else maybe forget."""
        if self._recv_armed:
            return
        if ((self._state < _FLUSHING and self._events & EV_READ)
                or self._state == _LINGERING):
            self.loop.ring.recv_multishot(self._fd, self.loop.buffers.group, self._token)
            self._recv_armed = True
        elif self._state == _CLOSED and self._sending is None:
            self._forget()

    def _write(self, data: bytes) -> None:
        """Send now, or gather behind the SEND in flight (loop thread only)."""
        if type(data) is not bytes:
            data = bytes(data)
        if self._sending is not None or self._output._len:
            inflight = len(self._sending) - self._sent if self._sending is not None else 0
            size = self._output._len + inflight + len(data)
            if size > self._options.max_write_buffer:
                self._over_cap(size)  # before the ring grows past the cap
                return
            self._output.write_from(data, 0)  # (a large reply by reference)
            self._check_high_water()
            return
        if self._state == _CLOSED:
            return
        self._sending = data
        self._sent = 0
        self.loop.bytes_out += len(data)  # counted when submitted; a failure takes it back
        # Ring.send inlined (one Python call level less per message).
        ring = self.loop.ring
        if ring.pending >= ring.sq_entries:
            ring.submit()
        tail = ring.sq_tail
        SQE_HEAD.pack_into(ring.sqes, (tail & ring.sq_mask) << 6, OP_SEND, 0, 0, self._fd, 0,
                           id(data) + BYTES_OFFSET, len(data), MSG_NOSIGNAL, self._send_ud)
        ring.sq_tail = (tail + 1) & 0xFFFFFFFF
        ring.pending += 1

    def _write_batch(self, data: bytes) -> None:
        """A read's joined replies: sent (or gathered behind the SEND in flight) now."""
        self._write(data)

    def _send_output(self) -> None:
        """Start a SEND of (up to 1 MiB of) the output ring, or of all of a reply the
        ring held by reference, from the reply itself."""
        output = self._output
        held = output.take_held()
        if held is not None:
            data, start = held
            self._sending = data
            self._sent = start
            self.loop.bytes_out += len(data) - start
            self.loop.ring.send(self._fd, bytes_address(data) + start, len(data) - start,
                                self._send_ud)
            return
        data = output.read(min(output._len, _MAX_SEND))
        self._sending = data
        self._sent = 0
        self.loop.bytes_out += len(data)
        self.loop.ring.send(self._fd, bytes_address(data), len(data), self._send_ud)

    def _on_send(self, res: int, flags: int) -> None:
        """Completion of the SEND in flight."""
        data = self._sending
        if data is None:
            return
        if res > 0 and self._state < _FLUSHING and self._sent + res == len(data):
            # The common case, kept short: all of it went out.
            self._sending = None
            self._last_active = self.loop.now
            if self._output._len:
                self._send_output()
                if self._read_paused:
                    self._maybe_resume(self._in_flight())
            elif (self._events != EV_READ or self._read_paused
                  or self._state == _WRITE_SHUTTING):
                self._on_drained()
            return
        loop = self.loop
        if res < 0:
            self._sending = None
            loop.bytes_out -= len(data) - self._sent
            if self._state != _CLOSED:
                if res != -_ECANCELED:
                    log.debug("%r: send failed: %s", self, errno.errorcode.get(-res, res))
                self._close_now()
            elif not self._recv_armed:
                self._forget()
            return
        sent = self._sent + res
        if sent < len(data):
            loop.bytes_out -= len(data) - sent  # added back if the rest is resubmitted
        if self._state == _CLOSED:
            self._sending = None
            if not self._recv_armed:
                self._forget()
            return
        if sent < len(data):  # a short send: the rest, from where it stopped
            self._sent = sent
            loop.bytes_out += len(data) - sent
            self.loop.ring.send(self._fd, bytes_address(data) + sent, len(data) - sent,
                            self._send_ud)
            if self._read_paused:
                self._maybe_resume(len(data) - sent)
            elif len(data) - sent > self._options.write_high_water:
                # The socket refused bytes of a large SEND: the peer is slow, as epoll
                # sees it when a write falls short (reading pauses, the handler hears).
                self._check_high_water()
            return
        self._sending = None
        self._last_active = loop.now
        output = self._output
        if output._len:
            self._send_output()
            if self._read_paused:
                self._maybe_resume(self._in_flight())
            return
        self._on_drained()

    def _set_events(self, events: int) -> None:
        """Readiness interest, translated: EV_READ arms / cancels the RECV, EV_WRITE
        starts sending the output ring."""
        old = self._events
        if events == old or self._state == _CLOSED:
            return
        self._events = events
        if events & EV_READ:
            if not old & EV_READ:
                if not self._recv_armed:
                    self.loop.ring.recv_multishot(self._fd, self.loop.buffers.group, self._token)
                    self._recv_armed = True
                if self._held:  # received while paused: frame it next turn
                    self.loop.call_soon(self._feed_held)
        elif old & EV_READ and self._recv_armed:
            self.loop.ring.cancel(self._token, 0)
        if events & EV_WRITE and self._sending is None and self._output._len:
            self._send_output()

    def _feed_held(self) -> None:
        held = self._held
        while held and self._state < _FLUSHING and self._events & EV_READ:
            chunk = held.popleft()
            if not chunk:
                self._on_eof()
                return
            self._input.write(chunk)
            self._pipe.cut_ring()

    def _check_high_water(self) -> None:
        inflight = len(self._sending) - self._sent if self._sending is not None else 0
        size = self._output._len + inflight
        options = self._options
        if size > options.max_write_buffer:
            self._pipe.fail(WriteBufferFull(
                f"{size} unsent bytes exceed max_write_buffer={options.max_write_buffer}"
            ), abort=True)
        elif size > options.write_high_water and not self._read_paused:
            self._pause_for_output()

    def _in_flight(self) -> int:
        """Bytes of the SEND in flight not yet sent."""
        sending = self._sending
        return len(sending) - self._sent if sending is not None else 0

    def _maybe_resume(self, inflight: int) -> None:
        """After a SEND completion while input is paused: resume once unsent output is
        back under the high water mark (not only under the low one).

        epoll pauses only once the socket refuses bytes.  Here a SEND in flight hides
        whether it will, so a pause may begin while the socket still has room; each
        completion shows the socket took bytes, and undoes such a pause.  With the
        socket full no completion comes, and the pause holds (bounded: high water plus
        one completion's reply)."""
        if self._output._len + inflight <= self._options.write_high_water:
            self._resume_reading()

    def _finish_close(self) -> None:
        """As :meth:`Connection._finish_close`; while lingering, the RECV's data
        completions are discarded and its EOF closes."""
        if not (self._linger_read() or self._discarded) or not self._options.linger_timeout:
            self._close_now()
            return
        self._state = _LINGERING
        self._input.reset()
        self._held = None
        self._do_shutdown_write()  # (again, if shutdown_write came first: harmless)
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = self.loop.run_after(self._options.linger_timeout, self._close_now)
        if not self._recv_armed:
            self.loop.ring.recv_multishot(self._fd, self.loop.buffers.group, self._token)
            self._recv_armed = True

    def _has_unsent_bytes(self) -> bool:
        return bool(self._output._len or self._pipe.pending or self._sending is not None)

    def _has_unsent(self) -> bool:
        return bool(self._output._len or self._pipe.pending or self._sending is not None
                    or self._pipe.in_flight)

    def _release_fd(self, fd: int) -> None:
        """Cancel what is in flight (by ``user_data``), then close the fd."""
        ring = self.loop.ring
        self._held = None
        if self._recv_armed:
            ring.cancel(self._token, 0)
        if self._sending is not None:
            ring.cancel(self._send_ud, 0)
        self._close_fd(fd)
        if not self._recv_armed and self._sending is None:
            self._forget()

    # The loop's completion routes (CompletionTarget): the RECV's and the SEND's.
    _on_input = _on_recv
    _on_output = _on_send

    def _forget(self) -> None:
        """No completion can come any more: drop the ``user_data`` routes."""
        self.loop.forget_target(self._token)


class UringTLSConnection(_TLSTransport, UringConnection):
    """A TLS connection served by io_uring completions: each RECV completion's
    ciphertext goes from its provided buffer into the session's MemoryBIO (the buffer
    goes back at once), is decrypted, and the plaintext handed to the pipeline; replies
    are encrypted, then sent as :class:`UringConnection` sends (one SEND in flight,
    the rest gathered).  Limits count as on epoll (see
    :class:`~gevwire.connection.TLSConnection`)."""

    __slots__ = ("_record_since", "_tls", "_tls_timer")

    _view_reads = False  # the pipeline gets plaintext bytes, not views of a buffer
    _send_cipher = UringConnection._write  # (the mixin's super() call, bound once)

    def _on_recv(self, res: int, flags: int) -> None:
        """Completion of the multishot RECV: ciphertext in."""
        if not flags & CQE_F_MORE:
            self._recv_armed = False
        if res > 0:
            bufs = self.loop.buffers
            bid = flags >> 16
            start = bid * bufs.size
            # The session copies the ciphertext into its MemoryBIO: it gets the view of
            # the provided buffer, which goes back once that is done (no bytes between).
            view = bufs.view[start: start + res]
            try:
                state = self._state
                if state < _FLUSHING:
                    loop = self.loop
                    loop.bytes_in += res
                    self._last_active = loop.now
                    if not self._events & EV_READ or self._held:
                        if self._held is None:  # paused: decrypted when reading resumes
                            self._held = deque()
                        self._held.append(bytes(view))
                    else:
                        self._tls_received(view)
                        if self._pipe.stopped:  # close() asked: the peer is still sending
                            self._discarded = True
                elif state == _LINGERING and self._tls.closed:
                    self._shutdown_received(view)
                else:
                    self._discarded = True
            finally:
                bufs.put(bid)
        elif res == 0:
            if self._state == _LINGERING:
                self._close_now()
            elif self._held:
                self._held.append(b"")
            elif self._state < _FLUSHING:
                self._tls_eof()
        elif res != -_ECANCELED and res != -_ENOBUFS and (
                self._state < _FLUSHING or self._state == _LINGERING):
            log.debug("%r: recv failed: %s", self, errno.errorcode.get(-res, res))
            self._close_now()
        if not self._recv_armed:
            self._recv_ended()

    _on_input = _on_recv  # (the loop routes RECV completions to _on_input)

    def _feed_held(self) -> None:
        held = self._held
        while held and self._state < _FLUSHING and self._events & EV_READ:
            chunk = held.popleft()
            if not chunk:
                self._tls_eof()
                return
            self._tls_received(chunk)

    def _finish_close(self) -> None:
        """Our close_notify is written: wait up to ``ssl_shutdown_timeout`` for the
        peer's (or its EOF), as the epoll TLSConnection does, on the RECV."""
        tls = self._tls
        timeout = self._options.ssl_shutdown_timeout
        if not tls.closed or tls.eof or tls.failed or not timeout:
            UringConnection._finish_close(self)
            return
        self._state = _LINGERING
        self._input.reset()
        self._held = None
        self._do_shutdown_write()
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = self.loop.run_after(timeout, self._close_now)
        if not self._recv_armed:
            self.loop.ring.recv_multishot(self._fd, self.loop.buffers.group, self._token)
            self._recv_armed = True

    def _shutdown_received(self, data: bytes | memoryview) -> None:
        """While waiting for the peer's close_notify: its records are dropped."""
        try:
            self._tls.receive(data)
        except TLSError:
            self._close_now()
            return
        if self._tls.eof:
            self._close_now()
