"""The poller interface that the epoll and kqueue backends share.

Event masks use epoll's bit values on every platform (kqueue translates), so the loop
tests bits without a per-event translation on Linux.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["EV_ERROR", "EV_HUP", "EV_RDHUP", "EV_READ", "EV_WRITE", "Poller"]

EV_READ = 0x001  # EPOLLIN: readable (data, EOF, or a pending connection)
EV_WRITE = 0x004  # EPOLLOUT: writable
EV_ERROR = 0x008  # EPOLLERR: error condition; a read or write reports which
EV_HUP = 0x010  # EPOLLHUP: both directions closed
EV_RDHUP = 0x2000  # EPOLLRDHUP: the peer shut down its writing half


class Poller(Protocol):
    """Readiness notification for many fds.

    Each registration carries a ``token`` (an int below 2**63) that ``poll`` reports back
    instead of the fd.  The loop gives every registration a fresh token, so an event that
    was already queued for an fd closed earlier in the same turn cannot reach a new
    connection that the kernel gave the same fd number.
    """

    def register(self, fd: int, token: int, events: int) -> None:
        """Start watching ``fd`` for ``events`` (``EV_READ`` / ``EV_WRITE`` bits)."""

    def modify(self, fd: int, token: int, events: int) -> None:
        """Change the events watched for ``fd`` (0 watches nothing but stays registered)."""

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``; call it before ``close(fd)``."""

    def poll(self, timeout_ms: int) -> list[tuple[int, int]]:
        """Wait up to ``timeout_ms`` (-1: forever) and return ``(events, token)`` pairs.

        An interrupted wait (``EINTR``) returns an empty list.
        """
        ...

    def close(self) -> None:
        """Release the poller's fd."""
