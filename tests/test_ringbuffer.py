"""``RingBuffer`` against a plain ``bytes`` model (hypothesis stateful testing) and ``BufferPool``.

The state machine drives every public operation, including the zero-copy ones a
connection uses with the kernel: ``write_regions`` + ``commit`` (simulated here by
writing into the returned addresses with ``ctypes.memmove``, as ``readv`` would) and
``read_regions`` (read back from the addresses with ``ctypes.string_at``, as ``writev``
would).  After every step the invariants tie the ring to the model: same bytes, an empty
ring holds no storage, capacity is a power of two.
"""

from __future__ import annotations

import ctypes
import mmap
import random
import struct
import sys
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gevwire._sys import address_of
from gevwire.ringbuffer import DEFAULT_POOL, BufferPool, RingBuffer

pytestmark = pytest.mark.timeout(120)

FORMATS = [struct.Struct(f) for f in ("B", "<H", ">H", "<I", "!I", "<Q", ">q", "<HI", "!BHQ")]


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def region_bytes(a1: int, l1: int, a2: int, l2: int) -> bytes:
    """The bytes at two ``(address, size)`` regions, as ``writev`` would send them."""
    out = ctypes.string_at(a1, l1) if l1 else b""
    return out + (ctypes.string_at(a2, l2) if l2 else b"")


def as_kind(data: bytes, kind: str) -> bytes | bytearray | memoryview:
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(data)
    return data


# -- the state machine ------------------------------------------------------------------


class RecordingPool(BufferPool):
    """A pool that remembers every size it was asked for."""

    __slots__ = ("sizes",)

    def __init__(self, *, max_per_size: int) -> None:
        super().__init__(max_per_size=max_per_size)
        self.sizes: set[int] = set()

    def take(self, capacity: int) -> tuple[bytearray, int]:
        assert is_power_of_two(capacity)
        self.sizes.add(capacity)
        return super().take(capacity)


