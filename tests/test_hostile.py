"""Hostile peers and faults (issue 7): the server stays up and bounded while peers misbehave.

Every case runs a *control* client beside the hostile ones: a well-behaved peer that
keeps sending numbered, pipelined frames and checks that each reply is exactly its
request, in order.  Each case then checks that the server is still up (the control is
served to the end), that the hostile connections are gone, and that this process's open
fds and resident memory (the server runs here, in loop threads) are back near their
baseline.  Where a case needs a process of its own (``RLIMIT_NOFILE`` lowered, or a load
generator on the other core), it is a child process started from here.

Sizes and durations are bounded so that the whole module runs in well under a minute on
two cores; ``GEVWIRE_HOSTILE_CYCLES`` sets the count of case 9 (see there).

Hostile cases that need another set-up live beside the code they test: a relaying
handler's slow peer (``test_server.py``), a trickled PROXY header
(``test_server_proxy.py``), RESP error replies holding CR / LF
(``test_resp_codec.py``, ``test_redis_example.py``) and workers stuck in a handler
(``test_workers.py``).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import os
import random
import select
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest
from conftest import (
    ServeFn,
    fd_count,
    peer_closed,
    raise_nofile_limit,
    recv_exactly,
    set_linger_reset,
    wait_until,
)

import gevwire
import gevwire._socket_io
import gevwire.connection
from gevwire import ConnectionClosed, FrameError, FrameTimeout, FrameTooLarge, WriteBufferFull
from gevwire import codecs as gcodecs
from gevwire.codecs.resp import RespCodec
from gevwire.ringbuffer import DEFAULT_POOL

pytestmark = [pytest.mark.timeout(120), pytest.mark.io]

KiB = 1 << 10
MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent

# -- measuring ---------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _status_kib(field: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def rss(pid: int | str = "self") -> int:
    """Resident set size in bytes (``VmRSS``)."""
    return _status_kib("VmRSS", pid) * KiB


def peak_rss() -> int:
    """Peak resident set size since the last :func:`reset_peak_rss` (``VmHWM``)."""
    return _status_kib("VmHWM") * KiB


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: ``5`` to ``clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def thread_cpu(tid: int, pid: int | str = "self") -> float:
    """CPU seconds (user + system) used by one thread, from ``/proc/<pid>/task/<tid>``.

    ``time.thread_time`` only sees the calling thread; the loop runs in another.
    """
    with open(f"/proc/{pid}/task/{tid}/stat") as stat:
        data = stat.read()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def loop_tid(loop: gevwire.EventLoop) -> int:
    """The native thread id of ``loop``'s thread (asked on the loop itself)."""
    box: list[int] = []
    done = threading.Event()

    def ask() -> None:
        box.append(threading.get_native_id())
        done.set()

    loop.call_soon(ask)
    assert done.wait(5), "loop did not run a task"
    return box[0]


_LIBC = ctypes.CDLL(None)


def trimmed_rss() -> int:
    """RSS after a full collection and ``malloc_trim(0)``: freed memory that glibc keeps
    for reuse (arenas of threads, the heap's top) is not a leak, so it is given back
    before measuring."""
    gc.collect()
    _LIBC.malloc_trim(0)
    return rss()


class Baseline:
    """Open fds and RSS now; :meth:`check` waits for fds to return and bounds RSS growth.

    RSS is taken after ``malloc_trim`` (see :func:`trimmed_rss`).  Two kinds of retention
    are by design, not leaks: the buffer pool keeps bounded storage for reuse (its bytes
    are reported beside the growth), and a loop thread's glibc arena keeps a few freed
    MiB after its first large buffers (so cases that make such buffers take the baseline
    after a first round of the same work).
    """

    def __init__(self, server: gevwire.Server | None = None) -> None:
        self.fds = fd_count()
        self.rss = trimmed_rss()
        # The buffer pools: the default one, and the loops' own under a memory budget.
        self.pools = [DEFAULT_POOL] + [
            loop.pool for loop in (server.loops if server is not None else ())
            if loop.pool is not DEFAULT_POOL]
        self.pool = self.retained()
        # An io_uring loop owns a provided-buffer ring (256 x 16 KiB by default) whose
        # pages the kernel touches as it receives into them: held by design while the
        # server runs, so allowed beside the slack.
        self.loop_buffers = sum(
            loop.buffers.count * loop.buffers.size
            for loop in (server.loops if server is not None else ())
            if getattr(loop, "buffers", None) is not None)

    def retained(self) -> int:
        """Bytes the buffer pools keep for reuse."""
        return sum(pool.retained() for pool in self.pools)

    def check(self, rss_slack: int, *, timeout: float = 10.0) -> int:
        """Assert fds are back to the baseline and RSS, less what the buffer pool now
        keeps for reuse, grew by < ``rss_slack``; return that growth.

        The pool's own bound (``BufferPool(max_bytes=...)``, 16 MiB by default) is
        tested in test_ringbuffer.py; how much of it a case leaves filled depends on
        timing (which buffers were free together), so it is not counted here.
        """
        assert wait_until(lambda: fd_count() <= self.fds, timeout), (self.fds, fd_count())
        rss_growth = trimmed_rss() - self.rss
        pool = self.retained() - self.pool
        growth = rss_growth - max(pool, 0)
        limit = rss_slack + self.loop_buffers
        assert growth < limit, (
            f"RSS grew by {rss_growth / MiB:.1f} MiB, {growth / MiB:.1f} MiB besides what "
            f"the buffer pool holds for reuse ({pool / MiB:.1f} MiB more than before); "
            f"limit {rss_slack / MiB:.1f} + {self.loop_buffers / MiB:.1f} (io_uring "
            f"provided buffers)"
        )
        return growth


class LogCapture(logging.Handler):
    """gevwire's log records, plus exceptions that end a thread.

    Records are kept as ``(level, message, exception type)``: a record's arguments and
    traceback would keep connections and buffers alive and show up as "leaked" memory.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, str, type[BaseException] | None]] = []
        self.thread_errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc_type = record.exc_info[0] if record.exc_info else None
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.records.append((record.levelno, message, exc_type))

    def messages(self) -> list[str]:
        return [message for _, message, _ in list(self.records)]

    def unexpected(self, *allowed: type[BaseException]) -> list[str]:
        """ERROR records (and thread deaths) not caused by one of ``allowed``."""
        out = list(self.thread_errors)
        for level, message, exc_type in list(self.records):
            if level < logging.ERROR:
                continue
            if exc_type is not None and issubclass(exc_type, allowed):
                continue
            out.append(message)
        return out


@pytest.fixture
def gevwire_log() -> Iterator[LogCapture]:
    capture = LogCapture()
    logger = logging.getLogger("gevwire")
    old_level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.WARNING)
    old_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        capture.thread_errors.append(f"thread {args.thread}: {args.exc_value!r}")
        old_hook(args)

    threading.excepthook = hook
    try:
        yield capture
    finally:
        threading.excepthook = old_hook
        logger.removeHandler(capture)
        logger.setLevel(old_level)


# -- servers and clients -----------------------------------------------------------------


class Echo(gevwire.Handler):
    """Echoes every frame; counts callbacks and errors (by kind), keeps no frames.

    ``on_error`` does what the default hook does for a peer's bad frames (close on a
    fatal one) without logging each: thousands of log records, each holding its
    connection, would be retained by pytest's log capture and read as a memory leak.
    Anything but a :class:`FrameError` goes to the default hook (logged as an error).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connects = 0
        self.closes = 0
        self.frames = 0
        self.errors: Counter[str] = Counter()
        #: (type, message, the ``size`` a FrameTooLarge announced) of the first errors.
        self.error_samples: list[tuple[type[BaseException], str, int | None]] = []

    def on_connect(self, conn: gevwire.Connection) -> None:
        with self.lock:
            self.connects += 1

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        self.frames += 1
        return frame

    def on_close(self, conn: gevwire.Connection) -> None:
        with self.lock:
            self.closes += 1

    def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
        with self.lock:
            self.errors[type(error).__name__] += 1
            if len(self.error_samples) < 1000:
                self.error_samples.append((type(error), str(error),
                                           getattr(error, "size", None)))
        if isinstance(error, FrameError):
            if error.fatal:
                conn.close()
        else:
            super().on_error(conn, error)

    def error_types(self) -> set[type[BaseException]]:
        return {kind for kind, _, _ in self.error_samples}


def _default_message(i: int) -> bytes:
    return b"control-%08d-" % i + bytes(random.Random(i).choices(b"abcdefgh", k=i % 97))


class Control:
    """A well-behaved client: pipelined numbered frames, each reply checked, in order.

    ``make(i)`` is the i-th message; the request is ``codec.encode(make(i))`` and an echo
    server must send exactly those bytes back.  Runs in a thread from :meth:`start` to
    :meth:`stop`; ``samples`` holds ``(when, round-trip seconds)`` per round.  Other
    protocols subclass it and override :meth:`_session` (see the example servers'
    sections).
    """

    def __init__(
        self,
        address: Any,
        codec: gevwire.BaseCodec | None = None,
        make: Callable[[int], Any] = _default_message,
        *,
        interval: float = 0.005,
        pipeline: int = 3,
    ) -> None:
        self.address = address[:2]
        self.codec = codec
        self.make = make
        self.interval = interval
        self.pipeline = pipeline
        self.count = 0
        self.samples: list[tuple[float, float]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__,
                                        daemon=True)

    def start(self) -> Control:
        self._thread.start()
        assert self._ready.wait(10), "control client did not connect"
        assert wait_until(lambda: self.count >= 3 * self.pipeline or self.failures, 10)
        assert not self.failures, self.failures
        return self

    def _run(self) -> None:
        try:
            self._session()
        except Exception as exc:
            self.failures.append(f"after {self.count} messages: {exc!r}")
        finally:
            self._ready.set()

    def _session(self) -> None:
        """Connect, then run rounds (each :meth:`_served`) until stopped."""
        assert self.codec is not None
        codec = self.codec
        with socket.create_connection(self.address, timeout=10) as sock:
            self._ready.set()
            while not self._stop.is_set():
                data = b"".join(codec.encode(self.make(self.count + k))
                                for k in range(self.pipeline))
                start = time.monotonic()
                sock.sendall(data)
                if recv_exactly(sock, len(data)) != data:
                    self.failures.append(f"round at {self.count}: reply differs from request")
                    return
                self._served(start)

    def _served(self, start: float) -> None:
        """A round that began at ``start`` was answered correctly: count it, then pause."""
        end = time.monotonic()
        self.samples.append((end, end - start))
        self.count += self.pipeline
        if self.interval:
            self._stop.wait(self.interval)

    def max_latency(self, since: float = 0.0, until: float = float("inf")) -> float:
        return max((rtt for when, rtt in list(self.samples) if since <= when <= until),
                   default=0.0)

    def stop(self) -> Control:
        """Stop and assert the control was served throughout: no failure, no stall, and
        still served now (two more rounds after the hostile part of the case)."""
        now = self.count
        served = wait_until(lambda: self.count >= now + 2 * self.pipeline or self.failures,
                            10)
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "control client hung"
        assert not self.failures, self.failures
        assert served, f"the control client stalled at frame {self.count}"
        return self


def drain(sock: socket.socket) -> bool:
    """Read and drop whatever is available; False once the peer has closed (EOF or
    reset).  Leaves ``sock`` non-blocking (with a timeout set, Python's ``recv`` waits
    for data whatever its flags say)."""
    sock.setblocking(False)
    try:
        while sock.recv(1 << 16):
            pass
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def close_all(socks: list[socket.socket], *, reset_every: int = 2) -> None:
    """Close client sockets: every ``reset_every``-th with RST (SO_LINGER 0), else FIN."""
    for i, sock in enumerate(socks):
        if reset_every and i % reset_every == 0:
            try:
                set_linger_reset(sock)
            except OSError:
                pass
        sock.close()


