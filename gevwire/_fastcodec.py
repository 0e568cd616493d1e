"""A `struct`-based decoder and encoder derived from a construct schema (sans-I/O).

`analyse(schema)` inspects a construct 2.10 schema and, when every node in it is one this
module understands exactly, returns a `FastCodec` whose `decode` returns a value equal to
`schema.parse(frame)` (same types: `Container`, `EnumIntegerString`, `bool`, `bytes`, ...)
and whose `encode` returns `schema.build(value)`; plus a `FrameLayout` telling a framer how
long a frame is from its first bytes. Anything else gives `None`: this module never
guesses, and the caller falls back to construct itself.

Deliberate differences from construct:

- Struct results carry no `_io` entry (construct stores its BytesIO stream there; the
  compiled parser does not; `Container.__eq__` ignores `_`-prefixed keys).
- A VarInt length prefix longer than 10 bytes is malformed (construct has no cap).
- Errors are not construct's: `FastDecodeError` (a gevwire `FrameError`, so a
  `ValueError`) and `FastEncodeError` (a `ValueError`).
"""

from __future__ import annotations

import operator
import struct
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, TypeAlias

import construct  # type: ignore[import-untyped]

from gevwire.errors import FrameError

__all__ = [
    "FastCodec",
    "FastDecodeError",
    "FastEncodeError",
    "FrameLayout",
    "FrameLengthError",
    "analyse",
]

Buffer: TypeAlias = bytes | bytearray | memoryview

MAX_VARINT_BYTES = 10
"""Longest VarInt prefix accepted: 10 bytes hold 70 bits, more than any sane length."""

#: A `FastCodec.cut`: ``(view, limit) -> (frames, bytes used)``.
CutFn: TypeAlias = Callable[[memoryview | bytes, int], tuple[list[Any], int]]

#: A cutter given a memoryview copies it to bytes once when it is at most this long and
#: its first frame's payload at most COPY_ONCE_FRAME bytes: then each payload is one
#: bytes slice, instead of a memoryview slice and its copy per frame (measured -8% to
#: -17% per frame up to 8 x 2 KiB frames; copying more costs more).
COPY_ONCE_READ = 16384
COPY_ONCE_FRAME = 2048


# The one loop that cuts frames made of a fixed header holding the payload's length, then
# the payload: `Prefixed(<int>, GreedyBytes)` (the frame is the payload) and a Struct of
# fixed fields then `Bytes(this.x +- k)` (the frame is `build(header, payload)`).  It is
# written once, here, and specialised per format when the codec is made (as `_builder`
# is), because testing per frame what is fixed per format (is there a builder? can the
# length be negative?) made a 16 B frame's cut 17% dearer (0.144 -> 0.168 us).
# Placeholders: {unpack} reads the header into `raw` for a builder, {size} is the
# header's size, {length} the payload's length (its field plus the adjustment), {bad}
# the checks that stop the cut, {frame} what is appended.
_PREFIX_LOOP = """\
while pos <= last:
    {unpack}
    start = pos + {size}
    pos = start + {length}  # the frame's end: where the next one starts
    if {bad}:
        pos = start - {size}  # incomplete, too large or malformed: decode() says which
        break
    append({frame})
"""

# Around it: a memoryview read is copied to bytes once when it is small (COPY_ONCE_*)
# and its frames are cut as bytes slices; a larger one gives each payload a copy of its
# own; a read of at most `limit` bytes cannot hold a whole frame over it, so that check
# is left out (-0.1 us per 8-frame read).  `most`: the largest payload within it.
_PREFIX_CUT = """\
def cut(view, limit{default}):
    frames = []
    append = frames.append
    n = len(view)
    last = n - {size}  # the last offset where a whole header fits
    pos = 0
    unpack_from = UNPACK_FROM
    if not isinstance(view, bytes):
        if last < 0:
            return frames, 0
        if n > COPY_ONCE_READ or unpack_from(view, 0)[{at}]{plus} > COPY_ONCE_FRAME:
            most = limit - {size}
{copy_each}
            return frames, pos
        view = view.tobytes()
    if n <= limit:
{within_limit}
    else:
        most = limit - {size}
{checked}
    return frames, pos
"""


def prefix_cutter(
    read: Callable[[Buffer, int], tuple[Any, ...]],
    size: int,
    at: int,
    adjust: int,
    signed: bool,
    build: Callable[[Any, bytes], Any] | None = None,
    limit: int | None = None,
) -> CutFn:
    """A `cut` for frames of a `size`-byte header, then a payload of ``header[at] +
    adjust`` bytes, where `read(buf, offset)` unpacks the header.  A frame is the payload
    (``bytes``) or ``build(header, payload)``.  `signed`: the field can be negative.
    `limit`: the default of the cut's own `limit` (then ``cut(view)`` serves as a
    decoder's ``cut_view``).
    """
    plus = f" + {adjust}" if adjust > 0 else f" - {-adjust}" if adjust else ""
    # Without a builder the header is not kept: one store and load less per frame.
    unpack = "" if build is None else "raw = unpack_from(view, pos)"
    length = (f"unpack_from(view, pos)[{at}]" if build is None else f"raw[{at}]") + plus

    def loop(indent: int, frame: str, limited: bool) -> str:
        bad = ["pos > n"]
        if limited:
            bad.append("pos - start > most")
        if signed or adjust < 0:
            bad.append("pos < start")
        text = _PREFIX_LOOP.format(unpack=unpack, size=size, length=length, bad=" or ".join(bad),
                                   frame=frame if build is None else f"build(raw, {frame})")
        return textwrap.indent(text, " " * indent)

    source = _PREFIX_CUT.format(
        default="" if limit is None else f"={int(limit)}", size=size, at=at, plus=plus,
        copy_each=loop(12, "view[start:pos].tobytes()", True),
        within_limit=loop(8, "view[start:pos]", False),
        checked=loop(8, "view[start:pos]", True),
    )
    env: dict[str, Any] = {"UNPACK_FROM": read, "build": build,
                           "COPY_ONCE_READ": COPY_ONCE_READ, "COPY_ONCE_FRAME": COPY_ONCE_FRAME}
    exec(source, env)
    cut: CutFn = env["cut"]
    return cut