class RingMachine(RuleBasedStateMachine):
    """``RingBuffer`` vs ``model`` (readable bytes) and ``vpos`` (the virtual read position).

    Virtual-read model, as the ring defines it: ``virtual_read`` advances ``vpos``;
    ``virtual_flush`` consumes ``vpos`` bytes; ``virtual_revert`` and any consuming call
    (``retrieve`` / ``read`` of at least one byte, ``retrieve_all``, ``reset``) set it to 0;
    writes, peeks and ``contiguous`` leave it alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool = RecordingPool(max_per_size=4)
        self.ring = RingBuffer(1, self.pool)
        self.min = 1
        self.model = b""
        self.vpos = 0

    @initialize(
        min_capacity=st.sampled_from([1, 2, 3, 5, 8, 13, 16, 64]),
        skip=st.integers(0, 100),
        prefill=st.binary(max_size=100),
        compact_max=st.sampled_from([0, 3, 8192]),
    )
    def setup(self, min_capacity: int, skip: int, prefill: bytes, compact_max: int) -> None:
        """Start with ``prefill`` readable after ``skip`` consumed bytes (position > 0)."""
        self.ring = RingBuffer(min_capacity, self.pool, compact_max=compact_max)
        self.min = 1 << (min_capacity - 1).bit_length()
        self.ring.write(b"\xee" * skip + prefill)
        self.ring.retrieve(skip)
        self.model = prefill

    # -- helpers -----------------------------------------------------------------------

    def consume(self, n: int) -> None:
        if n <= 0:
            return
        self.model = self.model[n:]
        self.vpos = 0

    # -- writing -----------------------------------------------------------------------

    def expected_capacity(self, added: int) -> int:
        """Capacity after writing ``added`` bytes: unchanged if they fit, else grown."""
        need = len(self.model) + added
        if need <= self.ring.capacity:
            return self.ring.capacity
        return max(self.min, 1 << (need - 1).bit_length())

    @rule(data=st.binary(max_size=40), kind=st.sampled_from(["bytes", "bytearray", "memoryview"]))
    def write(self, data: bytes, kind: str) -> None:
        capacity = self.expected_capacity(len(data))
        assert self.ring.write(as_kind(data, kind)) == len(data)
        self.model += data
        assert self.ring.capacity == (capacity if self.model else 0)

    @rule(size=st.integers(100, 5000), seed=st.integers(0, 2**32))
    def write_large(self, size: int, seed: int) -> None:
        data = random.Random(seed).randbytes(size)
        capacity = self.expected_capacity(size)
        assert self.ring.write(data) == size
        self.model += data
        assert self.ring.capacity == capacity

    @precondition(lambda self: self.model)
    @rule(data=st.data(), seed=st.integers(0, 2**32))
    def churn(self, data: st.DataObject, seed: int) -> None:
        """Write up to the free space, then consume as much: the read position travels.

        Without this the ring rarely wraps (emptying it resets the position to 0, and
        growing it moves the bytes to the start).
        """
        size = data.draw(st.integers(1, max(self.ring.free, 1)), label="size")
        chunk = random.Random(seed).randbytes(size)
        self.ring.write(chunk)
        self.ring.retrieve(size)
        self.model = (self.model + chunk)[size:]
        self.vpos = 0

    @precondition(lambda self: self.model)
    @rule(data=st.data(), seed=st.integers(0, 2**32))
    def write_fitting(self, data: st.DataObject, seed: int) -> None:
        """Write no more than the free space (often exactly all of it): no growth."""
        free = self.ring.free
        size = data.draw(st.one_of(st.just(free), st.integers(0, free)), label="size")
        chunk = random.Random(seed).randbytes(size)
        capacity = self.ring.capacity
        assert self.ring.write(chunk) == size
        assert self.ring.capacity == capacity
        self.model += chunk
        assert self.ring.is_full() == (size == free)

    @rule(data=st.binary(max_size=64))
    def write_regions_and_commit(self, data: bytes) -> None:
        """Play the kernel's part in ``readv``: fill the free regions, then commit."""
        a1, l1, a2, l2 = self.ring.write_regions()
        free = self.ring.free
        assert l1 + l2 == free
        if not free:
            assert (a1, l1, a2, l2) == (0, 0, 0, 0)
        if l2:
            assert l1 > 0
        chunk = data[:free]
        first = chunk[:l1]
        if first:
            ctypes.memmove(a1, first, len(first))
        rest = chunk[l1:]
        if rest:
            ctypes.memmove(a2, rest, len(rest))
        self.ring.commit(len(chunk))
        self.model += chunk

    @rule(extra=st.integers(1, 8))
    def commit_beyond_free_space_is_refused(self, extra: int) -> None:
        with pytest.raises(ValueError):
            self.ring.commit(self.ring.free + extra)
        with pytest.raises(ValueError):
            self.ring.commit(-extra)

    @precondition(lambda self: self.model)
    @rule(extra=st.integers(0, 300))
    def reserve(self, extra: int) -> None:
        self.ring.reserve(extra)
        assert self.ring.free >= extra

    @rule()
    def shrink(self) -> None:
        self.ring.shrink()
        n = len(self.model)
        assert self.ring.capacity == (max(self.min, 1 << (n - 1).bit_length()) if n else 0)
        assert self.ring.to_bytes() == self.model

    # -- reading -----------------------------------------------------------------------

    def draw_count(self, data: st.DataObject) -> int:
        """A byte count mostly within the readable bytes, sometimes beyond or negative.

        Consuming everything empties the ring and resets its read position to 0, so
        counts are drawn relative to the length to let the position travel and wrap.
        """
        n = len(self.model)
        return data.draw(
            st.one_of(st.integers(0, max(n - 1, 0)), st.integers(-2, n + 8)), label="n"
        )

    @rule(data=st.data())
    def retrieve(self, data: st.DataObject) -> None:
        n = self.draw_count(data)
        self.ring.retrieve(n)
        self.consume(min(n, len(self.model)))

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        n = self.draw_count(data)
        expected = self.model[: max(n, 0)]
        assert self.ring.read(n) == expected
        self.consume(len(expected))

    @rule(how=st.sampled_from(["retrieve_all", "reset", "read_all"]))
    def drain(self, how: str) -> None:
        if how == "read_all":
            assert self.ring.read_all() == self.model
        else:
            getattr(self.ring, how)()
        self.model = b""
        self.vpos = 0

    @rule(n=st.integers(-2, 6000))
    def peek(self, n: int) -> None:
        first, second = self.ring.peek(n)
        assert bytes(first) + bytes(second) == self.model[: max(n, 0)]
        if second:
            assert first  # a second view only when the bytes wrap

    @rule()
    def peek_all(self) -> None:
        first, second = self.ring.peek_all()
        assert bytes(first) + bytes(second) == self.model

    @rule()
    def read_regions(self) -> None:
        a1, l1, a2, l2 = self.ring.read_regions()
        assert l1 + l2 == len(self.model)
        if not self.model:
            assert (a1, l1, a2, l2) == (0, 0, 0, 0)
        if l2:
            assert l1 > 0
        assert region_bytes(a1, l1, a2, l2) == self.model
        event("read_regions: wrapped" if l2 else "read_regions: flat")

    @rule(data=st.data())
    def contiguous(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(0, len(self.model)), label="n")
        wrapped = bool(self.ring.peek(n)[1])
        event(f"contiguous: {'wrapped' if wrapped else 'flat'}")
        view = self.ring.contiguous(n)
        assert len(view) == n
        assert bytes(view) == self.model[:n]

    @rule(extra=st.integers(1, 5))
    def contiguous_beyond_length_is_refused(self, extra: int) -> None:
        with pytest.raises(ValueError):
            self.ring.contiguous(len(self.model) + extra)

    @rule(
        data=st.data(),
        start=st.integers(0, 200),
        end=st.one_of(st.none(), st.integers(0, 200)),
    )
    def find(self, data: st.DataObject, start: int, end: int | None) -> None:
        if self.model and data.draw(st.booleans(), label="needle from contents"):
            i = data.draw(st.integers(0, len(self.model) - 1), label="at")
            size = data.draw(st.integers(1, 4), label="size")
            needle = self.model[i : i + size]
        else:
            needle = data.draw(st.binary(max_size=3), label="needle")  # b"" too
        if end is None:
            assert self.ring.find(needle, start) == self.model.find(needle, start)
        else:
            assert self.ring.find(needle, start, end) == self.model.find(needle, start, end)

    @rule(fmt=st.sampled_from(FORMATS), offset=st.integers(0, 80))
    def unpack_from(self, fmt: struct.Struct, offset: int) -> None:
        if offset + fmt.size <= len(self.model):
            assert self.ring.unpack_from(fmt, offset) == fmt.unpack_from(self.model, offset)
        else:
            with pytest.raises(ValueError):
                self.ring.unpack_from(fmt, offset)

    # -- virtual reads -----------------------------------------------------------------

    @rule(data=st.data())
    def virtual_read(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(-2, len(self.model) - self.vpos + 3), label="n")
        take = max(0, min(n, len(self.model) - self.vpos))
        assert self.ring.virtual_read(n) == self.model[self.vpos : self.vpos + take]
        self.vpos += take

    @rule()
    def virtual_flush(self) -> None:
        self.ring.virtual_flush()
        self.consume(self.vpos)
        self.vpos = 0

    @rule()
    def virtual_revert(self) -> None:
        self.ring.virtual_revert()
        self.vpos = 0

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def same_bytes(self) -> None:
        assert self.ring.to_bytes() == self.model

    @invariant()
    def sizes(self) -> None:
        ring = self.ring
        n = len(self.model)
        assert ring.length == len(ring) == n
        assert ring.is_empty() == (n == 0)
        if n == 0:
            assert ring.capacity == 0, "an empty ring must hold no storage"
            assert ring.write_regions() == (0, 0, 0, 0)
        else:
            assert is_power_of_two(ring.capacity)
            assert ring.capacity >= max(n, self.min)
        assert ring.free == ring.capacity - n
        assert ring.is_full() == (ring.capacity > 0 and n == ring.capacity)
        assert ring.virtual_length() == n - self.vpos

    @invariant()
    def wrap_point(self) -> None:
        """Read-only calls that must handle the wrap, aimed at the bytes around it."""
        first, second = self.ring.peek_all()
        if not second:
            return
        cut = len(first)  # offset of the first byte stored at the start of the storage
        model = self.model
        for fmt in (FORMATS[3], FORMATS[8]):
            straddling = range(max(0, cut - fmt.size + 1), min(cut + 1, len(model) - fmt.size + 1))
            for offset in straddling:
                assert self.ring.unpack_from(fmt, offset) == fmt.unpack_from(model, offset)
        for needle in (model[cut - 1 : cut + 1], model[cut : cut + 2], model[-2:]):
            assert self.ring.find(needle) == model.find(needle)
            assert self.ring.find(needle, cut - 1) == model.find(needle, cut - 1)
            assert self.ring.find(needle, 0, cut + 1) == model.find(needle, 0, cut + 1)

    @invariant()
    def pool_is_bounded(self) -> None:
        # Every buffer the pool holds came from take(); it keeps at most 4 of each size.
        assert self.pool.retained() <= 4 * sum(self.pool.sizes)


