"""The decoder's two paths — typed (msgspec) and generic (orjson into dicts) — give the same events.

Why: the typed path exists for speed only (issue 16, drain); the generic one is the reference and
the fallback when msgspec is absent or ``RELAY_PURE_DECODER=1``.  Every event, value (and the
value's Python type: ``1`` vs ``1.0`` vs ``True`` are different JSON), error marker and
exception must be the same, whichever path decoded it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.changes import RowChange
from relay.core.protocol import dumps
from relay.core.sqltypes import TypeRegistry
from relay.core.subscriptions import (
    CHANGE,
    MOVED_IN,
    MOVED_OUT,
    FrameCache,
    _raw_data,
    change_payload,
    snapshot_payload,
)
from relay.core.wal2json import PURE_ENV, Decoder, fast_available

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
ROOT = Path(__file__).resolve().parents[3]
msgspec = pytest.importorskip("msgspec")  # a dependency: absent only in a broken install


def _lines() -> list[bytes]:
    out: list[bytes] = []
    for name in ("wal2json_v2_sample.jsonl", "wal2json_bookings.jsonl"):
        out += [ln for ln in (FIXTURES / name).read_bytes().splitlines() if ln.strip()]
    return out


def _typed(v: Any) -> Any:
    """A value with its exact Python type, recursively (``1 == 1.0 == True`` would hide a change)."""
    if isinstance(v, dict):
        return {k: _typed(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_typed(x) for x in v]
    return (type(v).__name__, repr(v))


def _shape(event: Any) -> Any:
    if isinstance(event, RowChange):
        return (
            "row",
            event.schema,
            event.table,
            event.action,
            event.columns,
            _typed(event.record),
            _typed(event.old_record),
            event.commit_timestamp,
            event.commit_lsn,
            event.index,
            event.pk,
            event.column_types,
            event.raw,
            event.errors,
            dumps({"record": event.record, "old_record": event.old_record}),
        )
    return event


def _run(decoder: Decoder, messages: list[bytes | str]) -> list[Any]:
    out: list[Any] = []
    for m in messages:
        try:
            out.append(_shape(decoder.decode(m)))
        except Exception as exc:  # the same failure, same type and text
            out.append(("raised", type(exc).__name__, str(exc)))
    return out


def _same(messages: list[bytes | str], types: TypeRegistry | None = None) -> None:
    fast, pure = Decoder(types, fast=True), Decoder(types, fast=False)
    assert fast.fast and not pure.fast
    assert _run(fast, messages) == _run(pure, messages)


def test_fast_path_is_active_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PURE_ENV, raising=False)
    assert fast_available()
    assert Decoder().fast


def test_env_forces_the_pure_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PURE_ENV, "1")
    assert not fast_available()
    assert not Decoder().fast
    assert Decoder(fast=True).fast  # an explicit choice wins (tests compare the two)


def test_captured_fixtures_decode_the_same() -> None:
    lines = _lines()
    _same(list(lines))
    _same([ln.decode() for ln in lines])


B = b'{"action":"B","timestamp":"2026-11-23 13:10:50.276462+00","lsn":"0/100","nextlsn":"0/200"}'


def _col(name: str, typ: str, oid: int | None, raw: str) -> str:
    oid_part = f',"typeoid":{oid}' if oid is not None else ""
    return f'{{"name":{json.dumps(name)},"type":{json.dumps(typ)}{oid_part},"value":{raw}}}'


def _row(action: str, cols: list[str] | None, ident: list[str] | None = None, extra: str = "") -> str:
    parts = [f'"action":"{action}"', '"schema":"public"', '"table":"t"']
    if cols is not None:
        parts.append('"columns":[' + ",".join(cols) + "]")
    if ident is not None:
        parts.append('"identity":[' + ",".join(ident) + "]")
    parts.append('"pk":[{"name":"id","type":"integer","typeoid":23}]')
    return "{" + ",".join(parts) + extra + "}"


EDGE_CASES: list[str] = [
    # numerics: short (float), long (exact int / Decimal), past 64 bits, in the identity, null
    _row("I", [_col("id", "integer", 23, "1"), _col("n", "numeric", 1700, "12.50")]),
    _row("I", [_col("id", "integer", 23, "1"), _col("n", "numeric", 1700, "0.10000000000000001")]),
    _row("I", [_col("n", "numeric", 1700, "123456789012345678901234567890")]),
    _row("I", [_col("n", "numeric", 1700, "-98765432109876543210.5")]),
    _row("I", [_col("n", "numeric", 1700, "18446744073709551615"), _col("m", "numeric", 1700, "null")]),
    _row("D", None, [_col("id", "integer", 23, "7"), _col("n", "numeric", 1700, "1234567890.1234567")]),
    _row("I", [_col("n", "numeric", 1700, "1e400")]),  # not a double: only json reads it
    _row(
        "I", [_col("i", "bigint", 20, "-9223372036854775808"), _col("j", "bigint", 20, "9223372036854775807")]
    ),
    _row("I", [_col("f", "double precision", 701, "1.7976931348623157e+308"), _col("g", "real", 700, "-0")]),
    # strings: escapes, unicode, surrogate pairs; invalid JSON strings
    _row("I", [_col("s", "text", 25, json.dumps('a"b\\c\n\t\u0001é€😀'))]),
    _row("I", [_col("s", "text", 25, '"\\ud83d\\ude00"')]),
    _row("I", [_col("s", "text", 25, '"\\ud800"')]),
    # converted types, and a value whose conversion fails (array of ints with a word)
    _row("I", [_col("ts", "timestamp with time zone", 1184, '"2026-11-23 13:10:50.27+00"')]),
    _row("I", [_col("a", "integer[]", 1007, '"{1,2,x}"'), _col("b", "integer[]", 1007, '"{1,NULL}"')]),
    _row("I", [_col("j", "jsonb", 3802, json.dumps('{"a": [1, 100000000000000000001]}'))]),
    _row("I", [_col("x", "mytype", 999999, '"v"'), _col("y", "mytype", None, '"w"')]),
    # UPDATE: TOASTed value missing from the new row, completed from the old one
    _row(
        "U",
        [_col("id", "integer", 23, "1")],
        [_col("id", "integer", 23, "1"), _col("big", "text", 25, '"x"')],
    ),
    # odd shapes: the generic path's errors, word for word
    '{"action":"I","table":"t","columns":[]}',
    '{"action":"I","schema":"public"}',
    '{"action":"I","schema":"public","table":"t"}',
    '{"action":"I","schema":"public","table":"t","columns":[{"type":"int"}]}',
    '{"action":"I","schema":1,"table":"t","columns":[]}',
    '{"action":"X"}',
    "{}",
    "[1,2]",
    '"B"',
    "not json",
    '{"action":"B","lsn":null}',
    '{"action":"B","lsn":"0/10","xid":"12"}',
    '{"action":"B","lsn":"0/10","xid":12,"timestamp":"2026-11-23 13:10:50+02"}',
    '{"action":"C","nextlsn":"0/30"}',
    '{"action":"M","lsn":"0/40","prefix":"realtime","content":"{}","transactional":1}',
    '{"action":"M","prefix":7}',
    '{"action":"T","schema":"public","table":"t"}',
    _row("I", [_col("id", "integer", 23, "1")], extra=',"unknown":{"nested":[1]}'),
]


def test_edge_cases_decode_the_same() -> None:
    _same([B.decode(), *EDGE_CASES])


def test_numbers_as_text_decode_the_same() -> None:
    rows = [
        _row("I", [_col("n", "numeric", 1700, '"12345678901234567890.25"'), _col("i", "int", 23, '"5"')]),
        _row("I", [_col("f", "double precision", 701, '"NaN"'), _col("g", "real", 700, '"-Infinity"')]),
    ]
    _same([B.decode(), *rows], TypeRegistry(numbers_as_text=True))


_TYPES: list[tuple[str, int, st.SearchStrategy[str]]] = [
    ("integer", 23, st.integers(-(2**31), 2**31 - 1).map(str)),
    ("bigint", 20, st.integers(-(2**63), 2**63 - 1).map(str)),
    ("numeric", 1700, st.decimals(allow_nan=False, allow_infinity=False, places=4).map(lambda d: f"{d:f}")),
    ("numeric", 1700, st.integers(-(10**30), 10**30).map(str)),
    ("double precision", 701, st.floats(allow_nan=False, allow_infinity=False).map(repr)),
    ("text", 25, st.text().map(json.dumps)),
    ("boolean", 16, st.sampled_from(["true", "false"])),
    ("timestamp with time zone", 1184, st.just('"2026-11-23 13:10:50.500135+00"')),
    (
        "text[]",
        1009,
        st.lists(st.text(alphabet='ab ,"\\{}N', max_size=4), max_size=3).map(
            lambda xs: json.dumps("{" + ",".join(json.dumps(x) for x in xs) + "}")
        ),
    ),
    (
        "jsonb",
        3802,
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
            ),
            max_leaves=6,
        ).map(lambda v: json.dumps(json.dumps(v))),
    ),
]


@st.composite
def _rows(draw: st.DrawFn) -> str:
    n = draw(st.integers(1, 6))
    cols = []
    for i in range(n):
        typ, oid, values = draw(st.sampled_from(_TYPES))
        raw = draw(st.one_of(st.just("null"), values))
        cols.append(_col(f"c{i}", typ, oid, raw))
    action = draw(st.sampled_from(["I", "U", "D"]))
    return _row(action, None if action == "D" else cols, cols if action != "I" else None)


@settings(max_examples=300, deadline=None)
@given(st.lists(_rows(), min_size=1, max_size=4))
def test_random_rows_decode_the_same(rows: list[str]) -> None:
    _same([B.decode(), *rows])


def test_exact_values_on_the_typed_path() -> None:
    """Spot check of what the comparison above relies on: the typed path keeps exactness."""
    d = Decoder(fast=True)
    d.decode(B)
    ev = d.decode(_row("I", [_col("n", "numeric", 1700, "123456789012345678901234567890.5")]))
    assert isinstance(ev, RowChange) and ev.record == {"n": Decimal("123456789012345678901234567890.5")}


def test_decoder_unit_tests_pass_on_the_pure_path() -> None:
    """The decoder's own unit tests, run again with the fast path switched off by the env var."""
    env = {**os.environ, PURE_ENV: "1"}
    tests = ["tests/unit/core/test_wal2json.py", "tests/unit/core/test_values.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


# -- raw rows (issue 16, "the record's JSON straight from wal2json's bytes") ---------------------
#
# The typed path keeps values as wal2json's JSON and splices them into frames; ``record`` is
# built on first read.  The frames must be the same JSON as the eager (pure) path's, numbers
# compared exactly, for every change and every variant the fan-out builds of it.


def _exact(frame: str | bytes) -> Any:
    return json.loads(frame, parse_float=Decimal)


def _frames(event: Any, first_column: str | None) -> Any:
    """Every frame the fan-out can build of ``event``, parsed exactly (or what raised)."""
    if not isinstance(event, RowChange):
        return event
    out: list[Any] = []
    for max_bytes in (0, 120):  # whole, and trimmed by the payload quota
        cache = FrameCache(event, max_data_bytes=max_bytes)
        out.append(
            (
                "plain",
                max_bytes,
                cache.trimmed,
                cache.repaired,
                _exact(cache.frame("realtime:t", [7], "1.0.0")),
            )
        )
        wire = cache.wire("realtime:t", [7, 8], "2.0.0")
        out.append(("wire", _exact(wire[2:] if wire[1] < 126 else wire[4:] if wire[1] == 126 else wire[10:])))
        for kind in (MOVED_OUT, MOVED_IN):
            out.append((kind, _exact(cache.variant(kind).frame("realtime:t", [7], "1.0.0"))))
        if first_column is not None:
            sel = cache.variant(CHANGE, select=(first_column,))
            out.append(("select", _exact(sel.frame("realtime:t", [7], "1.0.0"))))
    snap = FrameCache(event, snapshot_payload(CHANGE, select=None, row_type="INSERT"))
    out.append(("snapshot", _exact(snap.frame("realtime:t", [7], "1.0.0"))))
    # the dict, after the frames (a repair replaces unencodable values by null)
    out.append(("rows", _typed(event.record), _typed(event.old_record), event.errors))
    return out


def _run_frames(decoder: Decoder, messages: list[bytes | str]) -> list[Any]:
    out: list[Any] = []
    for m in messages:
        try:
            event = decoder.decode(m)
        except Exception as exc:
            out.append(("raised", type(exc).__name__, str(exc)))
            continue
        first = event.columns[0].name if isinstance(event, RowChange) and event.columns else None
        try:
            out.append(_frames(event, first))
        except Exception as exc:  # the same failure on both paths
            out.append(("frame raised", type(exc).__name__, str(exc)))
    return out


def _same_frames(messages: list[bytes | str], types: TypeRegistry | None = None) -> None:
    fast, pure = Decoder(types, fast=True), Decoder(types, fast=False)
    assert _run_frames(fast, messages) == _run_frames(pure, messages)


RAW_EDGE_CASES: list[str] = [
    # timestamps: the fast text rewrite and everything it must leave to the converter
    _row(
        "I",
        [
            _col("a", "timestamp with time zone", 1184, '"2026-11-23 13:10:50+00"'),
            _col("b", "timestamp with time zone", 1184, '"2026-11-23 13:10:50.123456+05:30"'),
            _col("c", "timestamp with time zone", 1184, '"infinity"'),
            _col("d", "timestamp with time zone", 1184, '"0044-03-15 12:00:00+00 BC"'),
            _col("e", "timestamp with time zone", 1184, '"10000-01-01 00:00:00+00"'),
            _col("f", "timestamp with time zone", 1184, "null"),
            _col("g", "timestamp without time zone", 1114, '"2026-11-23 13:10:50.5"'),
            _col("h", "timestamp without time zone", 1114, '"-infinity"'),
            _col("i", "timestamp with time zone", 1184, '"2026-11-23 13:10:50\\t+00"'),
            _col("j", "timestamp with time zone", 1184, '"2026-11-23 13:10:50+00:00:00"'),
        ],
    ),
    # all of a row's timestamptz rewritten at once (nulls between), and a single one
    _row(
        "U",
        [
            _col("a", "timestamp with time zone", 1184, "null"),
            _col("b", "timestamp with time zone", 1184, '"2026-11-23 13:10:50.1+00"'),
            _col("c", "timestamp with time zone", 1184, '"1999-01-08 04:05:06-08"'),
            _col("d", "timestamp with time zone", 1184, "null"),
        ],
        [_col("a", "timestamp with time zone", 1184, '"0001-01-01 00:00:00+00"')],
    ),
    # odd identifiers: quotes, backslashes, unicode, JSON-looking names
    _row(
        "I",
        [
            _col('we"ird', "integer", 23, "1"),
            _col("back\\slash", "text", 25, '"x"'),
            _col("ünï 😀", "jsonb", 3802, json.dumps('{"k": "\\u00e9"}')),
            _col('":{}', "boolean", 16, "true"),
        ],
    ),
    # numbers: trailing zeros, exponents, -0, huge numerics (past a double, with exponents)
    _row(
        "I",
        [
            _col("n", "numeric", 1700, "42.50"),
            _col("z", "numeric", 1700, "0.000000000000000000001"),
            _col("f", "double precision", 701, "1e+20"),
            _col("g", "double precision", 701, "-0"),
            _col("r", "real", 700, "3.4028235e+38"),
        ],
    ),
    _row("I", [_col("n", "numeric", 1700, "1" + "0" * 400)]),
    # past a double, a float beside it: the generic path reads the whole message exactly
    _row("I", [_col("n", "numeric", 1700, "1" + "0" * 400), _col("f", "double precision", 701, "0.1")]),
    _row("D", None, [_col("f", "double precision", 701, "0.1"), _col("n", "numeric", 1700, "-1e400")]),
    _row(
        "U",
        [_col("f", "double precision", 701, "0.1")],
        [_col("f", "double precision", 701, "0.1"), _col("n", "numeric", 1700, "-" + "9" * 320)],
    ),
    _row("I", [_col("n", "numeric", 1700, "1234567890123456789.5e3")]),
    _row("I", [_col("n", "numeric", 1700, "NaN")]),
    # deep and exact json, json that is not valid JSON text for a user type named json
    _row("I", [_col("j", "jsonb", 3802, json.dumps("[" * 3000 + "]" * 3000))]),
    _row("I", [_col("j", "json", 114, json.dumps('{"a": 1e400, "b": 100000000000000000001}'))]),
    _row("I", [_col("j", "jsonb", 3802, '"not json"'), _col("k", "json", 114, "null")]),
    # arrays, including one whose conversion fails and one whose value cannot be encoded
    _row(
        "I",
        [
            _col("a", "double precision[]", 1022, '"{NaN,-Infinity,1e+300,0.1}"'),
            _col("b", "numeric[]", 1231, '"{NaN,Infinity,100000000000000000000000000000}"'),
            _col("c", "integer[]", 1007, '"{1,2,x}"'),
            _col("d", "text[]", 1009, '"{\\"a\\\\\\"b\\",NULL}"'),
        ],
    ),
    # text-like arrays written straight from a simple literal, and those that are not simple
    _row(
        "I",
        [
            _col("a", "text[]", 1009, '"{bench,live}"'),
            _col("b", "text[]", 1009, '"{a}"'),
            _col("c", "text[]", 1009, '"{NULL,x}"'),
            _col("d", "text[]", 1009, '"{null,Null}"'),
            _col("e", "character varying[]", 1015, '"{é,ü/x,ab}"'),
            _col("f", "uuid[]", 2951, '"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"'),
            _col("g", "integer[]", 1007, '"{1,2}"'),
            _col("h", "text[]", 1009, '"{}"'),
            _col("i", "text[]", 1009, '"[0:1]={a,b}"'),
            _col("j", "text[]", 1009, '"{{a,b},{c,d}}"'),
            _col("k", "text[]", 1009, '"{a,\\"b c\\"}"'),
            _col("l", "text[]", 1009, "null"),
            _col("m", "bytea[]", 1001, '"{\\\\x01}"'),
        ],
    ),
    # control characters and escapes in text, a lone surrogate (never from Postgres)
    _row("I", [_col("s", "text", 25, json.dumps("\x00\x01\b\f\n\r\t\u2028/"))]),
    _row("I", [_col("s", "text", 25, '"\\ud800"'), _col("t", "text", 25, '"ok"')]),
    _row("U", [_col("s", "text", 25, '"\\uDFFF"')], [_col("s", "text", 25, '"a"')]),
    # a replica identity of the key only, and one of the full row
    _row(
        "U",
        [
            _col("id", "integer", 23, "1"),
            _col("t", "timestamp with time zone", 1184, '"2026-11-23 13:10:50+00"'),
        ],
        [_col("id", "integer", 23, "1")],
    ),
    _row(
        "U",
        [_col("id", "integer", 23, "1"), _col("v", "text", 25, '"new"')],
        [_col("id", "integer", 23, "1"), _col("v", "text", 25, '"old"')],
    ),
    _row("D", None, [_col("id", "integer", 23, "1"), _col("v", "jsonb", 3802, json.dumps("[1, 2]"))]),
    _row("I", []),
]


def test_raw_rows_give_the_eager_frames_on_fixtures_and_edge_cases() -> None:
    not_utf8 = _row("I", [_col("s", "text", 25, '"x"')]).encode().replace(b'"x"', b'"\xff"')
    _same_frames([*_lines(), B, *EDGE_CASES, *RAW_EDGE_CASES, not_utf8])


def test_raw_rows_give_the_eager_frames_with_numbers_as_text() -> None:
    rows = [
        _row("I", [_col("n", "numeric", 1700, '"12345678901234567890.25"'), _col("i", "int", 23, '"5"')]),
        _row("I", [_col("f", "double precision", 701, '"NaN"'), _col("g", "real", 700, '"-Infinity"')]),
        _row("I", [_col("n", "numeric", 1700, '"Infinity"'), _col("m", "numeric", 1700, '"-0.00"')]),
    ]
    _same_frames([B.decode(), *rows], TypeRegistry(numbers_as_text=True))


@settings(max_examples=300, deadline=None)
@given(st.lists(_rows(), min_size=1, max_size=4))
def test_raw_rows_give_the_eager_frames_on_random_rows(rows: list[str]) -> None:
    _same_frames([B.decode(), *rows])


def test_raw_data_is_the_dict_paths_bytes() -> None:
    """The raw rows' ``data`` (encoded without the payload dict) is byte for byte what the
    dict path encodes from the same change, for every action, errors and stream id."""
    d = Decoder(fast=True)
    d.decode(B)
    messages: list[bytes | str] = [*_lines(), *RAW_EDGE_CASES]
    seen = 0
    for m in messages:
        ev = d.decode(m)
        if not isinstance(ev, RowChange):
            continue
        for stream in ("", 'db"1/x'):
            ev.stream = stream
            fast = _raw_data(ev)
            if fast is None:
                continue
            seen += 1
            assert (
                fast
                == dumps(change_payload(ev))
                == dumps(change_payload(ev, raw=False))
                .replace(dumps(ev.record) if ev.record is not None else b"\x00", ev.record_json() or b"")
                .replace(
                    dumps(ev.old_record) if ev.old_record is not None else b"\x00",
                    ev.old_record_json() or b"",
                )
            )
    assert seen > 20


def test_raw_rows_are_lazy_and_spliced() -> None:
    """The point of the raw rows: no dict unless something reads it, and the frame carries
    wal2json's own number text (the same JSON value as the eager ``12.5``)."""
    d = Decoder(fast=True)
    d.decode(B)
    ev = d.decode(_row("I", [_col("id", "integer", 23, "1"), _col("n", "numeric", 1700, "12.50")]))
    assert isinstance(ev, RowChange)
    assert ev.record_json() == b'{"id":1,"n":12.50}'
    assert ev._record is not None and type(ev._record) is not dict  # not built yet
    assert '"record":{"id":1,"n":12.50}' in FrameCache(ev).frame("realtime:t", [1], "1.0.0")
    assert type(ev._record) is not dict  # framing did not build it either
    assert ev.record == {"id": 1, "n": 12.5}
    ev.record = {"id": 2}  # replacing the row drops its raw JSON
    assert ev.record_json() is None
    assert '"record":{"id":2}' in FrameCache(ev).frame("realtime:t", [1], "1.0.0")
