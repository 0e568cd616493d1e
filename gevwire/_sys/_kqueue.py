"""BSD / macOS ``kqueue`` through ctypes, behind the same interface as epoll.

``struct kevent`` layouts (64-bit):

* macOS, OpenBSD, DragonFly and FreeBSD before 12: ``uintptr_t ident; int16_t filter;
  uint16_t flags; uint32_t fflags; intptr_t data; void *udata`` — 32 bytes.
* FreeBSD 12 and later: the same followed by ``uint64_t ext[4]`` — 64 bytes.
* NetBSD: ``uint32_t`` filter and flags (and ``ext[4]`` since 10) — not supported.

kqueue has a filter per direction where epoll has one mask per fd, so ``modify`` adds or
deletes the read and write filters separately and ``poll`` may report one fd twice in a
turn (once per filter).  Events are translated to epoll's bit values (``EV_EOF`` on the
read filter becomes ``EV_RDHUP``, ``EV_ERROR`` becomes ``EV_ERROR``).
"""

from __future__ import annotations

import os
import platform
import struct
import sys
from typing import Any

from gevwire._sys._libc import alloc, check, foreign, foreign_blocking, get_errno, os_error
from gevwire._sys._poller import EV_ERROR, EV_RDHUP, EV_READ, EV_WRITE

__all__ = ["KqueuePoller", "kevent_layout"]

_EVFILT_READ, _EVFILT_WRITE = -1, -2
_EV_ADD, _EV_DELETE, _EV_ENABLE = 0x0001, 0x0002, 0x0004
_EV_ERROR, _EV_EOF = 0x4000, 0x8000
_EINTR, _ENOENT, _EBADF = 4, 2, 9


def kevent_layout(system: str, release: str) -> struct.Struct:
    """The ``struct kevent`` layout for an OS (``sys.platform``, ``platform.release()``)."""
    base = "@QhHIqQ"
    if system.startswith("freebsd"):
        # sys.platform carries the major version ("freebsd13"); the release string
        # ("13.2-RELEASE", "15-CURRENT") is the fallback.
        digits = system[len("freebsd"):] or release.split(".", 1)[0].split("-", 1)[0]
        major = int(digits) if digits.isdigit() else 0
        return struct.Struct(base + "4Q" if major >= 12 else base)
    if system == "darwin" or system.startswith(("openbsd", "dragonfly")):
        return struct.Struct(base)
    raise OSError(f"kqueue layout for {system!r} is not known")


_kqueue: Any = foreign("kqueue")
_kevent_nb: Any = foreign("kevent")
_kevent_wait: Any = foreign_blocking("kevent")


class KqueuePoller:
    """:class:`~gevwire._sys._poller.Poller` on ``kqueue``."""

    __slots__ = ("_changes", "_changes_ptr", "_events", "_events_ptr", "_fd", "_kev",
                 "_max", "_timespec", "_timespec_ptr", "_view", "_watched")

    def __init__(self, max_events: int = 512) -> None:
        if _kqueue is None:
            raise OSError("kqueue is not available on this platform")
        self._kev = kevent_layout(sys.platform, platform.release())
        self._fd: int = check(_kqueue(), "kqueue")
        os.set_inheritable(self._fd, False)
        self._max = max_events
        self._events, _, self._events_ptr = alloc(self._kev.size * max_events)
        self._view = memoryview(self._events)
        self._changes, _, self._changes_ptr = alloc(self._kev.size * 2)
        self._timespec, _, self._timespec_ptr = alloc(16)
        self._watched: dict[int, int] = {}  # fd -> events currently registered

    def fileno(self) -> int:
        """The kqueue fd."""
        return self._fd

    def _pack(self, index: int, fd: int, filt: int, flags: int, token: int) -> None:
        extra = (0, 0, 0, 0) if self._kev.size > 32 else ()
        self._kev.pack_into(self._changes, index * self._kev.size, fd, filt, flags, 0, 0,
                            token, *extra)

    def _apply(self, fd: int, token: int, old: int, new: int) -> None:
        count = 0
        for bit, filt in ((EV_READ, _EVFILT_READ), (EV_WRITE, _EVFILT_WRITE)):
            if new & bit:
                self._pack(count, fd, filt, _EV_ADD | _EV_ENABLE, token)
                count += 1
            elif old & bit:
                self._pack(count, fd, filt, _EV_DELETE, token)
                count += 1
        if count and _kevent_nb(self._fd, self._changes_ptr, count, None, 0, None) == -1:
            err = get_errno()
            if err not in (_ENOENT, _EBADF) or new:
                raise os_error(err, "kevent")
        self._watched[fd] = new

    def register(self, fd: int, token: int, events: int) -> None:
        """Watch ``fd`` for ``events``, reporting ``token``."""
        self._apply(fd, token, 0, events)

    def modify(self, fd: int, token: int, events: int) -> None:
        """Replace the watched events of ``fd``."""
        self._apply(fd, token, self._watched.get(fd, 0), events)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``."""
        old = self._watched.pop(fd, 0)
        if old:
            self._apply(fd, 0, old, 0)
            del self._watched[fd]

    def poll(self, timeout_ms: int) -> list[tuple[int, int]]:
        """Wait for events; see :meth:`Poller.poll`."""
        if timeout_ms < 0:
            ts = None
        else:
            struct.pack_into("@qq", self._timespec, 0, timeout_ms // 1000,
                             (timeout_ms % 1000) * 1_000_000)
            ts = self._timespec_ptr
        n: int = _kevent_wait(self._fd, None, 0, self._events_ptr, self._max, ts)
        if n <= 0:
            if n == 0 or get_errno() == _EINTR:
                return []
            raise os_error(get_errno(), "kevent")
        out: list[tuple[int, int]] = []
        size = self._kev.size
        for i in range(n):
            _, filt, flags, _, _, token, *_ = self._kev.unpack_from(self._view, i * size)
            if flags & _EV_ERROR:
                mask = EV_ERROR
            elif filt == _EVFILT_READ:
                mask = EV_READ | (EV_RDHUP if flags & _EV_EOF else 0)
            else:
                mask = EV_WRITE | (EV_ERROR if flags & _EV_EOF else 0)
            out.append((mask, token))
        return out

    def close(self) -> None:
        """Close the kqueue fd (idempotent)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
