"""Unit tests for relay.core.filters: parsing, casting at bind time, and Postgres-like matching."""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.filters import (
    MAX_IN_VALUES,
    OPERATORS,
    BoundFilter,
    Condition,
    Filter,
    FilterError,
    normalize_type_name,
    parse_filter,
)


def _quote_operand(text: str) -> str:
    """Quote a scalar operand that holds a comma (``a=eq.{1,2}`` -> ``a=eq."{1,2}"``): commas
    separate conditions, so array and JSON literals with commas travel quoted."""
    column, _, rest = text.partition("=")
    op, _, operand = rest.partition(".")
    if op == "in" or "," not in operand or operand.startswith('"'):
        return text
    return f"{column}={op}." + '"' + operand.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bind(text: str, column_type: str) -> BoundFilter:
    return parse_filter(text).bind(column_type)


def match(text: str, column_type: str, value: Any, column: str | None = None) -> bool:
    bound = bind(text, column_type)
    return bound.matches({column or bound.filter.column: value})


#: Operators whose operand is a value of the column's type (not a pattern or an ``is`` keyword).
VALUE_OPS = ("eq", "neq", "lt", "lte", "gt", "gte", "isdistinct")


# --------------------------------------------------------------------------------------------------
# Parsing


def test_parse_scalar() -> None:
    f = parse_filter("branch_id=eq.7")
    assert f == Filter((Condition("branch_id", "eq", ("7",), "branch_id=eq.7"),), "branch_id=eq.7")
    assert str(f) == "branch_id=eq.7"


@pytest.mark.parametrize("op", [o for o in OPERATORS if o not in ("in", "is")])
def test_parse_every_scalar_operator(op: str) -> None:
    assert parse_filter(f"n={op}.1").op == op
    negated = parse_filter(f"n=not.{op}.1").conditions[0]
    assert (negated.op, negated.negated, negated.values) == (op, True, ("1",))


@pytest.mark.parametrize(
    ("text", "column", "value"),
    [
        ("url=eq.https://x.org/?a=b.c", "url", "https://x.org/?a=b.c"),  # later "=" and "." are value
        ("name=eq.", "name", ""),  # empty operand: the empty string
        ("name=eq. padded ", "name", " padded "),  # kept verbatim
        ("My Col=neq.x", "My Col", "x"),
        ("price=gte.-1.5e3", "price", "-1.5e3"),
    ],
)
def test_parse_scalar_value_is_verbatim(text: str, column: str, value: str) -> None:
    f = parse_filter(text)
    assert (f.column, f.values, f.text) == (column, (value,), text)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("id=in.(1,2,3)", ("1", "2", "3")),
        ("id=in.(1)", ("1",)),
        ("id=in.( 1 , 2 )", ("1", "2")),
        ('status=in.("a,b",c)', ("a,b", "c")),
        ('status=in.("(x)", "y z" ,"")', ("(x)", "y z", "")),
        ('status=in.("say \\"hi\\"","back\\\\slash")', ('say "hi"', "back\\slash")),
        ('status=in.("a(b)",c)', ("a(b)", "c")),
    ],
)
def test_parse_in(text: str, values: tuple[str, ...]) -> None:
    f = parse_filter(text)
    assert f.op == "in"
    assert f.values == values


def test_parse_in_limit() -> None:
    ok = parse_filter("id=in.(" + ",".join(map(str, range(MAX_IN_VALUES))) + ")")
    assert len(ok.values) == MAX_IN_VALUES == 100
    with pytest.raises(FilterError, match=r"too many values in the in list: more than 100"):
        parse_filter("id=in.(" + ",".join(map(str, range(101))) + ")")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("branch_id", 'invalid filter "branch_id": missing "="'),
        ("=eq.1", "empty column name"),
        ("id=eq", 'missing "." after the operator'),
        ("id=", 'missing "." after the operator'),
        (
            "branch_id=foo.7",
            'invalid filter "branch_id=foo.7": unknown operator "foo" '
            "(expected one of eq, neq, lt, lte, gt, gte, in, like, ilike, match, imatch, is, "
            'isdistinct, optionally after "not.")',
        ),
        ("id=EQ.1", 'unknown operator "EQ"'),
        ("id=.1", 'unknown operator ""'),
        ("id=is.nil", '"is" takes null, true, false or unknown, not "nil"'),
        ("id=not.foo.1", 'unknown operator "foo"'),
        ("id=not.not.eq.1", 'unknown operator "not"'),
        ("status=in.(a(b),c)", 'parenthesis in the in list (position 1); quote the value, e.g. "a(b)"'),
        ("id=in.(1,2)x", "unexpected text after the in list"),
        ("a=eq.1,", "empty condition after a comma"),
        ("a=eq.1,,b=eq.2", "empty condition"),
        ("a=eq.1,b", 'missing "=" in "b"'),
        ('a=eq."x', "unterminated quoted value"),
        ('a=eq."x"y', "unexpected text after a quoted value"),
        ("tags=eq.{1,2}", 'missing "=" in "2}"'),  # as upstream: quote it, tags=eq."{1,2}"
        ("id=in.1,2", "the in operator takes a parenthesised list"),
        ("id=in.(1,2", "the in operator takes a parenthesised list"),
        ("id=in.", "the in operator takes a parenthesised list"),
        ("id=in.()", "empty in list"),
        ("id=in.(  )", "empty in list"),
        ("id=in.(1,,2)", "empty value in the in list (position 2)"),
        ("id=in.(1,2,)", "empty value in the in list (position 3)"),
        ('s=in.("a,b)', "unterminated quoted value in the in list (position 1)"),
        ('s=in.(x,"a"b)', "unexpected text after a quoted value in the in list (position 2)"),
        ('s=in.(a"b)', "stray double quote in the in list (position 1)"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(text)
    assert message in str(info.value)
    assert str(info.value).startswith(f'invalid filter "{text}": ')
    assert isinstance(info.value, ValueError)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(FilterError, match="must be a string"):
        parse_filter(7)  # type: ignore[arg-type]


def test_long_filter_is_clipped_in_message() -> None:
    text = "x=in.(" + ",".join(["v"] * 150) + ")"
    with pytest.raises(FilterError) as info:
        parse_filter(text)
    assert "…" in str(info.value)
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------------------------------
# Type names


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("int4", "int4"),
        ("integer", "int4"),
        ("bigint", "int8"),
        ("smallint", "int2"),
        ("numeric(10,2)", "numeric"),
        ("double precision", "float8"),
        ("real", "float4"),
        ("boolean", "bool"),
        ("character varying(20)", "varchar"),
        ("character(3)", "bpchar"),
        ("timestamp with time zone", "timestamptz"),
        ("timestamp(3) with time zone", "timestamptz"),
        ("timestamp without time zone", "timestamp"),
        ("time(0) with time zone", "timetz"),
        ("integer[]", "_int4"),
        ("text[][]", "_text"),
        ("_text", "_text"),
        ("public.mood", "mood"),
        ('"public"."Mood"', "mood"),
        ("extensions.citext", "citext"),
        (" JSONB ", "jsonb"),
    ],
)
def test_normalize_type_name(given: str, expected: str) -> None:
    assert normalize_type_name(given) == expected


