"""Hypothesis strategies from construct schemas: the engine of ``testing.strategy_for``.

The schema is compiled once into *generators*, functions ``(draw, context) -> value``
that draw a value field by field in build order, with a construct-style context
(``Container`` with ``_`` for the parent), so ``this`` expressions, ``If`` conditions,
``Switch`` keys and ``Rebuild`` functions are evaluated exactly as construct would.

Dependencies run backwards from the reader to the field it reads: a ``Bytes(this.n)``,
``Array(this.n, ...)`` or ``Switch(this.kind, ...)`` registers a constraint on the field
``n`` / ``kind`` while compiling, and the integer (enum, flag, bytes) leaf of that field,
compiled earlier, picks its strategy in ``finalize()`` once every constraint is known.
Length constraints invert simple ``this`` arithmetic (``this.len - 3``) so the length
field is drawn already capped; a length read from a ``Rebuild`` field is drawn by the
reader itself and the ``Rebuild`` computes the field afterwards.

Values equal what ``parse`` returns: ``Container`` / ``ListContainer``,
``EnumIntegerString``, ``Rebuild`` / ``Checksum`` / ``Computed`` fields filled in.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FunctionType
from typing import Any, TypeAlias

import construct  # type: ignore[import-untyped]
from construct.expr import Path  # type: ignore[import-untyped]
from construct.lib import bits2bytes, bytes2bits  # type: ignore[import-untyped]
from hypothesis import assume
from hypothesis import strategies as st

from gevwire._testbase import UnsupportedConstruct

__all__ = ["Override", "build_strategy"]

Key: TypeAlias = tuple[str, ...]
#: A generator: draws one value of a node, given the construct context it is built in.
Gen: TypeAlias = Callable[[st.DrawFn, Any], Any]
#: An override: a strategy, or a function of the enclosing context returning one.
Override: TypeAlias = "st.SearchStrategy[Any] | Callable[[Any], st.SearchStrategy[Any]]"

_HARD_LENGTH = 1 << 16  # a length evaluated past this is a schema strategy_for misread

_FORMAT_INTS = {
    "B": (0, (1 << 8) - 1), "b": (-(1 << 7), (1 << 7) - 1),
    "H": (0, (1 << 16) - 1), "h": (-(1 << 15), (1 << 15) - 1),
    "I": (0, (1 << 32) - 1), "i": (-(1 << 31), (1 << 31) - 1),
    "L": (0, (1 << 32) - 1), "l": (-(1 << 31), (1 << 31) - 1),
    "Q": (0, (1 << 64) - 1), "q": (-(1 << 63), (1 << 63) - 1),
}
_FORMAT_FLOATS: dict[str, st.SearchStrategy[float]] = {
    "e": st.floats(width=16, allow_nan=False),
    "f": st.floats(width=32, allow_nan=False),
    "d": st.floats(allow_nan=False),
}
_ONE_BYTE_ENCODINGS = {"ascii": 127, "latin1": 255, "latin_1": 255, "iso8859_1": 255,
                       "iso_8859_1": 255}

_PASS = type(construct.Pass)
_GREEDY_BYTES = type(construct.GreedyBytes)


def _dotted(path: Key) -> str:
    return ".".join(path) if path else "(root)"


def _unsupported(path: Key, why: str) -> UnsupportedConstruct:
    where = _dotted(path)
    hint = f"; pass overrides={{{where!r}: <strategy>}}" if path else ""
    return UnsupportedConstruct(f"{where}: {why}{hint}", path=".".join(path))


def _strip(sc: Any) -> Any:
    while type(sc) is construct.Renamed:
        sc = sc.subcon
    return sc


def _const(value: Any) -> Gen:
    return lambda draw, ctx: value


def _from(strategy: st.SearchStrategy[Any]) -> Gen:
    return lambda draw, ctx: draw(strategy)


# -- this-expressions --------------------------------------------------------------------


def _path_parts(expr: Any) -> list[str] | None:
    """``this.a.b`` → ``["a", "b"]``; None for anything but a plain ``this`` path."""
    parts: list[str] = []
    while isinstance(expr, Path):
        parent = expr._Path__parent
        if parent is None:
            return parts[::-1] if expr._Path__name == "this" else None
        parts.append(expr._Path__field)
        expr = parent
    return None


def _resolve(scope: Key, parts: list[str]) -> Key | None:
    """The field a ``this`` path names, from the context whose key is ``scope``."""
    at = list(scope)
    for i, part in enumerate(parts):
        if part == "_":
            if not at:
                return None
            at.pop()
        elif part == "_root" and i == 0:
            at = []
        elif isinstance(part, str) and not part.startswith("_"):
            at.append(part)
        else:
            return None
    return tuple(at)


def _invert(expr: Any, lo: int, hi: int) -> tuple[list[str], int, int] | None:
    """Solve ``lo <= expr(x) <= hi`` for the one ``this`` path in ``expr``.

    Handles a path alone and ``+ - * //`` with integer constants; None otherwise.
    """
    parts = _path_parts(expr)
    if parts is not None:
        return parts, lo, hi
    if not isinstance(expr, construct.expr.BinExpr):
        return None
    op, lhs, rhs = expr.op, expr.lhs, expr.rhs
    if isinstance(rhs, int) and callable(lhs):
        inner, c, right = lhs, rhs, True
    elif isinstance(lhs, int) and callable(rhs):
        inner, c, right = rhs, lhs, False
    else:
        return None
    if op is operator.add:
        return _invert(inner, lo - c, hi - c)
    if op is operator.sub:
        return _invert(inner, lo + c, hi + c) if right else _invert(inner, c - hi, c - lo)
    if op is operator.mul and c > 0:
        return _invert(inner, -(-lo // c), hi // c)
    if op is operator.floordiv and right and c > 0:
        return _invert(inner, lo * c, hi * c + c - 1)
    return None


# -- the compiler ------------------------------------------------------------------------


@dataclass(slots=True)
class _Constraint:
    """What later constructs need of one field: a value range and/or Switch keys."""

    where: list[Key] = field(default_factory=list)
    lo: int | None = None
    hi: int | None = None
    keys: list[Any] | None = None
    any_key: bool = False


@dataclass(slots=True)
class _Leaf:
    """A field whose strategy may be steered by constraints (set in ``finalize``)."""

    path: Key
    natural: st.SearchStrategy[Any]
    int_range: tuple[int, int] | None
    accept: Callable[[Any], tuple[bool, Any]]
    strategy: st.SearchStrategy[Any] | None = None


def _accept_none(key: Any) -> tuple[bool, Any]:
    return False, None


class _Compiler:
    """Walks a schema once; see the module docstring."""

    def __init__(self, overrides: Mapping[str, Override] | None, max_size: int) -> None:
        self.overrides: dict[str, Override] = dict(overrides or {})
        self.used_overrides: set[str] = set()
        self.paths: set[str] = set()
        self.cap = max_size
        self.max_items = max(1, max_size // 4)
        self.constraints: dict[Key, _Constraint] = {}
        self.leaves: dict[Key, list[_Leaf]] = {}  # several: Switch cases, If branches
        self.computed: dict[Key, int | None] = {}  # Rebuild fields → largest value
        self.settled: set[Key] = set()  # overridden or constant fields: not steerable

    # -- entry -----------------------------------------------------------------------

    def compile(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                cap: int, bits: bool) -> Gen:
        """A generator for node ``sc``.

        ``path``: the display path (override names); ``scope``: the key of the context
        ``this`` refers to; ``key``: this node's field key if it is a field's value (None
        for array items); ``slot``: the key a context created here gets; ``cap``: the
        most bytes or characters for a variable-size part; ``bits``: inside Bitwise.
        """
        if path:
            dotted = ".".join(path)
            self.paths.add(dotted)
            if dotted in self.overrides:
                self.used_overrides.add(dotted)
                if key is not None:
                    self.settled.add(key)
                return self._override(self.overrides[dotted])
        sc = _strip(sc)
        for kind, method in _DISPATCH:
            if isinstance(sc, kind):
                gen: Gen = method(self, sc, path, scope, key, slot, cap, bits)
                return gen
        if isinstance(sc, construct.Adapter):
            raise _unsupported(path, f"custom Adapter {type(sc).__name__}")
        raise _unsupported(path, f"{type(sc).__name__} is not supported")

    def _override(self, value: Override) -> Gen:
        if isinstance(value, st.SearchStrategy):
            return _from(value)
        fn = value

        def gen(draw: st.DrawFn, ctx: Any) -> Any:
            return draw(fn(ctx))

        return gen

    def finalize(self) -> None:
        """Give every steered leaf its strategy; refuse constraints nothing can honour."""
        for key, leaves in self.leaves.items():
            c = self.constraints.get(key)
            for leaf in leaves:
                leaf.strategy = leaf.natural if c is None else self._steer(leaf, c)
        for key, c in self.constraints.items():
            if key in self.leaves or key in self.settled or key in self.computed:
                continue
            raise _unsupported(
                c.where[0],
                f"it depends on field {'.'.join(key)!r}, which strategy_for cannot steer "
                "(not an integer, enum, flag or bytes field drawn before it)",
            )

    def _steer(self, leaf: _Leaf, c: _Constraint) -> st.SearchStrategy[Any]:
        where = ", ".join(_dotted(w) for w in c.where)
        if c.keys is not None:
            valid = []
            for k in c.keys:
                ok, value = leaf.accept(k)
                if ok and (c.lo is None or c.lo <= value) and (c.hi is None or value <= c.hi):
                    valid.append(value)
            if not valid:
                raise _unsupported(leaf.path, f"no case key of {where} fits this field")
            keyed = st.sampled_from(valid)
            return st.one_of(keyed, leaf.natural) if c.any_key else keyed
        if leaf.int_range is None:
            raise _unsupported(leaf.path, f"{where} reads it as a length, but it is not an "
                                          "integer")
        lo, hi = leaf.int_range
        lo = max(lo, c.lo if c.lo is not None else lo)
        hi = min(hi, c.hi if c.hi is not None else hi)
        if lo > hi:
            raise _unsupported(leaf.path, f"no value gives {where} a length in range")
        return st.integers(lo, hi)

    def _leaf(self, path: Key, key: Key | None, natural: st.SearchStrategy[Any],
              int_range: tuple[int, int] | None = None,
              accept: Callable[[Any], tuple[bool, Any]] = _accept_none) -> Gen:
        if key is None:
            return _from(natural)
        leaf = _Leaf(path, natural, int_range, accept)
        self.leaves.setdefault(key, []).append(leaf)

        def gen(draw: st.DrawFn, ctx: Any) -> Any:
            assert leaf.strategy is not None
            return draw(leaf.strategy)

        return gen

    def _constrain(self, target: Key, where: Key) -> _Constraint:
        c = self.constraints.setdefault(target, _Constraint())
        c.where.append(where)
        return c

    def _length(self, expr: Any, path: Key, scope: Key, cap: int, what: str
                ) -> tuple[Callable[[Any], int] | None, int]:
        """How a ``Bytes`` / ``Array`` / ``Padded`` length is found.

        ``(evaluate, cap)``: ``evaluate(ctx)`` gives the length, or is None when the
        caller draws the length itself in ``[0, cap]`` (a Rebuild computes the field).
        """
        if not callable(expr):
            n = int(expr)
            return (lambda ctx: n), n
        solved = _invert(expr, 0, cap)
        if solved is None:
            shown = f"function {expr.__name__}" if isinstance(expr, FunctionType) else repr(expr)
            raise _unsupported(path, f"{what} {shown} is not a this-expression "
                                     "strategy_for can bound (an opaque lambda?)")
        parts, lo, hi = solved
        target = _resolve(scope, parts)
        if target is None:
            raise _unsupported(path, f"{what} {expr!r} names no field")
        if target in self.computed:
            largest = self.computed[target]
            return None, cap if largest is None else max(0, min(cap, largest))
        c = self._constrain(target, path)
        c.lo = lo if c.lo is None else max(c.lo, lo)
        c.hi = hi if c.hi is None else min(c.hi, hi)

        def evaluate(ctx: Any) -> int:
            n = expr(ctx)
            if not 0 <= n <= _HARD_LENGTH:
                raise _unsupported(path, f"{what} {expr!r} evaluated to {n}")
            return int(n)

        return evaluate, cap

    # -- integers and the like ---------------------------------------------------------

    def _int_range(self, sc: Any, path: Key, bits: bool) -> tuple[int, int] | None:
        """The value range of an integer field; None for VarInt (unbounded)."""
        sc = _strip(sc)
        if isinstance(sc, construct.FormatField) and sc.fmtstr[-1] in _FORMAT_INTS:
            if bits:
                raise _unsupported(path, "FormatField inside Bitwise: use BitsInteger")
            return _FORMAT_INTS[sc.fmtstr[-1]]
        if isinstance(sc, (construct.BytesInteger, construct.BitsInteger)):
            if isinstance(sc, construct.BytesInteger) and bits:
                raise _unsupported(path, "BytesInteger inside Bitwise: use BitsInteger")
            if callable(sc.length):
                raise _unsupported(path, f"{type(sc).__name__} of computed length")
            width = sc.length * (1 if isinstance(sc, construct.BitsInteger) else 8)
            if sc.signed:
                return -(1 << (width - 1)), (1 << (width - 1)) - 1
            return 0, (1 << width) - 1
        if isinstance(sc, (construct.VarInt.__class__, construct.ZigZag.__class__)):
            if bits:
                raise _unsupported(path, f"{type(sc).__name__} inside Bitwise")
            return None
        raise _unsupported(path, f"{type(sc).__name__} is not an integer field")

    def _integer(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                 cap: int, bits: bool) -> Gen:
        if isinstance(sc, construct.VarInt.__class__):
            if bits:
                raise _unsupported(path, "VarInt inside Bitwise")
            lo, hi = 0, (1 << 64) - 1
        elif isinstance(sc, construct.ZigZag.__class__):
            if bits:
                raise _unsupported(path, "ZigZag inside Bitwise")
            lo, hi = -(1 << 63), (1 << 63) - 1
        else:
            rng = self._int_range(sc, path, bits)
            assert rng is not None
            lo, hi = rng

        def accept(k: Any) -> tuple[bool, Any]:
            ok = type(k) is int and lo <= k <= hi
            return ok, k

        return self._leaf(path, key, st.integers(lo, hi), (lo, hi), accept)

    def _format(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                cap: int, bits: bool) -> Gen:
        code = sc.fmtstr[-1]
        if code in _FORMAT_INTS:
            return self._integer(sc, path, scope, key, slot, cap, bits)
        if bits:
            raise _unsupported(path, "FormatField inside Bitwise: use BitsInteger")
        if code in _FORMAT_FLOATS:
            return _from(_FORMAT_FLOATS[code])
        if code == "?":
            return self._flag(sc, path, scope, key, slot, cap, bits)
        raise _unsupported(path, f"FormatField {sc.fmtstr!r}")

    def _flag(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
              cap: int, bits: bool) -> Gen:
        def accept(k: Any) -> tuple[bool, Any]:
            return type(k) is bool, k

        return self._leaf(path, key, st.booleans(), None, accept)

    def _enum(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
              cap: int, bits: bool) -> Gen:
        self._int_range(sc.subcon, path, bits)  # validates the subcon
        names = [sc.decmapping[v] for v in sorted(sc.decmapping)]
        if not names:
            raise _unsupported(path, "Enum without names")

        def accept(k: Any) -> tuple[bool, Any]:
            if isinstance(k, str) and k in sc.encmapping:
                return True, sc.decmapping[sc.encmapping[k]]
            return False, None

        return self._leaf(path, key, st.sampled_from(names), None, accept)

    def _flags_enum(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                    cap: int, bits: bool) -> Gen:
        rng = self._int_range(sc.subcon, path, bits)
        flags: dict[str, int] = dict(sc.flags)
        top = rng[1] if rng is not None else (1 << 64) - 1
        names = [n for n, v in flags.items() if 0 <= v <= top]

        def make(chosen: list[str]) -> Any:
            value = 0
            for name in chosen:
                value |= flags[name]
            out = construct.Container()
            out._flagsenum = True
            for name, bit in flags.items():
                out[name] = value & bit == bit
            return out

        return _from(st.lists(st.sampled_from(names), unique=True).map(make) if names
                     else st.just(make([])))

    # -- bytes and strings -------------------------------------------------------------

    def _bytes(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
               cap: int, bits: bool) -> Gen:
        def binary(n_min: int, n_max: int) -> st.SearchStrategy[bytes]:
            if bits:
                return st.lists(st.sampled_from((0, 1)), min_size=n_min,
                                max_size=n_max).map(bytes)
            return st.binary(min_size=n_min, max_size=n_max)

        length, free_cap = self._length(sc.length, path, scope, cap, "Bytes length")
        if not callable(sc.length):
            n = free_cap

            def accept(k: Any) -> tuple[bool, Any]:
                return isinstance(k, bytes) and len(k) == n, k

            return self._leaf(path, key, binary(n, n), None, accept)
        if length is None:
            return _from(binary(0, free_cap))
        evaluate = length

        def gen(draw: st.DrawFn, ctx: Any) -> Any:
            n = evaluate(ctx)
            return draw(binary(n, n))

        return gen

    def _greedy_bytes(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                      cap: int, bits: bool) -> Gen:
        if bits:
            raise _unsupported(path, "GreedyBytes inside Bitwise")
        return _from(st.binary(max_size=cap))

    def _string(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                cap: int, bits: bool) -> Gen:
        if bits:
            raise _unsupported(path, "strings inside Bitwise")
        encoding: str = sc.encoding
        norm = encoding.replace("-", "_").lower()
        per_char = 1 if norm in _ONE_BYTE_ENCODINGS else 4
        if norm in _ONE_BYTE_ENCODINGS:
            alphabet = st.characters(min_codepoint=1, max_codepoint=_ONE_BYTE_ENCODINGS[norm])
        elif norm.startswith(("utf", "u8", "u16", "u32")):
            alphabet = st.characters(exclude_categories=["Cs"], exclude_characters="\0")
        else:
            alphabet = st.characters(codec=encoding, exclude_characters="\0")
        inner = _strip(sc.subcon)

        def text(limit: int) -> st.SearchStrategy[str]:
            return st.text(alphabet, max_size=max(0, min(cap, limit // per_char)))

        if isinstance(inner, _GREEDY_BYTES):  # GreedyString
            return _from(text(cap * per_char))
        if isinstance(inner, construct.NullTerminated) and isinstance(
            _strip(inner.subcon), _GREEDY_BYTES
        ):  # CString
            return _from(text(cap * per_char))
        if isinstance(inner, construct.Prefixed) and isinstance(
            _strip(inner.subcon), _GREEDY_BYTES
        ):  # PascalString
            largest = self._prefix_room(inner, path, bits)
            return _from(text(cap * per_char if largest is None else largest))
        if (isinstance(inner, construct.FixedSized)
                and isinstance(_strip(inner.subcon), construct.NullStripped)
                and not callable(inner.length)):  # PaddedString
            return _from(text(int(inner.length)))
        raise _unsupported(path, f"string of {type(inner).__name__}")

    # -- wrappers ------------------------------------------------------------------------

    def _prefix_room(self, sc: Any, path: Key, bits: bool) -> int | None:
        """The most bytes a Prefixed's length field can announce (None: unbounded)."""
        if bits:
            raise _unsupported(path, "Prefixed inside Bitwise")
        rng = self._int_range(sc.lengthfield, path, bits)
        if rng is None:
            return None
        room: int = rng[1]
        if sc.includelength:
            room -= sc.lengthfield.sizeof()
        return max(0, room)

    def _prefixed(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                  cap: int, bits: bool) -> Gen:
        room = self._prefix_room(sc, path, bits)
        inner_cap = cap if room is None else min(cap, room)
        inner = self.compile(sc.subcon, path, scope, key, slot, inner_cap, bits)
        if room is None or room >= _HARD_LENGTH:
            return inner
        subcon = sc.subcon
        limit = room

        def gen(draw: st.DrawFn, ctx: Any) -> Any:
            value = inner(draw, ctx)
            size = _measure(subcon, value, ctx)
            assume(size is None or size <= limit)
            return value

        return gen

    def _padded(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                cap: int, bits: bool) -> Gen:
        length, n_cap = self._length(sc.length, path, scope, cap, "Padded length")
        if isinstance(_strip(sc.subcon), _PASS):  # Padding(n)
            return _const(None)
        inner = self.compile(sc.subcon, path, scope, key, slot, min(cap, n_cap), bits)
        subcon = sc.subcon
        try:
            static: int | None = subcon.sizeof()
        except Exception:
            static = None
        if static is not None and not callable(sc.length) and static <= n_cap:
            return inner
        if length is None:
            raise _unsupported(path, "Padded length read from a Rebuild field")
        evaluate = length

        def gen(draw: st.DrawFn, ctx: Any) -> Any:
            value = inner(draw, ctx)
            size = _measure(subcon, value, ctx)
            assume(size is None or size <= evaluate(ctx))
            return value

        return gen

    def _transparent(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                     cap: int, bits: bool) -> Gen:
        return self.compile(sc.subcon, path, scope, key, slot, cap, bits)

    def _restream(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                  cap: int, bits: bool) -> Gen:
        decode = sc.decodefunc if isinstance(sc, construct.Transformed) else sc.decoder
        if decode is bytes2bits:
            bits = True
        elif decode is bits2bytes:
            bits = False
        return self.compile(sc.subcon, path, scope, key, slot, cap, bits)

    def _const_node(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                    cap: int, bits: bool) -> Gen:
        if key is not None:
            self.settled.add(key)
        return _const(sc.value)

    def _none(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
              cap: int, bits: bool) -> Gen:
        return _const(None)

    def _computed(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                  cap: int, bits: bool) -> Gen:
        """Rebuild, Computed, Checksum: a value computed from the context.

        As a Struct field it is filled in once the Struct is drawn (see ``_struct``);
        elsewhere it is computed where it stands.
        """
        if isinstance(sc, construct.Rebuild) and key is not None:
            try:
                rng = self._int_range(sc.subcon, path, bits)
            except UnsupportedConstruct:
                rng = None
            self.computed[key] = None if rng is None else rng[1]
        compute = _compute_fn(sc)

        def gen(draw: st.DrawFn, ctx: Any) -> Any:
            try:
                return compute(ctx)
            except Exception as exc:
                raise _unsupported(path, f"cannot compute {type(sc).__name__}: {exc!r}") \
                    from exc

        return gen

    def _optional(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                  cap: int, bits: bool) -> Gen:
        subs = [_strip(s) for s in sc.subcons]
        if len(subs) != 2 or not isinstance(subs[1], _PASS):
            raise _unsupported(path, "Select other than Optional(subcon)")
        inner = self.compile(sc.subcons[0], path, scope, key, slot, cap, bits)
        if subs[0].flagbuildnone:  # builds from None too: None would not read back
            return inner

        def gen(draw: st.DrawFn, ctx: Any) -> Any:
            if draw(st.booleans()):
                return None
            return inner(draw, ctx)

        return gen

    def _if(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
            cap: int, bits: bool) -> Gen:
        then = self.compile(sc.thensubcon, path, scope, key, slot, cap, bits)
        other = self.compile(sc.elsesubcon, path, scope, key, slot, cap, bits)
        cond = sc.condfunc

        def gen(draw: st.DrawFn, ctx: Any) -> Any:
            try:
                yes = construct.evaluate(cond, ctx)
            except Exception as exc:
                raise _unsupported(path, f"cannot evaluate condition {cond!r}: {exc!r}") \
                    from exc
            return then(draw, ctx) if yes else other(draw, ctx)

        return gen

    def _switch(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                cap: int, bits: bool) -> Gen:
        keyfunc = sc.keyfunc
        if callable(keyfunc):
            parts = _path_parts(keyfunc)
            target = None if parts is None else _resolve(scope, parts)
            if target is None or target in self.computed:
                raise _unsupported(path, f"Switch key {keyfunc!r} is computed, not a field")
            c = self._constrain(target, path)
            c.keys = [*(c.keys or []), *sc.cases]
            c.any_key = c.any_key or not isinstance(_strip(sc.default), _PASS)
        cases = {k: self.compile(v, path, scope, key, slot, cap, bits)
                 for k, v in sc.cases.items()}
        default = self.compile(sc.default, path, scope, key, slot, cap, bits)

        def gen(draw: st.DrawFn, ctx: Any) -> Any:
            chosen = cases.get(construct.evaluate(keyfunc, ctx), default)
            return chosen(draw, ctx)

        return gen

    # -- collections -------------------------------------------------------------------

    def _array(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
               cap: int, bits: bool) -> Gen:
        if sc.discard:
            raise _unsupported(path, "Array(discard=True) parses no values")
        count, most = self._length(sc.count, path, scope, self.max_items, "Array count")
        item = self.compile(sc.subcon, path, scope, None, slot, cap, bits)

        def gen(draw: st.DrawFn, ctx: Any) -> Any:
            n = draw(st.integers(0, most)) if count is None else count(ctx)
            out = construct.ListContainer()
            for i in range(n):
                ctx._index = i
                out.append(item(draw, ctx))
            return out

        return gen

    def _greedy_range(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                      cap: int, bits: bool) -> Gen:
        if sc.discard:
            raise _unsupported(path, "GreedyRange(discard=True) parses no values")
        item = self.compile(sc.subcon, path, scope, None, slot, cap, bits)
        most = self.max_items

        def gen(draw: st.DrawFn, ctx: Any) -> Any:
            out = construct.ListContainer()
            for i in range(draw(st.integers(0, most))):
                ctx._index = i
                out.append(item(draw, ctx))
            return out

        return gen

    def _struct(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                cap: int, bits: bool) -> Gen:
        fields: list[tuple[str, Gen, bool]] = []
        for i, sub in enumerate(sc.subcons):
            name = sub.name
            if name is None:
                if not sub.flagbuildnone:
                    raise _unsupported(path, f"unnamed field #{i} ({type(_strip(sub)).__name__})"
                                             " cannot be built from nothing")
                continue  # Const, Padding, ...: construct builds them without a value
            fkey = (*slot, name)
            gen = self.compile(sub, (*path, name), slot, fkey, fkey, cap, bits)
            fields.append((name, gen, isinstance(_strip(sub), _COMPUTED)
                           and ".".join((*path, name)) not in self.used_overrides))

        def struct_gen(draw: st.DrawFn, parent: Any) -> Any:
            ctx = _child_context(parent, sc)
            out = construct.Container()
            later: list[tuple[str, Gen]] = []
            for name, gen, computed in fields:
                if computed:
                    try:
                        value = gen(draw, ctx)
                    except UnsupportedConstruct:
                        later.append((name, gen))  # reads fields drawn after it
                        value = None
                else:
                    value = gen(draw, ctx)
                out[name] = value
                ctx[name] = value
            for name, gen in later:
                out[name] = ctx[name] = gen(draw, ctx)
            return out

        return struct_gen

    def _focused(self, sc: Any, path: Key, scope: Key, key: Key | None, slot: Key,
                 cap: int, bits: bool) -> Gen:
        focus = sc.parsebuildfrom
        if not isinstance(focus, str):
            raise _unsupported(path, "FocusedSeq with a computed focus")
        fields: list[tuple[str, Gen, bool]] = []
        for i, sub in enumerate(sc.subcons):
            name = sub.name
            if name == focus:
                fkey = (*slot, name)
                fields.append((name, self.compile(sub, path, slot, fkey, fkey, cap, bits),
                               False))
            elif not sub.flagbuildnone:
                raise _unsupported(path, f"FocusedSeq field #{i} ({name}) is not built "
                                         "from nothing")
            elif name is not None:
                fkey = (*slot, name)
                fields.append((name, self.compile(sub, (*path, f"<{name}>"), slot, fkey,
                                                  fkey, cap, bits),
                               isinstance(_strip(sub), _COMPUTED)))

        def gen(draw: st.DrawFn, parent: Any) -> Any:
            ctx = _child_context(parent, sc)
            later: list[tuple[str, Gen]] = []
            for name, fgen, computed in fields:
                if computed:
                    try:
                        ctx[name] = fgen(draw, ctx)
                    except UnsupportedConstruct:
                        ctx[name] = None
                        later.append((name, fgen))
                else:
                    ctx[name] = fgen(draw, ctx)
            for name, fgen in later:
                ctx[name] = fgen(draw, ctx)
            return ctx[focus]

        return gen


