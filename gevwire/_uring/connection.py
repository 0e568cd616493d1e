"""``UringIO``: a :class:`~gevwire.connection.Connection`'s I/O as io_uring completions
on a :class:`~gevwire._uring.loop.UringLoop` (``UringTLSIO`` for a TLS connection).

Only the I/O is here; framing, dispatch, water marks, idle and frame timers,
half-close and close are the connection's own code, the same on every backend.

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

The loop routes completions to this object (a ``CompletionTarget``), not to the
connection: its RECV's to ``_on_input``, its SEND's to ``_on_output``.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from typing import TYPE_CHECKING

from gevwire._connstate import _CLOSED, _FLUSHING, _LINGERING, _WRITE_SHUTTING
from gevwire._socket_io import SocketIO
from gevwire._sys import EV_READ, EV_WRITE
from gevwire._sys._uring import (
    BYTES_OFFSET,
    CQE_F_MORE,
    MSG_NOSIGNAL,
    OP_SEND,
    SQE_HEAD,
    bytes_address,
)

if TYPE_CHECKING:
    from gevwire._uring.loop import UringLoop
    from gevwire.connection import Connection, TLSConnection

__all__ = ["UringIO", "UringTLSIO"]

log = logging.getLogger("gevwire")

_ECANCELED = errno.ECANCELED
_ENOBUFS = errno.ENOBUFS
_MAX_SEND = 1 << 20  # bytes handed to one SEND from the output ring (counted as unsent)


class UringIO(SocketIO):
    """A connection's I/O by io_uring completions (see the module docstring)."""

    __slots__ = ("_discarded", "_events", "_held", "_recv_armed", "_send_ud", "_sending",
                 "_sent")

    view_reads = True
    loop: UringLoop  # (narrowed: its ring and provided buffers are used directly)

    def __init__(self, conn: Connection, loop: UringLoop, fd: int) -> None:
        super().__init__(conn, loop, fd)
        # The RECV's user_data is the token (as an epoll connection's registration).
        self._token = ud = loop.add_target(self)
        self._send_ud = ud + 1
        # EV_READ: reading is wanted; EV_WRITE: the output is to be drained and the
        # connection told (graceful close, when_sent, shutdown_write).
        self._events = EV_READ
        self._recv_armed = False
        self._sending: bytes | None = None  # the bytes a SEND in flight points into
        self._sent = 0  # of them, bytes already taken by the socket
        # Bytes that arrived while input was paused (the RECV's cancellation takes a turn),
        # fed one completion's worth at a time when reading resumes, as epoll would read.
        # (made by the first such completion: an empty deque is 600 bytes per connection)
        self._held: deque[bytes] | None = None
        # Bytes came after close() was asked for: the peer is still sending, so the
        # close lingers (the RECV takes them from the socket, where peer_still_sending
        # looks).
        self._discarded = False

    # -- the connection's side ---------------------------------------------------------

    def start(self, proxy: bool = False) -> None:
        """Arm the multishot RECV (a PROXY header is read by readiness: not here)."""
        assert not proxy, "PROXY headers are read by ReadinessIO"
        self._arm_recv()

    def set_reading(self, on: bool) -> None:
        events = self._events
        self._set_events(events | EV_READ if on else events & ~EV_READ)

    def unsent(self) -> int:
        """Bytes handed over and not yet sent (the SEND in flight included)."""
        return self._output._len + self._in_flight()

    def queued(self) -> int:
        return self._output._len + self._in_flight()

    def has_unsent(self) -> bool:
        return bool(self._output._len or self._sending is not None)

    def flush(self) -> None:
        self._set_events(self._events | EV_WRITE)

    def flush_for_close(self, gathered: bytes | None) -> None:
        """Closing: cancel the RECV, send what is gathered after what is queued."""
        if gathered is not None:
            self._output.write(gathered)
        self._set_events(EV_WRITE)  # after the write: it starts the SEND

    def peer_still_sending(self) -> bool:
        # (first: it reads what the socket holds, whatever the RECV took)
        return super().peer_still_sending() or self._discarded

    def linger(self) -> None:
        """The RECV's data completions are discarded (a TLS connection's go to its
        ``_shutdown_received``) and its EOF closes."""
        self._held = None
        if not self._recv_armed:
            self._arm_recv()

    def release(self) -> None:
        """Cancel what is in flight (by ``user_data``), then close the fd."""
        ring = self.loop.ring
        self._held = None
        if self._recv_armed:
            ring.cancel(self._token, 0)
        if self._sending is not None:
            ring.cancel(self._send_ud, 0)
        self._close_fd()
        self._output.reset()
        if not self._recv_armed and self._sending is None:
            self._forget()

    # -- reading -----------------------------------------------------------------------

    def _arm_recv(self) -> None:
        self.loop.ring.recv_multishot(self._fd, self.loop.buffers.group, self._token)
        self._recv_armed = True

    def _on_recv(self, res: int, flags: int) -> None:
        """Completion of the multishot RECV."""
        if not flags & CQE_F_MORE:
            self._recv_armed = False
        conn = self._conn
        if res > 0:
            bufs = self.loop.buffers
            bid = flags >> 16
            try:
                if conn._state < _FLUSHING:
                    start = bid * bufs.size
                    view = bufs.view[start: start + res]
                    loop = self.loop
                    loop.bytes_in += res
                    conn._last_active = loop.now
                    if not self._events & EV_READ or self._held:
                        # Paused while this was already received: keep it, frame it
                        # when reading resumes.
                        if self._held is None:
                            self._held = deque()
                        self._held.append(bytes(view))
                    else:
                        # Cut, dispatch and answer (the pipeline), as on epoll; a read
                        # that was one frame returns its reply, sent here.
                        data = conn._pipe.received(view)
                        if data is not None:
                            if self._sending is not None or self._output._len:
                                self.write(data)
                            elif conn._state != _CLOSED:  # write's SEND, inlined
                                self._sending = data
                                self._sent = 0
                                size = len(data)
                                loop.bytes_out += size
                                ring = loop.ring
                                if ring.pending >= ring.sq_entries:
                                    ring.submit()
                                tail = ring.sq_tail
                                SQE_HEAD.pack_into(
                                    ring.sqes, (tail & ring.sq_mask) << 6, OP_SEND, 0,
                                    0, self._fd, 0, id(data) + BYTES_OFFSET, size,
                                    MSG_NOSIGNAL, self._send_ud)
                                ring.sq_tail = (tail + 1) & 0xFFFFFFFF
                                ring.pending += 1
                        elif conn._pipe.stopped:
                            self._discarded = True
                else:
                    self._discarded = True
            finally:
                bufs.put(bid)  # the loop publishes the ring tail once per turn
                if not self._recv_armed:
                    self._recv_ended()
        elif res == 0:
            if conn._state == _LINGERING:
                conn._close_now()  # the peer's EOF ends the lingering close
            elif self._held:  # (not None: it holds bytes)
                self._held.append(b"")  # EOF, after the held bytes
            elif conn._state < _FLUSHING:
                conn._on_eof()
            self._recv_ended()
        else:
            if res != -_ECANCELED and res != -_ENOBUFS and (
                    conn._state < _FLUSHING or conn._state == _LINGERING):
                log.debug("%r: recv failed: %s", conn, errno.errorcode.get(-res, res))
                conn._close_now()
            self._recv_ended()

    def _recv_ended(self) -> None:
        """The multishot RECV is over: re-arm it if reading is wanted, else maybe forget."""
        if self._recv_armed:
            return
        state = self._conn._state
        if (state < _FLUSHING and self._events & EV_READ) or state == _LINGERING:
            self._arm_recv()
        elif state == _CLOSED and self._sending is None:
            self._forget()

    def _feed_held(self) -> None:
        """Reading resumed: what came while it was paused, one completion at a time
        (reading may pause again in between)."""
        held = self._held
        conn = self._conn
        while held and conn._state < _FLUSHING and self._events & EV_READ:
            chunk = held.popleft()
            if not chunk:
                self._held_eof()
                return
            self._held_received(chunk)

    def _held_received(self, chunk: bytes) -> None:
        conn = self._conn
        conn._input.write(chunk)
        conn._pipe.cut_ring()

    def _held_eof(self) -> None:
        self._conn._on_eof()

    # -- writing -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send now, or gather behind the SEND in flight."""
        if type(data) is not bytes:
            data = bytes(data)
        if self._sending is not None or self._output._len:
            conn = self._conn
            inflight = len(self._sending) - self._sent if self._sending is not None else 0
            size = self._output._len + inflight + len(data)
            if size > conn._options.max_write_buffer:
                conn._over_cap(size)  # before the ring grows past the cap
                return
            self._output.write_from(data, 0)  # (a large reply by reference)
            conn._check_high_water()
            return
        if self._conn._state == _CLOSED:
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

    def write_batch(self, data: bytes) -> None:
        """A read's joined replies: sent (or gathered behind the SEND in flight) now."""
        self.write(data)

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
        conn = self._conn
        if res > 0 and conn._state < _FLUSHING and self._sent + res == len(data):
            # The common case, kept short: all of it went out.
            self._sending = None
            conn._last_active = self.loop.now
            if self._output._len:
                self._send_output()
                if conn._read_paused:
                    self._maybe_resume(self._in_flight())
            elif (self._events != EV_READ or conn._read_paused
                  or conn._state == _WRITE_SHUTTING):
                self._drained()
            return
        loop = self.loop
        if res < 0:
            self._sending = None
            loop.bytes_out -= len(data) - self._sent
            if conn._state != _CLOSED:
                if res != -_ECANCELED:
                    log.debug("%r: send failed: %s", conn, errno.errorcode.get(-res, res))
                conn._close_now()
            elif not self._recv_armed:
                self._forget()
            return
        sent = self._sent + res
        if sent < len(data):
            loop.bytes_out -= len(data) - sent  # added back if the rest is resubmitted
        if conn._state == _CLOSED:
            self._sending = None
            if not self._recv_armed:
                self._forget()
            return
        if sent < len(data):  # a short send: the rest, from where it stopped
            self._sent = sent
            loop.bytes_out += len(data) - sent
            loop.ring.send(self._fd, bytes_address(data) + sent, len(data) - sent,
                           self._send_ud)
            if conn._read_paused:
                self._maybe_resume(len(data) - sent)
            elif len(data) - sent > conn._options.write_high_water:
                # The socket refused bytes of a large SEND: the peer is slow, as epoll
                # sees it when a write falls short (reading pauses, the handler hears).
                conn._check_high_water()
            return
        self._sending = None
        conn._last_active = loop.now
        if self._output._len:
            self._send_output()
            if conn._read_paused:
                self._maybe_resume(self._in_flight())
            return
        self._drained()

    def _drained(self) -> None:
        """Everything is sent: no more drain wanted; the connection's part."""
        self._events &= ~EV_WRITE
        self._conn._on_drained()

    def _set_events(self, events: int) -> None:
        """Readiness interest, translated: EV_READ arms / cancels the RECV, EV_WRITE
        starts sending the output ring."""
        old = self._events
        if events == old or self._conn._state == _CLOSED:
            return
        self._events = events
        if events & EV_READ:
            if not old & EV_READ:
                if not self._recv_armed:
                    self._arm_recv()
                if self._held:  # received while paused: frame it next turn
                    self.loop.call_soon(self._feed_held)
        elif old & EV_READ and self._recv_armed:
            self.loop.ring.cancel(self._token, 0)
        if events & EV_WRITE and self._sending is None and self._output._len:
            self._send_output()

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
        conn = self._conn
        if self._output._len + inflight <= conn._options.write_high_water:
            conn._resume_reading()

    # The loop's completion routes (CompletionTarget): the RECV's and the SEND's.
    _on_input = _on_recv
    _on_output = _on_send

    def _forget(self) -> None:
        """No completion can come any more: drop the ``user_data`` routes."""
        self.loop.forget_target(self._token)