def test_bind_reports_normalized_type() -> None:
    assert bind("id=eq.1", "integer").column_type == "int4"
    assert bind("a=eq.{1}", "integer[]").column_type == "_int4"


# --------------------------------------------------------------------------------------------------
# Integers

INT_CASES = [
    ("eq", "7", 7, True),
    ("eq", "7", 8, False),
    ("neq", "7", 8, True),
    ("neq", "7", 7, False),
    ("lt", "7", 6, True),
    ("lt", "7", 7, False),
    ("lte", "7", 7, True),
    ("lte", "7", 8, False),
    ("gt", "7", 8, True),
    ("gt", "7", 7, False),
    ("gte", "7", 7, True),
    ("gte", "7", 6, False),
    ("eq", " -3 ", -3, True),
    ("eq", "+3", 3, True),
]


@pytest.mark.parametrize("typ", ["int2", "int4", "int8", "oid", "integer"])
@pytest.mark.parametrize(("op", "operand", "value", "expected"), INT_CASES)
def test_int_ops(typ: str, op: str, operand: str, value: int, expected: bool) -> None:
    if typ == "oid" and (value < 0 or operand.strip().startswith("-")):
        pytest.skip("oid is unsigned")
    assert match(f"n={op}.{operand}", typ, value) is expected


def test_int8_large_values() -> None:
    big = 2**63 - 1
    assert match(f"n=eq.{big}", "int8", big)
    assert match(f"n=lt.{big}", "int8", big - 1)
    assert not match("n=eq.9007199254740993", "int8", 9007199254740992)  # no float rounding


def test_int_in() -> None:
    f = bind("id=in.(1,2,3)", "int4")
    assert f.operands == (1, 2, 3)
    assert [f.matches({"id": v}) for v in (0, 1, 2, 3, 4)] == [False, True, True, True, False]


def test_int_tolerates_non_int_row_values() -> None:
    f = bind("id=eq.7", "int8")
    assert f.matches({"id": "7"})
    assert f.matches({"id": 7.0})
    assert f.matches({"id": Decimal("7")})
    assert not f.matches({"id": "seven"})
    assert not f.matches({"id": [7]})
    assert bind("id=gt.7", "int8").matches({"id": "8"})
    assert bind("id=in.(7,8)", "int8").matches({"id": "8"})
    assert not bind("id=in.(7,8)", "int8").matches({"id": {"x": 1}})


@pytest.mark.parametrize(
    ("text", "typ", "message"),
    [
        ("id=eq.abc", "int4", 'invalid filter "id=eq.abc": value "abc" is not a valid int4'),
        ("id=eq.1.5", "int4", 'value "1.5" is not a valid int4'),
        ("id=eq.", "int4", 'value "" is not a valid int4'),
        ("id=eq.32768", "int2", "out of range for int2 (-32768..32767)"),
        ("id=eq.2147483648", "int4", "out of range for int4"),
        ("id=eq.9223372036854775808", "int8", "out of range for int8"),
        ("id=eq.-1", "oid", "out of range for oid"),
        ("id=in.(1,x,3)", "int8", 'value "x" (position 2) is not a valid int8'),
        ("id=eq.١٢", "int4", "is not a valid int4"),  # non-ASCII digits: Postgres rejects them too
        ("x=eq.1O", "float8", "is not a valid float8"),
        ("x=eq.1e39", "float4", "out of range for float4"),
        ("x=eq.abc", "numeric", "is not a valid numeric"),
        ("x=eq.maybe", "bool", 'value "maybe" is not a valid bool: expected true or false'),
        ("x=eq.not-a-uuid", "uuid", "is not a valid uuid"),
        ("x=eq.the day before", "timestamptz", "is not a valid timestamptz"),
        ("x=eq.2026-13-01", "date", "is not a valid date"),
        ("x=eq.25:00", "time", "is not a valid time"),
        ("x=eq.24:00:01", "time", "hour 24 is only valid as 24:00:00"),
        ("x=eq.{1,x}", "_int4", 'value "{1,x}" is not a valid int4[]'),
        ('x=eq."1,2"', "_int4", "an array value looks like {1,2,3}"),
        ('x=eq."{1,2"', "_int4", "missing closing }"),
        ("x=eq.{1,2}x", "_int4", "unexpected text after the closing }"),
        ("x=eq.{1,,2}", "_int4", "empty element"),
    ],
)
def test_bind_rejects_bad_values(text: str, typ: str, message: str) -> None:
    text = _quote_operand(text)
    with pytest.raises(FilterError) as info:
        bind(text, typ)
    assert message in str(info.value)
    assert str(info.value).startswith(f'invalid filter "{text}": ')


@pytest.mark.parametrize(
    ("text", "typ", "supported"),
    [
        ("doc=lt.1", "jsonb", "eq, neq, in, is, isdistinct"),
        ("doc=gte.1", "json", "eq, neq, in, is, isdistinct"),
        ("doc=like.1", "json", "eq, neq, in, is, isdistinct"),
        ("tags=gt.{a}", "_text", "eq, neq, is, isdistinct"),
        ("tags=in.({a},{b})", "text[]", "eq, neq, is, isdistinct"),
        ("n=like.1%", "int4", "eq, neq, lt, lte, gt, gte, in, is, isdistinct"),
        ("n=match.1", "numeric", "eq, neq, lt, lte, gt, gte, in, is, isdistinct"),
        ("m=ilike.a%", "mood", "eq, neq, lt, lte, gt, gte, in, is, isdistinct"),  # an enum: unknown
        ("c=like.a%", "bpchar", "eq, neq, lt, lte, gt, gte, in, is, isdistinct"),
    ],
)
def test_bind_rejects_unsupported_operators(text: str, typ: str, supported: str) -> None:
    op = parse_filter(text).op
    with pytest.raises(FilterError) as info:
        bind(text, typ)
    column = parse_filter(text).column
    shown = normalize_type_name(typ)
    shown = shown[1:] + "[]" if shown.startswith("_") else shown
    assert f'operator "{op}" is not supported for column "{column}" of type {shown}' in str(info.value)
    assert f"(supported: {supported})" in str(info.value)


