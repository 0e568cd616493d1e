"""``python -m gevwire run module:handler``: help, serving from a subprocess, errors."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_workers import ServerProcess, alive, kill_quietly

import gevwire
from gevwire.cli import CliError, build_parser, load_codec, load_handler, main

pytestmark = [pytest.mark.timeout(60), pytest.mark.io]

APP = '''
import gevwire

class Upper(gevwire.Handler):
    def on_message(self, conn, frame):
        return bytes(frame).upper()

upper = Upper()

def make_upper():
    return Upper()

NOT_A_HANDLER = 42

class Broken(gevwire.Handler):
    def __init__(self):
        raise ValueError("broken on purpose")

import gevwire.codecs
plus_codec = gevwire.codecs.line(b"+")

import asyncio

class Waits(gevwire.Handler):
    async def on_message(self, conn, frame):
        await asyncio.sleep(float(frame))
        return b"slept " + bytes(frame)

waits = Waits()
'''

LISTENING = r"\[(\d+)\] gevwire listening on \('127\.0\.0\.1', (\d+)\)"


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding ``upperapp.py``; ``sys.path`` is restored afterwards."""
    (tmp_path / "upperapp.py").write_text(APP)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "upperapp", raising=False)
    return tmp_path


def gevwire_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gevwire", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=20)


def test_help() -> None:
    top = gevwire_cli("--help")
    assert top.returncode == 0 and "run" in top.stdout
    run = gevwire_cli("run", "--help")
    assert run.returncode == 0
    for option in ("MODULE:HANDLER", "--address", "--loops", "--workers", "--codec",
                   "--idle-timeout", "--frame-timeout", "--metrics-address", "--max-connections",
                   "--proxy-protocol", "--worker-timeout", "--max-buffered-bytes",
                   "--backend", "--reuse-port", "--max-pending-per-connection",
                   "--handler-timeout", "--log-level"):
        assert option in run.stdout


@pytest.mark.parametrize(
    ("spec", "codec", "workers", "send", "expect"),
    [
        ("upperapp:Upper", "raw", 1, b"hello", b"HELLO"),  # a class
        ("upperapp:make_upper", "line", 1, b"one\ntwo\n", b"ONE\nTWO\n"),  # a factory
        ("upperapp:upper", "upperapp:plus_codec", 2, b"a+b+", b"A+B+"),  # an instance
    ],
)
def test_serves_a_handler_module_and_stops_on_sigterm(
    app_dir: Path, spec: str, codec: str, workers: int, send: bytes, expect: bytes
) -> None:
    run = ServerProcess(["-m", "gevwire", "run", spec, "--address", "127.0.0.1:0",
                         "--codec", codec, "--workers", str(workers), "--loops", "2",
                         "--idle-timeout", "30", "--max-connections", "100",
                         "--max-buffered-bytes", str(64 << 20)], cwd=app_dir)
    pids: list[int] = []
    try:
        listening = run.wait_for(LISTENING + r" with 2 loop", count=workers)
        pids = [int(m[1]) for m in listening]
        port = int(listening[0][2])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(send)
            got = b""
            while len(got) < len(expect):
                chunk = sock.recv(64)
                assert chunk, run.output
                got += chunk
            assert got == expect
        assert run.stop() == 0, run.output
        assert "SIGTERM: stopping" in run.output
        assert not any(alive(pid) for pid in pids if pid != run.proc.pid)
    finally:
        run.close()
        kill_quietly([pid for pid in pids if pid != run.proc.pid and alive(pid)])


def test_handler_timeout_from_the_command_line(app_dir: Path) -> None:
    run = ServerProcess(["-m", "gevwire", "run", "upperapp:waits", "--address",
                         "127.0.0.1:0", "--codec", "line", "--handler-timeout", "0.5",
                         "--max-pending-per-connection", "1"], cwd=app_dir)
    try:
        port = int(run.wait_for(LISTENING)[0][2])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"0.01\n")
            assert sock.recv(64) == b"slept 0.01\n"
            sock.sendall(b"5\n")  # past --handler-timeout: closed, HandlerTimeout logged
            assert sock.recv(64) == b""
        assert run.stop() == 0, run.output
        assert "handler took longer than handler_timeout=0.5s" in run.output
    finally:
        run.close()


