"""``Server(workers=N)`` and ``Supervisor``: forked worker processes over real loopback.

Every test bounds its waits and stops or kills what it started in ``finally``.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import recv_until_eof, wait_until

import gevwire
from gevwire.workers import Supervisor, WorkerControl, reserve_port

pytestmark = [
    pytest.mark.io,
    pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc/self"),
                       reason="needs fork() and /proc"),
    pytest.mark.timeout(60),
    # Python 3.12+ warns on fork() in a multi-threaded process; the restarts forked by
    # start()'s supervising thread are that (see gevwire.workers).
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parent.parent


# -- helpers ---------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead; it is just not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def _threads_of(pid: int) -> list[str]:
    """Name, state and kernel wait channel of each thread of ``pid`` (for failures)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        with open(f"{base}/stat") as f:
            stat = f.read()
        with open(f"{base}/wchan") as f:
            out.append(f"{stat.split(')')[0]}) {stat.rpartition(')')[2].split()[0]} "
                       f"{f.read()}")
    return out


def kill_quietly(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class ServerProcess:
    """A server run by ``python *args`` in a subprocess; stderr lines are collected."""

    def __init__(self, args: Sequence[str], *, cwd: str | Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 15.0) -> list[re.Match[str]]:
        """The first ``count`` matches of ``pattern`` in stderr lines (waits for them)."""
        regex = re.compile(pattern)

        def matches() -> list[re.Match[str]]:
            return [m for m in map(regex.search, list(self.lines)) if m]

        wait_until(lambda: len(matches()) >= count or self.proc.poll() is not None, timeout)
        found = matches()
        assert len(found) >= count, f"{pattern!r} x{count} not seen; output:\n{self.output}"
        return found[:count]

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit status (SIGKILL if it does not exit in time)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"no exit within {timeout}s; output:\n{self.output}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)


class WhoAmI(gevwire.Handler):
    """Replies ``"<pid> <parent pid>\\n"`` to anything."""

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return f"{os.getpid()} {os.getppid()}\n".encode()


def ask(address: tuple[Any, ...]) -> tuple[int, int]:
    """Connect, ask ``WhoAmI`` and return (pid, parent pid) of the serving process."""
    with socket.create_connection(address[:2], timeout=10) as sock:
        sock.sendall(b"?")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(64)
            assert chunk, "closed before the reply"
            reply += chunk
    pid, ppid = reply.split()
    return int(pid), int(ppid)


def assert_reaped(pids: Sequence[int]) -> None:
    """Every pid is gone and was reaped by this process (no zombie left)."""
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        assert not os.path.exists(f"/proc/{pid}"), f"{pid} still exists"


# -- Server(workers=N) -----------------------------------------------------------------


def test_connections_are_spread_over_worker_processes() -> None:
    server = gevwire.Server(WhoAmI(), address="127.0.0.1:0", workers=2)
    try:
        server.start()
        pids = server.stats()["pids"]
        assert len(pids) == 2 and os.getpid() not in pids
        assert all(parent_of(pid) == os.getpid() for pid in pids)
        answers = [ask(server.address) for _ in range(64)]
        assert {pid for pid, _ in answers} == set(pids)
        assert {ppid for _, ppid in answers} == {os.getpid()}
        assert server.address[1] != 0 and server.port == server.address[1]
    finally:
        server.stop()
    assert server.wait(0)
    assert server.stats()["pids"] == []
    assert_reaped(pids)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address[:2], timeout=5).close()


