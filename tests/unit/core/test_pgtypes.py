"""Unit tests for relay.core.sqltypes output conversion: array literals, timestamps, the type registry."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.sqltypes import (
    BUILTIN_TYPES,
    TypeInfo,
    TypeRegistry,
    commit_timestamp,
    name_from_format_type,
    parse_array,
)
from relay.core.sqltypes.output import timestamptz_json as _timestamptz


# -- parse_array ------------------------------------------------------------------------------
class TestParseArray:
    def test_flat_identity_elements_are_text(self) -> None:
        assert parse_array("{1,2,3}") == ["1", "2", "3"]

    def test_element_converter(self) -> None:
        assert parse_array("{1,2,NULL}", int) == [1, 2, None]

    def test_empty(self) -> None:
        assert parse_array("{}") == []
        assert parse_array("{}", int) == []

    def test_nested(self) -> None:
        assert parse_array("{{1,2},{3,4}}", int) == [[1, 2], [3, 4]]
        assert parse_array("{{{1}},{{2}}}", int) == [[[1]], [[2]]]

    def test_nested_empty_inner(self) -> None:
        assert parse_array("{{},{}}") == [[], []]

    def test_quoted_with_comma_braces_backslash(self) -> None:
        text = r'{"a,b","{x}","back\\slash","quo\"te",plain}'
        assert parse_array(text) == ["a,b", "{x}", "back\\slash", 'quo"te', "plain"]

    def test_null_vs_quoted_null(self) -> None:
        assert parse_array('{NULL,"NULL",null}') == [None, "NULL", "null"]

    def test_quoted_empty_string(self) -> None:
        assert parse_array('{"",a}') == ["", "a"]

    def test_quoted_spaces_kept(self) -> None:
        assert parse_array('{"  a b  "}') == ["  a b  "]

    def test_converter_not_called_for_null(self) -> None:
        calls: list[str] = []

        def conv(s: str) -> str:
            calls.append(s)
            return s.upper()

        assert parse_array("{a,NULL,b}", conv) == ["A", None, "B"]
        assert calls == ["a", "b"]

    def test_dimension_decoration(self) -> None:
        assert parse_array("[0:1]={1,2}", int) == [1, 2]
        assert parse_array("[1:2][1:1]={{1},{2}}", int) == [[1], [2]]

    def test_not_an_array_returned_unchanged(self) -> None:
        assert parse_array("") == ""
        assert parse_array("abc") == "abc"
        assert parse_array("[0:1]") == "[0:1]"
        assert parse_array("[0:1]=x") == "[0:1]=x"

    def test_trailing_garbage_returned_unchanged(self) -> None:
        assert parse_array("{1,2}x") == "{1,2}x"

    def test_unterminated_returned_unchanged(self) -> None:
        assert parse_array("{1,2") == "{1,2"
        assert parse_array('{"a') == '{"a'
        assert parse_array("{{1},") == "{{1},"

    def test_unicode(self) -> None:
        assert parse_array('{"é,ü","日本"}') == ["é,ü", "日本"]

    @given(
        st.lists(
            st.one_of(st.none(), st.text(alphabet=st.characters(codec="utf-8"), max_size=12)), max_size=8
        )
    )
    def test_round_trip_quoted(self, items: list[str | None]) -> None:
        def quote(s: str | None) -> str:
            if s is None:
                return "NULL"
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

        text = "{" + ",".join(quote(s) for s in items) + "}"
        assert parse_array(text) == items

    @given(
        st.lists(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=2, max_size=2), min_size=1, max_size=5)
    )
    def test_round_trip_2d_ints(self, rows: list[list[int]]) -> None:
        text = "{" + ",".join("{" + ",".join(map(str, r)) + "}" for r in rows) + "}"
        assert parse_array(text, int) == rows


# -- timestamps -------------------------------------------------------------------------------
class TestTimestamptz:
    def test_utc_short_offset_expanded(self) -> None:
        assert _timestamptz("2026-11-23 13:10:50.275863+00") == "2026-11-23T13:10:50.275863+00:00"

    def test_half_hour_offset_kept(self) -> None:
        assert _timestamptz("2026-11-23 13:10:50.27+05:30") == "2026-11-23T13:10:50.27+05:30"

    def test_negative_hour_offset(self) -> None:
        assert _timestamptz("2026-11-23 13:10:50-08") == "2026-11-23T13:10:50-08:00"

    def test_no_fraction(self) -> None:
        assert _timestamptz("2026-11-23 13:10:50+00") == "2026-11-23T13:10:50+00:00"

    def test_infinity_passed_through(self) -> None:
        assert _timestamptz("infinity") == "infinity"
        assert _timestamptz("-infinity") == "-infinity"

    def test_non_string_passed_through(self) -> None:
        assert _timestamptz(None) is None
        assert _timestamptz(5) == 5


class TestCommitTimestamp:
    def test_fast_path_milliseconds(self) -> None:
        assert commit_timestamp("2026-11-23 13:10:50.276462+00") == "2026-11-23T13:10:50.276Z"

    def test_truncates_not_rounds(self) -> None:
        assert commit_timestamp("2026-11-23 13:10:50.999999+00") == "2026-11-23T13:10:50.999Z"

    def test_short_fraction_padded(self) -> None:
        assert commit_timestamp("2026-11-23 13:10:50.5+00") == "2026-11-23T13:10:50.500Z"
        assert commit_timestamp("2026-11-23 13:10:50.12+00") == "2026-11-23T13:10:50.120Z"

    def test_no_fractional_seconds(self) -> None:
        assert commit_timestamp("2026-11-23 13:10:50+00") == "2026-11-23T13:10:50.000Z"

    def test_positive_offset_converted_to_utc(self) -> None:
        assert commit_timestamp("2026-11-23 18:40:50.276462+05:30") == "2026-11-23T13:10:50.276Z"

    def test_negative_offset_crosses_midnight(self) -> None:
        assert commit_timestamp("2026-11-23 20:00:00.5-08") == "2026-11-24T04:00:00.500Z"

    def test_non_utc_without_fraction(self) -> None:
        assert commit_timestamp("2026-11-23 14:10:50+01") == "2026-11-23T13:10:50.000Z"

    def test_unparseable_returned_unchanged(self) -> None:
        assert commit_timestamp("") == ""
        assert commit_timestamp("not a time") == "not a time"


# -- format_type names ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("integer", "int4"),
        ("bigint", "int8"),
        ("numeric(10,2)", "numeric"),
        ("numeric(10,2)[]", "_numeric"),
        ("character varying(20)[]", "_varchar"),
        ("character varying", "varchar"),
        ("character(3)", "bpchar"),
        ("timestamp with time zone", "timestamptz"),
        ("timestamp without time zone[]", "_timestamp"),
        ("text[]", "_text"),
        ('public."Mood"', "Mood"),
        ("myschema.mood[]", "_mood"),
        ("mood", "mood"),
    ],
)
def test_name_from_format_type(text: str, name: str) -> None:
    assert name_from_format_type(text) == name


# -- TypeRegistry -----------------------------------------------------------------------------
class TestTypeRegistry:
    def test_builtin_names(self) -> None:
        reg = TypeRegistry()
        assert reg.resolve(20, "bigint")[0] == "int8"
        assert reg.resolve(1184, "timestamp with time zone")[0] == "timestamptz"
        assert reg.resolve(1007, "integer[]")[0] == "_int4"
        assert 20 in reg and 999999 not in reg
        assert reg.get(25) is BUILTIN_TYPES[25]

    def test_oid_wins_over_format_type(self) -> None:
        name, _ = TypeRegistry().resolve(23, "something else")
        assert name == "int4"

    def test_unknown_oid_falls_back_on_format_type_array(self) -> None:
        name, conv = TypeRegistry().resolve(987654, "character varying(20)[]")
        assert name == "_varchar"
        assert conv('{a,"b c",NULL}') == ["a", "b c", None]

    def test_none_oid_falls_back(self) -> None:
        name, conv = TypeRegistry().resolve(None, "integer[]")
        assert name == "_int4"
        assert conv("{1,NULL}") == [1, None]

    def test_unknown_oid_scalar_fallback(self) -> None:
        name, conv = TypeRegistry().resolve(987654, "timestamp with time zone")
        assert name == "timestamptz"
        assert conv("2026-01-01 00:00:00+00") == "2026-01-01T00:00:00+00:00"

    def test_unknown_user_type_is_identity(self) -> None:
        name, conv = TypeRegistry().resolve(987654, "public.mood")
        assert name == "mood"
        assert conv("happy") == "happy"

    def test_enum_registered(self) -> None:
        reg = TypeRegistry([TypeInfo(50000, "mood", "E"), TypeInfo(50001, "_mood", "A", 50000)])
        name, conv = reg.resolve(50000, "mood")
        assert name == "mood"
        assert conv("happy") == "happy"
        name, conv = reg.resolve(50001, "mood[]")
        assert name == "_mood"
        assert conv('{happy,"very sad"}') == ["happy", "very sad"]

    def test_enum_named_like_builtin_not_converted(self) -> None:
        # category E means identity even when the typname collides with a converter name
        reg = TypeRegistry([TypeInfo(50002, "bool", "E")])
        _, conv = reg.resolve(50002, "bool")
        assert conv("t") == "t"

    def test_update_invalidates_cache(self) -> None:
        reg = TypeRegistry()
        assert reg.resolve(60000, "foo")[0] == "foo"
        reg.update([TypeInfo(60000, "bar", "S")])
        assert reg.resolve(60000, "foo")[0] == "bar"

    def test_converter_cached(self) -> None:
        reg = TypeRegistry()
        assert reg.resolve(1700, "numeric") is reg.resolve(1700, "numeric")

    def test_scalar_converters(self) -> None:
        reg = TypeRegistry()

        def conv(oid: int, ft: str) -> Callable[[Any], Any]:
            return reg.resolve(oid, ft)[1]

        assert conv(3802, "jsonb")('{"x": [1, {"y": null}]}') == {"x": [1, {"y": None}]}
        assert conv(114, "json")("[1,2]") == [1, 2]
        # kept as Postgres's text (only Postgres's own json types, whose text is always JSON)
        assert conv(114, "json")('{"a" : 1}').text == '{"a" : 1}'
        # wal2json prints numbers and booleans as JSON already: those values pass through as-is
        # (exact numerics are restored by the decoder from the message text)
        assert conv(1700, "numeric")(Decimal("2.5")) == Decimal("2.5")
        assert conv(20, "bigint")(7) == 7
        assert conv(16, "boolean")(True) is True
        assert conv(1114, "timestamp without time zone")("2026-01-02 03:04:05.5") == "2026-01-02T03:04:05.5"
        assert conv(1114, "timestamp without time zone")("infinity") == "infinity"
        assert (
            conv(2950, "uuid")("70a92ca3-ac46-4db9-a45e-e69f0d452f5b")
            == "70a92ca3-ac46-4db9-a45e-e69f0d452f5b"
        )
        assert conv(701, "double precision")(1.5) == 1.5

    def test_array_converters(self) -> None:
        reg = TypeRegistry()

        def conv(oid: int, ft: str) -> Callable[[Any], Any]:
            return reg.resolve(oid, ft)[1]

        assert conv(1016, "bigint[]")("{1,-2,NULL}") == [1, -2, None]
        assert conv(1000, "boolean[]")("{t,f,NULL}") == [True, False, None]
        assert conv(1022, "double precision[]")("{1.5,-2}") == [1.5, -2.0]
        assert conv(3807, "jsonb[]")('{"{\\"a\\": 1}","[1]"}') == [{"a": 1}, [1]]
        assert conv(1185, "timestamp with time zone[]")('{"2026-01-01 00:00:00+00"}') == [
            "2026-01-01T00:00:00+00:00"
        ]
        assert conv(1001, "bytea[]")('{"\\\\xdead","\\\\xbeef"}') == ["dead", "beef"]
        num = conv(1231, "numeric[]")("{1,2.5,12345678901234567.123,NaN}")
        assert num == [1, 2.5, Decimal("12345678901234567.123"), "NaN"]
        assert isinstance(num[0], int) and isinstance(num[2], Decimal)
        # a non-string value (already parsed) passes through
        assert conv(1007, "integer[]")([1, 2]) == [1, 2]
