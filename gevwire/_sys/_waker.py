"""Wakes a sleeping poller from another thread: ``eventfd`` on Linux, a pipe elsewhere."""

from __future__ import annotations

import os
from typing import Any

from gevwire._sys._libc import foreign

__all__ = ["Waker"]

_EFD_CLOEXEC, _EFD_NONBLOCK = 0o2000000, 0o4000
_eventfd: Any = foreign("eventfd")
_ONE = (1).to_bytes(8, "little")


class Waker:
    """A readable fd that :meth:`wake` makes ready and :meth:`drain` resets."""

    __slots__ = ("_read_fd", "_write_fd")

    def __init__(self) -> None:
        fd = _eventfd(0, _EFD_CLOEXEC | _EFD_NONBLOCK) if _eventfd is not None else -1
        if fd >= 0:
            self._read_fd = self._write_fd = fd
        else:
            self._read_fd, self._write_fd = os.pipe()
            for end in (self._read_fd, self._write_fd):
                os.set_blocking(end, False)

    def fileno(self) -> int:
        """The fd to watch for ``EV_READ``."""
        return self._read_fd

    def wake(self) -> None:
        """Make the fd readable; safe from any thread, and a no-op once closed."""
        fd = self._write_fd
        if fd < 0:
            return
        try:
            os.write(fd, _ONE)
        except (BlockingIOError, OSError):
            pass  # counter or pipe already full: the poller is awake anyway, or closing

    def drain(self) -> None:
        """Make the fd unreadable again (called on the loop thread)."""
        try:
            while os.read(self._read_fd, 4096):
                if self._read_fd == self._write_fd:
                    break  # an eventfd resets with one read
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Close the fds (idempotent; the numbers are forgotten so that a later wake
        cannot write into an fd the kernel has given to someone else)."""
        fds = {self._read_fd, self._write_fd} - {-1}
        self._read_fd = self._write_fd = -1
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
