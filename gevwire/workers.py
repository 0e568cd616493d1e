"""``Supervisor``: worker processes forked from one parent, kept running, stopped together.

Under the GIL one process uses one core, so ``Server(workers=N)`` forks N processes, each
with its own ``SO_REUSEPORT`` listener on the same port: the kernel spreads incoming
connections over them.  The parent only supervises: it restarts a worker that crashes
(with back-off), asks every worker for a graceful stop, and reaps each one.

Pipes, not signals, carry the parent's word to a worker.  Each worker gets a *status*
pipe (worker → parent: "listening" or the start-up error, then a heartbeat byte every
``heartbeat_interval`` while its event loops answer) and a *control* pipe (parent →
worker: ``"<timeout>\\n"`` = stop gracefully within that many seconds).  The parent holds
the control pipe's only write end, so if the parent dies, even by ``SIGKILL``, every
worker reads EOF and stops.  A worker also stops gracefully on ``SIGTERM`` / ``SIGINT``
sent to it (Ctrl-C reaches the whole process group).

A stop is bounded whatever the worker's code does: once asked, the worker arms a real
time timer (``ITIMER_REAL``, its ``SIGALRM`` left at the default action), so the kernel
ends it ``STOP_GRACE`` seconds past the stop timeout even if a handler never returns or
holds the GIL: workers never outlive their supervisor by more than that.  While running,
a worker whose heartbeat stops for ``worker_timeout`` seconds (a loop stuck in a handler
keeps getting its share of new connections and answers none) is killed and restarted,
as gunicorn does.

Fork and threads: ``fork()`` copies only the calling thread, so a lock held by another
thread at that instant stays locked forever in the child.  The parent therefore runs no
event loop (the server's loops are made in each worker after the fork), and
:meth:`Supervisor.run` supervises in the calling thread, so a parent that ``run()``\\ s
has one thread.  :meth:`Supervisor.start` returns at once and supervises from a
background thread, which then also forks the restarts: keep the parent's other threads
away from locks that workers need (the handler's, for instance).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn

__all__ = ["Supervisor", "WorkerControl", "check_workers_supported", "reserve_port"]

log = logging.getLogger("gevwire")

#: Seconds a stopping worker gets beyond its stop timeout before it is killed (by its
#: own timer, and by the supervisor a second later).
STOP_GRACE = 1.0
#: Seconds between a worker's heartbeats (each after every loop answered).
HEARTBEAT_INTERVAL = 1.0
#: Seconds to wait for a killed worker to be reaped before giving up on it.
KILL_WAIT = 5.0
#: Timeout of a graceful stop the parent did not specify (a signal, or the parent died).
DEFAULT_STOP_TIMEOUT = 5.0

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_TICK = 0.05  # supervision poll interval


def check_workers_supported() -> None:
    """Raise ``RuntimeError`` unless this platform has ``fork()`` and ``SO_REUSEPORT``."""
    if not hasattr(os, "fork") or not hasattr(socket, "SO_REUSEPORT"):
        raise RuntimeError(
            "workers > 1 needs os.fork() and SO_REUSEPORT (Linux, macOS, BSD); "
            "use workers=1 here"
        )


def reserve_port(family: int, address: Any) -> socket.socket:
    """Bind, but never listen on, a ``SO_REUSEPORT`` socket at ``address``.

    The socket holds the port for the workers' lifetime: with port 0 the kernel picks
    the port once and every worker binds that port; a worker restarting later finds it
    still free for it (and still taken for any program without ``SO_REUSEPORT``).  Linux
    hands connections only to the *listening* sockets of a port group, so this one never
    receives any.  On macOS and the BSDs ``SO_REUSEPORT`` shares a port but may not
    spread connections evenly over the workers.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class WorkerControl:
    """A worker's end of its pipes to the supervisor, handed to the worker's target.

    Created in the worker right after fork; it installs ``SIGTERM`` / ``SIGINT``
    handlers there that only wake :meth:`wait_for_stop` (a signal wakes the select
    through ``signal.set_wakeup_fd``, so no lock is taken inside a handler).
    """

    def __init__(self, index: int, control_fd: int, status_fd: int,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 worker_timeout: float | None = None) -> None:
        #: The worker's slot, ``0 .. workers - 1`` (stays the same across restarts).
        self.index = index
        self._control_fd = control_fd
        self._status_fd = status_fd
        if status_fd >= 0:
            os.set_blocking(status_fd, False)  # a heartbeat never waits for the reader
        self._ready_sent = False
        self.heartbeat_interval = heartbeat_interval
        #: While serving, the process ends by its own timer if this thread cannot run
        #: for this many seconds (a handler holding the GIL): see wait_for_stop.
        self.worker_timeout = worker_timeout
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _ignore_signal)

    def ready(self) -> None:
        """Tell the supervisor this worker is serving (its ``start()`` may return)."""
        if not self._ready_sent:
            self._ready_sent = True
            self._send(b"ok\n")

    def _send(self, message: bytes) -> None:
        if self._status_fd >= 0:
            try:
                os.write(self._status_fd, message)
            except BlockingIOError:
                pass  # the supervisor is behind on reading: a heartbeat less
            except OSError:  # the supervisor is gone: the control pipe says so too
                os.close(self._status_fd)
                self._status_fd = -1

    def _failed(self, error: BaseException) -> None:
        if not self._ready_sent:
            self._ready_sent = True
            self._send(f"error {type(error).__name__}: {error}\n".encode(errors="replace"))

    def wait_for_stop(self, alive: Callable[[], bool] | None = None) -> float:
        """Block until asked to stop; return the seconds the stop may take.

        Asked means: the supervisor wrote a timeout, the supervisor is gone (EOF), or
        this process got ``SIGTERM`` / ``SIGINT``.  Meanwhile a heartbeat goes to the
        supervisor every ``heartbeat_interval`` seconds for which ``alive()`` (say,
        "every event loop ran a task since the last call") is true, and with a
        ``worker_timeout`` a real time timer is pushed back as often: should this
        thread not run for that long (a handler holding the GIL, which also keeps it
        from reading the supervisor's EOF), ``SIGALRM`` at its default action ends the
        process.  On return the stop's deadline is armed (see the module docstring).
        """
        poller = select.poll()
        poller.register(self._control_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        interval_ms = self.heartbeat_interval * 1000
        next_beat = time.monotonic()
        if self.worker_timeout is not None:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        while True:
            now = time.monotonic()
            if now >= next_beat:
                if self.worker_timeout is not None:
                    signal.setitimer(signal.ITIMER_REAL,
                                     self.worker_timeout + self.heartbeat_interval)
                if self._ready_sent and (alive is None or alive()):
                    self._send(b".")
                next_beat = now + self.heartbeat_interval
            for fd, _ in poller.poll(min(interval_ms, (next_beat - now) * 1000)):
                if fd == self._wake_r:
                    log.info("worker %d (pid %d): signal received, stopping", self.index,
                             os.getpid())
                    return self._stopping(DEFAULT_STOP_TIMEOUT)
                data = os.read(self._control_fd, 64)
                if not data:
                    log.warning("worker %d (pid %d): supervisor is gone, stopping",
                                self.index, os.getpid())
                    return self._stopping(DEFAULT_STOP_TIMEOUT)
                try:
                    return self._stopping(float(data.split(b"\n", 1)[0]))
                except ValueError:
                    return self._stopping(DEFAULT_STOP_TIMEOUT)

    def _stopping(self, timeout: float) -> float:
        """Arm the stop's deadline: ``SIGALRM`` at its default action ends the process
        ``STOP_GRACE`` seconds past ``timeout``, by the kernel, GIL or not."""
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.0) + STOP_GRACE)
        return timeout


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """The byte written to the wakeup fd does the work (see :class:`WorkerControl`)."""


