"""``EventLoop`` on its own, run in a thread: tasks, wake-ups, timers, fds, stop."""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import wait_until

from gevwire import EventLoop, TimerHandle
from gevwire._sys import EV_READ

pytestmark = pytest.mark.timeout(30)

#: How late a timer may fire on a loaded machine (it must never fire early).
LATE = 1.0


class Running:
    """An ``EventLoop`` running in its own thread."""

    def __init__(self) -> None:
        self.loop = EventLoop("test-loop")
        self.thread = threading.Thread(target=self.loop.run, name="test-loop", daemon=True)
        self.thread.start()
        assert wait_until(lambda: self.loop.running, 5)

    def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn`` on the loop thread and return its result."""
        done = threading.Event()
        result: list[Any] = []
        errors: list[BaseException] = []

        def task() -> None:
            try:
                result.append(fn())
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        self.loop.call_soon(task)
        assert done.wait(timeout), "the loop did not run the task"
        if errors:
            raise errors[0]
        return result[0]

    def idle(self) -> None:
        """Wait until the loop is blocked in poll with nothing to do."""
        assert wait_until(lambda: self.loop._polling and not self.loop._tasks, 5)
        time.sleep(0.1)

    def stop(self) -> None:
        self.loop.stop()
        self.thread.join(5)
        assert not self.thread.is_alive(), "run() did not return after stop()"
        self.loop.close()


@pytest.fixture
def running() -> Iterator[Running]:
    loop = Running()
    yield loop
    if loop.thread.is_alive():
        loop.stop()
    elif not loop.loop._closed:
        loop.loop.close()


@pytest.fixture
def socketpair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


# -- tasks -----------------------------------------------------------------------------


def test_call_soon_from_another_thread_wakes_a_sleeping_loop(running: Running) -> None:
    # With no fds, tasks or timers the loop blocks in poll(-1): only the waker gets it out.
    running.idle()
    for attempt in range(20):
        if attempt:
            time.sleep(0.02)  # long enough to be back asleep
        ran = threading.Event()
        on_thread: list[bool] = []

        def task(ran: threading.Event = ran, on_thread: list[bool] = on_thread) -> None:
            on_thread.append(running.loop.in_loop_thread())
            ran.set()

        running.loop.call_soon(task)
        assert ran.wait(5), "call_soon did not wake the loop"
        assert on_thread == [True]


def test_tasks_run_in_order_with_their_arguments(running: Running) -> None:
    seen: list[tuple[int, str]] = []
    done = threading.Event()
    for i in range(1000):
        running.loop.call_soon(seen.append, (i, f"task-{i}"))
    running.loop.call_soon(done.set)
    assert done.wait(5)
    assert seen == [(i, f"task-{i}") for i in range(1000)]


def test_call_soon_from_many_threads_loses_no_task_and_keeps_each_threads_order(
    running: Running,
) -> None:
    producers, per_thread = 4, 2000
    seen: list[tuple[int, int]] = []
    barrier = threading.Barrier(producers)

    def produce(t: int) -> None:
        barrier.wait(5)
        for i in range(per_thread):
            running.loop.call_soon(seen.append, (t, i))
            if i % 100 == 0:
                time.sleep(0.001)  # let the loop fall asleep now and then: wake races

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert wait_until(lambda: len(seen) == producers * per_thread, 10), len(seen)
    for t in range(producers):
        assert [i for u, i in seen if u == t] == list(range(per_thread))


def test_a_task_queued_by_a_task_runs_on_a_later_turn(running: Running) -> None:
    order: list[str] = []
    done = threading.Event()

    def first() -> None:
        order.append("first")
        running.loop.call_soon(nested)

    def nested() -> None:
        order.append("nested")
        done.set()

    def queue_both() -> None:  # on the loop thread: both queued before the next drain
        running.loop.call_soon(first)
        running.loop.call_soon(order.append, "second")

    running.loop.call_soon(queue_both)
    assert done.wait(5)
    assert order == ["first", "second", "nested"]


def test_a_failing_task_is_logged_and_the_loop_goes_on(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gevwire")

    def broken() -> None:
        raise RuntimeError("task exploded")

    after = threading.Event()
    running.loop.call_soon(broken)
    running.loop.call_soon(after.set)
    assert after.wait(5)
    assert running.loop.running
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)
    assert "task exploded" in caplog.text and "Traceback" in caplog.text
    # And it still serves later work.
    assert running.call(lambda: 42) == 42


# -- timers ----------------------------------------------------------------------------


def test_run_after_fires_in_deadline_order_and_never_early(running: Running) -> None:
    delays = [0.30, 0.10, 0.20, 0.0, 0.15, 0.05, 0.125, 0.12, 0.11]
    fired: list[tuple[float, float]] = []  # (delay, fired at)
    scheduled: dict[float, tuple[float, float]] = {}
    for delay in delays:
        before = time.monotonic()
        running.loop.run_after(delay, lambda d=delay: fired.append((d, time.monotonic())))
        scheduled[delay] = (before, time.monotonic())
    assert wait_until(lambda: len(fired) == len(delays), 5)
    assert [d for d, _ in fired] == sorted(delays)
    for delay, at in fired:
        before, after = scheduled[delay]
        assert at >= before + delay, f"timer of {delay}s fired {before + delay - at:.4f}s early"
        assert at <= after + delay + LATE, f"timer of {delay}s fired {at - after - delay:.3f}s late"


def test_timers_with_equal_delays_fire_in_scheduling_order(running: Running) -> None:
    fired: list[int] = []

    def schedule_all() -> None:  # on the loop thread: pushed straight into the heap
        for i in range(20):
            running.loop.run_after(0.05, fired.append, i)

    running.call(schedule_all)
    assert wait_until(lambda: len(fired) == 20, 5)
    assert fired == list(range(20))


def test_run_every_repeats_not_early_and_cancel_stops_it(running: Running) -> None:
    interval = 0.02
    fired: list[float] = []
    start = time.monotonic()
    handle = running.loop.run_every(interval, lambda: fired.append(time.monotonic()))
    assert isinstance(handle, TimerHandle)
    assert wait_until(lambda: len(fired) >= 5, 5)
    for k, at in enumerate(fired):
        assert at >= start + (k + 1) * interval - 1e-6, f"repeat {k} fired early"
    # Cancel on the loop thread, so the count at that moment is exact.
    def cancel() -> int:
        handle.cancel()
        return len(fired)

    count = running.call(cancel)
    time.sleep(10 * interval)
    running.call(lambda: None)  # the loop has turned since
    assert len(fired) == count
    assert handle.cancelled
    handle.cancel()  # idempotent


def test_run_every_cancelled_from_its_own_callback(running: Running) -> None:
    fired: list[int] = []
    handles: list[TimerHandle] = []

    def tick() -> None:
        fired.append(1)
        if len(fired) == 3:
            handles[0].cancel()

    handles.append(running.call(lambda: running.loop.run_every(0.01, tick)))
    assert wait_until(lambda: len(fired) >= 3, 5)
    time.sleep(0.15)
    running.call(lambda: None)
    assert len(fired) == 3


def test_cancelled_run_after_never_fires(running: Running) -> None:
    fired: list[str] = []
    handle = running.loop.run_after(0.1, fired.append, "cancelled")
    running.loop.run_after(0.2, fired.append, "kept")
    handle.cancel()
    assert wait_until(lambda: fired == ["kept"], 5)
    time.sleep(0.05)
    assert fired == ["kept"]


def test_a_cancelled_timer_lets_go_of_its_callback_and_arguments(running: Running) -> None:
    """Cancelled, a far-off timer stays in the heap until its deadline; what its
    callback and arguments refer to (a closed connection, say) must not stay with it."""

    class Held:
        def fire(self, other: object) -> None:
            raise AssertionError("a cancelled timer fired")

    held, argument = Held(), Held()
    held_ref, argument_ref = weakref.ref(held), weakref.ref(argument)
    handle = running.loop.run_after(3600, held.fire, argument)
    repeating = running.loop.run_every(3600, held.fire, argument)
    del held, argument
    gc.collect()
    assert held_ref() is not None and argument_ref() is not None  # (scheduled: held)
    handle.cancel()
    repeating.cancel()
    gc.collect()
    assert held_ref() is None and argument_ref() is None
    assert running.call(lambda: len(running.loop._timers)) == 0
    assert repr(handle) == "<TimerHandle cancelled>"


def test_run_every_rejects_a_non_positive_interval(running: Running) -> None:
    with pytest.raises(ValueError):
        running.loop.run_every(0, lambda: None)
    with pytest.raises(ValueError):
        running.loop.run_every(-1, lambda: None)


def test_a_failing_timer_is_logged_and_the_loop_goes_on(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gevwire")
    ticks: list[int] = []

    def broken() -> None:
        raise ValueError("timer exploded")

    def flaky() -> None:  # a repeating timer that raises keeps repeating
        ticks.append(1)
        if len(ticks) == 1:
            raise KeyError("first tick exploded")

    later = threading.Event()
    running.loop.run_after(0.01, broken)
    handle = running.loop.run_every(0.02, flaky)
    running.loop.run_after(0.05, later.set)
    assert later.wait(5)
    assert wait_until(lambda: len(ticks) >= 3, 5)
    handle.cancel()
    types = [r.exc_info[0] for r in caplog.records if r.exc_info]
    assert ValueError in types and KeyError in types
    assert "timer exploded" in caplog.text and "Traceback" in caplog.text
    assert running.loop.running


# -- fds -------------------------------------------------------------------------------


def test_fd_callback_runs_on_readiness_and_never_after_unregister(
    running: Running, socketpair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = socketpair
    calls: list[bytes] = []

    def on_readable(events: int) -> None:
        calls.append(a.recv(4096))

    token = running.call(lambda: running.loop.register(a.fileno(), on_readable, EV_READ))
    assert running.loop.registered == 1
    b.sendall(b"one")
    assert wait_until(lambda: calls == [b"one"], 5), calls
    running.call(lambda: running.loop.unregister(a.fileno(), token))
    assert running.loop.registered == 0
    b.sendall(b"two")
    time.sleep(0.1)
    running.call(lambda: None)  # the loop has polled since
    assert calls == [b"one"]


def test_event_fetched_in_the_same_turn_is_dropped_after_unregister(
    running: Running,
) -> None:
    # Two fds ready in one poll: whichever callback runs first unregisters the other,
    # whose already-fetched event must then be dropped (its fd number could be reused).
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        for a, _ in pairs:
            a.setblocking(False)
        calls: list[int] = []
        tokens: list[int] = [0, 0]

        def make(i: int) -> Callable[[int], None]:
            def on_readable(events: int) -> None:
                calls.append(i)
                pairs[i][0].recv(4096)
                other = 1 - i
                if tokens[other]:
                    running.loop.unregister(pairs[other][0].fileno(), tokens[other])
                    tokens[other] = 0

            return on_readable

        for _, b in pairs:
            b.sendall(b"x")  # both readable before they are registered

        def register_both() -> None:
            for i, (a, _) in enumerate(pairs):
                tokens[i] = running.loop.register(a.fileno(), make(i), EV_READ)

        running.call(register_both)
        assert wait_until(lambda: len(calls) >= 1, 5)
        time.sleep(0.1)
        running.call(lambda: None)
        assert len(calls) == 1, calls
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_failing_fd_callback_is_logged_and_the_loop_goes_on(
    running: Running,
    socketpair: tuple[socket.socket, socket.socket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="gevwire")
    a, b = socketpair
    calls: list[bytes] = []

    def on_readable(events: int) -> None:
        calls.append(a.recv(4096))
        raise OSError("callback exploded")

    running.call(lambda: running.loop.register(a.fileno(), on_readable, EV_READ))
    b.sendall(b"1")
    assert wait_until(lambda: len(calls) == 1, 5)
    b.sendall(b"2")
    assert wait_until(lambda: len(calls) == 2, 5)
    assert "callback exploded" in caplog.text and "Traceback" in caplog.text
    assert running.call(lambda: "alive") == "alive"


def test_after_events_run_once_after_every_event_of_the_turn_and_before_tasks(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gevwire")
    pairs = [socket.socketpair() for _ in range(3)]
    order: list[str] = []
    try:
        for a, _ in pairs:
            a.setblocking(False)

        def make(i: int) -> Callable[[int], None]:
            def on_readable(events: int) -> None:
                pairs[i][0].recv(4096)
                order.append(f"event {i}")
                if i == 0:
                    running.loop.after_events.append(lambda: order.append("after"))
                    running.loop.after_events.append(boom)
                    running.loop.call_soon(order.append, "task")

            return on_readable

        def boom() -> None:
            raise RuntimeError("after-events callback exploded")

        for _, b in pairs:
            b.sendall(b"x")  # all three readable before they are registered

        def register_all() -> None:
            for i, (a, _) in enumerate(pairs):
                running.loop.register(a.fileno(), make(i), EV_READ)

        running.call(register_all)
        assert wait_until(lambda: "task" in order, 5), order
        events = [entry for entry in order if entry.startswith("event")]
        assert len(events) == 3  # one turn: the three events came from one poll
        assert order[3:] == ["after", "task"]  # after every event, before the tasks
        assert "after-events callback exploded" in caplog.text
        assert running.call(lambda: running.loop.after_events) == []  # run once, cleared
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# -- run / stop ------------------------------------------------------------------------


def test_stop_from_another_thread_returns_run(running: Running) -> None:
    running.idle()  # asleep in poll(-1)
    running.loop.stop()
    running.thread.join(5)
    assert not running.thread.is_alive()
    assert not running.loop.running
    # A stopped loop can run again, and keeps what was queued meanwhile.
    ran = threading.Event()
    running.loop.call_soon(ran.set)
    again = threading.Thread(target=running.loop.run, daemon=True)
    again.start()
    assert ran.wait(5)
    running.loop.stop()
    again.join(5)
    assert not again.is_alive()
    running.loop.close()


def test_stop_from_a_task_and_from_a_timer(running: Running) -> None:
    running.loop.call_soon(running.loop.stop)
    running.thread.join(5)
    assert not running.thread.is_alive()
    again = threading.Thread(target=running.loop.run, daemon=True)
    again.start()
    assert wait_until(lambda: running.loop.running, 5)
    running.loop.run_after(0.05, running.loop.stop)
    again.join(5)
    assert not again.is_alive()
    running.loop.close()


def test_run_twice_and_close_while_running_raise(running: Running) -> None:
    with pytest.raises(RuntimeError):
        running.loop.run()  # from this thread, while the loop thread runs it
    with pytest.raises(RuntimeError):
        running.loop.close()
    running.stop()
    with pytest.raises(RuntimeError):
        running.loop.run()  # closed
