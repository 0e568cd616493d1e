"""The ring buffer harness: random operations on a :class:`gevwire.RingBuffer` and on a
``bytearray`` model must agree after every step.

A case's plan is ``{"min_capacity": n, "compact_max": m, "ops": [[name, a, b, c], ...]}``
(``compact_max`` 0, the default, never moves bytes to the front: the ring wraps around
most often); each operation
reads its arguments from the three small integers given the state at that step (so any
list of operations is valid, and shrinking keeps it valid); a third of the writes fill
the ring to within a few bytes of its capacity, so the next one wraps around.  Bytes
written come from the case's data, then from a counter pattern.  The ``readv``
operation fills the ring as a connection does: ``write_regions``, bytes copied to
those addresses, ``commit``, the rest appended with ``write``.  Every ring of a case
shares one private :class:`~gevwire.BufferPool`, so recycled storage (with stale bytes
in it) is part of what is tested.
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING, Any

from fuzzkit.case import Case
from fuzzkit.target import ByteReader, HarnessFailure, Target
from gevwire.ringbuffer import BufferPool, RingBuffer

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["OPS", "RingTarget"]

OPS = ("write", "readv", "reserve", "read", "retrieve", "peek", "contiguous", "unpack",
       "find", "vread", "vflush", "vrevert", "read_regions", "read_all", "reset")
CAPACITIES = (1, 2, 16, 64)
COMPACTS = (0, 3, 8192)  # compact_max values (8192: a connection's)
FORMATS = tuple(struct.Struct(f) for f in (">B", ">H", "<I", ">Q", "3s"))


class _Model:
    """The ring as a plain ``bytearray`` plus a virtual read position."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.vskip = 0

    def retrieve(self, n: int) -> None:
        if n <= 0:
            return
        del self.data[:n]
        self.vskip = 0