def test_a_killed_worker_is_restarted_and_serves(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gevwire")
    server = gevwire.Server(WhoAmI(), address="127.0.0.1:0", workers=2)
    seen: set[int] = set()
    try:
        server.start()
        first = server.stats()["pids"]
        seen.update(first)
        victim, survivor = first
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: len(server.stats()["pids"]) == 2
                          and victim not in server.stats()["pids"], 10)
        assert server.stats()["restarts"] == [1, 0]
        (replacement,) = set(server.stats()["pids"]) - {survivor}
        seen.add(replacement)
        assert not alive(victim)
        served: set[int] = set()

        def both_serve() -> bool:  # once the replacement listens, the kernel sends it some
            served.add(ask(server.address)[0])
            return served == {replacement, survivor}

        assert wait_until(both_serve, 10), (served, _threads_of(replacement))
        assert "was killed by SIGKILL" in caplog.text and "restarting in" in caplog.text
    finally:
        server.stop()
    assert server.wait(0)
    assert_reaped(sorted(seen))


def test_graceful_stop_delivers_pending_replies_in_every_worker() -> None:
    size = 4 << 20
    payload = bytes(range(256)) * (size // 256)

    class Big(gevwire.Handler):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            return payload

    server = gevwire.Server(Big(), address="127.0.0.1:0", workers=2)
    clients: list[socket.socket] = []
    stopper: threading.Thread | None = None
    try:
        server.start()
        for _ in range(8):  # likely on both workers; each one must flush before closing
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
            sock.settimeout(15)
            sock.connect(server.address)
            sock.sendall(b"go")
            clients.append(sock)
        heads = [sock.recv(1024) for sock in clients]  # every reply is on its way
        stopper = threading.Thread(target=server.stop, args=(15.0,), daemon=True)
        stopper.start()
        for sock, head in zip(clients, heads, strict=True):
            assert head + recv_until_eof(sock, limit=size) == payload
        assert server.wait(15)
    finally:
        for sock in clients:
            sock.close()
        server.stop()
        if stopper is not None:
            stopper.join(15)


def test_sigterm_to_the_parent_stops_every_worker() -> None:
    run = ServerProcess([str(ROOT / "examples" / "echo.py"), "--port", "0", "--workers", "2"])
    pids: list[int] = []
    try:
        listening = run.wait_for(r"\[(\d+)\] gevwire listening on \('127\.0\.0\.1', (\d+)\) "
                                 r"with 1 loop", count=2)
        pids = [int(m[1]) for m in listening]
        port = int(listening[0][2])
        assert len(set(pids)) == 2 and run.proc.pid not in pids
        assert all(parent_of(pid) == run.proc.pid for pid in pids)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"echo me")
            assert sock.recv(64) == b"echo me"
        assert run.stop() == 0, run.output
        assert wait_until(lambda: not any(alive(pid) for pid in pids), 5), run.output
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        run.close()
        kill_quietly([pid for pid in pids if alive(pid)])