def test_bind_validates_hand_built_filters() -> None:
    with pytest.raises(FilterError, match='unknown operator "likes"'):
        Condition("a", "likes", ("x",), "a=likes.x").bind("text")
    with pytest.raises(FilterError, match="takes exactly one value"):
        Condition("a", "eq", ("x", "y"), "a=eq.x").bind("text")
    with pytest.raises(FilterError, match="an in list takes 1 to 100 values"):
        Condition("a", "in", (), "a=in.()").bind("text")


@pytest.mark.parametrize("value", ["true", "false", "unknown"])
@pytest.mark.parametrize("typ", ["int4", "text", "jsonb", "_bool"])
def test_is_truth_needs_a_bool_column(value: str, typ: str) -> None:
    """Postgres: "argument of IS TRUE must be type boolean"; only is.null applies to any type."""
    with pytest.raises(FilterError, match=f'"is.{value}" is not supported for column "c"'):
        bind(f"c=is.{value}", typ)
    assert bind("c=is.null", typ).matches({"c": None})


# --------------------------------------------------------------------------------------------------
# NULL semantics


@pytest.mark.parametrize("negated", [False, True])
@pytest.mark.parametrize("op", ["eq", "neq", "lt", "lte", "gt", "gte"])
@pytest.mark.parametrize(
    ("typ", "operand"),
    [("int4", "1"), ("text", "a"), ("numeric", "1.5"), ("float8", "1"), ("bool", "true"),
     ("uuid", "70a92ca3-ac46-4db9-a45e-e69f0d452f5b"), ("timestamptz", "2026-01-01T00:00:00Z"),
     ("date", "2026-01-01"), ("mood", "happy")],
)  # fmt: skip
def test_null_and_missing_never_match(op: str, typ: str, operand: str, negated: bool) -> None:
    """NULL compares as unknown, and NOT unknown is unknown: neither form matches."""
    f = bind(f"c={'not.' if negated else ''}{op}.{operand}", typ)
    assert not f.matches({"c": None})
    assert not f.matches({})
    assert not f.matches({"other": 1})


@pytest.mark.parametrize(
    ("typ", "operand"), [("int4", "1"), ("text", "a"), ("jsonb", "1"), ("date", "2026-01-01")]
)
def test_null_never_matches_in(typ: str, operand: str) -> None:
    f = bind(f"c=in.({operand})", typ)
    assert not f.matches({"c": None})
    assert not f.matches({})


@pytest.mark.parametrize(
    ("text", "typ"), [("c=eq.{1}", "_int4"), ("c=neq.{1}", "_int4"), ("c=neq.1", "jsonb")]
)
def test_null_never_matches_arrays_and_json(text: str, typ: str) -> None:
    assert not bind(text, typ).matches({"c": None})
    assert not bind(text, typ).matches({})


# --------------------------------------------------------------------------------------------------
# Numeric and floats


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("n=eq.0.1", 0.1, True),  # float row compared through str, not its binary value
        ("n=eq.0.1", Decimal("0.1"), True),
        ("n=eq.0.10", Decimal("0.1"), True),
        ("n=eq.12.5", Decimal("12.50"), True),
        ("n=eq.1", 1, True),
        ("n=eq.1.0", 1, True),
        ("n=eq.1.000000000000000000001", Decimal("1"), False),
        ("n=neq.0.1", 0.2, True),
        ("n=lt.0.3", 0.1, True),
        ("n=lt.0.3", Decimal("0.3"), False),
        ("n=lte.0.3", Decimal("0.3"), True),
        ("n=gt.100", 101, True),
        ("n=gt.1e2", 100.5, True),
        ("n=gte.-5", Decimal("-5.000"), True),
        ("n=eq.NaN", "NaN", True),  # Postgres: NaN = NaN
        ("n=eq.NaN", Decimal("NaN"), True),
        ("n=gt.999999999", "NaN", True),  # ...and NaN sorts above everything
        ("n=lt.NaN", Decimal("1e300"), True),
        ("n=neq.NaN", 1, True),
        ("n=eq.1", "NaN", False),
        ("n=eq.Infinity", Decimal("Infinity"), True),
        ("n=lt.Infinity", "NaN", False),
        ("n=eq.3.5", "3.50", True),  # a textual row value still casts
        ("n=in.(1.5,2.5)", 2.5, True),
        ("n=in.(1.5,2.5)", Decimal("1.50"), True),
        ("n=in.(1.5,2.5)", 2, False),
        ("n=in.(2,NaN)", "NaN", True),
    ],
)
def test_numeric(text: str, value: Any, expected: bool) -> None:
    assert match(text, "numeric", value) is expected
    assert match(text, "numeric(12,4)", value) is expected


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("f=eq.1.5", 1.5, True),
        ("f=eq.1.5", 1.25, False),
        ("f=eq.2", 2, True),
        ("f=neq.2", 2.5, True),
        ("f=lt.2", 1.99, True),
        ("f=lte.2", 2.0, True),
        ("f=gt.2", 2.0, False),
        ("f=gte.-1e10", -1e10, True),
        ("f=eq.NaN", "NaN", True),
        ("f=eq.NaN", float("nan"), True),
        ("f=gt.Infinity", "NaN", True),
        ("f=eq.Infinity", "Infinity", True),
        ("f=eq.-Infinity", float("-inf"), True),
        ("f=lt.-1e308", "-Infinity", True),
        ("f=eq.1", "NaN", False),
        ("f=neq.1", "NaN", True),
        ("f=in.(1.5,NaN)", "NaN", True),
        ("f=in.(1.5,NaN)", 1.5, True),
        ("f=in.(1.5,NaN)", 2.5, False),
    ],
)
def test_float8(text: str, value: Any, expected: bool) -> None:
    assert match(text, "float8", value) is expected
    assert match(text, "double precision", value) is expected


def test_float4_compares_at_single_precision() -> None:
    # The decoder may print a real as 0.1 or with more digits; both are the same float4.
    assert match("f=eq.0.1", "float4", 0.1)
    assert match("f=eq.0.100000001490116", "float4", 0.1)
    assert match("f=eq.0.1", "float4", 0.10000000149011612)
    assert not match("f=eq.0.1", "float8", 0.10000000149011612)
    assert match("f=lt.0.2", "real", 0.1)


