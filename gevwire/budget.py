"""``MemoryBudget``: one bound on the bytes a server process holds in connection buffers.

Every other limit is per connection (``max_write_buffer``, a codec's frame size), so a
thousand connections, each within its limits, can still take the machine.  With
``Server(max_buffered_bytes=N)`` each event loop gets a buffer pool of its own, which
counts the ring storage its connections hold (a partial frame, unsent replies) as it is
taken and given back; the sum over the loops is the process's figure.  No hot path pays
for it: the count moves only when a ring takes or gives back storage, and the first take
past a loop's alarm (N divided among the loops) schedules a check on that loop:

- above ``N`` (the soft mark), each loop stops reading from its connections that hold
  the most, largest first, until what they hold covers its share of the excess (a
  peer that does not read stops adding replies; one sending a huge frame stops adding
  to it);
- above the hard mark (``buffered_hard_limit``, default 1.5 x N), each loop closes its
  largest holders first, with :class:`~gevwire.MemoryBudgetExceeded` to their
  ``on_error`` (counted under ``errors`` in ``stats()``), until its share is back
  under it;
- checks repeat every ``interval`` while anything is paused; below three quarters of
  ``N`` every paused connection reads again.

A connection paused by the budget keeps its ``frame_timeout`` running from where it was
(the pause is the server's doing, not the peer's), as for output backpressure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gevwire.connection import Connection, ConnState
from gevwire.errors import MemoryBudgetExceeded
from gevwire.ringbuffer import BufferPool

if TYPE_CHECKING:
    from gevwire.loop import EventLoop

__all__ = ["MemoryBudget"]


class MemoryBudget:
    """The marks, and one counting pool per loop (:meth:`attach`); :meth:`check` runs on
    each loop's own thread, over that loop's connections."""

    def __init__(self, soft: int, hard: int | None = None, *, interval: float = 0.05) -> None:
        if soft <= 0:
            raise ValueError(f"max_buffered_bytes must be positive, not {soft}")
        if hard is None:
            hard = soft * 3 // 2
        if hard < soft:
            raise ValueError(f"buffered_hard_limit ({hard}) must be >= max_buffered_bytes "
                             f"({soft})")
        if not interval > 0:
            raise ValueError(f"the budget's interval must be positive, not {interval}")
        self.soft = soft
        self.hard = hard
        self.resume_below = soft * 3 // 4
        self.interval = interval
        self._pools: list[BufferPool] = []
        # Per loop (by name), so each has one writer: a check is scheduled for the next
        # turn (an alarm), a check is scheduled after ``interval`` (a recheck); the
        # connections paused and closed; the loop's own check function.
        self._soon: dict[str, bool] = {}
        self._later: dict[str, bool] = {}
        self._pauses: dict[str, int] = {}
        self._closes: dict[str, int] = {}
        self._checks: dict[str, Callable[[bool], None]] = {}

    def attach(self, loop: EventLoop,
               connections: Callable[[], list[Connection]]) -> None:
        """Give ``loop`` a counting pool; ``connections()`` lists its connections (called
        on the loop's thread).  Before the loop runs, once per loop."""
        # Free buffers kept for reuse are not counted: keep few (an eighth of the soft
        # mark over the loops, at most the default pool's 16 MiB), and no large maps
        # (no on_keep: they go back at once, so what is counted is what stays resident).
        pool = BufferPool(max_bytes=min(16 << 20, self.soft // 8))
        self._pools.append(pool)
        name = loop.name
        self._soon[name] = self._later[name] = False
        self._pauses[name] = self._closes[name] = 0

        def check(later: bool) -> None:
            (self._later if later else self._soon)[name] = False
            self.check(loop, connections())

        def alarm() -> None:
            # In the middle of a read: pause now (so the holders read no more in this
            # turn), close at the next turn (never a connection in the middle of a read).
            if not self._soon[name]:
                self._soon[name] = True
                total = self.total
                if total > self.soft:
                    self._pause(name, _by_size(connections()), total)
                loop.call_soon(check, False)

        pool.on_alarm = alarm
        self._checks[name] = check
        loop.pool = pool
        share = max(self.soft // max(len(self._pools), 1), 1)
        for each in self._pools:  # the alarm: this loop's share of the soft mark
            each.alarm = share

    @property
    def total(self) -> int:
        """Bytes of ring storage every loop's connections hold now."""
        return sum(pool.in_use for pool in list(self._pools))

    @property
    def pauses(self) -> int:
        """Connections the budget has paused so far."""
        return sum(list(self._pauses.values()))

    @property
    def closes(self) -> int:
        """Connections the budget has closed so far."""
        return sum(list(self._closes.values()))

    def check(self, loop: EventLoop, connections: list[Connection]) -> None:
        """Apply the marks to ``loop``'s ``connections`` (on the loop's thread)."""
        total = self.total
        name = loop.name
        paused = False
        if total > self.soft:
            sized = _by_size(connections)
            if total > self.hard:
                # Close the largest first until this loop's share of the excess is gone.
                mine = sum(size for size, _ in sized)
                due = (total - self.hard) * mine // total
                for size, conn in sized:
                    if due <= 0 or not size:
                        break
                    if conn.state == ConnState.CLOSED:
                        continue
                    conn._fail_for_budget(MemoryBudgetExceeded(
                        f"{conn!r} held {size} bytes while the server held {total}, over "
                        f"buffered_hard_limit={self.hard}"))
                    self._closes[name] += 1
                    due -= size
                total = self.total
                sized = _by_size(connections)
            if total > self.soft:
                self._pause(name, sized, total)
        resume = total < self.resume_below
        for conn in connections:
            if conn._budget_paused:
                if resume:
                    conn._resume_for_budget()
                elif not conn._gone_while_paused():
                    paused = True
        if (paused or total > self.soft) and not self._later[name]:
            self._later[name] = True  # look again soon: to resume, or to act again
            loop.run_after(self.interval, self._checks[name], True)


    def _pause(self, name: str, sized: list[tuple[int, Connection]], total: int) -> None:
        """Stop reading from the largest of ``sized`` until they cover this loop's share
        of what ``total`` exceeds the soft mark by."""
        mine = sum(size for size, _ in sized)
        due = (total - self.soft) * mine // total
        for size, conn in sized:
            if due <= 0 or not size:
                break
            due -= size
            if conn._budget_paused or conn.state >= ConnState.FLUSHING:
                continue
            conn._pause_for_budget()
            self._pauses[name] += 1


def _by_size(connections: list[Connection]) -> list[tuple[int, Connection]]:
    """``(bytes held, connection)``, largest first."""
    return sorted(((conn._buffered_bytes(), conn) for conn in connections), key=_size,
                  reverse=True)


def _size(item: tuple[int, Connection]) -> int:
    return item[0]