RUN_DEFAULT_SIGNALS = """
import logging, os, signal, sys
# As an interactive shell leaves it: a pytest started in the background inherits SIGINT
# ignored, and Python keeps an inherited SIG_IGN.
signal.signal(signal.SIGINT, signal.default_int_handler)
logging.basicConfig(level=logging.INFO, format="[%(process)d] %(message)s")
import gevwire
gevwire.Server(gevwire.Handler(), address="127.0.0.1:0", workers=2).run()
print("run returned", file=sys.stderr)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_handles_default_stop_signals_as_a_graceful_stop(signum: int) -> None:
    run = ServerProcess(["-c", RUN_DEFAULT_SIGNALS])
    pids: list[int] = []
    try:
        listening = run.wait_for(r"\[(\d+)\] gevwire listening on .* with 1 loop", count=2)
        pids = [int(m[1]) for m in listening]
        run.proc.send_signal(signum)
        assert run.proc.wait(15) == 0, run.output
        assert "run returned" in run.output and "Traceback" not in run.output
        assert not any(alive(pid) for pid in pids)
    finally:
        run.close()
        kill_quietly([pid for pid in pids if alive(pid)])


def test_workers_stop_by_themselves_when_the_parent_is_killed() -> None:
    run = ServerProcess([str(ROOT / "examples" / "echo.py"), "--port", "0", "--workers", "2"])
    pids: list[int] = []
    try:
        listening = run.wait_for(r"\[(\d+)\] gevwire listening on .* with 1 loop", count=2)
        pids = [int(m[1]) for m in listening]
        run.proc.kill()  # no chance to stop anything: the workers read EOF on their pipe
        run.proc.wait(5)
        assert wait_until(lambda: not any(alive(pid) for pid in pids), 10), run.output
        assert "supervisor is gone" in run.output
    finally:
        run.close()
        kill_quietly([pid for pid in pids if alive(pid)])


def test_workers_validation() -> None:
    with pytest.raises(ValueError, match="workers"):
        gevwire.Server(WhoAmI(), address="127.0.0.1:0", workers=0)
    with pytest.raises(ValueError, match="TCP"):
        gevwire.Server(WhoAmI(), address="unix:/tmp/gevwire-never.sock", workers=2)
    server = gevwire.Server(WhoAmI(), address="127.0.0.1:0", workers=2)
    with pytest.raises(RuntimeError, match="worker processes"):
        server.run_after(1, print)
    with pytest.raises(RuntimeError, match="not listening"):
        server.address  # noqa: B018
    server.stop()  # never started: nothing to do, and it counts as stopped
    assert server.wait(0)
    with pytest.raises(RuntimeError):
        server.start()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_public_lifecycle_is_one_path_for_any_number_of_workers(workers: int) -> None:
    """``Server`` delegates to one runner chosen in ``__init__`` (loops here, or the
    supervisor of forked workers): the same sequence of public calls behaves alike,
    only ``stats()`` and where the loops live differ, as documented."""
    server = gevwire.Server(WhoAmI(), address="127.0.0.1:0", workers=workers)
    with pytest.raises(RuntimeError, match="not listening"):
        server.address  # noqa: B018
    with pytest.raises(RuntimeError, match="needs a started server"):
        server.connect("127.0.0.1:9")
    assert server.connections() == [] and server.connection_count == 0
    assert server.metrics_address is None and not server.wait(0)
    if workers == 1:
        server.run_after(60, print).cancel()  # the loops exist before start()
        assert len(server.loops) == 1
    else:
        with pytest.raises(RuntimeError, match="loops live in the worker processes"):
            server.run_after(60, print)
        assert server.loops == []
        assert server.stats() == {"workers": 2, "pids": [], "restarts": [0, 0]}
    try:
        assert server.start() is server
        with pytest.raises(RuntimeError, match="server is running; a server starts once"):
            server.start()
        pid, ppid = ask(server.address)
        stats = server.stats()
        if workers == 1:
            assert (pid, ppid) == (os.getpid(), os.getppid())
            assert stats["connections_total"] == 1 and len(stats["loops"]) == 1
            dialed = server.connect(f"127.0.0.1:{server.port}")
            assert wait_until(lambda: dialed in server.connections(), 5)
        else:
            assert ppid == os.getpid() and pid in stats["pids"] and len(stats["pids"]) == 2
            with pytest.raises(RuntimeError, match="needs a started server"):
                server.connect(f"127.0.0.1:{server.port}")  # no loop in this process
    finally:
        server.stop()
    assert server.wait(5)
    assert server.connection_count == 0
    if workers == 2:
        assert server.stats()["pids"] == [] and server.address[1] == server.port
    with pytest.raises(RuntimeError, match="server is stopped; a server starts once"):
        server.start()
    server.stop()  # again: nothing left to do
    server.run()  # stopped: returns at once
    assert server.wait(0)


def _answers(server: gevwire.Server) -> bool:
    try:
        ask(server.address)
    except (OSError, RuntimeError):  # not bound yet, or not accepting yet
        return False
    return True


@pytest.mark.parametrize("workers", [1, 2])
def test_run_in_a_thread_serves_until_stop_for_any_number_of_workers(workers: int) -> None:
    server = gevwire.Server(WhoAmI(), address="127.0.0.1:0", workers=workers)
    running = threading.Thread(target=server.run, daemon=True)
    running.start()
    try:
        assert wait_until(lambda: _answers(server), 15)
        assert running.is_alive()
    finally:
        server.stop()
        running.join(15)
    assert not running.is_alive() and server.wait(0)


def test_a_stop_while_workers_are_being_made_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop() from another thread while ``run()`` reserves the port still stops the
    server (the supervisor is made under the lock stop() takes), rather than finding
    it neither new nor supervised and leaving ``run()`` to serve on."""
    reserving = threading.Event()

    def slow_reserve_port(*args: Any) -> socket.socket:
        reserving.set()
        time.sleep(0.3)  # the window a stop() must not fall through
        return reserve_port(*args)

    monkeypatch.setattr("gevwire.server.reserve_port", slow_reserve_port)
    server = gevwire.Server(WhoAmI(), address="127.0.0.1:0", workers=2)
    running = threading.Thread(target=server.run, daemon=True)
    running.start()
    try:
        assert reserving.wait(10)
        server.stop()
        running.join(10)
        assert not running.is_alive(), "run() went on serving after stop()"
        assert server.wait(0) and server.stats()["pids"] == []
    finally:
        server.stop()
        running.join(10)


