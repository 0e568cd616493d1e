"""Run an example script as a server subprocess for the tests.

Servers are started with ``--port 0`` and print ``listening on HOST:PORT`` once they
accept, so there is no race for a free port. Every wait is bounded and every process
is killed at the end.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
START_TIMEOUT = 20.0  # a loaded machine can take a while to import and bind
STOP_TIMEOUT = 15.0


def example_env() -> dict[str, str]:
    """The environment for an example: the repository on ``PYTHONPATH``, unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def read_listening_port(proc: subprocess.Popen[bytes], log: IO[bytes]) -> int:
    """Wait for the server's ``listening on HOST:PORT`` line; return PORT.

    Fails with the server's stderr (``log``) if no such line comes within
    ``START_TIMEOUT`` seconds or the server exits first.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + START_TIMEOUT
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not sel.select(min(remaining, 0.5)):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            pending += chunk
            for line in pending.split(b"\n")[:-1]:
                if line.startswith(b"listening on "):
                    return int(line.rsplit(b":", 1)[1])
    log.seek(0)
    raise AssertionError(
        f"server printed no 'listening on' line within {START_TIMEOUT:.0f} s "
        f"(status {proc.poll()}); stdout {pending!r}; stderr:\n"
        + log.read().decode(errors="replace")
    )


def _interactive_sigint() -> None:
    """(In the child, before exec.)  SIGINT at its default, as an interactive shell
    leaves it: a test suite started in the background (``make test &``) inherits
    SIGINT ignored, and a server honours that (``Server.run`` only takes over signals
    left at their defaults), so a SIGINT test would wait for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def example_server(script: str, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run ``examples/<script> --port 0 *extra``; yield the process and its port; always
    kill it."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), "--port", "0", *extra],
            cwd=REPO,
            env=example_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            preexec_fn=_interactive_sigint,
        )
        try:
            yield proc, read_listening_port(proc, log)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(STOP_TIMEOUT)
            assert proc.stdout is not None
            proc.stdout.close()


def assert_stops_cleanly(proc: subprocess.Popen[bytes],
                         sig: signal.Signals = signal.SIGTERM) -> None:
    """Send ``sig`` to a running server; it must exit with status 0 within
    ``STOP_TIMEOUT`` seconds."""
    assert proc.poll() is None, f"server exited early with status {proc.returncode}"
    proc.send_signal(sig)
    try:
        status = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server did not exit within {STOP_TIMEOUT:.0f} s of {sig.name}")
    assert status == 0, f"server exited with status {status} on {sig.name}"
