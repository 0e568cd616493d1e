"""Floor reference: the smallest echo server we can write in Python on raw epoll.

A level-triggered epoll loop entirely through ctypes calls into libc (``epoll_create1``,
``epoll_ctl``, ``epoll_wait``, ``accept4``, ``read``, ``write``, ``close``), with
prototypes declared once, one preallocated event array, one preallocated 64 KiB read
buffer that is written straight back, and events decoded with ``struct.iter_unpack``
from the event array's memory: no ctypes object and no ``bytes`` object is created per
event. Stdlib ``socket`` is used only to bind and listen.

It is a floor for *small* messages only: a short or failed (``EAGAIN``) ``write`` drops
the rest of the reply instead of buffering it. With the benchmark's ping-pong load the
kernel send buffer never fills, so nothing is dropped; if it ever were, the load
generator would report the missing bytes as an error. Dropped bytes are counted and
printed on stderr at exit.

Usage: ``python ctypes_floor.py --port N``. Listens on 127.0.0.1 only and exits with
status 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import platform
import signal
import socket
import struct
import sys
from types import FrameType

EPOLLIN = 0x001
EPOLL_CTL_ADD = 1
EPOLL_CLOEXEC = 0o2000000
SOCK_NONBLOCK = 0o4000
SOCK_CLOEXEC = 0o2000000
MAX_EVENTS = 256
READ_SIZE = 64 * 1024

# struct epoll_event { uint32_t events; epoll_data_t data; } is packed on x86_64
# (12 bytes), naturally aligned elsewhere (16 bytes). data holds the fd.
if platform.machine() in ("x86_64", "amd64", "AMD64", "i386", "i686"):
    EVENT = struct.Struct("=IQ")
else:
    EVENT = struct.Struct("=I4xQ")

_libc = ctypes.CDLL(None, use_errno=True)
_c_int = ctypes.c_int
_c_void_p = ctypes.c_void_p

epoll_create1 = _libc.epoll_create1
epoll_create1.argtypes = [_c_int]
epoll_create1.restype = _c_int
epoll_ctl = _libc.epoll_ctl
epoll_ctl.argtypes = [_c_int, _c_int, _c_int, _c_void_p]
epoll_ctl.restype = _c_int
epoll_wait = _libc.epoll_wait
epoll_wait.argtypes = [_c_int, _c_void_p, _c_int, _c_int]
epoll_wait.restype = _c_int
accept4 = _libc.accept4
accept4.argtypes = [_c_int, _c_void_p, _c_void_p, _c_int]
accept4.restype = _c_int
c_read = _libc.read
c_read.argtypes = [_c_int, _c_void_p, ctypes.c_size_t]
c_read.restype = ctypes.c_ssize_t
c_write = _libc.write
c_write.argtypes = [_c_int, _c_void_p, ctypes.c_size_t]
c_write.restype = ctypes.c_ssize_t
c_close = _libc.close
c_close.argtypes = [_c_int]
c_close.restype = _c_int
get_errno = ctypes.get_errno


class Stop:
    """Set by the SIGTERM/SIGINT handler; checked once per loop turn."""

    requested = False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    Stop.requested = True


def serve(port: int) -> int:
    """Run the echo loop until a stop signal; return the number of dropped bytes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Linux copies TCP_NODELAY from the listener to every accepted socket.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    lfd = listener.fileno()

    epfd = epoll_create1(EPOLL_CLOEXEC)
    if epfd < 0:
        raise OSError(get_errno(), "epoll_create1")
    events = ctypes.create_string_buffer(MAX_EVENTS * EVENT.size)
    events_addr = ctypes.addressof(events)
    events_view = memoryview(events).cast("B")
    ctl = ctypes.create_string_buffer(EVENT.size)
    ctl_addr = ctypes.addressof(ctl)
    rbuf = ctypes.create_string_buffer(READ_SIZE)
    rbuf_addr = ctypes.addressof(rbuf)

    EVENT.pack_into(ctl, 0, EPOLLIN, lfd)
    if epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, ctl_addr) < 0:
        raise OSError(get_errno(), "epoll_ctl")

    flags = SOCK_NONBLOCK | SOCK_CLOEXEC
    eagain = errno.EAGAIN
    esize = EVENT.size
    iter_events = EVENT.iter_unpack
    pack_ctl = EVENT.pack_into
    dropped = 0
    while not Stop.requested:
        n = epoll_wait(epfd, events_addr, MAX_EVENTS, 200)
        if n <= 0:
            continue  # timeout or EINTR: re-check the stop flag
        for _ev, fd in iter_events(events_view[: n * esize]):
            if fd == lfd:
                while True:
                    cfd = accept4(lfd, None, None, flags)
                    if cfd < 0:
                        break  # EAGAIN (or a transient accept error)
                    pack_ctl(ctl, 0, EPOLLIN, cfd)
                    epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, ctl_addr)
                continue
            r = c_read(fd, rbuf_addr, READ_SIZE)
            if r > 0:
                w = c_write(fd, rbuf_addr, r)
                if w != r:
                    dropped += r if w < 0 else r - w
            elif r == 0 or get_errno() != eagain:
                c_close(fd)  # closing the last reference also removes it from epoll
    c_close(epfd)
    listener.close()
    return dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    dropped = serve(args.port)
    if dropped:
        print(f"ctypes_floor: dropped {dropped} bytes on short writes", file=sys.stderr)


if __name__ == "__main__":
    main()
