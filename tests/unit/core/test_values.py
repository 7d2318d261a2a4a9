"""Values arrive exactly as Postgres wrote them, and one value the relay cannot handle never stops
the stream (issue 11, items 1, 2, 4, 5, 6).  Decoder -> FrameCache -> the frame text a client reads.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

import orjson
import pytest

from relay.config import Config
from relay.core.changes import Action, Begin, Column, Lsn, RowChange
from relay.core.filters import parse_filter
from relay.core.sqltypes import RawJson, TypeRegistry
from relay.core.subscriptions import FrameCache
from relay.core.tokens import Verifier
from relay.core.wal2json import NUMBERS_AS_TEXT, Decoder, wal2json_options
from relay.postgres.catalog import Catalog
from relay.server.app import RelayServer

V1, V2 = "1.0.0", "2.0.0"


def _col(name: str, typ: str, oid: int, raw: str) -> str:
    """A wal2json v2 column with ``raw`` as the value's JSON text, exactly as wal2json prints it."""
    return f'{{"name":{json.dumps(name)},"type":{json.dumps(typ)},"typeoid":{oid},"value":{raw}}}'


def _decode(*cols: str, types: TypeRegistry | None = None) -> RowChange:
    d = Decoder(types)
    assert isinstance(d.decode('{"action":"B","lsn":"0/100","nextlsn":"0/200"}'), Begin)
    ev = d.decode(
        '{"action":"I","schema":"public","table":"t","columns":['
        + ",".join(cols)
        + '],"pk":[{"name":"id","type":"integer","typeoid":23}]}'
    )
    assert isinstance(ev, RowChange)
    return ev


def _data_text(change: RowChange, vsn: str) -> str:
    """The ``data`` object's JSON text inside the frame a subscriber receives."""
    frame = FrameCache(change).frame("realtime:t", [1], vsn)
    start = frame.index('"data":') + len('"data":')
    return frame[start : frame.rindex("}")] if vsn == V1 else frame[start : frame.rindex("}", 0, -1)]


def _record(change: RowChange, vsn: str = V1) -> dict[str, Any]:
    """The record as an exact JSON reader sees it (ints unbounded, decimals as Decimal)."""
    frame = FrameCache(change).frame("realtime:t", [1], vsn)
    obj = json.loads(frame, parse_float=Decimal)
    payload = obj["payload"] if vsn == V1 else obj[4]
    record: dict[str, Any] = payload["data"]["record"]
    return record


# -- item 1: big numerics ------------------------------------------------------------------------
@pytest.mark.parametrize("vsn", [V1, V2])
@pytest.mark.parametrize(
    "text",
    [
        "18446744073709551616",  # 2**64: the first int orjson cannot encode
        "-9223372036854775809",  # -2**63 - 1
        "1000000000000000000000000000000",  # 10^30
        "0.00000000000000000000000000000123456789012345678",  # str(Decimal) says 1.23...E-30
        "123456789012345678901234567890.000",
    ],
)
def test_big_numeric_is_delivered_verbatim(text: str, vsn: str) -> None:
    change = _decode(_col("id", "integer", 23, "1"), _col("n", "numeric", 1700, text))
    frame = FrameCache(change).frame("realtime:t", [1], vsn)
    assert f'"n":{text}' in frame  # the digits Postgres printed, as a JSON number
    assert _record(change, vsn) == {"id": 1, "n": Decimal(text)}


def test_short_numeric_is_exact_in_value() -> None:
    """A numeric a double holds exactly goes out as that double: same value, shortest spelling."""
    change = _decode(_col("n", "numeric", 1700, "0.000000000000000000000000000001"))
    assert _record(change) == {"n": Decimal("1e-30")}