class FastDecodeError(FrameError):
    """The bytes are not a valid frame (construct would raise a ConstructError)."""


class FrameLengthError(FastDecodeError):
    """A frame header announces an impossible length (negative, or an overlong VarInt)."""


class FastEncodeError(ValueError):
    """The value cannot be encoded (construct's build would raise)."""


class _DecodeFn(Protocol):
    def __call__(self, data: Buffer, offset: int = 0, end: int | None = None) -> Any: ...


class _FrameLengthFn(Protocol):
    def __call__(self, buf: Buffer, offset: int = 0) -> int: ...


@dataclass(frozen=True, slots=True)
class FrameLayout:
    """Where a frame ends, read from its first bytes.

    `frame_length(buf, offset)` returns the total size of the frame that starts at
    `offset` (header included), or -1 when `buf` holds fewer than the header bytes it
    needs; it raises `FrameLengthError` for an impossible length. It reads only
    `buf[offset:offset + max_header_size]`. `header_size` is the fewest bytes that can
    answer; it equals `max_header_size` except for VarInt prefixes.
    """

    header_size: int
    max_header_size: int
    frame_length: _FrameLengthFn = field(repr=False)


@dataclass(frozen=True, slots=True)
class FastCodec:
    """Fast equivalent of one construct schema.

    `decode(data, offset=0, end=None)` parses the frame `data[offset:end]` (a bytes-like
    object; `end` defaults to `len(data)`) and equals `schema.parse(bytes(data[offset:end]))`,
    raising `FastDecodeError` where construct raises. Like construct, it ignores bytes after
    a frame whose size its header fixes. `encode(value)` equals `schema.build(value)`.
    """

    schema: Any = field(repr=False)
    layout: FrameLayout | None
    fixed_size: int | None
    decode: _DecodeFn = field(repr=False)
    encode: Callable[[Any], bytes] = field(repr=False)
    #: ``cut(view, limit) -> (frames, used)``: decodes every whole frame at the start of
    #: ``view`` whose size is at most ``limit``, stopping at the first one that is
    #: incomplete, too large or malformed (``used``: the bytes of the frames returned).
    #: Frames equal ``decode``'s and never refer to ``view``.  None where the schema has
    #: no single-loop form (then frames are cut with ``layout`` and ``decode``).
    cut: CutFn | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- internals

_Fn: TypeAlias = Callable[[Any], Any]
# Reads an integer at an offset: returns a 1-tuple so `struct.Struct.unpack_from` itself
# can be one (no extra Python frame on the hot path).
_Reader: TypeAlias = Callable[[Buffer, int], tuple[int]]
# A node decoder: (data, pos, end) -> (value, new pos), reading only data[pos:end].
_Dec: TypeAlias = Callable[[Buffer, int, int], tuple[Any, int]]
_Enc: TypeAlias = Callable[[Any], bytes]
# A Struct step: decodes one field or run of fields, appending named values to `out`.
_Step: TypeAlias = Callable[[Buffer, int, int, list[Any]], int]
_EncStep: TypeAlias = Callable[[Any], bytes]

_Container: Any = construct.Container
_EnumInteger: Any = construct.EnumInteger
_NATIVE = "<" if sys.byteorder == "little" else ">"
_INT_CODES = frozenset("BHLQbhlq")
_ALL_CODES = frozenset("BHLQbhlqefd?")
_UNSIGNED = frozenset("BHLQ")  # a length field of another code may read as negative


class _Unsupported(Exception):
    """Raised inside `analyse` for a schema the fast path does not cover."""


def _short(what: str, need: int, have: int) -> FastDecodeError:
    return FastDecodeError(f"{what}: need {need} bytes, {have} available")


def _bad_length(n: int, have: int) -> FastDecodeError:
    if n < 0:
        return FastDecodeError(f"negative length {n}")
    return _short("bytes field", n, have)


@dataclass(slots=True)
class _Piece:
    """One field that lives inside a `struct.Struct` run (fixed size, one struct code)."""

    code: str  # struct code without byte order: "H", "4s", "2x"
    order: str  # "<" or ">"; "" when the code does not depend on byte order
    size: int
    has_raw: bool = True  # False only for "x" padding, which unpacks to nothing
    post: _Fn | None = None  # raw unpacked value -> construct's parsed value
    pre: _Fn | None = None  # value handed to encode -> raw value for struct.pack
    reader: _Reader | None = None  # plain integers only: usable as a length
    const: Any = None  # set for padding: the raw value encode always writes


@dataclass(slots=True)
class _Ref:
    """`Bytes(this.a.b + adj)`: a length read from an earlier integer field."""

    path: tuple[str, ...]
    adj: int


