"""Filters agree with Postgres: which operands are accepted, and which rows match.

Why against the real server: "the relay accepts ``i4=eq.1_000``" or "``ts=eq.yesterday`` is
refused" are questions about Postgres' input functions, and "row matches" is a question about its
operators; only Postgres answers them for sure.  So, per column type, generated operands (valid
values, odd spellings, values Python reads differently from Postgres) are bound the way the
server binds them (:meth:`Catalog.cast_operands`, then :meth:`Filter.bind`), and

* the relay accepts the operand iff ``select operand::type`` succeeds in Postgres;
* for every accepted operand, operator (and its ``not.`` form) and row, ``BoundFilter.matches`` on
  the row as the relay decodes it (real wal2json output through :class:`Decoder`) equals
  Postgres' ``col <op> operand::type`` in a WHERE clause.

Patterns (``like``/``ilike``/``match``/``imatch``) are checked the same way on text rows.
json columns have no ``=`` in Postgres; the relay compares them as jsonb does, so that is the
reference for them.  Hypothesis runs derandomized, so CI sees the same cases each run.
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core.changes import RowChange
from relay.core.filters import FilterError, parse_filter
from relay.core.wal2json import WAL2JSON_OPTIONS, Decoder
from relay.postgres.catalog import Catalog, OperandCastError

pytestmark = pytest.mark.pg

COLUMNS = {
    "i2": "int2", "i4": "int4", "i8": "int8", "n": "numeric", "f4": "float4", "f8": "float8",
    "b": "bool", "s": "text", "u": "uuid", "d": "date", "ts": "timestamp", "tz": "timestamptz",
    "j": "json", "jb": "jsonb",
}  # fmt: skip
VALUE_OPS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
JSON_OPS = ("eq", "neq")

# Row values (as SQL text) per column; operands accepted by Postgres are added as rows too.
ROWS: dict[str, list[str | None]] = {
    "i2": ["0", "1", "-1", "32767", "-32768", "7", None],
    "i4": ["0", "1", "-1", "1000", "2147483647", "-2147483648", None],
    "i8": ["0", "1000", "9223372036854775807", "-9223372036854775808", None],
    "n": ["0", "1.5", "1.50", "-2", "1000", "1e20", "0.1", "NaN", "Infinity", "-Infinity", None],
    "f4": ["0", "0.1", "1.5", "-2", "1e30", "NaN", "Infinity", "-Infinity", None],
    "f8": ["0", "0.1", "1.5", "-2", "1e300", "5e-324", "NaN", "Infinity", "-Infinity", None],
    "b": ["true", "false", None],
    "s": ["", "a", "abc", "ABC", "a%b", "a_b", "a\\b", "été", "x,y", "line\nbreak", " sp ", None],
    "u": ["00000000-0000-4000-8000-0000000000a1", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None],
    "d": ["2026-01-01", "1970-01-01", "2000-02-29", "infinity", "-infinity", None],
    "ts": ["2026-01-01 10:00:00", "1970-01-01 00:00:00", "2000-01-01 00:00:00.5", "infinity", None],
    "tz": ["2026-01-01 10:00:00+00", "2026-01-01 12:00:00+02", "1970-01-01 00:00:00+00", "-infinity", None],
    "j": ['{"a": 1}', "[1, 2]", '"x"', "1", "1.0", "true", "null", '{"b":[1,{"c":null}],"a":"x"}', None],
    "jb": ['{"a": 1}', "[1, 2]", '"x"', "1", "1.0", "true", "null", '{"b":[1,{"c":null}],"a":"x"}', None],
}  # fmt: skip

# Operand spellings per column: valid ones, and the ones Python and Postgres read differently.
SPELLINGS: dict[str, list[str]] = {
    "i2": ["1", " 7 ", "+7", "32768", "-32769", "1_0", "1.0", "1e2", "0x10", "", "abc", "\uff12", "00012"],
    "i4": ["1000", "1_000", "2147483648", " -1", "1.5", "0b1", "٣", "+", "- 1", "\t3\n"],
    "i8": ["1000", "9223372036854775808", "1_000", "-0", "1e3"],
    "n": ["1.5", "1.50", "NaN", "nan", "-NaN", "sNaN", "NaN1", "Infinity", "-inf", "1_000", "1e20",
          ".5", "5.", "1e", "1e-20000", "0x1F", " 7 ", "1e131072", "Inf"],
    "f4": ["0.1", "1e39", "1e-50", "NaN", "-Infinity", "1_0", "3.4e38", "1.401298464324817e-45", "inf"],
    "f8": ["0.1", "1e999", "1e-400", "5e-324", "NaN", "-nan", "+Infinity", "infinity", "1_0", "1e300",
           " 1.5 ", "0x1p3", "1e308"],
    "b": ["t", "true", "TRUE", "yes", "y", "on", "of", "o", "1", "0", "tr", "truex", "", "  f  "],
    "s": ["a", "abc", "", "été", "x,y", " sp ", "a\\b", "ABC", "é"],
    "u": ["00000000-0000-4000-8000-0000000000a1", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
          "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11", "nope",
          "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11"],
    "d": ["2026-01-01", "20260101", "2026-13-01", "epoch", "4714-11-24 BC", "10000-01-01",
          "infinity", "-infinity", "today",
          "yesterday", "tomorrow", "now", "Jan 1 2026", "2026-01-01 10:00", "1/2/2026", "2000-02-30"],
    "ts": ["2026-01-01 10:00:00", "2026-01-01T10:00:00", "2026-01-01 10:00:00+05", "epoch", "yesterday",
           "infinity", "allballs", "2026-01-01 25:00", "2000-01-01 00:00:00.5", "January 1, 2026"],
    "tz": ["2026-01-01 10:00:00+00", "2026-01-01 12:00:00+02", "2026-01-01 10:00:00", "epoch",
           "-infinity", "now", "2026-01-01 10:00:00 UTC", "2026-01-01 10:00:00Z", "2026-02-30 10:00"],
    "j": ['{"a": 1}', '{"a":1.0}', "[1,2]", '"x"', "x", "{nope", "NaN", "1e999", "null", "true", " 1 ",
          '{"a":1,"a":2}'],
    "jb": ['{"a": 1}', '{"a":1.0}', "[1,2]", '"x"', "x", "{nope", "NaN", "1e999", "null", "true", " 1 ",
           '{"a":1,"a":2}'],
}  # fmt: skip


@pytest.fixture(scope="module")
def dsn(pg_server_dsn: str) -> Iterator[str]:
    from tests.support.postgres import fresh_database

    with fresh_database(pg_server_dsn, prefix="filters_") as d:
        with psycopg.connect(d, autocommit=True) as c:
            cols = ", ".join(f"{name} {typ}" for name, typ in COLUMNS.items())
            c.execute(f"create table t (id serial primary key, {cols}); alter table t replica identity full")
            c.execute("select pg_create_logical_replication_slot('filters_eq', 'wal2json')")
        yield d


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pg_accepts(conn: psycopg.Connection[Any], typ: str, value: str) -> bool:
    try:
        with conn.transaction():
            conn.execute(f"select %s::text::{typ}", (value,))
        return True
    except psycopg.errors.DataError:
        return False


class RelayBinder:
    """Binds filters as the server does: Postgres casts the operands (``Catalog.cast_operands``,
    the real component, on one pool and event loop per check), then ``Filter.bind``."""

    def __init__(self, dsn: str) -> None:
        self.runner = asyncio.Runner()
        self.catalog = Catalog(dsn, ttl=0.0)  # no cache: every operand is really cast
        self.runner.run(self.catalog.open())

    def close(self) -> None:
        self.runner.run(self.catalog.close())
        self.runner.close()

    def bind(self, column: str, text: str) -> tuple[Any, str | None]:
        try:
            f = parse_filter(text)
            types = {column: COLUMNS[column]}
            casts = f.casts(types)
            try:
                canonical = self.runner.run(self.catalog.cast_operands(casts)) if casts else None
            except OperandCastError as exc:
                return None, str(exc)
            return f.bind(types, canonical), None
        except FilterError as exc:
            return None, str(exc)


def _load_rows(conn: psycopg.Connection[Any], column: str, values: list[str | None]) -> list[RowChange]:
    """Insert the rows, and read them back as the relay sees them: wal2json through Decoder."""
    conn.execute("truncate t")
    conn.execute("select pg_logical_slot_get_changes('filters_eq', null, null)")
    with conn.transaction():
        for v in values:
            conn.execute(f"insert into t ({column}) values (%s::text::{COLUMNS[column]})", (v,))
    opts = [x for k, v in WAL2JSON_OPTIONS.items() for x in (k, v)]
    rows = conn.execute(
        "select data from pg_logical_slot_get_changes('filters_eq', null, null, "
        + ", ".join(["%s"] * len(opts))
        + ")",
        opts,
    ).fetchall()
    decoder = Decoder()
    changes = [decoder.decode(r[0]) for r in rows]
    return [c for c in changes if isinstance(c, RowChange)]


def _records(
    conn: psycopg.Connection[Any], column: str, changes: list[RowChange]
) -> dict[int, dict[str, Any]]:
    """The decoded rows by id.  Where the decoder today loses a non-NULL value (wal2json prints
    float/numeric NaN and Infinity bare, which is not JSON), the row carries it as Postgres'
    ``to_json`` does (``"NaN"``), the form the decoder is being changed to deliver.  A JSON
    ``null`` in a json column cannot be told from SQL NULL after decoding (a documented
    approximation), so those rows are left out."""
    sql_values = dict(conn.execute(f"select id, to_json({column}) from t").fetchall())
    is_null = dict(conn.execute(f"select id, {column} is null from t").fetchall())
    json_kind = {}
    if COLUMNS[column] in ("json", "jsonb"):
        json_kind = dict(conn.execute(f"select id, jsonb_typeof({column}::jsonb) from t").fetchall())
    out = {}
    for c in changes:
        assert c.record is not None
        rid = c.record["id"]
        record = dict(c.record)
        if record[column] is None and not is_null[rid]:
            if COLUMNS[column] in ("json", "jsonb"):
                continue
            record[column] = sql_values[rid]
        if isinstance(record[column], str) and json_kind.get(rid, "string") != "string":
            continue  # a JSON number the decoder could not parse (1e999) stays text: not a filter matter
        out[rid] = record
    return out


def _pg_matching(
    conn: psycopg.Connection[Any], column: str, predicate: str, operand: Any, ids: Any
) -> set[int]:
    """Ids (among ``ids``) of the rows where Postgres finds ``predicate`` true."""
    ref = f"{column}::jsonb" if COLUMNS[column] == "json" else column
    sql = f"select id from t where {predicate.format(col=ref)}"
    return {r[0] for r in conn.execute(sql, (operand,)).fetchall()} & set(ids)


def _check(dsn: str, column: str, operands: list[str]) -> None:
    typ = COLUMNS[column]
    binder = RelayBinder(dsn)
    try:
        _check_with(binder, dsn, column, typ, operands)
    finally:
        binder.close()


def _check_with(binder: RelayBinder, dsn: str, column: str, typ: str, operands: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set timezone to 'UTC'")
        accepted = []
        for raw in operands:
            pg_ok = _pg_accepts(conn, typ, raw)
            bound, error = binder.bind(column, f"{column}=eq.{_quote(raw)}")
            if pg_ok and error is not None and "beyond what the relay can compare" in error:
                continue  # documented: BC dates, years past 9999 (refused, with that reason)
            assert (bound is not None) == pg_ok, (typ, raw, error)
            if pg_ok:
                accepted.append(raw)
        values: list[str | None] = list(dict.fromkeys([*ROWS[column], *accepted]))
        changes = _load_rows(conn, column, values)
        assert len(changes) == len(values)
        records = _records(conn, column, changes)
        cast = f"%s::text::{'jsonb' if typ == 'json' else typ}"
        ops = JSON_OPS if typ in ("json", "jsonb") else tuple(VALUE_OPS)
        for raw in accepted:
            for op in ops:
                for negated in (False, True):
                    text = f"{column}={'not.' if negated else ''}{op}.{_quote(raw)}"
                    bound, error = binder.bind(column, text)
                    assert bound is not None, error
                    predicate = f"{{col}} {VALUE_OPS[op]} {cast}"
                    expected = _pg_matching(
                        conn, column, f"not ({predicate})" if negated else predicate, raw, records
                    )
                    got = {i for i, r in records.items() if bound.matches(r)}
                    assert got == expected, (text, {i: records[i][column] for i in got ^ expected})
            bound, _ = binder.bind(column, f"{column}=isdistinct.{_quote(raw)}")
            expected = _pg_matching(conn, column, f"{{col}} is distinct from {cast}", raw, records)
            assert {i for i, r in records.items() if bound.matches(r)} == expected, raw
        if accepted:
            listed = accepted[:5]
            bound, error = binder.bind(column, f"{column}=in.({','.join(map(_quote, listed))})")
            assert bound is not None, error
            element = "jsonb" if typ == "json" else typ
            expected = _pg_matching(conn, column, f"{{col}} = any(%s::text[]::{element}[])", listed, records)
            assert {i for i, r in records.items() if bound.matches(r)} == expected, listed


@pytest.mark.parametrize("column", sorted(COLUMNS))
def test_odd_spellings_agree_with_postgres(dsn: str, column: str) -> None:
    _check(dsn, column, SPELLINGS[column])


_NUMBERISH = st.text(alphabet="0123456789.eE+-_ xIfnaNity", max_size=8)
_DATEISH = st.text(alphabet="0123456789-:. TZ+/", min_size=4, max_size=22)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    column=st.sampled_from(["i2", "i4", "i8", "n", "f4", "f8"]),
    operands=st.lists(_NUMBERISH | st.integers(-(2**64), 2**64).map(str), min_size=1, max_size=8),
)
def test_generated_numbers_agree_with_postgres(dsn: str, column: str, operands: list[str]) -> None:
    _check(dsn, column, operands)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    column=st.sampled_from(["d", "ts", "tz"]),
    operands=st.lists(
        _DATEISH
        | st.datetimes().map(lambda d: d.isoformat(sep=" "))
        | st.sampled_from(["epoch", "now", "today", "infinity"]),
        min_size=1,
        max_size=6,
    ),
)
def test_generated_datetimes_agree_with_postgres(dsn: str, column: str, operands: list[str]) -> None:
    _check(dsn, column, operands)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(string.ascii_letters, max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    column=st.sampled_from(["j", "jb"]),
    operands=st.lists(
        _JSON.map(json.dumps) | st.text('{}[]":,1a ', max_size=6),
        min_size=1,
        max_size=6,
    ),
)
def test_generated_json_agrees_with_postgres(dsn: str, column: str, operands: list[str]) -> None:
    _check(dsn, column, operands)


# --------------------------------------------------------------------------------------------------
# Patterns

_TEXT_ROWS = ["", "a", "ab", "abc", "ABC", "aBc", "a%c", "a_c", "a\\c", "xay", "é", "É", "ée", "a\nc",
              "abc\n", "cab12", "dogs", "1.5", "aaaa", "a.c"]  # fmt: skip
_LIKE_ALPHABET = "abcAB%_\\é"
_REGEX_PIECES = ["a", "b", "c", "A", ".", "^", "$", "*", "+", "?", "[a-c]", "[^a]", "(a|b)", "\\d", "\\.",
                 "{1,2}", "é", "\\w", "(?:ab)", "|"]  # fmt: skip


def _like_probe(pattern: str) -> str:
    """Text that a LIKE pattern's matcher follows up to its end (``\\c`` is c, ``_`` any
    character, ``%`` nothing), plus one more character, so a trailing lone escape is reached."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i + 1 : i + 2])
            i += 2
            continue
        out.append("" if c == "%" else "x" if c == "_" else c)
        i += 1
    return "".join(out) + "x"


