"""``UringListener``: accepts with one multishot ACCEPT on a :class:`UringLoop`.

Each completion carries a new non-blocking, close-on-exec fd; the peer address is read
with ``getpeername`` (once per connection, off the per-message path).  Errors end the
multishot request: ``EMFILE`` / ``ENFILE`` pause accepting for ``backoff`` seconds (the
pending connection stays in the backlog) instead of spinning, anything else re-arms.

The kernel reads ``RLIMIT_NOFILE`` when an ACCEPT is prepared, not per connection, so a
multishot ACCEPT would go on with a limit the process has since lowered or raised.  After
each accepted connection the soft limit is compared with the one at arming (one
``getrlimit``, per connection), and a changed limit re-arms the request: at most one
connection is accepted under the old limit.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from gevwire._sys import close as sys_close
from gevwire._sys._uring import CQE_F_MORE
from gevwire._uring.loop import UringLoop
from gevwire.timers import TimerHandle

__all__ = ["UringListener"]

log = logging.getLogger("gevwire")

_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


def _peer_address(fd: int) -> Any:
    sock = socket.socket(fileno=fd)
    try:
        return sock.getpeername()
    except OSError:
        return None
    finally:
        sock.detach()


class UringListener:
    """Accepts from ``sock`` on ``loop`` and hands each new fd to ``on_accept``
    (the same interface as :class:`~gevwire.listener.Listener`)."""

    def __init__(
        self,
        loop: UringLoop,
        sock: socket.socket,
        on_accept: Callable[[int, Any], None],
        *,
        batch: int = 64,
        backoff: float = 0.1,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self._fd = sock.fileno()
        self._on_accept = on_accept
        self._backoff = backoff
        self._ud = -1
        self._armed = False
        self._closed = False
        self._paused_timer: TimerHandle | None = None
        self._last_warning = 0.0
        self._nofile = -1  # RLIMIT_NOFILE soft limit when the ACCEPT was armed
        self.backoffs = 0  # times accepting paused for lack of fds

    def start(self) -> None:
        """Arm the multishot ACCEPT (loop thread only)."""
        self._ud = self.loop.add_target(self)
        self._arm()

    def _arm(self) -> None:
        if not self._armed and not self._closed:
            self._nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self.loop.ring.accept_multishot(self._fd, self._ud, _ACCEPT_FLAGS)
            self._armed = True

    def _on_output(self, res: int, flags: int) -> None:
        """(Nothing is sent with this listener's user_data.)"""

    def _on_input(self, res: int, flags: int) -> None:
        """Completion of the multishot ACCEPT."""
        if not flags & CQE_F_MORE:
            self._armed = False
        if res >= 0:
            if self._closed:
                sys_close(res)
            else:
                try:
                    self._on_accept(res, _peer_address(res))
                except Exception:
                    log.exception("accepting fd %d failed", res)
                    sys_close(res)
                if self._armed and resource.getrlimit(resource.RLIMIT_NOFILE)[0] != self._nofile:
                    self.loop.ring.cancel(self._ud, 0)  # re-armed with the new limit below
        elif -res in _OUT_OF_FDS and not self._closed:
            self._pause()
            return
        elif res != -errno.ECANCELED and -res not in (errno.EINTR, errno.ECONNABORTED,
                                                       errno.EPROTO, errno.EPERM):
            log.error("accept failed: %s", errno.errorcode.get(-res, res))
        if self._closed:
            if not self._armed:
                self.loop.forget_target(self._ud)
        elif self._paused_timer is None:
            self._arm()

    def _pause(self) -> None:
        self.backoffs += 1
        now = time.monotonic()
        if now - self._last_warning > 5.0:
            self._last_warning = now
            log.warning("out of file descriptors: accepting paused for %.2fs", self._backoff)
        if self._armed:
            self.loop.ring.cancel(self._ud, 0)
        if self._paused_timer is None:
            self._paused_timer = self.loop.run_after(self._backoff, self._resume)

    def _resume(self) -> None:
        self._paused_timer = None
        self._arm()

    def close(self) -> None:
        """Stop accepting and close the socket (loop thread only)."""
        self._closed = True
        if self._paused_timer is not None:
            self._paused_timer.cancel()
            self._paused_timer = None
        if self._armed:
            self.loop.ring.cancel(self._ud, 0)
        elif self._ud >= 0:
            self.loop.forget_target(self._ud)
        self.sock.close()
