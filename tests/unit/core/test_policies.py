"""Unit tests for relay.core.policies: parsing, rewriting, fast-path shapes, SQL semantics.

Every expected value below was checked against PostgreSQL 15; the randomized comparison with a
real server lives in tests/integration/test_policies_equivalence.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from relay.core.policies import (
    CompiledPolicy,
    Policy,
    PolicyError,
    PolicyEvalError,
    compile_policy,
)

COLUMNS = {
    "id": "int4",
    "branch_id": "int4",
    "small": "int2",
    "big": "int8",
    "owner": "uuid",
    "assignee_id": "uuid",
    "owner_id": "uuid",
    "status": "text",
    "label": "character varying(20)",
    "amount": "numeric",
    "active": "bool",
    "created_at": "timestamptz",
    "tags": "_text",
    "payload": "jsonb",
}
U1 = "00000000-0000-4000-8000-0000000000a1"
U2 = "00000000-0000-4000-8000-0000000000b2"
ANY_B = "branch_id = any (select jsonb_array_elements_text(claims->'b')::int)"


def compile_(using: str, columns: Mapping[str, str] = COLUMNS) -> CompiledPolicy:
    return compile_policy(Policy("public", "t", "p", ("authenticated",), using), columns)


def run(using: str, row: Mapping[str, Any], claims: Mapping[str, Any]) -> bool | None:
    fast = compile_(using).fast
    assert fast is not None, compile_(using).slow_reason
    return fast(row, claims)


def error(using: str, row: Mapping[str, Any], claims: Mapping[str, Any]) -> PolicyEvalError:
    with pytest.raises(PolicyEvalError) as info:
        run(using, row, claims)
    return info.value


# --------------------------------------------------------------------------------------------------
# Parsing and rewriting


@pytest.mark.parametrize(
    ("using", "sql"),
    [
        ("branch_id = (claims->>'branch_id')::int", "branch_id = CAST(claims ->> 'branch_id' AS integer)"),
        ("(claims->>'branch_id')::bigint = branch_id", "CAST(claims ->> 'branch_id' AS bigint) = branch_id"),
        (
            "branch_id = (claims->>'branch_id')::numeric",
            "branch_id = CAST(claims ->> 'branch_id' AS numeric)",
        ),
        ("status = claims->>'status'", "status = claims ->> 'status'"),
        ("owner = (claims->>'sub')::uuid", "owner = CAST(claims ->> 'sub' AS uuid)"),
        ("assignee_id = auth.uid()", "assignee_id = CAST(claims ->> 'sub' AS uuid)"),
        ("owner_id = (auth.jwt()->>'sub')::uuid", "owner_id = CAST(claims ->> 'sub' AS uuid)"),
        (
            "branch_id = any (select jsonb_array_elements_text(claims->'branches')::int)",
            "branch_id = ANY (SELECT CAST(jsonb_array_elements_text(claims -> 'branches') AS integer))",
        ),
        ("claims->>'role' in ('admin', 'manager')", "claims ->> 'role' IN ('admin', 'manager')"),
        ("auth.role() = 'service_role'", "claims ->> 'role' = 'service_role'"),
        ("(claims->>'is_admin')::boolean", "CAST(claims ->> 'is_admin' AS boolean)"),
        ("auth.jwt()->'app'->>'tenant' = status", "claims -> 'app' ->> 'tenant' = status"),
        ("'x' || auth.role() = status", "'x' || (claims ->> 'role') = status"),  # parenthesised
        ("a != b and not c is null", "a <> b AND NOT c IS NULL"),
    ],
)
def test_sql_is_rewritten_to_read_claims(using: str, sql: str) -> None:
    assert compile_(using).sql == sql


def test_rewrite_reaches_into_sub_selects() -> None:
    cp = compile_("exists (select 1 from members m where m.user_id = auth.uid() and m.branch_id = branch_id)")
    assert "CAST(claims ->> 'sub' AS uuid)" in cp.sql and "auth." not in cp.sql
    assert cp.fast is None
    assert cp.claims_only is False  # a slow policy may read other tables: never claims-only
    assert cp.columns == frozenset({"branch_id"})  # the columns of the policy's table it names


def test_other_auth_functions_are_left_alone() -> None:
    assert compile_("owner = auth.uid(1)").sql == "owner = auth.uid(1)"
    assert compile_("status = auth.email()").sql == "status = auth.email()"
    assert compile_("owner = (select auth.uid())").sql == "owner = (SELECT CAST(claims ->> 'sub' AS uuid))"


@pytest.mark.parametrize(
    "using",
    [
        "1; drop table x",
        "true; select 1",
        "select 1",
        "",
        "   ",
        "-- only a comment",
        "true from t",
        "true where false",
        "a, b",
        "true as allowed",
        "*",
        "branch_id = ",
        "a) or (b",
        "distinct true",
        "true union select false",
        "true order by 1",
    ],
)
def test_not_one_expression_is_a_policy_error(using: str) -> None:
    with pytest.raises(PolicyError) as info:
        compile_(using)
    assert 'policy "p" on public.t' in str(info.value)
    assert isinstance(info.value, ValueError)


def test_policy_error_says_where() -> None:
    with pytest.raises(PolicyError, match=r'syntax error at or near "1" \(at character 7\)'):
        compile_("x = 1 1")


# --------------------------------------------------------------------------------------------------
# What is on the fast path


@pytest.mark.parametrize(
    "using",
    [
        "branch_id = (claims->>'branch_id')::int",
        "branch_id = (claims->>'branch_id')::bigint",
        "branch_id = (claims->>'branch_id')::smallint",
        "branch_id = (claims->>'branch_id')::numeric",
        "status = (claims->>'branch_id')::text",
        "status = claims->>'branch_id'",
        "owner = (claims->>'sub')::uuid",
        "(claims->>'branch_id')::int = branch_id",
        "assignee_id = auth.uid()",
        "owner_id = (auth.jwt()->>'sub')::uuid",
        "branch_id = any (select jsonb_array_elements_text(claims->'branches')::int)",
        "branch_id in (select jsonb_array_elements_text(claims->'branches')::int)",
        "status = any (select jsonb_array_elements_text(claims->'tags'))",
        "claims->>'role' in ('admin', 'manager')",
        "claims->>'role' not in ('guest')",
        "auth.role() = 'service_role'",
        "(claims->>'is_admin')::boolean",
        "true",
        "false",
        "branch_id <> 3 and amount >= 10.5 or not active",
        "big != (claims->>'b')::int and small < (claims->>'b')::int8",
        "created_at is null and tags is not null",
        "(claims->>'b')::int is not null",
        "active is not false",
        "label = 'x' and label <> claims->>'s'",
        "owner > (claims->>'sub')::uuid",
        "branch_id in (1, 2, (claims->>'b')::int)",
        "amount not in (1.5, 2, null)",
        "'7' = branch_id",
        "branch_id = '7'::int",
    ],
)
def test_fast_path_shapes(using: str) -> None:
    cp = compile_(using)
    assert cp.fast is not None, cp.slow_reason
    assert cp.slow_reason is None


@pytest.mark.parametrize(
    ("using", "reason"),
    [
        ("length(status) > 3", "function length()"),
        ("status < 'x'", "collation"),
        ("status >= claims->>'s'", "collation"),
        ("status like 'a%'", "LIKE"),
        ("branch_id + 1 = 2", "operator +"),
        ("branch_id = (claims->>'b')::float8", "cast to float8"),
        ("amount = (claims->>'b')::numeric(10, 2)", "modifier"),
        ("created_at > now()", "function now()"),
        ("t.branch_id = 1", "qualified"),
        ("nope = 1", 'column "nope"'),
        ("claims->'x' = '\"y\"'", "jsonb"),
        ("claims->>0 = 'x'", "text key"),
        ("branch_id in (id, 2)", "IN list with columns"),
        ("branch_id::text = claims->>'b'", "cast of a column"),
        ("payload is null", "IS NULL on a jsonb column"),
        ("owner = (select auth.uid())", "sub-select"),
        ("branch_id = any (select jsonb_array_elements(claims->'b')::int)", "jsonb_array_elements_text"),
        ("branch_id <> any (select jsonb_array_elements_text(claims->'b')::int)", "operator other than ="),
        ("branch_id = any (select jsonb_array_elements_text(claims->'b')::int limit 1)", "limitCount"),
        ("status = (claims->>'b')::int", "comparison of text with int4"),
        ("active = 1", "comparison of bool with int4"),
        ("branch_id = 'abc'", "not a valid int4"),
        ("branch_id is distinct from 1", "DISTINCT"),
    ],
)
def test_outside_the_fast_path(using: str, reason: str) -> None:
    cp = compile_(using)
    assert cp.fast is None
    assert cp.slow_reason is not None and reason in cp.slow_reason
    assert cp.index == () and cp.claims_only is False


def test_column_without_a_known_type_is_slow() -> None:
    cp = compile_("branch_id = (claims->>'b')::int", {"id": "int4"})
    assert cp.fast is None and cp.columns == frozenset()
    cp = compile_("branch_id = (claims->>'b')::int", {})
    assert cp.fast is None and cp.columns == frozenset({"branch_id"})


def test_table_with_a_claims_column_is_slow() -> None:
    assert compile_("true", {**COLUMNS, "claims": "jsonb"}).fast is None


# --------------------------------------------------------------------------------------------------
# claims_only, columns, index


@pytest.mark.parametrize(
    ("using", "claims_only", "columns"),
    [
        ("claims->>'role' in ('admin', 'manager')", True, set()),
        ("auth.role() = 'service_role'", True, set()),
        ("(claims->>'is_admin')::boolean", True, set()),
        ("true", True, set()),
        ("branch_id = (claims->>'branch_id')::int", False, {"branch_id"}),
        ("assignee_id = auth.uid() or (claims->>'is_admin')::boolean", False, {"assignee_id"}),
        ("branch_id = any (select jsonb_array_elements_text(claims->'b')::int)", False, {"branch_id"}),
        ("created_at is null and active", False, {"created_at", "active"}),
    ],
)
def test_claims_only_and_columns(using: str, claims_only: bool, columns: set[str]) -> None:
    cp = compile_(using)
    assert cp.claims_only is claims_only
    assert cp.columns == frozenset(columns)


def test_index_terms_are_the_top_level_equalities() -> None:
    cp = compile_(
        "branch_id = (claims->>'branch_id')::int and (claims->>'sub')::uuid = owner "
        "and status in ('open', claims->>'s') and amount > 3 "
        "and big = any (select jsonb_array_elements_text(claims->'bigs')::bigint)"
    )
    assert [t.column for t in cp.index] == ["branch_id", "owner", "status", "big"]
    claims = {"branch_id": " 7 ", "sub": U1.upper(), "s": None, "bigs": ["1", None, "2"]}
    branch, owner, status, big = cp.index
    assert branch.keys(claims) == frozenset({7})
    assert owner.keys(claims) == frozenset({U1})
    assert status.keys(claims) == frozenset({"open"})
    assert big.keys(claims) == frozenset({1, 2})
    assert branch.row_key(7) == 7 and branch.row_key(None) is None
    assert owner.row_key(U1) == U1


def test_index_keys_domain_matches_cross_type_equality() -> None:
    (term,) = compile_("amount = (claims->>'a')::numeric").index
    assert term.row_key(Decimal("7.0")) in term.keys({"a": "7"})
    assert term.row_key(7.5) in term.keys({"a": "7.50"})
    assert term.row_key("NaN") in term.keys({"a": "nan"})  # numeric NaN equals NaN
    (term,) = compile_("branch_id = (claims->>'a')::numeric").index
    assert term.row_key(7) in term.keys({"a": "7.000"})


def test_index_keys_fail_like_the_policy() -> None:
    cp = compile_("branch_id = (claims->>'b')::int and status = 'open'")
    branch, status = cp.index
    with pytest.raises(PolicyEvalError):
        branch.keys({"b": "abc"})
    with pytest.raises(PolicyEvalError):
        status.keys({"b": "abc"})  # the planner fails for every row, whatever the status
    assert status.keys({"b": "1"}) == frozenset({"open"})
    assert branch.keys({}) == frozenset()  # NULL claim: no row can pass


def test_index_keys_empty_when_a_claims_condition_is_false() -> None:
    (term,) = compile_("auth.role() = 'admin' and branch_id = (claims->>'b')::int").index
    assert term.keys({"role": "user", "b": "abc"}) == frozenset()  # folded to FALSE before the cast
    assert term.keys({"role": "admin", "b": "4"}) == frozenset({4})


def test_no_index_under_or_or_for_other_operators() -> None:
    assert compile_("branch_id = (claims->>'b')::int or active").index == ()
    assert compile_("branch_id <> (claims->>'b')::int").index == ()
    assert compile_("branch_id not in (1, 2)").index == ()
    assert compile_("branch_id = small").index == ()


# --------------------------------------------------------------------------------------------------
# Three-valued logic


@pytest.mark.parametrize(
    ("using", "row", "claims", "expected"),
    [
        ("branch_id = (claims->>'b')::int", {"branch_id": 7}, {"b": "7"}, True),
        ("branch_id = (claims->>'b')::int", {"branch_id": 7}, {"b": "8"}, False),
        ("branch_id = (claims->>'b')::int", {"branch_id": None}, {"b": "7"}, None),
        ("branch_id = (claims->>'b')::int", {"branch_id": 7}, {}, None),  # missing key
        ("branch_id = (claims->>'b')::int", {"branch_id": 7}, {"b": None}, None),  # JSON null
        ("branch_id <> (claims->>'b')::int", {"branch_id": 7}, {}, None),
        ("branch_id = (claims->>'b')::int and false", {"branch_id": 7}, {}, False),
        ("branch_id = (claims->>'b')::int and true", {"branch_id": 7}, {}, None),
        ("branch_id = (claims->>'b')::int or true", {"branch_id": 7}, {}, True),
        ("branch_id = (claims->>'b')::int or false", {"branch_id": 7}, {}, None),
        ("not (branch_id = (claims->>'b')::int)", {"branch_id": 7}, {}, None),
        ("(branch_id = (claims->>'b')::int) is unknown", {"branch_id": 7}, {}, True),
        ("(branch_id = (claims->>'b')::int) is not true", {"branch_id": 7}, {}, True),
        ("null", {}, {}, None),
        ("'t'", {}, {}, True),
        ("branch_id in (1, null)", {"branch_id": 1}, {}, True),
        ("branch_id in (2, null)", {"branch_id": 1}, {}, None),
        ("branch_id not in (2, null)", {"branch_id": 1}, {}, None),
        ("branch_id not in (1, null)", {"branch_id": 1}, {}, False),
        ("branch_id not in (2, 3)", {"branch_id": None}, {}, None),
        ("claims->>'role' in ('admin', 'manager')", {}, {"role": "manager"}, True),
        ("claims->>'role' in ('admin', 'manager')", {}, {"role": "Admin"}, False),
        ("claims->>'role' in ('admin', 'manager')", {}, {}, None),
        ("claims->>'role' in ('admin', 'manager')", {}, {"role": ["admin"]}, False),
        ("auth.role() = 'service_role'", {}, {"role": "service_role"}, True),
        # ->> on something that is not an object is NULL
        ("(claims->'app'->>'b')::int = branch_id", {"branch_id": 1}, {"app": [1]}, None),
        ("(claims->'app'->>'b')::int = branch_id", {"branch_id": 1}, {"app": "x"}, None),
        ("(claims->'app'->>'b')::int = branch_id", {"branch_id": 1}, {"app": {"b": 1}}, True),
        # IS NULL: JSON null is a value, SQL NULL is not
        ("claims->'app' is null", {}, {"app": None}, False),
        ("claims->'app' is null", {}, {}, True),
        ("claims->>'app' is null", {}, {"app": None}, True),
        ("created_at is null", {"created_at": None}, {}, True),
        ("tags is not null", {"tags": []}, {}, True),
        # = ANY over a claims array
        (ANY_B, {"branch_id": 2}, {"b": ["1", 2]}, True),
        (ANY_B, {"branch_id": 3}, {"b": [1, 2]}, False),
        (ANY_B, {"branch_id": 3}, {"b": [1, None]}, None),
        (ANY_B, {"branch_id": 1}, {"b": [1, None]}, True),
        (ANY_B, {"branch_id": None}, {"b": []}, False),
        (ANY_B, {"branch_id": None}, {"b": [1]}, None),
        (ANY_B, {"branch_id": 1}, {}, False),
        (f"not ({ANY_B})", {"branch_id": 1}, {"b": [2]}, True),
        # booleans
        ("(claims->>'is_admin')::boolean", {}, {"is_admin": True}, True),
        ("(claims->>'is_admin')::boolean", {}, {"is_admin": " Of "}, False),
        ("(claims->>'is_admin')::boolean", {}, {"is_admin": "ye"}, True),
        ("active = (claims->>'a')::boolean", {"active": False}, {"a": "0"}, True),
        ("active < true", {"active": False}, {}, True),
        ("not active", {"active": None}, {}, None),
    ],
)  # fmt: skip
def test_three_valued_logic(
    using: str, row: Mapping[str, Any], claims: Mapping[str, Any], expected: bool | None
) -> None:
    assert run(using, row, claims) is expected


# --------------------------------------------------------------------------------------------------
# Values: casts of claims, numbers, uuids, text


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        (7, True),
        ("7", True),
        (" 7\n", True),
        ("+7", True),
        ("007", True),
        ("-7", False),
        (True, "22P02"),  # ->> gives "true"
        (7.0, "22P02"),  # ->> gives "7.0" (the decimals are kept): not an integer
        ("7.0", "22P02"),
        ("", "22P02"),
        ("abc", "22P02"),
        ("0x7", "22P02"),
        ("1_000", "22P02"),
        ("2147483648", "22003"),
        ("99999999999x", "22003"),  # the range check comes first...
        ("2147483648x", "22P02"),  # ...but 2^31 only overflows once the sign is applied
        ("-2147483648", False),
        ([7], "22P02"),
        ({"a": 7}, "22P02"),
    ],
)
def test_integer_claims(claim: Any, expected: bool | str) -> None:
    using = "branch_id = (claims->>'b')::int"
    if isinstance(expected, str):
        assert error(using, {"branch_id": 7}, {"b": claim}).sqlstate == expected
    else:
        assert run(using, {"branch_id": 7}, {"b": claim}) is expected


def test_error_codes_and_messages() -> None:
    e = error("branch_id = (claims->>'b')::int", {"branch_id": 1}, {"b": "abc"})
    assert (e.code, e.sqlstate, str(e)) == (
        "invalid_text_representation",
        "22P02",
        'invalid input syntax for type integer: "abc"',
    )
    e = error("small = (claims->>'b')::smallint", {"small": 1}, {"b": "40000"})
    assert (e.code, str(e)) == (
        "numeric_value_out_of_range",
        'value "40000" is out of range for type smallint',
    )
    e = error(
        "branch_id = any (select jsonb_array_elements_text(claims->'b')::int)", {"branch_id": 1}, {"b": 1}
    )
    assert (e.code, e.sqlstate, str(e)) == (
        "cannot_extract_elements",
        "22023",
        "cannot extract elements from a scalar",
    )
    e = error(
        "branch_id = any (select jsonb_array_elements_text(claims->'b')::int)", {"branch_id": 1}, {"b": {}}
    )
    assert str(e) == "cannot extract elements from an object"
    e = error(
        "branch_id = any (select jsonb_array_elements_text(claims->'b')::int)", {"branch_id": 1}, {"b": None}
    )
    assert str(e) == "cannot extract elements from a scalar"  # JSON null is a scalar
    e = error("branch_id = any (select jsonb_array_elements_text(claims)::int)", {"branch_id": 1}, {})
    assert str(e) == "cannot extract elements from an object"


def test_one_bad_array_element_fails_even_next_to_a_match() -> None:
    """The sub-select is hashed: every element is cast before the match is looked up."""
    e = error(
        "branch_id = any (select jsonb_array_elements_text(claims->'b')::int)",
        {"branch_id": 1},
        {"b": ["1", "x"]},
    )
    assert e.code == "invalid_text_representation"
    e = error(
        "branch_id = any (select jsonb_array_elements_text(claims->'b')::int)", {"branch_id": 1}, {"b": [1.0]}
    )
    assert str(e) == 'invalid input syntax for type integer: "1.0"'


def test_claims_casts_are_folded_before_the_row_is_read() -> None:
    """Postgres folds claims-only expressions at plan time: a bad cast raises for every row..."""
    using = "status = 'open' and branch_id = (claims->>'b')::int"
    assert (
        error(using, {"status": "closed", "branch_id": 1}, {"b": "x"}).code == "invalid_text_representation"
    )
    assert (
        error("status = 'open' or owner = auth.uid()", {"status": "open"}, {"sub": "x"}).sqlstate == "22P02"
    )
    # ...unless a constant arm before it settles the AND/OR at plan time
    claims = {"role": "user", "b": "x"}
    assert run("auth.role() = 'admin' and branch_id = (claims->>'b')::int", {"branch_id": 1}, claims) is False
    # (a NULL arm settles nothing: without a role claim the cast is still folded, and fails)
    assert (
        error("auth.role() = 'admin' and branch_id = (claims->>'b')::int", {}, {"b": "x"}).sqlstate == "22P02"
    )
    assert run("true or branch_id = (claims->>'b')::int", {"branch_id": 1}, {"b": "x"}) is True
    assert run("(branch_id = 1 and false) or (claims->>'b')::int = 2", {"branch_id": 1}, {"b": "2"}) is True
    # a constant arm after it comes too late
    assert error("(claims->>'b')::int = 1 or true", {}, {"b": "x"}).sqlstate == "22P02"


def test_sub_selects_run_when_the_executor_reaches_them() -> None:
    using = "status = 'open' or branch_id = any (select jsonb_array_elements_text(claims->'b')::int)"
    assert run(using, {"status": "open", "branch_id": 1}, {"b": {}}) is True
    assert error(using, {"status": "closed", "branch_id": 1}, {"b": {}}).code == "cannot_extract_elements"
    # folded away at plan time by a constant arm
    assert run("true or branch_id = any (select jsonb_array_elements_text(claims->'b')::int)", {}, {"b": 1})


#: Claims for the IN-list cases below: "bad" and app.s do not cast to boolean.
IN_CLAIMS = {"role": "admin", "flag": "true", "f": "false", "n": None, "bad": "NaN", "app": {"s": "NaN"}}
IN_ROW = {"label": "open", "active": False}


@pytest.mark.parametrize(
    ("using", "expected"),
    [
        # Found by the equivalence test: the NOT IN is FALSE once `true <> 'true'` folds, so the NaN
        # item is never cast, and the OR is TRUE from its first arm at run time.
        (
            "not (not ((auth.role() <> label or true not in "
            "(NULL, false, (auth.jwt()->>'flag')::bool, (claims->'app'->>'s')::bool))))",
            True,
        ),
        ("true not in (null, false, (claims->>'flag')::bool, (claims->'app'->>'s')::bool)", False),
        # claims items are separate comparisons, folded left to right, stopping at TRUE (IN) ...
        ("true in ((claims->>'flag')::bool, (claims->>'bad')::bool)", True),
        ("true in ((claims->>'f')::bool, (claims->>'bad')::bool)", "22P02"),
        ("true in ((claims->>'bad')::bool, true)", "22P02"),  # one literal: kept in list order
        ("true in (true, (claims->>'bad')::bool)", True),
        ("(claims->>'flag')::bool in (true, (claims->>'bad')::bool)", True),
        ("'5' in ('5', (claims->>'bad')::int)", True),
        ("'5' in ((claims->>'bad')::int, 5)", "22P02"),
        # ... or at FALSE (NOT IN)
        ("true not in ((claims->>'flag')::bool, (claims->>'bad')::bool)", False),
        ("true not in ((claims->>'bad')::bool, (claims->>'flag')::bool)", "22P02"),
        ("true not in ((claims->>'bad')::bool, true)", "22P02"),
        # two or more literals form one `= ANY (ARRAY[...])` that comes first, wherever they stand
        ("true in ((claims->>'bad')::bool, true, false)", True),
        ("true not in ((claims->>'bad')::bool, true, false)", False),
        ("'5' in ((claims->>'bad')::int, 5, 6)", True),
        ("true in (false, null, (claims->>'flag')::bool, (claims->>'bad')::bool)", True),
        ("false not in (true, (claims->>'bad')::bool, null)", "22P02"),  # the array gives NULL
        ("claims->>'role' in ('x', 'admin', claims->>'bad')", True),
        # a cast of a literal is a literal too (no Var), cast when the array is folded
        ("true in ((claims->>'bad')::bool, 't'::text::bool, 'f'::text::bool)", True),
        ("false in ((claims->>'flag')::bool, 'x'::text::bool, 'f'::text::bool)", "22P02"),
        ("true in ((claims->>'flag')::bool, 'x'::text::bool)", True),
        # a NULL arm stops nothing (both sides of a comparison are folded before NULL counts)
        ("(claims->>'n')::bool in (true, (claims->>'bad')::bool)", "22P02"),
        ("null::bool in (true, false, (claims->>'bad')::bool)", "22P02"),
        ("(claims->>'bad')::bool in (true, false)", "22P02"),
        # a column on the left: no arm is constant, every item is cast
        ("active in ((claims->>'flag')::bool, (claims->>'bad')::bool)", "22P02"),
        ("active in (true, false, (claims->>'bad')::bool)", "22P02"),
        ("active in ((claims->>'n')::bool, (claims->>'bad')::bool)", "22P02"),
        # the NOT / IS FALSE around the list change nothing of the above
        ("not (true in (false, null, (claims->>'flag')::bool, (claims->>'bad')::bool))", False),
        ("(true not in (null, false, (claims->>'flag')::bool, (claims->>'bad')::bool)) is false", True),
        # a non-constant OR arm does not stop folding
        ("claims->>'role' <> label or (claims->>'bad')::bool", "22P02"),
        ("claims->>'role' <> label or (true and false and (claims->>'bad')::bool)", True),
        ("not not (claims->>'bad')::bool", "22P02"),
    ],
)
def test_in_lists_are_chains_of_comparisons(using: str, expected: bool | str | None) -> None:
    """``x IN (...)`` is OR-ed comparisons, the literals in one ScalarArrayOp: ``claims`` is a Var
    for parse analysis, so its items are compared one by one and folded lazily (PostgreSQL 15)."""
    if isinstance(expected, str):
        assert error(using, IN_ROW, IN_CLAIMS).sqlstate == expected
    else:
        assert run(using, IN_ROW, IN_CLAIMS) is expected


def test_in_list_items_are_typed_per_comparison() -> None:
    """Each claims item is compared with the left side on its own: ``'5.5' = <int>`` does not parse
    in Postgres (no common numeric type), so the fast path must not guess."""
    cp = compile_("'5.5' in ((claims->>'b')::int, 5.5)")
    assert cp.fast is None and cp.slow_reason is not None and "not a valid int4" in cp.slow_reason
    assert run("'7' in (5.5, (claims->>'b')::int)", {}, {"b": "7"}) is True
    (term,) = compile_("small in (1, 100000, (claims->>'b')::int8)").index
    assert term.keys({"b": " 3 "}) == frozenset({1, 100000, 3})
    with pytest.raises(PolicyEvalError):
        term.keys({"b": "x"})


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        (U1, True),
        (U1.upper(), True),
        ("{" + U1 + "}", True),
        (U1.replace("-", ""), True),
        ("0000-0000-0000-4000-8000-0000-0000-00a1", True),  # a hyphen after any group of four
        (U2, False),
        (" " + U1, "22P02"),
        (U1 + " ", "22P02"),
        ("{" + U1, "22P02"),
        (U1 + "}", "22P02"),
        ("00000000-0000-4000-8000-0000000000a", "22P02"),
        ("0000000-00000-4000-8000-0000000000a1", "22P02"),
        ("urn:uuid:" + U1, "22P02"),  # Python's uuid.UUID accepts this; Postgres does not
        (1, "22P02"),
    ],
)
def test_uuid_claims(claim: Any, expected: bool | str) -> None:
    if isinstance(expected, str):
        assert error("owner = auth.uid()", {"owner": U1}, {"sub": claim}).sqlstate == expected
    else:
        assert run("owner = auth.uid()", {"owner": U1}, {"sub": claim}) is expected


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("t", True), ("TRUE", True), ("tr", True), (" yes ", True), ("y", True), ("on", True),
        ("1", True), ("f", False), ("fAlSe", False), ("no", False), ("n", False), ("of", False),
        ("off", False), ("0", False),
        (True, True), (False, False),
        ("o", "22P02"), ("truex", "22P02"), ("10", "22P02"), ("", "22P02"), ("yess", "22P02"), (1, True),
        (2, "22P02"), (None, None),
    ],
)  # fmt: skip
def test_boolean_claims(claim: Any, expected: bool | str | None) -> None:
    if isinstance(expected, str):
        assert error("(claims->>'a')::boolean", {}, {"a": claim}).sqlstate == expected
    else:
        assert run("(claims->>'a')::boolean", {}, {"a": claim}) is expected


@pytest.mark.parametrize(
    ("claim", "row", "expected"),
    [
        ("7.50", Decimal("7.5"), True),
        (7.5, 7.5, True),
        ("1e2", 100, True),
        (100.0, Decimal("1E+2"), True),
        ("  -0 ", Decimal("0.00"), True),
        ("NaN", "NaN", True),  # numeric NaN equals itself
        ("nan", 5, False),
        ("inf", "Infinity", True),
        ("1e 2", 100, True),  # strtol skips the blank after the e
        (0.1, Decimal("0.1"), True),  # floats reach Postgres as orjson prints them
        (math.nan, 1, None),  # ... and NaN as null
        ("1e", 1, "22P02"),
        ("1.2.3", 1, "22P02"),
        ("0x1F", 31, "22P02"),
        ("1e-20000", 0, "22003"),
        ("1e131072", 0, "22003"),
    ],
)
def test_numeric_claims(claim: Any, row: Any, expected: bool | str | None) -> None:
    using = "amount = (claims->>'a')::numeric"
    if isinstance(expected, str):
        assert error(using, {"amount": row}, {"a": claim}).sqlstate == expected
    else:
        assert run(using, {"amount": row}, {"a": claim}) is expected


def test_numeric_ordering_across_types() -> None:
    assert run("branch_id < (claims->>'a')::numeric", {"branch_id": 7}, {"a": "7.001"}) is True
    assert (
        run("amount > (claims->>'a')::int", {"amount": "NaN"}, {"a": "2147483647"}) is True
    )  # NaN is largest
    assert run("amount < (claims->>'a')::numeric", {"amount": "Infinity"}, {"a": "NaN"}) is True
    assert run("big = 3000000000", {"big": 3000000000}, {}) is True
    assert run("branch_id = 1e1", {"branch_id": 10}, {}) is True


def test_text_of_non_string_claims() -> None:
    """``->>`` prints numbers as numeric_out and objects as jsonb_out (keys by length, then bytes)."""
    using = "status = claims->>'s'"
    assert run(using, {"status": "1e-07"}, {"s": 1e-7}) is False
    assert run(using, {"status": "0.0000001"}, {"s": 1e-7}) is True
    assert run(using, {"status": "10000000000000000000000"}, {"s": 1e22}) is True
    assert run(using, {"status": "true"}, {"s": True}) is True
    assert run(
        using, {"status": '{"b": [1, 2.5, "x\\ny"], "aa": null}'}, {"s": {"aa": None, "b": [1, 2.5, "x\ny"]}}
    )
    assert run(using, {"status": "[]"}, {"s": []}) is True


def test_text_equality_is_exact() -> None:
    assert run("status = claims->>'s'", {"status": "open"}, {"s": "open "}) is False
    assert run("label = 'Open'", {"label": "open"}, {}) is False
    assert run("status <> claims->>'s'", {"status": "a"}, {"s": "b"}) is True


def test_row_values_outside_the_decoder_model_fail_closed() -> None:
    e = error("branch_id = 1", {"branch_id": "1"}, {})
    assert e.code == "invalid_row_value"
    e = error("active", {"active": 1}, {})
    assert e.code == "invalid_row_value"


def test_non_object_claims_read_as_null() -> None:
    fast = compile_("claims->>'role' = 'admin'").fast
    assert fast is not None
    assert fast({}, []) is None  # type: ignore[arg-type]
    assert fast({}, "admin") is None  # type: ignore[arg-type]
