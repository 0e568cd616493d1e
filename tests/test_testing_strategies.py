"""strategy_for: valid values for every supported construct, dependent lengths drawn
first and capped, Switch keys from the cases, clear refusals, per-path overrides."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zlib
from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest
from construct import len_, this
from hypothesis import given, settings
from hypothesis import strategies as st

from gevwire.testing import UnsupportedConstruct, strategy_for

# One schema per supported construct (and a few combinations that stress the context).
SCHEMAS: dict[str, Any] = {
    "Struct": c.Struct("a" / c.Int8ub, "b" / c.Int16sl, "c" / c.Int24ub, "d" / c.Int64sb),
    "Int": c.Struct("u8" / c.Int8ub, "s32" / c.Int32sl, "u64" / c.Int64ul, "n" / c.Int16un),
    "Float": c.Struct("h" / c.Float16l, "f" / c.Float32b, "d" / c.Float64l),
    "BytesInteger": c.Struct("a" / c.BytesInteger(3, swapped=True),
                             "b" / c.BytesInteger(5, signed=True)),
    "BitsInteger": c.Bitwise(c.Struct("a" / c.BitsInteger(3), "b" / c.BitsInteger(5, signed=True))),
    "Flag": c.Struct("f" / c.Flag, "g" / c.Flag),
    "Enum": c.Struct("k" / c.Enum(c.Int8ub, ping=1, pong=2, data=3)),
    "FlagsEnum": c.Struct("f" / c.FlagsEnum(c.Int16ub, a=1, b=2, c=4, ab=3, high=0x8000)),
    "BitStruct": c.BitStruct("v" / c.Nibble, "f" / c.Flag, "k" / c.Enum(c.BitsInteger(3), x=1, y=6),
                             c.Padding(8), "b" / c.Bytewise(c.Int16ub)),
    "Bytes": c.Struct("b" / c.Bytes(5)),
    "Bytes(this.x)": c.Struct("n" / c.Int32ub, "b" / c.Bytes(this.n)),
    "Bytes(this.x - k)": c.Struct("n" / c.Int16ub, "k" / c.Int8ub, "b" / c.Bytes(this.n - 3)),
    "Bytes(this._.x)": c.Struct(
        "hdr" / c.Struct("magic" / c.Const(b"GW"), "n" / c.Int16ub),
        "body" / c.Bytes(this.hdr.n),
        "inner" / c.Struct("copy" / c.Bytes(this._.hdr.n * 2)),
    ),
    "Prefixed": c.Prefixed(c.Int8ub, c.GreedyBytes),
    "Prefixed(includelength)": c.Prefixed(
        c.Int16ul, c.Struct("s" / c.CString("utf8"), "t" / c.GreedyBytes), includelength=True
    ),
    "Prefixed(VarInt)": c.Prefixed(c.VarInt, c.Struct("a" / c.Int8ub, "b" / c.GreedyBytes)),
    "PrefixedArray": c.Struct(
        "items" / c.PrefixedArray(c.Int8ub, c.Struct("n" / c.Int8ub, "d" / c.Bytes(this.n)))
    ),
    "Array": c.Struct("count" / c.Int32ul, "items" / c.Array(this.count, c.Int16ub)),
    "Array(n)": c.Array(3, c.Struct("x" / c.Int8ub)),
    "GreedyRange": c.Prefixed(c.Int16ub, c.GreedyRange(c.Int32ub)),
    "VarInt": c.Struct("v" / c.VarInt, "z" / c.ZigZag),
    "Switch": c.Struct(
        "kind" / c.Enum(c.Int8ub, ping=1, data=2, other=3),
        "body" / c.Switch(this.kind, {"ping": c.Int32ub, "data": c.PascalString(c.Int8ub, "utf8")}),
    ),
    "Switch(default)": c.Struct(
        "t" / c.Int16ub, "v" / c.Switch(this.t, {1: c.Int8ub, 7: c.Bytes(3)}, default=c.Int32ub)
    ),
    "Const": c.Struct(c.Const(b"MAGIC"), "v" / c.Const(7, c.Int8ub), "w" / c.Int8ub),
    "Checksum": c.Struct(
        "data" / c.Prefixed(c.Int8ub, c.GreedyBytes),
        "crc" / c.Checksum(c.Int32ub, zlib.crc32, this.data),
    ),
    "Rebuild": c.Struct("len" / c.Rebuild(c.Int8ub, len_(this.data)), "data" / c.Bytes(this.len)),
    "Padded": c.Struct("s" / c.Padded(16, c.CString("utf8")), "t" / c.Int8ub),
    "Padding": c.Struct("a" / c.Int8ub, c.Padding(3), "p" / c.Padding(2, pattern=b"\xff")),
    "CString": c.Struct("a" / c.CString("ascii"), "b" / c.CString("utf16"),
                        "c" / c.CString("utf_32_le")),
    "PascalString": c.Struct("s" / c.PascalString(c.VarInt, "utf8"),
                             "t" / c.PascalString(c.Int8ub, "utf_16_le")),
    "PaddedString": c.PaddedString(10, "utf8"),
    "GreedyBytes": c.GreedyBytes,
    "GreedyString": c.GreedyString("latin1"),
    "Optional": c.Struct("a" / c.Int8ub, "b" / c.Optional(c.Int32ub)),
    "If": c.Struct("has" / c.Flag, "x" / c.If(this.has, c.Int16ub),
                   "y" / c.IfThenElse(this.has, c.Int8ub, c.Bytes(2))),
    "Computed": c.Struct("a" / c.Int8ub, "b" / c.Computed(this.a * 2)),
    "Default": c.Struct("a" / c.Default(c.Int8ub, 5)),
    "Hex": c.Struct("a" / c.Hex(c.Int32ub)),
}

STRATEGIES = {name: strategy_for(schema) for name, schema in SCHEMAS.items()}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_values_round_trip(name: str, data: st.DataObject) -> None:
    schema = SCHEMAS[name]
    value = data.draw(STRATEGIES[name])
    built = schema.build(value)
    parsed = schema.parse(built)
    assert parsed == value  # values are what parse returns ...
    assert schema.build(parsed) == built  # ... and rebuild byte for byte


@settings(max_examples=60, deadline=None)
@given(strategy_for(SCHEMAS["Bytes(this.x - k)"], max_size=10))
def test_length_fields_are_drawn_capped(value: Any) -> None:
    assert 3 <= value.n <= 13  # n - 3 in [0, max_size]: not up to 65535
    assert len(value.b) == value.n - 3


@settings(max_examples=60, deadline=None)
@given(strategy_for(c.Struct("count" / c.Int64ub, "items" / c.Array(this.count, c.Int8ub),
                             "rest" / c.GreedyBytes), max_size=12))
def test_counts_and_greedy_parts_are_capped(value: Any) -> None:
    assert value.count <= 3 and len(value["items"]) == value.count  # max_size // 4 items
    assert len(value.rest) <= 12


@settings(max_examples=60, deadline=None)
@given(strategy_for(SCHEMAS["Switch"]))
def test_switch_keys_come_from_its_cases(value: Any) -> None:
    assert value.kind in ("ping", "data")
    assert type(value.kind) is c.EnumIntegerString  # as parse returns it
    assert isinstance(value.body, int if value.kind == "ping" else str)


def test_switch_with_a_default_also_draws_other_keys() -> None:
    seen: set[int] = set()

    @settings(max_examples=100, deadline=None, database=None)
    @given(strategy_for(SCHEMAS["Switch(default)"]))
    def collect(value: Any) -> None:
        seen.add(value.t)

    collect()
    assert {1, 7} <= seen and seen - {1, 7}


@settings(max_examples=40, deadline=None)
@given(strategy_for(SCHEMAS["Checksum"]))
def test_computed_fields_are_filled_in(value: Any) -> None:
    assert value.crc == zlib.crc32(value.data)


@settings(max_examples=40, deadline=None)
@given(strategy_for(SCHEMAS["Rebuild"]))
def test_rebuild_length_is_computed_from_the_data(value: Any) -> None:
    assert value.len == len(value.data) <= 32


def ctx_lambda(ctx: Any) -> int:
    return int(ctx.n)


UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "opaque lambda": (c.Struct("n" / c.Int8ub, "b" / c.Bytes(ctx_lambda)), "b"),
    "Pointer": (c.Struct("p" / c.Pointer(8, c.Int8ub)), "p"),
    "Peek": (c.Struct("p" / c.Peek(c.Int8ub), "q" / c.Int8ub), "p"),
    "Union": (c.Struct("u" / c.Union(0, "a" / c.Int16ub, "b" / c.Int8ub)), "u"),
    "computed Switch key": (
        c.Struct("k" / c.Int8ub, "v" / c.Switch(this.k & 1, {0: c.Int8ub, 1: c.Int16ub})), "v"
    ),
    "custom Adapter": (
        c.Struct("hdr" / c.Struct("x" / c.ExprAdapter(c.Int8ub, lambda o, _: o + 1,
                                                    lambda o, _: o - 1))),
        "hdr.x",
    ),
    "length from a non-integer": (c.Struct("k" / c.Bytes(2), "v" / c.Bytes(this.k)), "k"),
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_constructs_name_their_path(name: str) -> None:
    schema, path = UNSUPPORTED[name]
    with pytest.raises(UnsupportedConstruct) as info:
        strategy_for(schema)
    assert info.value.path == path
    assert f"overrides={{{path!r}" in str(info.value)


def test_overrides_fill_the_gaps() -> None:
    adapter, _ = UNSUPPORTED["custom Adapter"]
    lam, _ = UNSUPPORTED["opaque lambda"]
    switch, _ = UNSUPPORTED["computed Switch key"]
    cases = [
        (adapter, {"hdr.x": st.integers(1, 256)}),
        (lam, {"b": lambda ctx: st.binary(min_size=ctx.n, max_size=ctx.n)}),
        (switch, {"v": lambda ctx: st.integers(0, 255 if ctx.k & 1 == 0 else 65535)}),
        (SCHEMAS["Switch"], {"kind": st.just("ping")}),
    ]
    for schema, overrides in cases:
        round_trips(schema, strategy_for(schema, overrides=overrides))()


def round_trips(schema: Any, values: st.SearchStrategy[Any]) -> Any:
    @settings(max_examples=20, deadline=None, database=None)
    @given(values)
    def check(value: Any) -> None:
        assert schema.parse(schema.build(value)) == value

    return check


def test_unknown_override_paths_are_refused() -> None:
    with pytest.raises(ValueError, match=r"name no field: kidn .*fields: body, kind"):
        strategy_for(SCHEMAS["Switch"], overrides={"kidn": st.just("ping")})


def test_testing_imports_without_hypothesis() -> None:
    # pytest loads the plugin in every run: neither it nor the harness may need
    # hypothesis, which is only a test extra.
    code = textwrap.dedent("""
        import sys
        sys.modules["hypothesis"] = None  # import hypothesis now raises ImportError
        import gevwire.pytest_plugin
        from gevwire.testing import HandlerHarness, BlockingClient, serve, feed
        from gevwire import RawCodec
        assert feed(RawCodec(), [b"ab"]) == [b"ab"]
        try:
            from gevwire.testing import strategy_for
            strategy_for(None)
        except ImportError:
            print("lazy")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "lazy"