_COMPUTED = (construct.Rebuild, construct.Computed, construct.Checksum)


def _compute_fn(sc: Any) -> Callable[[Any], Any]:
    if isinstance(sc, construct.Checksum):
        return lambda ctx: sc.hashfunc(sc.bytesfunc(ctx))
    return lambda ctx: construct.evaluate(sc.func, ctx)


def _child_context(parent: Any, sc: Any) -> Any:
    """The context construct's Struct / FocusedSeq ``_build`` creates."""
    ctx = construct.Container(
        _=parent, _params=parent.get("_params"), _root=None, _parsing=False,
        _building=True, _sizing=False, _subcons=sc._subcons, _io=None,
        _index=parent.get("_index"),
    )
    ctx._root = parent.get("_root", ctx)
    return ctx


def _measure(sc: Any, value: Any, ctx: Any) -> int | None:
    """How many bytes ``sc`` builds ``value`` into, in context ``ctx`` (None: unknown)."""
    kw = {k: v for k, v in ctx.items()
          if k not in ("_parsing", "_building", "_sizing", "_params", "_io")}
    try:
        return len(sc.build(value, **kw))
    except Exception:
        return None


def _root_context() -> Any:
    ctx = construct.Container(_parsing=False, _building=True, _sizing=False)
    ctx._params = ctx
    return ctx