def test_numeric_as_text_big_integer_and_specials() -> None:
    """wal2json 2.6's numeric-data-types-as-string: exact text for every number type."""
    types = TypeRegistry(numbers_as_text=True)
    change = _decode(
        _col("id", "integer", 23, '"7"'),
        _col("n", "numeric", 1700, '"18446744073709551616"'),
        _col("nan", "numeric", 1700, '"NaN"'),
        _col("f", "double precision", 701, '"-Infinity"'),
        _col("g", "double precision", 701, '"1e+300"'),
        _col("r", "real", 700, '"Infinity"'),
        types=types,
    )
    assert _record(change) == {
        "id": 7,
        "n": 18446744073709551616,
        "nan": "NaN",
        "f": "-Infinity",
        "g": Decimal("1e300"),
        "r": "Infinity",
    }


def test_numbers_as_text_option_is_only_sent_when_asked() -> None:
    assert NUMBERS_AS_TEXT not in wal2json_options([("public", "t")])
    assert wal2json_options([("public", "t")], numbers_as_text=True)[NUMBERS_AS_TEXT] == "1"


# -- items 2 and 6: json/jsonb exactly as Postgres wrote it --------------------------------------
@pytest.mark.parametrize("vsn", [V1, V2])
@pytest.mark.parametrize(
    "text",
    [
        '{"a": 100000000000000000001}',
        "[0.1000000000000000055511151231257827]",
        "[1e400]",
        '{"b": [1, 2.50, -0.0, 1E-7], "a": "x\\"y"}',
        "[" * 300 + "]" * 300,  # orjson writes 254 levels at most
        "[" * 3000 + "]" * 3000,  # orjson reads 1024 at most; Python's json 1000
    ],
)
@pytest.mark.parametrize(("typ", "oid"), [("jsonb", 3802), ("json", 114)])
def test_json_value_is_embedded_verbatim(text: str, vsn: str, typ: str, oid: int) -> None:
    change = _decode(_col("id", "integer", 23, "1"), _col("j", typ, oid, json.dumps(text)))
    assert change.errors is None
    assert f'"j":{text}' in _data_text(change, vsn)


def test_jsonb_array_elements_are_verbatim() -> None:
    arr = json.dumps('{"{\\"a\\": 100000000000000000001}","[1e400]"}')
    change = _decode(_col("ja", "jsonb[]", 3807, arr))
    assert '"ja":[{"a": 100000000000000000001},[1e400]]' in _data_text(change, V1)


def test_json_filter_compares_exactly_and_never_raises_on_depth() -> None:
    exact = parse_filter('j=eq.{"a":100000000000000000001}').bind("jsonb")
    assert exact.matches({"j": RawJson('{"a": 100000000000000000001}')})
    assert not exact.matches({"j": RawJson('{"a": 100000000000000000000}')})  # equal as doubles
    deep = RawJson("[" * 3000 + "]" * 3000)
    with pytest.raises(ValueError):
        _ = deep.value
    assert not parse_filter("j=eq.[]").bind("jsonb").matches({"j": deep})  # unknown: no match


# -- item 5: NaN / Infinity ------------------------------------------------------------------------
def test_float_and_numeric_arrays_keep_nan_and_infinity() -> None:
    change = _decode(
        _col("fa", "double precision[]", 1022, '"{NaN,-Infinity,1e+300,0.1}"'),
        _col("na", "numeric[]", 1231, '"{NaN,Infinity,100000000000000000000000000000}"'),
    )
    assert _record(change) == {
        "fa": ["NaN", "-Infinity", Decimal("1e300"), Decimal("0.1")],
        "na": ["NaN", "Infinity", 10**29],
    }


