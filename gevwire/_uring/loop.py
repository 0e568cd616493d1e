"""``UringLoop``: an :class:`~gevwire.loop.EventLoop` whose backend is io_uring.

The loop's run loop, timers, tasks, waker and ``after_events`` are
:class:`~gevwire.loop.EventLoop`'s own; :class:`UringBackend` supplies the wait and the
dispatch.  Connections and listeners of this loop submit operations (multishot RECV
into the loop's provided-buffer ring, SEND, multishot ACCEPT, cancellations) and get
their completions back through a :class:`CompletionTarget`, routed by ``user_data``.
Every loop turn makes one ``io_uring_enter`` that submits all operations queued during
the previous turn and waits for completions (or for the next timer, through
``IORING_ENTER_EXT_ARG``).

The readiness API of :class:`EventLoop` (``register`` / ``modify`` / ``unregister``)
still works: its epoll instance (which also holds the cross-thread waker) is watched by
a one-shot ``POLL_ADD`` that is re-armed after each time it fires, so ordinary
:class:`~gevwire.connection.Connection` objects (outbound ``Server.connect``, PROXY
protocol connections) and user fds run on this loop unchanged; a turn without readiness
events costs them nothing.

``user_data`` values are never reused for another connection: a completion that was
already queued when a connection closed (its fd number perhaps already given to a new
connection by the kernel) is routed to the closed connection, which only recycles its
buffer.  Requests hold a reference to their file, so ``close(2)`` on an fd with a
request in flight only frees the number; the socket goes when the request ends.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from gevwire._sys._epoll import EpollPoller
from gevwire._sys._uring import BufferRing, Ring, UringUnavailable, availability
from gevwire.loop import EventLoop

if TYPE_CHECKING:
    from gevwire._sys import Poller

__all__ = ["CompletionTarget", "UringBackend", "UringLoop", "uring_available"]

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


class UringBackend:
    """An event loop's wait and dispatch through io_uring (see the module docstring).

    ``ring`` and ``buffers`` (the provided-buffer ring of group 0) are for the loop's
    thread only.
    """

    def __init__(self, loop: EventLoop, *, entries: int, buffers: int,
                 buffer_size: int) -> None:
        self._loop = loop
        poller: Poller = loop.poller
        assert isinstance(poller, EpollPoller)
        self._poller = poller
        self._epoll_fd = poller.fileno()
        self.ring = Ring(entries, cq_entries=entries * 8)
        try:
            self.buffers = BufferRing(self.ring, group=0, count=buffers, size=buffer_size)
        except BaseException:
            self.ring.close()
            raise
        # user_data >> 1 -> the target of that pair of user_data values.
        self.targets: dict[int, CompletionTarget] = {}
        self.next_ud = _FIRST_UD
        self._epoll_armed = False
        #: ``io_uring_enter`` calls so far (one per turn, plus one per full SQ).
        self.enters = 0
        #: Completions handled so far.
        self.completions = 0

    def start(self) -> None:
        """The loop's thread begins to run: it becomes the ring's only submitter (with
        ``SINGLE_ISSUER`` a later run must be on the same thread, or
        ``io_uring_enter`` fails with ``EEXIST``)."""
        self.ring.enable()

    def wait(self, timeout_ms: int) -> Sequence[tuple[int, int, int]]:
        """Submit what the last turn queued and wait up to ``timeout_ms`` (-1: no limit)
        for completions; returns them."""
        ring = self.ring
        if not self._epoll_armed:
            ring.poll_add(self._epoll_fd, _POLLIN, _EPOLL_UD)
            self._epoll_armed = True
        self.buffers.publish()  # buffers recycled last turn
        if timeout_ms < 0:
            result = ring.enter(1)
        elif timeout_ms:
            result = ring.enter(1, timeout_ms)
        else:
            result = ring.enter(0)
        self.enters += 1
        if result < 0 and -result not in _BENIGN:
            log.error("%s: io_uring_enter failed: %s", self._loop.name,
                      errno.errorcode.get(-result, result))
            if -result in (errno.EBADF, errno.EFAULT, errno.EINVAL, errno.EEXIST):
                raise OSError(-result, "io_uring_enter")
        cqes = ring.completions()
        self.completions += len(cqes)
        return cqes

    def dispatch(self, cqes: Sequence[tuple[int, int, int]]) -> None:
        """Route each completion to its target; readiness events to the loop's fds."""
        targets = self.targets
        for ud, res, flags in cqes:
            target = targets.get(ud >> 1)
            if target is not None:
                try:
                    if ud & 1:
                        target._on_output(res, flags)
                    else:
                        target._on_input(res, flags)
                except Exception:
                    log.exception("%s: completion callback failed", self._loop.name)
            elif ud == _EPOLL_UD:
                self._epoll_armed = False
                self._loop.dispatch_ready(self._poller.poll(0))

    def finish(self) -> None:
        """The loop stops: cancellations queued by its last turn go out."""
        self.ring.submit()

    def close(self) -> None:
        """Release the ring (cancelling whatever is still in flight)."""
        self.buffers.close()
        self.ring.close()
        self.targets.clear()


class UringLoop(EventLoop):
    """An :class:`EventLoop` on the io_uring backend, with its ring at hand.

    ``buffers`` x ``buffer_size`` (4 MiB by default, touched as used) is the provided-buffer
    ring every RECV of the loop fills: 16 KiB buffers take 8 pipelined 1 KiB frames in one
    completion (4 KiB ones cost 40 % more CPU per message there, measured), and a turn in
    which more than ``buffers`` connections receive ends some multishot RECVs with
    ``ENOBUFS``, which re-arms them (their bytes wait in the socket).
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
        super().__init__(name, max_events=max_events, backend=lambda loop: UringBackend(
            loop, entries=entries, buffers=buffers, buffer_size=buffer_size))
        backend = self.backend
        assert isinstance(backend, UringBackend)
        self.uring = backend
        #: The ring and its provided buffers (loop thread only).
        self.ring = backend.ring
        self.buffers = backend.buffers

    def add_target(self, target: CompletionTarget) -> int:
        """Route the completions of two fresh ``user_data`` values to ``target``: of the
        returned (even) value to ``target._on_input``, of the value + 1 to
        ``target._on_output`` (loop thread, or before run)."""
        uring = self.uring
        ud = uring.next_ud
        uring.next_ud = ud + 2
        uring.targets[ud >> 1] = target
        return ud

    def forget_target(self, ud: int) -> None:
        """No completion can come for ``ud`` (from :meth:`add_target`) any more."""
        self.uring.targets.pop(ud >> 1, None)

    @property
    def targets(self) -> int:
        """How many targets may still get completions."""
        return len(self.uring.targets)

    @property
    def enters(self) -> int:
        """``io_uring_enter`` calls so far (one per turn, plus one per full SQ)."""
        return self.uring.enters

    @property
    def completions(self) -> int:
        """Completions handled so far."""
        return self.uring.completions

    def __repr__(self) -> str:
        return (f"<UringLoop {self.name} targets={self.targets} "
                f"fds={self.registered}>")
