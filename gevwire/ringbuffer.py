"""``RingBuffer``: a growable circular byte buffer with gev's API.

Each connection has one for unread input and one for unsent output.  Storage is taken
from a :class:`BufferPool` on the first write and given back as soon as the buffer is
empty again, so an idle connection holds no memory.  Storage addresses are taken once per
allocation, so the connection can hand the free or readable regions straight to
``readv`` / ``writev`` without a copy or a per-call ctypes object.
"""

from __future__ import annotations

import mmap
import struct
import threading
import time
from collections.abc import Callable
from typing import TypeAlias

from gevwire._sys import BYTES_OFFSET, address_of, bytes_address

__all__ = ["BufferPool", "RingBuffer"]

_EMPTY = memoryview(b"")
_PAGE = mmap.PAGESIZE

#: By default, up to this many readable bytes are moved to the start of the storage
#: rather than let a write wrap around its end (see RingBuffer).
COMPACT_MAX = 8192

#: A ring's storage: a ``bytearray``, or (past the pool's ``max_buffer``) anonymous
#: memory the kernel backs page by page as bytes reach it, or the ``bytes`` of a large
#: reply held by reference (see ``RingBuffer.write_from``).
Storage: TypeAlias = bytearray | mmap.mmap | bytes


class BufferPool:
    """Reusable byte buffers (with their addresses), bounded in total size.

    At most ``max_per_size`` buffers of one size and ``max_bytes`` in all are kept;
    buffers over ``max_buffer`` are anonymous memory maps rather than bytearrays: a
    ``bytearray`` is zeroed (every page of it made resident) when it is made, a map only
    gets pages where bytes are written, so a large frame's storage costs the bytes
    received so far, not the capacity reserved for it.  Safe to share between threads.

    Large maps given back are kept for ``keep_seconds`` (up to ``keep_large`` bytes in
    all), for the next large frame: each fresh page costs a page fault, and a 16 MiB
    frame in fresh storage cost 4,096 of them, more CPU than the rest of its echo
    (measured).  A map is kept only when :attr:`on_keep` arranges for :meth:`expire` to
    run ``keep_seconds`` later (an event loop's pool: the loop's timer); otherwise it is
    dropped at once.
    """

    __slots__ = ("_free", "_kept", "_kept_bytes", "_lock", "_max_buffer", "_max_bytes",
                 "_max_per_size", "_retained", "alarm", "in_use", "keep_large", "keep_seconds",
                 "on_alarm", "on_keep")

    def __init__(self, *, max_per_size: int = 64, max_buffer: int = 1 << 20,
                 max_bytes: int = 16 << 20, keep_large: int = 64 << 20,
                 keep_seconds: float = 1.0) -> None:
        self._free: dict[int, list[tuple[Storage, int]]] = {}
        self._max_per_size = max_per_size
        self._max_buffer = max_buffer
        self._max_bytes = max_bytes
        self._retained = 0
        #: Large maps kept for reuse, oldest first: (when given back, map, address).
        self._kept: list[tuple[float, Storage, int]] = []
        self._kept_bytes = 0
        self.keep_large = keep_large
        self.keep_seconds = keep_seconds
        #: ``on_keep(pool)`` when a large map is given back: True if it has arranged
        #: for ``pool.expire()`` to run ``keep_seconds`` from now (then the map is
        #: kept), False to have it dropped.
        self.on_keep: Callable[[BufferPool], bool] | None = None
        self._lock = threading.Lock()
        #: Bytes taken and not given back: the storage rings on this pool hold (exact
        #: for a pool used by one thread, as an event loop's; approximate if shared).
        self.in_use = 0
        #: ``on_alarm()`` runs (in the taking thread) on each take that leaves
        #: ``in_use`` above ``alarm`` (the server's memory budget sets them).
        self.alarm = 1 << 62
        self.on_alarm: Callable[[], None] | None = None

    @property
    def max_buffer(self) -> int:
        """The largest buffer kept for reuse (larger ones are memory maps)."""
        return self._max_buffer

    def take(self, capacity: int) -> tuple[Storage, int]:
        """A buffer of exactly ``capacity`` bytes and its address."""
        self.in_use += capacity
        if self.in_use > self.alarm and self.on_alarm is not None:
            self.on_alarm()
        if capacity > self._max_buffer:
            if self._kept:
                found = self._take_kept(capacity)
                if found is not None:
                    return found
            large = mmap.mmap(-1, capacity)
            return large, address_of(large)
        free = self._free.get(capacity)
        if free:
            with self._lock:
                if free:
                    self._retained -= capacity
                    return free.pop()
        buffer = bytearray(capacity)
        return buffer, address_of(buffer)

    def give(self, buffer: Storage, address: int) -> None:
        """Return a buffer for reuse; one over the limits is simply dropped."""
        capacity = len(buffer)
        self.in_use -= capacity
        if capacity > self._max_buffer:
            if (type(buffer) is mmap.mmap and capacity <= self.keep_large
                    and self.on_keep is not None and self.on_keep(self)):
                self._keep(buffer, address)
            return
        with self._lock:
            free = self._free.setdefault(capacity, [])
            if len(free) < self._max_per_size and self._retained + capacity <= self._max_bytes:
                free.append((buffer, address))
                self._retained += capacity

    def retained(self) -> int:
        """Bytes held for reuse (large maps kept included)."""
        return self._retained + self._kept_bytes

    def expire(self, *, everything: bool = False) -> None:
        """Drop the large maps kept ``keep_seconds`` or longer (``everything``: all)."""
        if not self._kept:
            return
        cutoff = time.monotonic() - self.keep_seconds * 0.999  # (a timer may fire early)
        with self._lock:
            while self._kept and (everything or self._kept[0][0] <= cutoff):
                self._kept_bytes -= len(self._kept.pop(0)[1])

    def _keep(self, buffer: Storage, address: int) -> None:
        with self._lock:
            self._kept.append((time.monotonic(), buffer, address))
            self._kept_bytes += len(buffer)
            while self._kept_bytes > self.keep_large:  # the oldest go first
                self._kept_bytes -= len(self._kept.pop(0)[1])

    def _take_kept(self, capacity: int) -> tuple[Storage, int] | None:
        """The smallest kept map that holds ``capacity`` bytes and is at most twice
        that, taken out (counted in use at its own size), or None."""
        with self._lock:
            best = -1
            for i, (_, buffer, _) in enumerate(self._kept):
                size = len(buffer)
                if capacity <= size <= 2 * capacity and (
                        best < 0 or size < len(self._kept[best][1])):
                    best = i
            if best < 0:
                return None
            _, buffer, address = self._kept.pop(best)
            self._kept_bytes -= len(buffer)
        self.in_use += len(buffer) - capacity
        return buffer, address


