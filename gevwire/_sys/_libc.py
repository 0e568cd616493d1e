"""libc through ctypes: library loading, foreign-function prototypes, errno.

This package is the only code in gevwire that imports ``ctypes``.

Calling convention, chosen by measurement (see ``benchmarks/``):

* Calls that never block (``read``, ``write``, ``readv``, ``writev``, ``accept4``,
  ``epoll_ctl`` ...) go through a ``PyDLL`` handle, which keeps the GIL: releasing and
  re-taking it costs more than the non-blocking syscall itself.  Only the calls that may
  sleep (``epoll_wait``, ``kevent``) go through a ``CDLL`` handle that drops the GIL.
* Hot-path prototypes declare ``restype`` but not ``argtypes``: per-argument
  ``from_param`` conversion costs about 0.3 µs a call, half of a whole foreign call.
  Callers therefore pass only small Python ints, ``bytes``, or the pointer objects made
  once per buffer by :func:`pointer` — never a bare int address, which ctypes would
  truncate to a C ``int``.
* Both handles use ``use_errno=True``: ctypes saves ``errno`` right after each call, so a
  ``-1`` result is followed by :func:`get_errno`, which Python's own work in between cannot
  clobber.  ``EAGAIN`` and ``EINTR`` on hot paths are plain return values, never exceptions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
from typing import Any

__all__ = [
    "BYTES_OFFSET",
    "PLATFORM",
    "Pointer",
    "address_of",
    "alloc",
    "bytes_address",
    "check",
    "foreign",
    "foreign_blocking",
    "get_errno",
    "os_error",
    "pointer",
]

PLATFORM = sys.platform


def _load() -> tuple[ctypes.CDLL, ctypes.PyDLL]:
    name: str | None = None
    if not sys.platform.startswith("linux"):
        name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True), ctypes.PyDLL(name, use_errno=True)


_blocking_lib, _lib = _load()

#: ``ctypes.get_errno``: errno as saved by ctypes right after the last foreign call.
get_errno = ctypes.get_errno

Pointer = ctypes.c_void_p


def foreign(name: str, restype: Any = ctypes.c_int) -> Any:
    """Return libc's ``name`` as a GIL-holding foreign function, or None if libc lacks it."""
    try:
        fn = getattr(_lib, name)
    except AttributeError:
        return None
    fn.restype = restype
    return fn


def foreign_blocking(name: str, restype: Any = ctypes.c_int) -> Any:
    """Return libc's ``name`` as a foreign function that releases the GIL (may sleep)."""
    try:
        fn = getattr(_blocking_lib, name)
    except AttributeError:
        return None
    fn.restype = restype
    return fn


def os_error(err: int, what: str = "") -> OSError:
    """Build the ``OSError`` subclass that matches ``err`` (e.g. ``ConnectionResetError``)."""
    message = os.strerror(err)
    if what:
        message = f"{what}: {message}"
    return OSError(err, message)


def check(result: int, what: str = "") -> int:
    """Return ``result``, or raise the ``OSError`` for errno when it is -1."""
    if result == -1:
        raise os_error(get_errno(), what)
    return result


def _bytes_offset() -> int:
    """Offset of a ``bytes`` object's data from its ``id()`` (CPython's ``ob_sval``),
    found once by asking ctypes for the data of two probes; -1 if they disagree."""
    offsets = {(ctypes.cast(ctypes.c_char_p(probe), ctypes.c_void_p).value or 0) - id(probe)
               for probe in (b"gevwire-probe", b"another one")}
    return offsets.pop() if len(offsets) == 1 else -1


#: Offset of a ``bytes`` object's data from ``id()``, -1 if this interpreter does not
#: lay bytes out at a fixed offset (then :func:`bytes_address` must not be used: io_uring
#: is refused and a ring buffer copies rather than hold a reply by reference).
BYTES_OFFSET = _bytes_offset()


def bytes_address(data: bytes) -> int:
    """Address of the bytes of ``data`` (CPython): valid while ``data`` is referenced,
    for the kernel to read from (never write through it).

    ``bytes`` are immutable and never move.  No ctypes object is made: this is
    ``id(data)`` plus :data:`BYTES_OFFSET`, checked once at import.
    """
    return id(data) + BYTES_OFFSET


def address_of(buffer: bytearray | mmap.mmap) -> int:
    """Return the address of ``buffer``'s storage (a ``bytearray`` or a writable map).

    Valid until the bytearray is resized or freed; gevwire never resizes a buffer whose
    address it has taken, it allocates a new one instead.
    """
    if not buffer:
        raise ValueError("cannot take the address of an empty buffer")
    view = ctypes.c_char.from_buffer(buffer)
    try:
        return ctypes.addressof(view)
    finally:
        del view  # drop the export at once so the bytearray stays an ordinary one


def pointer(address: int) -> Any:
    """Return a pointer object for ``address`` to pass to hot-path foreign calls."""
    return ctypes.c_void_p(address)


def alloc(size: int) -> tuple[bytearray, int, Any]:
    """Allocate a zeroed buffer; return it with its address and a pointer object."""
    buffer = bytearray(size)
    address = address_of(buffer)
    return buffer, address, pointer(address)
