#!/usr/bin/env python3
"""Echo benchmark: gevwire against asyncio, uvloop and a minimal ctypes epoll loop.

``--tls`` benchmarks echo over TLS 1.3 (OpenSSL's default suite, AES-256-GCM, with a
throwaway ECDSA P-256 certificate made by ``openssl req``): gevwire's ``examples/echo.py
--ssl-certfile ...`` on both backends against the asyncio ``Protocol`` echo server with
``ssl=`` on asyncio and on uvloop; the load generator is ``bin/loadgen-tls`` (the same
source built with ``-DLOADGEN_TLS``, linked to OpenSSL), handshakes done before the
measured window.

``--framed`` benchmarks length-prefixed echo instead: every message is a 4-byte big-endian
length + payload (``loadgen --length-prefix``, 8 messages in flight per connection by
default), served by gevwire's ``examples/framed_echo.py`` (a ``Codec(Prefixed(Int32ub,
GreedyBytes))`` server) and by an asyncio ``Protocol`` with hand-written framing
(``servers/framed_asyncio.py``) on asyncio and on uvloop.

For every scenario, rounds are interleaved (round 1 runs every server once, then round 2,
...; the server order rotates by one each round) and the median of the rounds is reported.
Each run starts a fresh server pinned to one core, waits until its port accepts, warms it
with one connect / echo / close, then runs ``bin/loadgen`` pinned to the other core.

Server CPU time (utime + stime of the whole process, from ``/proc/PID/stat``) is sampled
at the exact edges of the load generator's measured window: the load generator prints
``#start`` / ``#end`` on stderr there (``--sync``), and keeps its connections open after
``#end`` until the runner has taken the second sample. Connection setup, warmup and
connection close are therefore outside the measurement. CPU per message is that CPU time
divided by the round trips the load generator completed and verified in the window.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import selectors
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN_BIN = BENCH_DIR / "bin" / "loadgen"
LOADGEN_TLS_BIN = BENCH_DIR / "bin" / "loadgen-tls"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
SETUP_TIMEOUT = 30.0
SATURATED = 0.9  # server CPU share above which its qps is its own limit


@dataclass(frozen=True)
class Scenario:
    name: str
    conns: int
    size: int


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("50x16B", 50, 16),
    Scenario("50x1KiB", 50, 1024),
    Scenario("50x4KiB", 50, 4096),
    Scenario("1000x64B", 1000, 64),
)

# --framed: payload sizes (each message also carries its 4-byte length prefix).
FRAMED_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("50x64B", 50, 64),
    Scenario("50x1KiB", 50, 1024),
)
FRAMED_PIPELINE = 8

# --tls: raw echo over TLS.
TLS_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("50x64B", 50, 64),
    Scenario("50x1KiB", 50, 1024),
    Scenario("50x4KiB", 50, 4096),
)
#: The certificate and key --tls servers use (made in main).
TLS_FILES: dict[str, str] = {}


@dataclass(frozen=True)
class Server:
    name: str
    command: Callable[[int], list[str]]
    available: Callable[[], str | None]  # None when available, else why it is skipped
    #: The checkout it runs from (its working directory and PYTHONPATH): this one, or
    #: with --base-tree the tree of the code before a change, for an A/B in one run.
    tree: Path = REPO_DIR


def _always() -> str | None:
    return None


def _example_missing(name: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        if (REPO_DIR / "examples" / name).is_file():
            return None
        return f"examples/{name} does not exist yet"

    return missing


def _uring_missing() -> str | None:
    if not (REPO_DIR / "examples" / "echo.py").is_file():
        return "examples/echo.py does not exist yet"
    from gevwire._uring.loop import uring_available

    ok, reason = uring_available()
    return None if ok else f"io_uring unavailable: {reason}"


def _with_backend(backend: str, argv: list[str]) -> list[str]:
    """``argv`` run with ``GEVWIRE_BACKEND=backend`` (the examples' Server default)."""
    return ["env", f"GEVWIRE_BACKEND={backend}", *argv]


def _uvloop_missing() -> str | None:
    if importlib.util.find_spec("uvloop") is not None:
        return None
    return f"uvloop is not importable by {sys.executable} (make bench installs it)"


SERVERS: tuple[Server, ...] = (
    Server(
        "gevwire",
        lambda port: _with_backend("epoll", [
            sys.executable, "examples/echo.py", "--port", str(port), "--loops", "1"]),
        _example_missing("echo.py"),
    ),
    Server(
        "gevwire-uring",
        lambda port: _with_backend("io_uring", [
            sys.executable, "examples/echo.py", "--port", str(port), "--loops", "1"]),
        _uring_missing,
    ),
    Server(
        "asyncio",
        lambda port: [
            sys.executable,
            str(BENCH_DIR / "servers" / "asyncio_echo.py"),
            "--port",
            str(port),
        ],
        _always,
    ),
    Server(
        "uvloop",
        lambda port: [
            sys.executable,
            str(BENCH_DIR / "servers" / "asyncio_echo.py"),
            "--port",
            str(port),
            "--uvloop",
        ],
        _uvloop_missing,
    ),
    Server(
        "ctypes-floor",
        lambda port: [
            sys.executable,
            str(BENCH_DIR / "servers" / "ctypes_floor.py"),
            "--port",
            str(port),
        ],
        _always,
    ),
)

FRAMED_SERVERS: tuple[Server, ...] = (
    Server(
        "gevwire",
        lambda port: _with_backend("epoll", [
            sys.executable, "examples/framed_echo.py", "--port", str(port), "--loops", "1",
        ]),
        _example_missing("framed_echo.py"),
    ),
    Server(
        "gevwire-uring",
        lambda port: _with_backend("io_uring", [
            sys.executable, "examples/framed_echo.py", "--port", str(port), "--loops", "1",
        ]),
        _uring_missing,
    ),
    Server(
        "asyncio",
        lambda port: [
            sys.executable, str(BENCH_DIR / "servers" / "framed_asyncio.py"), "--port", str(port),
        ],
        _always,
    ),
    Server(
        "uvloop",
        lambda port: [
            sys.executable,
            str(BENCH_DIR / "servers" / "framed_asyncio.py"),
            "--port",
            str(port),
            "--uvloop",
        ],
        _uvloop_missing,
    ),
)

def _tls_args() -> list[str]:
    return ["--ssl-certfile", TLS_FILES["cert"], "--ssl-keyfile", TLS_FILES["key"]]


TLS_SERVERS: tuple[Server, ...] = (
    Server(
        "gevwire",
        lambda port: _with_backend("epoll", [
            sys.executable, "examples/echo.py", "--port", str(port), "--loops", "1",
            *_tls_args()]),
        _example_missing("echo.py"),
    ),
    Server(
        "gevwire-uring",
        lambda port: _with_backend("io_uring", [
            sys.executable, "examples/echo.py", "--port", str(port), "--loops", "1",
            *_tls_args()]),
        _uring_missing,
    ),
    Server(
        "asyncio",
        lambda port: [sys.executable, str(BENCH_DIR / "servers" / "asyncio_echo.py"),
                      "--port", str(port), *_tls_args()],
        _always,
    ),
    Server(
        "uvloop",
        lambda port: [sys.executable, str(BENCH_DIR / "servers" / "asyncio_echo.py"),
                      "--port", str(port), "--uvloop", *_tls_args()],
        _uvloop_missing,
    ),
)


def awaiting_servers(mode: str) -> tuple[Server, ...]:
    """``--awaiting MODE``: length-prefixed echo whose every reply awaits first."""
    gevwire_argv = [sys.executable, str(BENCH_DIR / "servers" / "awaiting_gevwire.py"),
                    "--await", mode]
    asyncio_argv = [sys.executable, str(BENCH_DIR / "servers" / "framed_asyncio.py"),
                    "--await", mode]
    return (
        Server("gevwire", lambda port: _with_backend("epoll", [
            *gevwire_argv, "--port", str(port)]), _always),
        Server("gevwire-uring", lambda port: _with_backend("io_uring", [
            *gevwire_argv, "--port", str(port)]), _uring_missing),
        Server("gevwire-sync", lambda port: _with_backend("epoll", [
            sys.executable, "examples/framed_echo.py", "--port", str(port), "--loops", "1",
        ]), _example_missing("framed_echo.py")),
        Server("asyncio", lambda port: [*asyncio_argv, "--port", str(port)], _always),
        Server("uvloop", lambda port: [*asyncio_argv, "--port", str(port), "--uvloop"],
               _uvloop_missing),
    )


BASELINES = ("asyncio", "uvloop")


@dataclass
class RunResult:
    scenario: str
    server: str
    round: int
    ok: bool
    qps: float = 0.0
    messages: int = 0
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    cpu_us_per_msg: float = 0.0
    server_cpu_util: float = 0.0
    client_cpu_util: float = 0.0
    error: str = ""


@dataclass
class Summary:
    scenario: str
    server: str
    rounds_ok: int
    qps: float
    cpu_us_per_msg: float
    server_cpu_util: float
    client_cpu_util: float
    qps_vs: dict[str, float | None]
    cpu_vs: dict[str, float | None]


class BenchError(Exception):
    """A single run failed; the message says why."""


def build_loadgen(tls: bool = False) -> None:
    """Compile loadgen.c with ``cc -O2`` if the binary is missing or older than the source
    (``tls``: ``bin/loadgen-tls``, with ``-DLOADGEN_TLS`` and OpenSSL)."""
    binary = LOADGEN_TLS_BIN if tls else LOADGEN_BIN
    if binary.exists() and binary.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return
    binary.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-Wall", "-o", str(binary), str(LOADGEN_SRC)]
    if tls:
        cmd[3:3] = ["-DLOADGEN_TLS"]
        cmd += ["-lssl", "-lcrypto"]
    print("building:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, timeout=120)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"server did not accept on port {port} within {timeout:.0f} s")


def make_tls_files(directory: str) -> None:
    """A throwaway ECDSA P-256 certificate for localhost (``openssl req``) in TLS_FILES."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-subj", "/CN=localhost", "-days", "1"], check=True, timeout=60,
                   capture_output=True)
    TLS_FILES.update(cert=cert, key=key)


def warm_server(port: int, size: int = 1024, timeout: float = 5.0, framed: bool = False,
                tls: bool = False) -> None:
    """One connect / echo / close, so per-process first-use costs are paid up front.

    ``framed``: the message is one length-prefixed frame (4-byte big-endian length).
    ``tls``: over TLS (the certificate is not checked).
    """
    payload = bytes(range(256)) * (size // 256)
    if framed:
        payload = len(payload).to_bytes(4, "big") + payload
    with contextlib.ExitStack() as stack:
        s = stack.enter_context(socket.create_connection((HOST, port), timeout=timeout))
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s = stack.enter_context(ctx.wrap_socket(s))
        s.sendall(payload)
        got = bytearray()
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                raise BenchError("server closed the warm-up connection")
            got += chunk
    if bytes(got) != payload:
        raise BenchError("warm-up echo returned different bytes")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; always reaps the process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def read_tail(f: IO[bytes], lines: int = 8) -> str:
    f.seek(0)
    text = f.read().decode(errors="replace").strip()
    return "\n    ".join(text.splitlines()[-lines:])


def drive_loadgen(
    loadgen: subprocess.Popen[bytes], server_pid: int, deadline: float
) -> tuple[dict[str, Any], float, float]:
    """Follow the load generator's stderr markers, sampling CPU times at the window edges.

    Returns the load generator's JSON result and the CPU seconds the server and the load
    generator used in the measured window.
    """
    assert loadgen.stderr is not None and loadgen.stdin is not None
    assert loadgen.stdout is not None
    cpu_start: tuple[int, int] | None = None
    cpu_end: tuple[int, int] | None = None
    other: list[str] = []
    pending = b""
    fd = loadgen.stderr.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        eof = False
        while not eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError("load generator did not finish in time")
            if not sel.select(remaining):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                eof = True
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                if line == "#start":
                    cpu_start = proc_cpu_ticks(server_pid), proc_cpu_ticks(loadgen.pid)
                elif line == "#end":
                    cpu_end = proc_cpu_ticks(server_pid), proc_cpu_ticks(loadgen.pid)
                    loadgen.stdin.write(b"go\n")
                    loadgen.stdin.close()
                elif line:
                    other.append(line)
        if pending.strip():
            other.append(pending.decode(errors="replace"))
    rc = loadgen.wait(timeout=max(1.0, deadline - time.monotonic()))
    out = loadgen.stdout.read().decode(errors="replace").strip()
    try:
        result: dict[str, Any] = json.loads(out.splitlines()[-1]) if out else {}
    except json.JSONDecodeError as exc:
        raise BenchError(f"bad load generator output: {out!r}") from exc
    if rc != 0 or not result or result.get("errors", 1) != 0:
        detail = "; ".join(other) or out or "no output"
        raise BenchError(f"load generator failed (status {rc}): {detail}")
    if cpu_start is None or cpu_end is None:
        raise BenchError("load generator printed no #start/#end markers")
    server_s = (cpu_end[0] - cpu_start[0]) / CLK_TCK
    client_s = (cpu_end[1] - cpu_start[1]) / CLK_TCK
    return result, server_s, client_s


def run_one(
    scenario: Scenario, server: Server, round_no: int, args: argparse.Namespace
) -> RunResult:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(server.tree), env.get("PYTHONPATH", "")) if p)
    res = RunResult(scenario.name, server.name, round_no, ok=False)
    server_proc: subprocess.Popen[bytes] | None = None
    loadgen: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryFile() as server_log:
        try:
            server_proc = subprocess.Popen(
                ["taskset", "-c", str(args.server_cpu), *server.command(port)],
                cwd=server.tree,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=server_log,
                stderr=subprocess.STDOUT,
            )
            wait_for_port(port, server_proc)
            warm_server(port, framed=args.framed, tls=args.tls)
            cmd = [
                "taskset", "-c", str(args.client_cpu),
                str(LOADGEN_TLS_BIN if args.tls else LOADGEN_BIN),
                "--host", HOST, "--port", str(port),
                "--conns", str(scenario.conns), "--size", str(scenario.size),
                "--seconds", str(args.seconds), "--warmup", str(args.warmup),
                "--pipeline", str(args.pipeline),
                "--setup-timeout", str(SETUP_TIMEOUT), "--sync",
            ]  # fmt: skip
            if args.framed:
                cmd.append("--length-prefix")
            if args.tls:
                cmd.append("--tls")
            loadgen = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            deadline = time.monotonic() + SETUP_TIMEOUT + args.warmup + args.seconds + 45.0
            result, cpu_s, client_s = drive_loadgen(loadgen, server_proc.pid, deadline)
            if server_proc.poll() is not None:
                raise BenchError(f"server exited with status {server_proc.returncode}")
            res.messages = int(result["messages"])
            res.seconds = float(result["seconds"])
            res.qps = float(result["qps"])
            res.server_cpu_s = cpu_s
            res.cpu_us_per_msg = cpu_s * 1e6 / res.messages
            res.server_cpu_util = cpu_s / res.seconds
            res.client_cpu_util = client_s / res.seconds
            res.ok = True
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            res.error = str(exc)
        finally:
            if loadgen is not None:
                stop_process(loadgen)
                for stream in (loadgen.stdin, loadgen.stdout, loadgen.stderr):
                    if stream is not None:
                        stream.close()
            if server_proc is not None:
                stop_process(server_proc)
                if res.ok and server_proc.returncode != 0:
                    print(
                        f"  warning: {server.name} exited with status "
                        f"{server_proc.returncode} on SIGTERM",
                        file=sys.stderr,
                    )
        if not res.ok:
            log = read_tail(server_log)
            if log:
                res.error += f"\n  server output: {log}"
    return res


def summarize(
    results: Sequence[RunResult], scenarios: Sequence[Scenario], servers: Sequence[Server]
) -> list[Summary]:
    medians: dict[tuple[str, str], Summary] = {}
    for scn in scenarios:
        for srv in servers:
            ok = [r for r in results if r.scenario == scn.name and r.server == srv.name and r.ok]
            if not ok:
                continue
            medians[scn.name, srv.name] = Summary(
                scenario=scn.name,
                server=srv.name,
                rounds_ok=len(ok),
                qps=statistics.median(r.qps for r in ok),
                cpu_us_per_msg=statistics.median(r.cpu_us_per_msg for r in ok),
                server_cpu_util=statistics.median(r.server_cpu_util for r in ok),
                client_cpu_util=statistics.median(r.client_cpu_util for r in ok),
                qps_vs={},
                cpu_vs={},
            )
    for (scn_name, _), summary in medians.items():
        for base in BASELINES:
            ref = medians.get((scn_name, base))
            summary.qps_vs[base] = summary.qps / ref.qps if ref and ref.qps else None
            summary.cpu_vs[base] = (
                summary.cpu_us_per_msg / ref.cpu_us_per_msg if ref and ref.cpu_us_per_msg else None
            )
    return list(medians.values())


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table_rows(summaries: Sequence[Summary]) -> tuple[list[str], list[list[str]]]:
    header = ["scenario", "server", "qps"]
    header += [f"qps vs {b}" for b in BASELINES]
    header += ["CPU µs/msg"]
    header += [f"CPU vs {b}" for b in BASELINES]
    header += ["server CPU", "loadgen CPU"]
    rows = []
    for s in summaries:
        row = [s.scenario, s.server, f"{s.qps:,.0f}"]
        row += [_ratio(s.qps_vs[b]) for b in BASELINES]
        row += [f"{s.cpu_us_per_msg:.2f}"]
        row += [_ratio(s.cpu_vs[b]) for b in BASELINES]
        busy = f"{s.server_cpu_util * 100:.0f}%"
        if s.server_cpu_util < SATURATED:
            busy += "*"
        row += [busy, f"{s.client_cpu_util * 100:.0f}%"]
        rows.append(row)
    return header, rows


def format_text(summaries: Sequence[Summary]) -> str:
    header, rows = table_rows(summaries)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for n, row in enumerate([header, *rows]):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(summaries: Sequence[Summary]) -> str:
    header, rows = table_rows(summaries)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def select(names: str | None, items: Sequence[Any], what: str) -> list[Any]:
    if not names:
        return list(items)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {item.name: item for item in items}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [item for item in items if item.name in wanted]


def available_servers(wanted: str | None, servers: Sequence[Server]) -> list[Server]:
    """The servers named in ``wanted`` (all if None) that can run here; each one that
    cannot is named on stderr with the reason.  Exits when none can."""
    chosen: list[Server] = []
    for srv in select(wanted, servers, "server"):
        reason = srv.available()
        if reason is None:
            chosen.append(srv)
        else:
            print(f"skipping {srv.name}: {reason}", file=sys.stderr)
    if not chosen:
        raise SystemExit("no server to benchmark")
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="measured window per run (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured load before it (1)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median (3)")
    p.add_argument(
        "--framed",
        action="store_true",
        help="length-prefixed echo (loadgen --length-prefix) against framing servers",
    )
    p.add_argument(
        "--awaiting",
        choices=("trivial", "sleep0"),
        help="length-prefixed echo whose handler awaits a trivial coroutine (or "
        "asyncio.sleep(0)) per frame: gevwire's async handlers against asyncio "
        "Protocol servers that create a task per frame (implies --framed)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="echo over TLS 1.3 (bin/loadgen-tls) against TLS servers",
    )
    p.add_argument(
        "--pipeline",
        type=int,
        help=f"messages in flight per conn (1; {FRAMED_PIPELINE} with --framed)",
    )
    p.add_argument(
        "--scenarios",
        help="comma list of: " + ", ".join(s.name for s in SCENARIOS)
        + "; with --framed: " + ", ".join(s.name for s in FRAMED_SCENARIOS),
    )
    p.add_argument("--servers", help="comma list of: " + ", ".join(s.name for s in SERVERS))
    p.add_argument(
        "--base-tree",
        type=Path,
        help="a checkout of the code before a change (git worktree add --detach DIR REV): "
        "each gevwire server also runs from it, as NAME@base, in the same interleaved "
        "rounds",
    )
    p.add_argument("--server-cpu", type=int, default=0, help="core for the server (0)")
    p.add_argument("--client-cpu", type=int, default=1, help="core for the load generator (1)")
    p.add_argument("--json", type=Path, help="write raw runs and medians to this file")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    if args.awaiting:
        args.framed = True
    if args.pipeline is None:
        args.pipeline = FRAMED_PIPELINE if args.framed else 1
    if args.seconds <= 0 or args.warmup < 0 or args.rounds < 1 or args.pipeline < 1:
        p.error("--seconds and --rounds/--pipeline must be positive, --warmup >= 0")
    if args.tls and args.framed:
        p.error("--tls with --framed or --awaiting: one at a time")
    if args.server_cpu == args.client_cpu:
        p.error("--server-cpu and --client-cpu must differ")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if sys.platform != "linux":
        raise SystemExit("this benchmark needs Linux (epoll, /proc, taskset)")
    if shutil.which("taskset") is None:
        raise SystemExit("taskset not found (util-linux)")
    ncpu = os.cpu_count() or 1
    if max(args.server_cpu, args.client_cpu) >= ncpu or min(args.server_cpu, args.client_cpu) < 0:
        raise SystemExit(f"need cores {args.server_cpu} and {args.client_cpu}; have {ncpu}")
    scenario_set = TLS_SCENARIOS if args.tls else FRAMED_SCENARIOS if args.framed else SCENARIOS
    scenarios = select(args.scenarios, scenario_set, "scenario")
    if args.tls:
        candidates: Sequence[Server] = TLS_SERVERS
    elif args.awaiting:
        candidates = awaiting_servers(args.awaiting)
    else:
        candidates = FRAMED_SERVERS if args.framed else SERVERS
    servers = available_servers(args.servers, candidates)
    if args.base_tree is not None:
        base = args.base_tree.resolve()
        if not (base / "gevwire" / "__init__.py").is_file():
            raise SystemExit(f"--base-tree {base}: not a gevwire checkout")
        servers += [replace(srv, name=f"{srv.name}@base", tree=base)
                    for srv in servers if srv.name.startswith("gevwire")]
    build_loadgen(tls=args.tls)
    tls_dir = tempfile.TemporaryDirectory(prefix="gevwire-bench-tls-")
    if args.tls:
        make_tls_files(tls_dir.name)
    # Keep this process (it sleeps, then samples /proc) off the server's core.
    os.sched_setaffinity(0, {args.client_cpu})

    total = len(scenarios) * args.rounds * len(servers)
    mode = ("TLS echo" if args.tls else "length-prefixed echo" if args.framed
            else "raw echo")
    if args.awaiting:
        mode += f", every reply awaiting ({args.awaiting})"
    print(
        f"{mode}, pipeline {args.pipeline}: {total} runs of {args.warmup:g}+{args.seconds:g} s: "
        f"server on cpu {args.server_cpu}, load generator on cpu {args.client_cpu}",
        file=sys.stderr,
    )
    results: list[RunResult] = []
    n = 0
    for scn in scenarios:
        for rnd in range(args.rounds):
            shift = rnd % len(servers)
            for srv in servers[shift:] + servers[:shift]:
                n += 1
                r = run_one(scn, srv, rnd + 1, args)
                results.append(r)
                head = f"[{n}/{total}] {scn.name} round {rnd + 1} {srv.name}:"
                if r.ok:
                    print(
                        f"{head} {r.qps:,.0f} qps, {r.cpu_us_per_msg:.2f} µs CPU/msg, "
                        f"server CPU {r.server_cpu_util * 100:.0f}%, "
                        f"loadgen CPU {r.client_cpu_util * 100:.0f}%",
                        file=sys.stderr,
                    )
                else:
                    print(f"{head} FAILED: {r.error}", file=sys.stderr)

    summaries = summarize(results, scenarios, servers)
    print()
    print(format_markdown(summaries) if args.markdown else format_text(summaries))
    if any(s.server_cpu_util < SATURATED for s in summaries):
        print(
            f"\n* server below {SATURATED:.0%} CPU in the window: its qps was limited by the load"
            " generator or by wake-up latency, not by the server; compare CPU µs/msg."
        )
    if args.json:
        doc = {
            "machine": {
                "platform": platform.platform(),
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
                "clk_tck": CLK_TCK,
            },
            "settings": {
                "seconds": args.seconds,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "pipeline": args.pipeline,
                "framed": args.framed,
                "awaiting": args.awaiting,
                "tls": args.tls,
                "server_cpu": args.server_cpu,
                "client_cpu": args.client_cpu,
            },
            "runs": [asdict(r) for r in results],
            "summary": [asdict(s) for s in summaries],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