# --------------------------------------------------------------------------------------------------
# Text-like


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("s=eq.abc", "abc", True),
        ("s=eq.abc", "ABC", False),
        ("s=eq.", "", True),
        ("s=neq.abc", "abd", True),
        ("s=neq.abc", "abc", False),
        ("s=lt.b", "a", True),
        ("s=lt.b", "B", True),  # code point order: "B" < "b"
        ("s=gt.b", "ba", True),
        ("s=lte.b", "b", True),
        ("s=gte.b", "a", False),
        ("s=eq.7", "7", True),
        ("s=eq.héllo wörld", "héllo wörld", True),
        ('s=in.("a,b",c)', "a,b", True),
        ('s=in.("a,b",c)', "c", True),
        ('s=in.("a,b",c)', "a", False),
        ('s=in.("(x)")', "(x)", True),
        ('s=in.("")', "", True),
    ],
)
@pytest.mark.parametrize("typ", ["text", "varchar", "character varying(10)", "name"])
def test_text(typ: str, text: str, value: str, expected: bool) -> None:
    assert match(text, typ, value) is expected


def test_bpchar_ignores_trailing_spaces() -> None:
    assert match("c=eq.ab", "bpchar", "ab   ")
    assert match("c=eq.ab  ", "character(5)", "ab   ")
    assert not match("c=eq. ab", "bpchar", "ab   ")
    assert match("c=in.(x,ab)", "bpchar", "ab   ")


def test_citext_is_case_insensitive() -> None:
    assert match("email=eq.Bob@Example.com", "citext", "bob@example.COM")
    assert match("email=in.(ALICE,bob)", "citext", "Bob")
    assert not match("email=neq.BOB", "citext", "bob")


@pytest.mark.parametrize("typ", ["mood", "public.mood", "interval", "inet", "bytea", "USER-DEFINED"])
def test_unknown_types_compare_as_text(typ: str) -> None:
    assert match("c=eq.happy", typ, "happy")
    assert not match("c=eq.happy", typ, "sad")
    assert match("c=neq.happy", typ, "sad")
    assert match("c=in.(sad,happy)", typ, "sad")
    assert match("c=lt.b", typ, "a")  # text order; Postgres would use the type's own order


def test_text_tolerates_non_string_row_values() -> None:
    assert match("c=eq.7", "text", 7)
    assert match("c=eq.true", "mood", True)
    assert not match("c=eq.x", "text", {"x": 1})


# --------------------------------------------------------------------------------------------------
# uuid and bool

UUID = "70a92ca3-ac46-4db9-a45e-e69f0d452f5b"


@pytest.mark.parametrize("operand", [UUID, UUID.upper(), "{" + UUID + "}", UUID.replace("-", "")])
def test_uuid_operand_is_canonicalised(operand: str) -> None:
    f = bind(f"u=eq.{operand}", "uuid")
    assert f.operands == (UUID,)
    assert f.matches({"u": UUID})
    assert not f.matches({"u": "00000000-0000-0000-0000-000000000000"})


def test_uuid_ops() -> None:
    assert match(f"u=neq.{UUID}", "uuid", "00000000-0000-0000-0000-000000000000")
    assert match(f"u=gt.{UUID}", "uuid", "f0000000-0000-0000-0000-000000000000")
    assert match(f"u=lt.{UUID}", "uuid", "00000000-0000-0000-0000-000000000000")
    assert match(f"u=in.(00000000-0000-0000-0000-000000000000,{UUID.upper()})", "uuid", UUID)
    # Row strings are trusted to be canonical (Postgres prints uuids lowercase): one compare, no parse.
    assert not match(f"u=eq.{UUID}", "uuid", UUID.upper())
    assert match(f"u=eq.{UUID}", "uuid", uuid.UUID(UUID))  # non-str values are canonicalised
    assert match(f"u=in.({UUID})", "uuid", uuid.UUID(UUID))


@pytest.mark.parametrize(
    ("operand", "expected"),
    [("true", True), ("TRUE", True), ("t", True), ("1", True), ("yes", True), ("On", True),
     ("false", False), ("F", False), ("0", False), ("no", False), ("off", False)],
)  # fmt: skip
def test_bool_spellings(operand: str, expected: bool) -> None:
    f = bind(f"b=eq.{operand}", "boolean")
    assert f.operands == (expected,)
    assert f.matches({"b": expected})
    assert not f.matches({"b": not expected})


def test_bool_ops() -> None:
    assert match("b=neq.true", "bool", False)
    assert not match("b=neq.true", "bool", True)
    assert match("b=in.(t)", "bool", True)
    assert match("b=gt.false", "bool", True)  # Postgres orders false < true
    assert not match("b=lt.false", "bool", False)
    assert match("b=eq.true", "bool", "t")  # textual row value
    assert not match("b=eq.true", "bool", 1.5)


# --------------------------------------------------------------------------------------------------
# Date and time


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("ts=eq.2026-11-03T09:00:00Z", "2026-11-03T10:00:00+01:00", True),
        ("ts=eq.2026-11-03 09:00:00+00", "2026-11-03T10:00:00+01:00", True),
        ("ts=eq.2026-11-03T09:00:00+00:00", "2026-11-03T04:00:00-05:00", True),
        ("ts=eq.2026-11-03T09:00:00", "2026-11-03T09:00:00+00:00", True),  # no offset: UTC
        ("ts=eq.2026-11-03t09:00:00z", "2026-11-03T09:00:00+00:00", True),
        ("ts=eq.2026-11-03T09:00:00Z", "2026-11-03T09:00:00+01:00", False),
        ("ts=eq.2026-11-03T09:32:55.5Z", "2026-11-03T09:32:55.500000+00:00", True),
        ("ts=eq.2026-11-03T09:32:55.123456Z", "2026-11-03 09:32:55.123456+00", True),  # Postgres' spelling
        ("ts=eq.2026-11-03T09:00:00+05:30", "2026-11-03T03:30:00+00:00", True),
        ("ts=neq.2026-11-03T09:00:00Z", "2026-11-03T10:00:00+01:00", False),
        ("ts=neq.2026-11-03T09:00:00Z", "2026-11-03T10:00:00+00:00", True),
        ("ts=lt.2026-11-03T09:00:00Z", "2026-11-03T09:30:00+01:00", True),
        ("ts=gt.2026-11-03T09:00:00Z", "2026-11-03T09:30:00+01:00", False),
        ("ts=gte.2026-11-03T09:00:00Z", "2026-11-03T10:00:00+01:00", True),
        ("ts=lte.2026-11-03", "2026-11-02T23:59:59.999999+00:00", True),
        ("ts=in.(2026-01-01T00:00:00Z,2026-11-03T09:00:00Z)", "2026-11-03T10:00:00+01:00", True),
        ("ts=in.(2026-01-01T00:00:00Z)", "2026-11-03T10:00:00+01:00", False),
        ("ts=gt.2026-11-03T09:00:00Z", "infinity", True),
        ("ts=lt.-infinity", "2026-11-03T09:00:00Z", False),
        ("ts=eq.infinity", "infinity", True),
        ("ts=lt.2026-11-03T09:00:00Z", "-infinity", True),
        ("ts=eq.2026-11-03T09:00:00Z", "garbage", False),
    ],
)
def test_timestamptz(text: str, value: str, expected: bool) -> None:
    assert match(text, "timestamptz", value) is expected