@dataclass(slots=True)
class _Node:
    """A compiled schema node."""

    size: int | None  # fixed size, or None
    dec: _Dec
    enc: _Enc
    piece: _Piece | None = None  # set when the node can join a struct run
    struct: _StructInfo | None = None
    prefix: _PrefixInfo | None = None
    greedy: bool = False
    top: _DecodeFn | None = None  # a specialised top-level decoder, when there is one
    cut: CutFn | None = None  # cuts and decodes whole top-level frames in one loop


@dataclass(slots=True)
class _Field:
    name: str | None
    buildnone: bool
    node: _Node | None  # None for a Bytes(this...) field
    ref: _Ref | None = None
    at: tuple[int, tuple[str, ...]] | None = None  # a ref's index in `out`, then keys
    out_index: int = -1  # position among the Struct's named values


@dataclass(slots=True)
class _StructInfo:
    fields: list[_Field]
    by_name: dict[str, _Field]


@dataclass(slots=True)
class _PrefixInfo:
    reader: _Reader | None  # None for VarInt
    size: int  # prefix size (0 for VarInt)
    adj: int  # subtracted own size when includelength=True


def _none(_: Any) -> None:
    return None


def _constant(value: Any) -> _Fn:
    return lambda _: value


def _compose(first: _Fn | None, second: _Fn | None) -> _Fn | None:
    if first is None:
        return second
    if second is None:
        return first
    f, g = first, second
    return lambda v: g(f(v))


# --------------------------------------------------------------------------- leaves


def _strip(sc: Any) -> Any:
    """Unwrap `Renamed` layers (names matter only to the enclosing Struct)."""
    while type(sc) is construct.Renamed:
        if sc.parsed is not None:
            raise _Unsupported("parsed hook")
        sc = sc.subcon
    if sc.parsed is not None:  # a hook could replace the value; we cannot follow it
        raise _Unsupported("parsed hook")
    return sc


def _int_reader_struct(st: struct.Struct) -> _Reader:
    reader: _Reader = st.unpack_from
    return reader


def _format_field(sc: Any) -> _Piece:
    order, code = sc.fmtstr[0], sc.fmtstr[1]
    if code not in _ALL_CODES:
        raise _Unsupported(sc.fmtstr)
    if order == "=":
        order = _NATIVE  # "=" is standard size, native order: the same bytes as < or >
    size = struct.calcsize(order + code)
    reader = _int_reader_struct(struct.Struct(order + code)) if code in _INT_CODES else None
    return _Piece(code, order if size > 1 else "", size, reader=reader)


def _bytes_integer(sc: Any) -> _Piece:
    n, signed, swapped = sc.length, sc.signed, sc.swapped
    if type(n) is not int or n <= 0 or type(signed) is not bool or type(swapped) is not bool:
        raise _Unsupported("BytesInteger with computed parameters")
    bo: Literal["little", "big"] = "little" if swapped else "big"

    def post(b: bytes) -> int:
        return int.from_bytes(b, bo, signed=signed)

    def pre(v: Any) -> bytes:
        if not isinstance(v, int):
            raise FastEncodeError(f"value {v!r} is not an integer")
        return v.to_bytes(n, bo, signed=signed)  # OverflowError when out of range

    def reader(buf: Buffer, off: int) -> tuple[int]:
        return (int.from_bytes(buf[off : off + n], bo, signed=signed),)

    return _Piece(f"{n}s", "", n, post=post, pre=pre, reader=reader)


def _bytes_fixed(n: int) -> _Piece:
    to_bytes: Any = construct.integer2bytes

    def pre(v: Any) -> bytes:
        # Mirrors Bytes._build: ints become big-endian bytes, bytearray becomes bytes, and
        # the length must match (struct's "Ns" would silently pad or truncate).
        if isinstance(v, int):
            v = to_bytes(v, n)
        elif type(v) is bytearray:
            v = bytes(v)
        if not isinstance(v, bytes) or len(v) != n:
            raise FastEncodeError(f"expected {n} bytes, got {v!r}")
        return v

    return _Piece(f"{n}s", "", n, pre=pre)


class _EnumLookup(dict[Any, Any]):
    """Enum's decmapping; unknown values become EnumInteger, as Enum._decode does."""

    def __missing__(self, v: Any) -> Any:
        return _EnumInteger(v)


def _enum(sc: Any) -> _Piece:
    inner = _strip(sc.subcon)
    base = _leaf(inner)
    if base.reader is None:
        raise _Unsupported("Enum over a non-integer")
    # construct's own EnumIntegerString objects, so decode returns the very same objects;
    # a dict's own __getitem__ keeps the hit path in C (no Python frame per field).
    post = _EnumLookup(sc.decmapping).__getitem__
    encmapping: dict[Any, Any] = sc.encmapping

    def pre(v: Any) -> Any:
        if isinstance(v, int):
            return v
        try:
            return encmapping[v]
        except (KeyError, TypeError):
            raise FastEncodeError(f"no enum mapping for {v!r}") from None

    return replace(base, post=_compose(base.post, post), pre=_compose(pre, base.pre), reader=None)


def _const(sc: Any) -> _Piece:
    inner = _strip(sc.subcon)
    base = _leaf(inner)
    value = sc.value
    if not base.has_raw or base.const is not None:
        raise _Unsupported("Const over padding")
    try:  # construct would fail on every build: leave such a schema to construct
        raw = base.pre(value) if base.pre is not None else value
        struct.pack(base.order + base.code, raw)
    except (struct.error, ValueError, TypeError, OverflowError):
        raise _Unsupported("Const value does not fit its field") from None

    def post(v: Any) -> Any:
        if not v == value:
            raise FastDecodeError(f"expected {value!r}, parsed {v!r}")
        return v  # construct returns the parsed object, not the constant

    def pre(v: Any) -> Any:
        if v not in (None, value):
            raise FastEncodeError(f"expected None or {value!r}, got {v!r}")
        return raw

    return replace(base, post=_compose(base.post, post), pre=pre, reader=None)


