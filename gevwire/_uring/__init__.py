"""The io_uring backend: a completion-driven loop, its connections' I/O and its listener.

``gevwire._sys._uring`` holds the ring itself (mmap'd queues, SQE packing, provided
buffers); this package is the backend built on it.  Servers pick it with
``backend="io_uring"`` (or ``"auto"``, which falls back to epoll where the kernel
refuses io_uring).
"""

from gevwire._uring.connection import UringIO
from gevwire._uring.listener import UringListener
from gevwire._uring.loop import UringLoop, uring_available

__all__ = ["UringIO", "UringListener", "UringLoop", "uring_available"]
