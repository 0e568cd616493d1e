"""16 MiB single-frame WebSocket echoes: ``examples/websocket_echo.py`` beside the
``websockets`` library's own asyncio server, with the same client (Autobahn's cases
9.1.6 and 9.2.6 are such echoes).

    .venv/bin/python benchmarks/ws_large_echo.py [--rounds 8] [--size 16777216]

Each server runs in its own process (``taskset`` pins both to CPU 0 where available,
the client to CPU 1); the client is ``websockets``' synchronous one without compression,
and the servers take turns, echo by echo.
Prints per server and kind (text, binary) the median round trip, the server's CPU
time and page faults per echo (from ``/proc``: wall times are noisy on a shared
machine), and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def serve_websockets(port_file: str) -> None:
    """The reference: the ``websockets`` library's asyncio echo server."""
    import websockets.asyncio.server as ws_server

    async def echo(ws: ws_server.ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with ws_server.serve(echo, "127.0.0.1", 0, max_size=None, compression=None,
                                   ping_interval=None) as server:
            port = server.sockets[0].getsockname()[1]
            Path(port_file).write_text(str(port))
            await asyncio.Future()

    asyncio.run(main())


def start(kind: str, cpu: str | None) -> tuple[subprocess.Popen[bytes], int]:
    port_file = f"/tmp/ws_large_echo.{os.getpid()}.{kind}"
    if os.path.exists(port_file):
        os.unlink(port_file)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    if kind == "websockets":
        cmd = [*pin, sys.executable, __file__, "--serve-websockets", port_file]
        proc = subprocess.Popen(cmd, env=env)
        deadline = time.monotonic() + 20
        while not os.path.exists(port_file) or not Path(port_file).read_text():
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("websockets server did not start")
            time.sleep(0.05)
        return proc, int(Path(port_file).read_text())
    cmd = [*pin, sys.executable, str(REPO / "examples" / "websocket_echo.py"), "--port", "0",
           "--quiet", "--max-message-size", str(64 << 20)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    return proc, int(line.rsplit(":", 1)[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Page faults of process ``pid`` so far (each fresh page of a large buffer)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def measure(ports: dict[str, int], pids: dict[str, int], size: int, rounds: int
            ) -> dict[str, dict[str, tuple[float, float, float]]]:
    """``{server: {kind: (median round trip, server CPU per echo, page faults per
    echo)}}``, times in seconds.  The servers take turns echo by echo (which goes first
    alternates), so a noisy neighbour slows both alike."""
    from websockets.sync.client import connect

    text = "*" * size
    data = bytes(range(256)) * (size // 256)
    names = list(ports)
    result: dict[str, dict[str, tuple[float, float, float]]] = {name: {} for name in names}
    clients = {name: connect(f"ws://127.0.0.1:{ports[name]}/ws", max_size=None,
                             compression=None, ping_interval=None, open_timeout=10,
                             close_timeout=10)
               for name in names}
    try:
        for kind, message in (("text", text), ("binary", data)):
            for ws in clients.values():
                ws.send(message)  # warm-up: buffers grown, pages faulted in
                assert ws.recv(timeout=60) == message
            times: dict[str, list[float]] = {name: [] for name in names}
            cpu = {name: cpu_seconds(pids[name]) for name in names}
            faults = {name: minor_faults(pids[name]) for name in names}
            for i in range(rounds):
                for name in names if i % 2 == 0 else names[::-1]:
                    ws = clients[name]
                    t0 = time.perf_counter()
                    ws.send(message)
                    echoed = ws.recv(timeout=60)
                    times[name].append(time.perf_counter() - t0)
                    assert len(echoed) == size
            for name in names:
                result[name][kind] = (
                    statistics.median(times[name]),
                    (cpu_seconds(pids[name]) - cpu[name]) / rounds,
                    (minor_faults(pids[name]) - faults[name]) / rounds)
    finally:
        for ws in clients.values():
            ws.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--size", type=int, default=16 << 20)
    parser.add_argument("--serve-websockets", metavar="PORT_FILE")
    args = parser.parse_args()
    if args.serve_websockets:
        serve_websockets(args.serve_websockets)
        return
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {1})
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    try:
        for kind in ("gevwire", "websockets"):
            procs[kind], ports[kind] = start(kind, "0" if pinned else None)
        results = measure(ports, {kind: proc.pid for kind, proc in procs.items()},
                          args.size, args.rounds)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(10)
    print(f"{args.size} bytes: median round trip of {args.rounds} (ms), server CPU per "
          f"echo (ms), server page faults per echo")
    for name in ("text", "binary"):
        ours, theirs = results["gevwire"][name], results["websockets"][name]
        print(f"  {name:6}  gevwire {ours[0] * 1e3:6.1f} cpu {ours[1] * 1e3:6.1f} "
              f"faults {ours[2]:6.0f}  websockets {theirs[0] * 1e3:6.1f} "
              f"cpu {theirs[1] * 1e3:6.1f} faults {theirs[2]:6.0f}  "
              f"ratio {ours[0] / theirs[0]:.2f} cpu {ours[1] / theirs[1]:.2f}")


if __name__ == "__main__":
    main()