@dataclass
class _Slot:
    index: int
    pid: int = 0
    started: float = 0.0
    control_fd: int = -1  # parent's write end of the worker's control pipe
    status_fd: int = -1  # parent's read end of the worker's status pipe
    status: bytes = b""  # the worker's first line, until it is whole
    ready: bool = False
    last_beat: float = 0.0  # when the worker last said it was alive (or started)
    stuck: bool = False  # killed for a missed heartbeat
    restarts: int = 0
    failures: int = 0  # crashes in a row, each within ``stable_after`` of its start
    restart_at: float | None = None


class Supervisor:
    """Runs ``target(control)`` in ``count`` forked worker processes and keeps them up.

    A worker that exits non-zero or is killed by a signal is forked again after a
    back-off: ``backoff`` seconds, doubled for each further crash that comes within
    ``stable_after`` seconds of its start, at most ``max_backoff``; a worker that exits
    with 0 is not replaced (when none is left, the supervisor stops).  ``target`` must
    call ``control.ready()`` once serving and return when it is done; an exception in
    it exits the worker with 1.  ``reservation`` is a socket the parent holds for the
    workers (see :func:`reserve_port`): closed in each worker, and in the parent on stop.
    ``worker_timeout``: a serving worker whose heartbeat (see
    :meth:`WorkerControl.wait_for_stop`) stops for this many seconds is killed and
    restarted (None: never).
    """

    def __init__(
        self,
        target: Callable[[WorkerControl], None],
        count: int,
        *,
        reservation: socket.socket | None = None,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        stable_after: float = 2.0,
        start_timeout: float = 30.0,
        worker_timeout: float | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        if worker_timeout is not None and not worker_timeout > 0:
            raise ValueError(f"worker_timeout must be positive or None, not {worker_timeout}")
        check_workers_supported()
        self._target = target
        self._slots = [_Slot(i) for i in range(count)]
        self._reservation = reservation
        self._address = reservation.getsockname() if reservation is not None else None
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.start_timeout = start_timeout
        self.worker_timeout = worker_timeout
        # fds of the parent that a new worker must close (others' pipes, pending ready ends)
        self._parent_fds: set[int] = set()
        self._state = "new"  # new → running → stopped
        self._lock = threading.Lock()
        self._stop_requested = False
        self._stop_timeout = DEFAULT_STOP_TIMEOUT
        self._stop_sent = False
        self._kill_at = 0.0
        self._killed_at: float | None = None
        self._monitor_ident: int | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopped = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Fork the workers, return once each is serving; supervise from a thread.

        Raises ``RuntimeError`` (after stopping the others) if a worker fails to start.
        """
        self._start_workers()
        self._monitor_ident = None  # until the thread below takes over
        self._thread = threading.Thread(target=self._supervise, name="gevwire-supervisor",
                                        daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Start (if needed) and supervise in this thread until every worker has stopped.

        In the main thread, ``SIGINT`` and ``SIGTERM`` left at their defaults are handled
        as :meth:`stop` while this runs.
        """
        if self._state != "new":
            try:
                while not self.wait(0.5):
                    pass
            except KeyboardInterrupt:
                self.stop(self._stop_timeout)
            return
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in _STOP_SIGNALS:
                current = signal.getsignal(signum)
                if current in (signal.SIG_DFL, signal.default_int_handler):
                    previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self._start_workers()
            self._supervise()
        finally:
            for signum, previous_handler in previous.items():
                signal.signal(signum, previous_handler)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Ask every worker to stop within ``timeout`` seconds and wait until all exited.

        A worker still running ``timeout`` + 5 s later is killed.  Safe from any thread
        and more than once; from the supervising thread itself (a signal handler during
        :meth:`run`) it returns at once and :meth:`run` returns once all have exited.
        """
        with self._lock:
            if self._state == "new":
                self._state = "stopped"
                self._stopped.set()
                return
            if not self._stop_requested:
                self._stop_timeout = timeout
                self._stop_requested = True
        if threading.get_ident() == self._monitor_ident:
            return
        self._wake.set()
        self._stopped.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every worker has exited and been reaped; False on timeout."""
        return self._stopped.wait(timeout)

    # -- information -------------------------------------------------------------------

    @property
    def address(self) -> Any:
        """The reserved address (``(host, port)`` for IPv4), also after :meth:`stop`."""
        if self._address is None:
            raise RuntimeError("no port reservation")
        return self._address

    @property
    def pids(self) -> list[int]:
        """Pids of the live workers, in slot order."""
        return [slot.pid for slot in self._slots if slot.pid]

    @property
    def restarts(self) -> list[int]:
        """How many times each slot's worker was restarted."""
        return [slot.restarts for slot in self._slots]

    def stats(self) -> dict[str, Any]:
        """``{"workers": count, "pids": [...], "restarts": [...]}`` (a snapshot)."""
        return {"workers": len(self._slots), "pids": self.pids, "restarts": self.restarts}

    # -- parent side -------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping the workers", signal.Signals(signum).name)
        self.stop(self._stop_timeout)

    def _start_workers(self) -> None:
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"supervisor is {self._state}; it starts once")
            self._state = "running"
        self._monitor_ident = threading.get_ident()  # no other thread supervises yet
        error: str | None = None
        try:
            for slot in self._slots:
                self._spawn(slot)
            deadline = time.monotonic() + self.start_timeout
            while error is None:
                starting = [slot for slot in self._slots if not slot.ready]
                if not starting:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    error = f"workers {[slot.index for slot in starting]} did not " \
                            f"start within {self.start_timeout:g}s"
                    break
                poller = select.poll()
                for slot in starting:
                    poller.register(slot.status_fd, select.POLLIN)
                poller.poll(min(left, _TICK * 4) * 1000)
                for slot in starting:
                    failure = self._read_status(slot, time.monotonic())
                    if failure is not None:
                        error = f"worker {slot.index} failed to start: {failure}"
                        break
        except BaseException:
            error = error or "interrupted"
            raise
        finally:
            if error is not None:
                self._stop_requested = True
                self._supervise()
        if error is not None:
            raise RuntimeError(error)

    def _read_status(self, slot: _Slot, now: float) -> str | None:
        """Take what ``slot``'s worker wrote on its status pipe: its first line, then
        heartbeats.  Returns why it failed to start, once it says so or exits unready."""
        fd = slot.status_fd
        if fd < 0:
            return None
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return None
        except OSError as exc:
            data = b""
            log.debug("worker %d: status pipe: %s", slot.index, exc)
        if not data:  # EOF: the worker is exiting (reaped by _reap)
            self._close_parent_fd(fd)
            slot.status_fd = -1
            return None if slot.ready else "it exited before it was serving"
        if slot.ready:
            slot.last_beat = now
            return None
        slot.status += data
        if b"\n" not in slot.status:
            return None
        line = slot.status.partition(b"\n")[0]
        slot.status = b""
        if line != b"ok":
            text = line.decode(errors="replace").removeprefix("error ").strip()
            return text or "it exited before it was serving"
        slot.ready = True
        slot.last_beat = now
        return None

    def _spawn(self, slot: _Slot) -> None:
        """Fork ``slot``'s worker."""
        control_r, control_w = os.pipe()
        status_r, status_w = os.pipe()
        # Block stop signals across fork: the parent records the pid before any handler
        # runs, and the child replaces the handlers before any is delivered to it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                inherited = [*self._parent_fds, control_w, status_r]
                self._child(slot.index, control_r, status_w, inherited, mask)
            os.set_blocking(status_r, False)
            slot.pid = pid
            slot.started = slot.last_beat = time.monotonic()
            slot.control_fd = control_w
            slot.status_fd = status_r
            slot.status = b""
            slot.ready = slot.stuck = False
            slot.restart_at = None
            self._parent_fds.add(control_w)
            self._parent_fds.add(status_r)
        except BaseException:
            for fd in (control_w, status_r):
                os.close(fd)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for fd in (control_r, status_w):
                os.close(fd)
        log.debug("worker %d started (pid %d)", slot.index, pid)

    def _close_parent_fd(self, fd: int) -> None:
        if fd in self._parent_fds:
            self._parent_fds.discard(fd)
            os.close(fd)

    def _supervise(self) -> None:
        """Reap, restart and stop workers until none is left (the monitor's loop)."""
        self._monitor_ident = threading.get_ident()
        try:
            while True:
                now = time.monotonic()
                for slot in self._slots:
                    if slot.pid:
                        failure = self._read_status(slot, now)
                        if failure is not None:
                            log.warning("worker %d (pid %d) failed to start: %s",
                                        slot.index, slot.pid, failure)
                self._reap(now)
                if self._stop_requested:
                    if self._stop_step(now):
                        break
                else:
                    self._kill_stuck(now)
                    self._restart_due(now)
                    if not any(s.pid or s.restart_at is not None for s in self._slots):
                        log.info("every worker has exited")
                        break
                self._wake.wait(_TICK)
                self._wake.clear()
        except BaseException:
            log.exception("supervisor failed; stopping the workers")
            self._kill_all()
            raise
        finally:
            self._finish()

    def _reap(self, now: float) -> None:
        for slot in self._slots:
            if not slot.pid:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: its status is lost
                pid, status = slot.pid, 1 << 8
            if pid:
                self._exited(slot, os.waitstatus_to_exitcode(status), now)

    def _kill_stuck(self, now: float) -> None:
        """Kill each worker whose heartbeat stopped for ``worker_timeout`` (it is then
        restarted like a crashed one)."""
        timeout = self.worker_timeout
        if timeout is None:
            return
        for slot in self._slots:
            if not slot.pid or slot.stuck:
                continue
            limit = timeout if slot.ready else max(timeout, self.start_timeout)
            silent = now - slot.last_beat
            if silent > limit:
                log.error("worker %d (pid %d) sent no heartbeat for %.1fs (a loop stuck in "
                          "a handler?): killing it", slot.index, slot.pid, silent)
                slot.stuck = True
                try:
                    os.kill(slot.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _exited(self, slot: _Slot, code: int, now: float) -> None:
        pid, slot.pid = slot.pid, 0
        self._close_parent_fd(slot.control_fd)
        slot.control_fd = -1
        self._close_parent_fd(slot.status_fd)
        slot.status_fd = -1
        if self._stop_requested:
            log.debug("worker %d (pid %d) %s", slot.index, pid, _describe(code))
            return
        if code == 0:
            log.info("worker %d (pid %d) exited; not restarting it", slot.index, pid)
            return
        uptime = now - slot.started
        if uptime >= self.stable_after:
            slot.failures = 0
        delay = min(self.max_backoff, self.backoff * 2 ** slot.failures)
        slot.failures += 1
        slot.restart_at = now + delay
        log.warning("worker %d (pid %d) %s after %.1fs; restarting in %.2fs", slot.index, pid,
                    _describe(code), uptime, delay)

    def _restart_due(self, now: float) -> None:
        for slot in self._slots:
            if slot.restart_at is None or slot.restart_at > now:
                continue
            # Counted before the new pid shows: a reader of stats() that sees the new
            # worker also sees its restart.
            slot.restarts += 1
            try:
                self._spawn(slot)
            except OSError as exc:
                slot.restarts -= 1
                slot.restart_at = now + self.max_backoff
                log.error("cannot fork worker %d: %s; retrying in %.1fs", slot.index, exc,
                          self.max_backoff)
                continue
            log.info("worker %d restarted (pid %d)", slot.index, slot.pid)

    def _stop_step(self, now: float) -> bool:
        """One step of stopping; True once there is nothing left to wait for."""
        live = [slot for slot in self._slots if slot.pid]
        if not self._stop_sent:
            self._stop_sent = True
            # (A worker's own timer ends it at timeout + STOP_GRACE: see WorkerControl.)
            self._kill_at = now + self._stop_timeout + STOP_GRACE + 1.0
            message = f"{self._stop_timeout!r}\n".encode()
            for slot in self._slots:
                slot.restart_at = None
            for slot in live:
                try:
                    os.write(slot.control_fd, message)
                except OSError:
                    pass  # already gone: reaped on the next step
        if not live:
            return True
        if self._killed_at is None and now >= self._kill_at:
            log.warning("workers %s did not stop within %.1fs; killing them",
                        [slot.pid for slot in live], self._stop_timeout + STOP_GRACE + 1.0)
            self._kill_all()
            self._killed_at = now
        elif self._killed_at is not None and now >= self._killed_at + KILL_WAIT:
            log.error("workers %s were killed but never exited", [slot.pid for slot in live])
            return True
        return False

    def _kill_all(self) -> None:
        for slot in self._slots:
            if slot.pid:
                try:
                    os.kill(slot.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _finish(self) -> None:
        for fd in list(self._parent_fds):
            self._close_parent_fd(fd)
        if self._reservation is not None:
            self._reservation.close()
        with self._lock:
            self._state = "stopped"
        self._monitor_ident = None
        self._stopped.set()

    # -- worker side -------------------------------------------------------------------

    def _child(
        self, index: int, control_fd: int, status_fd: int, inherited: list[int],
        mask: set[Any],
    ) -> NoReturn:
        """The forked worker: never returns into the parent's code (``os._exit``)."""
        code = 1
        control: WorkerControl | None = None
        try:
            for fd in inherited:
                if fd >= 0:
                    os.close(fd)
            if self._reservation is not None:
                self._reservation.close()
            timeout = self.worker_timeout
            control = WorkerControl(
                index, control_fd, status_fd, worker_timeout=timeout,
                heartbeat_interval=HEARTBEAT_INTERVAL if timeout is None
                else min(HEARTBEAT_INTERVAL, timeout / 4))
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._target(control)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            log.exception("worker %d (pid %d) failed", index, os.getpid())
            if control is not None:
                control._failed(exc)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code)
