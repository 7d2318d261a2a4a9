"""Unit tests for relay.core.sqltypes: input functions, keys, names, and the package's hygiene.

The differential test against Postgres (tests/integration/test_sqltypes_differential.py) is the
reference; these pin its findings and the contracts filters and policies rely on, without a server.
"""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

import pytest

from relay.core.filters import FilterError, parse_filter
from relay.core.policies import Policy, PolicyEvalError, compile_policy
from relay.core.sqltypes import INPUT_FUNCTIONS, NAN, CastError, display_type, key_type, normalize_type_name
from relay.core.sqltypes.keys import KEY_TYPES, numeric_key

CORE = Path(__file__).resolve().parents[3] / "relay" / "core"


@pytest.mark.parametrize(
    ("typ", "text"),
    [
        ("int4", "\u00a012"),  # Python's str.strip() removes Unicode spaces; isspace() in C does not
        ("int4", "12\x1c"),
        ("int8", "1_000"),
        ("numeric", "\u20031.5"),
        ("numeric", "sNaN"),
        ("bool", "\u00a0t"),
        ("bool", "o"),
        ("uuid", " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("uuid", "urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("uuid", "a-0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("float8", "\u00a01.5"),
        ("float8", "1.5\x1c"),
    ],
)
def test_input_functions_refuse_what_postgres_refuses(typ: str, text: str) -> None:
    with pytest.raises(CastError) as info:
        INPUT_FUNCTIONS[typ](text)
    assert info.value.sqlstate == "22P02"


@pytest.mark.parametrize(
    ("typ", "text", "value"),
    [
        ("int2", " -7\t", -7),
        ("int8", "+0009", 9),
        ("numeric", " nan ", NAN),
        ("numeric", "Inf", Decimal("Infinity")),
        ("numeric", "1.50", Decimal("1.50")),
        ("bool", "  TRU ", True),
        ("bool", "of", False),
        ("bool", "\x0bt", True),
        ("uuid", "{A0EEBC99-9C0B4EF8-BB6D-6BB9BD380A11}", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("float8", " -Infinity ", float("-inf")),
        ("float8", "NaN", NAN),
    ],
)
def test_input_functions_accept_what_postgres_accepts(typ: str, text: str, value: object) -> None:
    assert INPUT_FUNCTIONS[typ](text) == value


def test_cast_error_carries_postgres_message_and_a_user_detail() -> None:
    with pytest.raises(CastError) as info:
        INPUT_FUNCTIONS["int2"]("40000")
    assert str(info.value) == 'value "40000" is out of range for type smallint'
    assert info.value.sqlstate == "22003"
    assert info.value.detail == "out of range for int2 (-32768..32767)"
    with pytest.raises(CastError) as info:
        INPUT_FUNCTIONS["int4"]("abc")
    assert info.value.detail is None  # "value "abc" is not a valid int4" says it all


def test_filters_and_policies_read_operands_alike() -> None:
    """The disagreement that motivated the package: one input function, two users."""
    policy = compile_policy(Policy("public", "t", "p", (), "x = (claims->>'v')::bool"), {"x": "bool"})
    assert policy.fast is not None
    for text in ("tru", "\u00a0t", "o", "yes", "1"):
        try:
            parse_filter(f"x=eq.{text}").bind("bool")
            filter_ok = True
        except FilterError:
            filter_ok = False
        try:
            policy.fast({"x": True}, {"v": text})
            policy_ok = True
        except PolicyEvalError:
            policy_ok = False
        assert filter_ok == policy_ok, text


def test_numeric_keys_compare_like_postgres() -> None:
    assert numeric_key(0.1) == INPUT_FUNCTIONS["numeric"]("0.1")
    assert numeric_key("NaN") is NAN
    assert NAN > Decimal("Infinity") and NAN == NAN
    assert numeric_key(Decimal("7.0")) == INPUT_FUNCTIONS["int4"]("7")


def test_type_names() -> None:
    assert normalize_type_name("integer[]") == "_int4"
    assert normalize_type_name("numeric(10,2)") == "numeric"
    assert normalize_type_name('public."Timestamp With Time Zone"') == "timestamptz"
    assert display_type("_int4") == "int4[]"
    assert key_type("_int4").kind == "array"
    assert key_type("my_enum") is key_type("other_enum")  # unknown types compare as text
    assert set(KEY_TYPES) >= {"int2", "int4", "int8", "numeric", "bool", "uuid", "jsonb"}


def _relay_imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("relay.")
        for alias in node.names
    ]


def test_no_private_names_imported_across_modules() -> None:
    """Type rules have one public home: a module importing another's ``_private`` helper is how the
    two copies started (policies imported filters' ``_numeric_key``)."""
    offenders = [
        f"{path.relative_to(CORE)}: from {module} import {name}"
        for path in sorted(CORE.rglob("*.py"))
        for module, name in _relay_imports(path)
        if name.startswith("_")
    ]
    assert offenders == []


def test_modules_stay_small() -> None:
    sizes = {
        str(p.relative_to(CORE)): len(p.read_text().splitlines())
        for sub in ("sqltypes", "filters", "policies")
        for p in (CORE / sub).glob("*.py")
    }
    assert sizes and max(sizes.values()) <= 600, sizes