def _check_patterns(dsn: str, patterns: list[tuple[str, str]]) -> None:
    pg_ops = {"like": "like", "ilike": "ilike", "match": "~", "imatch": "~*"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        changes = _load_rows(conn, "s", list(_TEXT_ROWS))
        records = _records(conn, "s", changes)
        for op, pattern in patterns:
            for negated in (False, True):
                text = f"s={'not.' if negated else ''}{op}.{_quote(pattern)}"
                try:
                    bound = parse_filter(text).bind("text")
                except FilterError as exc:
                    # Refused patterns are the documented ones Python cannot run like Postgres does;
                    # the rest of what is refused must be an error in Postgres too.
                    if "not supported by the relay" in str(exc) or "at most" in str(exc):
                        continue
                    # Postgres raises when it compiles a bad regex, but a bad LIKE pattern only
                    # when matching reaches the fault: probe with the pattern's own literal text.
                    probe = _like_probe(pattern)
                    with pytest.raises(psycopg.errors.DataError), conn.transaction():
                        conn.execute(
                            f"select s {pg_ops[op]} %s from t union all select %s {pg_ops[op]} %s",
                            (pattern, probe, pattern),
                        )
                    continue
                predicate = f"s {pg_ops[op]} %s"
                expected = _pg_matching(
                    conn, "s", f"not ({predicate})" if negated else predicate, pattern, records
                )
                got = {i for i, r in records.items() if bound.matches(r)}
                assert got == expected, (text, sorted(records[i]["s"] for i in got ^ expected))


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    patterns=st.lists(
        st.tuples(st.sampled_from(["like", "ilike"]), st.text(_LIKE_ALPHABET, max_size=6))
        | st.tuples(
            st.sampled_from(["match", "imatch"]),
            st.lists(st.sampled_from(_REGEX_PIECES), max_size=5).map("".join),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_generated_patterns_agree_with_postgres(dsn: str, patterns: list[tuple[str, str]]) -> None:
    _check_patterns(dsn, patterns)
