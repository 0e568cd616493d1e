#!/usr/bin/env python3
"""Memory per idle TLS connection: server RSS growth per connection that did a TLS 1.3
handshake and echoed one byte, gevwire (epoll, io_uring) against asyncio + ssl and
uvloop + ssl (the ``run_echo.py --tls`` servers).

Each server runs pinned to core 0 and is warmed by one TLS echo; this process then opens
``--connections`` TLS connections one after another (blocking ``ssl`` sockets: simple,
and the handshakes are not what is measured), each echoes one byte and stays open; RSS
(``VmRSS``) is read a second after the warm-up and a second after the last connection.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_echo  # (this directory's runner: its servers and helpers)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError("VmRSS")


def one_run(server: run_echo.Server, connections: int) -> float:
    """KiB of server RSS per idle TLS connection."""
    port = run_echo.free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(run_echo.REPO_DIR), env.get("PYTHONPATH", "")) if p)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    proc = subprocess.Popen(["taskset", "-c", "0", *server.command(port)],
                            cwd=run_echo.REPO_DIR, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socks: list[ssl.SSLSocket] = []
    try:
        run_echo.wait_for_port(port, proc)
        run_echo.warm_server(port, tls=True)
        time.sleep(1.0)
        before = rss_kib(proc.pid)
        for _ in range(connections):
            raw = socket.create_connection((run_echo.HOST, port), timeout=10)
            sock = ctx.wrap_socket(raw)
            socks.append(sock)
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise run_echo.BenchError("an echo did not come back")
        time.sleep(1.0)
        return (rss_kib(proc.pid) - before) / connections
    finally:
        for sock in socks:
            sock.close()
        run_echo.stop_process(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--servers", help="comma list of: " + ", ".join(
        s.name for s in run_echo.TLS_SERVERS))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.connections + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 256), hard))
    servers = run_echo.available_servers(args.servers, run_echo.TLS_SERVERS)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gevwire-bench-tls-") as tmp:
        run_echo.make_tls_files(tmp)
        for server in servers:
            results[server.name] = one_run(server, args.connections)
            print(f"{server.name}: {results[server.name]:.1f} KiB per idle TLS connection",
                  file=sys.stderr)
    print("| server | KiB per idle TLS connection | vs asyncio | vs uvloop |")
    print("|---|---:|---:|---:|")
    for name, kib in results.items():
        ratios = [f"{kib / results[b]:.2f}x" if results.get(b) else "—"
                  for b in run_echo.BASELINES]
        print(f"| {name} | {kib:.1f} | {' | '.join(ratios)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
