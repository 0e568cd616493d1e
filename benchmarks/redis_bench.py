#!/usr/bin/env python3
"""RESP benchmark: redis-benchmark against gevwire's Redis example, a real redis-server and
an asyncio server parsing with hiredis.

Servers (see ``--servers``):

- ``gevwire`` — ``examples/redis_server.py --loops 1``;
- ``redis-server`` — the real one (Debian ``redis-server``), ``--save "" --appendonly no``,
  one I/O thread;
- ``asyncio-hiredis`` — ``servers/asyncio_resp_hiredis.py``: an asyncio ``Protocol`` whose
  parsing is hiredis's C ``Reader`` and whose commands and reply encoding are the
  example's own (so against gevwire it compares the loop and the RESP parser).

Rounds are interleaved (round 1 runs every server once, then round 2 ...; the server
order rotates each round) and medians are reported.  Each run starts a fresh server
pinned to one core on a free loopback port, warms it with one connect / PING / close,
then for each test (``ping_inline``, ``ping_mbulk``, ``set``, ``get`` by default) runs
``redis-benchmark -t TEST -P 16 -c 50 -n N --csv`` pinned to the other core, reading the
server's ``utime + stime`` from ``/proc/PID/stat`` just before and after: server CPU per
request is that difference over N.  The run fails on any error reply redis-benchmark
reports.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from run_echo import (
    CLK_TCK,
    HOST,
    BenchError,
    available_servers,
    free_port,
    proc_cpu_ticks,
    read_tail,
    stop_process,
    wait_for_port,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
TESTS = ("ping_inline", "ping_mbulk", "set", "get")
BASELINES = ("redis-server", "asyncio-hiredis")
SATURATED = 0.9  # server CPU share above which its rps is its own limit


@dataclass(frozen=True)
class Server:
    name: str
    command: Callable[[int], list[str]]
    available: Callable[[], str | None]  # None when available, else why it is skipped


def _redis_server_missing() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server not found (apt-get install redis-server)"
    return None


def _hiredis_missing() -> str | None:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return f"hiredis is not importable by {sys.executable} (pip install hiredis)"
    return None


def _always() -> str | None:
    return None


SERVERS: tuple[Server, ...] = (
    Server(
        "gevwire",
        lambda port: [sys.executable, str(REPO_DIR / "examples" / "redis_server.py"),
                      "--port", str(port), "--loops", "1", "--quiet"],
        _always,
    ),
    Server(
        "redis-server",
        lambda port: ["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                      "--appendonly", "no", "--protected-mode", "no", "--io-threads", "1",
                      "--loglevel", "warning"],
        _redis_server_missing,
    ),
    Server(
        "asyncio-hiredis",
        lambda port: [sys.executable,
                      str(BENCH_DIR / "servers" / "asyncio_resp_hiredis.py"), "--port",
                      str(port)],
        _hiredis_missing,
    ),
)


@dataclass
class TestResult:
    test: str
    server: str
    round: int
    ok: bool
    rps: float = 0.0
    requests: int = 0
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    cpu_us_per_req: float = 0.0
    server_cpu_util: float = 0.0
    error: str = ""


@dataclass
class Summary:
    test: str
    server: str
    rounds_ok: int
    rps: float
    cpu_us_per_req: float
    server_cpu_util: float
    rps_vs: dict[str, float | None] = field(default_factory=dict)
    cpu_vs: dict[str, float | None] = field(default_factory=dict)


def warm_server(port: int, timeout: float = 5.0) -> None:
    """One connect / PING / close."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        got = b""
        while not got.endswith(b"\r\n"):
            chunk = s.recv(64)
            if not chunk:
                raise BenchError("server closed the warm-up connection")
            got += chunk
    if got != b"+PONG\r\n":
        raise BenchError(f"warm-up PING got {got!r}")


def parse_csv(text: str) -> dict[str, float]:
    """redis-benchmark's ``--csv`` output: test name (upper case) -> requests per second."""
    rows = csv.reader(io.StringIO(text))
    found: dict[str, float] = {}
    for row in rows:
        if len(row) >= 2 and row[0] != "test":
            try:
                found[row[0]] = float(row[1])
            except ValueError:
                continue
    return found