def _padding(sc: Any) -> _Piece:
    n, pattern = sc.length, sc.pattern
    if type(n) is not int or n < 0:
        raise _Unsupported("Padded with computed length")
    if pattern == b"\x00":
        return _Piece(f"{n}x", "", n, has_raw=False)
    fill = pattern * n
    return _Piece(f"{n}s", "", n, post=_none, const=fill)


def _leaf(sc: Any) -> _Piece:
    """Compile a fixed-size, non-Struct node into a struct piece."""
    t = type(sc)
    if t is construct.FormatField:
        return _format_field(sc)
    if t is construct.BytesInteger:
        return _bytes_integer(sc)
    if t is type(construct.Flag):
        # Flag parses any nonzero byte as True and builds from truthiness: exactly "?".
        return _Piece("?", "", 1)
    if t is construct.Bytes:
        if type(sc.length) is not int or sc.length < 0:
            raise _Unsupported("Bytes with computed length")
        return _bytes_fixed(sc.length)
    if t is construct.Enum:
        return _enum(sc)
    if t is construct.Const:
        return _const(sc)
    if t is construct.Padded and sc.subcon is construct.Pass:
        return _padding(sc)
    raise _Unsupported(t.__name__)


# --------------------------------------------------------------------------- runs


@dataclass(slots=True)
class _RunItem:
    piece: _Piece
    name: str | None
    buildnone: bool


def _foreign(piece: _Piece, order: str) -> _Piece:
    """Fit a piece of the other byte order into a run: carry it as raw bytes."""
    if piece.order in ("", order):
        return piece
    st = struct.Struct(piece.order + piece.code)

    def unpack(b: bytes) -> Any:
        return st.unpack(b)[0]

    return replace(
        piece,
        code=f"{piece.size}s",
        order="",
        post=_compose(unpack, piece.post),
        pre=_compose(piece.pre, st.pack),
    )


@dataclass(slots=True)
class _Run:
    st: struct.Struct
    size: int
    names: tuple[str, ...]  # named values it yields, in order
    posts: tuple[tuple[int, _Fn], ...]  # (raw index, post)
    keep: tuple[int, ...] | None  # raw indices that are named values; None = all
    plan: tuple[tuple[str | None, bool, _Fn | None], ...]  # encode: (key, buildnone, pre)
    codes: tuple[str, ...] = ()  # each raw value's struct code ("H", "4s", ...)


def _make_run(items: list[_RunItem]) -> _Run:
    order = next((it.piece.order for it in items if it.piece.order), ">")
    fmt = [order]
    names: list[str] = []
    posts: list[tuple[int, _Fn]] = []
    keep: list[int] = []
    plan: list[tuple[str | None, bool, _Fn | None]] = []
    codes: list[str] = []
    off = 0
    for it in items:
        p = it.piece
        if it.name is not None and not p.has_raw:
            # A named Padding shows up as None: carry its bytes so it yields a value.
            p = _Piece(f"{p.size}s", "", p.size, post=_none, const=b"\x00" * p.size)
        if p.const is not None:
            p = replace(p, pre=_constant(p.const))
        p = _foreign(p, order)
        fmt.append(p.code)
        off += p.size
        if not p.has_raw:
            continue
        i = len(plan)
        plan.append((it.name, it.buildnone, p.pre))
        codes.append(p.code)
        if p.post is not None:
            posts.append((i, p.post))
        if it.name is not None:
            keep.append(i)
            names.append(it.name)
    st = struct.Struct("".join(fmt))
    assert st.size == off
    return _Run(
        st,
        off,
        tuple(names),
        tuple(posts),
        None if len(keep) == len(plan) else tuple(keep),
        tuple(plan),
        tuple(codes),
    )


def _run_step(run: _Run) -> _Step:
    unpack_from, size, posts, keep = run.st.unpack_from, run.size, run.posts, run.keep

    def step(data: Buffer, pos: int, end: int, out: list[Any]) -> int:
        npos = pos + size
        if npos > end:
            raise _short("struct fields", size, end - pos)
        raw: Any = unpack_from(data, pos)
        if posts:
            raw = list(raw)
            for i, fn in posts:
                raw[i] = fn(raw[i])
        if keep is not None:
            raw = [raw[i] for i in keep]
        out.extend(raw)
        return npos

    return step


def _run_enc(run: _Run) -> _EncStep:
    pack, plan = run.st.pack, run.plan
    if all(key is not None and not opt and pre is None for key, opt, pre in plan) and plan:
        getter = operator.itemgetter(*(key for key, _, _ in plan))
        if len(plan) == 1:
            return lambda obj: pack(getter(obj))
        return lambda obj: pack(*getter(obj))

    def step(obj: Any) -> bytes:
        args = []
        for key, opt, pre in plan:
            v = obj.get(key) if opt else obj[key]
            if pre is not None:
                v = pre(v)
            args.append(v)
        return pack(*args)

    return step