def test_timestamptz_accepts_datetime_rows() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    f = bind("ts=eq.2026-11-03T09:00:00Z", "timestamptz")
    assert f.matches({"ts": datetime(2026, 11, 3, 10, tzinfo=timezone(timedelta(hours=1)))})
    assert f.matches({"ts": datetime(2026, 11, 3, 9)})
    assert not f.matches({"ts": datetime(2026, 11, 3, 9, 1, tzinfo=UTC)})


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("ts=eq.2026-11-23T13:10:50.275863", "2026-11-23T13:10:50.275863", True),
        ("ts=eq.2026-11-23 13:10:50.275863", "2026-11-23T13:10:50.275863", True),
        ("ts=eq.2026-11-23T13:10:50+05", "2026-11-23T13:10:50", True),  # offset ignored, as in Postgres
        ("ts=lt.2026-11-23T13:10:51", "2026-11-23T13:10:50.275863", True),
        ("ts=gt.2026-11-23", "2026-11-23T00:00:01", True),
        ("ts=neq.2026-11-23T13:10:50", "2026-11-23T13:10:50", False),
        ("ts=in.(2026-11-23T13:10:50,2026-11-24)", "2026-11-24T00:00:00", True),
    ],
)
def test_timestamp(text: str, value: str, expected: bool) -> None:
    assert match(text, "timestamp", value) is expected


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("d=eq.2026-01-02", "2026-01-02", True),
        ("d=eq.2026-01-02", "2026-01-03", False),
        ("d=neq.2026-01-02", "2026-01-03", True),
        ("d=lt.2026-01-02", "2025-12-31", True),
        ("d=lte.2026-01-02", "2026-01-02", True),
        ("d=gt.2026-01-02", "2026-01-02", False),
        ("d=gte.2026-01-02", "2026-02-01", True),
        ("d=in.(2026-01-01,2026-01-02)", "2026-01-02", True),
        ("d=eq.2026-01-02 10:00", "2026-01-02", True),
        ("d=gt.2026-01-02", "infinity", True),
    ],
)
def test_date(text: str, value: str, expected: bool) -> None:
    assert match(text, "date", value) is expected


def test_time_and_timetz() -> None:
    assert match("t=eq.13:10:50", "time", "13:10:50")
    assert match("t=eq.13:10:50.000", "time", "13:10:50")
    assert match("t=lt.13:10:51", "time without time zone", "13:10:50.999")
    assert match("t=gt.23:59:59", "time", "24:00:00")
    assert match("t=eq.24:00", "time", "24:00:00")
    assert match("t=eq.13:00+02", "timetz", "13:00:00+02")
    assert not match("t=eq.10:00+01", "timetz", "09:00:00+00")  # Postgres: same instant, different zone
    assert match("t=gt.10:00+01", "time with time zone", "09:30:00+00")  # 09:30 UTC > 09:00 UTC
    assert not match("t=lt.10:00+01", "timetz", "09:30:00+00")
    assert match("t=lt.10:00+01", "timetz", "08:30:00+00")


# --------------------------------------------------------------------------------------------------
# JSON


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ('doc=eq.{"a":1,"b":[1,2]}', {"b": [1, 2], "a": 1}, True),  # key order does not matter
        ('doc=eq.{"a":1}', {"a": 1.0}, True),  # numbers compare numerically
        ('doc=eq.{"a":1}', {"a": True}, False),  # but true is not 1
        ('doc=eq.{"a":1}', {"a": "1"}, False),
        ('doc=eq.{"a":1}', {"a": 1, "b": None}, False),
        ('doc=eq.{"a":null}', {"a": None}, True),
        ("doc=eq.[1,2]", [1, 2], True),
        ("doc=eq.[1,2]", [2, 1], False),
        ("doc=eq.7", 7, True),
        ("doc=eq.7", "7", False),
        ('doc=eq."7"', 7, True),  # PostgREST quoting: the operand is 7
        ('doc=eq."\\"7\\""', "7", True),  # the JSON string "7", as realtime-js's builder quotes it
        ('doc=eq."\\"7\\""', 7, False),
        ("doc=eq.0.1", 0.1, True),
        ("doc=eq.0.1", Decimal("0.10"), True),
        ("doc=eq.true", True, True),
        ("doc=eq.true", 1, False),
        ("doc=eq.1", True, False),
        ('doc=neq.["active"]', ["inactive"], True),
        ('doc=neq.["active"]', ["active"], False),
        ("doc=neq.[1]", {"x": 1}, True),
        ('doc=in.(1,"\\"x\\"",[2])', "x", True),
        ('doc=in.(1,"\\"x\\"",[2])', 1.0, True),
        ('doc=in.(1,"\\"x\\"",[2])', True, False),
        ('doc=in.("{\\"a\\":1}",2)', {"a": 1}, True),
    ],
)
@pytest.mark.parametrize("typ", ["jsonb", "json"])
def test_json(typ: str, text: str, value: Any, expected: bool) -> None:
    assert match(_quote_operand(text), typ, value) is expected


# --------------------------------------------------------------------------------------------------
# Arrays