TestRingMachine = RingMachine.TestCase
TestRingMachine.settings = settings(
    max_examples=800,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# -- targeted RingBuffer tests -----------------------------------------------------------


@pytest.mark.parametrize(
    ("min_capacity", "capacity"),
    [(1, 1), (2, 2), (3, 4), (5, 8), (4096, 4096), (4097, 8192), (1 << 20, 1 << 20)],
)
def test_min_capacity_rounds_up_to_a_power_of_two(min_capacity: int, capacity: int) -> None:
    ring = RingBuffer(min_capacity, BufferPool())
    assert ring.capacity == 0
    ring.write(b"x")
    assert ring.capacity == capacity


@pytest.mark.parametrize("bad", [0, -1, -4096])
def test_min_capacity_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError):
        RingBuffer(bad)


def test_growth_is_to_the_next_power_of_two_above_need() -> None:
    ring = RingBuffer(8, BufferPool())
    ring.write(b"a" * 8)
    assert ring.capacity == 8
    assert ring.is_full()
    ring.write(b"b")
    assert ring.capacity == 16
    ring.write(b"c" * 100)
    assert ring.capacity == 128
    assert ring.to_bytes() == b"a" * 8 + b"b" + b"c" * 100


def test_growth_preserves_content_across_the_wrap() -> None:
    pool = BufferPool()
    ring = RingBuffer(8, pool, compact_max=0)
    ring.write(b"012345")
    ring.retrieve(4)  # read position 4
    ring.write(b"6789ab")  # 8 readable bytes at 4..7 then 0..3: wrapped and full
    assert ring.capacity == 8
    assert ring.is_full()
    a1, l1, a2, l2 = ring.read_regions()
    assert (l1, l2) == (4, 4)
    assert a2 == a1 - 4  # the second region is the start of the storage
    first, second = ring.peek_all()
    assert (bytes(first), bytes(second)) == (b"4567", b"89ab")
    ring.write(b"cdefghij")  # grows: 16 bytes into 16, unwrapped at the start
    assert ring.capacity == 16
    assert ring.to_bytes() == b"456789abcdefghij"
    _, l1, _, l2 = ring.read_regions()
    assert (l1, l2) == (16, 0)
    assert pool.retained() == 8  # the outgrown storage went back to the pool


