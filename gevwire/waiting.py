"""Handlers that wait: ``async def`` handlers and blocking ones, off the loop thread.

A loop serves all of its connections in one thread, so a handler that waits (for a
database, a cache, another service) must not wait there.  Two kinds are first-class:

* a **coroutine function** (``async def on_message``, an ``async def`` route, an
  ``async def`` ``on_connect``) runs on an asyncio event loop of the process (its own
  thread, started with the first server that needs it; or the loop given as
  ``Server(asyncio_loop=...)``);
* a **blocking** function, marked with :func:`~gevwire.blocking` (or
  ``@router.on(kind, blocking=True)``), runs on a thread pool (``Server(executor=...)``;
  by default a bounded one of the process).

:class:`WaitingPipeline` is the connection's pipeline when its handler may wait (the
connection picks it with :func:`~gevwire.handler.handler_waits`; a handler that never
waits keeps the plain :class:`~gevwire.pipeline.FramePipeline`, and its hot path pays
nothing).  It keeps what users of netty and asyncio expect:

* replies leave **in frame order** (``ordered_replies=False``: as they are ready);
* at most ``max_pending_per_connection`` frames are in flight per connection: at the
  cap reading pauses, frames already read wait unstarted, and reading resumes below it.
  Frames in flight run concurrently, so their effects may land in any order; a cap of
  1 runs a connection's frames one at a time (netty's executor groups, or Redis's
  order of a client's commands) while other connections still run meanwhile;
* a frame's work past ``handler_timeout`` is :class:`~gevwire.HandlerTimeout` for
  ``on_error`` (a coroutine is cancelled; a thread's late result is dropped);
* when the connection closes, its coroutines are cancelled and ``on_close`` runs once
  they have ended (a thread cannot be interrupted: its late result is dropped);
* a graceful close (``close()``, the peer's EOF, ``Server.stop``) waits for the frames in
  flight and sends their replies first, up to ``close_timeout``.

The loop counts frames in flight and the time they waited (``Server.stats()``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import threading
import types
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from gevwire.errors import HandlerTimeout, WriteBufferFull
from gevwire.handler import BlockingCall, is_blocking
from gevwire.pipeline import _NO_PENDING, FramePipeline, Transport

if TYPE_CHECKING:
    from gevwire.loop import EventLoop
    from gevwire.timers import TimerHandle

__all__ = ["Offloader", "WaitingPipeline"]

log = logging.getLogger("gevwire")

_Coroutine = types.CoroutineType
#: Seconds ``on_close`` waits for a closed connection's cancelled coroutines to end
#: (one that swallows its cancellation cannot hold ``on_close`` back for ever).
CANCEL_GRACE = 1.0
_EAGER = sys.version_info >= (3, 12)  # asyncio.Task(..., eager_start=True)
#: Default ``max_pending_per_connection``.
DEFAULT_MAX_PENDING = 100


class WaitingTransport(Transport, Protocol):
    """What a :class:`WaitingPipeline` asks of its connection besides a
    :class:`~gevwire.pipeline.Transport`'s (loop thread)."""

    def _hold_for_work(self) -> None:
        """Stop reading: frames wait for work in flight to end."""

    def _unhold_for_work(self) -> None:
        """Read again (unless something else holds reading)."""

    def _work_done(self) -> None:
        """A graceful close waited for work in flight: none is left."""

    def _closed(self) -> None:
        """The cancelled work of a closed connection has ended: run ``on_close``."""