DEFAULT_POOL = BufferPool()


class RingBuffer:
    """A circular buffer that grows on demand and holds no storage while empty.

    ``peek`` returns memoryviews into the storage: they are valid until the next call
    that writes (``write_regions`` included), retrieves, or resets.

    A write that would wrap around the end of the storage first moves a few readable
    bytes (at most ``compact_max``: typically the start of an incomplete frame) to the
    front, so the bytes of a stream stay in one piece and a parser can cut every whole
    frame from one view; ``compact_max=0`` never moves them (tests use it to make
    wrapped storage common).  The virtual-read calls (``virtual_read``,
    ``virtual_flush``, ``virtual_revert``) read ahead without consuming, for parsers that
    may find a frame incomplete and need to give the bytes back.
    """

    __slots__ = ("_addr", "_buf", "_cap", "_compact_max", "_len", "_min", "_pool", "_r",
                 "_view", "_vskip")

    def __init__(self, min_capacity: int = 4096, pool: BufferPool | None = None, *,
                 compact_max: int = COMPACT_MAX) -> None:
        if min_capacity < 1:
            raise ValueError("min_capacity must be positive")
        if compact_max < 0:
            raise ValueError("compact_max must not be negative")
        self._compact_max = compact_max
        self._min = 1 << (min_capacity - 1).bit_length()
        self._pool = pool if pool is not None else DEFAULT_POOL
        self._buf: Storage | None = None
        self._view = _EMPTY
        self._addr = 0
        self._cap = 0
        self._r = 0  # index of the first readable byte
        self._len = 0  # readable bytes
        self._vskip = 0  # bytes consumed by virtual_read, not yet flushed

    # -- sizes -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    @property
    def length(self) -> int:
        """Readable bytes."""
        return self._len

    @property
    def capacity(self) -> int:
        """Bytes of storage held now (0 while empty)."""
        return self._cap

    @property
    def free(self) -> int:
        """Bytes that can be written before the buffer must grow."""
        return self._cap - self._len

    def is_empty(self) -> bool:
        """True when nothing is readable."""
        return self._len == 0

    def is_full(self) -> bool:
        """True when the storage is full (the next write grows it)."""
        return self._cap > 0 and self._len == self._cap

    # -- storage -----------------------------------------------------------------------

    def _release(self) -> None:
        if self._buf is not None:
            self._pool.give(self._buf, self._addr)
            self._buf = None
            self._view = _EMPTY
            self._addr = 0
            self._cap = 0
        self._r = 0
        self._vskip = 0

    def reserve(self, extra: int, *, exact: bool = False) -> None:
        """Make room for ``extra`` more bytes, growing to the next power of two (so a
        stream of writes copies each byte O(1) times), or with ``exact`` to just that
        room, page-rounded (a frame whose header announced its length)."""
        need = self._len + extra
        if need <= self._cap:
            return
        if exact:
            capacity = max(self._min, -(-need // _PAGE) * _PAGE)
        else:
            capacity = max(self._min, 1 << (need - 1).bit_length())
        self._move_to(capacity)

    def _move_to(self, capacity: int) -> None:
        """Put the readable bytes at the start of new storage of ``capacity`` bytes and
        give the old storage back (growing, shrinking, or unwrapping a frame)."""
        buffer, address = self._pool.take(capacity)
        capacity = len(buffer)  # (a kept map may be larger than asked)
        if self._len:
            first, second = self.peek_all()
            n1 = len(first)
            target = memoryview(buffer)
            target[:n1] = first
            if second:
                target[n1 : self._len] = second
            target.release()
        if self._buf is not None:
            self._pool.give(self._buf, self._addr)
        self._buf, self._view, self._addr, self._cap, self._r = (
            buffer, memoryview(buffer), address, capacity, 0)

    def shrink(self) -> None:
        """Move the readable bytes to the smallest storage that holds them, giving
        large storage back (a large frame was consumed, a small partial one is left)."""
        if not self._len:
            self._release()
            return
        capacity = max(self._min, 1 << (self._len - 1).bit_length())
        if capacity < self._cap:
            self._move_to(capacity)

    def _compact(self) -> None:
        """Move the readable bytes (contiguous, at most compact_max) to offset 0."""
        r = self._r
        n = self._len
        self._view[:n] = self._view[r : r + n]  # memoryview copies overlap safely
        self._r = 0

    # -- writing -----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` (growing if needed); return its length."""
        n = len(data)
        if not n:
            return 0
        if self._len + n > self._cap:
            self.reserve(n)
        elif type(self._buf) is bytes:  # a reply held by reference: never written into
            self._move_to(max(self._min, 1 << (self._len + n - 1).bit_length()))
        elif (self._r and self._r + self._len + n > self._cap
              and self._len <= self._compact_max and self._r + self._len <= self._cap):
            self._compact()  # rather than wrap
        cap = self._cap
        w = self._r + self._len
        if w >= cap:
            w -= cap
        view = self._view
        tail = cap - w
        if n <= tail:
            view[w : w + n] = data
        else:
            view[w:cap] = data[:tail]
            view[: n - tail] = data[tail:]
        self._len += n
        return n

    def write_from(self, data: bytes, start: int) -> None:
        """Append ``data[start:]`` (the unsent rest of a reply).

        Held by reference, not copied, when the ring is empty, ``data`` is ``bytes``
        (immutable) and longer than the pool keeps (``max_buffer``): a 16 MiB reply
        the socket took 2 MiB of leaves 14 MiB that need no copy and no fresh pages.
        The next write (or ``write_regions``) first moves the readable bytes into
        storage of the ring's own.
        """
        n = len(data)
        if (self._len or type(data) is not bytes or n <= self._pool.max_buffer
                or start >= n or BYTES_OFFSET < 0):
            self.write(memoryview(data)[start:])
            return
        pool = self._pool
        pool.in_use += n  # (given back, and dropped for its size, on release)
        if pool.in_use > pool.alarm and pool.on_alarm is not None:
            pool.on_alarm()
        self._buf = data
        self._view = memoryview(data)[start:]
        self._addr = bytes_address(data) + start
        self._cap = self._len = n - start
        self._r = 0

    def take_held(self) -> tuple[bytes, int] | None:
        """If the readable bytes are the rest of a reply held by reference
        (:meth:`write_from`): empty the ring and return ``(reply, offset of the rest)``
        for the caller to send from it directly; else None."""
        data = self._buf
        if type(data) is not bytes or not self._len:
            return None
        start = self._addr - bytes_address(data) + self._r
        self._len = 0
        self._release()
        return data, start

    def write_regions(self) -> tuple[int, int, int, int]:
        """The free space as ``(address, size, address, size)`` for ``readv``.

        The second region is empty (``0, 0``) when the free space does not wrap.  After
        the read, :meth:`commit` the number of bytes the kernel wrote.  A few readable
        bytes that leave free space on both sides are moved to the front first.
        """
        cap = self._cap
        free = cap - self._len
        if not free:
            return 0, 0, 0, 0
        if type(self._buf) is bytes:  # held by reference: the kernel must not write it
            self._move_to(max(self._min, 1 << (self._len - 1).bit_length() + 1))
            cap = self._cap
            free = cap - self._len
        if self._r and self._len <= self._compact_max and self._r + self._len <= cap:
            self._compact()
            return self._addr + self._len, free, 0, 0
        w = self._r + self._len
        if w >= cap:
            w -= cap
        if w >= self._r:
            tail = cap - w
            return self._addr + w, tail, self._addr, free - tail
        return self._addr + w, free, 0, 0

    def commit(self, n: int) -> None:
        """Mark ``n`` bytes written into :meth:`write_regions` as readable."""
        if n < 0 or self._len + n > self._cap:
            raise ValueError("commit beyond the free space")
        self._len += n

    # -- reading -----------------------------------------------------------------------

    def peek(self, n: int) -> tuple[memoryview, memoryview]:
        """Up to ``n`` readable bytes as one or two views, without consuming them."""
        if n > self._len:
            n = self._len
        if n <= 0:
            return _EMPTY, _EMPTY
        r = self._r
        end = r + n
        if end <= self._cap:
            return self._view[r:end], _EMPTY
        return self._view[r:], self._view[: end - self._cap]

    def peek_all(self) -> tuple[memoryview, memoryview]:
        """Every readable byte as one or two views."""
        return self.peek(self._len)

    def read_regions(self) -> tuple[int, int, int, int]:
        """The readable bytes as ``(address, size, address, size)`` for ``writev``."""
        n = self._len
        if not n:
            return 0, 0, 0, 0
        r = self._r
        tail = self._cap - r
        if n <= tail:
            return self._addr + r, n, 0, 0
        return self._addr + r, tail, self._addr, n - tail

    def retrieve(self, n: int) -> None:
        """Consume ``n`` bytes (all of them if ``n`` is larger)."""
        if n <= 0:
            return
        if n >= self._len:
            self._len = 0
            self._release()
            return
        r = self._r + n
        if r >= self._cap:
            r -= self._cap
        self._r = r
        self._len -= n
        self._vskip = 0

    def retrieve_all(self) -> None:
        """Consume everything."""
        self._len = 0
        self._release()

    def read(self, n: int) -> bytes:
        """Copy out and consume up to ``n`` bytes."""
        first, second = self.peek(n)
        data = bytes(first) + bytes(second) if second else bytes(first)
        self.retrieve(len(data))
        return data

    def read_all(self) -> bytes:
        """Copy out and consume everything."""
        return self.read(self._len)

    def to_bytes(self) -> bytes:
        """Copy of every readable byte, not consumed."""
        first, second = self.peek_all()
        return bytes(first) + bytes(second) if second else bytes(first)

    def contiguous(self, n: int) -> memoryview:
        """The first ``n`` readable bytes as one view, moving data if they wrap.

        Codecs use this to parse a frame in place; ``n`` must not exceed ``length``.
        """
        if n > self._len:
            raise ValueError("not enough readable bytes")
        r = self._r
        if r + n <= self._cap:
            return self._view[r : r + n]
        # The frame wraps: rotate the readable bytes to the start of fresh storage.
        self._move_to(self._cap)
        return self._view[:n]

    def unpack_from(self, fmt: struct.Struct, offset: int = 0) -> tuple[object, ...]:
        """``fmt.unpack_from`` at ``offset`` readable bytes in, across the wrap if needed."""
        end = offset + fmt.size
        if end > self._len:
            raise ValueError("not enough readable bytes")
        start = self._r + offset
        if start >= self._cap:
            start -= self._cap
        if start + fmt.size <= self._cap:
            return fmt.unpack_from(self._view, start)
        first, second = self.peek(end)
        return fmt.unpack((bytes(first) + bytes(second))[offset:end])

    def find(self, needle: bytes, start: int = 0, end: int | None = None) -> int:
        """Offset (from the first readable byte) of ``needle`` in ``[start, end)``, or -1."""
        limit = self._len if end is None else min(end, self._len)
        if start >= limit:
            return start if start == limit and not needle else -1
        r = self._r
        buf = self._buf
        assert buf is not None
        if r + limit <= self._cap:
            i = buf.find(needle, r + start, r + limit)
            return i - r if i >= 0 else -1
        # The readable bytes wrap: rotate them to the start of fresh storage, where they
        # stay until consumed, so a long partial frame that straddles the end is moved
        # once, not copied on every search (that would be O(n²) as it grows).
        self.contiguous(self._len)
        buf = self._buf
        assert buf is not None
        r = self._r
        i = buf.find(needle, r + start, r + limit)
        return i - r if i >= 0 else -1

    # -- virtual reads -----------------------------------------------------------------

    def virtual_read(self, n: int) -> bytes:
        """Copy up to ``n`` bytes after the virtual read position and advance it."""
        avail = self._len - self._vskip
        if n > avail:
            n = avail
        if n <= 0:
            return b""
        first, second = self.peek(self._vskip + n)
        skip = self._vskip
        if skip < len(first):
            data = bytes(first[skip:]) + bytes(second)
        else:
            data = bytes(second[skip - len(first) :])
        self._vskip += n
        return data

    def virtual_length(self) -> int:
        """Readable bytes after the virtual read position."""
        return self._len - self._vskip

    def virtual_flush(self) -> None:
        """Consume everything read virtually."""
        self.retrieve(self._vskip)
        self._vskip = 0

    def virtual_revert(self) -> None:
        """Move the virtual read position back to the first readable byte."""
        self._vskip = 0

    def reset(self) -> None:
        """Drop every byte and give the storage back."""
        self.retrieve_all()

    def __repr__(self) -> str:
        return f"RingBuffer(length={self._len}, capacity={self._cap})"
