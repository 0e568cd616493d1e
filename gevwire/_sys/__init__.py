"""The syscall layer: the only part of gevwire that imports ``ctypes``.

It knows nothing of connections: fds, buffers, pointers and errno values only.
"""

from __future__ import annotations

import os
import sys

from gevwire._sys._calls import (
    EAGAIN,
    EINTR,
    IOVEC,
    Acceptor,
    Iovecs,
    close,
    parse_sockaddr,
    peer_closed,
    raw_read,
    raw_readv,
    raw_writev,
    read_bytes,
    set_nodelay,
    shutdown,
    write_bytes,
    writev,
)
from gevwire._sys._libc import (
    BYTES_OFFSET,
    Pointer,
    address_of,
    alloc,
    bytes_address,
    check,
    get_errno,
    os_error,
    pointer,
)
from gevwire._sys._poller import EV_ERROR, EV_HUP, EV_RDHUP, EV_READ, EV_WRITE, Poller
from gevwire._sys._waker import Waker

__all__ = [
    "BYTES_OFFSET",
    "EAGAIN",
    "EINTR",
    "EV_ERROR",
    "EV_HUP",
    "EV_RDHUP",
    "EV_READ",
    "EV_WRITE",
    "IOVEC",
    "Acceptor",
    "Iovecs",
    "Pointer",
    "Poller",
    "UnsupportedPlatformError",
    "Waker",
    "address_of",
    "alloc",
    "bytes_address",
    "check",
    "close",
    "get_errno",
    "new_poller",
    "os_error",
    "parse_sockaddr",
    "peer_closed",
    "pointer",
    "raw_read",
    "raw_readv",
    "raw_writev",
    "read_bytes",
    "set_nodelay",
    "shutdown",
    "write_bytes",
    "writev",
]


class UnsupportedPlatformError(OSError):
    """Neither epoll nor kqueue is available here."""


def new_poller(max_events: int = 512) -> Poller:
    """The platform's poller: epoll on Linux, kqueue on macOS and the BSDs."""
    if sys.platform.startswith("linux"):
        from gevwire._sys._epoll import EpollPoller

        return EpollPoller(max_events)
    if sys.platform == "darwin" or "bsd" in sys.platform or "dragonfly" in sys.platform:
        from gevwire._sys._kqueue import KqueuePoller

        return KqueuePoller(max_events)
    raise UnsupportedPlatformError(
        f"gevwire needs epoll (Linux) or kqueue (macOS, BSD); {sys.platform} {os.name} has neither"
    )