def test_a_bad_handler_path_is_a_clear_error(app_dir: Path) -> None:
    result = gevwire_cli("run", "nosuchmodule:Handler", cwd=app_dir)
    assert result.returncode == 2
    assert "no module named 'nosuchmodule'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["upperapp"], "expected 'module:attribute'"),
        (["upperapp:Nope"], "module 'upperapp' has no attribute 'Nope'"),
        (["upperapp:NOT_A_HANDLER"], "is not a handler"),
        (["upperapp:Upper", "--codec", "morse"], "unknown codec 'morse'"),
        (["upperapp:Upper", "--codec", "upperapp:upper"], "is not a codec"),
        (["upperapp:Upper", "--workers", "2", "--address", "unix:/tmp/x.sock"], "TCP"),
        (["upperapp:Upper", "--workers", "0"], "must be at least 1"),
        (["upperapp:Upper", "--worker-timeout", "0"], "--worker-timeout"),
    ],
)
def test_bad_arguments_exit_with_a_usage_error(
    app_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *args, "--app-dir", str(app_dir)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_error_inside_the_handler_factory_keeps_its_traceback(app_dir: Path) -> None:
    sys.path.insert(0, str(app_dir))
    with pytest.raises(ValueError, match="broken on purpose"):
        load_handler("upperapp:Broken")


def test_a_port_in_use_exits_with_status_1(app_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = gevwire_cli("run", "upperapp:Upper", "--address", f"127.0.0.1:{port}",
                             cwd=app_dir)
    assert result.returncode == 1
    assert "cannot serve on" in result.stderr


def test_load_codec_short_names_and_factories(app_dir: Path) -> None:
    assert isinstance(load_codec("raw"), gevwire.RawCodec)
    codecs = pytest.importorskip("gevwire.codecs")
    for name in ("line", "length_field", "varint"):
        if hasattr(codecs, name):
            assert isinstance(load_codec(name), gevwire.BaseCodec)
    assert isinstance(load_codec("gevwire:RawCodec"), gevwire.RawCodec)  # a class
    with pytest.raises(CliError, match="unknown codec"):
        load_codec("gzip")


def _two_free_ports() -> int:
    """A port p such that p and p + 1 are both free right now.

    Drawn below the kernel's ephemeral range: ``bind(0)`` hands out odd ports there and
    outgoing connections take the even ones, so under a busy suite the port after a
    ``bind(0)`` port is often held by a TIME_WAIT client socket.
    """
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low - 1)
        try:
            for candidate in (port, port + 1):
                with socket.socket() as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports")


def test_metrics_address_with_workers_serves_one_endpoint_per_worker(app_dir: Path) -> None:
    pytest.importorskip("prometheus_client")
    import urllib.request

    base = _two_free_ports()
    run = ServerProcess(["-m", "gevwire", "run", "upperapp:Upper", "--address", "127.0.0.1:0",
                         "--workers", "2", "--metrics-address", f"127.0.0.1:{base}",
                         "--frame-timeout", "5"], cwd=app_dir)
    pids: list[int] = []
    try:
        listening = run.wait_for(LISTENING, count=2)
        pids = [int(m[1]) for m in listening]
        run.wait_for(r"gevwire metrics on http://127\.0\.0\.1:\d+/metrics", count=2)
        for port in (base, base + 1):
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            assert "gevwire_connections_total" in text, text[:500]
        assert run.stop() == 0, run.output
    finally:
        run.close()
        kill_quietly([pid for pid in pids if pid != run.proc.pid and alive(pid)])


def test_version_matches_the_package_metadata() -> None:
    import tomllib

    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert gevwire.__version__ == version
    done = gevwire_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"gevwire {version}"


def test_options_take_their_defaults_from_gevwire_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEVWIRE_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("GEVWIRE_PROXY_PROTOCOL", "1")
    monkeypatch.setenv("GEVWIRE_BACKEND", "auto")
    parser, _ = build_parser()
    args = parser.parse_args(["run", "m:h"])
    assert (args.max_connections, args.proxy_protocol, args.backend) == (7, True, "auto")
    args = parser.parse_args(["run", "m:h", "--max-connections", "9"])  # the flag wins
    assert args.max_connections == 9


@pytest.mark.parametrize(("name", "value", "message"), [
    ("GEVWIRE_LOOPS", "many", "GEVWIRE_LOOPS='many'"),
    ("GEVWIRE_BACKEND", "kqueue", "not one of epoll, io_uring, auto"),
])
def test_a_bad_environment_value_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str,
    value: str, message: str,
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        build_parser()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