def test_platform_without_fork_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "fork")
    with pytest.raises(RuntimeError, match="fork"):
        gevwire.Server(WhoAmI(), address="127.0.0.1:0", workers=2)


def test_a_taken_port_fails_in_the_parent_before_any_fork() -> None:
    with socket.socket() as taken:  # bound without SO_REUSEPORT: nobody may share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = gevwire.Server(WhoAmI(), address=f"127.0.0.1:{taken.getsockname()[1]}",
                                workers=2)
        with pytest.raises(OSError):
            server.start()
        assert server.wait(0)


# -- Supervisor ------------------------------------------------------------------------


def _crash_after_ready(control: WorkerControl) -> None:
    control.ready()
    os._exit(3)


def test_a_crash_loop_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gevwire")
    supervisor = Supervisor(_crash_after_ready, 1, backoff=0.05, max_backoff=0.2,
                            stable_after=60)
    try:
        supervisor.start()
        time.sleep(1.2)
        restarts = supervisor.restarts[0]
    finally:
        supervisor.stop(1)
    # delays 0.05, 0.1, 0.2, 0.2, ...: about 6 restarts in 1.2 s, not hundreds
    assert 3 <= restarts <= 9, restarts
    delays = [float(d) for d in re.findall(r"restarting in ([\d.]+)s", caplog.text)]
    assert delays[:4] == [0.05, 0.1, 0.2, 0.2]
    assert "exited with code 3" in caplog.text


def test_a_worker_that_exits_cleanly_is_not_replaced() -> None:
    supervisor = Supervisor(lambda control: control.ready(), 2)
    supervisor.start()
    try:
        assert supervisor.wait(10)  # none left: the supervisor is done
        assert supervisor.restarts == [0, 0] and supervisor.pids == []
    finally:
        supervisor.stop()


def _fail_to_start(control: WorkerControl) -> None:
    if control.index == 1:
        raise ValueError("no config for worker 1")
    control.ready()
    control.wait_for_stop()


def test_a_worker_failing_to_start_fails_start_and_stops_the_others() -> None:
    supervisor = Supervisor(_fail_to_start, 3)
    with pytest.raises(RuntimeError, match="worker 1 failed to start: ValueError: no config"):
        supervisor.start()
    assert supervisor.wait(0)
    assert supervisor.pids == []


def test_stop_timeout_reaches_the_workers_and_stragglers_are_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gevwire.workers.STOP_GRACE", 0.3)

    def stubborn(control: WorkerControl) -> None:
        control.ready()
        timeout = control.wait_for_stop()
        if timeout == 0.25:
            time.sleep(60)  # ignores its stop: killed after timeout + grace

    supervisor = Supervisor(stubborn, 2)
    supervisor.start()
    pids = supervisor.pids
    try:
        started = time.monotonic()
        supervisor.stop(0.25)
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        kill_quietly([pid for pid in pids if alive(pid)])
    assert_reaped(pids)


