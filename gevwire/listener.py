"""``Listener``: accepts connections on a listening socket registered with a loop."""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from gevwire._sys import EAGAIN, EV_READ, Acceptor
from gevwire._sys import close as sys_close
from gevwire.loop import EventLoop
from gevwire.timers import TimerHandle

__all__ = ["Listener"]

log = logging.getLogger("gevwire")

_RETRY = frozenset({errno.EINTR, errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Listener:
    """Accepts from ``sock`` on ``loop`` and hands each new fd to ``on_accept``.

    Up to ``batch`` connections are accepted per readiness event, so a burst costs one
    wake-up, not one per connection.  When the process is out of fds (``EMFILE`` /
    ``ENFILE``) accepting is paused for ``backoff`` seconds instead of spinning on a
    listening socket that stays readable.
    """

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        on_accept: Callable[[int, Any], None],
        *,
        batch: int = 64,
        backoff: float = 0.1,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self._fd = sock.fileno()
        self._acceptor = Acceptor(self._fd)
        self._on_accept = on_accept
        self._batch = batch
        self._backoff = backoff
        self._token = -1
        self._paused_timer: TimerHandle | None = None
        self._last_warning = 0.0
        self.backoffs = 0  # times accepting paused for lack of fds

    def start(self) -> None:
        """Register with the loop (loop thread only)."""
        self._token = self.loop.register(self._fd, self._on_readable, EV_READ)

    def _on_readable(self, events: int) -> None:
        accept = self._acceptor.accept
        on_accept = self._on_accept
        for _ in range(self._batch):
            fd, addr = accept()
            if fd >= 0:
                try:
                    on_accept(fd, addr)
                except Exception:
                    log.exception("accepting fd %d failed", fd)
                    sys_close(fd)
                continue
            err = -fd
            if err == EAGAIN or err == errno.EWOULDBLOCK:
                return
            if err in _RETRY:
                continue
            if err in _OUT_OF_FDS:
                self._pause()
                return
            log.error("accept failed: %s", errno.errorcode.get(err, err))
            return

    def _pause(self) -> None:
        self.backoffs += 1
        now = time.monotonic()
        if now - self._last_warning > 5.0:
            self._last_warning = now
            log.warning("out of file descriptors: accepting paused for %.2fs", self._backoff)
        self.loop.modify(self._fd, self._token, 0)
        self._paused_timer = self.loop.run_after(self._backoff, self._resume)

    def _resume(self) -> None:
        self._paused_timer = None
        if self._token >= 0:
            self.loop.modify(self._fd, self._token, EV_READ)

    def close(self) -> None:
        """Stop accepting and close the socket (loop thread only)."""
        if self._paused_timer is not None:
            self._paused_timer.cancel()
        if self._token >= 0:
            self.loop.unregister(self._fd, self._token)
            self._token = -1
        self.sock.close()