@pytest.mark.parametrize(
    ("text", "typ", "value", "expected"),
    [
        ("a=eq.{1,2,3}", "_int4", [1, 2, 3], True),
        ("a=eq.{1,2,3}", "integer[]", [1, 2], False),
        ("a=eq.{ 1 , 2 }", "_int4", [1, 2], True),
        ("a=eq.{}", "_int4", [], True),
        ("a=eq.{1,NULL}", "_int4", [1, None], True),  # array equality treats NULL elements as equal
        ("a=eq.{1,null}", "_int4", [1, 2], False),
        ("a=neq.{1,2}", "_int4", [2, 1], True),
        ("a=neq.{1,2}", "_int8", [1, 2], False),
        ("a=eq.{{1,2},{3,4}}", "_int4", [[1, 2], [3, 4]], True),
        ("a=eq.{{1,2},{3,4}}", "_int4", [1, 2, 3, 4], False),
        ('a=eq.{"a b","c\\"d",NULL}', "_text", ["a b", 'c"d', None], True),
        ('a=eq.{"NULL",x}', "_text", ["NULL", "x"], True),  # quoted NULL is a string
        ('a=eq.{"NULL",x}', "_text", [None, "x"], False),
        ("a=eq.{a\\,b}", "_text", ["a,b"], True),
        ("a=eq.{0.1,2}", "_numeric", [Decimal("0.10"), 2.0], True),
        ("a=eq.{t,false}", "_bool", [True, False], True),
        (f"a=eq.{{{UUID.upper()}}}", "_uuid", [UUID], True),
        ("a=eq.{2026-01-02}", "_date", ["2026-01-02"], True),
        ('a=eq.{"{\\"x\\":1}",2}', "_jsonb", [{"x": 1}, 2], True),
        ('a=eq.{"[1,2]"}', "_jsonb", [[1, 2]], True),  # a list element of jsonb[] is one JSON value
        ("a=eq.{1,2,NULL}", "_int4", "{1,2,NULL}", True),  # row still in Postgres' text form
        ('a=eq.{"a b"}', "_text", '{"a b"}', True),
        ("a=eq.{1}", "_int4", 1, False),
        ("a=eq.{1}", "_int4", ["x"], False),
    ],
)
def test_arrays(text: str, typ: str, value: Any, expected: bool) -> None:
    assert match(_quote_operand(text), typ, value) is expected


# --------------------------------------------------------------------------------------------------
# BoundFilter as a value


def test_bound_filter_equality_and_repr() -> None:
    a = bind("id=eq.7", "int4")
    b = parse_filter("id=eq.7").bind("integer")
    assert a == b
    assert hash(a) == hash(b)
    assert a != bind("id=eq.7", "int8")
    assert "int4" in repr(a)
    assert "id=eq.7" in repr(a)


def test_bound_filter_is_immutable() -> None:
    f = bind("id=eq.7", "int4")
    with pytest.raises(AttributeError):
        f.column_type = "text"  # type: ignore[misc]


def test_in_limit_exactly_100_binds_and_matches() -> None:
    text = "id=in.(" + ",".join(str(i) for i in range(100)) + ")"
    f = bind(text, "int4")
    assert len(f.operands) == 100
    assert f.matches({"id": 99})
    assert not f.matches({"id": 100})


def test_matches_accepts_any_mapping() -> None:
    from types import MappingProxyType

    assert bind("id=eq.7", "int4").matches(MappingProxyType({"id": 7}))


# --------------------------------------------------------------------------------------------------
# Properties

_INT4 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_PY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


@given(op=st.sampled_from(sorted(_PY_OPS)), operand=_INT4, value=_INT4 | st.none())
def test_int_matches_python_operators(op: str, operand: int, value: int | None) -> None:
    f = bind(f"n={op}.{operand}", "int4")
    expected = value is not None and _PY_OPS[op](value, operand)
    assert f.matches({"n": value}) is expected


@given(operands=st.lists(_INT4, min_size=1, max_size=MAX_IN_VALUES), value=_INT4)
def test_int_in_is_membership(operands: list[int], value: int) -> None:
    f = bind("n=in.(" + ",".join(map(str, operands)) + ")", "int8")
    assert f.matches({"n": value}) is (value in operands)


@given(op=st.sampled_from(sorted(_PY_OPS)), operand=st.text(), value=st.text())
def test_text_matches_python_operators(op: str, operand: str, value: str) -> None:
    """Quoted (as realtime-js's builder does for reserved characters), any text is verbatim."""
    f = bind(f"s={op}.{_quote(operand)}", "text")
    assert f.filter.values == (operand,)
    assert f.matches({"s": value}) is _PY_OPS[op](value, operand)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(values=st.lists(st.text(), min_size=1, max_size=MAX_IN_VALUES))
def test_quoted_in_values_round_trip(values: list[str]) -> None:
    f = parse_filter("s=in.(" + ",".join(map(_quote, values)) + ")")
    assert f.values == tuple(values)
    bound = f.bind("text")
    assert all(bound.matches({"s": v}) for v in values)


@given(
    op=st.sampled_from(sorted(_PY_OPS)),
    operand=st.decimals(allow_nan=False, allow_infinity=False, places=3),
    value=st.decimals(allow_nan=False, allow_infinity=False, places=3),
)
def test_numeric_matches_decimal_semantics(op: str, operand: Decimal, value: Decimal) -> None:
    f = bind(f"n={op}.{operand}", "numeric")
    assert f.matches({"n": value}) is _PY_OPS[op](value, operand)
    assert f.matches({"n": str(value)}) is _PY_OPS[op](value, operand)


# --------------------------------------------------------------------------------------------------
# AND filters, quoting, and the PostgREST operators (like, ilike, match, imatch, is, isdistinct, not.)


def test_comma_separated_conditions_are_anded() -> None:
    """Regression: ``value=gte.r_b,value=lte.r_d`` used to bind ``r_b,value=lte.r_d`` as one gte
    operand, so the subscriber received every row above r_b (r_e, r_z...) and none of the range's
    upper half was checked.  Supabase Realtime (PR #1912) reads it as two ANDed conditions."""
    f = parse_filter("value=gte.r_b,value=lte.r_d")
    assert [(c.column, c.op, c.values) for c in f.conditions] == [
        ("value", "gte", ("r_b",)),
        ("value", "lte", ("r_d",)),
    ]
    bound = f.bind("text")
    rows = ["r_a", "r_b", "r_c", "r_d", "r_e", "r_z"]
    assert [v for v in rows if bound.matches({"value": v})] == ["r_b", "r_c", "r_d"]


def test_and_across_columns_and_types() -> None:
    f = parse_filter("id=gt.10, status=not.in.(draft,archived),name=like.a%")
    assert f.columns == ("id", "status", "name")
    bound = f.bind({"id": "int4", "status": "text", "name": "varchar"})
    assert bound.matches({"id": 11, "status": "open", "name": "abc"})
    assert not bound.matches({"id": 10, "status": "open", "name": "abc"})
    assert not bound.matches({"id": 11, "status": "draft", "name": "abc"})
    assert not bound.matches({"id": 11, "status": "open", "name": "bc"})
    assert not bound.matches({"id": 11, "status": None, "name": "abc"})
    with pytest.raises(FilterError, match='column "name" does not exist'):
        f.bind({"id": "int4", "status": "text"})