def open_clients(address: Any, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(address[:2], timeout=10)
        socks.append(sock)
    return socks


def open_count(server: gevwire.Server) -> int:
    return int(server.stats()["connections_open"])


PREFIXED = c.Prefixed(c.Int32ub, c.GreedyBytes)


# -- 1. a length header claiming 2 GiB ---------------------------------------------------


@pytest.mark.parametrize("codec_name", ["Codec(Prefixed(Int32ub))", "length_field"])
def test_2gib_length_headers_are_rejected_from_the_header(
    serve: ServeFn, gevwire_log: LogCapture, codec_name: str
) -> None:
    connections = 100
    if codec_name == "length_field":
        codec: gevwire.BaseCodec = gcodecs.length_field(initial_bytes_to_strip=4,
                                                         max_frame_size=64 * KiB)
    else:
        codec = gevwire.Codec(PREFIXED, max_frame_size=64 * KiB)
    handler = Echo()
    server = serve(handler, codec=codec)
    control = Control(server.address, codec).start()
    base = Baseline(server)
    reset_peak_rss()
    socks = open_clients(server.address, connections)
    body = random.Random(1).randbytes(256 * KiB)  # 25 MiB in all, if it were buffered
    for sock in socks:
        try:
            sock.sendall(struct.pack(">I", 1 << 31) + body)
        except OSError:
            pass  # rejected and closed while the body was still arriving
    for sock in socks:
        assert peer_closed(sock), "a connection with a 2 GiB header stayed open"
    peak_growth = peak_rss() - base.rss
    close_all(socks)
    assert wait_until(lambda: open_count(server) == 1, 10), open_count(server)
    control.stop()
    assert server.stats()["errors"] == {"FrameTooLarge": connections}
    assert handler.error_types() == {FrameTooLarge}
    assert all(size is not None and size >= 1 << 31 for _, _, size in handler.error_samples)
    assert handler.frames == control.count  # no frame of a hostile peer was dispatched
    # 100 x 2 GiB announced; not one body buffered: the peak is the noise of 100 sockets.
    assert peak_growth < 4 * MiB, f"peak RSS grew by {peak_growth / MiB:.1f} MiB"
    base.check(4 * MiB)
    assert gevwire_log.unexpected() == []
    print(f"\n[case 1 {codec_name}] peak RSS growth {peak_growth / MiB:.2f} MiB "
          f"for {connections} x 2 GiB headers")


# -- 2. random garbage to every shipped codec ----------------------------------------------

STREAM_SCHEMA = c.Struct(
    "magic" / c.Const(b"GW"),
    "name" / c.PascalString(c.Int8ub, "utf8"),
    "values" / c.PrefixedArray(c.Int8ub, c.Int32sb),
)
LAYOUT_SCHEMA = c.Struct("kind" / c.Int8ub, "n" / c.Int16ub, "data" / c.Bytes(c.this.n))


def _bytes_message(i: int) -> bytes:
    return b"m%06d-" % i + b"z" * (i % 50)


def _fixed_message(i: int) -> bytes:
    return b"f%015d" % i


# name -> (codec factory, the control's i-th message)
GARBAGE_CODECS: dict[str, tuple[Callable[[], gevwire.BaseCodec], Callable[[int], Any]]] = {
    "raw": (gcodecs.raw, _bytes_message),
    "fixed_length": (lambda: gcodecs.fixed_length(16), _fixed_message),
    "length_field": (lambda: gcodecs.length_field(initial_bytes_to_strip=4,
                                                  max_frame_size=4 * KiB), _bytes_message),
    "length_field_discard": (
        lambda: gcodecs.length_field(length_field_length=2, byte_order="little",
                                     initial_bytes_to_strip=2, max_frame_size=256,
                                     on_oversize="discard", fail_fast=False),
        _bytes_message),
    "line": (lambda: gcodecs.line(max_length=512), _bytes_message),
    "line_utf8": (lambda: gcodecs.line(max_length=512, encoding="utf-8"),
                  lambda i: _bytes_message(i).decode()),
    "delimiter": (lambda: gcodecs.delimiter([b"\0", b"\r\n"], max_length=512), _bytes_message),
    "varint": (lambda: gcodecs.varint(max_frame_size=4 * KiB), _bytes_message),
    "Codec(Prefixed)": (lambda: gevwire.Codec(PREFIXED, max_frame_size=4 * KiB),
                        _bytes_message),
    "Codec(Prefixed, discard)": (
        lambda: gevwire.Codec(c.Prefixed(c.Int16ub, c.GreedyBytes), max_frame_size=256,
                              on_oversize="discard"), _bytes_message),
    "Codec(Struct+Bytes(this.n))": (
        lambda: gevwire.Codec(LAYOUT_SCHEMA, max_frame_size=4 * KiB),
        lambda i: {"kind": i % 256, "n": 6, "data": b"%06d" % i}),
    "Codec(Struct, construct-parsed)": (
        lambda: gevwire.Codec(STREAM_SCHEMA, max_frame_size=4 * KiB),
        lambda i: {"magic": b"GW", "name": f"n{i}", "values": [i, -i]}),
}


def _garbage(rng: random.Random, sample: bytes) -> bytes:
    """Hostile bytes: random, or a valid frame mutated (flipped, cut, huge lengths)."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randint(1, 4096))
    if kind == 1:  # dense in delimiters, continuation bits and 0xff lengths
        return bytes(rng.choices(b"\n\r\0\xff\x80GW", k=rng.randint(1, 2048)))
    frame = bytearray(sample * rng.randint(1, 8))
    for _ in range(rng.randint(1, 8)):
        frame[rng.randrange(len(frame))] = rng.randrange(256)
    if kind == 2:
        return bytes(frame[: rng.randint(1, len(frame))])
    return b"\xff\xff\xff\xff" + bytes(frame)


@pytest.mark.parametrize("codec_name", list(GARBAGE_CODECS))
def test_random_garbage_on_100_connections_at_once(
    serve: ServeFn, gevwire_log: LogCapture, codec_name: str
) -> None:
    connections, per_connection = 100, 32 * KiB
    factory, make = GARBAGE_CODECS[codec_name]
    codec = factory()
    handler = Echo()
    server = serve(handler, codec=codec)
    control = Control(server.address, codec, make).start()
    base = Baseline(server)
    rng = random.Random(codec_name)
    sample = codec.encode(make(7))
    socks = open_clients(server.address, connections)
    sent = [0] * connections
    done: list[socket.socket] = []
    deadline = time.monotonic() + 10
    while min(sent) < per_connection and time.monotonic() < deadline:
        for i, sock in enumerate(socks):  # interleaved: every connection is mid-stream
            if sent[i] >= per_connection:
                continue
            try:
                if drain(sock):
                    sent[i] += sock.send(_garbage(rng, sample))
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            # Closed by the server (its codec gave up): go on with a new connection.
            done.append(sock)
            socks[i] = socket.create_connection(server.address[:2], timeout=10)
    assert min(sent) >= per_connection, "garbage could not be delivered in 10 s"
    close_all(socks + done)
    assert wait_until(lambda: open_count(server) == 1, 10), open_count(server)
    assert handler.closes == handler.connects - 1  # all but the control
    control.stop()
    # Whatever the garbage, the codec reports FrameError (or its subclasses), never a
    # crash of its own (IndexError, struct.error, UnicodeDecodeError ...).
    bad = [e for e in handler.error_samples if not issubclass(e[0], FrameError)]
    assert bad == [], bad[:5]
    errors = server.stats()["errors"]
    assert set(errors) <= {"FrameError", "FrameTooLarge"}
    growth = base.check(8 * MiB)
    assert gevwire_log.unexpected() == []
    print(f"\n[case 2 {codec_name}] {handler.connects - 1} hostile connections, "
          f"errors {dict(errors)}, RSS growth {growth / KiB:.0f} KiB")


# -- 3. slowloris ----------------------------------------------------------------------------


def test_slowloris_thousand_connections_closed_by_frame_and_idle_timeouts(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    # 1,000 as the issue asks: 2,000 fds here (both ends in this process), 2 s deadlines.
    tricklers, sleepers = 800, 200
    interval, frame_timeout, idle_timeout = 1.0, 2.0, 2.0
    raise_nofile_limit(2 * (tricklers + sleepers) + 256)
    codec = gcodecs.line(max_length=4 * KiB)
    handler = Echo()
    server = serve(handler, codec=codec, frame_timeout=frame_timeout,
                   idle_timeout=idle_timeout)
    control = Control(server.address, codec).start()
    base = Baseline(server)
    trickling = open_clients(server.address, tricklers)  # one byte a second, never a line
    sleeping = open_clients(server.address, sleepers)  # connect, then nothing at all
    assert wait_until(lambda: open_count(server) == 1 + tricklers + sleepers, 10)
    for sock in trickling:
        sock.setblocking(False)
    start = time.monotonic()
    closed_at: float | None = None
    while time.monotonic() - start < frame_timeout + 4:
        for sock in trickling:
            try:
                sock.send(b"G")
            except OSError:
                pass  # closed by the server
        if open_count(server) == 1:
            closed_at = time.monotonic() - start
            break
        wait_until(lambda: open_count(server) == 1, interval)
    during = control.max_latency(since=start)
    control.stop()
    assert closed_at is not None, f"{open_count(server) - 1} slowloris connections left"
    # Not before their deadline, and not much after (timer granularity + one interval).
    assert frame_timeout - 0.1 <= closed_at <= frame_timeout + 1.5, closed_at
    errors = server.stats()["errors"]
    assert errors.get("FrameTimeout") == tricklers, errors
    assert errors.get("idle_timeout") == sleepers, errors
    assert handler.error_types() == {FrameTimeout}
    assert during < 0.5, f"the good client waited {during:.3f}s during the slowloris"
    for sock in trickling + sleeping:
        assert peer_closed(sock, 5)
    close_all(trickling + sleeping, reset_every=1)
    base.check(8 * MiB)
    assert gevwire_log.unexpected() == []
    print(f"\n[case 3] {tricklers} tricklers + {sleepers} idle closed "
          f"{closed_at:.2f}s after the first byte (frame_timeout={frame_timeout}s); "
          f"good client max RTT {during * 1000:.1f} ms")


# -- 4. a peer that sends and never reads --------------------------------------------------


class Flooder:
    """Sends continuously on a socket it never reads, from a thread, until stopped."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self.sock = sock
        self.data = data
        self.sent = 0
        self.last_progress = time.monotonic()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.setblocking(False)
        view = memoryview(self.data)
        while not self._stop.is_set():
            _, writable, _ = select.select([], [self.sock], [], 0.05)
            if not writable:
                continue
            try:
                n = self.sock.send(view[self.sent % len(view) :])
            except BlockingIOError:
                continue
            except OSError as exc:
                self.error = exc
                return
            self.sent += n
            self.last_progress = time.monotonic()

    def stalled_for(self) -> float:
        return time.monotonic() - self.last_progress

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_never_reading_peer_pauses_reading_at_high_water_with_the_loop_idle(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    high, low = 256 * KiB, 64 * KiB
    handler = Echo()  # raw echo: the peer's own bytes back up its output
    server = serve(handler, write_high_water=high, write_low_water=low,
                   max_write_buffer=8 * MiB)
    control = Control(server.address, gevwire.RawCodec(), interval=0.01).start()
    loop = server.loops[0]
    tid = loop_tid(loop)
    base = Baseline(server)
    hostile = socket.create_connection(server.address[:2], timeout=10)
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
    flooder = Flooder(hostile, random.Random(4).randbytes(64 * KiB))
    assert wait_until(lambda: flooder.stalled_for() > 0.5, 20), "the peer was never stopped"
    conn = next(cn for cn in server.connections() if cn.peer_addr[:2] == hostile.getsockname())
    # Stalled: measure the loop thread while the peer keeps trying to send.
    cpu0, turns0, busy0, count0 = thread_cpu(tid), loop.turn_count, loop.busy_time, control.count
    time.sleep(2.0)
    cpu = thread_cpu(tid) - cpu0
    turns, busy = loop.turn_count - turns0, loop.busy_time - busy0
    served = control.count - count0
    backlog = conn.write_buffer_length
    assert flooder.stalled_for() > 2.0 and flooder.error is None
    assert conn.connected
    assert high < backlog <= high + 64 * KiB, backlog  # paused within one read of the mark
    # The control's ~100 rounds/s cost a few turns each; a loop spinning on a writable
    # or readable fd would cost tens of thousands of turns and the whole core.
    assert cpu < 0.2, f"loop thread used {cpu:.2f}s CPU in 2s while stalled"
    assert turns < 5 * max(served, 1) // control.pipeline + 100, (turns, served)
    flooder.stop()
    set_linger_reset(hostile)
    hostile.close()
    assert wait_until(lambda: open_count(server) == 1, 10)
    control.stop()
    base.check(8 * MiB)
    assert gevwire_log.unexpected() == []
    print(f"\n[case 4a] stalled 2s at {backlog / KiB:.0f} KiB unsent (high water "
          f"{high // KiB} KiB): loop CPU {cpu * 1000:.0f} ms ({cpu / 2 * 100:.1f}%), "
          f"busy {busy * 1000:.0f} ms, {turns} turns for {served} control frames")


@pytest.mark.parametrize("how", ["reply", "send"])
def test_never_reading_peer_is_closed_at_the_hard_cap_with_memory_bounded(
    serve: ServeFn, gevwire_log: LogCapture, how: str
) -> None:
    # Each 6-byte request line asks for a 16 KiB reply (returned, or sent with
    # conn.send): one 64 KiB read of requests is 170 MiB of replies.  The hard cap must
    # bound what one read's replies can queue, not only what is left once the whole
    # read has been dispatched.
    cap = 4 * MiB
    reply = bytes(random.Random(5).choices(b"abcdefghijklmnop", k=16 * KiB - 1))

    class Amplify(Echo):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            self.frames += 1
            if frame != b"gimme":
                return frame
            if how == "send":
                conn.send(reply)  # raises ConnectionClosed once closed at the cap
                return None
            return reply

    codec = gcodecs.line(max_length=32 * KiB)
    handler = Amplify()
    server = serve(handler, codec=codec, write_high_water=1 * MiB,
                   write_low_water=256 * KiB, max_write_buffer=cap)
    control = Control(server.address, codec).start()

    def episode(n: int) -> int:
        """One never-reading peer until the cap closes it; the peak RSS growth."""
        before = trimmed_rss()
        reset_peak_rss()
        hostile = socket.create_connection(server.address[:2], timeout=10)
        hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
        flooder = Flooder(hostile, b"gimme\n" * (64 * KiB // 6))
        assert wait_until(lambda: handler.errors["WriteBufferFull"] == n, 10), handler.errors
        assert wait_until(lambda: flooder.error is not None or flooder.stalled_for() > 1, 10)
        flooder.stop()
        peak = peak_rss() - before
        assert peer_closed(hostile)
        hostile.close()
        assert wait_until(lambda: open_count(server) == 1, 10)
        return peak

    # The first episode also sets up the allocator: the loop thread's glibc arena keeps
    # a few freed MiB for reuse (not given back even by malloc_trim; not so with
    # MALLOC_ARENA_MAX=1).  The baseline is taken after it; two more episodes must not
    # grow memory past it: nothing is kept per closed connection.
    peaks = [episode(1)]
    base = Baseline(server)
    peaks += [episode(2), episode(3)]
    control.stop()
    assert server.stats()["errors"] == {"WriteBufferFull": 3}
    # O(cap), whatever was asked for: the ring doubling past the cap holds its old and
    # new storage (4 + 8 MiB) for a moment, plus one high-water batch and its join.
    # Without the mid-batch write (connection.py, _write_gathered) this was ~430 MiB.
    peak_growth = max(peaks)
    assert peak_growth < 5 * cap, f"peak RSS grew by {peak_growth / MiB:.1f} MiB"
    base.check(4 * MiB)
    assert gevwire_log.unexpected(WriteBufferFull) == []
    print(f"\n[case 4b {how}] closed at max_write_buffer={cap // MiB} MiB; peak RSS growth "
          f"{peak_growth / MiB:.1f} MiB")


# -- 5. RST in the middle of a frame and of a large reply ----------------------------------


def test_reset_in_the_middle_of_a_frame_and_of_a_large_reply(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    big = random.Random(6).randbytes(8 * MiB)
    close_after: list[Any] = []  # the peer of each big reply sent while closing

    class Big(Echo):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            self.frames += 1
            if frame == b"big-then-close":
                conn.close()  # closing, with 8 MiB still to flush: then the RST comes
                close_after.append(conn.peer_addr)
                return big
            return big if frame == b"big" else frame

    codec = gevwire.Codec(PREFIXED, max_frame_size=1 * MiB)
    handler = Big()
    frame_timeout = 0.5
    server = serve(handler, codec=codec, frame_timeout=frame_timeout,
                   write_high_water=16 * MiB, max_write_buffer=32 * MiB)
    control = Control(server.address, codec).start()

    def reset_mid_reply(count: int) -> None:
        """Ask for 8 MiB on ``count`` connections, read 64 KiB of it, then RST."""
        mid_reply = open_clients(server.address, count)
        for i, sock in enumerate(mid_reply):
            sock.sendall(codec.encode(b"big-then-close" if i % 2 else b"big"))
        for sock in mid_reply:
            assert len(recv_exactly(sock, 64 * KiB)) == 64 * KiB
        close_all(mid_reply, reset_every=1)

    # A first round before the baseline: the loop thread's glibc arena keeps a few MiB
    # after its first large buffers (see Baseline), which is not what this case measures.
    reset_mid_reply(2)
    assert wait_until(lambda: open_count(server) == 1, 10), open_count(server)
    closes_before, close_after_before = handler.closes, len(close_after)
    base = Baseline(server)
    reset_peak_rss()
    # RST mid-frame: a header announcing 100 KiB, 30 KiB of it, then RST.
    mid_frame = open_clients(server.address, 50)
    for sock in mid_frame:
        sock.sendall(struct.pack(">I", 100 * KiB) + bytes(30 * KiB))
    assert wait_until(lambda: sum(cn.read_buffer_length for cn in server.connections())
                      >= 50 * 30 * KiB, 5)
    close_all(mid_frame, reset_every=1)
    # RST mid-reply: ask for 8 MiB, read 64 KiB of it, then RST.
    reset_mid_reply(20)
    assert wait_until(lambda: open_count(server) == 1, 10), open_count(server)
    time.sleep(frame_timeout + 0.3)  # the mid-frame deadlines would have fired by now
    assert handler.closes - closes_before == 70
    control.stop()
    assert len(close_after) - close_after_before == 10
    assert server.stats()["errors"] == {}  # a reset is the peer leaving, not an error
    peak = peak_rss() - base.rss
    growth = base.check(8 * MiB)
    assert gevwire_log.unexpected() == []
    print(f"\n[case 5] 50 RST mid-frame + 20 RST mid-8-MiB-reply: all closed, no error; "
          f"peak RSS +{peak / MiB:.0f} MiB, after {growth / KiB:.0f} KiB")


# -- 6. half-close ---------------------------------------------------------------------------


def test_half_close_gets_every_reply_then_eof_even_with_reading_paused(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    # tests/test_server.py covers one connection whose FIN is read at once; here reading
    # is paused by back-pressure when the FIN arrives (so it is read only after the
    # replies drain), on 50 connections at once, half of them with a partial frame last.
    clients, requests = 50, 40

    class Amplify(Echo):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            self.frames += 1
            if frame.startswith(b"req-"):
                return (frame + b" ") * 400  # ~6 KiB per request
            return frame

    codec = gcodecs.line(max_length=64 * KiB)
    handler = Amplify()
    server = serve(handler, codec=codec, write_high_water=64 * KiB, write_low_water=16 * KiB)
    control = Control(server.address, gcodecs.line(), lambda i: b"c%d" % i).start()
    base = Baseline(server)
    socks = []
    expected: dict[socket.socket, bytes] = {}
    for i in range(clients):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
        sock.settimeout(10)
        sock.connect(server.address[:2])
        lines = [b"req-%02d-%03d" % (i, j) for j in range(requests)]
        tail = b"partial-frame-with-no-newline" if i % 2 else b""
        sock.sendall(b"".join(x + b"\n" for x in lines) + tail)
        sock.shutdown(socket.SHUT_WR)
        expected[sock] = b"".join((x + b" ") * 400 + b"\n" for x in lines)
        socks.append(sock)
    received = {sock: bytearray() for sock in socks}
    eof: set[socket.socket] = set()
    start = time.monotonic()
    deadline = start + 20
    while len(eof) < clients and time.monotonic() < deadline:
        readable, _, _ = select.select([s for s in socks if s not in eof], [], [], 1.0)
        for sock in readable:
            chunk = sock.recv(1 << 16)
            if chunk:
                received[sock] += chunk
            else:
                eof.add(sock)
    assert len(eof) == clients, "a half-closed peer did not get EOF"
    took = time.monotonic() - start
    for sock in socks:
        assert received[sock] == expected[sock]
    del received, expected  # 24 MiB of the test's own, not the server's
    close_all(socks, reset_every=0)
    assert wait_until(lambda: open_count(server) == 1, 10)
    assert handler.closes == clients
    control.stop()
    assert server.stats()["errors"] == {}
    base.check(8 * MiB)
    assert gevwire_log.unexpected() == []
    print(f"\n[case 6] {clients} half-closed peers, {requests} replies of ~6 KiB each "
          f"(reading paused at 64 KiB): every byte, then EOF, in {took:.2f}s")


# -- 7. EMFILE storm -----------------------------------------------------------------------

EMFILE_SERVER = textwrap.dedent("""
    import json, os, resource, sys, threading
    import gevwire

    class Echo(gevwire.Handler):
        def on_message(self, conn, frame):
            return frame

    server = gevwire.Server(Echo(), address="127.0.0.1:0").start()
    loop = server.loops[0]
    box, ready = [], threading.Event()
    loop.call_soon(lambda: (box.append(threading.get_native_id()), ready.set()))
    ready.wait(5)

    def fds():
        try:
            return len(os.listdir("/proc/self/fd")) - 1
        except OSError:  # out of fds: listing needs one
            return -1

    port = server.port

    def report():
        stats = server.stats()
        return {"port": port, "tid": box[0], "fds": fds(),
                "open": stats["connections_open"], "turns": stats["loop_turns"],
                "backoffs": server.stats()["accept_backoffs"]}

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
    print(json.dumps(report()), flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            break
        print(json.dumps(report()), flush=True)
    server.stop()
    print(json.dumps(report()), flush=True)
""")


class Child:
    """The EMFILE server in a child process, queried over its stdin / stdout."""

    def __init__(self, limit: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", EMFILE_SERVER, str(limit)], cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.first = self.query(first=True)

    def query(self, *, first: bool = False, command: str = "report") -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if not first:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the server child died"
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def test_emfile_storm_backs_off_then_serves_again(gevwire_log: LogCapture) -> None:
    limit, storm = 64, 300
    child = Child(limit)
    try:
        info = child.first
        address = ("127.0.0.1", info["port"])
        control = Control(address, gevwire.RawCodec(), interval=0.01).start()
        assert wait_until(lambda: child.query()["open"] == 1, 5)
        baseline_fds = child.query()["fds"]
        socks = [socket.create_connection(address, timeout=10) for _ in range(storm)]
        for i, sock in enumerate(socks):
            sock.sendall(b"storm-%03d" % i)
        # Accepted connections echo; the rest wait in the backlog, the server out of fds.
        assert wait_until(lambda: child.query()["backoffs"] > 0, 5)
        served = set()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            readable, _, _ = select.select(socks, [], [], 0.2)
            for sock in readable:
                served.add(sock)
        assert 0 < len(served) < storm - 200
        for i, sock in enumerate(socks):
            if sock in served:
                assert recv_exactly(sock, 9) == b"storm-%03d" % i
        # Out of fds: measure the loop thread while the listener stays readable.
        before, cpu0, count0 = child.query(), thread_cpu(info["tid"], child.proc.pid), \
            control.count
        time.sleep(2.0)
        after, cpu = child.query(), thread_cpu(info["tid"], child.proc.pid) - cpu0
        turns = after["turns"] - before["turns"]
        served_frames = control.count - count0
        assert after["open"] == before["open"]  # still exhausted: nothing more accepted
        assert after["backoffs"] > before["backoffs"]  # ... and it kept retrying
        assert cpu < 0.2, f"loop CPU {cpu:.2f}s in 2s while out of fds"
        assert turns < 200 + 3 * served_frames, (turns, served_frames)
        # Free the fds: every waiting connection is accepted and served, in turn.
        for sock in served:
            sock.close()
        pending = [s for s in socks if s not in served]
        waiting = {s: b"storm-%03d" % socks.index(s) for s in pending}
        start = time.monotonic()
        while waiting and time.monotonic() - start < 20:
            readable, _, _ = select.select(list(waiting), [], [], 0.5)
            for sock in readable:
                assert recv_exactly(sock, 9) == waiting.pop(sock)
                sock.close()
        recovered = time.monotonic() - start
        assert not waiting, f"{len(waiting)} connections never served after fds freed"
        control.stop()
        assert wait_until(lambda: child.query()["open"] == 0, 10)
        assert child.query()["fds"] == baseline_fds - 1  # the control's fd is gone too
        final = child.query(command="stop")
        assert child.proc.wait(10) == 0
        assert final["open"] == 0
    finally:
        child.close()
    print(f"\n[case 7] {storm} connections on RLIMIT_NOFILE={limit}: {len(served)} "
          f"served at once; while exhausted the loop used {cpu * 1000:.0f} ms CPU in 2 s "
          f"({turns} turns); the other {storm - len(served)} served {recovered:.2f}s "
          f"after fds freed")


# -- 8. races: send / close from 16 threads while peers disconnect ---------------------------


def test_sixteen_threads_send_and_close_while_peers_disconnect(
    serve: ServeFn, gevwire_log: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads, duration = 16, 2.5
    lock = threading.Lock()
    events: dict[int, list[str]] = {}
    inode_of: dict[int, int] = {}
    late: list[str] = []

    def record(conn: gevwire.Connection, what: str) -> None:
        with lock:
            trail = events.setdefault(id(conn), [])
            if trail and trail[-1] == "on_close":
                late.append(f"{what} after on_close on {conn!r}")
            trail.append(what)

    class Racy(gevwire.Handler):
        def on_connect(self, conn: gevwire.Connection) -> None:
            with lock:
                inode_of[id(conn)] = os.fstat(conn.fd).st_ino
            record(conn, "on_connect")

        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            record(conn, "on_message")
            if frame.startswith(b"push"):
                conn.send(b"pushed")  # a send during dispatch, beside the reply
            return frame

        def on_close(self, conn: gevwire.Connection) -> None:
            record(conn, "on_close")
            conn_refs.append(conn)

        def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
            record(conn, f"on_error {type(error).__name__}")
            super().on_error(conn, error)

    conn_refs: list[gevwire.Connection] = []  # keep ids unique: no object is freed
    # Every close(2) of a connection's fd, by the socket's inode: a second close of the
    # same socket, or a close of an fd that is no longer open, is caught here.
    real_close = gevwire._socket_io.sys_close
    closed_inodes: Counter[int] = Counter()
    bad_closes: list[str] = []

    def tracked_close(fd: int) -> None:
        try:
            inode = os.fstat(fd).st_ino
        except OSError as exc:
            bad_closes.append(f"close({fd}) of a closed fd: {exc}")
            raise
        with lock:
            closed_inodes[inode] += 1
        real_close(fd)

    monkeypatch.setattr(gevwire._socket_io, "sys_close", tracked_close)
    logging.getLogger("gevwire").setLevel(logging.DEBUG)  # "close failed" is DEBUG
    codec = gcodecs.line(max_length=1 * MiB)
    server = serve(Racy(), codec=codec, loops=2, write_high_water=64 * KiB,
                   write_low_water=16 * KiB, max_write_buffer=1 * MiB, close_timeout=0.5)
    control = Control(server.address, codec).start()
    base = Baseline(server)
    escaped: list[str] = []
    calls: Counter[str] = Counter()
    rounds = 0

    def hammer(conns: list[gevwire.Connection], seed: int, until: float) -> None:
        """Mostly sends, now and then a close / abort / shutdown, on the round's conns."""
        rng = random.Random(seed)
        while time.monotonic() < until:
            conn = rng.choice(conns)
            action = rng.choices(["send", "big", "close", "abort", "shutdown"],
                                 [95, 3, 1, 0.5, 0.5])[0]
            try:
                if action == "send":
                    conn.send(b"t%d" % seed)
                elif action == "big":
                    conn.send(b"B" * rng.randint(1, 256 * KiB))
                elif action == "close":
                    conn.close()
                elif action == "abort":
                    conn.abort()
                else:
                    conn.shutdown_write()
                calls[action] += 1
            except ConnectionClosed:
                calls["ConnectionClosed"] += 1
            except Exception as exc:
                escaped.append(f"{action}: {exc!r}")
            time.sleep(0)  # let the others (and the loops) in between calls

    # Rounds: 16 fresh peers; 16 threads hammer the same 16 connections for 0.15 s while
    # the peers send, read, and disconnect (RST or FIN) at random moments.
    rng = random.Random(7)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        rounds += 1
        socks = open_clients(server.address, threads)
        local = {sock.getsockname() for sock in socks}
        assert wait_until(lambda: open_count(server) == 1 + threads, 5)
        round_conns = [cn for cn in server.connections() if cn.peer_addr[:2] in local]
        assert len(round_conns) == threads
        until = time.monotonic() + 0.15
        workers = [threading.Thread(target=hammer, args=(round_conns, rounds * 100 + n, until),
                                    daemon=True) for n in range(threads)]
        for worker in workers:
            worker.start()
        live = list(socks)
        while time.monotonic() < until and live:
            sock = rng.choice(live)
            roll = rng.random()
            try:
                if roll < 0.5:
                    sock.setblocking(False)
                    sock.send(b"push %d\nhello\n" % rounds)
                elif roll < 0.9:
                    drain(sock)
                else:
                    if roll < 0.95:
                        set_linger_reset(sock)
                    sock.close()
                    live.remove(sock)
            except OSError:
                pass
            time.sleep(0.001)
        for worker in workers:
            worker.join(10)
        close_all(live, reset_every=2)
        assert wait_until(lambda: open_count(server) == 1, 10), open_count(server)
    control.stop()
    assert wait_until(lambda: open_count(server) == 0, 10)
    logging.getLogger("gevwire").setLevel(logging.WARNING)
    assert gevwire_log.thread_errors == []
    assert escaped == [], escaped[:5]
    assert late == [], late[:5]
    assert bad_closes == [], bad_closes[:5]
    closed = [key for key, trail in events.items() if trail[-1] == "on_close"]
    assert len(closed) == len(events) == rounds * threads + 1
    for key in closed:
        trail = events[key]
        assert trail[0] == "on_connect" and trail.count("on_close") == 1, trail
        assert closed_inodes[inode_of[key]] == 1, "a connection's socket closed twice"
    assert sum(closed_inodes.values()) == len(closed)
    assert calls["close"] and calls["send"] > 1000 and calls["ConnectionClosed"], calls
    debug_faults = [m for m in gevwire_log.messages()
                    if "failed" in m and ("close(" in m or "unregister" in m)]
    assert debug_faults == [], debug_faults[:5]
    base.check(16 * MiB)
    assert [m.splitlines()[-1] for m in gevwire_log.unexpected()] == []
    print(f"\n[case 8] {rounds} rounds, {len(closed)} connections, calls {dict(calls)}")



# -- 9. connect / send / close cycles --------------------------------------------------------

#: Cycles of case 9: the issue's 100,000 take ~7 s on two cores (server thread here, the
#: load generator in a child process on the other core); GEVWIRE_HOSTILE_CYCLES changes it.
CYCLES = int(os.environ.get("GEVWIRE_HOSTILE_CYCLES", "100000"))

CYCLE_CLIENT = textwrap.dedent("""
    import json, socket, struct, sys, time
    port, cycles, batch = int(sys.argv[1]), int(sys.argv[2]), 32
    linger = struct.pack("ii", 1, 0)
    done, start = 0, time.monotonic()
    while done < cycles:
        n = min(batch, cycles - done)
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
        for i, sock in enumerate(socks):
            sock.sendall(b"cycle %08d" % (done + i))
        for i, sock in enumerate(socks):
            want = b"cycle %08d" % (done + i)
            got = b""
            while len(got) < len(want):
                chunk = sock.recv(64)
                if not chunk:
                    sys.exit(f"EOF at cycle {done + i}")
                got += chunk
            if got != want:
                sys.exit(f"wrong echo at cycle {done + i}: {got!r}")
            if (done + i) % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            sock.close()
        done += n
    print(json.dumps({"cycles": done, "seconds": time.monotonic() - start}))
""")


@pytest.mark.timeout(300)
def test_connect_send_close_cycles_return_fds_and_memory(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    handler = Echo()
    server = serve(handler)
    control = Control(server.address, gevwire.RawCodec(), interval=0.02).start()
    # Warm-up: the first thousand cycles fill the allocator's free lists and the buffer
    # pool; growth after that is what would be a leak.
    warm = subprocess.run([sys.executable, "-c", CYCLE_CLIENT, str(server.port), "1000"],
                          capture_output=True, text=True, timeout=60)
    assert warm.returncode == 0, warm.stderr
    assert wait_until(lambda: open_count(server) == 1, 10)
    base = Baseline(server)
    result = subprocess.run([sys.executable, "-c", CYCLE_CLIENT, str(server.port),
                             str(CYCLES)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cycles"] == CYCLES
    assert wait_until(lambda: handler.closes == CYCLES + 1000, 20), handler.closes
    assert wait_until(lambda: open_count(server) == 1, 10)
    control.stop()
    assert handler.connects == CYCLES + 1001
    assert server.stats()["errors"] == {}
    growth = base.check(4 * MiB)
    assert gevwire_log.unexpected() == []
    print(f"\n[case 9] {CYCLES} cycles in {report['seconds']:.1f}s "
          f"({CYCLES / report['seconds']:.0f}/s); RSS growth {growth / KiB:.0f} KiB, "
          f"fds back to baseline")


# -- 10. a handler that blocks ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["sleep", "spin"])
def test_a_blocking_handler_stalls_its_own_loop_only(
    serve: ServeFn, gevwire_log: LogCapture, how: str
) -> None:
    """What a handler that blocks for a second does (and does not) hold up.

    A loop runs its handlers on its own thread, one callback at a time: while one
    blocks, every other connection *of that loop* waits (their bytes wait in the kernel,
    nothing is lost or reordered) and is answered ~1 s late.  Connections of other loops
    (``loops=N``, or other processes with ``workers=N``) are served on time: a sleeping
    or I/O-blocked handler releases the GIL; a CPU-bound one holds it and the other
    loops then get the interpreter every switch interval (5 ms), so they are slower but
    still served.  A handler that waits says so (``async def`` or ``gevwire.blocking``:
    the next test) and then stalls nothing.
    """
    block = 1.0

    class Blocking(Echo):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            self.frames += 1
            if frame == b"block":
                if how == "sleep":
                    time.sleep(block)
                else:
                    end = time.monotonic() + block
                    while time.monotonic() < end:
                        pass
            return frame

    pins: dict[int, int] = {}  # client port -> loop index

    def pin(loops: list[gevwire.EventLoop], peer: Any) -> int:
        return pins[peer[1]]

    def client(loop_index: int) -> socket.socket:
        sock = socket.socket()
        sock.settimeout(10)
        sock.bind(("127.0.0.1", 0))
        pins[sock.getsockname()[1]] = loop_index
        sock.connect(server.address[:2])
        return sock

    codec = gcodecs.line()
    server = serve(Blocking(), codec=codec, loops=2, load_balance=pin)
    blocker, neighbour, other = client(0), client(0), client(1)
    assert wait_until(lambda: [lp["connections_open"] for lp in server.stats()["loops"]]
                      == [2, 1], 5)
    for sock in (blocker, neighbour, other):  # all three served before the block
        sock.sendall(b"warm\n")
        assert recv_exactly(sock, 5) == b"warm\n"
    blocker.sendall(b"block\n")
    time.sleep(0.05)
    t0 = time.monotonic()
    neighbour.sendall(b"n1\nn2\n")
    other_rtts = []
    while time.monotonic() - t0 < block * 0.8:  # the other loop, during the block
        start = time.monotonic()
        other.sendall(b"o\n")
        assert recv_exactly(other, 2) == b"o\n"
        other_rtts.append(time.monotonic() - start)
        time.sleep(0.01)
    assert recv_exactly(neighbour, 6) == b"n1\nn2\n"  # in order, nothing lost
    neighbour_wait = time.monotonic() - t0
    assert recv_exactly(blocker, 6) == b"block\n"
    assert neighbour_wait > block - 0.1 - 0.05, neighbour_wait  # waited out the block
    assert len(other_rtts) >= 10
    median = sorted(other_rtts)[len(other_rtts) // 2]
    if how == "sleep":
        assert max(other_rtts) < 0.1, other_rtts
    else:
        assert median < 0.1 and max(other_rtts) < 0.3, other_rtts
    assert gevwire_log.unexpected() == []
    print(f"\n[case 10 {how}] neighbour on the blocked loop waited {neighbour_wait:.2f}s; "
          f"other loop: {len(other_rtts)} round trips, median "
          f"{median * 1000:.1f} ms, max {max(other_rtts) * 1000:.1f} ms")



@pytest.mark.parametrize("how", ["async", "blocking"])
def test_a_handler_that_waits_stalls_nothing(
    serve: ServeFn, gevwire_log: LogCapture, how: str
) -> None:
    """Case 10 with a handler that declares its waiting (``async def``, or
    ``gevwire.blocking``): it waits off the loop thread, so a neighbour on the *same*
    loop is answered at once, and the waiting connection's own later frames are
    answered after it, in order."""
    block = 1.0

    class AsyncWait(Echo):
        async def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            if frame == b"block":
                await asyncio.sleep(block)
            return frame

    class BlockingWait(Echo):
        @gevwire.blocking
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            if frame == b"block":
                time.sleep(block)
            return frame

    server = serve(AsyncWait() if how == "async" else BlockingWait(),
                   codec=gcodecs.line(), loops=1)
    blocker, neighbour = (socket.create_connection(server.address[:2]) for _ in range(2))
    for sock in (blocker, neighbour):
        sock.settimeout(10)
        sock.sendall(b"warm\n")
        assert recv_exactly(sock, 5) == b"warm\n"
    t0 = time.monotonic()
    blocker.sendall(b"block\nafter\n")
    time.sleep(0.05)
    rtts = []
    while time.monotonic() - t0 < block * 0.8:  # the same loop, during the wait
        start = time.monotonic()
        neighbour.sendall(b"n\n")
        assert recv_exactly(neighbour, 2) == b"n\n"
        rtts.append(time.monotonic() - start)
        time.sleep(0.01)
    assert recv_exactly(blocker, 12) == b"block\nafter\n"  # in order, after the wait
    waited = time.monotonic() - t0
    assert waited > block - 0.05, waited
    assert len(rtts) >= 10
    median = sorted(rtts)[len(rtts) // 2]
    assert max(rtts) < 0.1, rtts
    assert gevwire_log.unexpected() == []
    blocker.close()
    neighbour.close()
    print(f"\n[case 10 {how}] the waiting connection answered after {waited:.2f}s; its "
          f"loop meanwhile: {len(rtts)} round trips, median {median * 1000:.2f} ms, "
          f"max {max(rtts) * 1000:.1f} ms")



# -- WebSocket: fragments cost memory by their payload, not their count ----------------------


@pytest.mark.parametrize(("piece", "count"), [(0, 100_000), (2, 1 << 17)])
def test_websocket_fragments_cost_memory_by_their_payload_not_their_count(
    piece: int, count: int
) -> None:
    """A message sent as empty or 2-byte continuation frames (6-8 bytes each on the
    wire): a list of parts cost ~40 bytes per fragment, 0 of them counted by
    max_message_size (issue: 200 MiB of empty fragments took +269 MiB).  The decoder's
    memory must track the payload bytes."""
    import tracemalloc

    from websocket_support import frame, upgrade_request

    from gevwire.codecs.websocket import Opcode, websocket
    from gevwire.testing import FrameCutter

    cutter = FrameCutter(websocket(max_message_size=1 << 20))
    assert not cutter.push(upgrade_request())[1]
    stream = frame(Opcode.CONTINUATION, b"x" * piece, fin=False) * count
    tracemalloc.start()
    try:
        assert cutter.push(frame(Opcode.BINARY, b"ab", fin=False)) == ([], [])
        before = tracemalloc.get_traced_memory()[0]
        for start in range(0, len(stream), 1 << 16):  # the reads a connection makes
            assert cutter.push(stream[start:start + (1 << 16)]) == ([], [])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    payload = 2 + piece * count
    # The payload (a bytearray grows by at most an eighth), plus the input ring, which
    # may hold what two reads bring (its free space plus the 64 KiB spare buffer).
    allowed = payload * 3 // 2 + (256 << 10)
    assert held < allowed, f"{held} bytes held for {payload} bytes of payload"
    frames, errors = cutter.push(frame(Opcode.CONTINUATION, b"!", fin=True))
    assert not errors and frames == [b"ab" + b"x" * (piece * count) + b"!"]


# -- a reply far larger than max_write_buffer, made of references --------------------------


@pytest.mark.parametrize("how", ["return", "send", "pipelined"])
def test_a_reply_past_the_cap_is_refused_before_it_is_built(
    serve: ServeFn, gevwire_log: LogCapture, how: str
) -> None:
    """An MGET-style reply: a list of references to large stored values.  Encoded and
    joined, 10 x 8 MiB cost +160 MiB before the 16 MiB cap closed the connection (issue:
    100 x 8 MiB took +1.59 GiB for a 916-byte request).  It must be measured and refused
    before any of it is copied: the connection is closed with WriteBufferFull, whichever
    way the reply leaves (returned by a one-request read, sent with conn.send, or
    returned among pipelined requests)."""
    cap = 16 * MiB
    value = random.Random(15).randbytes(8 * MiB)  # "stored": allocated before measuring

    class Store(Echo):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            self.frames += 1
            if frame[0] != b"MGET":
                return frame
            reply = [value] * len(frame[1:])
            if how == "send":
                conn.send(reply)
                return None
            return reply

    codec = RespCodec(commands=True)
    handler = Store()
    server = serve(handler, codec=codec, max_write_buffer=cap, write_high_water=1 * MiB,
                   write_low_water=256 * KiB)
    control = Control(server.address, codec, lambda i: [b"ECHO", b"%d" % i]).start()
    mget = codec.encode([b"MGET"] + [b"k%d" % i for i in range(10)])
    request = codec.encode([b"PING"]) * 3 + mget if how == "pipelined" else mget

    def episode(n: int) -> int:
        before = trimmed_rss()
        reset_peak_rss()
        with socket.create_connection(server.address[:2], timeout=10) as hostile:
            hostile.sendall(request)
            assert wait_until(lambda: handler.errors["WriteBufferFull"] == n, 10), (
                handler.errors)
            assert peer_closed(hostile)
        assert wait_until(lambda: open_count(server) == 1, 10)
        return peak_rss() - before

    peaks = [episode(1)]
    base = Baseline(server)
    peaks += [episode(2), episode(3)]
    control.stop()
    assert server.stats()["errors"] == {"WriteBufferFull": 3}
    # Nothing of the 80 MiB reply is copied: well under the cap it was refused at.
    peak_growth = max(peaks)
    assert peak_growth < cap // 2, f"peak RSS grew by {peak_growth / MiB:.1f} MiB"
    base.check(4 * MiB)
    assert gevwire_log.unexpected(WriteBufferFull) == []
    print(f"\n[reply past the cap, {how}] an 80 MiB reply refused at max_write_buffer={cap // MiB} "
          f"MiB; peak RSS growth {peak_growth / MiB:.1f} MiB")


# -- large partial frames: memory by the bytes received -----------------------------------


@pytest.mark.parametrize("protocol", ["resp", "length_field", "construct"])
def test_large_partial_frames_cost_memory_by_the_bytes_received(
    serve: ServeFn, gevwire_log: LogCapture, protocol: str
) -> None:
    """Peers each send a large frame one byte short and stop (issue: ten 64 MiB RESP
    bulks one byte short took +1.34 GiB, twice the bytes received: each input ring grew
    to the next power of two and every byte of it was touched).  The ring grows to the
    length the frame's header announces, and storage no byte has reached is not
    resident; the frames are answered in full once their last byte comes."""
    size = 24 * MiB
    peers = 4
    if protocol == "resp":
        codec: gevwire.BaseCodec = RespCodec(commands=True, max_frame_size=64 * MiB,
                                             max_bulk_length=64 * MiB)
        header = b"*1\r\n$%d\r\n" % size
        trailer = b"\r\n"
    elif protocol == "length_field":
        codec = gcodecs.length_field(max_frame_size=64 * MiB, initial_bytes_to_strip=4)
        header = struct.pack(">I", size)
        trailer = b""
    else:
        codec = gevwire.Codec(c.Prefixed(c.Int32ub, c.GreedyBytes), max_frame_size=64 * MiB)
        header = struct.pack(">I", size)
        trailer = b""
    body = random.Random(16).randbytes(size)
    wire = header + body + trailer
    handler = Echo()
    server = serve(handler, codec=codec, max_write_buffer=64 * MiB, frame_timeout=30)
    make = (lambda i: [b"ECHO", b"%d" % i]) if protocol == "resp" else _bytes_message
    control = Control(server.address, codec, make).start()
    received = peers * (len(wire) - 1)

    def episode() -> tuple[int, int]:
        """The peers' frames, one byte short, then whole: (resident growth while they
        wait, peak growth)."""
        before = trimmed_rss()
        reset_peak_rss()
        socks = open_clients(server.address, peers)
        start = server.stats()["bytes_in"]
        for sock in socks:
            sock.sendall(memoryview(wire)[:-1])  # (a slice would be a copy)
        assert wait_until(lambda: server.stats()["bytes_in"] - start >= received, 20)
        held = max(trimmed_rss(), peak_rss()) - before  # (the peak: growth copies too)
        for sock in socks:  # the last byte: each frame is whole, and echoed whole
            sock.sendall(wire[-1:])
        for sock in socks:
            sock.settimeout(20)
            assert recv_exactly(sock, len(wire)) == wire
        peak = peak_rss() - before
        close_all(socks)
        assert wait_until(lambda: open_count(server) == 1, 10)
        return held, peak

    # The first episode sets up the allocator (glibc raises its mmap threshold after the
    # first large free, and a loop thread's arena keeps some freed MiB): the baseline is
    # taken after it.
    episode()
    base = Baseline(server)
    held, peak = episode()
    # Each ring holds its frame's bytes in storage sized by the header (page-rounded),
    # and only pages bytes reached are resident: memory tracks the bytes received, not
    # the next power of two of them.
    assert held < received * 1.1 + 8 * MiB, (
        f"+{held / MiB:.0f} MiB resident for {received / MiB:.0f} MiB received")
    control.stop()
    assert wait_until(lambda: open_count(server) == 0, 10)
    base.check(8 * MiB)
    assert gevwire_log.unexpected() == []
    print(f"\n[large partial frames, {protocol}] {peers} x {size // MiB} MiB partial frames: "
          f"+{held / MiB:.0f} MiB resident for {received / MiB:.0f} MiB received; peak "
          f"+{peak / MiB:.0f} MiB")


# -- a server-wide memory budget ------------------------------------------------------------


def _prefixed(max_frame: int) -> gevwire.Codec:
    return gevwire.Codec(c.Prefixed(c.Int32ub, c.GreedyBytes), max_frame_size=max_frame)


def test_the_memory_budget_closes_the_largest_holders_past_its_hard_mark(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """Each peer stays within every per-connection limit (a 4 MiB frame under an 8 MiB
    max_frame_size), but 24 of them sending 2 MiB of their frame and stopping would hold
    96 MiB of ring storage (48 MiB resident).  With max_buffered_bytes=8 MiB and a hard
    mark of 12 MiB, reading pauses on the largest holders and, past the hard mark, they
    are closed first with MemoryBudgetExceeded; the control is served throughout."""
    from gevwire.connection import READ_MAX

    soft, hard = 8 * MiB, 12 * MiB
    codec = _prefixed(8 * MiB)
    handler = Echo()
    server = serve(handler, codec=codec, max_buffered_bytes=soft, buffered_hard_limit=hard)
    control = Control(server.address, codec, _bytes_message).start()
    partial = struct.pack(">I", 4 * MiB) + random.Random(17).randbytes(2 * MiB)
    first = Baseline(server)
    before = trimmed_rss()
    reset_peak_rss()
    stats, socks = _budget_round(server, partial, 0)
    peak = peak_rss() - before
    assert stats["buffered_bytes"] <= hard, stats
    assert stats["errors"].get("MemoryBudgetExceeded", 0) == stats["budget_closes"] >= 10
    assert stats["budget_pauses"] > 0
    # Held storage never ran far past the hard mark: resident growth stays under it plus
    # what one loop turn reads before the check (a read per connection: READ_MAX into
    # its ring, plus the spare buffer), and 8 MiB of slack for the process's other
    # allocations (4 MiB was passed by 0.3 and 2.7 MiB on a loaded 2-core machine).
    # Without the budget: +48 MiB, well over this bound (about 28 MiB).
    # (On io_uring, plus the provided-buffer ring the kernel receives into, resident by
    # design: Baseline.check allows it too.)
    one_turn = len(socks) * (READ_MAX + 64 * KiB)
    assert peak < hard + one_turn + 8 * MiB + first.loop_buffers, (
        f"peak RSS growth {peak / MiB:.1f} MiB")
    close_all(socks)
    assert wait_until(lambda: open_count(server) == 1, 10)  # the control
    assert server.stats()["buffered_bytes"] == 0  # every ring gave its storage back
    # The same attack twice more; the last round is measured from after the one
    # before it.  The threads' glibc arenas keep a varying few MiB after a round (2 to
    # 9 MiB over a fresh process, then -4 to +3 MiB round to round, and up to +8.5 MiB
    # from a first to a second round late in a whole-suite run on Python 3.12 / 3.13),
    # so the baseline is taken after two, as Baseline says.  What the third leaves
    # must be within 8 MiB: a leak of what this guards, the rings of the connections
    # a round closes (10 or more, 2 MiB each), would be 20 MiB or more every round.
    closes = stats["budget_closes"]
    for measured in (False, True):
        if measured:
            base = Baseline(server)
        again, socks = _budget_round(server, partial, closes)
        assert again["budget_closes"] - closes >= 10
        closes = again["budget_closes"]
        close_all(socks)
        assert wait_until(lambda: open_count(server) == 1, 10)  # the control
        assert server.stats()["buffered_bytes"] == 0
    control.stop()
    del partial  # the test's own 2 MiB is not the server's to give back
    assert wait_until(lambda: open_count(server) == 0, 10)
    assert server.stats()["buffered_bytes"] == 0
    base.check(8 * MiB)
    assert gevwire_log.unexpected(gevwire.MemoryBudgetExceeded) == []
    print(f"\n[memory budget] 24 peers x 2 MiB of 4 MiB frames under max_buffered_bytes="
          f"{soft // MiB} MiB: {stats['budget_closes']} closed, {stats['budget_pauses']} "
          f"paused; peak RSS growth {peak / MiB:.1f} MiB")


def _budget_round(server: gevwire.Server, partial: bytes, closes_before: int
                  ) -> tuple[dict[str, Any], list[socket.socket]]:
    """24 peers send ``partial`` (2 MiB of a 4 MiB frame) and stop; returns the stats
    once the budget has closed some (each closed one is checked to be closed), and the
    peers' sockets."""
    socks = open_clients(server.address, 24)
    senders = [threading.Thread(target=_send_quietly, args=(sock, partial), daemon=True)
               for sock in socks]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(20)
    assert wait_until(lambda: server.stats()["budget_closes"] > closes_before, 10)
    time.sleep(0.3)  # (the checks settle)
    stats = server.stats()
    closed = sum(not drain(sock) for sock in socks)
    assert closed == stats["budget_closes"] - closes_before
    return stats, socks


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # closed by the budget while sending


def test_the_memory_budget_pauses_the_largest_and_resumes_it_below_the_low_mark(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """Under the soft mark nothing happens; over it the largest holder stops being read
    (not closed: the hard mark is far), and reads again once the others' storage is
    given back (below three quarters of the soft mark); its frame then completes."""
    codec = _prefixed(8 * MiB)
    handler = Echo()
    server = serve(handler, codec=codec, max_buffered_bytes=4 * MiB,
                   buffered_hard_limit=64 * MiB)
    big = struct.pack(">I", 2560 * KiB) + random.Random(18).randbytes(2560 * KiB)
    small = struct.pack(">I", 2 * MiB) + random.Random(19).randbytes(2 * MiB)
    with socket.create_connection(server.address[:2], timeout=10) as first, \
            socket.create_connection(server.address[:2], timeout=10) as second:
        first.sendall(big[: 1 * MiB])
        assert wait_until(lambda: server.stats()["buffered_bytes"] >= 2560 * KiB, 10)
        assert server.stats()["budget_pauses"] == 0  # 2.5 MiB: under the soft mark
        second.sendall(small[: 1 * MiB])  # 2.5 + 2 MiB reserved: over it
        assert wait_until(lambda: server.stats()["budget_pauses"] == 1, 10)
        paused = [conn for conn in server.connections() if conn._budget_paused]
        assert len(paused) == 1 and paused[0].peer_addr == first.getsockname()
        second.sendall(small[1 * MiB:])  # whole: echoed, its storage given back
        assert recv_exactly(second, len(small)) == small
        first.sendall(big[1 * MiB:])  # read again once resumed
        first.settimeout(10)
        assert recv_exactly(first, len(big)) == big
    stats = server.stats()
    assert stats["budget_closes"] == 0 and "MemoryBudgetExceeded" not in stats["errors"]
    assert gevwire_log.unexpected() == []


def test_memory_budget_validation() -> None:
    with pytest.raises(ValueError, match="max_buffered_bytes must be positive"):
        gevwire.Server(Echo(), address="127.0.0.1:0", max_buffered_bytes=0)
    with pytest.raises(ValueError, match="buffered_hard_limit"):
        gevwire.Server(Echo(), address="127.0.0.1:0", max_buffered_bytes=10,
                       buffered_hard_limit=5)
    with pytest.raises(ValueError, match="needs max_buffered_bytes"):
        gevwire.Server(Echo(), address="127.0.0.1:0", buffered_hard_limit=5)


# -- MQTT broker (examples/mqtt_broker.py): what one client's packets may cost --------------


def _example_module(name: str) -> Any:
    """``examples/<name>.py``, imported: its handler then serves here, in loop threads,
    so that this process's RSS is the example server's."""
    import importlib

    examples = str(REPO / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    return importlib.import_module(name)


def _mqtt_broker_module() -> Any:
    return _example_module("mqtt_broker")


def _mqtt_client(address: Any, client_id: str) -> Any:
    """A raw MQTT client (``BlockingClient``), CONNECTed."""
    from gevwire.codecs import mqtt as m
    from gevwire.testing import BlockingClient

    client = BlockingClient(address, m.mqtt(), timeout=10)
    assert client.request(m.Connect(client_id)) == m.ConnAck(0, False)
    return client


class MqttControl(Control):
    """:class:`Control` for the broker: a client subscribed to a topic of its own that
    publishes numbered QoS 0 messages to it and checks that each comes back, in order."""

    def __init__(self, address: Any, *, interval: float = 0.005) -> None:
        super().__init__(address, interval=interval, pipeline=1)
        self.address = address

    def _session(self) -> None:
        from gevwire.codecs import mqtt as m

        with _mqtt_client(self.address, "control") as client:
            self._ready.set()
            assert client.request(m.Subscribe(1, (("control/echo", 0),))) == m.SubAck(1, (0,))
            while not self._stop.is_set():
                message = m.Publish("control/echo", b"%d" % self.count)
                start = time.monotonic()
                got = client.request(message)
                if got != message:
                    self.failures.append(f"message {self.count}: got {got!r}")
                    return
                self._served(start)


def _mqtt_retain_grid(address: Any, codec: Any, count: int = 20_000) -> None:
    """Retain ``count`` QoS 0 messages on ``r/<i // 100>/<i % 100>``, i in order (so the
    oldest topics are the lowest i): a tree of 200 x 100 topics under one root."""
    from gevwire.codecs import mqtt as m

    with _mqtt_client(address, "publisher") as pub:
        pub.send_bytes(b"".join(
            codec.encode(m.Publish(f"r/{i // 100}/{i % 100}", b"v%d" % i, 0, True))
            for i in range(count)))
        assert pub.request(m.PingReq(), 30) == m.PingResp()


def test_mqtt_subscribe_of_4000_filters_against_20000_retained_messages(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """Each filter of a SUBSCRIBE is walked through the tree of retained topics (issue:
    4,000 filters x 20,000 retained topics, each pair matched under the lock, blocked
    the loop for 51.6 s; mosquitto: 7 ms), and what one SUBSCRIBE sends is bounded by
    the client's window and queue (20 + 1,000), so that 4,000 "#" filters are not 80
    million sends either: the filters after the allowance is spent are not walked at
    all.  The time bound is generous: a minute without the tree, tens of ms with it."""
    from gevwire.codecs import mqtt as m

    broker_module = _mqtt_broker_module()
    codec = m.mqtt()
    broker = broker_module.Broker(codec)
    allowance = broker.max_inflight + broker.max_queued
    server = serve(broker, codec=codec)  # one loop: a block shows in the control
    _mqtt_retain_grid(server.address, codec)
    assert len(broker.retained) == 20_000
    filters = [(f"r/{j % 200}/{j // 200}", 0) for j in range(1_000)]  # one topic each
    filters += [(f"r/{j}/none", 0) for j in range(1_000)]  # a miss at the last level
    filters += [("#", 0)] * 1_000  # all of them, each time
    filters += [(f"+/+/none{j}", 0) for j in range(500)]  # "+" through 200 nodes: none
    filters += [(f"+/+/+/{j}", 0) for j in range(500)]  # deeper than every topic
    want = [topic for topic, _ in filters[:1_000]]
    want += [f"r/0/{k}" for k in range(allowance - 1_000)]  # then "#", oldest first
    control = MqttControl(server.address).start()
    with _mqtt_client(server.address, "subscriber") as sub:
        start = time.monotonic()
        sub.send(m.Subscribe(1, tuple(filters)))
        assert sub.recv(30) == m.SubAck(1, (0,) * 4_000)
        got = [sub.recv(30) for _ in want]
        elapsed = time.monotonic() - start
        assert [g.topic for g in got] == want  # per filter, in the order of the SUBSCRIBE
        assert all(g.retain for g in got)
        sub.send(m.PingReq())
        while (more := sub.recv()) != m.PingResp():  # no more than the allowance...
            assert (more.topic, more.retain) == ("control/echo", False)  # ...but live ones
    control.stop()
    worst = control.max_latency(start)
    assert elapsed < 2.0, elapsed
    assert worst < 2.0, worst
    assert gevwire_log.unexpected() == []
    print(f"\n[mqtt retained] SUBACK and {len(want)} retained messages (the allowance) for "
          f"4,000 filters against 20,000 topics in {elapsed * 1000:.0f} ms; control's worst "
          f"round trip meanwhile {worst * 1000:.0f} ms")


#: The control's worst round trip while one SUBSCRIBE is served (the broker shares this
#: process, and its GIL, with the clients here).  Measured on a 2-core box: 0-25 ms, up
#: to 35 ms with two busy processes beside; with unbounded walks, 2.4 s.
MQTT_STALL_BOUND = 0.1


def test_mqtt_wildcards_matching_nothing_cost_at_most_max_retained_visits(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """A wildcard filter that matches nothing still walks whole levels of the retained
    tree: ``+/+/+/x`` looks at each of 20,000 leaves to find that none goes on (~0.5 ms),
    so one SUBSCRIBE of 4,000 such filters held the loop, and the broker's lock, for
    2.4 s.  The walks of one SUBSCRIBE visit at most ``max_retained_visits`` nodes in all
    (100,000: tens of ms at most): past it the SUBACK still grants every filter and only
    the retained messages are left out (counted, logged).  A SUBSCRIBE of 4,000 filters
    that match broadly stops at the client's window and queue, as before.  The control
    (on the same loop) must not see a round trip over MQTT_STALL_BOUND meanwhile."""
    from gevwire.codecs import mqtt as m

    broker_module = _mqtt_broker_module()
    codec = m.mqtt()
    broker = broker_module.Broker(codec)
    allowance = broker.max_inflight + broker.max_queued
    server = serve(broker, codec=codec)  # one loop: a block shows in the control
    _mqtt_retain_grid(server.address, codec)
    assert len(broker.retained) == 20_000
    cuts = LogCapture()
    broker_log = logging.getLogger("mqtt_broker")
    broker_log.addHandler(cuts)
    nothing = tuple((f"+/+/+/x{i}", 0) for i in range(4_000))  # 20,403 visits each
    # Each matches 100 topics (r/<j>/*) and they come in age order: the allowance is
    # the 1,020 oldest topics, from the first 11 filters.
    broad = tuple((f"+/{j % 200}/+", 0) for j in range(4_000))
    want = [f"r/{i // 100}/{i % 100}" for i in range(allowance)]
    control = MqttControl(server.address, interval=0.001).start()  # dense: a stall shows
    base = Baseline(server)
    try:
        with _mqtt_client(server.address, "nothing") as sub:
            start = time.monotonic()
            assert sub.request(m.Subscribe(1, nothing), 30) == m.SubAck(1, (0,) * 4_000)
            nothing_elapsed = time.monotonic() - start
            assert sub.request(m.PingReq()) == m.PingResp()  # no retained message at all
            assert len(broker.sessions["nothing"].subscriptions) == 4_000
        nothing_worst = control.max_latency(start)
        assert (broker.retained_cut_by_visits, broker.retained_cut_by_queue) == (1, 0)
        with _mqtt_client(server.address, "broad") as sub:
            start = time.monotonic()
            sub.send(m.Subscribe(2, broad))
            assert sub.recv(30) == m.SubAck(2, (0,) * 4_000)
            got = [sub.recv(30) for _ in want]
            broad_elapsed = time.monotonic() - start
            assert [g.topic for g in got] == want
            assert all(g.retain for g in got)
            assert sub.request(m.PingReq()) == m.PingResp()  # no more than the allowance
        broad_worst = control.max_latency(start)
        assert (broker.retained_cut_by_visits, broker.retained_cut_by_queue) == (1, 1)
        assert wait_until(lambda: set(broker.sessions) == {"control"}, 5)
    finally:
        broker_log.removeHandler(cuts)
    control.stop()
    growth = base.check(8 * MiB)
    warnings = [msg for level, msg, _ in cuts.records if level >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "nothing: a SUBSCRIBE visited max_retained_visits (100000)" in warnings[0]
    assert "broad: a SUBSCRIBE matched more retained messages than its queue takes " \
        f"({allowance})" in warnings[1]
    assert gevwire_log.unexpected() == []
    print(f"\n[mqtt retained walks] 4,000 filters matching nothing: SUBACK in "
          f"{nothing_elapsed * 1000:.0f} ms, control's worst round trip "
          f"{nothing_worst * 1000:.0f} ms; 4,000 matching 100 topics each: SUBACK and "
          f"{allowance} retained in {broad_elapsed * 1000:.0f} ms, control's worst "
          f"{broad_worst * 1000:.0f} ms; RSS +{growth / MiB:.1f} MiB")
    assert nothing_worst < MQTT_STALL_BOUND, nothing_worst
    assert broad_worst < MQTT_STALL_BOUND, broad_worst


def test_mqtt_subscriber_that_never_acks_costs_its_window_and_queue_only(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """A subscriber that reads but never PUBACKs gets ``max_inflight`` messages; the
    next ``max_queued`` wait for it and the rest are dropped (issue: every QoS 1 message
    stayed in flight, up to 65,535 of up to max_packet_size each, +2.19 GiB on one
    connection; mosquitto: 20 in flight + 1,000 queued).  Broker memory then tracks
    (max_inflight + max_queued) x size, not the count published; drops are logged once,
    not per message."""
    from gevwire.codecs import mqtt as m

    inflight, queued, size, count = 4, 16, 64 * KiB, 400  # 25 MiB published
    broker_module = _mqtt_broker_module()
    codec = m.mqtt()
    broker = broker_module.Broker(codec, max_inflight=inflight, max_queued=queued)
    server = serve(broker, codec=codec)
    drops = LogCapture()
    broker_log = logging.getLogger("mqtt_broker")
    broker_log.addHandler(drops)
    received: list[tuple[int, int]] = []  # (packet id, message number): no payload kept
    reading = threading.Event()
    sub = _mqtt_client(server.address, "sub")
    pub = _mqtt_client(server.address, "pub")

    def read() -> None:
        while reading.is_set():
            try:
                message = sub.recv(0.1)
            except TimeoutError:
                continue
            except Exception:
                return
            if message.type == "publish":
                received.append((message.packet_id, int(message.payload[:8])))

    reader = threading.Thread(target=read, name="non-acking reader", daemon=True)
    try:
        assert sub.request(m.Subscribe(1, (("big", 1),))) == m.SubAck(1, (1,))
        reading.set()
        reader.start()
        filler = random.Random(3).randbytes(size - 8)
        base = Baseline(server)
        for first in range(0, count, 50):
            pub.send_bytes(b"".join(
                codec.encode(m.Publish("big", b"%08d" % i + filler, 1, packet_id=i + 1))
                for i in range(first, first + 50)))
            assert [pub.recv() for _ in range(50)] == \
                [m.PubAck(i + 1) for i in range(first, first + 50)]
        assert wait_until(lambda: len(received) >= inflight, 10)
        time.sleep(0.2)
        assert [n for _, n in received] == list(range(inflight))  # the window, no more
        session = broker.sessions["sub"]
        with broker.lock:
            state = (len(session.inflight), len(session.queue), session.dropped)
        assert state == (inflight, queued, count - inflight - queued)
        held = base.check((inflight + queued) * size + 8 * MiB)  # connections still open
        warnings = [msg for level, msg, _ in drops.records if level >= logging.WARNING]
        assert len(warnings) == 1 and "dropped" in warnings[0], warnings
        # Acknowledging lets the queue out, in order, and nothing of the dropped ones.
        for packet_id, _ in list(received):
            sub.send(m.PubAck(packet_id))
        done = inflight
        while done < inflight + queued:
            assert wait_until(lambda: len(received) > done, 10), len(received)  # noqa: B023
            for packet_id, _ in received[done:]:
                sub.send(m.PubAck(packet_id))
                done += 1
        time.sleep(0.2)
        assert [n for _, n in received] == list(range(inflight + queued))
        assert wait_until(lambda: not broker.sessions["sub"].inflight, 5)
    finally:
        reading.clear()
        reader.join(5)
        broker_log.removeHandler(drops)
        sub.close()
        pub.close()
    assert wait_until(lambda: not broker.sessions, 5)
    growth = base.check(8 * MiB)
    assert gevwire_log.unexpected() == []
    print(f"\n[mqtt window] {count} x 64 KiB QoS 1 to a non-acking subscriber "
          f"(max_inflight {inflight}, max_queued {queued}): RSS +{held / MiB:.1f} MiB while "
          f"connected, +{growth / MiB:.1f} MiB after")


def test_mqtt_topics_deeper_than_max_topic_levels_cost_nothing(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """A topic tree node per level: 100 SUBSCRIBEs of one 32,767-level filter each took
    +958 MiB for 6.2 MiB sent.  Over ``max_topic_levels`` (200) a filter gets 0x80 in
    its SUBACK and adds nothing; a PUBLISH that deep closes its connection."""
    from gevwire.codecs import mqtt as m

    broker_module = _mqtt_broker_module()
    codec = m.mqtt()
    broker = broker_module.Broker(codec)
    server = serve(broker, codec=codec)
    control = MqttControl(server.address).start()
    with _mqtt_client(server.address, "warm") as warm:  # the loop's first buffers
        deep = "x" + "/+" * 32_766
        assert warm.request(m.Subscribe(1, ((deep, 0),))) == m.SubAck(1, (0x80,))
    base = Baseline(server)
    sent = 0
    with _mqtt_client(server.address, "deep") as client:
        for i in range(100):
            deep = f"{i:02d}" + "/+" * 32_766  # 65,534 bytes, 32,767 levels
            packet = codec.encode(m.Subscribe(i + 1, ((deep, 0), (f"ok/{i}", 0))))
            sent += len(packet)
            assert client.request(packet, 30) == m.SubAck(i + 1, (0x80, 0))
        assert sorted(broker.sessions["deep"].subscriptions) == sorted(
            f"ok/{i}" for i in range(100))
        client.send(m.Publish("/".join(["t"] * 201), b"too deep", 0, True))
        assert client.wait_closed(10)
    assert len(broker.retained) == 0
    assert wait_until(lambda: broker.tree.root.children is not None
                      and set(broker.tree.root.children) == {"control"}, 5)
    growth = base.check(8 * MiB)
    control.stop()
    assert gevwire_log.unexpected() == []
    print(f"\n[mqtt depth] 100 SUBSCRIBEs of 32,767-level filters ({sent / MiB:.1f} MiB "
          f"sent): all 0x80, RSS +{growth / MiB:.1f} MiB")



def test_mqtt_filters_within_the_depth_limit_cost_at_most_max_subscription_levels(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """Filters of 200 levels each pass max_topic_levels, and 16,000 of them (6.2 MiB sent)
    took +747 MiB of tree: each level ~240 bytes.  A client's filters are bounded by
    their levels summed (max_subscription_levels, 20,000 by default): past it a filter
    gets 0x80, so one client's tree costs a few MiB whatever it sends."""
    from gevwire.codecs import mqtt as m

    broker_module = _mqtt_broker_module()
    codec = m.mqtt()
    broker = broker_module.Broker(codec)
    limit = broker.max_subscription_levels
    server = serve(broker, codec=codec)
    control = MqttControl(server.address).start()
    with _mqtt_client(server.address, "warm") as warm:  # the loop's first buffers
        assert warm.request(m.Subscribe(1, (("w/" + "/+" * 198, 0),))) == m.SubAck(1, (0,))
    base = Baseline(server)
    sent = granted = 0
    with _mqtt_client(server.address, "deep") as client:
        for batch in range(160):  # 16,000 filters of 200 levels, 100 per SUBSCRIBE
            topics = tuple((f"{batch}-{i}" + "/+" * 199, 0) for i in range(100))
            packet = codec.encode(m.Subscribe(batch + 1, topics))
            sent += len(packet)
            codes = client.request(packet, 30).return_codes
            granted += sum(code == 0 for code in codes)
        assert granted == limit // 200  # then every one refused
        assert broker.sessions["deep"].levels == granted * 200
        held = trimmed_rss() - base.rss
        client.send(m.Disconnect())
        assert client.wait_closed(10)
    growth = base.check(8 * MiB)
    control.stop()
    # The granted filters' nodes (~240 bytes a level) while connected; all of it back
    # once the clean session is gone.
    assert held < limit * 512 + 8 * MiB, f"+{held / MiB:.1f} MiB while subscribed"
    assert gevwire_log.unexpected() == []
    print(f"\n[mqtt subscription levels] 16,000 filters of 200 levels ({sent / MiB:.1f} MiB "
          f"sent): {granted} granted, +{held / MiB:.1f} MiB while subscribed, "
          f"+{growth / MiB:.1f} MiB after")


def test_mqtt_a_packet_at_the_examples_max_packet_size_costs_tens_of_ms(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """The largest packet the example takes (``--max-packet-size``, 256 KiB) is the most
    one request can cost the loop: a SUBSCRIBE of 65,533 repeats of one filter, one of
    28,000 distinct filters (most refused by max_subscription_levels), and an
    UNSUBSCRIBE of as many.  Decoding is one tight loop over the body, each distinct
    filter decoded once (a 1 MiB SUBSCRIBE took 0.25 s to decode before)."""
    from gevwire.codecs import mqtt as m

    broker_module = _mqtt_broker_module()
    codec = m.mqtt(max_packet_size=256 << 10)  # the example's default
    broker = broker_module.Broker(codec)
    server = serve(broker, codec=codec)
    control = MqttControl(server.address, interval=0.001).start()
    repeats = tuple(("a", 0) for _ in range(((256 << 10) - 16) // 4))
    distinct = tuple((f"d/{i:x}", 0) for i in range(28_000))
    assert len(codec.encode(m.Subscribe(1, distinct))) <= 256 << 10
    start = time.monotonic()
    with _mqtt_client(server.address, "big") as client:
        got = client.request(m.Subscribe(1, repeats), 30)
        assert got == m.SubAck(1, (0,) * len(repeats))
        got = client.request(m.Subscribe(2, distinct), 30)
        granted = broker.max_subscription_levels // 2 - 1  # ("a" holds one level)
        assert got.return_codes.count(0) == granted
        assert got.return_codes.count(0x80) == len(distinct) - granted
        assert client.request(m.Unsubscribe(3, tuple(t for t, _ in distinct)), 30) == \
            m.UnsubAck(3)
        assert broker.sessions["big"].subscriptions == {"a": 0}
    worst = control.max_latency(start)
    control.stop()
    # ~50 ms measured here; the bound leaves room for a loaded CI machine.
    assert worst < 2.5 * MQTT_STALL_BOUND, f"the control waited {worst * 1000:.0f} ms"
    assert gevwire_log.unexpected() == []
    print(f"\n[mqtt max packet] SUBSCRIBE of {len(repeats):,} repeats, of 28,000 distinct "
          f"filters, UNSUBSCRIBE of 28,000: control's worst round trip {worst * 1000:.0f} ms")

def test_mqtt5_a_publish_of_20000_user_properties_to_20_subscribers_costs_tens_of_ms(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """MQTT 5.0 properties travel to every subscriber: one PUBLISH at the example's
    max packet size of ~20,000 user properties, at QoS 1, to 20 MQTT 5.0 subscribers.
    Decoding is linear in the properties (a tuple grown per item took 3.9 s for
    30,000), and the broker encodes the forwarded properties once per message, not per
    subscriber (30 ms each)."""
    from gevwire.codecs import mqtt as m
    from gevwire.testing import BlockingClient

    broker_module = _mqtt_broker_module()
    codec = m.mqtt(max_packet_size=256 << 10)  # the example's default
    broker = broker_module.Broker(codec)
    server = serve(broker, codec=codec)
    codec5 = m.mqtt(protocol_level=5, max_packet_size=1 << 20)

    def client5(client_id: str) -> Any:
        client = BlockingClient(server.address, codec5, timeout=10)
        got = client.request(m.Connect(client_id, protocol_level=5, properties={}), 10)
        assert got.return_code == 0
        return client

    pairs = tuple((f"k{i:05d}", "v") for i in range(20_000))
    message = m.Publish("props/big", b"x", 1, packet_id=1,
                        properties={"user_property": pairs})
    assert len(codec.encode(message)) <= 256 << 10
    subscribers = [client5(f"sub{i}") for i in range(20)]
    try:
        for sub in subscribers:
            assert sub.request(m.Subscribe(1, (("props/#", 1),), {})) == \
                m.SubAck(1, (1,), {})
        control = MqttControl(server.address, interval=0.001).start()
        start = time.monotonic()
        with client5("publisher") as pub:
            assert pub.request(message, 30) == m.PubAck(1)
        for sub in subscribers:
            got = sub.recv(30)
            assert got.properties["user_property"] == pairs
        worst = control.max_latency(start)
        control.stop()
    finally:
        for sub in subscribers:
            sub.close()
    # 55 ms measured here (368 ms when each subscriber's copy encoded them); the
    # bound leaves room for a loaded CI machine.
    assert worst < 2.5 * MQTT_STALL_BOUND, f"the control waited {worst * 1000:.0f} ms"
    assert gevwire_log.unexpected() == []
    print(f"\n[mqtt5 properties] PUBLISH of 20,000 user properties to 20 subscribers: "
          f"control's worst round trip {worst * 1000:.0f} ms")

# -- Redis example (examples/redis_server.py): what one client's glob patterns may cost -----


def _redis_server_module() -> Any:
    return _example_module("redis_server")


#: The keyspace of the KEYS cases: small, as the stalls were found on.
REDIS_KEYS = [b"a" * 40, b"xab", b"user:1", b"user:2", b"key:z"]


def _redis_serve(serve: ServeFn, timings: list[float] | None = None) -> gevwire.Server:
    """The example's handler and codec on one loop (a stall shows in the control), over a
    store holding :data:`REDIS_KEYS`.  With ``timings``, the loop's time in each KEYS and
    CONFIG command (the command alone: no receiving, decoding or sending) is appended."""
    module = _redis_server_module()
    store = module.RedisStore()
    for key in REDIS_KEYS:
        store.data[key] = b"v"
    handler = module.RedisHandler(store)
    if timings is not None:
        execute = store.execute

        def timed(client: Any, args: list[bytes]) -> Any:
            if args[0].upper() not in (b"KEYS", b"CONFIG"):
                return execute(client, args)
            start = time.perf_counter()
            try:
                return execute(client, args)
            finally:
                timings.append(time.perf_counter() - start)

        handler.on_message = timed
    return serve(handler, codec=module.redis_codec())


def _redis_client(address: Any) -> Any:
    from gevwire.codecs.resp import resp
    from gevwire.testing import BlockingClient

    return BlockingClient(address, resp(), timeout=30)


class RedisControl(Control):
    """:class:`Control` for the Redis example: pipelined ``ECHO`` of numbered messages,
    each reply checked, in order."""

    def __init__(self, address: Any, *, interval: float = 0.005, pipeline: int = 3) -> None:
        super().__init__(address, interval=interval, pipeline=pipeline)
        self.address = address

    def _session(self) -> None:
        from gevwire.codecs.resp import resp

        codec = resp()
        with _redis_client(self.address) as client:
            self._ready.set()
            while not self._stop.is_set():
                messages = [_default_message(self.count + k) for k in range(self.pipeline)]
                start = time.monotonic()
                client.send_bytes(b"".join(codec.encode([b"ECHO", m]) for m in messages))
                if [client.recv() for _ in messages] != messages:
                    self.failures.append(f"round at {self.count}: replies differ from requests")
                    return
                self._served(start)


def test_redis_keys_patterns_that_backtracked_exponentially_answer_at_once(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """``KEYS *a*a*a*a*a*a*a*a*a*a*b`` against one 40-byte key stalled the loop 35.7 s:
    the glob was a regex, and each ``*`` multiplied its backtracking (Redis bounds this
    since CVE-2022-36021).  Matched with one backtrack point, it is microseconds; the
    bound is generous."""
    server = _redis_serve(serve)
    control = RedisControl(server.address).start()
    cases = [
        (b"*a" * 10 + b"*b", []),
        (b"*a" * 10, [b"a" * 40]),
        (b"*a" * 30 + b"*b", []),  # 30 stars: far longer still, for the regex
        (b"*a*a*[ab]", [b"a" * 40]),
        (b"*?" * 20 + b"*[^a]", []),
    ]
    with _redis_client(server.address) as client:
        start = time.monotonic()
        for pattern, want in cases:
            assert sorted(client.request([b"KEYS", pattern])) == want, pattern
        elapsed = time.monotonic() - start
    control.stop()
    worst = control.max_latency(start)
    assert elapsed < 2.0, elapsed
    assert worst < 2.0, worst
    assert gevwire_log.unexpected() == []
    print(f"\n[redis KEYS backtracking] {len(cases)} patterns of up to 31 stars against "
          f"{len(REDIS_KEYS)} keys in {elapsed * 1000:.1f} ms; control's worst round trip "
          f"meanwhile {worst * 1000:.1f} ms")


#: KEYS patterns of ``size`` bytes or up to 4 less, by shape: ``shape(size)`` is (the
#: pattern, the keys of REDIS_KEYS it matches).  At 8 MiB the classes of escapes or ranges
#: took 0.6 to 1 s to match (and each shape seconds to compile, as a regex); at
#: ``max_pattern_bytes`` (64 KiB) the costliest, a class of escaped ranges, takes ~8 ms.
REDIS_PATTERN_SHAPES: dict[str, Callable[[int], tuple[bytes, list[bytes]]]] = {
    "letters then ?": lambda size: (b"a" * (size - 1) + b"?", []),
    "stars and letters": lambda size: (b"*a" * (size // 2), []),
    "stars": lambda size: (b"*" * size, sorted(REDIS_KEYS)),
    "question marks": lambda size: (b"?" * size, []),
    "classes": lambda size: (b"*[a]" * (size // 4), []),
    "one class of plain bytes": lambda size: (b"*[" + b"xyz" * ((size - 3) // 3) + b"]",
                                              [b"key:z"]),
    "one class of escapes": lambda size: (b"*[" + b"\\a" * ((size - 4) // 2) + b"]b",
                                          [b"xab"]),
    "one class of ranges": lambda size: (b"*[" + b"a-b" * ((size - 3) // 3) + b"]",
                                         [b"a" * 40, b"xab"]),
    "one class of escaped ranges": lambda size: (b"*[" + b"\\a-b" * ((size - 3) // 4) + b"]",
                                                 [b"a" * 40, b"xab"]),
}


def test_redis_keys_pattern_past_max_pattern_bytes_is_refused_before_matching(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """An 8 MiB KEYS pattern stalled the loop 20.9 s and took +844 MiB as a regex; read
    in place, still up to a second.  Past ``max_pattern_bytes`` it is refused before any
    matching, with an ERR reply that says the limit, and the connection stays open: what
    it costs is its bytes (received, then decoded).  At the limit it is served."""
    module = _redis_server_module()
    limit = module.MAX_PATTERN_BYTES
    timings: list[float] = []
    server = _redis_serve(serve, timings)
    with _redis_client(server.address) as client:  # the loop's first large buffers
        assert client.request([b"KEYS", b"x" * (8 * MiB)], 30).startswith("ERR")
    base = Baseline(server)
    control = RedisControl(server.address).start()
    pattern, _ = REDIS_PATTERN_SHAPES["one class of escaped ranges"](8 * MiB)
    size = len(pattern)
    with _redis_client(server.address) as client:
        request = client.codec.encode([b"KEYS", pattern])
        before = rss()
        reset_peak_rss()
        start = time.monotonic()
        client.send_bytes(request)
        got = client.recv(60)
        elapsed = time.monotonic() - start
        peak = peak_rss() - before
        del request, pattern
        assert isinstance(got, module.RespError)
        assert got == (f"ERR glob pattern too long: {size} bytes, the limit is {limit} "
                       f"bytes per KEYS")
        # The same connection: one byte over is refused, the limit itself is served.
        got = client.request([b"KEYS", b"*" * (limit + 1)])
        assert got == (f"ERR glob pattern too long: {limit + 1} bytes, the limit is "
                       f"{limit} bytes per KEYS")
        assert sorted(client.request([b"KEYS", b"*" * limit])) == sorted(REDIS_KEYS)
        assert client.request([b"ECHO", b"still here"]) == b"still here"
    control.stop()
    worst = control.max_latency(start)
    # A loop thread's glibc arena may keep a freed 8 MiB buffer or two (see Baseline).
    growth = base.check(32 * MiB)
    # The client's request and pattern, the server's buffer and decoded command: 8 MiB or
    # so each.
    assert peak < 64 * MiB, f"RSS peaked {peak / MiB:.0f} MiB above where it was"
    refused = max(timings[1:3])  # the two refused after the warm-up: a length compared
    assert refused < 0.25, refused  # microseconds; generous for a loaded machine
    assert elapsed < 5.0, elapsed  # tens of ms: 8 MiB sent, received and decoded
    assert worst < 5.0, worst
    assert gevwire_log.unexpected() == []
    print(f"\n[redis KEYS 8 MiB] refused in {elapsed * 1000:.0f} ms ({refused * 1e6:.0f} us "
          f"of it the command), RSS peak +{peak / MiB:.0f} MiB, +{growth / MiB:.1f} MiB "
          f"after; control's worst round trip {worst * 1000:.0f} ms")


def _redis_command_at_a_limit(
    serve: ServeFn, command: list[bytes],
) -> tuple[Any, float, float, float, int]:
    """``command`` on a fresh server beside the control: ``(reply, seconds to answer,
    seconds the command took on the loop, the control's worst round trip, RSS growth)``,
    checked against the bounds of a command at a limit (and the connection still
    serving)."""
    timings: list[float] = []
    server = _redis_serve(serve, timings)
    base = Baseline(server)
    control = RedisControl(server.address).start()
    with _redis_client(server.address) as client:
        start = time.monotonic()
        got = client.request(command, 30)
        elapsed = time.monotonic() - start
        assert client.request([b"ECHO", b"still here"]) == b"still here"
    control.stop()
    worst = control.max_latency(start)
    growth = base.check(8 * MiB)
    served = timings[0]
    assert served < 0.25, served
    assert worst < 0.5, worst
    assert elapsed < 2.0, elapsed
    return got, elapsed, served, worst, growth


@pytest.mark.parametrize("shape", list(REDIS_PATTERN_SHAPES))
def test_redis_keys_pattern_at_max_pattern_bytes_costs_milliseconds(
    serve: ServeFn, gevwire_log: LogCapture, shape: str
) -> None:
    """At ``max_pattern_bytes`` the costliest shape takes ~8 ms of the loop here (the
    limit was chosen for that: no stall over 100 ms from one request).  Asserted: the
    command's own time on the loop under 250 ms and the control's worst round trip under
    500 ms, generous for a loaded two-core machine (with four busy processes beside, the
    command took up to 40 ms and the control's worst round trip, which also waits for its
    own thread to be scheduled, passed 100 ms now and then)."""
    module = _redis_server_module()
    limit = module.MAX_PATTERN_BYTES
    pattern, want = REDIS_PATTERN_SHAPES[shape](limit)
    assert limit - 4 <= len(pattern) <= limit
    got, elapsed, served, worst, growth = _redis_command_at_a_limit(serve, [b"KEYS", pattern])
    assert sorted(got) == want
    assert gevwire_log.unexpected() == []
    print(f"\n[redis KEYS {len(pattern)} bytes, {shape}] the command took "
          f"{served * 1000:.1f} ms, answered in {elapsed * 1000:.1f} ms, +{growth / MiB:.1f} "
          f"MiB after; control's worst round trip {worst * 1000:.1f} ms")


#: CONFIG GET patterns by shape (``shape(i)`` is the i-th), each of at most 64 bytes and
#: matching no parameter: the costliest found at ``max_config_patterns`` patterns of
#: ``max_pattern_bytes`` in all (each is matched against every parameter), up to ~20 ms a
#: command here.
REDIS_CONFIG_SHAPES: dict[str, Callable[[int], bytes]] = {
    "numbered, of four kinds": lambda i: (b"nosuch%d", b"*%d*", b"*[^a]?%d", b"SA?E%d")[
        i % 4] % i,
    "negated classes then z": lambda i: b"*" + b"[^a]" * 15 + b"z",
    "a class of escaped ranges": lambda i: b"*[" + b"\\a-b" * 15 + b"]z",
    "stars and classes": lambda i: (b"*[^x]*?" * 10)[:64],
    "stars and ranges": lambda i: b"*[b-z]" * 10,
    "stars and negated classes": lambda i: (b"*[^a]" * 13)[:64],
    "short": lambda i: b"*z",
}
#: CONFIG GET patterns that find every parameter; the reply, in the order first found.
REDIS_CONFIG_FINDS_ALL = [b"DATABASES", b"*A*", b"save", b"*"]
REDIS_CONFIG_ALL = [b"databases", b"1", b"save", b"", b"appendonly", b"no"]


def test_redis_config_get_past_its_limits_is_refused_before_matching(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """``CONFIG GET`` with 500,000 patterns took 24.8 s (a regex compiled per pattern),
    then 0.5 to 2.1 s read in place: each pattern costs microseconds, even an empty one,
    so both their count (``max_config_patterns``) and their bytes (``max_pattern_bytes``)
    are bounded.  Past either, an ERR reply that says the limit, before any matching, and
    the connection stays open.  The 500,000 are still received and decoded (the codec's
    ``max_array_length`` bounds that)."""
    module = _redis_server_module()
    count, limit = module.MAX_CONFIG_PATTERNS, module.MAX_PATTERN_BYTES
    shapes = (b"nosuch%d", b"*%d*", b"*[^a]?%d", b"SA?E%d")
    patterns = [shapes[i % 4] % i for i in range(500_000)] + REDIS_CONFIG_FINDS_ALL
    timings: list[float] = []
    server = _redis_serve(serve, timings)
    with _redis_client(server.address) as client:  # the loop's first large buffers
        request = client.codec.encode([b"CONFIG", b"GET", *patterns])
        client.send_bytes(request)
        assert client.recv(60).startswith("ERR too many patterns")
    base = Baseline(server)
    control = RedisControl(server.address).start()
    with _redis_client(server.address) as client:
        before = rss()
        reset_peak_rss()
        start = time.monotonic()
        client.send_bytes(request)
        got = client.recv(60)
        elapsed = time.monotonic() - start
        peak = peak_rss() - before
        assert isinstance(got, module.RespError)
        assert got == (f"ERR too many patterns: {len(patterns)}, the limit is {count} per "
                       f"CONFIG GET")
        # The same connection: as many as allowed but a byte too many in all is refused.
        width = limit // count
        wide = [b"x" * width] * (count - 1) + [b"*" * (limit - (count - 1) * width + 1)]
        assert sum(map(len, wide)) == limit + 1
        got = client.request([b"CONFIG", b"GET", *wide])
        assert got == (f"ERR glob pattern too long: {limit + 1} bytes, the limit is "
                       f"{limit} bytes per CONFIG GET")
        got = client.request([b"CONFIG", b"GET", *wide[1:]])  # one pattern less: served
        assert got == [b"save", b"", b"appendonly", b"no", b"databases", b"1"]
        assert client.request([b"CONFIG", b"GET", *REDIS_CONFIG_FINDS_ALL]) == REDIS_CONFIG_ALL
    control.stop()
    worst = control.max_latency(start)
    size = len(request)
    del request, patterns
    growth = base.check(32 * MiB)
    # The client's request, the server's buffer, and 500,000 bytes objects decoded.
    assert peak < 128 * MiB, f"RSS peaked {peak / MiB:.0f} MiB above where it was"
    refused = max(timings[1:3])
    assert refused < 0.25, refused  # microseconds: a count, then ~1,000 lengths summed
    assert elapsed < 6.0, elapsed
    assert worst < 6.0, worst
    assert gevwire_log.unexpected() == []
    print(f"\n[redis CONFIG GET] 500,004 patterns ({size / MiB:.1f} MiB) refused in "
          f"{elapsed * 1000:.0f} ms ({refused * 1e6:.0f} us of it the command), RSS peak "
          f"+{peak / MiB:.0f} MiB, +{growth / MiB:.1f} MiB after; control's worst round "
          f"trip {worst * 1000:.0f} ms")


@pytest.mark.parametrize("shape", list(REDIS_CONFIG_SHAPES))
def test_redis_config_get_at_its_limits_costs_milliseconds(
    serve: ServeFn, gevwire_log: LogCapture, shape: str
) -> None:
    """``max_config_patterns`` patterns (all but the last four of one shape, those four
    finding every parameter) of up to ``max_pattern_bytes`` in all: the costliest shape
    takes up to ~20 ms of the loop here.  Bounds as for KEYS at its limit."""
    module = _redis_server_module()
    count, limit = module.MAX_CONFIG_PATTERNS, module.MAX_PATTERN_BYTES
    make = REDIS_CONFIG_SHAPES[shape]
    patterns = [make(i) for i in range(count - len(REDIS_CONFIG_FINDS_ALL))]
    patterns += REDIS_CONFIG_FINDS_ALL
    assert len(patterns) == count
    assert sum(map(len, patterns)) <= limit
    got, elapsed, served, worst, growth = _redis_command_at_a_limit(
        serve, [b"CONFIG", b"GET", *patterns])
    assert got == REDIS_CONFIG_ALL
    assert gevwire_log.unexpected() == []
    print(f"\n[redis CONFIG GET {count} patterns, {sum(map(len, patterns))} bytes, {shape}] "
          f"the command took {served * 1000:.1f} ms, answered in {elapsed * 1000:.1f} ms, "
          f"+{growth / MiB:.1f} MiB after; control's worst round trip {worst * 1000:.1f} ms")


#: KEYS patterns against a few keys of 32 KiB of ``a`` (made with SET): (the pattern, the
#: long keys it matches, or None if the matching budget refuses it).  Matched byte by byte
#: with backtracking, pattern length times key length in Python: ``*`` + 16,000 ``a`` +
#: ``b*`` stalled the loop 32 s, ``*`` + 16,000 ``[a]`` + ``b*`` 129 s.
REDIS_LONG_KEY_PATTERNS: list[tuple[bytes, int | None]] = [
    (b"*" + b"a" * 1000 + b"b*", 0),  # literal parts: found with bytes.find, at C speed
    (b"*" + b"a" * 4000 + b"b*", 0),
    (b"*" + b"a" * 16000 + b"b*", 0),
    (b"*" + b"a" * 16000 + b"*", 3),
    (b"*" + b"\\a" * 16000 + b"b*", 0),
    (b"*" + b"[a]" * 16000 + b"b*", None),  # classes: counted, stopped by the budget
    (b"*" + b"?" * 16000 + b"b*", None),
    (b"*" + b"a" * 16000 + b"?b*", None),
    (b"*a" * 32768, None),
    (b"*[a]" * 16384, None),
]


def test_redis_keys_against_long_keys_answers_or_is_refused_fast(
    serve: ServeFn, gevwire_log: LogCapture
) -> None:
    """Keys are the client's too: three of 32 KiB made with SET, then patterns that cost
    pattern length times key length.  Literal parts between ``*`` are found at C speed;
    the rest is counted and stopped at ``max_glob_steps`` (~40 ms here) with an ERR that
    says so.  Asserted: each command's own time on the loop under 250 ms, the control
    served throughout, the connection kept, memory bounded."""
    module = _redis_server_module()
    limit = module.MAX_GLOB_STEPS
    timings: list[float] = []
    server = _redis_serve(serve, timings)
    long_keys = [b"a" * (32 << 10) + b"%d" % i for i in range(3)]
    with _redis_client(server.address) as client:
        for key in long_keys:
            assert client.request([b"SET", key, b"v"]) == "OK"
    base = Baseline(server)
    control = RedisControl(server.address).start()
    refused = f"ERR glob pattern too costly to match: over {limit} steps, the limit per KEYS"
    with _redis_client(server.address) as client:
        start = time.monotonic()
        for pattern, want in REDIS_LONG_KEY_PATTERNS:
            got = client.request([b"KEYS", pattern], 30)
            if want is None:
                assert isinstance(got, module.RespError), pattern[:20]
                assert got == refused
            else:
                assert isinstance(got, list), (pattern[:20], got)
                assert len([key for key in got if key in long_keys]) == want, pattern[:20]
        elapsed = time.monotonic() - start
        assert client.request([b"ECHO", b"still here"]) == b"still here"
        assert sorted(client.request([b"KEYS", b"user:*"])) == [b"user:1", b"user:2"]
    control.stop()
    worst = control.max_latency(start)
    growth = base.check(8 * MiB)
    slowest = max(timings[:len(REDIS_LONG_KEY_PATTERNS)])
    assert slowest < 0.25, [f"{t * 1000:.0f} ms" for t in timings]
    assert worst < 0.5, worst
    assert elapsed < 5.0, elapsed
    assert control.count > 0
    assert gevwire_log.unexpected() == []
    print(f"\n[redis KEYS vs 32 KiB keys] {len(REDIS_LONG_KEY_PATTERNS)} patterns in "
          f"{elapsed * 1000:.0f} ms; the slowest command {slowest * 1000:.1f} ms (times: "
          f"{', '.join(f'{t * 1000:.1f}' for t in timings[:len(REDIS_LONG_KEY_PATTERNS)])}"
          f" ms), +{growth / MiB:.1f} MiB after; control's worst round trip "
          f"{worst * 1000:.1f} ms")


# -- TLS: hostile peers of a TLS listener (issue 15) ------------------------------------------
# Each case: a TLS control client served throughout (every reply byte correct and in
# order), the hostile connections all closed, fds back to baseline, memory bounded.


@pytest.fixture(scope="module")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("trustme")
    from tls_support import make_certs  # (here: a missing trustme skips TLS cases only)

    return make_certs(Path(tmp_path_factory.mktemp("tls-certs")))


class TLSControl(Control):
    """The control client over TLS (Python's ssl), with the test CA trusted."""

    def __init__(self, address: Any, certs: Any, codec: gevwire.BaseCodec,
                 **kwargs: Any) -> None:
        super().__init__(address, codec, **kwargs)
        self.ctx = certs.client_context()

    def _session(self) -> None:
        assert self.codec is not None
        codec = self.codec
        raw = socket.create_connection(self.address, timeout=10)
        with self.ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            self._ready.set()
            while not self._stop.is_set():
                data = b"".join(codec.encode(self.make(self.count + k))
                                for k in range(self.pipeline))
                start = time.monotonic()
                sock.sendall(data)
                if recv_exactly(sock, len(data)) != data:
                    self.failures.append(f"round at {self.count}: reply differs from request")
                    return
                self._served(start)


class TLSEcho(Echo):
    """Echo whose ``on_error`` closes on a TLS failure without logging it (see Echo: a
    log record per connection would hold each connection, and its TLS session)."""

    def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
        if isinstance(error, gevwire.TLSError):
            with self.lock:
                self.errors[type(error).__name__] += 1
                if len(self.error_samples) < 1000:
                    self.error_samples.append((type(error), str(error), None))
            conn.close()
        else:
            super().on_error(conn, error)


def tls_raw_client(address: Any, certs: Any, *, rcvbuf: int | None = None,
                   ) -> tuple[socket.socket, gevwire.TLSSession]:
    """A TLS client whose every byte on the wire is ours to cut: a socket plus a
    :class:`TLSSession`, handshake done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(address[:2])
    session = gevwire.TLSSession(certs.client_context(), server_side=False,
                                 server_hostname="localhost")
    sock.sendall(session.start())
    while not session.handshake_done:
        data = sock.recv(1 << 16)
        assert data, "the server closed during the handshake"
        session.receive(data)
        out = session.outgoing()
        if out:
            sock.sendall(out)
    return sock, session


def test_tls_garbage_and_plain_http_instead_of_a_client_hello(
    serve: ServeFn, gevwire_log: LogCapture, tls_certs: Any
) -> None:
    handler = TLSEcho()
    codec = gevwire.Codec(PREFIXED, max_frame_size=1 * MiB)
    server = serve(handler, codec=codec, ssl=tls_certs.server_context())
    control = TLSControl(server.address, tls_certs, codec).start()
    base = Baseline(server)
    rng = random.Random(15)
    hostile = open_clients(server.address, 60)
    for i, sock in enumerate(hostile):
        if i % 3 == 0:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        elif i % 3 == 1:
            sock.sendall(rng.randbytes(rng.randrange(1, 4096)))
        else:  # a whole handshake record of garbage
            sock.sendall(b"\x16\x03\x01\x04\x00" + rng.randbytes(1024))
    for sock in hostile:
        assert peer_closed(sock), "a hostile peer was not closed"
    close_all(hostile)
    assert wait_until(lambda: open_count(server) == 1, 10)
    control.stop()
    errors = server.stats()["errors"]
    assert errors.get("TLSHandshakeError", 0) >= 40, errors  # (a short random prefix may
    assert set(errors) <= {"TLSHandshakeError"}, errors  # be a valid start: timed out)
    reasons = {sample for kind, sample, _ in handler.error_samples}
    assert any("HTTP_REQUEST" in reason for reason in reasons), reasons
    assert handler.connects == 1  # only the control got to on_connect
    base.check(8 * MiB)
    assert gevwire_log.unexpected() == []


def test_tls_peers_that_never_finish_the_handshake_are_closed_at_its_timeout(
    serve: ServeFn, gevwire_log: LogCapture, tls_certs: Any
) -> None:
    count = 1000  # (as the issue asks: 2,000 fds here, both ends in this process)
    raise_nofile_limit(3 * count + 200)
    handler = TLSEcho()
    codec = gevwire.Codec(PREFIXED, max_frame_size=1 * MiB)
    timeout = 0.8
    server = serve(handler, codec=codec, ssl=tls_certs.server_context(),
                   ssl_handshake_timeout=timeout)
    control = TLSControl(server.address, tls_certs, codec).start()
    base = Baseline(server)
    # Half say nothing; half send the first half of a real ClientHello and stall.
    hello = gevwire.TLSSession(tls_certs.client_context(), server_side=False,
                               server_hostname="localhost").start()
    start = time.monotonic()
    stalled = open_clients(server.address, count)
    for i, sock in enumerate(stalled):
        if i % 2:
            sock.sendall(hello[: len(hello) // 2])
    assert wait_until(lambda: open_count(server) == count + 1, 10), open_count(server)
    for sock in stalled:
        assert peer_closed(sock, timeout=timeout + 10)
    elapsed = time.monotonic() - start
    assert wait_until(lambda: open_count(server) == 1, 10)
    close_all(stalled)
    control.stop()
    errors = server.stats()["errors"]
    assert errors == {"TLSHandshakeTimeout": count}, errors
    assert elapsed < timeout + 5, elapsed
    assert handler.connects == 1
    growth = base.check(8 * MiB)
    assert gevwire_log.unexpected() == []
    print(f"\n[tls 2] {count} stalled handshakes closed at {timeout}s "
          f"(all in {elapsed:.2f}s); control served; +{growth / KiB:.0f} KiB after")


def test_tls_record_truncated_then_reset_mid_record(
    serve: ServeFn, gevwire_log: LogCapture, tls_certs: Any
) -> None:
    handler = TLSEcho()
    codec = gevwire.Codec(PREFIXED, max_frame_size=1 * MiB)
    server = serve(handler, codec=codec, ssl=tls_certs.server_context())
    control = TLSControl(server.address, tls_certs, codec).start()
    # A first round before the baseline (the arena of the loop thread; see Baseline).
    first, _ = tls_raw_client(server.address, tls_certs)
    close_all([first], reset_every=1)
    assert wait_until(lambda: open_count(server) == 1, 10)
    base = Baseline(server)
    peers = []
    for i in range(40):
        sock, session = tls_raw_client(server.address, tls_certs)
        record = session.send(codec.encode(b"%d" % i + bytes(8000)))
        cut = len(record) // 2 if i % 2 else 3  # mid-record, or mid record header
        sock.sendall(record[:cut])
        peers.append(sock)
    assert wait_until(lambda: open_count(server) == 41, 10)
    time.sleep(0.1)  # the halves are in
    close_all(peers, reset_every=1)
    assert wait_until(lambda: open_count(server) == 1, 10), open_count(server)
    # A record whose last byte is flipped: a bad MAC after the handshake is a TLSError.
    sock, session = tls_raw_client(server.address, tls_certs)
    record = bytearray(session.send(codec.encode(b"tampered")))
    record[-1] ^= 0x55
    sock.sendall(bytes(record))
    assert peer_closed(sock)
    sock.close()
    control.stop()
    assert wait_until(lambda: open_count(server) == 0, 10)
    errors = server.stats()["errors"]
    assert errors == {"TLSError": 1}, errors  # a reset is the peer leaving, not an error
    assert handler.frames == control.count  # no truncated frame was ever dispatched
    base.check(8 * MiB)
    assert gevwire_log.unexpected() == []


def test_tls_peer_that_never_reads_large_replies_pauses_then_hits_the_cap(
    serve: ServeFn, gevwire_log: LogCapture, tls_certs: Any
) -> None:
    high, low, cap = 256 * KiB, 64 * KiB, 4 * MiB
    reply = bytes(random.Random(16).choices(b"abcdefghijklmnop", k=16 * KiB - 1))

    class Amplify(TLSEcho):
        def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
            self.frames += 1
            return reply if frame == b"gimme" else frame

    codec = gcodecs.line(max_length=32 * KiB)
    handler = Amplify()
    server = serve(handler, codec=codec, ssl=tls_certs.server_context(),
                   write_high_water=high, write_low_water=low, max_write_buffer=cap)
    control = TLSControl(server.address, tls_certs, codec).start()
    base = Baseline(server)
    # Paced: a few requests at a time, so reading pauses at the high water mark before
    # one read's replies reach the cap.
    sock, session = tls_raw_client(server.address, tls_certs, rcvbuf=16 * KiB)
    conn = next(cn for cn in server.connections() if cn.peer_addr[:2] == sock.getsockname())
    deadline = time.monotonic() + 10
    while conn.write_buffer_length <= high and time.monotonic() < deadline:
        sock.sendall(session.send(b"gimme\n" * 10))
        time.sleep(0.02)
    assert conn.write_buffer_length > high
    for _ in range(5):  # more requests: not read while paused, so no more replies
        sock.sendall(session.send(b"gimme\n" * 10))
    time.sleep(0.3)
    assert conn.connected
    assert high < conn.write_buffer_length < high + 16 * 10 * KiB + 4 * KiB
    loop = server.loops[0]
    turns = loop.turn_count
    time.sleep(0.5)
    assert loop.turn_count - turns < 400  # paused, not spinning on the fd
    close_all([sock], reset_every=1)
    # One read of 1,000 requests asks for 16 MiB of replies: the cap closes it.
    sock, session = tls_raw_client(server.address, tls_certs, rcvbuf=16 * KiB)
    sock.sendall(session.send(b"gimme\n" * 1000))
    assert wait_until(lambda: handler.errors["WriteBufferFull"] == 1, 10), handler.errors
    assert peer_closed(sock)
    sock.close()
    assert wait_until(lambda: open_count(server) == 1, 10)
    control.stop()
    assert server.stats()["errors"] == {"WriteBufferFull": 1}
    base.check(8 * MiB)
    assert gevwire_log.unexpected(WriteBufferFull) == []


def test_tls_record_trickled_a_byte_at_a_time_meets_frame_timeout(
    serve: ServeFn, gevwire_log: LogCapture, tls_certs: Any
) -> None:
    """A 16 KiB record trickled a byte every 20 ms: each byte would keep the peer from
    being idle, and the plaintext ring never sees a partial frame, so the partial
    *record* is what frame_timeout times.  (Then close_notify, and the wait for the
    peer's, which the trickle does not send: ssl_shutdown_timeout ends it.)"""
    handler = TLSEcho()
    codec = gevwire.Codec(PREFIXED, max_frame_size=1 * MiB)
    timeout = 0.5
    server = serve(handler, codec=codec, ssl=tls_certs.server_context(),
                   frame_timeout=timeout, ssl_shutdown_timeout=0.3)
    control = TLSControl(server.address, tls_certs, codec).start()
    base = Baseline(server)
    tricklers = [tls_raw_client(server.address, tls_certs) for _ in range(10)]
    records = [session.send(codec.encode(bytes(16 * KiB - 64))) for _, session in tricklers]
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < 5 and open_count(server) > 1:
        for (sock, _), record in zip(tricklers, records, strict=True):
            try:
                sock.send(record[sent:sent + 1])
            except OSError:
                pass
        sent += 1
        time.sleep(0.02)
    elapsed = time.monotonic() - start
    assert open_count(server) == 1, "a trickled record outlived frame_timeout"
    assert timeout <= elapsed < timeout + 0.3 + 2, elapsed
    assert sent < len(records[0])  # closed long before the record was whole
    close_all([sock for sock, _ in tricklers])
    del tricklers, records  # (their client contexts hold the system CA store: not ours)
    gc.collect()
    control.stop()
    assert handler.errors["FrameTimeout"] == 10, handler.errors
    base.check(8 * MiB)
    assert gevwire_log.unexpected() == []