class UringTLSIO(UringIO):
    """:class:`UringIO` for a TLS connection: each RECV completion's ciphertext goes
    from its provided buffer into the session's MemoryBIO (the buffer goes back at
    once), is decrypted, and the plaintext handed to the pipeline; writes are
    ciphertext, sent as :class:`UringIO` sends (one SEND in flight, the rest
    gathered)."""

    __slots__ = ()

    view_reads = False  # the pipeline gets plaintext bytes, not views of a buffer
    _conn: TLSConnection

    def _on_recv(self, res: int, flags: int) -> None:
        """Completion of the multishot RECV: ciphertext in."""
        if not flags & CQE_F_MORE:
            self._recv_armed = False
        conn = self._conn
        if res > 0:
            bufs = self.loop.buffers
            bid = flags >> 16
            start = bid * bufs.size
            # The session copies the ciphertext into its MemoryBIO: it gets the view of
            # the provided buffer, which goes back once that is done (no bytes between).
            view = bufs.view[start: start + res]
            try:
                state = conn._state
                if state < _FLUSHING:
                    loop = self.loop
                    loop.bytes_in += res
                    conn._last_active = loop.now
                    if not self._events & EV_READ or self._held:
                        if self._held is None:  # paused: decrypted when reading resumes
                            self._held = deque()
                        self._held.append(bytes(view))
                    else:
                        conn._tls_read(view)
                        if conn._pipe.stopped:  # close() asked: the peer is still sending
                            self._discarded = True
                elif state == _LINGERING and conn._tls.closed:
                    conn._shutdown_received(view)
                else:
                    self._discarded = True
            finally:
                bufs.put(bid)
        elif res == 0:
            if conn._state == _LINGERING:
                conn._close_now()
            elif self._held:
                self._held.append(b"")
            elif conn._state < _FLUSHING:
                conn._tls_eof()
        elif res != -_ECANCELED and res != -_ENOBUFS and (
                conn._state < _FLUSHING or conn._state == _LINGERING):
            log.debug("%r: recv failed: %s", conn, errno.errorcode.get(-res, res))
            conn._close_now()
        if not self._recv_armed:
            self._recv_ended()

    _on_input = _on_recv  # (the loop routes RECV completions to _on_input)

    def _held_received(self, chunk: bytes) -> None:
        self._conn._tls_received(chunk)

    def _held_eof(self) -> None:
        self._conn._tls_eof()


UringIO.tls_io = UringTLSIO
