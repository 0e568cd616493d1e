"""``EventLoop``: one thread, one run loop, the fds it owns, a task queue and timers.

The loop knows fds, tokens and callbacks, nothing of connections or codecs.  Other
threads reach it only through :meth:`EventLoop.call_soon`, which appends to a deque and
writes the waker only when the loop may be asleep waiting (gev's ``needWake``).

How a turn waits for I/O and hands out what came is its :class:`LoopBackend`'s (trio's
``_io_epoll`` / ``_io_kqueue`` shape): readiness of the loop's poller by default
(:class:`ReadinessBackend`: epoll or kqueue), or io_uring completions
(:class:`~gevwire._uring.loop.UringBackend`).  The run loop, timers, tasks, waker and
``after_events`` are written once, here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from gevwire._sys import EV_READ, Iovecs, Poller, Waker, alloc, new_poller
from gevwire.ringbuffer import DEFAULT_POOL, BufferPool
from gevwire.timers import TimerHandle, TimerQueue

__all__ = ["SPARE_SIZE", "EventLoop"]

log = logging.getLogger("gevwire")

#: Size of the loop-owned read buffer that backs every connection's input ring.
SPARE_SIZE = 65536

_WAKER_TOKEN = 0

#: The loop running in this thread (``.loop``), if any.
_running_here = threading.local()


def _keep_for_a_while(pool: BufferPool) -> bool:
    """``BufferPool.on_keep``: a large map given back on a loop thread is kept, and that
    loop's timer drops it ``keep_seconds`` later unless a large frame took it again;
    given back elsewhere (no loop to time it), it is dropped."""
    loop: EventLoop | None = getattr(_running_here, "loop", None)
    if loop is None or loop._stopping:
        return False
    loop.run_after(pool.keep_seconds, pool.expire)
    return True


DEFAULT_POOL.on_keep = _keep_for_a_while


class LoopBackend(Protocol):
    """How an :class:`EventLoop` waits for I/O and hands out what came (loop thread)."""

    def start(self) -> None:
        """:meth:`EventLoop.run` begins on this thread."""

    def wait(self, timeout_ms: int) -> Any:
        """Wait up to ``timeout_ms`` (-1: no limit, 0: do not block) for I/O; returns
        what came, for :meth:`dispatch`."""

    def dispatch(self, got: Any) -> None:
        """Run the callbacks of what :meth:`wait` returned."""

    def finish(self) -> None:
        """:meth:`EventLoop.run` returns."""

    def close(self) -> None:
        """Release what the backend holds (the loop is closing)."""


class ReadinessBackend:
    """The loop's poller (epoll or kqueue): ``wait`` is its ``poll``, ``dispatch`` runs
    each ready fd's callback (:meth:`EventLoop.dispatch_ready`)."""

    __slots__ = ("dispatch", "wait")

    def __init__(self, loop: EventLoop) -> None:
        # The loop's own bound methods, so a turn costs no call level more than the
        # poll and the dispatch loop.
        self.wait = loop.poller.poll
        self.dispatch = loop.dispatch_ready

    def start(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class EventLoop:
    """A reactor loop.  Methods marked *loop thread only* must run on the loop's thread."""

    def __init__(
        self,
        name: str = "gevwire-loop",
        *,
        max_events: int = 512,
        backend: Callable[[EventLoop], LoopBackend] | None = None,
    ) -> None:
        self.name = name
        self._poller: Poller = new_poller(max_events)
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self._next_token = 1
        self._tasks: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        #: Callbacks to run once this turn's events are handled (loop thread only):
        #: connections write the replies of a turn there, back to back.
        self.after_events: list[Callable[[], None]] = []
        self._timers = TimerQueue()
        self._waker = Waker()
        self._poller.register(self._waker.fileno(), _WAKER_TOKEN, EV_READ)
        self._polling = False  # True while the loop may be blocked in poll()
        self._wake_pending = False
        self._running = False
        self._stopping = False
        self._closed = False
        self.thread_id: int | None = None
        # Read scratch space shared by every connection of this loop (muduo's extrabuf):
        # a read lands here when the connection's own ring has no room, so a ring only
        # grows when a frame really needs it.
        self.spare, self.spare_address, self.spare_ptr = alloc(SPARE_SIZE)
        self.spare_view = memoryview(self.spare)
        #: Where this loop's connections take ring storage (a server with a memory
        #: budget gives each loop its own, to count what its connections hold).
        self.pool: BufferPool = DEFAULT_POOL
        self.iovecs = Iovecs(3)
        #: Loop turns so far (one ``poll`` each).
        self.turn_count = 0
        #: ``time.monotonic()`` when the current turn's poll returned (a cheap clock for
        #: idle deadlines: connections stamp it instead of reading the clock per event).
        self.now = time.monotonic()
        #: Seconds spent handling events, tasks and timers (not waiting in poll).
        self.busy_time = 0.0
        # Traffic counters, each written only by this loop's thread (see Server.stats).
        self.bytes_in = 0
        self.bytes_out = 0
        self.frames_in = 0
        self.frames_out = 0
        self.connections_closed = 0
        self.errors: dict[str, int] = {}
        # Frames whose handler waits (gevwire.waiting): in flight now, handed off so
        # far, and the seconds those that ended waited.
        self.frames_waiting = 0
        self.frames_offloaded = 0
        self.offload_wait = 0.0
        #: TLS failures by OpenSSL's reason (``TLSError.reason``), beside ``errors``.
        self.tls_failures: dict[str, int] = {}
        try:
            #: How the loop waits for I/O (``backend(loop)``; default: the poller).
            self.backend: LoopBackend = (ReadinessBackend(self) if backend is None
                                         else backend(self))
        except BaseException:
            self._poller.close()
            self._waker.close()
            raise

    @property
    def poller(self) -> Poller:
        """The readiness poller of :meth:`register` (its fds also wake an io_uring loop)."""
        return self._poller

    # -- registration (loop thread only) -----------------------------------------------

    def register(self, fd: int, callback: Callable[[int], None], events: int) -> int:
        """Watch ``fd``; ``callback(events)`` runs on readiness.  Returns the token."""
        token = self._next_token
        self._next_token = token + 1
        self._callbacks[token] = callback
        try:
            self._poller.register(fd, token, events)
        except BaseException:
            del self._callbacks[token]
            raise
        return token

    def replace_callback(self, token: int, callback: Callable[[int], None]) -> None:
        """Route the events of a registration to another callback (loop thread only)."""
        if token in self._callbacks:
            self._callbacks[token] = callback

    def modify(self, fd: int, token: int, events: int) -> None:
        """Change what ``fd`` is watched for."""
        self._poller.modify(fd, token, events)

    def unregister(self, fd: int, token: int) -> None:
        """Stop watching ``fd`` and forget its callback; call before ``close(fd)``.

        Events already fetched in this turn for ``token`` are dropped, so a new fd with
        the same number (the kernel reuses numbers at once) never sees them.
        """
        self._callbacks.pop(token, None)
        self._poller.unregister(fd)

    @property
    def registered(self) -> int:
        """Number of fds watched, the waker excluded."""
        return len(self._callbacks)

    # -- threads -----------------------------------------------------------------------

    def in_loop_thread(self) -> bool:
        """True when called on this loop's thread."""
        return threading.get_ident() == self.thread_id

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop thread at its next turn; from any thread."""
        self._tasks.append((callback, args))
        if self._polling and not self._wake_pending:
            self._wake_pending = True
            self._waker.wake()

    def run_in_loop(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback`` now if on the loop thread, else queue it (muduo's runInLoop)."""
        if threading.get_ident() == self.thread_id:
            callback(*args)
        else:
            self.call_soon(callback, *args)

    # -- timers ------------------------------------------------------------------------

    def run_after(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` on the loop after ``delay`` seconds; from any thread."""
        return self._schedule(delay, None, callback, args)

    def run_every(
        self, interval: float, callback: Callable[..., Any], *args: Any
    ) -> TimerHandle:
        """Call ``callback(*args)`` every ``interval`` seconds until cancelled."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        return self._schedule(interval, interval, callback, args)

    def _schedule(
        self,
        delay: float,
        interval: float | None,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> TimerHandle:
        handle = TimerHandle(self._timers, time.monotonic() + max(0.0, delay), interval,
                             callback, args)
        if threading.get_ident() == self.thread_id:
            self._timers.push(handle)
        else:
            self.call_soon(self._timers.push, handle)
        return handle

    # -- running -----------------------------------------------------------------------

    def run(self) -> None:
        """Run until :meth:`stop`; the calling thread becomes the loop thread."""
        if self._running:
            raise RuntimeError(f"{self.name} is already running")
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        self.thread_id = threading.get_ident()
        self._running = True
        _running_here.loop = self
        backend = self.backend
        wait = backend.wait
        dispatch = backend.dispatch
        tasks = self._tasks
        timers = self._timers
        monotonic = time.monotonic
        try:
            backend.start()
            while not self._stopping:
                self._polling = True
                if tasks:
                    got = wait(0)
                elif timers._heap:
                    got = wait(timers.timeout_ms(monotonic()))
                else:
                    got = wait(-1)
                self._polling = False
                self.now = now = monotonic()
                self.turn_count += 1
                dispatch(got)
                if self.after_events:
                    self.run_after_events()
                if tasks:
                    self._run_tasks()
                if timers._heap:
                    timers.run_due(monotonic())
                self.busy_time += monotonic() - now
        finally:
            try:
                backend.finish()
            finally:
                _running_here.loop = None
                self._running = False
                self._stopping = False

    def dispatch_ready(self, events: list[tuple[int, int]]) -> None:
        """Run the callback of each ready ``(mask, token)`` (loop thread only)."""
        callbacks = self._callbacks
        for mask, token in events:
            callback = callbacks.get(token)
            if callback is not None:
                try:
                    callback(mask)
                except Exception:
                    log.exception("%s: event callback failed", self.name)
            elif token == _WAKER_TOKEN:
                self._wake_pending = False
                self._waker.drain()

    def run_after_events(self) -> None:
        """Run (and clear) :attr:`after_events`; one that fails is logged."""
        callbacks = self.after_events
        self.after_events = []  # callbacks added while these run wait for the next turn
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("%s: after-events callback %r failed", self.name, callback)

    def run_queued(self) -> None:
        """Run the callbacks queued so far by :meth:`call_soon`, on a loop that is not
        running (its owner's thread, after :meth:`run` has returned)."""
        if self._running:
            raise RuntimeError(f"{self.name} is running: its own thread runs its tasks")
        self._run_tasks()

    def _run_tasks(self) -> None:
        # Reset before draining: a producer that saw the flag set appended before this
        # point, so its task runs below; one that sees it cleared writes the waker.
        self._wake_pending = False
        tasks = self._tasks
        for _ in range(len(tasks)):  # tasks queued by these tasks wait for the next turn
            callback, args = tasks.popleft()
            try:
                callback(*args)
            except Exception:
                log.exception("%s: task %r failed", self.name, callback)

    def stop(self) -> None:
        """Ask the loop to return from :meth:`run` after this turn; from any thread."""
        self._stopping = True
        self._waker.wake()

    @property
    def running(self) -> bool:
        """True while :meth:`run` is executing."""
        return self._running

    def close(self) -> None:
        """Release the backend, poller and waker (after :meth:`run` has returned)."""
        if self._running:
            raise RuntimeError("cannot close a running loop")
        if not self._closed:
            self._closed = True
            self.pool.expire(everything=True)  # (this loop's timers will not drop them)
            try:
                self.backend.close()
            finally:
                self._poller.close()
                self._waker.close()

    def __repr__(self) -> str:
        return f"<EventLoop {self.name} fds={len(self._callbacks)}>"