def run_benchmark(test: str, port: int, server_pid: int, args: argparse.Namespace
                  ) -> tuple[float, float, float]:
    """One redis-benchmark test; returns (requests/s, seconds, server CPU seconds)."""
    cmd = ["taskset", "-c", str(args.client_cpu), args.redis_benchmark, "-h", HOST,
           "-p", str(port), "-t", test, "-P", str(args.pipeline), "-c", str(args.clients),
           "-n", str(args.requests), "--csv"]
    before = proc_cpu_ticks(server_pid)
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"redis-benchmark -t {test} took over {args.timeout:.0f} s") from exc
    seconds = time.monotonic() - started
    cpu = (proc_cpu_ticks(server_pid) - before) / CLK_TCK
    if done.returncode != 0:
        raise BenchError(f"redis-benchmark -t {test} failed ({done.returncode}): "
                         f"{done.stderr.strip()[-400:]}")
    errors = [line for line in (done.stdout + done.stderr).splitlines()
              if "error" in line.lower()]
    if errors:
        raise BenchError(f"redis-benchmark -t {test} reported: {errors[:3]}")
    rps = parse_csv(done.stdout).get(test.upper())
    if not rps:
        raise BenchError(f"redis-benchmark -t {test} printed no result: {done.stdout!r}")
    return rps, seconds, cpu


def run_server(server: Server, round_no: int, tests: Sequence[str],
               args: argparse.Namespace) -> list[TestResult]:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", ""))
                                        if p)
    results = [TestResult(t, server.name, round_no, ok=False) for t in tests]
    proc: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryFile() as server_log:
        try:
            proc = subprocess.Popen(
                ["taskset", "-c", str(args.server_cpu), *server.command(port)],
                cwd=REPO_DIR, env=env, stdin=subprocess.DEVNULL, stdout=server_log,
                stderr=subprocess.STDOUT,
            )
            wait_for_port(port, proc)
            warm_server(port)
            for res in results:
                try:
                    rps, seconds, cpu = run_benchmark(res.test, port, proc.pid, args)
                except BenchError as exc:
                    res.error = str(exc)
                    continue
                if proc.poll() is not None:
                    raise BenchError(f"server exited with status {proc.returncode}")
                res.rps = rps
                res.requests = args.requests
                res.seconds = seconds
                res.server_cpu_s = cpu
                res.cpu_us_per_req = cpu * 1e6 / args.requests
                # The run's own wall time includes connection setup: rps is the better
                # denominator for utilisation.
                res.server_cpu_util = cpu * rps / args.requests
                res.ok = True
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            for res in results:
                if not res.ok and not res.error:
                    res.error = str(exc)
        finally:
            if proc is not None:
                stop_process(proc)
        failed = [r for r in results if not r.ok]
        if failed:
            log = read_tail(server_log)
            if log:
                for res in failed:
                    res.error += f"\n  server output: {log}"
    return results


def summarize(results: Sequence[TestResult], tests: Sequence[str],
              servers: Sequence[Server]) -> list[Summary]:
    medians: dict[tuple[str, str], Summary] = {}
    for test in tests:
        for srv in servers:
            ok = [r for r in results if r.test == test and r.server == srv.name and r.ok]
            if ok:
                medians[test, srv.name] = Summary(
                    test=test, server=srv.name, rounds_ok=len(ok),
                    rps=statistics.median(r.rps for r in ok),
                    cpu_us_per_req=statistics.median(r.cpu_us_per_req for r in ok),
                    server_cpu_util=statistics.median(r.server_cpu_util for r in ok),
                )
    for (test, _), summary in medians.items():
        for base in BASELINES:
            ref = medians.get((test, base))
            summary.rps_vs[base] = summary.rps / ref.rps if ref and ref.rps else None
            summary.cpu_vs[base] = (summary.cpu_us_per_req / ref.cpu_us_per_req
                                    if ref and ref.cpu_us_per_req else None)
    return list(medians.values())


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table_rows(summaries: Sequence[Summary]) -> tuple[list[str], list[list[str]]]:
    header = ["test", "server", "requests/s"]
    header += [f"rps vs {b}" for b in BASELINES]
    header += ["CPU µs/req"]
    header += [f"CPU vs {b}" for b in BASELINES]
    header += ["server CPU"]
    rows = []
    for s in summaries:
        row = [s.test.upper(), s.server, f"{s.rps:,.0f}"]
        row += [_ratio(s.rps_vs[b]) for b in BASELINES]
        row += [f"{s.cpu_us_per_req:.2f}"]
        row += [_ratio(s.cpu_vs[b]) for b in BASELINES]
        busy = f"{s.server_cpu_util * 100:.0f}%"
        if s.server_cpu_util < SATURATED:
            busy += "*"
        row.append(busy)
        rows.append(row)
    return header, rows