def test_contiguous_rotates_wrapped_bytes_into_one_view() -> None:
    ring = RingBuffer(8, BufferPool(), compact_max=0)
    ring.write(b"......!")
    ring.retrieve(6)  # read position 6, one byte left so the storage is kept
    ring.write(b"ABCDE")  # "!ABCDE" wraps at 8
    assert bytes(ring.peek_all()[1]) == b"BCDE"
    view = ring.contiguous(5)
    assert bytes(view) == b"!ABCD"
    assert ring.to_bytes() == b"!ABCDE"
    assert bytes(ring.peek_all()[1]) == b""  # no longer wrapped
    assert ring.capacity == 8


def test_a_write_that_would_wrap_moves_a_few_bytes_to_the_front_instead() -> None:
    ring = RingBuffer(16, BufferPool())
    ring.write(b"x" * 10 + b"abc")
    ring.retrieve(10)  # "abc" at 10..12
    ring.write(b"defghi")  # would wrap at 16
    first, second = ring.peek_all()
    assert (bytes(first), bytes(second)) == (b"abcdefghi", b"")
    assert ring.read_regions()[1] == 9  # one region, from the start of the storage
    assert ring.capacity == 16  # moved, not grown


def test_free_space_for_readv_is_one_region_after_moving_a_few_bytes() -> None:
    ring = RingBuffer(16, BufferPool())
    ring.write(b"x" * 12 + b"ab")
    ring.retrieve(12)  # "ab" at 12..13: the free space would be 14..15 and 0..11
    a1, l1, a2, l2 = ring.write_regions()
    assert (l1, a2, l2) == (14, 0, 0)
    assert a1 == ring.read_regions()[0] + 2  # right after "ab", now at the front
    assert ring.to_bytes() == b"ab"


def test_more_readable_bytes_than_compact_max_wrap_as_before() -> None:
    ring = RingBuffer(16, BufferPool(), compact_max=2)
    ring.write(b"x" * 10 + b"abc")
    ring.retrieve(10)  # 3 readable bytes: over the limit of 2
    ring.write(b"defghi")
    first, second = ring.peek_all()
    assert (bytes(first), bytes(second)) == (b"abcdef", b"ghi")
    _, l1, _, l2 = ring.write_regions()
    assert (l1, l2) == (7, 0)  # the free space between the two pieces


def test_compact_max_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="compact_max"):
        RingBuffer(16, compact_max=-1)


def test_contiguous_without_wrap_is_a_view_in_place() -> None:
    ring = RingBuffer(8, BufferPool())
    ring.write(b"abcdef")
    before = ring.read_regions()[0]
    assert bytes(ring.contiguous(4)) == b"abcd"
    assert ring.read_regions()[0] == before  # nothing moved