# -- on_start: per-process set-up --------------------------------------------------------

_TICKS: list[int] = []  # per process: forked workers each start with their own copy


class Ticks(gevwire.Handler):
    """Replies ``"<pid> <ticks>\\n"``: how often this process's ``run_every`` fired."""

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return f"{os.getpid()} {len(_TICKS)}\n".encode()


def _start_ticking(server: gevwire.Server) -> None:
    assert server.connection_count == 0 and server.port != 0  # serving already
    server.run_every(0.02, lambda: _TICKS.append(os.getpid()))


def test_on_start_runs_in_every_worker_and_its_timers_tick_there() -> None:
    server = gevwire.Server(Ticks(), address="127.0.0.1:0", workers=2,
                            on_start=_start_ticking)
    try:
        server.start()
        pids = set(server.stats()["pids"])
        time.sleep(0.3)
        seen: dict[int, int] = {}
        deadline = time.monotonic() + 10
        while set(seen) != pids and time.monotonic() < deadline:
            with socket.create_connection(server.address[:2], timeout=10) as sock:
                sock.sendall(b"?")
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(64)
                    assert chunk
                    reply += chunk
            pid, ticks = map(int, reply.split())
            seen[pid] = ticks
        assert set(seen) == pids  # both workers answered ...
        assert all(ticks > 0 for ticks in seen.values())  # ... and both have ticked
        assert _TICKS == []  # never in the parent
    finally:
        server.stop()
    assert server.wait(10)


def test_on_start_runs_once_in_a_single_process_server() -> None:
    calls: list[gevwire.Server] = []
    server = gevwire.Server(Ticks(), address="127.0.0.1:0", on_start=calls.append)
    with server:
        assert calls == [server]


def test_on_start_failure_fails_start_and_stops_the_server() -> None:
    def broken(server: gevwire.Server) -> None:
        raise RuntimeError("set-up failed")

    server = gevwire.Server(Ticks(), address="127.0.0.1:0", on_start=broken)
    with pytest.raises(RuntimeError, match="set-up failed"):
        server.start()
    assert server.wait(10)


# -- liveness: a worker stuck in a handler ------------------------------------------------


class Sleepy(WhoAmI):
    """``WhoAmI``, but ``sleep`` blocks the loop for a minute (a handler that waits)."""

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        if bytes(frame).startswith(b"sleep"):
            time.sleep(60)
        return super().on_message(conn, frame)


def stall_one_worker(address: tuple[Any, ...]) -> tuple[socket.socket, int]:
    """Stall the worker that serves a new connection; (that connection, its pid)."""
    sock = socket.create_connection(address[:2], timeout=10)
    sock.sendall(b"?")
    pid = int(sock.recv(64).split()[0])
    sock.sendall(b"sleep")
    return sock, pid


