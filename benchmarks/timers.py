"""Do pending timers slow the loop?  Echo round trips with 0 and with 10,000 timers.

An in-process echo server (one loop) serves a blocking client that sends one 64-byte
message at a time and waits for it; the same run is repeated with N timers pending on
the loop (``run_after`` at random times 60-120 s ahead, so none fires during the run)
and with N timers scheduled *and cancelled* (the heap then holds cancelled entries).
Rounds alternate and the median is reported, so machine noise hits every case alike::

    python benchmarks/timers.py --timers 10000 --round-trips 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevwire


class Echo(gevwire.Handler):
    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame


def round_trips(address: tuple[str, int], count: int) -> float:
    """Seconds per round trip of one 64-byte message, over ``count`` trips."""
    message = b"x" * 64
    with socket.create_connection(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(200):  # warm
            sock.sendall(message)
            sock.recv(64)
        start = time.perf_counter()
        for _ in range(count):
            sock.sendall(message)
            got = 0
            while got < 64:
                got += len(sock.recv(64 - got))
        return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--round-trips", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    cases = ("no timers", f"{args.timers:,} pending", f"{args.timers:,} cancelled")
    results: dict[str, list[float]] = {case: [] for case in cases}
    rng = random.Random(1)
    for _ in range(args.rounds):
        for case in cases:
            with gevwire.Server(Echo(), address="127.0.0.1:0") as server:
                handles = []
                if case != "no timers":
                    handles = [server.run_after(rng.uniform(60, 120), lambda: None)
                               for _ in range(args.timers)]
                    if "cancelled" in case:
                        for handle in handles:
                            handle.cancel()
                results[case].append(round_trips(server.address[:2], args.round_trips))
                for handle in handles:
                    handle.cancel()
    base = statistics.median(results["no timers"])
    print(f"| case | µs per round trip (median of {args.rounds}) | vs no timers |")
    print("|---|---:|---:|")
    for case in cases:
        median = statistics.median(results[case])
        print(f"| {case} | {median * 1e6:.1f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
