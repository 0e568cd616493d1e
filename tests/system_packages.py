"""Find a system program, installing its Debian package once when it is missing.

``require_program("redis-cli", package="redis-tools")`` returns the program's path, or
skips the calling test with the reason it cannot be had (not root, no ``apt-get``, the
install failed or timed out).  ``apt-get update`` runs at most once per test session, and
installs are serialised across processes with a lock file, so parallel test runs do not
fight over dpkg's lock.  Everything is bounded in time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

#: Bounds on the one-time package installation (seconds).
APT_UPDATE_TIMEOUT = 300.0
APT_INSTALL_TIMEOUT = 600.0
#: How long to wait for another process's install to finish.
LOCK_TIMEOUT = APT_UPDATE_TIMEOUT + APT_INSTALL_TIMEOUT

_LOCK_PATH = "/tmp/gevwire-tests-apt.lock"
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_updated = False
_failures: dict[str, str] = {}


def find_program(name: str) -> str | None:
    """Path of ``name`` on PATH or in the sbin directories Debian uses, else None."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def tail_lines(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    with open(_LOCK_PATH, "a") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("another process holds the apt lock") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(command: list[str], timeout: float) -> str | None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return f"`{' '.join(command)}` took over {timeout:.0f} s"
    if done.returncode != 0:
        return f"`{' '.join(command)}` failed ({done.returncode}):\n{tail_lines(done.stderr)}"
    return None


def install_package(package: str) -> str | None:
    """Install a Debian package; None on success, else the reason it failed."""
    global _updated
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"{package} is not installed and installing it needs root"
    apt = shutil.which("apt-get")
    if apt is None:
        return f"{package} is not installed and there is no apt-get to install it"
    try:
        with _install_lock():
            if not _updated:
                failure = _run([apt, "-o", "DPkg::Lock::Timeout=300", "update"],
                               APT_UPDATE_TIMEOUT)
                if failure:
                    return failure
                _updated = True
            return _run([apt, "-o", "DPkg::Lock::Timeout=300", "install", "-y",
                         "--no-install-recommends", package],
                        APT_INSTALL_TIMEOUT)
    except TimeoutError as exc:
        return f"{package}: {exc}"


def require_program(name: str, *, package: str) -> str:
    """Path of program ``name``, installing ``package`` once if needed; else skip."""
    found = find_program(name)
    if found:
        return found
    if package not in _failures:
        _failures[package] = install_package(package) or ""
    found = find_program(name)
    if found:
        return found
    pytest.skip(_failures[package] or f"{package} was installed but {name} is not found")
