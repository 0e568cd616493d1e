#!/usr/bin/env python3
"""Soak: well-behaved and hostile clients at once against the example servers.

    python fuzz/soak.py --minutes 10
    python fuzz/soak.py --seconds 5 --json report.json
    python fuzz/soak.py --minutes 60 --targets resp --good 4 --hostile 8

Each target is an example's handler and codec (``examples/echo.py``,
``examples/framed_echo.py``, ``examples/redis_server.py``, and ``tls``: the echo served
over TLS with a throwaway certificate from ``openssl req``) served by a child process of
its own (``soak.py --serve NAME``), with the limits a deployment facing the internet
sets (``idle_timeout``, ``frame_timeout``, a ``max_write_buffer``).  Good clients send
pipelined requests and check every reply byte for byte; hostile clients cycle through
garbage, oversized length headers, slowloris trickles, RST in the middle of a frame, and
peers that send but never read (against ``tls`` they speak no TLS at all: garbage for a
ClientHello, handshakes trickled or never finished, RST mid-handshake).

The report gives, per target: requests served to the good clients, the server's frames
and errors by kind (``stats()``), and its RSS and open fds at the start and at the end
(once every client is gone).  The exit status is 1 if a good client saw a wrong reply
or lost its connection, a server died or logged an unexpected error, an oversized header
was not rejected, or the server kept fds after its clients left; else 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import random
import select
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

#: Server limits for every target (a child process each).
IDLE_TIMEOUT = 5.0
FRAME_TIMEOUT = 2.0
MAX_WRITE_BUFFER = 8 << 20
MAX_FRAME = 1 << 20

LINGER_RST = struct.pack("ii", 1, 0)


# -- the server side (a child process per target) --------------------------------------------


def _load_example(filename: str) -> ModuleType:
    path = EXAMPLES / filename
    if not path.exists():
        raise LookupError(f"{path.relative_to(REPO)} does not exist")
    spec = importlib.util.spec_from_file_location(f"soak_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _echo_target() -> tuple[Any, Any, Callable[[Any], None]]:
    import gevwire

    module = _load_example("echo.py")
    return module.Echo(), gevwire.RawCodec(), lambda server: None


def _framed_target() -> tuple[Any, Any, Callable[[Any], None]]:
    import gevwire

    module = _load_example("framed_echo.py")
    codec = gevwire.Codec(module.FRAME, max_frame_size=MAX_FRAME)
    return module.FramedEcho(), codec, lambda server: None


def resp_target() -> tuple[Any, Any, Callable[[Any], None]]:
    """The RESP target: hook for ``examples/redis_server.py``.

    Built as its ``main()`` builds it (``RedisHandler(RedisStore())``, ``resp(commands=
    True)``, expiry every 100 ms).  If the example is missing or its names change, the
    target is reported as unavailable, with the reason, and the others still run: adapt
    this function to the example's API.
    """
    module = _load_example("redis_server.py")
    store = module.RedisStore(locked=False)
    codec = module.resp(commands=True, max_bulk_length=MAX_FRAME,
                        max_frame_size=2 * MAX_FRAME + (1 << 20))

    def setup(server: Any) -> None:
        server.run_every(0.1, store.expire_due)

    return module.RedisHandler(store), codec, setup


def _tls_context() -> ssl.SSLContext:
    """A server context with a throwaway ECDSA certificate (``openssl req``)."""
    with tempfile.TemporaryDirectory(prefix="gevwire-soak-") as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out",
                        cert, "-subj", "/CN=localhost", "-days", "1"], check=True,
                       capture_output=True, timeout=60)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    return context


TARGET_BUILDERS: dict[str, Callable[[], tuple[Any, Any, Callable[[Any], None]]]] = {
    "echo": _echo_target,
    "framed": _framed_target,
    "resp": resp_target,
    "tls": _echo_target,
}
#: More Server options per target: TLS, its handshake bounded like a frame.
TARGET_OPTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "tls": lambda: {"ssl": _tls_context(), "ssl_handshake_timeout": FRAME_TIMEOUT},
}
#: The targets good clients reach over TLS (the certificate is not checked).
TLS_TARGETS = frozenset({"tls"})


class _ErrorLog(logging.Handler):
    """Counts gevwire's ERROR records by exception type (unexpected ones are kept)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.expected = 0
        self.unexpected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "WriteBufferFull":
            self.expected += 1  # a never-reading peer pushed past max_write_buffer
        elif len(self.unexpected) < 20:
            self.unexpected.append(f"{record.getMessage()} {exc!r}")


