"""Unit tests for relay.core.wal2json: decoding captured and synthetic wal2json v2 output."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from relay.core.changes import Action, Begin, Column, Commit, Lsn, Message, RowChange
from relay.core.protocol import dumps
from relay.core.sqltypes import TypeInfo, TypeRegistry
from relay.core.wal2json import WAL2JSON_OPTIONS, DecodeError, Decoder, wal2json_options

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "wal2json_v2_sample.jsonl"


def _lines() -> list[bytes]:
    return [ln for ln in FIXTURE.read_bytes().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def events() -> list[Any]:
    d = Decoder()
    return [d.decode(ln) for ln in _lines()]


EXPECTED_RECORD: dict[str, Any] = {
    "id": 1,
    "n": 12.5,
    "ts": "2026-11-23T13:10:50.275863+00:00",
    "t2": "2026-11-23T13:10:50.275863",
    "j": {"x": [1, 2]},
    "a": [1, 2, None],
    "ta": ["a b", 'c"d', None],
    "b": True,
    "by": "deadbeef",
    "f": 1.5,
    "u": "70a92ca3-ac46-4db9-a45e-e69f0d452f5b",
    "big": "x" * 100,
    "d": "2026-01-02",
}
EXPECTED_COLUMNS = (
    Column("id", "int8"),
    Column("n", "numeric"),
    Column("ts", "timestamptz"),
    Column("t2", "timestamp"),
    Column("j", "jsonb"),
    Column("a", "_int4"),
    Column("ta", "_text"),
    Column("b", "bool"),
    Column("by", "bytea"),
    Column("f", "float8"),
    Column("u", "uuid"),
    Column("big", "text"),
    Column("d", "date"),
)


# -- the captured fixture -----------------------------------------------------------------------
class TestFixture:
    def test_shape(self, events: list[Any]) -> None:
        kinds = [type(e).__name__ for e in events]
        assert kinds == [
            "Begin", "RowChange", "Commit",
            "Begin", "RowChange", "Commit",
            "Begin", "Commit",
            "Begin", "Message", "Commit",
            "Begin", "RowChange", "Commit",
        ]  # fmt: skip

    def test_begin_commit_lsns(self, events: list[Any]) -> None:
        b, c = events[0], events[2]
        assert isinstance(b, Begin) and isinstance(c, Commit)
        assert b.commit_lsn == Lsn.parse("0/150AFE0") == 0x150AFE0
        assert b.end_lsn == 0x150B010
        assert b.xid is None
        assert b.commit_timestamp == "2026-11-23T13:10:50.276Z"
        assert c.commit_lsn == 0x150AFE0
        assert c.end_lsn == 0x150B010
        assert c.commit_timestamp == "2026-11-23T13:10:50.276Z"
        assert str(c.end_lsn) == "0/150B010"

    def test_insert(self, events: list[Any]) -> None:
        ins = events[1]
        assert isinstance(ins, RowChange)
        assert ins.action is Action.INSERT
        assert (ins.schema, ins.table) == ("public", "t")
        assert ins.record == EXPECTED_RECORD
        assert list(ins.record) == list(EXPECTED_RECORD)  # column order
        assert ins.old_record is None
        assert ins.columns == EXPECTED_COLUMNS
        assert ins.pk == ("id",)
        assert ins.column_types == {c.name: c.type for c in EXPECTED_COLUMNS}
        assert ins.commit_timestamp == "2026-11-23T13:10:50.276Z"
        # position: the commit LSN of the B message (not the change's own lsn), index 0
        assert ins.commit_lsn == 0x150AFE0
        assert ins.index == 0
        assert ins.filter_row is ins.record

    def test_insert_value_types(self, events: list[Any]) -> None:
        rec = events[1].record
        assert type(rec["id"]) is int
        assert rec["b"] is True
        assert isinstance(rec["f"], float)
        assert rec["a"][0] == 1 and type(rec["a"][0]) is int

    def test_update_has_both_rows(self, events: list[Any]) -> None:
        up = events[4]
        assert isinstance(up, RowChange)
        assert up.action is Action.UPDATE
        assert up.record == {**EXPECTED_RECORD, "n": 1}
        assert up.old_record == EXPECTED_RECORD
        assert up.columns == EXPECTED_COLUMNS
        assert up.commit_lsn == 0x150B2B8
        assert up.index == 0  # index resets per transaction
        assert up.commit_timestamp == "2026-11-23T13:10:50.277Z"

    def test_empty_transaction(self, events: list[Any]) -> None:
        b, c = events[6], events[7]
        assert isinstance(b, Begin) and isinstance(c, Commit)
        assert b.commit_lsn == c.commit_lsn == 0x150B3C8
        assert c.end_lsn == 0x150B3F8

    def test_logical_message(self, events: list[Any]) -> None:
        m = events[9]
        assert m == Message(prefix="realtime", content='{"hello":1}', transactional=True, lsn=Lsn(0x150B440))

    def test_delete(self, events: list[Any]) -> None:
        de = events[12]
        assert isinstance(de, RowChange)
        assert de.action is Action.DELETE
        assert de.record is None
        assert de.old_record == {**EXPECTED_RECORD, "n": 1}
        assert de.columns == EXPECTED_COLUMNS
        assert de.pk == ("id",)
        assert de.commit_lsn == 0x150B5E0
        assert de.index == 0
        assert de.commit_timestamp == "2026-11-23T13:10:50.278Z"
        assert de.filter_row is de.old_record

    def test_decode_str_and_bytes_equal(self) -> None:
        a, b = Decoder(), Decoder()
        for ln in _lines()[:3]:
            x, y = a.decode(ln), b.decode(ln.decode())
            if isinstance(x, RowChange):
                assert isinstance(y, RowChange)
                assert (x.record, x.columns, x.commit_lsn, x.index) == (
                    y.record,
                    y.columns,
                    y.commit_lsn,
                    y.index,
                )
            else:
                assert x == y

    def test_positions_strictly_increase(self, events: list[Any]) -> None:
        pos = [(e.commit_lsn, e.index) for e in events if isinstance(e, RowChange)]
        assert pos == sorted(pos) and len(set(pos)) == len(pos)


# -- synthetic messages -------------------------------------------------------------------------
def _b(lsn: str = "0/100", ts: str = "2026-11-23 13:10:50.276462+00", **extra: Any) -> str:
    return json.dumps({"action": "B", "timestamp": ts, "lsn": lsn, "nextlsn": "0/200", **extra})


def _col(name: str, typ: str, oid: int, value: Any = None, raw: str | None = None) -> str:
    v = raw if raw is not None else json.dumps(value)
    return f'{{"name":{json.dumps(name)},"type":{json.dumps(typ)},"typeoid":{oid},"value":{v}}}'


def _row(
    action: str,
    columns: list[str] | None = None,
    identity: list[str] | None = None,
    schema: str = "public",
    table: str = "t",
    pk: str = '[{"name":"id","type":"integer","typeoid":23}]',
) -> str:
    parts = [f'"action":"{action}"', f'"schema":{json.dumps(schema)}', f'"table":{json.dumps(table)}']
    if columns is not None:
        parts.append('"columns":[' + ",".join(columns) + "]")
    if identity is not None:
        parts.append('"identity":[' + ",".join(identity) + "]")
    parts.append(f'"pk":{pk}')
    return "{" + ",".join(parts) + "}"


def _rec(c: RowChange) -> dict[str, Any]:
    assert c.record is not None
    return c.record


class _TxDecoder(Decoder):
    def row(self, data: str | bytes) -> RowChange:
        ev = self.decode(data)
        assert isinstance(ev, RowChange)
        return ev


def _decoder_in_tx(lsn: str = "0/100", types: TypeRegistry | None = None) -> _TxDecoder:
    d = _TxDecoder(types)
    assert isinstance(d.decode(_b(lsn)), Begin)
    return d


class TestSynthetic:
    def test_index_counts_and_resets(self) -> None:
        d = _decoder_in_tx("0/100")
        row = _row("I", [_col("id", "integer", 23, 1)])
        changes = [d.row(row) for _ in range(3)]
        assert [(c.commit_lsn, c.index) for c in changes] == [(0x100, 0), (0x100, 1), (0x100, 2)]
        d.decode('{"action":"C","lsn":"0/100","nextlsn":"0/200"}')
        d.decode(_b("0/300"))
        c = d.row(row)
        assert (c.commit_lsn, c.index) == (0x300, 0)

    def test_message_does_not_consume_index(self) -> None:
        d = _decoder_in_tx()
        row = _row("I", [_col("id", "integer", 23, 1)])
        assert d.row(row).index == 0
        m = d.decode('{"action":"M","lsn":"0/150","transactional":false,"prefix":"realtime","content":"x"}')
        assert isinstance(m, Message) and m.transactional is False and m.lsn == 0x150
        assert d.row(row).index == 1

    def test_begin_with_xid(self) -> None:
        b = Decoder().decode(_b(xid=1234))
        assert isinstance(b, Begin) and b.xid == 1234

    def test_commit_without_lsn_uses_begin(self) -> None:
        d = _decoder_in_tx("1/10")
        c = d.decode('{"action":"C"}')
        assert isinstance(c, Commit)
        assert c.commit_lsn == c.end_lsn == (1 << 32) | 0x10
        assert c.commit_timestamp == "2026-11-23T13:10:50.276Z"

    def test_non_utc_commit_timestamp(self) -> None:
        d = _TxDecoder()
        b = d.decode(_b(ts="2026-11-23 18:40:50.276462+05:30"))
        assert isinstance(b, Begin)
        assert b.commit_timestamp == "2026-11-23T13:10:50.276Z"
        c = d.row(_row("I", [_col("id", "integer", 23, 1)]))
        assert c.commit_timestamp == "2026-11-23T13:10:50.276Z"

    def test_truncate_ignored(self) -> None:
        d = _decoder_in_tx()
        assert d.decode('{"action":"T","schema":"public","table":"t"}') is None

    def test_unknown_action(self) -> None:
        with pytest.raises(DecodeError, match="unknown wal2json action 'X'"):
            Decoder().decode('{"action":"X"}')
        with pytest.raises(DecodeError):
            Decoder().decode("{}")

    @pytest.mark.parametrize(
        "data",
        [b"\x00\xff\xfe garbage", b"", b"{", "not json", b"\xc3\x28", b"[1,2", b'{"action":"I",}'],
    )
    def test_garbage(self, data: bytes | str) -> None:
        with pytest.raises(DecodeError):
            Decoder().decode(data)

    @pytest.mark.parametrize("data", ["[]", "1", '"B"', "null", "[{}]"])
    def test_not_an_object(self, data: str) -> None:
        with pytest.raises(DecodeError):
            Decoder().decode(data)

    def test_row_without_table(self) -> None:
        with pytest.raises(DecodeError):
            _decoder_in_tx().row('{"action":"I","schema":"public","columns":[]}')

    def test_null_values(self) -> None:
        d = _decoder_in_tx()
        c = d.row(
            _row(
                "I",
                [
                    _col("id", "integer", 23, 1),
                    _col("a", "integer[]", 1007, None),
                    _col("j", "jsonb", 3802, None),
                ],
            )
        )
        assert c.record == {"id": 1, "a": None, "j": None}

    def test_update_toast_unchanged_completed_from_old_row(self) -> None:
        # REPLICA IDENTITY FULL: identity holds every column; the new row lacks the unchanged
        # TOASTed "big" column, which sits in the middle of the column order.
        big = "y" * 5000
        ident = [_col("id", "integer", 23, 1), _col("big", "text", 25, big), _col("n", "integer", 23, 1)]
        cols = [_col("id", "integer", 23, 1), _col("n", "integer", 23, 2)]
        c = _decoder_in_tx().row(_row("U", cols, ident))
        assert c.action is Action.UPDATE
        assert c.record == {"id": 1, "big": big, "n": 2}
        assert list(c.record) == ["id", "big", "n"]
        assert c.old_record == {"id": 1, "big": big, "n": 1}
        assert c.columns == (Column("id", "int4"), Column("big", "text"), Column("n", "int4"))

    def test_update_with_default_identity(self) -> None:
        # REPLICA IDENTITY DEFAULT and a key change: identity holds only the old key
        cols = [_col("id", "integer", 23, 2), _col("v", "text", 25, "x")]
        c = _decoder_in_tx().row(_row("U", cols, [_col("id", "integer", 23, 1)]))
        assert c.record == {"id": 2, "v": "x"}
        assert c.old_record == {"id": 1}
        assert c.columns == (Column("id", "int4"), Column("v", "text"))

    def test_update_without_identity(self) -> None:
        c = _decoder_in_tx().row(_row("U", [_col("id", "integer", 23, 1)]))
        assert c.record == {"id": 1}
        assert c.old_record is None

    def test_delete_default_identity(self) -> None:
        c = _decoder_in_tx().row(_row("D", None, [_col("id", "integer", 23, 7)]))
        assert c.record is None
        assert c.old_record == {"id": 7}
        assert c.columns == (Column("id", "int4"),)
        assert c.column_types == {"id": "int4"}

    def test_numeric_many_digits_exact(self) -> None:
        c = _decoder_in_tx().row(
            _row("I", [_col("id", "integer", 23, 1), _col("n", "numeric", 1700, raw="12345678901234567.123")])
        )
        assert _rec(c)["n"] == Decimal("12345678901234567.123")
        assert isinstance(_rec(c)["n"], Decimal)

    def test_negative_numeric_many_digits_exact(self) -> None:
        c = _decoder_in_tx().row(_row("I", [_col("n", "numeric", 1700, raw="-0.12345678901234567891")]))
        assert _rec(c)["n"] == Decimal("-0.12345678901234567891")

    def test_numeric_in_identity_exact(self) -> None:
        c = _decoder_in_tx().row(_row("D", None, [_col("n", "numeric", 1700, raw="98765432109876543.21")]))
        assert c.old_record == {"n": Decimal("98765432109876543.21")}

    def test_numeric_rounding_to_short_float_exact(self) -> None:
        c = _decoder_in_tx().row(_row("I", [_col("n", "numeric", 1700, raw="0.10000000000000001")]))
        assert _rec(c)["n"] == Decimal("0.10000000000000001")

    def test_numeric_integer_beyond_64_bits_short_float_repr(self) -> None:
        c = _decoder_in_tx().row(_row("I", [_col("n", "numeric", 1700, raw="100000000000000000001")]))
        assert _rec(c)["n"] == 100000000000000000001
        assert dumps(_rec(c)["n"]) == b"100000000000000000001"  # orjson cannot encode such an int

    @pytest.mark.parametrize(
        "raw", ["123456789012345678901234567890", "-123456789012345678901234567890", "18446744073709551616"]
    )
    def test_numeric_integer_beyond_64_bits(self, raw: str) -> None:
        c = _decoder_in_tx().row(
            _row("I", [_col("id", "integer", 23, 1), _col("n", "numeric", 1700, raw=raw)])
        )
        assert _rec(c)["n"] == int(raw)
        assert dumps(_rec(c)["n"]).decode() == raw  # exact, and encodable (was an int past 64 bits)
        assert _rec(c)["id"] == 1

    def test_numeric_short_stays_number(self) -> None:
        c = _decoder_in_tx().row(
            _row("I", [_col("n", "numeric", 1700, raw="12.50"), _col("m", "numeric", 1700, raw="7")])
        )
        assert c.record == {"n": 12.5, "m": 7}

    def test_numeric_special_values(self) -> None:
        c = _decoder_in_tx().row(
            _row("I", [_col("n", "numeric", 1700, "NaN"), _col("m", "numeric", 1700, "Infinity")])
        )
        assert c.record == {"n": "NaN", "m": "Infinity"}

    def test_types_of_many_kinds(self) -> None:
        cols = [
            _col("tz", "timestamp with time zone", 1184, "2026-01-01 10:00:00.5+05:30"),
            _col("tzn", "timestamp with time zone", 1184, "2026-01-01 10:00:00-08"),
            _col("inf", "timestamp with time zone", 1184, "infinity"),
            _col("ts", "timestamp without time zone", 1114, "2026-01-01 10:00:00"),
            _col("js", "json", 114, '{"a": "b", "n": [true, null]}'),
            _col("ia", "integer[]", 1007, "{{1,2},{3,NULL}}"),
            _col("ta", "text[]", 1009, r'{"a,b","{c}","d\\e",NULL,"NULL"}'),
            _col("ea", "text[]", 1009, "{}"),
            _col("da", "integer[]", 1007, "[0:1]={5,6}"),
            _col("vc", "character varying(20)[]", 1015, '{x,"y z"}'),
            _col("u", "uuid", 2950, "70a92ca3-ac46-4db9-a45e-e69f0d452f5b"),
            _col("dt", "date", 1082, "2026-01-02"),
            _col("bo", "boolean", 16, False),
            _col("iv", "interval", 1186, "1 day 02:00:00"),
        ]
        c = _decoder_in_tx().row(_row("I", cols))
        assert c.record == {
            "tz": "2026-01-01T10:00:00.5+05:30",
            "tzn": "2026-01-01T10:00:00-08:00",
            "inf": "infinity",
            "ts": "2026-01-01T10:00:00",
            "js": {"a": "b", "n": [True, None]},
            "ia": [[1, 2], [3, None]],
            "ta": ["a,b", "{c}", "d\\e", None, "NULL"],
            "ea": [],
            "da": [5, 6],
            "vc": ["x", "y z"],
            "u": "70a92ca3-ac46-4db9-a45e-e69f0d452f5b",
            "dt": "2026-01-02",
            "bo": False,
            "iv": "1 day 02:00:00",
        }
        assert c.column_types["vc"] == "_varchar"
        assert c.column_types["iv"] == "interval"

    def test_unknown_oid_uses_format_type(self) -> None:
        c = _decoder_in_tx().row(_row("I", [_col("x", "character varying(20)[]", 777777, "{a,NULL}")]))
        assert c.columns == (Column("x", "_varchar"),)
        assert c.record == {"x": ["a", None]}

    def test_enum_from_registry(self) -> None:
        reg = TypeRegistry([TypeInfo(40000, "mood", "E"), TypeInfo(40001, "_mood", "A", 40000)])
        d = _decoder_in_tx(types=reg)
        c = d.row(_row("I", [_col("m", "mood", 40000, "happy"), _col("ms", "mood[]", 40001, "{happy,sad}")]))
        assert c.columns == (Column("m", "mood"), Column("ms", "_mood"))
        assert c.record == {"m": "happy", "ms": ["happy", "sad"]}

    def test_no_pk(self) -> None:
        c = _decoder_in_tx().row('{"action":"I","schema":"s","table":"t","columns":[]}')
        assert c.pk == ()
        assert c.record == {}
        assert (c.schema, c.table) == ("s", "t")

    @example(100000000000000000001)
    @example(610351562499999981648139564190007297)
    @given(st.integers(min_value=-(10**40), max_value=10**40))
    def test_numeric_integers_exact(self, n: int) -> None:
        c = _decoder_in_tx().row(_row("I", [_col("n", "numeric", 1700, raw=str(n))]))
        assert _rec(c)["n"] == n

    @example(Decimal("12207031249999999.000"))
    @given(
        st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-(10**20), max_value=10**20)
    )
    def test_numeric_decimals_value_preserved(self, n: Decimal) -> None:
        c = _decoder_in_tx().row(_row("I", [_col("n", "numeric", 1700, raw=str(n))]))
        v = _rec(c)["n"]
        assert Decimal(repr(v)) == n if isinstance(v, float) else Decimal(v) == n


class TestOptions:
    def test_constant_options(self) -> None:
        assert WAL2JSON_OPTIONS["format-version"] == "2"
        for k in (
            "include-transaction",
            "include-timestamp",
            "include-pk",
            "include-type-oids",
            "include-lsn",
        ):
            assert WAL2JSON_OPTIONS[k] == "1"

    def test_tables_escaped(self) -> None:
        opts = wal2json_options([("public", "t"), ("my schema", "a.b,c")])
        assert opts["add-tables"] == "public.t,my\\ schema.a\\.b\\,c"
        assert opts["add-msg-prefixes"] == "realtime"
        assert opts["format-version"] == "2"

    def test_wildcard_backslash_and_all_whitespace_escaped(self) -> None:
        # A bare "*" is wal2json's wildcard (a table named "*" would add its whole schema) and
        # any isspace() character ends an entry; a backslash escapes itself.
        opts = wal2json_options([("*", "*"), ("s\\x", "a\tb\nc\rd\ve\ff"), ("Ünï", "'q\"")])
        assert opts["add-tables"] == ("\\*.\\*,s\\\\x.a\\\tb\\\nc\\\rd\\\ve\\\ff,Ünï.'q\"")

    def test_no_tables_matches_nothing(self) -> None:
        opts = wal2json_options([], ("a", "b"))
        assert opts["add-tables"]
        assert "*" not in opts["add-tables"]
        assert opts["add-msg-prefixes"] == "a,b"

    def test_does_not_mutate_constant(self) -> None:
        wal2json_options([("public", "t")])
        assert "add-tables" not in WAL2JSON_OPTIONS