def _piece_node(piece: _Piece) -> _Node:
    """A lone piece (not inside a Struct): decode and encode one value."""
    size = piece.size
    if not piece.has_raw:  # a bare Padding parses to None and builds zeros
        zeros = b"\x00" * size

        def dec_pad(data: Buffer, pos: int, end: int) -> tuple[Any, int]:
            if pos + size > end:
                raise _short("padding", size, end - pos)
            return None, pos + size

        return _Node(size, dec_pad, lambda obj: zeros, piece=piece)
    run = _make_run([_RunItem(piece, "v", False)])
    unpack_from, pack = run.st.unpack_from, run.st.pack
    post = run.posts[0][1] if run.posts else None
    pre = run.plan[0][2]

    def dec(data: Buffer, pos: int, end: int) -> tuple[Any, int]:
        if pos + size > end:
            raise _short("field", size, end - pos)
        v = unpack_from(data, pos)[0]
        if post is not None:
            v = post(v)
        return v, pos + size

    def enc(obj: Any) -> bytes:
        return pack(obj if pre is None else pre(obj))

    return _Node(size, dec, enc, piece=piece)


# --------------------------------------------------------------------------- bytes


def _as_bytes(v: Any) -> bytes:
    if type(v) is bytearray:
        return bytes(v)
    if not isinstance(v, bytes):
        raise FastEncodeError(f"expected bytes, got {type(v).__name__}")
    return v


def _greedy_node() -> _Node:
    def dec(data: Buffer, pos: int, end: int) -> tuple[Any, int]:
        v = data[pos:end]
        return (v if type(v) is bytes else bytes(v)), end

    return _Node(None, dec, _as_bytes, greedy=True)


def _parse_ref(length: Any) -> _Ref:
    """Accept `this.a[.b...]`, `this.a + k`, `this.a - k`, `k + this.a` (k an int)."""
    if type(length) is construct.expr.Path:
        parts: list[str] = []
        p = length
        while True:
            attrs = vars(p)
            parent = attrs["_Path__parent"]
            if parent is None:
                if attrs["_Path__name"] != "this" or not parts:
                    raise _Unsupported("path not rooted at this")
                return _Ref(tuple(reversed(parts)), 0)
            f = attrs["_Path__field"]
            if type(f) is not str:
                raise _Unsupported("path index")
            parts.append(f)
            p = parent
    if type(length) is construct.expr.BinExpr:
        op, lhs, rhs = length.op, length.lhs, length.rhs
        if op is operator.add and type(lhs) is int:
            lhs, rhs = rhs, lhs
        if op in (operator.add, operator.sub) and type(rhs) is int:
            ref = _parse_ref(lhs)
            return _Ref(ref.path, ref.adj + (rhs if op is operator.add else -rhs))
    raise _Unsupported(f"length {length!r}")


# --------------------------------------------------------------------------- Struct