def _process_figures() -> dict[str, int]:
    """RSS, open fds, and the bytes gevwire's buffer pool holds for reuse.

    ``rss`` is measured after ``malloc_trim(0)``, so memory glibc keeps only for reuse
    is not mistaken for growth; what the pool keeps is reported beside it.
    """
    import ctypes

    from gevwire.ringbuffer import DEFAULT_POOL

    ctypes.CDLL(None).malloc_trim(0)
    rss = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return {"rss": rss, "fds": len(os.listdir("/proc/self/fd")) - 1,
            "pool": DEFAULT_POOL.retained()}


def serve(name: str) -> int:
    """Child mode: serve target ``name``; answer ``stats`` / ``stop`` on stdin."""
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(name)s %(message)s")
    errors = _ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        handler, codec, setup = TARGET_BUILDERS[name]()
        options = TARGET_OPTIONS.get(name, dict)()
    except Exception as exc:  # the hook could not build it: say why, do not fail others
        print(json.dumps({"unavailable": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 0
    import gevwire

    server = gevwire.Server(handler, address="127.0.0.1:0", codec=codec,
                            idle_timeout=IDLE_TIMEOUT, frame_timeout=FRAME_TIMEOUT,
                            max_write_buffer=MAX_WRITE_BUFFER, close_timeout=2.0,
                            **options)
    server.start()
    setup(server)

    def snapshot() -> dict[str, Any]:
        stats = server.stats()
        stats.pop("loops", None)
        stats.update(_process_figures())
        stats["logged_write_buffer_full"] = errors.expected
        stats["unexpected_errors"] = list(errors.unexpected)
        return stats

    print(json.dumps({"port": server.port, "pid": os.getpid(), **snapshot()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "stats":
            break
        print(json.dumps(snapshot()), flush=True)
    server.stop(timeout=2.0)
    return 0 if server.wait(10) else 1


class ServerChild:
    """A target's server process, queried over its stdin / stdout."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", name], cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.lock = threading.Lock()
        self.start = self._read()
        self.unavailable: str | None = self.start.get("unavailable")
        self.address = ("127.0.0.1", int(self.start.get("port", 0)))

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} server died (exit {self.proc.wait(5)})")
        result: dict[str, Any] = json.loads(line)
        return result

    def stats(self) -> dict[str, Any]:
        with self.lock:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("stats\n")
                self.proc.stdin.flush()
            except OSError as exc:
                raise RuntimeError(f"{self.name} server died: {exc}") from None
            return self._read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # EOF: stop gracefully
                return self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        return self.proc.wait(5)


# -- protocols: what a good client sends and must get back -----------------------------------


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


class Protocol:
    """Requests and their exact replies for one target; hostile byte patterns too."""

    def request(self, rng: random.Random, client: int, n: int) -> tuple[bytes, bytes]:
        raise NotImplementedError

    def oversize(self) -> bytes | None:
        """A header announcing a frame far over any limit (None: no framing to abuse)."""
        return None

    def partial(self, rng: random.Random) -> bytes:
        """The start of a frame that never ends."""
        return rng.randbytes(rng.randint(1, 100))

    def flood(self, rng: random.Random) -> bytes:
        """What a never-reading peer sends, again and again."""
        return rng.randbytes(16 << 10)


class EchoProtocol(Protocol):
    def request(self, rng: random.Random, client: int, n: int) -> tuple[bytes, bytes]:
        data = rng.randbytes(rng.randint(1, 4096))
        return data, data


class FramedProtocol(Protocol):
    def request(self, rng: random.Random, client: int, n: int) -> tuple[bytes, bytes]:
        data = struct.pack(">I", size := rng.randint(0, 8192)) + rng.randbytes(size)
        return data, data

    def oversize(self) -> bytes:
        return struct.pack(">I", 0x7FFFFFFF)

    def partial(self, rng: random.Random) -> bytes:
        return struct.pack(">I", 1000) + rng.randbytes(rng.randint(0, 999))

    def flood(self, rng: random.Random) -> bytes:
        return struct.pack(">I", 16 << 10) + rng.randbytes(16 << 10)


class RespProtocol(Protocol):
    def request(self, rng: random.Random, client: int, n: int) -> tuple[bytes, bytes]:
        key = b"soak:%d:%d" % (client, n)
        value = rng.randbytes(rng.randint(0, 512))
        kind = n % 4
        if kind == 0:
            return _command(b"PING"), b"+PONG\r\n"
        if kind == 1:
            return _command(b"ECHO", value), _bulk(value)
        if kind == 2:  # SET then GET then DEL of a key of this client's own
            return (_command(b"SET", key, value) + _command(b"GET", key)
                    + _command(b"DEL", key), b"+OK\r\n" + _bulk(value) + b":1\r\n")
        counter = b"soak:%d:counter" % client
        return _command(b"INCR", counter), b":%d\r\n" % (n // 4 + 1)

    def oversize(self) -> bytes:
        return b"*2\r\n$4\r\nECHO\r\n$2147483647\r\n"

    def partial(self, rng: random.Random) -> bytes:
        return b"*2\r\n$4\r\nECHO\r\n$100\r\n" + rng.randbytes(rng.randint(0, 99))

    def flood(self, rng: random.Random) -> bytes:
        return _command(b"ECHO", rng.randbytes(16 << 10))


PROTOCOLS: dict[str, Protocol] = {
    "echo": EchoProtocol(), "framed": FramedProtocol(), "resp": RespProtocol(),
    "tls": EchoProtocol()}


# -- clients -------------------------------------------------------------------------------


@dataclass
class Tally:
    """Counters shared by the client threads (updated under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    good: Counter[str] = field(default_factory=Counter)  # requests answered right, by target
    hostile: Counter[str] = field(default_factory=Counter)  # behaviour runs
    outcomes: Counter[str] = field(default_factory=Counter)  # e.g. "oversize rejected"
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)  # the run is over

    def fail(self, message: str) -> None:
        with self.lock:
            if len(self.failures) < 50:
                self.failures.append(message)


def _connect(address: tuple[str, int], *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            raise ConnectionError("EOF")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    except OSError:
        pass
    sock.close()


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Drain ``sock`` until EOF or reset (True) or ``timeout`` (False)."""
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    while True:
        try:
            if not sock.recv(1 << 16):
                return True
            continue
        except BlockingIOError:
            pass
        except OSError:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        select.select([sock], [], [], min(left, 0.2))


def good_client(name: str, address: tuple[str, int], client: int, tally: Tally,
                stop: threading.Event, corrupt: bool) -> None:
    """Pipelined requests, every reply checked; a new connection every 500 requests."""
    protocol = PROTOCOLS[name]
    rng = random.Random(client)
    n = 0
    tls: ssl.SSLContext | None = None
    if name in TLS_TARGETS:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    while not stop.is_set():
        try:
            raw = _connect(address)
            with raw if tls is None else tls.wrap_socket(raw) as sock:
                for _ in range(500):
                    if stop.is_set():
                        return
                    pairs = [protocol.request(rng, client, n + k)
                             for k in range(rng.randint(1, 8))]
                    n += len(pairs)
                    sock.sendall(b"".join(req for req, _ in pairs))
                    want = b"".join(reply for _, reply in pairs)
                    got = _recv_exactly(sock, len(want))
                    if corrupt:  # --inject wrong-reply: prove that a wrong reply fails
                        want = b"!" + want[1:]
                    if got != want:
                        tally.fail(f"{name}: good client {client} got a wrong reply "
                                   f"at request {n}")
                        return
                    with tally.lock:
                        tally.good[name] += len(pairs)
        except OSError as exc:
            if not stop.is_set():
                tally.fail(f"{name}: good client {client} lost its connection: {exc!r}")
            return


def _garbage(name: str, address: tuple[str, int], rng: random.Random, tally: Tally) -> None:
    sock = _connect(address)
    sock.setblocking(False)
    for _ in range(rng.randint(1, 16)):
        try:
            sock.send(rng.randbytes(rng.randint(1, 4096)))
            while sock.recv(1 << 16):
                pass
        except BlockingIOError:
            pass
        except OSError:
            break  # the server gave up on it: fine
    _reset(sock) if rng.random() < 0.5 else sock.close()


def _oversize(name: str, address: tuple[str, int], rng: random.Random, tally: Tally) -> None:
    header = PROTOCOLS[name].oversize()
    if header is None:
        return
    sock = _connect(address)
    try:
        sock.sendall(header + rng.randbytes(64 << 10))
    except OSError:
        pass
    rejected = _closed_by_peer(sock, 5.0)
    sock.close()
    with tally.lock:
        tally.outcomes["oversize rejected" if rejected else "oversize NOT rejected"] += 1
    if not rejected:
        tally.fail(f"{name}: a 2 GiB header did not close the connection within 5 s")


def _slowloris(name: str, address: tuple[str, int], rng: random.Random, tally: Tally) -> None:
    socks = [_connect(address) for _ in range(10)]
    for sock in socks:
        sock.setblocking(False)
    trickle = PROTOCOLS[name].partial(rng)
    deadline = time.monotonic() + FRAME_TIMEOUT + 3
    live = list(socks)
    sent = 0
    while live and time.monotonic() < deadline and not tally.stop.is_set():
        byte = trickle[sent % len(trickle) : sent % len(trickle) + 1]
        sent += 1
        for sock in list(live):
            try:
                sock.send(byte)  # a frame's bytes one at a time, every 0.5 s
                while sock.recv(1 << 16):
                    pass
                live.remove(sock)  # EOF: closed by the server
            except BlockingIOError:
                pass
            except OSError:
                live.remove(sock)
        time.sleep(0.5)
    with tally.lock:
        tally.outcomes["slowloris closed by server"] += len(socks) - len(live)
        tally.outcomes["slowloris outlived"] += len(live)
    for sock in socks:
        _reset(sock)


def _rst_mid_frame(name: str, address: tuple[str, int], rng: random.Random,
                   tally: Tally) -> None:
    sock = _connect(address)
    try:
        sock.sendall(PROTOCOLS[name].partial(rng))
        time.sleep(rng.random() * 0.05)
    except OSError:
        pass
    _reset(sock)


def _never_reading(name: str, address: tuple[str, int], rng: random.Random,
                   tally: Tally) -> None:
    sock = _connect(address, rcvbuf=4096)
    sock.setblocking(False)
    data = PROTOCOLS[name].flood(rng)
    sent, stalled_since = 0, None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not tally.stop.is_set():
        _, writable, _ = select.select([], [sock], [], 0.1)
        if not writable:
            stalled_since = stalled_since or time.monotonic()
            continue
        try:
            sent += sock.send(data[sent % len(data):])
            stalled_since = None
        except BlockingIOError:
            continue
        except OSError:
            with tally.lock:
                tally.outcomes["never-reading closed by server"] += 1
            break
    else:
        if not tally.stop.is_set():  # ran its 3 s: the server must have stopped reading
            with tally.lock:
                tally.outcomes["never-reading paused" if stalled_since else
                               "never-reading kept going"] += 1
    _reset(sock)


HOSTILE: dict[str, Callable[[str, tuple[str, int], random.Random, Tally], None]] = {
    "garbage": _garbage,
    "oversize": _oversize,
    "slowloris": _slowloris,
    "rst_mid_frame": _rst_mid_frame,
    "never_reading": _never_reading,
}


def hostile_client(servers: dict[str, ServerChild], seed: int, tally: Tally,
                   stop: threading.Event) -> None:
    rng = random.Random(seed)
    names = list(servers)
    behaviours = list(HOSTILE)
    i = 0
    while not stop.is_set():
        behaviour = behaviours[(seed + i) % len(behaviours)]  # each in turn, all covered
        i += 1
        name = rng.choice(names)
        try:
            HOSTILE[behaviour](name, servers[name].address, rng, tally)
        except OSError:
            pass  # a hostile client's own troubles (refused, reset) are no finding
        except Exception as exc:  # a bug of the soak itself: never hide it
            tally.fail(f"soak: {behaviour} against {name} raised {exc!r}")
        with tally.lock:
            tally.hostile[behaviour] += 1


# -- the run -------------------------------------------------------------------------------


def run(seconds: float, targets: list[str], good: int, hostile: int,
        inject: str | None, progress: float = 0.0) -> dict[str, Any]:
    tally = Tally()
    servers: dict[str, ServerChild] = {}
    unavailable: dict[str, str] = {}
    for name in targets:
        child = ServerChild(name)
        if child.unavailable:
            unavailable[name] = child.unavailable
            child.stop()
        else:
            servers[name] = child
    if not servers:
        raise SystemExit("no target could be started: " + json.dumps(unavailable))
    stop = tally.stop
    threads: list[threading.Thread] = []
    for name, child in servers.items():
        for k in range(good):
            corrupt = inject == "wrong-reply" and k == 0
            threads.append(threading.Thread(
                target=good_client, args=(name, child.address, len(threads), tally, stop,
                                          corrupt), daemon=True))
    for k in range(hostile):
        threads.append(threading.Thread(target=hostile_client,
                                        args=(servers, 1000 + k, tally, stop), daemon=True))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    died: set[str] = set()
    killed = False
    next_progress = started + progress
    while time.monotonic() - started < seconds:
        time.sleep(0.2)
        if progress and time.monotonic() >= next_progress:
            next_progress += progress
            print(_progress_line(servers, tally, time.monotonic() - started),
                  file=sys.stderr, flush=True)
        if inject == "kill-server" and not killed and time.monotonic() - started > seconds / 2:
            next(iter(servers.values())).proc.kill()
            killed = True
        for name, child in servers.items():
            if name not in died and not child.alive():
                died.add(name)
                tally.fail(f"{name}: the server died (exit {child.proc.returncode})")
    stop.set()
    for thread in threads:
        thread.join(FRAME_TIMEOUT + 10)
    elapsed = time.monotonic() - started
    report_targets: dict[str, Any] = {}
    for name, child in servers.items():
        entry: dict[str, Any] = {"good_requests": tally.good[name], "alive": child.alive()}
        if child.alive():
            # Every client is gone: wait for the server to close its side, then compare.
            deadline = time.monotonic() + 10
            end = child.stats()
            while end["connections_open"] and time.monotonic() < deadline:
                time.sleep(0.1)
                end = child.stats()
            start = child.start
            entry.update({
                "frames_in": end["frames_in"], "frames_out": end["frames_out"],
                "connections_total": end["connections_total"],
                "connections_open": end["connections_open"],
                "errors": end["errors"], "unexpected_errors": end["unexpected_errors"],
                "rss_start": start["rss"], "rss_end": end["rss"], "pool_end": end["pool"],
                "fds_start": start["fds"], "fds_end": end["fds"],
            })
            if end["connections_open"]:
                tally.fail(f"{name}: {end['connections_open']} connections still open "
                           "after every client left")
            if end["fds"] > start["fds"]:
                tally.fail(f"{name}: fds {start['fds']} at start, {end['fds']} at the end")
            for message in end["unexpected_errors"]:
                tally.fail(f"{name}: server logged an unexpected error: {message}")
            code = child.stop()
            if code != 0:
                tally.fail(f"{name}: server exit status {code} on a graceful stop")
        else:
            child.stop()
        report_targets[name] = entry
    for name in servers:
        if tally.good[name] == 0:
            tally.fail(f"{name}: no good request was served")
    return {
        "seconds": round(elapsed, 1),
        "targets": report_targets,
        "unavailable": unavailable,
        "hostile": dict(tally.hostile),
        "outcomes": dict(tally.outcomes),
        "failures": list(tally.failures),
    }


def _progress_line(servers: dict[str, ServerChild], tally: Tally, elapsed: float) -> str:
    parts = [f"{elapsed:7.0f}s"]
    for name, child in servers.items():
        try:
            stats = child.stats()
        except RuntimeError:
            parts.append(f"{name}: DIED")
            continue
        parts.append(f"{name}: {tally.good[name]} good, {stats['connections_open']} open, "
                     f"RSS {stats['rss'] / 2**20:.1f} MiB (pool {stats['pool'] / 2**20:.1f}), "
                     f"{stats['fds']} fds")
    return " | ".join(parts)


def format_report(report: dict[str, Any]) -> str:
    lines = [f"soak: {report['seconds']} s"]
    header = (f"{'target':8} {'good req':>9} {'frames in':>10} {'conns':>7} "
              f"{'RSS MiB start→end (pool)':>25} {'fds start→end':>14}  errors by kind")
    lines.append(header)
    for name, t in report["targets"].items():
        if "rss_start" not in t:
            lines.append(f"{name:8} {t['good_requests']:>9}  server DIED")
            continue
        errors = ", ".join(f"{k} {v}" for k, v in sorted(t["errors"].items())) or "none"
        lines.append(
            f"{name:8} {t['good_requests']:>9} {t['frames_in']:>10} "
            f"{t['connections_total']:>7} "
            f"{t['rss_start'] / 2**20:>8.1f} → {t['rss_end'] / 2**20:<5.1f} "
            f"({t['pool_end'] / 2**20:4.1f})   "
            f"{t['fds_start']:>6} → {t['fds_end']:<5}  {errors}")
    for name, reason in report["unavailable"].items():
        lines.append(f"{name:8} unavailable: {reason}")
    lines.append("hostile runs: " + ", ".join(f"{k} {v}" for k, v in
                                              sorted(report["hostile"].items())))
    lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in
                                          sorted(report["outcomes"].items())))
    lines.append("failures: " + ("none" if not report["failures"] else ""))
    lines.extend(f"  - {f}" for f in report["failures"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float)
    length.add_argument("--seconds", type=float)
    parser.add_argument("--targets", default=",".join(TARGET_BUILDERS),
                        help="comma-separated, of: " + ", ".join(TARGET_BUILDERS))
    parser.add_argument("--good", type=int, default=2, help="good clients per target")
    parser.add_argument("--hostile", type=int, default=5, help="hostile client threads")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--progress", type=float, default=0.0, metavar="SECONDS",
                        help="print each server's RSS, fds and open connections this "
                             "often (to stderr), to see a trend in a long run")
    parser.add_argument("--inject", choices=["wrong-reply", "kill-server"],
                        help="make the soak fail on purpose (tests of the soak itself)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGET_BUILDERS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes or 1)
    report = run(seconds, targets, args.good, args.hostile, args.inject, args.progress)
    print(format_report(report), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
