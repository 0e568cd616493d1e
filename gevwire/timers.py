"""Timers for an event loop: a binary heap of deadlines on the monotonic clock.

A heap costs O(log n) per timer and nothing per loop turn beyond a look at its top,
which is what a reactor whose timers are mostly far-off idle deadlines needs.
Cancelled timers stay in the heap until they reach the top (lazy deletion); when more
than half the heap is cancelled it is rebuilt, so cancel-heavy use cannot grow it.  A
cancelled timer lets go of its callback and arguments at once (as asyncio's handles
do): what they refer to, a closed connection say, is not kept until the timer's
deadline.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["TimerHandle", "TimerQueue"]

log = logging.getLogger("gevwire")


class TimerHandle:
    """A scheduled call; :meth:`cancel` stops it (and every later repetition)."""

    __slots__ = (
        "_args",
        "_callback",
        "_deadline",
        "_interval",
        "_queue",
        "_queued",
        "_seq",
        "cancelled",
    )

    def __init__(
        self,
        queue: TimerQueue,
        deadline: float,
        interval: float | None,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self._queue = queue
        self._deadline = deadline
        self._interval = interval
        self._callback = callback
        self._args = args
        self._seq = 0
        self._queued = False
        self.cancelled = False

    @property
    def deadline(self) -> float:
        """When the timer fires next, on ``time.monotonic()``'s clock."""
        return self._deadline

    def cancel(self) -> None:
        """Stop the timer; safe from any thread and more than once."""
        if not self.cancelled:
            self.cancelled = True  # (before the callback goes: see TimerQueue.run_due)
            self._callback = _cancelled
            self._args = ()
            if self._queued:
                self._queue._cancelled += 1

    def __lt__(self, other: TimerHandle) -> bool:
        return (self._deadline, self._seq) < (other._deadline, other._seq)

    def __repr__(self) -> str:
        if self.cancelled:
            return "<TimerHandle cancelled>"
        name = getattr(self._callback, "__qualname__", self._callback)
        return f"<TimerHandle {name} at {self._deadline:.3f}>"


def _cancelled(*args: Any) -> None:
    """What a cancelled timer holds instead of its callback."""


class TimerQueue:
    """The timers of one loop; only the loop's thread touches it."""

    __slots__ = ("_cancelled", "_counter", "_heap")

    def __init__(self) -> None:
        self._heap: list[TimerHandle] = []
        self._counter = itertools.count()
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def add(
        self,
        delay: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...] = (),
        interval: float | None = None,
    ) -> TimerHandle:
        """Schedule ``callback(*args)`` after ``delay`` s, then every ``interval`` s if given."""
        handle = TimerHandle(self, time.monotonic() + max(0.0, delay), interval, callback, args)
        self.push(handle)
        return handle

    def push(self, handle: TimerHandle) -> None:
        """Put a handle made by :meth:`add` (or a repeating one) into the heap."""
        handle._seq = next(self._counter)
        handle._queued = True
        heapq.heappush(self._heap, handle)

    def timeout_ms(self, now: float) -> int:
        """Milliseconds until the next live deadline (rounded up), or -1 with none."""
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)._queued = False
            self._cancelled = max(0, self._cancelled - 1)
        if not heap:
            return -1
        delta = heap[0]._deadline - now
        if delta <= 0:
            return 0
        return int(delta * 1000) + 1

    def run_due(self, now: float) -> None:
        """Call every timer whose deadline has passed; log (never raise) their errors."""
        heap = self._heap
        while heap and heap[0]._deadline <= now:
            handle = heapq.heappop(heap)
            handle._queued = False
            # Taken before the check: cancel() (from any thread) marks the timer
            # cancelled before it lets go of them, so a pair read half-cleared is
            # never called.
            callback, args = handle._callback, handle._args
            if handle.cancelled:
                self._cancelled = max(0, self._cancelled - 1)
                continue
            try:
                callback(*args)
            except Exception:
                log.exception("timer callback %r failed", callback)
            if handle._interval is not None and not handle.cancelled:
                # Next deadline from the scheduled one, not from now, so a periodic
                # timer does not drift; skip missed beats after a stall.
                deadline = handle._deadline + handle._interval
                if deadline <= now:
                    deadline = now + handle._interval
                handle._deadline = deadline
                self.push(handle)
        if self._cancelled > 64 and self._cancelled * 2 > len(heap):
            for h in heap:
                if h.cancelled:
                    h._queued = False
            self._heap = [h for h in heap if not h.cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0
