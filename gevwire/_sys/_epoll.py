"""Linux ``epoll`` through ctypes.

Level-triggered on purpose: a connection whose input is paused (output over its high
water mark) simply drops ``EV_READ`` from its interest set and is not woken again, and a
read that leaves data in the socket is retried on the next turn without bookkeeping.

Quirks this code relies on:

* epoll watches the open file description, not the fd number.  A ``close`` while the
  description is still open elsewhere (a ``dup``, a forked child) leaves it registered and
  reporting events for a dead number, so every fd is unregistered *before* it is closed.
* ``EPOLLRDHUP`` reports a peer's half-close together with ``EPOLLIN``; the read that
  follows returns 0.
* ``epoll_wait`` returns ``EINTR`` when a signal lands; that is an empty turn, not an error.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from typing import Any

from gevwire._sys._libc import alloc, check, foreign, foreign_blocking, get_errno, os_error
from gevwire._sys._poller import EV_RDHUP, EV_READ

__all__ = ["EpollPoller"]

_EPOLL_CLOEXEC = 0o2000000
_EPOLL_CTL_ADD, _EPOLL_CTL_DEL, _EPOLL_CTL_MOD = 1, 2, 3
_EINTR, _ENOENT, _EBADF = 4, 2, 9

# struct epoll_event { uint32_t events; epoll_data_t data; }: the kernel packs it on
# x86_64 (12 bytes), other architectures pad ``events`` to 8 (16 bytes).
_EVENT = struct.Struct("=IQ" if platform.machine() in ("x86_64", "AMD64") else "=I4xQ")

_epoll_create1: Any = foreign("epoll_create1")
_epoll_ctl: Any = foreign("epoll_ctl")
_epoll_wait: Any = foreign_blocking("epoll_wait")


class EpollPoller:
    """:class:`~gevwire._sys._poller.Poller` on ``epoll``: one foreign call per wait."""

    __slots__ = ("_ctl", "_ctl_ptr", "_events", "_events_ptr", "_fd", "_max", "_view")

    def __init__(self, max_events: int = 512) -> None:
        if _epoll_create1 is None:
            raise OSError("epoll is not available on this platform")
        self._fd: int = check(_epoll_create1(_EPOLL_CLOEXEC), "epoll_create1")
        self._max = max_events
        self._events, _, self._events_ptr = alloc(_EVENT.size * max_events)
        self._view = memoryview(self._events)
        self._ctl, _, self._ctl_ptr = alloc(_EVENT.size)

    def fileno(self) -> int:
        """The epoll fd."""
        return self._fd

    def _control(self, op: int, fd: int, token: int, events: int) -> None:
        if events & EV_READ:
            events |= EV_RDHUP
        _EVENT.pack_into(self._ctl, 0, events, token)
        if _epoll_ctl(self._fd, op, fd, self._ctl_ptr) == -1:
            raise os_error(get_errno(), "epoll_ctl")

    def register(self, fd: int, token: int, events: int) -> None:
        """Watch ``fd`` for ``events``, reporting ``token``."""
        self._control(_EPOLL_CTL_ADD, fd, token, events)

    def modify(self, fd: int, token: int, events: int) -> None:
        """Replace the watched events of ``fd``."""
        self._control(_EPOLL_CTL_MOD, fd, token, events)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``; an fd that is already gone is not an error."""
        if _epoll_ctl(self._fd, _EPOLL_CTL_DEL, fd, self._ctl_ptr) == -1:
            err = get_errno()
            if err not in (_ENOENT, _EBADF):
                raise os_error(err, "epoll_ctl(DEL)")

    def poll(self, timeout_ms: int) -> list[tuple[int, int]]:
        """Wait for events; see :meth:`Poller.poll`."""
        n: int = _epoll_wait(self._fd, self._events_ptr, self._max, timeout_ms)
        if n <= 0:
            if n == 0 or get_errno() == _EINTR:
                return []
            raise os_error(get_errno(), "epoll_wait")
        return list(_EVENT.iter_unpack(self._view[: n * _EVENT.size]))

    def close(self) -> None:
        """Close the epoll fd (idempotent)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


del ctypes
