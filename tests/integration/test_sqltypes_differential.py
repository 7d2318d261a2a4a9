"""The relay's in-process casts and comparisons agree with Postgres, whoever uses them.

Why: filters and policies used to carry two implementations of Postgres' input functions that
disagreed in corners (Unicode whitespace around a number, ``urn:uuid:`` prefixes, hyphens
anywhere in a uuid...).  Both now use :mod:`relay.core.sqltypes`; this test holds that single
implementation to Postgres, through both public entry points:

* a filter bound *without* Postgres' canonical operands (``Filter.bind`` on the raw text, the
  in-relay cast path) accepts an operand iff ``select operand::type`` succeeds;
* a fast-path policy ``x = (claims->>'v')::type`` raises :class:`PolicyEvalError` iff that cast
  fails in Postgres (same SQLSTATE);
* for two accepted operands ``a`` and ``b``, the relay's ``b < a`` and ``b = a`` (a filter
  ``x=lt.a`` / ``x=eq.a`` on a row holding Postgres' output of ``b``, and the policy's verdict)
  equal Postgres' ``b::type < a::type`` and ``=``.

Operand texts are generated per type from alphabets rich in the characters where Python and
Postgres read differently (Unicode spaces and digits, ``_``, exponents, hex, braces).  Hypothesis
runs derandomized, so CI sees the same cases each run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core.filters import FilterError, parse_filter
from relay.core.policies import Policy, PolicyEvalError, compile_policy

pytestmark = pytest.mark.pg

SETTINGS = settings(
    max_examples=250,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Types whose casts policies model (the others are filter-only).
POLICY_TYPES = ("int2", "int4", "int8", "numeric", "bool", "uuid")

_SPACES = " \t\n\x0b\x0c\r\u00a0\u2003\x1c\x85"
_WORDS = ["nan", "NaN", "inf", "Infinity", "-infinity", "+inf", "e", "E", "0x", "1_0", "\u0661", "\uff12",
          "-nan", "nan(1)", "0x1p3", "0X1.8P-2", "p"]  # fmt: skip


def _number_text(digits: str) -> st.SearchStrategy[str]:
    """Texts built from number-ish pieces: signs, digits, points, exponents, words, spaces."""
    piece = st.one_of(
        st.text(alphabet=digits, min_size=1, max_size=22),
        st.sampled_from(["+", "-", ".", "e", "E", "e-", "e+", "_", "x", *_WORDS]),
        st.sampled_from(list(_SPACES)),
        st.integers(-(2**64), 2**64).map(str),
    )
    return st.lists(piece, min_size=1, max_size=5).map("".join)


def _bool_text() -> st.SearchStrategy[str]:
    words = ["true", "false", "yes", "no", "on", "off", "1", "0", "t", "f", "o", "tru", "of", "oN"]
    word = st.one_of(
        st.sampled_from(words),
        st.sampled_from(["true", "false", "yes", "no", "off"]).flatmap(
            lambda w: st.integers(0, len(w)).map(lambda n: w[:n])
        ),
        st.text(alphabet="tTrRuUeEfFaAlLsSyYnNoO01\u0130\u0131\u212a", max_size=6),
    )
    space = st.text(alphabet=_SPACES, max_size=2)
    return st.tuples(space, word, space).map("".join)


def _uuid_text() -> st.SearchStrategy[str]:
    def spell(u: uuid.UUID, cut: list[int], upper: bool, braces: int, drop: int) -> str:
        h = u.hex.upper() if upper else u.hex
        if drop:
            h = h[:-drop]
        out = "".join(c + ("-" if i + 1 in cut else "") for i, c in enumerate(h))
        if braces == 1:
            out = "{" + out + "}"
        elif braces == 2:
            out = "{" + out
        elif braces == 3:
            out = "urn:uuid:" + out
        return out

    spelled = st.builds(
        spell,
        st.uuids(),
        st.lists(st.integers(1, 31), max_size=5),
        st.booleans(),
        st.integers(0, 3),
        st.integers(0, 2),
    )
    space = st.text(alphabet=" \t", max_size=1)
    return st.one_of(
        st.builds(str, st.uuids()),
        spelled,
        st.tuples(space, spelled, space).map("".join),
    )


STRATEGIES: dict[str, st.SearchStrategy[str]] = {
    "int2": _number_text("0123456789"),
    "int4": _number_text("0123456789"),
    "int8": _number_text("0123456789"),
    "numeric": _number_text("0123456789"),
    "float4": _number_text("0123456789"),
    "float8": _number_text("0123456789"),
    "bool": _bool_text(),
    "uuid": _uuid_text(),
}


@pytest.fixture(scope="module")
def conn(pg_server_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    from tests.support.postgres import fresh_database

    with fresh_database(pg_server_dsn, prefix="sqltypes_") as dsn:
        with psycopg.connect(dsn, autocommit=True) as c:
            yield c


def _pg_cast(conn: psycopg.Connection[Any], typ: str, text: str) -> tuple[str | None, str | None]:
    """``(output of text::typ, None)`` or ``(None, sqlstate)`` when Postgres refuses the cast."""
    try:
        with conn.transaction():
            row = conn.execute(f"select (%s::text::{typ})::text", (text,)).fetchone()
    except psycopg.errors.DataError as exc:
        return None, exc.sqlstate
    assert row is not None
    return row[0], None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _c_library_float(typ: str, text: str) -> bool:
    """Float spellings that ``float8in`` takes only because glibc's ``strtod`` does (hex floats,
    a signed NaN, ``nan(...)``): not promised by Postgres, platform-dependent, so the relay
    refuses them (fail closed: the client is told at subscribe time).  Production filters are
    unaffected: the server has Postgres cast the operands first (``Catalog.cast_operands``)."""
    t = text.strip(_SPACES).lower()
    return typ in ("float4", "float8") and ("0x" in t or ("nan" in t.lstrip("+-") and t != "nan"))


def _filter_accepts(typ: str, text: str) -> bool:
    try:
        parse_filter(f"x=eq.{_quote(text)}").bind(typ)
    except FilterError:
        return False
    return True


def _policy(typ: str, op: str) -> Any:
    compiled = compile_policy(Policy("public", "t", "p", (), f"x {op} (claims->>'v')::{typ}"), {"x": typ})
    assert compiled.fast is not None, compiled.slow_reason
    return compiled.fast


def _row_value(typ: str, text: str) -> Any:
    """Postgres' output of a value as the relay's decoder delivers it (wal2json numbers, bools)."""
    if typ in ("int2", "int4", "int8"):
        return int(text)
    if typ == "bool":
        return text == "true"
    if typ == "numeric":
        return text if text in ("NaN", "Infinity", "-Infinity") else Decimal(text)
    if typ in ("float4", "float8"):
        return text if text in ("NaN", "Infinity", "-Infinity") else float(text)
    return text


def _check_pair(conn: psycopg.Connection[Any], typ: str, a: str, b: str) -> None:
    out_a, err_a = _pg_cast(conn, typ, a)
    if _c_library_float(typ, a):
        assert not _filter_accepts(typ, a), (typ, a)
        return
    assert _filter_accepts(typ, a) == (err_a is None), (typ, a, err_a)
    if typ in POLICY_TYPES:
        try:
            _policy(typ, "=")({"x": None}, {"v": a})
            policy_err = None
        except PolicyEvalError as exc:
            policy_err = exc.sqlstate
        assert policy_err == err_a, (typ, a, policy_err, err_a)
    out_b, _ = _pg_cast(conn, typ, b)
    if out_a is None or out_b is None or _c_library_float(typ, b):
        return
    row = {"x": _row_value(typ, out_b)}
    ops = {"eq": "=", "lt": "<"} if typ != "bool" else {"eq": "="}
    for fop, sop in ops.items():
        got = conn.execute(f"select %s::text::{typ} {sop} %s::text::{typ}", (b, a)).fetchone()
        assert got is not None
        expected = got[0]
        matched = parse_filter(f"x={fop}.{_quote(a)}").bind(typ).matches(row)
        assert matched == expected, (typ, fop, a, b, out_b)
        if typ in POLICY_TYPES and not (typ == "uuid" and sop != "="):
            verdict = _policy(typ, sop)(row, {"v": a})
            assert verdict == expected, (typ, sop, a, b, out_b)


@pytest.mark.parametrize("typ", sorted(STRATEGIES))
def test_casts_and_comparisons_agree_with_postgres(conn: psycopg.Connection[Any], typ: str) -> None:
    strategy = STRATEGIES[typ]

    @SETTINGS
    @given(a=strategy, b=strategy)
    def check(a: str, b: str) -> None:
        _check_pair(conn, typ, a, b)

    check()


@pytest.mark.parametrize(
    ("typ", "text"),
    [
        ("int4", "\u00a012"),  # Python's strip() takes Unicode spaces; Postgres' isspace() does not
        ("int4", "12\x1c"),
        ("numeric", "\u20031.5"),
        ("bool", "\u00a0t"),
        ("uuid", " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("uuid", "urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("uuid", "a-0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("float8", "\u00a01.5"),
    ],
)
def test_known_disagreements_are_gone(conn: psycopg.Connection[Any], typ: str, text: str) -> None:
    """The cases the generated texts found in the two former implementations, pinned."""
    _check_pair(conn, typ, text, text)