def test_too_many_conditions() -> None:
    parse_filter(",".join(["a=eq.1"] * 20))
    with pytest.raises(FilterError, match="too many conditions"):
        parse_filter(",".join(["a=eq.1"] * 21))


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ('area=eq."Oslo, Norway"', ("Oslo, Norway",)),
        ("area=eq.Oslo\\, Norway", ("Oslo, Norway",)),  # upstream's escaped comma
        ('s=eq."say \\"hi\\" (a\\\\b)"', ('say "hi" (a\\b)',)),
        ('s=eq." padded "', (" padded ",)),
        ('s=eq.""', ("",)),
        ('s=eq."x" ', ("x",)),
        ('s=eq.a"b', ('a"b',)),  # a quote inside an unquoted value is just a character
        ("s=eq.a(b)", ("a(b)",)),
        ('tags=eq."{\\"a,b\\",c}"', ('{"a,b",c}',)),  # array literals and JSON with commas: quoted
        ('doc=eq."{\\"a\\":[1,2]}"', ('{"a":[1,2]}',)),
        ("tags=eq.{a}", ("{a}",)),
    ],
)
def test_scalar_quoting(text: str, values: tuple[str, ...]) -> None:
    assert parse_filter(text).values == values


def _builder_quote(value: str) -> str:
    """realtime-js 2.109's ``serializeScalar``: quote reserved characters or surrounding spaces."""
    if any(c in value for c in ',()"\\') or value != value.strip():
        return _quote(value)
    return value


@given(values=st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=5))
def test_builder_strings_round_trip(values: list[str]) -> None:
    """Whatever realtime-js's builder produces parses back into the same conditions."""
    text = ",".join(f"c{i}=eq.{_builder_quote(v)}" for i, v in enumerate(values))
    f = parse_filter(text)
    assert [c.values for c in f.conditions] == [(v,) for v in values]