def test_find_and_unpack_across_the_wrap() -> None:
    ring = RingBuffer(16, BufferPool(), compact_max=0)
    ring.write(b"x" * 13)
    ring.retrieve(12)  # read position 12, "x" left
    ring.write(b"ab\r\n" + struct.pack(">I", 0xDEADBEEF) + b"\r\n")  # wraps at 16
    assert bytes(ring.peek_all()[1]) != b""
    assert ring.to_bytes() == b"xab\r\n\xde\xad\xbe\xef\r\n"
    assert ring.find(b"\r\n") == 3
    assert ring.find(b"\r\n", 4) == 9
    assert ring.find(b"\r\n", 4, 10) == -1
    assert ring.find(b"\n\xde") == 4
    assert ring.find(b"\xef\r") == 8
    assert ring.unpack_from(struct.Struct(">I"), 5) == (0xDEADBEEF,)
    assert ring.unpack_from(struct.Struct(">H"), 3) == (0x0D0A,)


def test_find_on_an_empty_ring() -> None:
    ring = RingBuffer(8, BufferPool())
    assert ring.find(b"x") == -1


def test_find_empty_needle_matches_bytes_find() -> None:
    """Regression: find(b'', length) returned -1 where bytes.find returns length."""
    ring = RingBuffer(8, BufferPool())
    assert ring.find(b"") == b"".find(b"") == 0
    ring.write(b"abc")
    assert ring.find(b"") == 0
    assert ring.find(b"", 4) == b"abc".find(b"", 4) == -1
    assert ring.find(b"", 2, 1) == b"abc".find(b"", 2, 1) == -1
    assert ring.find(b"", 3, 10) == b"abc".find(b"", 3, 10) == 3
    assert ring.find(b"", 1) == b"abc".find(b"", 1) == 1
    assert ring.find(b"", 3) == b"abc".find(b"", 3) == 3


def test_virtual_read_flush_and_revert() -> None:
    ring = RingBuffer(4, BufferPool())
    ring.write(b"headerbody")
    assert ring.virtual_read(6) == b"header"
    assert ring.virtual_length() == 4
    assert ring.virtual_read(10) == b"body"
    assert ring.virtual_read(1) == b""
    ring.virtual_revert()
    assert ring.virtual_length() == 10
    assert ring.virtual_read(6) == b"header"
    ring.virtual_flush()
    assert ring.to_bytes() == b"body"
    assert ring.virtual_length() == 4


def test_empty_ring_holds_no_storage_and_returns_it_to_the_pool() -> None:
    pool = BufferPool()
    ring = RingBuffer(64, pool)
    ring.write(b"hello")
    assert ring.capacity == 64
    assert pool.retained() == 0
    ring.retrieve(5)
    assert ring.capacity == 0
    assert pool.retained() == 64
    ring.write(b"x")
    assert pool.retained() == 0


def test_default_pool_is_used_without_one() -> None:
    ring = RingBuffer(1 << 13)
    ring.write(b"x")
    address = ring.read_regions()[0]
    ring.reset()
    buffer, again = DEFAULT_POOL.take(1 << 13)
    assert again == address
    DEFAULT_POOL.give(buffer, again)


# -- BufferPool --------------------------------------------------------------------------


def test_released_buffer_comes_back_with_the_same_address() -> None:
    pool = BufferPool()
    ring = RingBuffer(256, pool)
    ring.write(b"first")
    address = ring.read_regions()[0]
    ring.reset()
    other = RingBuffer(256, pool)
    other.write(b"second")
    assert other.read_regions()[0] == address
    assert region_bytes(*other.read_regions()) == b"second"


def test_take_returns_exact_size_and_correct_address() -> None:
    pool = BufferPool()
    buffer, address = pool.take(128)
    assert len(buffer) == 128
    assert address_of(buffer) == address
    pool.give(buffer, address)
    again, again_address = pool.take(128)
    assert again is buffer
    assert again_address == address
    different, _ = pool.take(128)
    assert different is not buffer  # the pool is empty again: a fresh buffer
    assert pool.take(256)[0] is not buffer  # sizes are kept apart


def test_pool_keeps_at_most_max_per_size() -> None:
    pool = BufferPool(max_per_size=2)
    taken = [pool.take(64) for _ in range(5)]
    for buffer, address in taken:
        pool.give(buffer, address)
    assert pool.retained() == 2 * 64
    kept = {id(pool.take(64)[0]) for _ in range(2)}
    assert kept <= {id(b) for b, _ in taken}
    assert id(pool.take(64)[0]) not in {id(b) for b, _ in taken}