class RingTarget(Target):
    name = "ringbuffer"
    about = "RingBuffer operations against a bytearray model"

    def __init__(self, max_ops: int = 40, ring_class: type[RingBuffer] = RingBuffer,
                 name: str = "ringbuffer") -> None:
        self.max_ops = max_ops
        self.ring_class = ring_class
        self.name = name

    # -- running -------------------------------------------------------------------------

    def check(self, case: Case) -> None:
        pool = BufferPool()
        ring = self.ring_class(int(case.plan.get("min_capacity", 16)), pool=pool,
                               compact_max=int(case.plan.get("compact_max", 0)))
        model = _Model()
        source = _Source(case.data)
        for step, op in enumerate(case.plan.get("ops", [])):
            name, a, b, c = op[0], int(op[1]), int(op[2]), int(op[3])
            where = f"step {step} {op!r}"
            before = len(model.data)
            self._apply(ring, model, source, name, a, b, c, where)
            emptied = name == "reset" or (before > 0 and not model.data)
            self._invariants(ring, model, emptied, where)

    @staticmethod
    def _apply(ring: RingBuffer, model: _Model, source: _Source, name: str, a: int,
               b: int, c: int, where: str) -> None:
        data = model.data
        size = len(data)

        def expect(got: Any, want: Any) -> None:
            if got != want:
                raise HarnessFailure(f"{where}: got {got!r}, the model says {want!r}")

        if name in ("write", "readv") and b % 3 == 0:
            a = max(0, ring.free - a % 8)  # (nearly) fill the ring: the next write wraps
        if name == "write":
            chunk = source.take(a)
            expect(ring.write(chunk), len(chunk))
            data += chunk
        elif name == "readv":
            chunk = source.take(a)
            a1, l1, a2, l2 = ring.write_regions()
            if l1 + l2 != ring.free:
                raise HarnessFailure(f"{where}: write_regions {l1}+{l2} bytes, free "
                                     f"{ring.free}")
            room = min(len(chunk), l1 + l2)
            first = min(room, l1)
            if first:
                ctypes.memmove(a1, chunk, first)
            if room > first:
                ctypes.memmove(a2, chunk[first:room], room - first)
            ring.commit(room)
            ring.write(chunk[room:])
            data += chunk
        elif name == "reserve":
            ring.reserve(a)
            if ring.free < a:
                raise HarnessFailure(f"{where}: reserve({a}) left {ring.free} bytes free")
        elif name == "read":
            expect(ring.read(a), bytes(data[:a]))
            model.retrieve(a)
        elif name == "retrieve":
            ring.retrieve(a - b)  # negative counts are a no-op
            model.retrieve(a - b)
        elif name == "peek":
            first_view, second_view = ring.peek(a)
            expect(bytes(first_view) + bytes(second_view), bytes(data[:a]))
        elif name == "contiguous":
            n = a % (size + 1)
            expect(bytes(ring.contiguous(n)), bytes(data[:n]))
        elif name == "unpack":
            fmt = FORMATS[b % len(FORMATS)]
            offset = a % (size + 2)
            if offset + fmt.size > size:
                try:
                    ring.unpack_from(fmt, offset)
                except ValueError:
                    return
                raise HarnessFailure(f"{where}: unpack_from past the end did not raise")
            expect(ring.unpack_from(fmt, offset), fmt.unpack_from(data, offset))
        elif name == "find":
            at = a % (size + 1)
            needle = bytes(data[at : at + b % 5])
            start = c % (size + 3)
            end = None if c & 1 else start + (a % 7) * 3
            limit = size if end is None else min(end, size)
            expect(ring.find(needle, start, end), bytes(data).find(needle, start, limit))
        elif name == "vread":
            got = ring.virtual_read(a)
            n = max(0, min(a, size - model.vskip))
            expect(got, bytes(data[model.vskip : model.vskip + n]))
            model.vskip += n
        elif name == "vflush":
            ring.virtual_flush()
            model.retrieve(model.vskip)
            model.vskip = 0
        elif name == "vrevert":
            ring.virtual_revert()
            model.vskip = 0
        elif name == "read_regions":
            a1, l1, a2, l2 = ring.read_regions()
            got = (ctypes.string_at(a1, l1) if l1 else b"") + (
                ctypes.string_at(a2, l2) if l2 else b"")
            expect(got, bytes(data))
        elif name == "read_all":
            expect(ring.read_all(), bytes(data))
            model.retrieve(size)
        elif name == "reset":
            ring.reset()
            model.retrieve(size)
        else:
            raise ValueError(f"unknown ring operation {name!r}")

    @staticmethod
    def _invariants(ring: RingBuffer, model: _Model, emptied: bool, where: str) -> None:
        size = len(model.data)
        cap = ring.capacity
        problems = []
        if ring.length != size or len(ring) != size or ring.is_empty() != (size == 0):
            problems.append(f"length {ring.length}, the model holds {size}")
        if cap < size or (cap and cap & (cap - 1)) or ring.free != cap - size:
            problems.append(f"capacity {cap}, free {ring.free} for {size} bytes")
        if ring.virtual_length() != size - model.vskip:
            problems.append(f"virtual_length {ring.virtual_length()}, the model says "
                            f"{size - model.vskip}")
        if emptied and cap:  # an idle connection holds no buffers
            problems.append(f"emptied but still holds {cap} bytes of storage")
        held = ring.to_bytes()
        if held != model.data:
            i = next((i for i, (x, y) in enumerate(zip(held, model.data, strict=False))
                      if x != y),
                     min(len(held), size))
            problems.append(f"holds {len(held)} bytes, the model {size}; first difference at "
                            f"{i}: {held[i : i + 8]!r} vs {bytes(model.data[i : i + 8])!r}")
        if problems:
            raise HarnessFailure(f"{where}: " + "; ".join(problems))

    # -- inputs --------------------------------------------------------------------------

    def cases(self) -> SearchStrategy[Case]:
        from hypothesis import strategies as st

        small = st.integers(0, 80)
        # Mostly sizes around the small capacities, so the ring wraps before it grows.
        size = st.one_of(st.integers(0, 24), st.integers(0, 24), st.integers(0, 3000))
        op = st.tuples(st.sampled_from(OPS), size, small, small).map(list)
        return st.builds(
            lambda data, cap, compact, ops: Case(
                data, {"min_capacity": cap, "compact_max": compact, "ops": ops}),
            st.binary(max_size=64),
            st.sampled_from(CAPACITIES),
            st.sampled_from(COMPACTS),
            st.lists(op, max_size=self.max_ops),
        )

    def from_bytes(self, raw: bytes) -> Case:
        """Layout: capacity and compact_max choices (one byte), operation count, then 5
        bytes an operation (name, a as 2 bytes, b, c), then the data."""
        reader = ByteReader(raw)
        choice = reader.byte()
        cap = CAPACITIES[choice % len(CAPACITIES)]
        compact = COMPACTS[choice // len(CAPACITIES) % len(COMPACTS)]
        ops = [[OPS[reader.byte() % len(OPS)], reader.u16() % 4096, reader.byte(),
                reader.byte()] for _ in range(reader.byte() % (self.max_ops + 1))]
        return Case(reader.rest(), {"min_capacity": cap, "compact_max": compact, "ops": ops})

    def to_bytes(self, case: Case) -> bytes:
        plan = case.plan
        cap = int(plan.get("min_capacity", 16))
        compact = int(plan.get("compact_max", 0))
        ops = list(plan.get("ops", []))[: self.max_ops]
        choice = (CAPACITIES.index(cap) if cap in CAPACITIES else 2) + len(CAPACITIES) * (
            COMPACTS.index(compact) if compact in COMPACTS else 0)
        out = bytearray([choice, len(ops)])
        for name, a, b, c in ops:
            out += bytes([OPS.index(name)]) + min(a, 4095).to_bytes(2, "big")
            out += bytes([b & 0xFF, c & 0xFF])
        return bytes(out) + case.data


class _Source:
    """Bytes to write: the case's data, then a counter pattern."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        start = self.pos + len(out)
        self.pos += n
        if len(out) < n:
            skip = start % len(_PATTERN)
            out += (_PATTERN[skip:] + _PATTERN * ((n - len(out)) // len(_PATTERN) + 1))[
                : n - len(out)]
        return out


# Byte i of a ring's input (past the case's data) is _PATTERN[i % 251]: a prime period,
# so bytes misplaced by a power of two never look right.
_PATTERN = bytes((i * 7 + 3) % 251 for i in range(251))