def format_text(summaries: Sequence[Summary]) -> str:
    header, rows = table_rows(summaries)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for n, row in enumerate([header, *rows]):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(summaries: Sequence[Summary]) -> str:
    header, rows = table_rows(summaries)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", "-n", type=int, default=500_000,
                   help="requests per test and run (500000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median (3)")
    p.add_argument("--pipeline", "-P", type=int, default=16, help="redis-benchmark -P (16)")
    p.add_argument("--clients", "-c", type=int, default=50, help="redis-benchmark -c (50)")
    p.add_argument("--tests", default=",".join(TESTS),
                   help="comma list of redis-benchmark tests (" + ",".join(TESTS) + ")")
    p.add_argument("--servers", help="comma list of: " + ", ".join(s.name for s in SERVERS))
    p.add_argument("--server-cpu", type=int, default=0, help="core for the server (0)")
    p.add_argument("--client-cpu", type=int, default=1, help="core for redis-benchmark (1)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds one redis-benchmark test may take (300)")
    p.add_argument("--json", type=Path, help="write raw runs and medians to this file")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    if args.requests < 1 or args.rounds < 1 or args.pipeline < 1 or args.clients < 1:
        p.error("--requests, --rounds, --pipeline and --clients must be positive")
    if args.server_cpu == args.client_cpu:
        p.error("--server-cpu and --client-cpu must differ")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if sys.platform != "linux":
        raise SystemExit("this benchmark needs Linux (/proc, taskset)")
    if shutil.which("taskset") is None:
        raise SystemExit("taskset not found (util-linux)")
    benchmark = shutil.which("redis-benchmark")
    if benchmark is None:
        raise SystemExit("redis-benchmark not found (apt-get install redis-tools)")
    args.redis_benchmark = benchmark
    ncpu = os.cpu_count() or 1
    if max(args.server_cpu, args.client_cpu) >= ncpu or min(args.server_cpu, args.client_cpu) < 0:
        raise SystemExit(f"need cores {args.server_cpu} and {args.client_cpu}; have {ncpu}")
    tests = [t.strip().lower() for t in args.tests.split(",") if t.strip()]
    servers = available_servers(args.servers, SERVERS)
    os.sched_setaffinity(0, {args.client_cpu})  # keep this process off the server's core

    total = args.rounds * len(servers)
    print(f"redis-benchmark -t {','.join(tests)} -P {args.pipeline} -c {args.clients} "
          f"-n {args.requests}: {total} server runs, server on cpu {args.server_cpu}, "
          f"redis-benchmark on cpu {args.client_cpu}", file=sys.stderr)
    results: list[TestResult] = []
    n = 0
    for rnd in range(args.rounds):
        shift = rnd % len(servers)
        for srv in servers[shift:] + servers[:shift]:
            n += 1
            for r in run_server(srv, rnd + 1, tests, args):
                results.append(r)
                head = f"[{n}/{total}] round {rnd + 1} {srv.name} {r.test.upper()}:"
                if r.ok:
                    print(f"{head} {r.rps:,.0f} req/s, {r.cpu_us_per_req:.2f} µs CPU/req, "
                          f"server CPU {r.server_cpu_util * 100:.0f}%", file=sys.stderr)
                else:
                    print(f"{head} FAILED: {r.error}", file=sys.stderr)

    summaries = summarize(results, tests, servers)
    print()
    print(format_markdown(summaries) if args.markdown else format_text(summaries))
    if any(s.server_cpu_util < SATURATED for s in summaries):
        print(f"\n* server below {SATURATED:.0%} CPU: its requests/s was limited by "
              "redis-benchmark, not by the server; compare CPU µs/req.")
    if args.json:
        doc = {
            "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                        "cpus": os.cpu_count(), "clk_tck": CLK_TCK},
            "settings": {"requests": args.requests, "rounds": args.rounds,
                         "pipeline": args.pipeline, "clients": args.clients, "tests": tests,
                         "server_cpu": args.server_cpu, "client_cpu": args.client_cpu},
            "runs": [asdict(r) for r in results],
            "summary": [asdict(s) for s in summaries],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
