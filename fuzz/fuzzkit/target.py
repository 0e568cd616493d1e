"""What a fuzz harness is, and the registry of them.

A :class:`Target` turns inputs into a verdict.  Both engines drive the same ``check``:
hypothesis draws structured cases from :meth:`Target.cases` (and shrinks a failing one),
atheris mutates raw bytes that :meth:`Target.from_bytes` reads as a case.  ``check``
raises on a bug (:class:`HarnessFailure` for a broken property; any other exception is
a bug too) and returns quietly otherwise.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from fuzzkit.case import Case

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "RINGS",
    "ByteReader",
    "HarnessFailure",
    "HarnessHang",
    "Target",
    "check_case",
    "get",
    "on_load",
    "register",
    "registry",
    "time_limit",
]

#: Input ring sizes a case may pick: small ones (which never move bytes to their front)
#: wrap around often, the path on which ``decode`` rather than ``decode_view`` cuts
#: frames; 4096 is a connection's own.
RINGS = (16, 64, 4096)


class HarnessFailure(AssertionError):
    """A harness property does not hold for a case."""


class HarnessHang(HarnessFailure):
    """A check did not finish within its time limit (an endless loop, or O(n²))."""


class Target:
    """One harness.  Subclasses set ``name`` and ``about`` and implement the methods."""

    name: str = ""
    about: str = ""

    def cases(self) -> SearchStrategy[Case]:
        """A hypothesis strategy of cases."""
        raise NotImplementedError

    def from_bytes(self, raw: bytes) -> Case:
        """The case a fuzzer's raw buffer stands for (every buffer stands for one)."""
        raise NotImplementedError

    def to_bytes(self, case: Case) -> bytes:
        """A raw buffer that :meth:`from_bytes` reads back as ``case`` (seeds a corpus)."""
        raise NotImplementedError

    def check(self, case: Case) -> None:
        """Raise if ``case`` shows a bug."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# -- the registry ----------------------------------------------------------------------

_REGISTRY: dict[str, Target] = {}
_LOADERS: list[Callable[[], None]] = []
_loaded = False


def register(target: Target) -> Target:
    """Add ``target`` under its name (replacing one of the same name); returns it."""
    if not target.name:
        raise ValueError(f"{target!r} has no name")
    _REGISTRY[target.name] = target
    return target


def on_load(loader: Callable[[], None]) -> Callable[[], None]:
    """Run ``loader`` (which registers targets) the first time the registry is read."""
    _LOADERS.append(loader)
    return loader


def registry() -> dict[str, Target]:
    """Every registered target by name, in registration order."""
    global _loaded
    if not _loaded:
        _loaded = True
        import fuzzkit.targets  # noqa: F401  (registers the built-in targets)

        for loader in _LOADERS:
            loader()
    return dict(_REGISTRY)


def get(name: str) -> Target:
    """The target registered as ``name``; ``KeyError`` lists the known names."""
    targets = registry()
    try:
        return targets[name]
    except KeyError:
        raise KeyError(f"no fuzz target {name!r}; known: {', '.join(targets)}") from None


# -- running one case ------------------------------------------------------------------


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise HarnessHang("the check did not finish in time")


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`HarnessHang` in the block after ``seconds`` (SIGALRM; main thread
    only, else no limit).  A decoder stuck in a Python loop is interrupted; one stuck in
    C code is not (libFuzzer's ``-timeout`` covers that under atheris).  An alarm set
    before (pytest-timeout's) is put back with the time it had left."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    started = time.monotonic()
    outer, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:  # someone else's alarm (pytest-timeout's): set it going again
            left = outer - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), interval)


def check_case(target: Target, case: Case, *, timeout: float | None = 5.0) -> None:
    """``target.check(case)`` within ``timeout`` seconds."""
    with time_limit(timeout):
        target.check(case)


# -- reading a fuzzer's buffer ---------------------------------------------------------


class ByteReader:
    """Reads choices from a raw buffer, front to back; past its end every choice is 0.

    Deterministic and total, so every buffer a fuzzer makes is some case, and
    ``to_bytes`` can write the buffer for a case.
    """

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.pos = 0

    def byte(self) -> int:
        """The next byte, or 0."""
        if self.pos >= len(self.raw):
            return 0
        self.pos += 1
        return self.raw[self.pos - 1]

    def u16(self) -> int:
        """The next two bytes, big-endian."""
        return self.byte() << 8 | self.byte()

    def take(self, n: int) -> bytes:
        """Up to ``n`` next bytes."""
        data = self.raw[self.pos : self.pos + n]
        self.pos += len(data)
        return data

    def rest(self) -> bytes:
        """Every byte not read yet."""
        data = self.raw[self.pos :]
        self.pos = len(self.raw)
        return data
