"""Run a real HAProxy in front of a test backend (reusable by any test module).

``haproxy_binary()`` finds ``haproxy``, installing Debian's package once per session when
it is missing (as root, with ``apt-get``), or skips the test with the reason.
``run_haproxy(...)`` starts it in the foreground on a loopback port with a TCP-mode
frontend forwarding to one backend server line, waits until it listens, and always kills
it afterwards.  Everything is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from system_packages import require_program, tail_lines

#: How long haproxy may take to start listening.
START_TIMEOUT = 15.0


def haproxy_binary() -> str:
    """Path of ``haproxy``, installing it once if needed; skips the test if impossible."""
    return require_program("haproxy", package="haproxy")


def haproxy_version(binary: str) -> str:
    """The first line of ``haproxy -v``."""
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (another process may still take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _listening(host: str, port: int) -> bool:
    """True once something listens on ``host:port``, without connecting to it.

    Reads ``/proc/net/tcp{,6}`` on Linux, so no probe connection reaches the backend;
    elsewhere it falls back to a connect.
    """
    v6 = ":" in host
    table = "/proc/net/tcp6" if v6 else "/proc/net/tcp"
    try:
        with open(table) as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        family = socket.AF_INET6 if v6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            return probe.connect_ex((host, port)) == 0
    packed = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, host)
    # The kernel prints the address as native-endian 32-bit words in hex.
    words = [packed[i : i + 4] for i in range(0, len(packed), 4)]
    address = "".join(w[::-1].hex().upper() for w in words)
    wanted = f"{address}:{port:04X}"
    for row in rows:
        fields = row.split()
        if len(fields) > 3 and fields[1] == wanted and fields[3] == "0A":  # TCP_LISTEN
            return True
    return False


@dataclass
class HAProxy:
    """A running haproxy: where clients connect, and the process."""

    host: str
    port: int
    process: subprocess.Popen[str]
    config: str


def haproxy_config(
    front_host: str, front_port: int, back_port: int, server_options: str, extra: str = ""
) -> str:
    """A TCP-mode frontend on ``front_host:front_port`` → one server on 127.0.0.1."""
    bind = f"[{front_host}]" if ":" in front_host else front_host
    return f"""\
global
    maxconn 64
    nbthread 1

defaults
    mode tcp
    timeout connect 5s
    timeout client 15s
    timeout server 15s

frontend fe
    bind {bind}:{front_port}
{extra}
    default_backend be

backend be
    server app 127.0.0.1:{back_port} {server_options}
"""


@contextlib.contextmanager
def run_haproxy(
    back_port: int,
    server_options: str,
    *,
    front_host: str = "127.0.0.1",
    extra: str = "",
    attempts: int = 3,
) -> Iterator[HAProxy]:
    """Run ``haproxy -f <cfg> -db`` in front of ``127.0.0.1:back_port``; kill it on exit.

    ``server_options`` go on the ``server`` line (``send-proxy``, ``send-proxy-v2``, ...);
    ``extra`` lines go in the frontend.  A port taken between choosing and binding it is
    retried with another.
    """
    binary = haproxy_binary()
    with tempfile.TemporaryDirectory(prefix="gevwire-haproxy-") as tmp:
        cfg = os.path.join(tmp, "haproxy.cfg")
        errors: list[str] = []
        for _ in range(attempts):
            port = free_port(front_host)
            config = haproxy_config(front_host, port, back_port, server_options, extra)
            with open(cfg, "w") as f:
                f.write(config)
            check = subprocess.run(
                [binary, "-c", "-f", cfg], capture_output=True, text=True, timeout=30, check=False
            )
            if check.returncode != 0:
                raise AssertionError(f"haproxy rejects the config:\n{config}\n{check.stderr}")
            log = open(os.path.join(tmp, "haproxy.log"), "w+")  # noqa: SIM115
            process = subprocess.Popen(
                [binary, "-f", cfg, "-db"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + START_TIMEOUT
                while process.poll() is None and not _listening(front_host, port):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"haproxy did not listen within {START_TIMEOUT} s")
                    time.sleep(0.02)
                if process.poll() is None:
                    yield HAProxy(front_host, port, process, config)
                    return
                log.seek(0)
                errors.append(tail_lines(log.read()))
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=10)
                log.close()
        raise AssertionError("haproxy failed to start:\n" + "\n---\n".join(errors))