def test_pool_drops_buffers_over_max_buffer() -> None:
    pool = BufferPool(max_buffer=256)
    pool.give(*pool.take(512))
    assert pool.retained() == 0
    pool.give(*pool.take(256))
    assert pool.retained() == 256


def test_ring_growth_beyond_max_buffer_is_not_retained() -> None:
    pool = BufferPool(max_buffer=1024)
    ring = RingBuffer(16, pool)
    ring.write(b"z" * 10)
    ring.write(b"z" * 5000)  # 16 → 8192: the outgrown 16 bytes go back to the pool
    assert ring.capacity == 8192
    assert pool.retained() == 16
    ring.reset()  # 8192 > max_buffer: dropped, not retained
    assert pool.retained() == 16


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads as often as CPython allows, to shake out races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.mark.usefixtures("fast_switching")
def test_pool_shared_between_threads() -> None:
    pool = BufferPool(max_per_size=8)
    threads_count, rounds = 8, 1500
    in_use: set[int] = set()
    lock = threading.Lock()
    errors: list[str] = []

    def worker(tag: int) -> None:
        try:
            for i in range(rounds):
                size = 64 << (i % 3)
                buffer, address = pool.take(size)
                with lock:
                    if id(buffer) in in_use:
                        errors.append(f"buffer {id(buffer)} handed out twice")
                    in_use.add(id(buffer))
                if address_of(buffer) != address:
                    errors.append("address does not match the buffer")
                buffer[:] = bytes([tag]) * size
                if buffer != bytes([tag]) * size:
                    errors.append("another thread wrote into a buffer it did not own")
                with lock:
                    in_use.discard(id(buffer))
                pool.give(buffer, address)
        except Exception as exc:
            errors.append(repr(exc))

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads_count)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert not any(t.is_alive() for t in workers)
    assert errors == []
    # The per-size bound is checked without a lock, so a race may overshoot it by a few.
    per_size_slack = 8 + threads_count
    assert pool.retained() <= per_size_slack * (64 + 128 + 256)


@pytest.mark.usefixtures("fast_switching")
def test_rings_on_a_shared_pool_in_threads() -> None:
    pool = BufferPool(max_per_size=4)
    errors: list[str] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        ring = RingBuffer(16, pool)
        model = b""
        try:
            for _ in range(1500):
                if rnd.random() < 0.55:
                    data = rnd.randbytes(rnd.randrange(0, 200))
                    ring.write(data)
                    model += data
                else:
                    n = rnd.randrange(0, 150)
                    got = ring.read(n)
                    if got != model[:n]:
                        errors.append(f"thread {seed}: read mismatch")
                        return
                    model = model[n:]
                if ring.to_bytes() != model:
                    errors.append(f"thread {seed}: content mismatch")
                    return
        except Exception as exc:
            errors.append(repr(exc))

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert not any(t.is_alive() for t in workers)
    assert errors == []


def test_pool_keeps_at_most_max_bytes_in_all() -> None:
    pool = BufferPool(max_per_size=100, max_buffer=1 << 16, max_bytes=10_000)
    buffers = [pool.take(4096) for _ in range(5)]
    for buffer, address in buffers:
        pool.give(buffer, address)
    assert pool.retained() == 8192  # a third 4 KiB buffer would pass 10,000 bytes
    again = [pool.take(4096) for _ in range(3)]
    assert {id(b) for b, _ in again[:2]} <= {id(b) for b, _ in buffers}
    assert pool.retained() == 0
    pool.give(*pool.take(1 << 17))  # over max_buffer: dropped
    assert pool.retained() == 0