def test_a_worker_whose_loop_stops_answering_is_killed_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A loop stuck in a handler keeps its worker's listener open: it would keep taking
    its share of new connections and answer none (issue: 20 of 40 unanswered).  Its
    heartbeat stops, and after ``worker_timeout`` the supervisor kills and restarts it."""
    caplog.set_level(logging.INFO, logger="gevwire")
    server = gevwire.Server(Sleepy(), address="127.0.0.1:0", workers=2, worker_timeout=1.0)
    server.start()
    pids = server.stats()["pids"]
    try:
        sock, stuck = stall_one_worker(server.address)
        with sock:
            started = time.monotonic()
            assert wait_until(lambda: not alive(stuck), 10), _threads_of(stuck)
            took = time.monotonic() - started
            assert wait_until(lambda: sum(server.stats()["restarts"]) == 1
                              and len(server.stats()["pids"]) == 2, 10)
            assert 0.9 < took < 5, took
        # Every new connection is answered, by the two live workers.
        answers = {ask(server.address)[0] for _ in range(20)}
        assert stuck not in answers and answers <= set(server.stats()["pids"])
        assert "sent no heartbeat" in caplog.text
    finally:
        pids = list({*pids, *server.stats()["pids"]})
        server.stop(1.0)
        assert server.wait(15)
        kill_quietly([pid for pid in pids if alive(pid)])


def test_a_graceful_stop_is_bounded_when_a_worker_is_stuck() -> None:
    """Issue: with a worker stuck in a handler a stop took 10.2 s.  The stuck worker ends
    by its own timer at the stop timeout plus STOP_GRACE (1 s)."""
    server = gevwire.Server(Sleepy(), address="127.0.0.1:0", workers=2, worker_timeout=None)
    server.start()
    pids = server.stats()["pids"]
    try:
        sock, stuck = stall_one_worker(server.address)
        with sock:
            time.sleep(0.2)  # the handler is asleep
            started = time.monotonic()
            server.stop(0.5)
            assert server.wait(15)
            took = time.monotonic() - started
        assert took < 3.5, took  # 0.5 + 1 s grace, and reaping
        assert not alive(stuck)
    finally:
        kill_quietly([pid for pid in pids if alive(pid)])


_STALLING_SERVER = """
import logging, os, re, sys, time
import gevwire

logging.basicConfig(level=logging.INFO, format="[%(process)d] %(message)s")


class Stall(gevwire.Handler):
    def on_message(self, conn, frame):
        if frame.startswith(b"sleep"):
            time.sleep(120)  # the loop waits; the GIL is free
        elif frame.startswith(b"regex"):
            re.match(r"(a+)+b", "a" * 64)  # holds the GIL for ever
        return b"%d\\n" % os.getpid()


timeout = float(sys.argv[1]) if sys.argv[1] != "none" else None
gevwire.Server(Stall(), address="127.0.0.1:0", workers=2, worker_timeout=timeout).run()
"""


@pytest.mark.parametrize(("stall", "worker_timeout"), [("sleep", "none"), ("regex", "2")])
def test_a_stuck_worker_does_not_outlive_a_killed_supervisor(
    stall: str, worker_timeout: str
) -> None:
    """Issue: after SIGKILL of the supervisor a worker stuck in a handler was alive 30 s
    later.  ``sleep``: the worker reads EOF, and its graceful stop is bounded by its own
    timer (5 + 1 s).  ``regex``: the handler holds the GIL, so the worker cannot even
    read its pipe; the timer its main thread keeps pushing back ends it within
    ``worker_timeout`` (+ a heartbeat interval)."""
    run = ServerProcess(["-c", _STALLING_SERVER, worker_timeout])
    pids: list[int] = []
    try:
        listening = run.wait_for(r"\[(\d+)\] gevwire listening on \('[\d.]+', (\d+)\)", count=2)
        pids = [int(m[1]) for m in listening]
        address = ("127.0.0.1", int(listening[0][2]))
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"?")
            stuck = int(sock.recv(64))
            sock.sendall(stall.encode())
            time.sleep(0.3)  # the handler is in its stall
            run.proc.kill()
            run.proc.wait(5)
            started = time.monotonic()
            assert wait_until(lambda: not any(alive(pid) for pid in pids), 15), (
                run.output, _threads_of(stuck) if alive(stuck) else "")
            took = time.monotonic() - started
        assert took < 8, took  # sleep: 5 s stop + 1 s grace; regex: 2 + 0.5 s
    finally:
        run.close()
        kill_quietly([pid for pid in pids if alive(pid)])


def test_worker_timeout_validation() -> None:
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="worker_timeout"):
            gevwire.Server(WhoAmI(), address="127.0.0.1:0", workers=2, worker_timeout=bad)
        with pytest.raises(ValueError, match="worker_timeout"):
            Supervisor(lambda control: None, 1, worker_timeout=bad)