@pytest.mark.parametrize(
    ("flt", "typ", "value", "expected"),
    [
        ("num=eq.NaN", "numeric", "NaN", True),
        ("num=gt.1e300", "numeric", "NaN", True),  # NaN sorts above every number in Postgres
        ("num=lt.NaN", "numeric", "Infinity", True),
        ("num=eq.Infinity", "numeric", "Infinity", True),
        ("f8=gt.1e300", "float8", "Infinity", True),
        ("f8=lt.1e300", "float8", "-Infinity", True),
        ("f8=eq.NaN", "float8", "NaN", True),
        ("f8=neq.NaN", "float8", "NaN", False),
        ("f8=lt.1e300", "float8", "Infinity", False),
    ],
)
def test_filters_see_special_values_as_postgres_does(flt: str, typ: str, value: str, expected: bool) -> None:
    f = parse_filter(flt)
    assert f.bind(typ).matches({f.column: value}) is expected


# -- item 4: one bad value affects only that value -----------------------------------------------
def test_value_that_fails_to_convert_is_null_with_marker() -> None:
    change = _decode(
        _col("id", "integer", 23, "1"),
        _col("a", "integer[]", 1007, '"{1,x}"'),  # int("x") raised and stopped replication
        _col("t", "text", 25, '"kept"'),
    )
    assert change.record == {"id": 1, "a": None, "t": "kept"}
    assert change.errors == ['ColumnError decode_failed: column "a" sent as null (ValueError)']
    frame = orjson.loads(FrameCache(change).frame("realtime:t", [1], V1))
    assert frame["payload"]["data"]["errors"] == change.errors
    assert frame["payload"]["data"]["record"] == {"id": 1, "a": None, "t": "kept"}


def test_value_that_fails_to_encode_is_null_with_marker() -> None:
    change = RowChange(
        "public", "t", Action.INSERT, (Column("id", "int4"), Column("x", "unknown")),
        {"id": 1, "x": 2**70}, None, "2026-01-01T00:00:00.000Z", Lsn(0x100), 0,
    )  # fmt: skip
    cache = FrameCache(change)
    assert cache.repaired == ['ColumnError encode_failed: column "x" sent as null (TypeError)']
    data = orjson.loads(cache.frame("realtime:t", [1], V2))[4]["data"]
    assert data["record"] == {"id": 1, "x": None}
    assert data["errors"] == cache.repaired


def test_server_counts_and_logs_value_errors_without_the_value(caplog: pytest.LogCaptureFixture) -> None:
    cfg = Config(database_url="postgresql://127.0.0.1:1/none", jwt_secret="s" * 32)
    server = RelayServer(cfg, Verifier(secret=cfg.jwt_secret), Catalog(cfg.database_url or ""))
    change = _decode(_col("id", "integer", 23, "1"), _col("a", "integer[]", 1007, '"{1,secret-value}"'))
    with caplog.at_level(logging.WARNING, logger="relay.server"):
        assert server.dispatch(change) is None
    assert server.value_errors == 1
    assert 'public.t at 0000000000000100:00000000: ColumnError decode_failed: column "a"' in caplog.text
    assert "secret-value" not in caplog.text


def test_replayed_change_is_as_exact_as_the_live_one() -> None:
    """Resume re-decodes the stored wal2json text: the same verbatim values come out."""
    live = _decode(
        _col("n", "numeric", 1700, "18446744073709551616"),
        _col("j", "jsonb", 3802, json.dumps("[" * 300 + "1e400" + "]" * 300)),
    )
    again = Decoder().replay(live.raw, live.seq, live.commit_timestamp)
    for vsn in (V1, V2):
        assert _data_text(again, vsn) == _data_text(live, vsn)
        assert '"n":18446744073709551616' in _data_text(again, vsn)


def test_jsonb_null_is_not_sql_null() -> None:
    """Kept as text, a JSON ``null`` is a value (as in Postgres), while SQL NULL matches nothing."""
    change = _decode(_col("j", "jsonb", 3802, '"null"'), _col("k", "jsonb", 3802, "null"))
    f = parse_filter("j=eq.null").bind("jsonb")
    assert f.matches(change.filter_row)
    assert not parse_filter("k=eq.null").bind("jsonb").matches(change.filter_row)
    assert _record(change) == {"j": None, "k": None}  # both are null on the wire