def test_reserve_exact_sizes_storage_to_the_need_page_rounded() -> None:
    ring = RingBuffer()
    ring.write(b"abc")
    ring.reserve(3 << 20, exact=True)  # 3 MiB + 3 bytes, rounded up to a page
    page = mmap.PAGESIZE
    assert ring.capacity == -(-((3 << 20) + 3) // page) * page
    assert ring.read_all() == b"abc"
    ring.write(b"x" * 5000)
    ring.reserve(10_000)  # without exact: the next power of two, as always
    assert ring.capacity == 16384


def test_large_storage_is_resident_only_where_bytes_were_written() -> None:
    """Past the pool's max_buffer, storage is an anonymous map: reserving 64 MiB for a
    frame whose header announced it costs the bytes received, not 64 MiB (a bytearray
    is zeroed, every page touched, when it is made)."""
    pool = BufferPool(max_buffer=1 << 20)
    ring = RingBuffer(pool=pool)

    def resident() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * mmap.PAGESIZE

    before = resident()
    ring.write(b"h" * 100)
    ring.reserve(64 << 20, exact=True)
    ring.write(b"y" * (1 << 20))
    grown = resident() - before
    assert ring.capacity >= 64 << 20 and isinstance(ring._buf, mmap.mmap)
    assert grown < 4 << 20, f"{grown} bytes resident for 1 MiB written"
    assert ring.find(b"y") == 100 and ring.to_bytes() == b"h" * 100 + b"y" * (1 << 20)
    ring.reset()
    assert ring.capacity == 0 and pool.retained() == 4096  # the first storage; maps
    assert not any(isinstance(b, mmap.mmap) for free in pool._free.values()  # are never
                   for b, _ in free)  # kept


def test_storage_of_any_size_wraps_like_a_power_of_two() -> None:
    """``reserve(exact=True)`` makes page-rounded storage: the ring's arithmetic never
    assumed a power of two (writes, reads and regions across the wrap)."""
    ring = RingBuffer(compact_max=0)
    ring.write(b"a")
    ring.reserve(3 * mmap.PAGESIZE - 10, exact=True)
    cap = ring.capacity
    assert cap == 3 * mmap.PAGESIZE and cap & (cap - 1)
    ring.write(b"b" * (cap - 1))
    ring.retrieve(cap - 100)  # 100 left at the end of the storage
    data = bytes(range(256)) * 4
    ring.write(data)  # wraps
    first, second = ring.peek_all()
    assert len(first) == 100 and len(second) == len(data)
    assert ring.to_bytes() == b"b" * 100 + data
    assert ring.contiguous(ring.length).tobytes() == b"b" * 100 + data


def test_a_pool_counts_the_storage_its_rings_hold_and_alarms_past_a_mark() -> None:
    pool = BufferPool(max_buffer=1 << 20)
    alarms: list[int] = []
    pool.alarm = 100_000
    pool.on_alarm = lambda: alarms.append(pool.in_use)
    rings = [RingBuffer(pool=pool) for _ in range(3)]
    rings[0].write(b"x" * 5000)  # 8 KiB
    rings[1].write(b"y" * 10)  # 4 KiB
    assert pool.in_use == 8192 + 4096 and alarms == []
    rings[2].reserve(2 << 20, exact=True)  # a map: counted as well
    assert pool.in_use == 8192 + 4096 + (2 << 20) and alarms == [pool.in_use]
    rings[0].read_all()
    rings[2].reset()
    assert pool.in_use == 4096
    rings[1].reset()
    assert pool.in_use == 0  # kept for reuse or dropped: given back either way


# -- write_from: the unsent rest of a large reply, by reference ---------------------------


def test_write_from_holds_a_large_bytes_rest_by_reference_until_the_next_write() -> None:
    pool = BufferPool(max_buffer=4096)
    ring = RingBuffer(64, pool)
    reply = bytes(range(256)) * 64  # 16 KiB, over the pool's max_buffer
    ring.write_from(reply, 1000)
    assert ring._buf is reply  # not copied
    assert ring.length == len(reply) - 1000 and ring.free == 0
    assert pool.in_use == len(reply)
    assert region_bytes(*ring.read_regions()) == reply[1000:]  # writev reads it in place
    ring.retrieve(5000)
    assert ring.to_bytes() == reply[6000:]
    ring.write(b"after")  # moved into storage of its own first, then appended
    assert ring._buf is not reply and type(ring._buf) is not bytes
    assert ring.to_bytes() == reply[6000:] + b"after"
    ring.retrieve_all()
    assert pool.in_use == 0 and pool.retained() == 0  # the reply is not kept for reuse


def test_take_held_hands_over_a_held_reply_and_where_its_rest_starts() -> None:
    pool = BufferPool(max_buffer=4096)
    ring = RingBuffer(64, pool)
    assert ring.take_held() is None  # empty
    reply = bytes(range(256)) * 64
    ring.write_from(reply, 1000)
    ring.retrieve(24)
    data, start = ring.take_held()  # type: ignore[misc]
    assert data is reply and start == 1024
    assert ring.length == 0 and ring._buf is None and pool.in_use == 0
    ring.write(b"own storage")
    assert ring.take_held() is None and ring.to_bytes() == b"own storage"


def test_write_from_releases_the_reference_when_the_rest_is_consumed() -> None:
    pool = BufferPool(max_buffer=4096)
    ring = RingBuffer(64, pool)
    reply = b"r" * 10_000
    ring.write_from(reply, 0)
    assert ring.read(10_000) == reply
    assert ring._buf is None and ring.capacity == 0 and pool.in_use == 0


@pytest.mark.parametrize("case", ["small", "bytearray", "not-empty", "no-bytes-offset"])
def test_write_from_copies_when_a_reference_would_not_do(
        case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if case == "no-bytes-offset":  # an interpreter without bytes at a fixed offset
        monkeypatch.setattr("gevwire.ringbuffer.BYTES_OFFSET", -1)
    pool = BufferPool(max_buffer=4096)
    ring = RingBuffer(64, pool)
    data: bytes | bytearray = b"s" * 100 if case == "small" else b"L" * 10_000
    if case == "bytearray":
        data = bytearray(data)  # mutable: the caller could change it after
    if case == "not-empty":
        ring.write(b"first")
    ring.write_from(data, 10)  # type: ignore[arg-type]
    assert ring._buf is not data
    assert ring.to_bytes() == (b"first" if case == "not-empty" else b"") + bytes(data[10:])


def test_write_regions_never_hands_out_a_held_reply() -> None:
    ring = RingBuffer(64, BufferPool(max_buffer=4096))
    reply = b"q" * 10_000
    ring.write_from(reply, 0)
    ring.retrieve(100)  # free space now lies before the held bytes
    a1, l1, _, _ = ring.write_regions()
    assert ring._buf is not reply and l1 > 0
    ctypes.memmove(a1, b"new", 3)
    ring.commit(3)
    assert ring.to_bytes() == reply[100:] + b"new" and reply == b"q" * 10_000


# -- large maps kept for the next large frame --------------------------------------------


def keeping_pool(**kwargs: object) -> tuple[BufferPool, list[BufferPool]]:
    """A pool whose ``on_keep`` agrees (as a loop does) and records each call."""
    pool = BufferPool(max_buffer=4096, **kwargs)  # type: ignore[arg-type]
    calls: list[BufferPool] = []
    pool.on_keep = lambda p: calls.append(p) is None
    return pool, calls


def test_a_large_map_given_back_is_kept_and_taken_again_for_a_large_frame() -> None:
    pool, calls = keeping_pool()
    ring = RingBuffer(64, pool)
    ring.reserve(1 << 20, exact=True)
    storage = ring._buf
    assert type(storage) is mmap.mmap
    ring.write(b"x" * 100)
    ring.retrieve_all()  # the frame was cut: its storage goes back, and is kept
    assert calls == [pool] and pool.retained() == 1 << 20 and pool.in_use == 0
    other = RingBuffer(64, pool)
    other.reserve((1 << 20) - 5000, exact=True)  # a frame of about the same size
    assert other._buf is storage and other.capacity == 1 << 20  # no fresh pages
    assert pool.retained() == 0 and pool.in_use == 1 << 20
    other.retrieve_all()
    assert pool.in_use == 0


def test_a_kept_map_is_not_taken_for_a_frame_of_under_half_its_size() -> None:
    pool, _ = keeping_pool()
    ring = RingBuffer(64, pool)
    ring.reserve(1 << 20, exact=True)
    ring.write(b"x")
    ring.retrieve_all()
    small = RingBuffer(64, pool)
    small.reserve(300_000, exact=True)
    assert small._buf is not None and len(small._buf) < 1 << 20
    assert pool.retained() == 1 << 20  # still kept, for a frame it suits


def test_kept_maps_expire_after_keep_seconds_and_stay_under_keep_large() -> None:
    pool, _ = keeping_pool(keep_large=3 << 20, keep_seconds=0.05)
    rings = [RingBuffer(64, pool) for _ in range(4)]
    for ring in rings:  # four frames at once: four maps
        ring.reserve(1 << 20, exact=True)
        ring.write(b"x")
    for ring in rings:  # 4 MiB given back in all: the oldest goes past keep_large
        ring.retrieve_all()
    assert pool.retained() == 3 << 20
    pool.expire()  # not yet: kept less than keep_seconds ago
    assert pool.retained() == 3 << 20
    threading.Event().wait(0.06)
    pool.expire()
    assert pool.retained() == 0


@pytest.mark.parametrize("case", ["no on_keep", "on_keep refuses", "over keep_large"])
def test_a_large_map_is_dropped_when_nothing_would_expire_it(case: str) -> None:
    pool = BufferPool(max_buffer=4096, keep_large=(1 << 19) if case == "over keep_large"
                      else 64 << 20)
    if case == "on_keep refuses":
        pool.on_keep = lambda p: False
    elif case == "over keep_large":
        pool.on_keep = lambda p: True
    ring = RingBuffer(64, pool)
    ring.reserve(1 << 20, exact=True)
    ring.write(b"x")
    ring.retrieve_all()
    assert pool.retained() == 0 and pool.in_use == 0
