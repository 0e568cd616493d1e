#!/usr/bin/env python3
"""Idle-connection memory: server RSS per idle connection, gevwire against asyncio and uvloop.

For each server (``gevwire`` on epoll, ``gevwire-uring``, ``asyncio``, ``uvloop``; the
echo servers of ``run_echo.py``) a run starts a fresh server pinned to core 0, waits until
its port accepts, warms it with one connect / 1-byte echo / close, waits a moment and reads
the server's resident set size (``VmRSS`` of the whole process, ``/proc/PID/status``). This
process then opens N connections (``--connections``, 10,000 by default), each sends one
byte and reads its 1-byte echo, so every connection has echoed once and now sits idle;
after another moment RSS is read again. The figure is (RSS after - RSS before) / N, in KiB
per connection. A run fails unless every echo came back and the server holds at least N
more sockets (counted in ``/proc/PID/fd``) than before.

Rounds are interleaved (round 1 runs every server once, then round 2, ...; the order
rotates by one each round) and the median of the rounds is reported, with each server's
figure as a ratio against asyncio's and uvloop's from the same run.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

from run_echo import (
    HOST,
    REPO_DIR,
    SERVERS,
    BenchError,
    Server,
    available_servers,
    free_port,
    read_tail,
    stop_process,
    wait_for_port,
)

SERVER_CPU = 0  # the server's core (taskset -c)
CLIENT_CPU = 1  # this process's core, when the machine has one more
IN_FLIGHT = 256  # connections at most connecting or awaiting their echo at a time
OPEN_TIMEOUT = 120.0  # seconds to open and echo all connections of one run
STALL_TIMEOUT = 15.0  # ... with no connection completing for this long
SETTLE = 1.0  # seconds to wait before each RSS sample
FD_MARGIN = 128  # file descriptors beyond N that this process and the server may need
BASELINES = ("uvloop", "asyncio")

_CONNECTING = 1
_AWAITING_ECHO = 2


# run_echo.py's raw echo servers, with the same commands and availability checks.
_ECHO = {srv.name: srv for srv in SERVERS}
IDLE_SERVERS: tuple[Server, ...] = tuple(
    _ECHO[name] for name in ("gevwire", "gevwire-uring", "asyncio", "uvloop"))


@dataclass
class RunResult:
    server: str
    round: int
    ok: bool
    connections: int = 0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    kib_per_conn: float = 0.0
    sockets_before: int = 0
    sockets_after: int = 0
    open_seconds: float = 0.0
    status_before: dict[str, int] = field(default_factory=dict)
    status_after: dict[str, int] = field(default_factory=dict)
    error: str = ""


@dataclass
class Summary:
    server: str
    rounds_ok: int
    rss_before_kib: float
    rss_after_kib: float
    kib_per_conn: float
    vs: dict[str, float | None]


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem and VmHWM of the whole process, in KiB."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = int(value.split()[0])  # "12345 kB"
    if "VmRSS" not in out:
        raise BenchError(f"no VmRSS in /proc/{pid}/status (process gone?)")
    return out


def count_sockets(pid: int) -> int:
    """Open file descriptors of the process that are sockets."""
    fd_dir = f"/proc/{pid}/fd"
    n = 0
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{name}").startswith("socket:"):
                n += 1
        except FileNotFoundError:  # closed since listdir
            pass
    return n


def open_idle(
    port: int, count: int, in_flight: int = IN_FLIGHT, timeout: float = OPEN_TIMEOUT
) -> list[socket.socket]:
    """``count`` connections to ``port``, each after one byte sent and its echo read.

    Non-blocking connects on one selector, at most ``in_flight`` of them connecting or
    awaiting their echo at a time (so the server's listen backlog never overflows). Raises
    ``BenchError`` or ``OSError`` (every socket closed) unless all of them echo in time.
    """
    opened: list[socket.socket] = []
    done = 0
    deadline = time.monotonic() + timeout
    last_progress = time.monotonic()
    sel = selectors.DefaultSelector()
    try:
        while done < count:
            while len(opened) < count and len(opened) - done < in_flight:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                opened.append(sock)
                sock.setblocking(False)
                err = sock.connect_ex((HOST, port))
                if err not in (0, errno.EINPROGRESS):
                    raise BenchError(f"connect #{len(opened)}: {os.strerror(err)}")
                sel.register(sock, selectors.EVENT_WRITE, _CONNECTING)
            now = time.monotonic()
            if now >= deadline or now - last_progress >= STALL_TIMEOUT:
                raise BenchError(
                    f"only {done} of {count} connections echoed their byte "
                    f"({len(opened) - done} still pending)"
                )
            for key, _ in sel.select(min(deadline - now, 1.0)):
                sock = cast(socket.socket, key.fileobj)
                if key.data == _CONNECTING:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise BenchError(f"connect failed: {os.strerror(err)}")
                    if sock.send(b"x") != 1:  # an empty send buffer always takes one byte
                        raise BenchError("send of the one byte failed")
                    sel.modify(sock, selectors.EVENT_READ, _AWAITING_ECHO)
                    continue
                try:
                    data = sock.recv(16)
                except BlockingIOError:
                    continue
                if data != b"x":
                    what = "closed the connection" if not data else f"sent {data!r}"
                    raise BenchError(f"server {what} instead of echoing one byte")
                sel.unregister(sock)
                done += 1
                last_progress = time.monotonic()
    except BaseException:
        close_all(opened)
        raise
    finally:
        sel.close()
    return opened


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def run_one(server: Server, round_no: int, connections: int) -> RunResult:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
    res = RunResult(server.name, round_no, ok=False, connections=connections)
    proc: subprocess.Popen[bytes] | None = None
    clients: list[socket.socket] = []
    with tempfile.TemporaryFile() as server_log:
        try:
            # taskset and env exec the server: proc.pid is the server's pid.
            proc = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), *server.command(port)],
                cwd=REPO_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=server_log,
                stderr=subprocess.STDOUT,
            )
            wait_for_port(port, proc)
            close_all(open_idle(port, 1))  # warm-up: connect / echo 1 byte / close
            time.sleep(SETTLE)
            res.status_before = proc_memory(proc.pid)
            res.sockets_before = count_sockets(proc.pid)
            started = time.monotonic()
            clients = open_idle(port, connections)
            res.open_seconds = time.monotonic() - started
            time.sleep(SETTLE)
            if proc.poll() is not None:
                raise BenchError(f"server exited with status {proc.returncode}")
            res.status_after = proc_memory(proc.pid)
            res.sockets_after = count_sockets(proc.pid)
            held = res.sockets_after - res.sockets_before
            if held < connections:
                raise BenchError(f"server holds {held} more sockets than before, not {connections}")
            res.rss_before_kib = res.status_before["VmRSS"]
            res.rss_after_kib = res.status_after["VmRSS"]
            res.kib_per_conn = (res.rss_after_kib - res.rss_before_kib) / connections
            res.ok = True
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            res.error = str(exc) or type(exc).__name__
        finally:
            close_all(clients)
            if proc is not None:
                stop_process(proc)
        if not res.ok:
            log = read_tail(server_log)
            if log:
                res.error += f"\n  server output: {log}"
    return res


def summarize(results: Sequence[RunResult], servers: Sequence[Server]) -> list[Summary]:
    summaries: dict[str, Summary] = {}
    for srv in servers:
        ok = [r for r in results if r.server == srv.name and r.ok]
        if ok:
            summaries[srv.name] = Summary(
                server=srv.name,
                rounds_ok=len(ok),
                rss_before_kib=statistics.median(r.rss_before_kib for r in ok),
                rss_after_kib=statistics.median(r.rss_after_kib for r in ok),
                kib_per_conn=statistics.median(r.kib_per_conn for r in ok),
                vs={},
            )
    for summary in summaries.values():
        for base in BASELINES:
            ref = summaries.get(base)
            summary.vs[base] = (
                summary.kib_per_conn / ref.kib_per_conn if ref and ref.kib_per_conn > 0 else None
            )
    return list(summaries.values())


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(summaries: Sequence[Summary], connections: int, markdown: bool) -> str:
    header = [
        "server",
        "RSS idle MiB",
        f"RSS with {connections:,} MiB",
        "KiB / idle conn",
        *(f"vs {b}" for b in BASELINES),
        "rounds",
    ]
    rows = [
        [
            s.server,
            f"{s.rss_before_kib / 1024:.1f}",
            f"{s.rss_after_kib / 1024:.1f}",
            f"{s.kib_per_conn:.2f}",
            *(_ratio(s.vs[b]) for b in BASELINES),
            str(s.rounds_ok),
        ]
        for s in summaries
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |"]
        lines.append("|---|" + "---:|" * (len(header) - 1))
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for n, row in enumerate([header, *rows]):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def raise_fd_limit(connections: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (servers inherit it); exit if too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    elif hard == resource.RLIM_INFINITY and soft != hard and soft < connections + FD_MARGIN:
        soft = connections + FD_MARGIN
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < connections + FD_MARGIN:
        raise SystemExit(
            f"RLIMIT_NOFILE hard limit is {hard}: {connections} connections need "
            f"{connections + FD_MARGIN} (raise it with `ulimit -Hn` as root, or use fewer)"
        )
    return soft


def check_port_range(connections: int) -> None:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return
    if high - low + 1 < connections + FD_MARGIN:
        raise SystemExit(
            f"the ephemeral port range {low}-{high} is too small for {connections} "
            "connections to one port"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10_000, help="idle connections (10000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median (3)")
    p.add_argument("--servers", help="comma list of: " + ", ".join(s.name for s in IDLE_SERVERS))
    p.add_argument("--json", type=Path, help="write every run and the medians to this file")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    if args.connections < 1 or args.rounds < 1:
        p.error("--connections and --rounds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if sys.platform != "linux":
        raise SystemExit("this benchmark needs Linux (/proc, taskset)")
    if shutil.which("taskset") is None:
        raise SystemExit("taskset not found (util-linux)")
    servers = available_servers(args.servers, IDLE_SERVERS)
    nofile = raise_fd_limit(args.connections)
    check_port_range(args.connections)
    if (os.cpu_count() or 1) > CLIENT_CPU:
        os.sched_setaffinity(0, {CLIENT_CPU})  # keep this process off the server's core

    total = args.rounds * len(servers)
    print(
        f"idle memory: {total} runs of {args.connections:,} connections; server on cpu "
        f"{SERVER_CPU}, RLIMIT_NOFILE {nofile}",
        file=sys.stderr,
    )
    begun = time.monotonic()
    results: list[RunResult] = []
    n = 0
    for rnd in range(args.rounds):
        shift = rnd % len(servers)
        for srv in servers[shift:] + servers[:shift]:
            n += 1
            r = run_one(srv, rnd + 1, args.connections)
            results.append(r)
            head = f"[{n}/{total}] round {rnd + 1} {srv.name}:"
            if r.ok:
                print(
                    f"{head} RSS {r.rss_before_kib / 1024:.1f} -> {r.rss_after_kib / 1024:.1f}"
                    f" MiB, {r.kib_per_conn:.2f} KiB/conn, +{r.sockets_after - r.sockets_before}"
                    f" sockets, opened in {r.open_seconds:.1f} s",
                    file=sys.stderr,
                )
            else:
                print(f"{head} FAILED: {r.error}", file=sys.stderr)
    elapsed = time.monotonic() - begun

    summaries = summarize(results, servers)
    print()
    print(render(summaries, args.connections, args.markdown))
    print(f"\n{total} runs in {elapsed:.0f} s", file=sys.stderr)
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {total} runs FAILED (see above)", file=sys.stderr)
    if args.json:
        doc = {
            "machine": {
                "platform": platform.platform(),
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
            },
            "settings": {
                "connections": args.connections,
                "rounds": args.rounds,
                "server_cpu": SERVER_CPU,
                "in_flight": IN_FLIGHT,
                "settle_s": SETTLE,
                "rlimit_nofile": nofile,
            },
            "seconds": elapsed,
            "runs": [asdict(r) for r in results],
            "summary": [asdict(s) for s in summaries],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
