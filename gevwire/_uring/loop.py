"""``UringLoop``: an :class:`~gevwire.loop.EventLoop` driven by io_uring completions.

Connections and listeners of this loop submit operations (multishot RECV into the
loop's provided-buffer ring, SEND, multishot ACCEPT, cancellations) and get their
completions back as ``callback(res, flags)``, routed by ``user_data``.  Every loop turn
makes one ``io_uring_enter`` that submits all operations queued during the previous turn
and waits for completions (or for the next timer, through ``IORING_ENTER_EXT_ARG``).

The readiness API of :class:`EventLoop` (``register`` / ``modify`` / ``unregister``)
still works: its epoll instance (which also holds the cross-thread waker) is watched by
a one-shot ``POLL_ADD`` that is re-armed after each time it fires, so ordinary
:class:`~gevwire.connection.Connection` objects (outbound ``Server.connect``, PROXY
protocol connections) and user fds run on this loop unchanged; a turn without readiness
events costs them nothing.

``user_data`` values are never reused for another connection: a completion that was
already queued when a connection closed (its fd number perhaps already given to a new
connection by the kernel) is routed to the closed connection's callback, which only
recycles its buffer.  Requests hold a reference to their file, so ``close(2)`` on an fd
with a request in flight only frees the number; the socket goes when the request ends.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from typing import Protocol

from gevwire._sys._epoll import EpollPoller
from gevwire._sys._uring import BufferRing, Ring, UringUnavailable, availability
from gevwire.loop import _WAKER_TOKEN, EventLoop

__all__ = ["UringLoop", "uring_available"]

log = logging.getLogger("gevwire")

_EPOLL_UD = 1  # user_data of the POLL_ADD watching the embedded epoll fd
_FIRST_UD = 16  # 0 .. 15 are reserved: 0 means "ignore this completion"
_POLLIN = 0x001
_BENIGN = frozenset({errno.EINTR, errno.ETIME, errno.EBUSY, errno.EAGAIN})


class CompletionTarget(Protocol):
    """What owns a pair of ``user_data`` values (see :meth:`UringLoop.add_target`).

    The loop calls a method of the target rather than a stored callback: a bound
    method per registration would cost 64 bytes per connection, and so would a second
    dictionary entry for its second ``user_data``.
    """

    def _on_input(self, res: int, flags: int) -> None:
        """A completion of the even ``user_data`` (RECV, ACCEPT)."""

    def _on_output(self, res: int, flags: int) -> None:
        """A completion of the odd ``user_data`` (SEND)."""


def uring_available() -> tuple[bool, str]:
    """``(True, "")`` when :class:`UringLoop` can run here, else ``(False, reason)``."""
    return availability()


class UringLoop(EventLoop):
    """A completion-based reactor loop with :class:`EventLoop`'s public surface.

    ``buffers`` x ``buffer_size`` (4 MiB by default, touched as used) is the provided-buffer
    ring every RECV of the loop fills: 16 KiB buffers take 8 pipelined 1 KiB frames in one
    completion (4 KiB ones cost 40 % more CPU per message there, measured), and a turn in
    which more than ``buffers`` connections receive ends some multishot RECVs with
    ``ENOBUFS``, which re-arms them (their bytes wait in the socket).

    :meth:`add_target` hands out a pair of ``user_data`` values never used before and
    routes their completions to a :class:`CompletionTarget`.  ``ring`` and ``buffers``
    (the provided-buffer ring of group 0) are for this loop's thread only.
    """

    def __init__(
        self,
        name: str = "gevwire-loop",
        *,
        max_events: int = 512,
        entries: int = 1024,
        buffers: int = 256,
        buffer_size: int = 16384,
    ) -> None:
        ok, reason = availability()
        if not ok:
            raise UringUnavailable(reason)
        super().__init__(name, max_events=max_events)
        try:
            self.ring = Ring(entries, cq_entries=entries * 8)
            try:
                self.buffers = BufferRing(self.ring, group=0, count=buffers, size=buffer_size)
            except BaseException:
                self.ring.close()
                raise
        except BaseException:
            super().close()
            raise
        # user_data >> 1 -> the target of that pair of user_data values.
        self._targets: dict[int, CompletionTarget] = {}
        self._next_ud = _FIRST_UD
        self._epoll_armed = False
        #: ``io_uring_enter`` calls so far (one per turn, plus one per full SQ).
        self.enters = 0
        #: Completions handled so far.
        self.completions = 0

    def add_target(self, target: CompletionTarget) -> int:
        """Route the completions of two fresh ``user_data`` values to ``target``: of the
        returned (even) value to ``target._on_input``, of the value + 1 to
        ``target._on_output`` (loop thread, or before run)."""
        ud = self._next_ud
        self._next_ud = ud + 2
        self._targets[ud >> 1] = target
        return ud

    def forget_target(self, ud: int) -> None:
        """No completion can come for ``ud`` (from :meth:`add_target`) any more."""
        self._targets.pop(ud >> 1, None)

    @property
    def targets(self) -> int:
        """How many targets may still get completions."""
        return len(self._targets)

    def run(self) -> None:
        """Run until :meth:`stop`; the calling thread becomes the loop thread (and the
        ring's only submitter: with ``SINGLE_ISSUER`` a later :meth:`run` must be on the
        same thread, or ``io_uring_enter`` fails with ``EEXIST``)."""
        if self._running:
            raise RuntimeError(f"{self.name} is already running")
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        self.thread_id = threading.get_ident()
        self._running = True
        ring = self.ring
        ring.enable()
        poller = self._poller
        assert isinstance(poller, EpollPoller)
        epoll_fd = poller.fileno()
        targets = self._targets
        callbacks = self._callbacks
        tasks = self._tasks
        timers = self._timers
        monotonic = time.monotonic
        enter = ring.enter
        completions = ring.completions
        buffers = self.buffers
        try:
            while not self._stopping:
                if not self._epoll_armed:
                    ring.poll_add(epoll_fd, _POLLIN, _EPOLL_UD)
                    self._epoll_armed = True
                buffers.publish()  # buffers recycled last turn
                self._polling = True
                if tasks:
                    result = enter(0)
                elif timers._heap:
                    timeout = timers.timeout_ms(monotonic())
                    result = enter(1, timeout) if timeout else enter(0)
                else:
                    result = enter(1)
                self._polling = False
                self.now = now = monotonic()
                self.turn_count += 1
                self.enters += 1
                if result < 0 and -result not in _BENIGN:
                    log.error("%s: io_uring_enter failed: %s", self.name,
                              errno.errorcode.get(-result, result))
                    if -result in (errno.EBADF, errno.EFAULT, errno.EINVAL, errno.EEXIST):
                        raise OSError(-result, "io_uring_enter")
                cqes = completions()
                self.completions += len(cqes)
                for ud, res, flags in cqes:
                    target = targets.get(ud >> 1)
                    if target is not None:
                        try:
                            if ud & 1:
                                target._on_output(res, flags)
                            else:
                                target._on_input(res, flags)
                        except Exception:
                            log.exception("%s: completion callback failed", self.name)
                    elif ud == _EPOLL_UD:
                        self._epoll_armed = False
                        for mask, token in poller.poll(0):
                            event_callback = callbacks.get(token)
                            if event_callback is not None:
                                try:
                                    event_callback(mask)
                                except Exception:
                                    log.exception("%s: event callback failed", self.name)
                            elif token == _WAKER_TOKEN:
                                self._wake_pending = False
                                self._waker.drain()
                if self.after_events:
                    self.run_after_events()
                if tasks:
                    self._run_tasks()
                if timers._heap:
                    timers.run_due(monotonic())
                self.busy_time += monotonic() - now
        finally:
            # Cancellations queued by the last turn (connections closed at stop) go out.
            ring.submit()
            self._running = False
            self._stopping = False

    def close(self) -> None:
        """Release the ring (cancelling whatever is still in flight), poller and waker."""
        if self._running:
            raise RuntimeError("cannot close a running loop")
        if not self._closed:
            super().close()
            self.buffers.close()
            self.ring.close()
            self._targets.clear()

    def __repr__(self) -> str:
        return (f"<UringLoop {self.name} targets={len(self._targets)} "
                f"fds={len(self._callbacks)}>")