class Offloader:
    """Where waiting handlers run: coroutines on an asyncio loop, blocking calls on an
    executor; results come back to the connection's event loop.

    ``asyncio_loop``: a running loop of the application's (coroutines are handed to it
    with ``call_soon_threadsafe``); None: one of this object's own, in a daemon thread
    started by :meth:`start` or the first coroutine.  ``executor``: a
    ``concurrent.futures.Executor``; None: a ``ThreadPoolExecutor`` of ``max_workers``
    threads (default ``min(32, cpu count + 4)``), made when first needed.
    """

    def __init__(
        self,
        asyncio_loop: asyncio.AbstractEventLoop | None = None,
        executor: concurrent.futures.Executor | None = None,
        *,
        max_workers: int | None = None,
    ) -> None:
        self._asyncio_loop = asyncio_loop
        self._owns_loop = asyncio_loop is None
        self._executor = executor
        self._owns_executor = executor is None
        self._max_workers = max_workers
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Coroutines started on each event loop in its current turn: handed to the
        # asyncio loop in one call (one wake-up) per turn, not one per frame.
        self._batches: dict[EventLoop, list[tuple[Any, ...]]] = {}
        # (asyncio loop thread) Results for each event loop, sent in one call.
        self._results: dict[EventLoop, list[tuple[Any, ...]]] = {}

    # -- the asyncio side --------------------------------------------------------------

    def start(self) -> None:
        """Start the asyncio loop thread now (else the first coroutine starts it)."""
        self._loop()

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._asyncio_loop
        if loop is not None:
            return loop
        with self._lock:
            if self._asyncio_loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(target=self._run_loop, args=(loop, ready),
                                          name="gevwire-asyncio", daemon=True)
                thread.start()
                ready.wait()
                self._thread = thread
                self._asyncio_loop = loop
        assert self._asyncio_loop is not None
        return self._asyncio_loop

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    @property
    def asyncio_loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop coroutines run on (started if it is this object's own)."""
        return self._loop()

    def run_coroutine(self, gloop: EventLoop, coro: Any, work: Work,
                      pipe: WaitingPipeline, timeout: float | None) -> None:
        """Run ``coro`` on the asyncio loop; its result goes to ``pipe`` on ``gloop``
        (event loop thread)."""
        batch = self._batches.get(gloop)
        if batch is None:
            batch = self._batches[gloop] = []
        if not batch:
            gloop.call_soon(self._hand_over, gloop)  # (this turn: tasks run after events)
        batch.append((coro, work, pipe, gloop, timeout))

    def _hand_over(self, gloop: EventLoop) -> None:
        batch = self._batches.get(gloop)
        if batch:
            self._batches[gloop] = []
            self._loop().call_soon_threadsafe(self._start_tasks, batch)

    def _start_tasks(self, batch: list[tuple[Any, ...]]) -> None:
        loop = self._loop()
        run = self._run
        for coro, work, pipe, gloop, timeout in batch:
            if work.done:  # cancelled before it started (the connection closed)
                coro.close()
                gloop.call_soon(pipe.cancelled_coroutine_ended, work)
                continue
            if _EAGER:
                # Runs at once up to its first real wait: a handler that does not
                # wait ends here, never scheduled (3.12's eager tasks).
                work.handle = asyncio.Task(run(coro, work, pipe, gloop, timeout),
                                           loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
            else:
                work.handle = loop.create_task(run(coro, work, pipe, gloop, timeout))

    async def _run(self, coro: Any, work: Work, pipe: WaitingPipeline, gloop: EventLoop,
                   timeout: float | None) -> None:
        deadline = None
        try:
            if timeout is None:
                result = await coro
            else:
                async with asyncio.timeout(timeout) as deadline:
                    result = await coro
        except asyncio.CancelledError:
            gloop.call_soon(pipe.cancelled_coroutine_ended, work)
            raise
        except TimeoutError as exc:
            error: BaseException = exc
            if deadline is not None and deadline.expired():  # ours, not the handler's
                error = HandlerTimeout(timeout or 0.0)
            self._ended(gloop, pipe, work, None, error)
        except BaseException as exc:
            self._ended(gloop, pipe, work, None, exc)
        else:
            self._ended(gloop, pipe, work, result, None)

    def _ended(self, gloop: EventLoop, pipe: WaitingPipeline, work: Work, result: Any,
               error: BaseException | None) -> None:
        """(asyncio loop thread) Results go back to each event loop in batches: one
        task there (and at most one wake-up) for all that ended in an asyncio turn."""
        results = self._results.get(gloop)
        if results is None:
            results = self._results[gloop] = []
        if not results:
            self._loop().call_soon(self._send_results, gloop)
        results.append((pipe, work, result, error))

    def _send_results(self, gloop: EventLoop) -> None:
        results = self._results.get(gloop)
        if results:
            self._results[gloop] = []
            gloop.call_soon(_deliver, results)

    def cancel(self, work: Work) -> None:
        """Cancel ``work``'s coroutine (from the event loop thread; on the asyncio loop,
        after its task was made, or it is never started: see ``_start_tasks``)."""
        loop = self._asyncio_loop
        if loop is not None:
            loop.call_soon_threadsafe(_cancel_task, work)

    # -- the thread pool side ----------------------------------------------------------

    def _pool(self) -> concurrent.futures.Executor:
        executor = self._executor
        if executor is None:
            with self._lock:
                if self._executor is None:
                    workers = self._max_workers or min(32, (os.cpu_count() or 1) + 4)
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        workers, thread_name_prefix="gevwire-blocking")
                executor = self._executor
        return executor

    def run_blocking(self, gloop: EventLoop, call: BlockingCall, work: Work,
                     pipe: WaitingPipeline) -> None:
        """Run ``call`` on the executor; its result goes to ``pipe`` on ``gloop``."""
        work.handle = self._pool().submit(_call_blocking, call, work, pipe, gloop)

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop what this object started (its own asyncio loop and thread pool)."""
        with self._lock:
            loop, thread = self._asyncio_loop, self._thread
            if self._owns_loop and loop is not None and thread is not None:
                self._asyncio_loop = None
                self._thread = None
                loop.call_soon_threadsafe(loop.stop)
                thread.join(5)
            executor = self._executor
            if self._owns_executor and executor is not None:
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)


def _deliver(results: list[tuple[Any, ...]]) -> None:
    """(event loop thread) Hand each result to its pipeline, then let each pipeline
    send what is now in order: one write per connection for the batch."""
    touched: dict[WaitingPipeline, None] = {}
    for pipe, work, result, error in results:
        if pipe.settle(work, result, error):
            touched[pipe] = None
    for pipe in touched:
        pipe.after_work()


def _cancel_task(work: Work) -> None:
    if work.handle is not None:
        work.handle.cancel()


def _call_blocking(call: BlockingCall, work: Work, pipe: WaitingPipeline,
                   gloop: EventLoop) -> None:
    try:
        result = call.fn(*call.args)
    except BaseException as exc:
        gloop.call_soon(pipe.work_done, work, None, exc)
    else:
        gloop.call_soon(pipe.work_done, work, result, None)


_default: Offloader | None = None
_default_lock = threading.Lock()


def default_offloader() -> Offloader:
    """The process's offloader (made when first asked for; a forked child makes its
    own: threads do not survive ``fork``)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Offloader()
    return _default