_Method: TypeAlias = Callable[[_Compiler, Any, Key, Key, "Key | None", Key, int, bool], Gen]
# First match wins: subclasses before their bases (Enum, FlagsEnum and StringEncoded are
# Adapters; everything unlisted is refused by name).
_DISPATCH: list[tuple[Any, _Method]] = [
    (construct.Struct, _Compiler._struct),
    (construct.FocusedSeq, _Compiler._focused),
    (construct.FormatField, _Compiler._format),
    ((construct.BytesInteger, construct.BitsInteger, type(construct.VarInt),
      type(construct.ZigZag)), _Compiler._integer),
    (type(construct.Flag), _Compiler._flag),
    (construct.Enum, _Compiler._enum),
    (construct.FlagsEnum, _Compiler._flags_enum),
    (construct.StringEncoded, _Compiler._string),
    (construct.Bytes, _Compiler._bytes),
    (_GREEDY_BYTES, _Compiler._greedy_bytes),
    (construct.Prefixed, _Compiler._prefixed),
    (construct.Padded, _Compiler._padded),
    (construct.Const, _Compiler._const_node),
    (_COMPUTED, _Compiler._computed),
    ((construct.Default, construct.Hex, construct.HexDump), _Compiler._transparent),
    ((construct.Transformed, construct.Restreamed), _Compiler._restream),
    (construct.Array, _Compiler._array),
    (construct.GreedyRange, _Compiler._greedy_range),
    (construct.Select, _Compiler._optional),
    (construct.IfThenElse, _Compiler._if),
    (construct.Switch, _Compiler._switch),
    ((_PASS, type(construct.Terminated)), _Compiler._none),
]


def build_strategy(schema: Any, overrides: Mapping[str, Override] | None,
                   max_size: int) -> st.SearchStrategy[Any]:
    """See :func:`gevwire.testing.strategy_for`."""
    if max_size < 0:
        raise ValueError("max_size must be >= 0")
    compiler = _Compiler(overrides, max_size)
    gen = compiler.compile(schema, (), (), None, (), max_size, False)
    compiler.finalize()
    unused = set(compiler.overrides) - compiler.used_overrides
    if unused:
        known = ", ".join(sorted(compiler.paths)) or "none"
        raise ValueError(f"overrides name no field: {', '.join(sorted(unused))} "
                         f"(fields: {known})")

    @st.composite
    def values(draw: st.DrawFn) -> Any:
        return gen(draw, _root_context())

    return values()