@pytest.mark.parametrize(
    ("text", "typ", "value", "expected"),
    [
        # not. before every operator; NULL stays unknown except for is / isdistinct
        ("c=not.eq.1", "int4", 2, True),
        ("c=not.eq.1", "int4", 1, False),
        ("c=not.neq.1", "int4", 1, True),
        ("c=not.lt.1", "int4", 1, True),
        ("c=not.lte.1", "int4", 1, False),
        ("c=not.gt.1", "int4", 1, True),
        ("c=not.gte.1", "int4", 2, False),
        ("c=not.in.(1,2)", "int4", 3, True),
        ("c=not.in.(1,2)", "int4", 2, False),
        ("c=not.in.(1,2)", "int4", None, False),
        ("c=is.null", "int4", None, True),
        ("c=is.null", "int4", 0, False),
        ("c=not.is.null", "int4", 0, True),
        ("c=not.is.null", "int4", None, False),
        ("c=is.NULL", "text", None, True),
        ("c=is.true", "bool", True, True),
        ("c=is.true", "bool", None, False),
        ("c=not.is.true", "bool", None, True),
        ("c=not.is.true", "bool", False, True),
        ("c=is.false", "bool", False, True),
        ("c=is.unknown", "bool", None, True),
        ("c=is.unknown", "bool", False, False),
        ("c=not.is.unknown", "bool", True, True),
        ("c=isdistinct.1", "int4", 1, False),
        ("c=isdistinct.1", "int4", 2, True),
        ("c=isdistinct.1", "int4", None, True),
        ("c=not.isdistinct.1", "int4", 1, True),
        ("c=not.isdistinct.1", "int4", None, False),
        ('c=isdistinct.{"a":1}', "jsonb", {"a": 1.0}, False),
        ('c=isdistinct."{1,2}"', "_int4", [1, 2], False),
        # like / ilike: % any run, _ one character, \ escapes; anchored at both ends
        ("c=like.a%", "text", "abc", True),
        ("c=like.a%", "text", "Abc", False),
        ("c=like.%b%", "text", "abc", True),
        ("c=like.a_c", "text", "abc", True),
        ("c=like.a_c", "text", "ac", False),
        ("c=like.a\\%", "text", "a%", True),
        ("c=like.a\\%", "text", "ab", False),
        ("c=like.%", "text", "", True),
        ("c=like.", "text", "", True),
        ("c=like.%a%a%b", "text", "a" * 50, False),
        ("c=like.a%", "text", "a\nb", True),
        ("c=not.like.a%", "text", "abc", False),
        ("c=not.like.a%", "text", None, False),
        ("c=ilike.A%", "text", "abc", True),
        ("c=ilike.%T_", "text", "été", True),
        ("c=ilike.%t_", "text", "étÉ", True),
        ("c=like.é%", "text", "éT", True),
        ("c=not.ilike.a%", "text", "ABC", False),
        ("c=like.a%", "citext", "ABC", True),  # citext compares case-insensitively
        ("c=like.a%", "varchar", "abc", True),
        # match / imatch: unanchored POSIX regex, . matches newline, $ is the very end
        ("c=match.b", "text", "abc", True),
        ("c=match.^b", "text", "abc", False),
        ("c=match.^a.c$", "text", "a\nc", True),
        ("c=match.c$", "text", "abc\n", False),
        ('c=match."^[a-c]+\\\\d{2,3}$"', "text", "cab12", True),
        ("c=match.^[^a-c]", "text", "cab", False),
        ("c=match.(cat|dog)s?$", "text", "dogs", True),
        ("c=match.a\\.b", "text", "axb", False),
        ("c=match.B", "text", "abc", False),
        ("c=imatch.B", "text", "abc", True),
        ("c=not.match.b", "text", "abc", False),
        ("c=not.imatch.x", "text", "abc", True),
        ("c=match.b", "citext", "ABC", True),
    ],
)
def test_operators(text: str, typ: str, value: Any, expected: bool) -> None:
    assert match(text, typ, value) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("c=like.a\\", "LIKE pattern must not end with escape character"),
        ("c=match.a\\", "must not end with a backslash"),
        ("c=match.(a+)+", "a quantifier on a group that holds a quantifier or | is not supported"),
        ("c=match.(a|aa)*", "a quantifier on a group that holds a quantifier or | is not supported"),
        ("c=match.[[:alpha:]]", '"[" in a bracket expression'),
        ("c=match.\\1", 'escape "\\1" is not supported'),
        ("c=match.\\mword", 'escape "\\m" is not supported'),
        ("c=match.(?=a)", '"(?" groups other than "(?:" are not supported'),
        ("c=match.a{1000}", "invalid repetition count"),
        ("c=match.a{x", 'a "{" in a regular expression must start a bound'),
        ("c=match.*a", "quantifier operand invalid"),
        ("c=match.(a", "unbalanced ("),
        ("c=match.a)", "unbalanced )"),
        ("c=match.[z-a]", "invalid regular expression"),
        ("c=match.[abc", "unterminated bracket expression"),
        ("c=match.a*b*c*d*e*", "at most 4 unbounded quantifiers"),
        ("c=match.\\w+", '"\\w" is not supported by the relay'),
        ("c=ilike.é%", 'a case-insensitive pattern with "é" is not supported'),
        ("c=imatch.É", 'a case-insensitive pattern with "É" is not supported'),
    ],
)
def test_bad_patterns_are_refused(text: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        bind(text, "text")
    assert message in str(info.value)


@given(op=st.sampled_from(VALUE_OPS), operand=_INT4, value=_INT4 | st.none(), negated=st.booleans())
def test_negation_is_sql_not(op: str, operand: int, value: int | None, negated: bool) -> None:
    """``not.op`` is ``NOT (col op x)``: the complement for values, unknown (no match) for NULL,
    except isdistinct, which is never NULL."""
    plain = bind(f"n={op}.{operand}", "int4").matches({"n": value})
    flipped = bind(f"n=not.{op}.{operand}", "int4").matches({"n": value})
    if value is None and op != "isdistinct":
        assert not plain and not flipped
    else:
        assert flipped is not plain


# --------------------------------------------------------------------------------------------------
# Operands are cast as Postgres casts them


@pytest.mark.parametrize(
    ("text", "typ"),
    [
        ("i=eq.1_000", "int4"),  # Python's int() reads underscores; Postgres 15 does not
        ("i=eq.1_000", "int8"),
        ("n=eq.1_000.5", "numeric"),
        ("n=eq.sNaN", "numeric"),
        ("n=eq.NaN1", "numeric"),
        ("f=eq.1_0", "float8"),
        ("f=eq.1e999", "float8"),  # out of range in Postgres, infinity in Python
        ("f=eq.1e-400", "float8"),  # out of range in Postgres, zero in Python
        ("f=eq.-nan", "float8"),
        ("f=eq.1e-50", "float4"),
        ("j=eq.{nope", "jsonb"),  # not JSON: Postgres refuses the cast
        ("j=eq.nope", "json"),
        ("j=eq.NaN", "jsonb"),
        ("b=eq.o", "bool"),  # ambiguous prefix (on / off)
    ],
)
def test_python_only_spellings_are_refused(text: str, typ: str) -> None:
    with pytest.raises(FilterError, match="is not a valid"):
        bind(text, typ)


@pytest.mark.parametrize(
    ("text", "typ", "value", "expected"),
    [
        ("f=eq.Infinity", "float8", "Infinity", True),
        ("f=eq.-inf", "float8", float("-inf"), True),
        ("f=gt.1e308", "float8", "Infinity", True),
        ("n=eq.Infinity", "numeric", "Infinity", True),
        ("n=lt.NaN", "numeric", "Infinity", True),
        ("b=eq.tr", "bool", True, True),
        ("b=eq.of", "bool", False, True),
        ("t=eq.epoch", "timestamptz", "1970-01-01T00:00:00+00:00", True),
        ("t=eq.epoch", "timestamp", "1970-01-01T00:00:00", True),
        ("t=eq.epoch", "date", "1970-01-01", True),
        ("t=lt.tomorrow", "timestamptz", "2000-01-01T00:00:00+00:00", True),
        ("t=gt.yesterday", "timestamptz", "2000-01-01T00:00:00+00:00", False),
        ("t=lte.today", "date", "2000-01-01", True),
        ("t=gt.now", "timestamp", "2000-01-01T00:00:00", False),
    ],
)
def test_postgres_only_spellings_are_accepted(text: str, typ: str, value: Any, expected: bool) -> None:
    assert match(text, typ, value) is expected


def test_canonical_operands_from_postgres_are_used() -> None:
    """The server has Postgres cast the operands; bind reads Postgres' output, not the raw text."""
    f = parse_filter("t=eq.yesterday,n=in.(1e3, 7)")
    types = {"t": "timestamptz", "n": "int8"}
    assert f.casts(types) == [("timestamptz", "yesterday"), ("int8", "1e3"), ("int8", "7")]
    canonical = {("timestamptz", "yesterday"): "2026-12-05 00:00:00+00", ("int8", "1e3"): "1000"}
    bound = f.bind(types, canonical)
    assert bound.matches({"t": "2026-12-05T00:00:00+00:00", "n": 7})
    assert bound.matches({"t": "2026-12-05T00:00:00+00:00", "n": 1000})
    assert not bound.matches({"t": "2026-12-04T00:00:00+00:00", "n": 7})
    assert parse_filter("t=like.x%,s=is.null").casts({"t": "text", "s": "int4"}) == []
    assert parse_filter("j=eq.1").casts({"j": "jsonb"}) == [("jsonb", "1")]


def _like_reference(pattern: str) -> str:
    """LIKE as a backtracking regex: the obvious translation, fine for short test strings."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return "".join(out)


@given(
    pattern=st.text("ab%_\\", max_size=8).filter(lambda p: not re.search(r"(?<!\\)(\\\\)*\\$", p)),
    value=st.text("ab%_\\", max_size=10),
)
def test_like_agrees_with_a_regex_translation(pattern: str, value: str) -> None:
    """The segment matcher (and its plain-string fast path) answers like a full regex match."""
    expected = re.fullmatch(_like_reference(pattern), value, re.DOTALL) is not None
    assert bind(f"s=like.{_quote(pattern)}", "text").matches({"s": value}) is expected


@pytest.mark.parametrize(
    ("typ", "raw", "canonical"),
    [("date", "4714-11-24 BC", "4714-11-24 BC"), ("timestamp", "10000-01-01", "10000-01-01 00:00:00")],
)
def test_values_postgres_takes_but_the_relay_cannot_compare(typ: str, raw: str, canonical: str) -> None:
    """Refused with a message that says why, rather than silently never matching."""
    f = parse_filter(f"c=eq.{raw}")
    with pytest.raises(FilterError, match=f"of type {typ} is beyond what the relay can compare"):
        f.bind(typ, {(typ, raw): canonical})


def test_deeply_nested_json_is_refused_not_crashing() -> None:
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(FilterError, match="beyond what the relay can compare"):
        bind(f"j=eq.{deep}", "jsonb")
    with pytest.raises(FilterError, match="beyond what the relay can compare"):
        parse_filter(f"j=eq.{deep}").bind("jsonb", {("jsonb", deep): deep})