def _forget_default_after_fork() -> None:
    global _default
    _default = None


os.register_at_fork(after_in_child=_forget_default_after_fork)


class Work:
    """One frame's waiting work (or an ``async`` ``on_connect``'s), in frame order."""

    __slots__ = ("coroutine", "data", "done", "handle", "started", "timer")

    def __init__(self, started: float, coroutine: bool) -> None:
        self.started = started
        self.coroutine = coroutine
        self.done = False
        #: The reply's encoded parts, unjoined, once done (None: not done yet; empty:
        #: no reply, or sent already).
        self.data: list[bytes] | None = None
        #: The asyncio task or the executor's future (to cancel).
        self.handle: Any = None
        self.timer: TimerHandle | None = None


class WaitingPipeline(FramePipeline):
    """A :class:`~gevwire.pipeline.FramePipeline` whose handler may wait (see the
    module's docstring).  ``offloader`` runs the waiting; ``max_pending``: frames in
    flight per connection; ``handler_timeout``: seconds a frame's work may take
    (None: no limit); ``ordered``: replies in frame order.

    Its transport is a :class:`WaitingTransport`.
    """

    __slots__ = (
        "_backlog",
        "_call",
        "_cancelling",
        "_closed",
        "_connecting",
        "_holding",
        "_loop",
        "_max_pending",
        "_offloader",
        "_ordered",
        "_owner",
        "_queue",
        "_queued_bytes",
        "_timeout",
        "in_flight",
        "work_ended",
    )

    def __init__(self, *args: Any, offloader: Offloader | None = None,
                 max_pending: int = DEFAULT_MAX_PENDING,
                 handler_timeout: float | None = None, ordered: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner: WaitingTransport = self._transport  # type: ignore[assignment]
        self._loop: EventLoop = self.conn.loop
        self._offloader = offloader if offloader is not None else default_offloader()
        self._max_pending = max_pending
        self._timeout = handler_timeout
        self._ordered = ordered
        #: Work and ready replies in frame order (the replies wait for the work ahead;
        #: each as its encoded parts, unjoined).
        self._queue: deque[Work | bytes] = deque()
        self._queued_bytes = 0  # in the queue's ready replies
        #: Frames read while they could not start (``max_pending`` in flight, or an
        #: ``async`` ``on_connect`` running): started as work ends.
        self._backlog: deque[Any] = deque()
        self._connecting: Work | None = None
        self._holding = False  # reading is held for the backlog
        #: Frames (and an ``async`` ``on_connect``) whose work has not ended.
        self.in_flight = 0
        self.work_ended = 0.0
        self._cancelling = 0  # cancelled coroutines still unwinding after a close
        self._closed = False
        on_message = self.handler.on_message
        if is_blocking(on_message):
            def call(conn: Any, frame: Any) -> Any:
                return BlockingCall(on_message, conn, frame)
            self._call: Callable[[Any, Any], Any] = call
        else:
            self._call = on_message

    # -- reads and dispatch ------------------------------------------------------------

    def received(self, data: Any) -> bytes | None:
        """As :meth:`FramePipeline.received`, without the one-frame fast path (a reply
        may have to wait behind work in flight)."""
        if self.input._len or self.stopped:
            return super().received(data)
        try:
            if self._view_reads:
                frames, used = self._decoder.decode_view(data)
            else:
                frames, used = self._decoder.decode_bytes(data)
        except Exception as exc:
            self.fail(exc)
            return None
        if used != len(data):
            self.keep_rest(data, used, frames)
        elif frames:
            self.dispatch(frames)
        return None

    def dispatch(self, frames: list[Any]) -> None:
        """Start each frame's handler (up to ``max_pending`` in flight); replies that
        are ready leave as one write, in frame order."""
        if self.stopped:
            return
        if self._backlog or self._connecting is not None:
            self._hold_back(frames)
            return
        self._start(frames)

    def _start(self, frames: list[Any] | deque[Any]) -> None:
        counters = self._counters
        conn = self.conn
        call = self._call
        queue = self._queue
        ordered = self._ordered
        pending = self.pending
        if pending is _NO_PENDING:
            pending = self.pending = []
        self.gathered = 0
        self.dispatching = True
        try:
            for i, frame in enumerate(frames):
                if self.in_flight >= self._max_pending:
                    self._hold_back(list(frames)[i:])
                    break
                counters.frames_in += 1
                result = call(conn, frame)
                if result is None:
                    pass
                elif type(result) is _Coroutine or type(result) is BlockingCall:
                    self._offload(result, True)
                elif queue and ordered:  # behind work in flight: waits its turn
                    parts: list[bytes] = []
                    size = self._codec.encode_into(parts, result)
                    counters.frames_out += 1
                    self._queued_bytes += size
                    if self._queued_bytes > self._max_output:
                        self._over_cap(self._queued_bytes)
                        break
                    queue.extend(parts)  # (unjoined: see after_work)
                else:  # (handlers' sends, gathered here too, are never held back)
                    self._codec.encode_into(pending, result)
                    counters.frames_out += 1
                if self.stopped:
                    break
        except Exception as exc:
            self.dispatching = False
            if pending:
                self.flush_gathered()
            self.fail(exc)
            return
        self.dispatching = False
        if pending:
            size = sum(map(len, pending))
            if size > self._max_output:
                self._over_cap(size)
                return
            self._write_gathered(size, self._transport._write_batch)

    def _hold_back(self, frames: list[Any]) -> None:
        """Keep ``frames`` unstarted and stop reading until work ends."""
        self._backlog.extend(frames)
        if not self._holding:
            self._holding = True
            self._owner._hold_for_work()

    def _offload(self, call: Any, frame: bool) -> Work:
        loop = self._loop
        coroutine = type(call) is _Coroutine
        work = Work(loop.now, coroutine)
        self._queue.append(work)
        self.in_flight += 1
        if frame:
            loop.frames_waiting += 1
            loop.frames_offloaded += 1
        else:
            work.data = []  # (on_connect: counted apart from frames, no reply)
        if coroutine:
            self._offloader.run_coroutine(loop, call, work, self, self._timeout)
        else:
            if self._timeout is not None:
                work.timer = loop.run_after(self._timeout, self._timed_out, work)
            self._offloader.run_blocking(loop, call, work, self)
        return work

    # -- work ending (event loop thread) -----------------------------------------------

    def work_done(self, work: Work, result: Any, error: BaseException | None) -> None:
        """``work`` ended with ``result`` (or ``error``): encode its reply and send what
        the order allows; start frames held back."""
        if self.settle(work, result, error):
            self.after_work()

    def settle(self, work: Work, result: Any, error: BaseException | None) -> bool:
        """``work`` ended: encode its reply (or report ``error``), sending nothing yet;
        False when there is nothing more to do (:meth:`after_work` is not needed)."""
        if work.done:  # a thread's result after its timeout, or work of a closed
            if work.coroutine and self._closed:  # connection (it ran on regardless)
                self.cancelled_coroutine_ended(work)
            return False
        self._end(work)
        if self._closed:
            return False
        if error is not None:
            self.fail(error)
        elif result is not None:
            try:
                work.data = self.encode_parts(result)
                self._counters.frames_out += 1
            except WriteBufferFull as exc:
                self.fail(exc, abort=True)
            except Exception as exc:
                self.fail(exc)
        return True

    def _timed_out(self, work: Work) -> None:
        work.timer = None
        if work.done or self._closed:
            return
        if work.handle is not None:
            work.handle.cancel()  # (a thread not yet started never starts)
        self._end(work)
        self.fail(HandlerTimeout(self._timeout or 0.0))
        self.after_work()

    def _end(self, work: Work) -> None:
        work.done = True
        self.in_flight -= 1
        loop = self._loop
        self.work_ended = loop.now
        if work.data is None:  # a frame's (see _offload)
            loop.frames_waiting -= 1
            loop.offload_wait += loop.now - work.started
        if work.timer is not None:
            work.timer.cancel()
            work.timer = None

    def after_work(self) -> None:
        """Send the replies now in order, start what was held back, and tell a closing
        transport when nothing is in flight.

        The replies leave as a read's do (:meth:`_write_gathered`): small parts joined
        into one write, a part over the join limit (a large payload) written by itself,
        never copied.
        """
        queue = self._queue
        ready: list[bytes] = []
        if self._ordered:
            while queue:
                head = queue[0]
                if not isinstance(head, Work):
                    self._queued_bytes -= len(head)
                    ready.append(head)
                elif head.done:
                    if head.data:
                        ready += head.data
                else:
                    break
                queue.popleft()
        else:  # (the queue holds work only)
            for work in queue:
                if isinstance(work, Work) and work.done and work.data:
                    ready += work.data
                    work.data = []
            while queue and isinstance(queue[0], Work) and queue[0].done:
                queue.popleft()
        if ready and not self._closed:
            pending = self.pending
            if pending:  # (not expected: what a read gathers leaves at its end)
                pending += ready
            else:
                self.pending = pending = ready
            self._write_gathered(sum(map(len, pending)), self._transport._write)
        connecting = self._connecting
        if connecting is not None and connecting.done:
            self._connecting = None
        if (self._holding and self._connecting is None and not self.stopped
                and not self._closed and self.in_flight < self._max_pending):
            frames = self._backlog
            self._backlog = deque()
            self._holding = False
            if frames:
                self._start(frames)
            if not self._holding:
                self._owner._unhold_for_work()
        if self.stopped and not self.in_flight and not self._closed:
            self._owner._work_done()

    # -- connect and close -------------------------------------------------------------

    def connected(self) -> None:
        """Run ``on_connect``; frames wait until an ``async`` one has ended."""
        try:
            result = self.handler.on_connect(self.conn)
        except Exception as exc:
            self.fail(exc)
            return
        if type(result) is _Coroutine:
            self._connecting = self._offload(result, False)
            self._holding = True
            self._owner._hold_for_work()
            return
        if self.pending and not self.stopped:
            self._flush_pending()

    def release(self) -> bool:
        """The connection closed: drop what is buffered, cancel the work in flight.

        Returns True if ``on_close`` may run now; False while cancelled coroutines
        unwind: the transport's ``_closed()`` is called once they have ended (or after
        ``CANCEL_GRACE`` seconds).  A thread's work cannot be interrupted: its result
        is dropped when it comes.
        """
        super().release()
        self._closed = True
        self._backlog.clear()
        cancelling = 0
        for work in self._queue:
            if not isinstance(work, Work) or work.done:
                continue
            self._end(work)
            if work.coroutine:
                cancelling += 1
                self._offloader.cancel(work)
            elif work.handle is not None:
                work.handle.cancel()  # not started: it never starts
        self._queue.clear()
        self._cancelling = cancelling
        if not cancelling:
            return True
        self._loop.run_after(CANCEL_GRACE, self._cancel_grace_over)
        return False

    def cancelled_coroutine_ended(self, work: Work) -> None:
        """A coroutine ended by cancellation (on close, or before it started)."""
        if not work.done:  # cancelled by someone else while the connection is open
            self.work_done(work, None, asyncio.CancelledError())
            return
        if self._cancelling:
            self._cancelling -= 1
            if not self._cancelling:
                self._owner._closed()

    def _cancel_grace_over(self) -> None:
        if self._cancelling:
            log.warning("%r: %d cancelled coroutine(s) still running %.1fs after close",
                        self.conn, self._cancelling, CANCEL_GRACE)
            self._cancelling = 0
            self._owner._closed()
