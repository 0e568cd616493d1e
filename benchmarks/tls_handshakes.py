#!/usr/bin/env python3
"""TLS handshakes per second and server CPU per handshake: gevwire (epoll, io_uring)
against asyncio + ssl and uvloop + ssl, the same echo servers as ``run_echo.py --tls``.

The client is ``openssl s_time -new`` (one full TLS 1.3 handshake per connection, one
connection at a time) pinned to its own core, the server to another; each server is
warmed by one TLS echo first.  Server CPU time is sampled from ``/proc`` around the
window, so CPU µs per handshake is the server's cost whatever limits the rate (the
sequential client usually does).  Rounds are interleaved, medians reported.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_echo  # (this directory's runner: its servers and helpers)


def one_run(server: run_echo.Server, seconds: int, server_cpu: int,
            client_cpu: int) -> tuple[float, float]:
    """(handshakes per second, server CPU µs per handshake) of one run."""
    port = run_echo.free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(run_echo.REPO_DIR), env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(["taskset", "-c", str(server_cpu), *server.command(port)],
                                cwd=run_echo.REPO_DIR, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            run_echo.wait_for_port(port, proc)
            run_echo.warm_server(port, tls=True)
            before = run_echo.proc_cpu_ticks(proc.pid)
            done = subprocess.run(
                ["taskset", "-c", str(client_cpu), "openssl", "s_time", "-connect",
                 f"{run_echo.HOST}:{port}", "-new", "-tls1_3", "-time", str(seconds)],
                capture_output=True, text=True, timeout=seconds + 60, check=False)
            cpu = (run_echo.proc_cpu_ticks(proc.pid) - before) / run_echo.CLK_TCK
        finally:
            run_echo.stop_process(proc)
    found = re.search(r"(\d+) connections in ([\d.]+)s", done.stdout)
    if done.returncode != 0 or not found:
        raise run_echo.BenchError(f"s_time failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    count = int(found[1])
    return count / float(found[2]), cpu * 1e6 / count if count else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", help="comma list of: " + ", ".join(
        s.name for s in run_echo.TLS_SERVERS))
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("taskset") is None or shutil.which("openssl") is None:
        raise SystemExit("needs taskset (util-linux) and openssl")
    servers = run_echo.available_servers(args.servers, run_echo.TLS_SERVERS)
    os.sched_setaffinity(0, {args.client_cpu})
    rates: dict[str, list[float]] = {s.name: [] for s in servers}
    costs: dict[str, list[float]] = {s.name: [] for s in servers}
    with tempfile.TemporaryDirectory(prefix="gevwire-bench-tls-") as tmp:
        run_echo.make_tls_files(tmp)
        for rnd in range(args.rounds):
            shift = rnd % len(servers)
            for server in servers[shift:] + servers[:shift]:
                rate, cost = one_run(server, args.seconds, args.server_cpu, args.client_cpu)
                rates[server.name].append(rate)
                costs[server.name].append(cost)
                print(f"round {rnd + 1} {server.name}: {rate:,.0f} handshakes/s, "
                      f"{cost:,.0f} µs server CPU each", file=sys.stderr)
    base = {name: statistics.median(costs[name]) for name in run_echo.BASELINES
            if name in costs}
    print("| server | handshakes/s | server CPU µs/handshake | CPU vs asyncio | "
          "CPU vs uvloop |")
    print("|---|---|---|---|---|")
    for server in servers:
        rate = statistics.median(rates[server.name])
        cost = statistics.median(costs[server.name])
        ratios = [f"{cost / base[b]:.2f}x" if b in base else "—" for b in run_echo.BASELINES]
        print(f"| {server.name} | {rate:,.0f} | {cost:,.0f} | {' | '.join(ratios)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