def _resolve(info: _StructInfo, path: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
    """Check that `path` names an earlier integer field; return where it is in `out`."""
    f = info.by_name.get(path[0])
    if f is None or f.node is None:
        raise _Unsupported(f"this.{'.'.join(path)} is not an earlier field")
    if len(path) == 1:
        if f.node.piece is None or f.node.piece.reader is None:
            raise _Unsupported("length field is not a plain integer")
        return f.out_index, ()
    if f.node.struct is None:
        raise _Unsupported("path through a non-Struct")
    _resolve(f.node.struct, path[1:])
    return f.out_index, path[1:]


def _ref_step(at: tuple[int, tuple[str, ...]], adj: int, named: bool) -> _Step:
    first, rest = at

    def step(data: Buffer, pos: int, end: int, out: list[Any]) -> int:
        v = out[first]
        for k in rest:
            v = v[k]
        n: int = v + adj
        if n < 0:
            raise FastDecodeError(f"negative length {n}")
        stop = pos + n
        if stop > end:
            raise _short("bytes field", n, end - pos)
        if named:
            b = data[pos:stop]
            out.append(b if type(b) is bytes else bytes(b))
        return stop

    return step


def _ref_enc(key: str | None, path: tuple[str, ...], adj: int) -> _EncStep:
    to_bytes: Any = construct.integer2bytes

    def step(obj: Any) -> bytes:
        # Struct._build evaluates `this.x` in a context holding the values given for the
        # earlier fields (integer fields return their input unchanged).
        ctx = obj
        for k in path:
            ctx = ctx[k]
        n = ctx + adj
        v = obj[key]
        if isinstance(v, int):
            v = to_bytes(v, n)
        v = _as_bytes(v)
        if n < 0 or len(v) != n:
            raise FastEncodeError(f"expected {n} bytes, got {len(v)}")
        return v

    return step


def _node_step(node: _Node, named: bool) -> _Step:
    dec = node.dec

    def step(data: Buffer, pos: int, end: int, out: list[Any]) -> int:
        v, pos = dec(data, pos, end)
        if named:
            out.append(v)
        return pos

    return step


def _node_enc(node: _Node, key: str | None, buildnone: bool) -> _EncStep:
    enc = node.enc
    if buildnone:
        return lambda obj: enc(obj.get(key))
    return lambda obj: enc(obj[key])


def _struct(sc: Any) -> _Node:
    fields: list[_Field] = []
    by_name: dict[str, _Field] = {}
    info = _StructInfo(fields, by_name)
    steps: list[_Step] = []
    enc_steps: list[_EncStep] = []
    # What each step is, to spot the common shapes that get a specialised decoder.
    shape: list[_Run | _Field] = []
    names: list[str] = []
    pending: list[_RunItem] = []
    size: int | None = 0

    def flush() -> None:
        if pending:
            run = _make_run(pending)
            steps.append(_run_step(run))
            enc_steps.append(_run_enc(run))
            shape.append(run)
            pending.clear()

    for sub in sc.subcons:
        inner = _strip(sub)
        name = sub.name or None  # Struct itself keys on `sc.name`, skipping falsy names
        if name is not None and (type(name) is not str or name in by_name):
            raise _Unsupported("duplicate or non-str field name")
        f = _Field(name, bool(sub.flagbuildnone), None)
        if type(inner) is construct.Bytes and type(inner.length) is not int:
            f.ref = _parse_ref(inner.length)
            f.at = _resolve(info, f.ref.path)
            flush()
            steps.append(_ref_step(f.at, f.ref.adj, name is not None))
            enc_steps.append(_ref_enc(name, f.ref.path, f.ref.adj))
            shape.append(f)
            size = None
        else:
            f.node = _compile(inner)
            if f.node.piece is not None:
                pending.append(_RunItem(f.node.piece, name, f.buildnone))
            else:
                flush()
                steps.append(_node_step(f.node, name is not None))
                enc_steps.append(_node_enc(f.node, name, f.buildnone))
                shape.append(f)
            size = None if size is None or f.node.size is None else size + f.node.size
        if name is not None:
            f.out_index = len(names)
            names.append(name)
            by_name[name] = f
        fields.append(f)
    flush()
    build = _builder(tuple(names), {}, None)

    def dec(data: Buffer, pos: int, end: int) -> tuple[Any, int]:
        out: list[Any] = []
        for step in steps:
            pos = step(data, pos, end, out)
        return build(out, None), pos

    def enc(obj: Any) -> bytes:
        if obj is None:
            obj = {}
        elif not isinstance(obj, dict):
            raise FastEncodeError(f"expected a dict, got {type(obj).__name__}")
        return b"".join([s(obj) for s in enc_steps])

    node = _Node(size, dec, enc, struct=info)
    fast = _fast_struct(shape)
    if fast is not None:
        node.dec, node.top, node.cut = fast
    return node


def _builder(
    names: tuple[str, ...], posts: dict[int, _Fn], tail: str | None
) -> Callable[[Any, Any], Any]:
    """Make `build(raw, tail_value) -> Container` that sets each key in one straight line.

    Generated source, because CPython builds a dict from `zip(names, values)` slowly: for
    the 5-field header this builder takes ~250 ns where `Container(zip(...))` plus the
    per-field fixes take ~450 ns, and the Container is most of a decode. Only repr()s of
    exact `str` names (always plain literals) and index numbers enter the source.
    """
    env: dict[str, Any] = {"Container": _Container}
    lines = ["def build(r, t):", "    c = Container()"]
    for i, name in enumerate(names):
        assert type(name) is str
        if i in posts:
            env[f"p{i}"] = posts[i]
            lines.append(f"    c[{name!r}] = p{i}(r[{i}])")
        else:
            lines.append(f"    c[{name!r}] = r[{i}]")
    if tail is not None:
        assert type(tail) is str
        lines.append(f"    c[{tail!r}] = t")
    lines.append("    return c")
    exec("\n".join(lines), env)
    build: Callable[[Any, Any], Any] = env["build"]
    return build


def _fast_struct(
    shape: list[_Run | _Field],
) -> tuple[_Dec, _DecodeFn | None, CutFn | None] | None:
    """Decoders for the common shape: one run of fixed fields, then maybe a bytes tail.

    The tail is `Bytes(this.<field of the run> +- k)` or `GreedyBytes`: one unpack, one
    slice, one generated builder call.  Without a tail or with a `Bytes(this.x)` one, the
    frame's size is in its fields too, and a `cut` decodes a whole read's frames in one
    loop (one unpack per frame: the header is not read twice, as framing then parsing
    would).
    """
    if not shape or not isinstance(shape[0], _Run) or shape[0].keep is not None:
        return None
    run = shape[0]
    ref, adj, tail = -1, 0, None
    if len(shape) == 2:
        t = shape[1]
        if not isinstance(t, _Field) or t.name is None:
            return None
        tail = t.name
        if t.at is not None:  # Bytes(this.x): x must be an unprocessed value of the run
            ref, rest = t.at
            assert t.ref is not None
            adj = t.ref.adj
            if rest or ref >= len(run.names) or any(i == ref for i, _ in run.posts):
                return None
        elif t.node is None or not t.node.greedy:
            return None
    elif len(shape) != 1:
        return None
    unpack_from, size = run.st.unpack_from, run.size
    build = _builder(run.names, dict(run.posts), tail)

    if tail is None:

        def dec_fixed(data: Buffer, pos: int, end: int) -> tuple[Any, int]:
            npos = pos + size
            if npos > end:
                raise _short("struct fields", size, end - pos)
            raw = unpack_from(data, pos)
            return build(raw, None), npos

        def top_fixed(data: Buffer, offset: int = 0, end: int | None = None) -> Any:
            if end is None:
                end = len(data)
            if offset + size > end:
                raise _short("struct fields", size, end - offset)
            raw = unpack_from(data, offset)
            return build(raw, None)

        def cut_fixed(view: memoryview | bytes, limit: int) -> tuple[list[Any], int]:
            if size > limit or not size:
                return [], 0
            count = len(view) // size
            frames = [build(unpack_from(view, i * size), None) for i in range(count)]
            return frames, count * size

        return dec_fixed, top_fixed, cut_fixed

    if ref < 0:  # GreedyBytes tail

        def dec_greedy(data: Buffer, pos: int, end: int) -> tuple[Any, int]:
            start = pos + size
            if start > end:
                raise _short("struct fields", size, end - pos)
            raw = unpack_from(data, pos)
            b = data[start:end]
            return build(raw, b if type(b) is bytes else bytes(b)), end

        # No top-level decoder of its own: a schema that ends in GreedyBytes has no frame
        # layout, so a Codec never parses it with `decode` (analyse's wrapper serves).
        return dec_greedy, None, None

    def dec_ref(data: Buffer, pos: int, end: int) -> tuple[Any, int]:
        start = pos + size
        if start > end:
            raise _short("struct fields", size, end - pos)
        raw = unpack_from(data, pos)
        n = raw[ref] + adj
        stop = start + n
        if stop > end or n < 0:
            raise _bad_length(n, end - start)
        b = data[start:stop]
        return build(raw, b if type(b) is bytes else bytes(b)), stop

    # top_ref repeats dec_ref (as top_fixed dec_fixed) rather than calling it: it is
    # FastCodec.decode, the parse of a frame cut alone from the ring, where the call
    # level more costs 10-14% (header8: 0.51 -> 0.58 us; fixed 7 B: 0.29 -> 0.35 us)
    # and +4-5% on a one-frame decode(ring) (3.35 -> 3.53 us).  dec_ref is the nested
    # parse (a VarInt-prefixed struct's cut calls it per frame), so it cannot call
    # top_ref either.
    def top_ref(data: Buffer, offset: int = 0, end: int | None = None) -> Any:
        if end is None:
            end = len(data)
        start = offset + size
        if start > end:
            raise _short("struct fields", size, end - offset)
        raw = unpack_from(data, offset)
        n = raw[ref] + adj
        stop = start + n
        if stop > end or n < 0:
            raise _bad_length(n, end - start)
        b = data[start:stop]
        return build(raw, b if type(b) is bytes else bytes(b))

    cut_ref = prefix_cutter(unpack_from, size, ref, adj, run.codes[ref] not in _UNSIGNED, build)

    return dec_ref, top_ref, cut_ref


# --------------------------------------------------------------------------- Prefixed


def _read_varint(data: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Little-endian base-128, as construct's VarInt; -1 position if `end` comes first."""
    n = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= end:
            return 0, -1
        b = data[pos + i]
        n |= (b & 0x7F) << (7 * i)
        if b < 0x80:
            return n, pos + i + 1
    raise FrameLengthError(f"VarInt longer than {MAX_VARINT_BYTES} bytes")


def _write_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def _prefixed(sc: Any) -> _Node:
    lf = _strip(sc.lengthfield)
    incl = bool(sc.includelength)
    inner = _compile(_strip(sc.subcon))
    idec, ienc = inner.dec, inner.enc
    if type(lf) is type(construct.VarInt):
        if incl:
            raise _Unsupported("VarInt has no size to include")  # construct raises too
        info = _PrefixInfo(None, 0, 0)

        def dec(data: Buffer, pos: int, end: int) -> tuple[Any, int]:
            n, start = _read_varint(data, pos, end)
            if start < 0:
                raise FastDecodeError("truncated VarInt prefix")
            stop = start + n
            if stop > end:
                raise _short("prefixed body", n, end - start)
            if inner.greedy:
                v = data[start:stop]
                return (v if type(v) is bytes else bytes(v)), stop
            return idec(data, start, stop)[0], stop

        def enc(obj: Any) -> bytes:
            body = ienc(obj)
            return _write_varint(len(body)) + body

        greedy = inner.greedy

        def cut(view: memoryview | bytes, limit: int) -> tuple[list[Any], int]:
            frames: list[Any] = []
            append = frames.append
            n = len(view)
            if not n:
                return frames, 0
            data: Buffer = view
            if isinstance(view, memoryview) and n <= COPY_ONCE_READ:
                first = view[0] if view[0] < 0x80 else _read_varint(view, 0, n)[0]
                if first <= COPY_ONCE_FRAME:
                    # Small frames: the read copied to bytes once, then bytes slices
                    # (and int indexing without a memoryview in between).
                    data = view.tobytes()
            pos = 0
            while pos < n:
                b = data[pos]
                if b < 0x80:  # a one-byte length, the common case, read inline
                    length, start = b, pos + 1
                elif pos + 1 < n and data[pos + 1] < 0x80:  # two bytes (128 B - 16 KiB)
                    length, start = (b & 0x7F) | data[pos + 1] << 7, pos + 2
                else:
                    length, start = _read_varint(data, pos, n)
                    if start < 0:
                        break  # the prefix itself is incomplete
                stop = start + length
                if stop > n or stop - pos > limit:
                    break
                if greedy:
                    v = data[start:stop]
                    append(v if type(v) is bytes else bytes(v))
                else:
                    append(idec(data, start, stop)[0])
                pos = stop
            return frames, pos

        return _Node(None, dec, enc, prefix=info, cut=cut)

    piece = _leaf(lf)
    if piece.reader is None:
        raise _Unsupported("Prefixed length is not an integer")
    read, ps = piece.reader, piece.size
    adj = ps if incl else 0
    pack_len = _piece_node(piece).enc
    # A byte string after the length: the one cutting loop, the frames its payloads.
    cut_int = prefix_cutter(read, ps, 0, -adj, piece.code not in _UNSIGNED) if inner.greedy \
        else None

    def dec_int(data: Buffer, pos: int, end: int) -> tuple[Any, int]:
        start = pos + ps
        if start > end:
            raise _short("length prefix", ps, end - pos)
        n = read(data, pos)[0] - adj
        if n < 0:
            raise FastDecodeError(f"negative length {n}")
        stop = start + n
        if stop > end:
            raise _short("prefixed body", n, end - start)
        if inner.greedy:
            v = data[start:stop]
            return (v if type(v) is bytes else bytes(v)), stop
        return idec(data, start, stop)[0], stop

    def enc_int(obj: Any) -> bytes:
        body = ienc(obj)
        return pack_len(len(body) + adj) + body

    return _Node(None, dec_int, enc_int, prefix=_PrefixInfo(read, ps, adj),
                 cut=cut_int)


# --------------------------------------------------------------------------- dispatch


def _compile(sc: Any) -> _Node:
    sc = _strip(sc)
    t = type(sc)
    if t is construct.Struct:
        return _struct(sc)
    if t is construct.Prefixed:
        return _prefixed(sc)
    if t is type(construct.GreedyBytes):
        return _greedy_node()
    return _piece_node(_leaf(sc))


# --------------------------------------------------------------------------- layout


_IntAt: TypeAlias = tuple[_Reader, int, int]  # (reader, absolute offset, width)


def _static_ints(
    fields: list[_Field], base: int, prefix: tuple[str, ...], into: dict[tuple[str, ...], _IntAt]
) -> None:
    """Record the integer fields among fixed-size fields at a known offset, by path."""
    off = base
    for f in fields:
        assert f.node is not None and f.node.size is not None
        if f.name is not None:
            path = (*prefix, f.name)
            if f.node.piece is not None and f.node.piece.reader is not None:
                into[path] = (f.node.piece.reader, off, f.node.piece.size)
            elif f.node.struct is not None:
                _static_ints(f.node.struct.fields, off, path, into)
        off += f.node.size


def _layout(node: _Node) -> FrameLayout | None:
    if node.size is not None:
        size = node.size

        def fixed(buf: Buffer, offset: int = 0) -> int:
            return size

        return FrameLayout(0, 0, fixed)
    fields: list[_Field]
    if node.prefix is not None:
        fields = [_Field(None, False, node)]
    elif node.struct is not None:
        fields = node.struct.fields
    else:
        return None

    ints: dict[tuple[str, ...], _IntAt] = {}
    terms: list[tuple[_Reader, int, int]] = []  # (reader, offset, adjustment)
    base = 0  # bytes of every fixed part, prefixes included
    need = 0  # header bytes the terms read
    off: int | None = 0  # static offset while every field so far had a fixed size
    varint_at: int | None = None
    for f in fields:
        if f.node is not None and f.node.size is not None:
            if off is not None:
                _static_ints([f], off, (), ints)
                off += f.node.size
            base += f.node.size
        elif f.ref is not None:
            found = ints.get(f.ref.path)
            if found is None:
                return None
            reader, at, width = found
            terms.append((reader, at, f.ref.adj))
            need = max(need, at + width)
            off = None
        elif f.node is not None and f.node.prefix is not None and off is not None:
            p = f.node.prefix
            if p.reader is None:
                varint_at = off
            else:
                terms.append((p.reader, off, -p.adj))
                need = max(need, off + p.size)
                base += p.size
            off = None
        else:
            return None
    return _layout_fn(base, need, terms, varint_at)


def _layout_fn(
    base: int, need: int, terms: list[tuple[_Reader, int, int]], varint_at: int | None
) -> FrameLayout:
    if varint_at is None and len(terms) == 1:
        read, at, adj = terms[0]

        def one(buf: Buffer, offset: int = 0) -> int:
            if len(buf) - offset < need:
                return -1
            n = read(buf, offset + at)[0] + adj
            if n < 0:
                raise FrameLengthError(f"negative length {n}")
            return base + n

        return FrameLayout(need, need, one)

    term_tuple = tuple(terms)
    vat = -1 if varint_at is None else varint_at
    header = need if varint_at is None else max(need, varint_at + 1)
    max_header = need if varint_at is None else max(need, varint_at + MAX_VARINT_BYTES)

    def general(buf: Buffer, offset: int = 0) -> int:
        avail = len(buf) - offset
        if avail < header:
            return -1
        total = base
        for read, at, adj in term_tuple:
            n = read(buf, offset + at)[0] + adj
            if n < 0:
                raise FrameLengthError(f"negative length {n}")
            total += n
        if vat >= 0:
            n, stop = _read_varint(buf, offset + vat, offset + avail)
            if stop < 0:
                return -1
            total += stop - offset - vat + n
        return total

    return FrameLayout(header, max_header, general)


# --------------------------------------------------------------------------- public


def analyse(schema: Any) -> FastCodec | None:
    """Derive a `FastCodec` from a construct schema, or None if it is not fully supported."""
    try:
        node = _compile(schema)
    except _Unsupported:
        return None
    dec = node.dec

    def decode(data: Buffer, offset: int = 0, end: int | None = None) -> Any:
        return dec(data, offset, len(data) if end is None else end)[0]

    if node.top is not None:
        decode = node.top

    enc = node.enc

    def encode(value: Any) -> bytes:
        try:
            return enc(value)
        except FastEncodeError:
            raise
        except Exception as e:  # struct.error, KeyError, OverflowError, TypeError, ...
            raise FastEncodeError(f"{type(e).__name__}: {e}") from e

    return FastCodec(schema, _layout(node), node.size, decode, encode, node.cut)
