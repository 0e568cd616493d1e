"""Linux ``io_uring`` through ctypes: setup, enter, register, the mapped rings, probing.

One ``io_uring_enter`` submits every operation queued in a loop turn and waits for
completions, so a message costs reading a completion and writing a submission in shared
memory (``struct.pack_into`` / ``unpack_from`` on the ``mmap``), not a foreign call.

Layout of the shared memory (``io_uring_setup(2)``): the SQ ring (head, tail, mask,
an index array), the CQ ring (head, tail, mask, the CQE array) and the SQE array.  With
``IORING_FEAT_SINGLE_MMAP`` the SQ and CQ rings share one mapping.  The index array is
filled with the identity once, so SQE slot ``tail & mask`` is submitted as itself.

Memory ordering.  The kernel publishes CQEs with ``smp_store_release`` on the CQ tail and
reads the SQ tail with ``smp_load_acquire``; user space is meant to pair those with an
acquire load of the CQ tail and a release store of the SQ tail.  CPython offers no
fences, and none is needed here:

* SQ side: without ``IORING_SETUP_SQPOLL`` the kernel reads the SQ ring only inside
  ``io_uring_enter`` called by this thread.  Every SQE store and the tail store happen
  before the syscall, and a syscall is a full barrier for the calling CPU; the SQ tail is
  written once per batch, just before entering.
* CQ side: the ring is set up with ``IORING_SETUP_DEFER_TASKRUN`` (with
  ``SINGLE_ISSUER``) when the kernel has it, so completions are posted only while this
  thread is inside ``io_uring_enter(GETEVENTS)``: when the syscall returns, every CQE and
  the tail it published are ordinary memory written before our next load.  Without
  DEFER_TASKRUN (older kernels) completions may be posted from another CPU while we read;
  on x86-64 (TSO: loads are not reordered with other loads, stores not with earlier
  loads) reading the tail, then the CQEs, then storing the head is still correct; on
  weakly ordered CPUs it would need the acquire / release pair CPython cannot express, so
  :func:`availability` refuses such a ring there.
* Our head store (CQ) after unpacking the CQEs lets the kernel reuse those slots; the
  unpack copies the values into Python objects first, so nothing reads a slot after.

Errors are values: a CQE's ``res`` is ``-errno``; ``enter`` returns ``-errno``.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct
import sys
from collections.abc import Sequence
from typing import Any

from gevwire._sys._libc import (
    BYTES_OFFSET,
    address_of,
    bytes_address,
    foreign,
    foreign_blocking,
    get_errno,
    os_error,
)

__all__ = [
    "BYTES_OFFSET",
    "CQE",
    "CQE_F_BUFFER",
    "CQE_F_MORE",
    "OP_ACCEPT",
    "OP_ASYNC_CANCEL",
    "OP_CLOSE",
    "OP_NOP",
    "OP_POLL_ADD",
    "OP_RECV",
    "OP_SEND",
    "OP_SHUTDOWN",
    "OP_TIMEOUT",
    "OP_WRITEV",
    "REQUIRED_OPS",
    "SQE",
    "SQE_HEAD",
    "BufferRing",
    "Ring",
    "UringUnavailable",
    "availability",
    "bytes_address",
]

# -- ABI constants (include/uapi/linux/io_uring.h) -------------------------------------

_NR_SETUP, _NR_ENTER, _NR_REGISTER = 425, 426, 427  # the same on every 64-bit arch

SETUP_CQSIZE = 1 << 3
SETUP_CLAMP = 1 << 4
SETUP_R_DISABLED = 1 << 6
SETUP_SUBMIT_ALL = 1 << 7
SETUP_COOP_TASKRUN = 1 << 8
SETUP_SINGLE_ISSUER = 1 << 12
SETUP_DEFER_TASKRUN = 1 << 13

FEAT_SINGLE_MMAP = 1 << 0
FEAT_NODROP = 1 << 1
FEAT_EXT_ARG = 1 << 8

ENTER_GETEVENTS = 1 << 0
ENTER_EXT_ARG = 1 << 3

_OFF_SQ_RING, _OFF_CQ_RING, _OFF_SQES = 0, 0x8000000, 0x10000000

OP_NOP = 0
OP_WRITEV = 2
OP_POLL_ADD = 6
OP_POLL_REMOVE = 7
OP_TIMEOUT = 11
OP_ACCEPT = 13
OP_ASYNC_CANCEL = 14
OP_CLOSE = 19
OP_READ = 22
OP_SEND = 26
OP_RECV = 27
OP_SHUTDOWN = 34

#: Opcodes the loop backend needs; a kernel lacking one makes io_uring unavailable.
REQUIRED_OPS = {
    OP_NOP: "NOP", OP_POLL_ADD: "POLL_ADD", OP_ACCEPT: "ACCEPT",
    OP_ASYNC_CANCEL: "ASYNC_CANCEL", OP_SEND: "SEND", OP_RECV: "RECV",
    OP_SHUTDOWN: "SHUTDOWN", OP_CLOSE: "CLOSE", OP_TIMEOUT: "TIMEOUT", OP_WRITEV: "WRITEV",
}

IOSQE_IO_LINK = 1 << 2
IOSQE_BUFFER_SELECT = 1 << 5
IOSQE_CQE_SKIP_SUCCESS = 1 << 6

RECV_MULTISHOT = 1 << 1  # sqe->ioprio for RECV
ACCEPT_MULTISHOT = 1 << 0  # sqe->ioprio for ACCEPT
POLL_ADD_MULTI = 1 << 0  # sqe->len for POLL_ADD
MSG_NOSIGNAL = 0x4000

CQE_F_BUFFER = 1 << 0
CQE_F_MORE = 1 << 1
CQE_BUFFER_SHIFT = 16

_REGISTER_PROBE = 8
_REGISTER_ENABLE_RINGS = 12
_REGISTER_PBUF_RING = 22
_UNREGISTER_PBUF_RING = 23
_PROBE_OP_SUPPORTED = 1

#: ``struct io_uring_sqe`` (64 bytes): opcode, flags, ioprio, fd, off/addr2,
#: addr, len, op flags (msg_flags / accept_flags / poll32_events / cancel_flags ...),
#: user_data, buf_index|buf_group, personality, file_index, addr3, pad.
SQE = struct.Struct("=BBHiQQIIQHHiQQ")
#: ``struct io_uring_cqe`` (16 bytes): user_data, res, flags.
CQE = struct.Struct("=QiI")
#: ``struct io_uring_params`` (120 bytes), split as we read it.
_PARAMS = struct.Struct("=10I" + "8IQ" + "8IQ")
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
#: ``struct io_uring_buf`` (16 bytes): addr, len, bid, resv (the ring tail lives in the
#: first entry's resv field).
_BUF = struct.Struct("=QIHH")
_BUF_HEAD = struct.Struct("=QIH")  # an entry without its resv (slot 0: the tail)
#: The first 40 bytes of an SQE (opcode .. user_data).  Every SQE this module writes has
#: zero personality / file_index / addr3, so a SEND may fill just this head and leave the
#: slot's tail as the previous SQE wrote it (a stale buf_group is ignored without
#: IOSQE_BUFFER_SELECT).
SQE_HEAD = struct.Struct("=BBHiQQIIQ")
#: ``struct io_uring_buf_reg`` (40 bytes): ring_addr, ring_entries, bgid, flags, resv[3].
_BUF_REG = struct.Struct("=QIHH3Q")
#: ``struct io_uring_getevents_arg``: sigmask, sigmask_sz, min_wait_usec, ts.
_GETEVENTS_ARG = struct.Struct("=QIIQ")
#: ``struct __kernel_timespec``.
_TIMESPEC = struct.Struct("=qq")

assert SQE.size == 64 and CQE.size == 16 and _PARAMS.size == 120 and _BUF_REG.size == 40

# -- foreign functions -----------------------------------------------------------------

# ``long syscall(long number, ...)`` is variadic.  Declaring ``argtypes`` (every argument
# a ``long``) would cost ~1.2 µs of conversions per call, twice the call itself, so none
# are declared: small non-negative Python ints (fds, counts, flags, opcodes) go as C
# ``int``, which the x86-64 and AArch64 calling conventions widen to the full register
# that ``syscall`` reads (libffi sign-extends, the values are never negative); anything
# that may not fit (addresses, sizes) goes as a ``c_void_p`` object, made once per ring
# for the hot calls.  Two handles: one keeps the GIL (setup, register, submit without
# waiting), one releases it (an enter that may sleep).
_syscall: Any = foreign("syscall", ctypes.c_long)
_syscall_blocking: Any = foreign_blocking("syscall", ctypes.c_long)
_INT_MAX = (1 << 31) - 1
# The 7th argument of syscall() goes on the stack, where libffi stores a C int in 4 bytes
# of an 8-byte slot: a size there must be a full-width object.
_ARGSZ = ctypes.c_size_t(_GETEVENTS_ARG.size)
_SIZE0 = ctypes.c_size_t(0)


def _sys(fn: Any, nr: int, *args: int) -> int:
    """Raw syscall (not for hot paths): the result, or ``-errno``."""
    result: int = fn(nr, *[a if 0 <= a <= _INT_MAX and i < 5 else ctypes.c_void_p(a)
                           for i, a in enumerate(args)])
    if result < 0:
        return -get_errno()
    return result


# -- availability ----------------------------------------------------------------------


class UringUnavailable(OSError):
    """io_uring cannot be used here; ``str()`` says why (callers fall back to epoll)."""


_availability: tuple[bool, str] | None = None

_MIN_KERNEL = (6, 0)  # multishot recv with provided-buffer rings


def _kernel_version() -> tuple[int, int]:
    release = os.uname().release
    parts: list[int] = []
    for piece in release.split(".")[:2]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits or 0))
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def _check() -> str:
    if not sys.platform.startswith("linux"):
        return f"io_uring is Linux only (this is {sys.platform})"
    if _syscall is None:
        return "libc has no syscall()"
    if BYTES_OFFSET < 0:
        return "this Python does not store bytes at a fixed offset"
    if os.environ.get("GEVWIRE_NO_URING"):
        return "disabled by GEVWIRE_NO_URING"
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            disabled = f.read().strip()
    except OSError:
        disabled = "0"
    if disabled == "2":
        return "disabled by the administrator (/proc/sys/kernel/io_uring_disabled = 2)"
    version = _kernel_version()
    if version < _MIN_KERNEL:
        return (f"kernel {version[0]}.{version[1]} is older than "
                f"{_MIN_KERNEL[0]}.{_MIN_KERNEL[1]} (multishot recv)")
    try:
        ring = Ring(8)
    except UringUnavailable as exc:
        return str(exc)
    try:
        if not ring.features & FEAT_EXT_ARG or not ring.features & FEAT_NODROP:
            return "kernel lacks IORING_FEAT_EXT_ARG / NODROP"
        if not ring.deferred and platform.machine() not in ("x86_64", "AMD64"):
            return "without DEFER_TASKRUN the CQ ring needs fences on this CPU"
        supported = ring.probe()
        missing = [name for op, name in REQUIRED_OPS.items() if op not in supported]
        if missing:
            return "kernel lacks io_uring opcodes: " + ", ".join(missing)
        try:
            BufferRing(ring, group=0, count=2, size=64).close()
        except OSError as exc:
            return f"provided-buffer rings refused: {exc}"
    finally:
        ring.close()
    return ""


def availability(refresh: bool = False) -> tuple[bool, str]:
    """``(True, "")`` when the io_uring backend can run here, else ``(False, reason)``.

    Checks the platform, ``/proc/sys/kernel/io_uring_disabled``, the kernel version, that
    ``io_uring_setup`` is allowed (``EPERM`` from seccomp or the sysctl, ``ENOSYS``), the
    features and opcodes the backend uses, and provided-buffer rings.  Cached.
    """
    global _availability
    if _availability is None or refresh:
        reason = _check()
        _availability = (not reason, reason)
    return _availability


# -- the ring --------------------------------------------------------------------------


class Ring:
    """One io_uring instance: queue submissions with ``prep``, run them with ``enter``,
    read completions with :meth:`completions`.  Loop thread only (single issuer)."""

    __slots__ = (
        "_arg",
        "_arg_ptr",
        "_cq_entries",
        "_cq_head_off",
        "_cq_map",
        "_cq_mask",
        "_cq_tail_off",
        "_cqes_off",
        "_cqes_view",
        "_cqv",
        "_sq_map",
        "_sq_tail_off",
        "_sqes",
        "_sqv",
        "_ts",
        "_ts_addr",
        "deferred",
        "disabled",
        "fd",
        "features",
        "pending",
        "sq_entries",
        "sq_mask",
        "sq_tail",
        "sqes",
    )

    def __init__(self, entries: int = 256, *, cq_entries: int = 0,
                 single_issuer: bool = True) -> None:
        self.fd = -1
        last = 0
        # Preferred flags first; older kernels reject unknown flags with EINVAL.
        base = SETUP_SUBMIT_ALL | SETUP_CLAMP | (SETUP_CQSIZE if cq_entries else 0)
        attempts = [base | SETUP_COOP_TASKRUN, base]
        if single_issuer:
            attempts.insert(0, base | SETUP_COOP_TASKRUN | SETUP_SINGLE_ISSUER
                            | SETUP_DEFER_TASKRUN | SETUP_R_DISABLED)
        params = bytearray(_PARAMS.size)
        flags = 0
        for flags in attempts:
            params[:] = bytes(_PARAMS.size)
            _U32.pack_into(params, 4, cq_entries)
            _U32.pack_into(params, 8, flags)
            last = _sys(_syscall, _NR_SETUP, entries, address_of(params))
            if last >= 0:
                break
            if last != -errno.EINVAL:
                break
        if last < 0:
            err = -last
            what = {errno.EPERM: "io_uring_setup refused (EPERM: seccomp, a container "
                                 "policy or io_uring_disabled)",
                    errno.ENOSYS: "io_uring_setup missing (ENOSYS: kernel without "
                                  "CONFIG_IO_URING)",
                    errno.ENOMEM: "io_uring_setup: out of locked memory (ENOMEM)"}
            raise UringUnavailable(err, what.get(err, f"io_uring_setup: {os.strerror(err)}"))
        self.fd = last
        values = _PARAMS.unpack_from(params)
        sq_entries, cq_entries_, _, _, _, features = values[:6]
        (sq_head, sq_tail, sq_mask_off, _, _, _, sq_array, _, _) = values[10:19]
        (cq_head, cq_tail, cq_mask_off, _, _, cqes, _, _, _) = values[19:28]
        self.features = features
        self.deferred = bool(flags & SETUP_DEFER_TASKRUN)
        self.disabled = bool(flags & SETUP_R_DISABLED)
        self.sq_entries = sq_entries
        self._cq_entries = cq_entries_
        try:
            sq_size = sq_array + sq_entries * 4
            cq_size = cqes + cq_entries_ * CQE.size
            if features & FEAT_SINGLE_MMAP:
                size = max(sq_size, cq_size)
                self._sq_map = self._cq_map = self._map(size, _OFF_SQ_RING)
            else:
                self._sq_map = self._map(sq_size, _OFF_SQ_RING)
                self._cq_map = self._map(cq_size, _OFF_CQ_RING)
            self._sqes = self._map(sq_entries * SQE.size, _OFF_SQES)
        except OSError:
            os.close(self.fd)
            self.fd = -1
            raise
        sq = self._sq_map
        self.sq_mask = _U32.unpack_from(sq, sq_mask_off)[0]
        self._cq_mask = _U32.unpack_from(self._cq_map, cq_mask_off)[0]
        self._sq_tail_off = sq_tail
        self.sq_tail = _U32.unpack_from(sq, sq_tail)[0]
        assert _U32.unpack_from(sq, sq_head)[0] == self.sq_tail
        self._cq_head_off = cq_head
        self._cq_tail_off = cq_tail
        self._cqes_off = cqes
        self._cqes_view = memoryview(self._cq_map)[cqes: cqes + cq_entries_ * CQE.size]
        # struct on a memoryview is ~40 % cheaper than on the mmap object itself.
        self._sqv = memoryview(self._sq_map)
        self._cqv = memoryview(self._cq_map)
        #: The SQE array, for callers that fill an SQE inline (see ``SQE_HEAD``).
        self.sqes = memoryview(self._sqes)
        # SQ index array: identity, once; slot i of the SQE array is always entry i.
        struct.pack_into(f"={sq_entries}I", sq, sq_array, *range(sq_entries))
        self.pending = 0  # SQEs queued since the last enter
        self._arg = bytearray(_GETEVENTS_ARG.size)
        self._arg_ptr = ctypes.c_void_p(address_of(self._arg))
        self._ts = bytearray(_TIMESPEC.size)
        self._ts_addr = address_of(self._ts)
        _GETEVENTS_ARG.pack_into(self._arg, 0, 0, 0, 0, self._ts_addr)

    def _map(self, size: int, offset: int) -> mmap.mmap:
        return mmap.mmap(self.fd, size, mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                         mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)

    # -- setup helpers -------------------------------------------------------------------

    def register(self, opcode: int, arg: int, nr_args: int) -> int:
        """``io_uring_register(2)``: the result, or ``-errno``."""
        return _sys(_syscall, _NR_REGISTER, self.fd, opcode, arg, nr_args)

    def enable(self) -> None:
        """Enable a ring made with ``R_DISABLED``: the calling thread becomes its only
        submitter (``SINGLE_ISSUER``).  Call on the loop thread before the first enter."""
        if self.disabled:
            result = self.register(_REGISTER_ENABLE_RINGS, 0, 0)
            if result < 0:
                raise os_error(-result, "io_uring_register(ENABLE_RINGS)")
            self.disabled = False

    def probe(self) -> set[int]:
        """The opcodes this kernel supports (``IORING_REGISTER_PROBE``)."""
        count = 256
        buf = bytearray(16 + 8 * count)
        result = self.register(_REGISTER_PROBE, address_of(buf), count)
        if result < 0:
            raise os_error(-result, "io_uring_register(PROBE)")
        ops_len = buf[1]
        supported = set()
        for i in range(ops_len):
            op, _, flags, _ = struct.unpack_from("=BBHI", buf, 16 + 8 * i)
            if flags & _PROBE_OP_SUPPORTED:
                supported.add(op)
        return supported

    # -- submissions ---------------------------------------------------------------------

    def prep(self, opcode: int, fd: int, addr: int, length: int, user_data: int, *,
             off: int = 0, op_flags: int = 0, flags: int = 0, ioprio: int = 0,
             buf_group: int = 0) -> None:
        """Queue one SQE; it is submitted by the next :meth:`enter`."""
        if self.pending >= self.sq_entries:
            self.submit()
        tail = self.sq_tail
        SQE.pack_into(self.sqes, (tail & self.sq_mask) << 6, opcode, flags, ioprio, fd, off,
                      addr, length, op_flags, user_data, buf_group, 0, 0, 0, 0)
        self.sq_tail = (tail + 1) & 0xFFFFFFFF
        self.pending += 1

    def nop(self, user_data: int) -> None:
        """Queue a NOP (completes with res 0)."""
        self.prep(OP_NOP, -1, 0, 0, user_data)

    def accept_multishot(self, fd: int, user_data: int, flags: int) -> None:
        """Queue a multishot ACCEPT: one CQE per connection (res = new fd), F_MORE while armed."""
        self.prep(OP_ACCEPT, fd, 0, 0, user_data, op_flags=flags, ioprio=ACCEPT_MULTISHOT)

    def recv_multishot(self, fd: int, group: int, user_data: int) -> None:
        """Queue a multishot RECV into buffers of provided-buffer group ``group``."""
        self.prep(OP_RECV, fd, 0, 0, user_data, flags=IOSQE_BUFFER_SELECT,
                  ioprio=RECV_MULTISHOT, buf_group=group)

    def recv(self, fd: int, addr: int, length: int, user_data: int, msg_flags: int = 0) -> None:
        """Queue a one-shot RECV into ``[addr, addr + length)``."""
        self.prep(OP_RECV, fd, addr, length, user_data, op_flags=msg_flags)

    def send(self, fd: int, addr: int, length: int, user_data: int,
             msg_flags: int = MSG_NOSIGNAL) -> None:
        """Queue a SEND of ``[addr, addr + length)``; the memory must live until its CQE."""
        self.prep(OP_SEND, fd, addr, length, user_data, op_flags=msg_flags)

    def writev(self, fd: int, iov_addr: int, count: int, user_data: int) -> None:
        """Queue a WRITEV of ``count`` iovecs at ``iov_addr``."""
        self.prep(OP_WRITEV, fd, iov_addr, count, user_data, off=(1 << 64) - 1)

    def poll_add(self, fd: int, events: int, user_data: int, multishot: bool = False) -> None:
        """Queue a POLL_ADD for ``events`` (POLLIN ...); one-shot unless ``multishot``."""
        self.prep(OP_POLL_ADD, fd, 0, POLL_ADD_MULTI if multishot else 0, user_data,
                  op_flags=events)

    def cancel(self, target: int, user_data: int, *, all_matching: bool = False) -> None:
        """Queue an ASYNC_CANCEL of the request whose user_data is ``target``."""
        self.prep(OP_ASYNC_CANCEL, -1, target, 0, user_data, op_flags=1 if all_matching else 0)

    def close_fd(self, fd: int, user_data: int) -> None:
        """Queue a CLOSE of ``fd``."""
        self.prep(OP_CLOSE, fd, 0, 0, user_data)

    def shutdown(self, fd: int, how: int, user_data: int) -> None:
        """Queue a SHUTDOWN (``socket.SHUT_WR`` ...)."""
        self.prep(OP_SHUTDOWN, fd, 0, how, user_data)

    def timeout(self, seconds: float, user_data: int) -> None:
        """Queue a TIMEOUT that completes with ``-ETIME`` after ``seconds``.

        One timespec per ring: the kernel copies it at submission, so reusing it for
        the next TIMEOUT is safe once :meth:`enter` has run.
        """
        sec = int(seconds)
        _TIMESPEC.pack_into(self._ts, 0, sec, int((seconds - sec) * 1e9))
        self.prep(OP_TIMEOUT, -1, self._ts_addr, 1, user_data)
        self.submit()

    # -- enter ---------------------------------------------------------------------------

    def submit(self) -> int:
        """Submit what is queued without waiting; the count submitted, or ``-errno``."""
        pending = self.pending
        if not pending:
            return 0
        _U32.pack_into(self._sqv, self._sq_tail_off, self.sq_tail)
        self.pending = 0
        flags = ENTER_GETEVENTS if self.deferred else 0  # run deferred completions too
        result: int = _syscall(_NR_ENTER, self.fd, pending, 0, flags, None, _SIZE0)
        return result if result >= 0 else -get_errno()

    def enter(self, wait: int, timeout_ms: int = -1) -> int:
        """Submit everything queued and wait for ``wait`` completions (0: do not wait),
        at most ``timeout_ms`` (-1: no limit).  One syscall.  Returns the count submitted
        or ``-errno`` (``-EINTR`` / ``-ETIME`` are ordinary: the loop just goes on)."""
        pending = self.pending
        if pending:
            _U32.pack_into(self._sqv, self._sq_tail_off, self.sq_tail)
            self.pending = 0
        if not wait:
            result: int = _syscall(_NR_ENTER, self.fd, pending, 0, ENTER_GETEVENTS, None, _SIZE0)
        elif timeout_ms < 0:
            result = _syscall_blocking(_NR_ENTER, self.fd, pending, wait, ENTER_GETEVENTS,
                                       None, _SIZE0)
        else:
            _TIMESPEC.pack_into(self._ts, 0, timeout_ms // 1000,
                                (timeout_ms % 1000) * 1000000)
            result = _syscall_blocking(_NR_ENTER, self.fd, pending, wait,
                                       ENTER_GETEVENTS | ENTER_EXT_ARG, self._arg_ptr,
                                       _ARGSZ)
        return result if result >= 0 else -get_errno()

    def completions(self) -> Sequence[tuple[int, int, int]]:
        """Take every available CQE as ``(user_data, res, flags)`` and free their slots."""
        cq = self._cqv
        head = _U32.unpack_from(cq, self._cq_head_off)[0]
        tail = _U32.unpack_from(cq, self._cq_tail_off)[0]
        if head == tail:
            return ()
        mask = self._cq_mask
        start = head & mask
        count = (tail - head) & 0xFFFFFFFF
        view = self._cqes_view
        if start + count <= mask + 1:
            result = list(CQE.iter_unpack(view[start << 4: (start + count) << 4]))
        else:
            result = list(CQE.iter_unpack(view[start << 4:]))
            result += CQE.iter_unpack(view[: (start + count - mask - 1) << 4])
        _U32.pack_into(cq, self._cq_head_off, tail)
        return result

    def close(self) -> None:
        """Unmap the rings and close the fd (cancels every request still in flight)."""
        if self.fd < 0:
            return
        for view in (self._cqes_view, self._sqv, self._cqv, self.sqes):
            view.release()
        for m in {id(self._sq_map): self._sq_map, id(self._cq_map): self._cq_map,
                  id(self._sqes): self._sqes}.values():
            try:
                m.close()
            except BufferError:
                pass
        fd, self.fd = self.fd, -1
        os.close(fd)


class BufferRing:
    """A provided-buffer ring (``IORING_REGISTER_PBUF_RING``): ``count`` buffers of
    ``size`` bytes that multishot RECVs of group ``group`` fill.

    A completion names its buffer (``flags >> 16``); :meth:`view` gives the bytes and
    :meth:`recycle` hands the buffer back to the kernel with two stores into shared memory
    (the entry, then the tail), no syscall.  The kernel reads the tail with an acquire
    load when it picks a buffer; our entry store precedes the tail store in program order
    and CPython performs each as a separate C call (no compiler reordering across them),
    which is ordered on x86-64; elsewhere the backend requires DEFER_TASKRUN, under which
    buffers are picked only inside our own ``io_uring_enter`` (a barrier).
    """

    __slots__ = ("_mask", "_ring", "_ring_addr", "_rv", "_tail", "_uring", "base", "buffers",
                 "count", "group", "size", "view")

    def __init__(self, ring: Ring, *, group: int, count: int, size: int) -> None:
        if count & (count - 1) or not 0 < count <= 32768:
            raise ValueError("count must be a power of two up to 32768")
        self._uring = ring
        self.group = group
        self.count = count
        self.size = size
        self._ring = mmap.mmap(-1, count * _BUF.size)  # anonymous: page aligned, zeroed
        self._ring_addr = address_of(self._ring)
        self._rv = memoryview(self._ring)
        self.buffers = bytearray(count * size)
        self.base = address_of(self.buffers)
        self.view = memoryview(self.buffers)
        self._mask = count - 1
        reg = bytearray(_BUF_REG.size)
        _BUF_REG.pack_into(reg, 0, self._ring_addr, count, group, 0, 0, 0, 0)
        result = ring.register(_REGISTER_PBUF_RING, address_of(reg), 1)
        if result < 0:
            self.view.release()
            self._rv.release()
            self._ring.close()
            raise os_error(-result, "io_uring_register(PBUF_RING)")
        self._tail = 0
        for bid in range(count):
            _BUF.pack_into(self._ring, bid << 4, self.base + bid * size, size, bid, 0)
        self._tail = count
        _U16.pack_into(self._ring, 14, count & 0xFFFF)

    def put(self, bid: int) -> None:
        """Queue buffer ``bid`` for the kernel; it sees it at the next :meth:`publish`."""
        tail = self._tail
        _BUF_HEAD.pack_into(self._rv, (tail & self._mask) << 4, self.base + bid * self.size,
                            self.size, bid)
        self._tail = (tail + 1) & 0xFFFF

    def publish(self) -> None:
        """Store the ring tail: every buffer :meth:`put` so far is the kernel's again.
        (The loop calls it once per turn, before ``io_uring_enter``.)"""
        _U16.pack_into(self._rv, 14, self._tail)

    def recycle(self, bid: int) -> None:
        """Give buffer ``bid`` back to the kernel at once (:meth:`put` + :meth:`publish`).

        Entries are written without their ``resv`` field: slot 0's is the ring tail."""
        self.put(bid)
        self.publish()

    def close(self) -> None:
        """Unregister and free (after the ring's requests are gone)."""
        if self._ring.closed:
            return
        reg = bytearray(_BUF_REG.size)
        _BUF_REG.pack_into(reg, 0, 0, 0, self.group, 0, 0, 0, 0)
        if self._uring.fd >= 0:
            self._uring.register(_UNREGISTER_PBUF_RING, address_of(reg), 1)
        self.view.release()
        self._rv.release()
        self._ring.close()

