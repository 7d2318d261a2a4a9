"""Snapshot on join, pure parts: visibility by xid, the query, rows in wal2json's shape."""

from __future__ import annotations

import pytest

from relay.core.filters import parse_filter
from relay.core.relay_messages import SnapshotFence, decode_message
from relay.core.snapshot import PgSnapshot, SnapshotColumn, row_message, snapshot_query, xid_of_raw
from relay.core.sqltypes import TypeRegistry
from relay.core.subscriptions import BindingError, parse_bindings
from relay.core.wal2json import Decoder

EPOCH = 1 << 32


def test_visibility_follows_xmin_xmax_and_the_in_progress_list() -> None:
    snap = PgSnapshot.parse("100:110:102,105")
    assert snap == PgSnapshot(100, 110, frozenset({102, 105}))
    assert snap.visible(99) and snap.visible(101) and snap.visible(109)
    assert not snap.visible(102) and not snap.visible(105)  # in progress when it was taken
    assert not snap.visible(110) and not snap.visible(200)  # started after it
    assert not snap.visible(0)  # unknown xid: delivered, never dropped
    assert PgSnapshot.parse("7:7:") == PgSnapshot(7, 7, frozenset())
    with pytest.raises(ValueError):
        PgSnapshot.parse("7:7")


def test_32_bit_xids_are_widened_to_the_snapshots_epoch() -> None:
    """wal2json prints 32-bit xids; pg_current_snapshot 64-bit ones with the epoch on top."""
    snap = PgSnapshot(3 * EPOCH + 100, 3 * EPOCH + 110, frozenset({3 * EPOCH + 105}))
    assert snap.widen(105) == 3 * EPOCH + 105
    assert not snap.visible(105) and snap.visible(101) and not snap.visible(111)
    # the counter wrapped just before the snapshot: old xids belong to the previous epoch
    wrapped = PgSnapshot(3 * EPOCH + 5, 3 * EPOCH + 20, frozenset())
    assert wrapped.widen(0xFFFFFFF0) == 2 * EPOCH + 0xFFFFFFF0
    assert wrapped.visible(0xFFFFFFF0)
    # ...and wraps right after it: new xids belong to the next epoch, never visible
    late = PgSnapshot(3 * EPOCH + 0xFFFFFF00, 3 * EPOCH + 0xFFFFFFF0, frozenset())
    assert late.widen(3) == 4 * EPOCH + 3
    assert not late.visible(3)


COLUMNS = [
    SnapshotColumn("id", 20, "bigint"),
    SnapshotColumn('we"ird name', 25, "text"),
    SnapshotColumn("n", 1700, "numeric"),
    SnapshotColumn("ok", 16, "boolean"),
    SnapshotColumn("raw", 17, "bytea"),
    SnapshotColumn("j", 3802, "jsonb"),
    SnapshotColumn("f", 701, "double precision"),
]


def test_query_quotes_identifiers_and_passes_operands_as_parameters() -> None:
    flt = parse_filter('id=eq.5,we"ird name=in.(a,"b)c"),n=gte.1.5,ok=is.null,j=neq.{}').bind(
        {"id": "int8", 'we"ird name': "text", "n": "numeric", "ok": "bool", "j": "jsonb"}
    )
    sql, args = snapshot_query('sch"ema', "t; drop table x", COLUMNS, flt)
    assert 'from "sch""ema"."t; drop table x"' in sql
    assert 'pg_catalog.format(\'%s\', "we""ird name")' in sql
    assert '"id" = $1::text::pg_catalog.int8' in sql
    assert '"we""ird name" = any($2::text[]::pg_catalog.text[])' in sql
    assert '"n" >= $3::text::pg_catalog.numeric' in sql
    assert '"ok" is null' in sql
    assert '"j"' not in sql.split(" where ")[1]  # jsonb: left to the relay's own filter
    assert args == ["5", ["a", "b)c"], "1.5"]
    assert "drop table x" not in sql.replace('"t; drop table x"', "")


def test_only_exact_conditions_reach_sql() -> None:
    """Negations, patterns and ordering on text stay with the relay (collations, case folding)."""
    flt = parse_filter("id=neq.5,title=like.a%,title=gt.b,id=not.eq.3").bind({"id": "int8", "title": "text"})
    sql, args = snapshot_query("public", "t", COLUMNS[:2], flt)
    assert " where " not in sql and args == []
    assert snapshot_query("public", "t", COLUMNS[:2], None)[1] == []


def test_rows_decode_like_wal2json_inserts() -> None:
    values = ["12345678901234567890", "x", "123456789012345678901234.5678", "t", "\\x01ff", '{"a": 1}', "NaN"]
    raw = row_message("public", "t", COLUMNS, ["id"], values, numbers_as_text=False)
    change = Decoder(TypeRegistry()).replay(raw, 0, "2026-12-06T18:00:00.000Z")
    assert change.record is not None
    assert change.record["id"] == 12345678901234567890
    assert change.record['we"ird name'] == "x"
    assert str(change.record["n"]) == "123456789012345678901234.5678"
    assert change.record["ok"] is True and change.record["raw"] == "01ff"
    assert change.record["f"] is None  # wal2json 2.5 prints NaN as null
    assert change.pk == ("id",) and change.xid == 0
    as_text = row_message("public", "t", COLUMNS, ["id"], values, numbers_as_text=True)
    change = Decoder(TypeRegistry(numbers_as_text=True)).replay(as_text, 0, "")
    assert (
        change.record is not None
        and change.record["f"] == "NaN"
        and change.record["id"] == 12345678901234567890
    )
    nulls = row_message("public", "t", COLUMNS, [], [None] * len(COLUMNS), numbers_as_text=False)
    change = Decoder(TypeRegistry()).replay(nulls, 0, "")
    assert change.record == dict.fromkeys(c.name for c in COLUMNS)


def test_xids_come_from_the_stream() -> None:
    raw = (
        b'{"action":"I","xid":4294967295,"lsn":"0/1","schema":"public","table":"t",'
        b'"columns":[{"name":"id","type":"integer","typeoid":23,"value":1}]}'
    )
    assert xid_of_raw(raw) == 4294967295 and xid_of_raw(b'{"action":"I"}') == 0
    change = Decoder(TypeRegistry()).decode(raw)
    assert change is not None and getattr(change, "xid", None) == 4294967295


def test_snapshot_flag_on_bindings() -> None:
    spec, plain = parse_bindings(
        [
            {"event": "*", "table": "t", "snapshot": True},
            {"event": "*", "table": "t", "snapshot": "false"},
        ]
    )
    assert spec.snapshot and not plain.snapshot
    assert spec.id == plain.id  # the flag does not change the binding's id
    assert parse_bindings([{"table": "t", "snapshot": "TRUE"}])[0].snapshot
    for bad in ({"table": "t", "snapshot": 1}, {"table": "t", "snapshot": "yes"}, {"snapshot": True}):
        with pytest.raises(BindingError):
            parse_bindings([bad])


def test_fence_message() -> None:
    assert decode_message('{"op":"snapshot_fence","id":"abc"}', 0) == SnapshotFence("abc")
    assert decode_message('{"op":"snapshot_fence","id":1}', 0) is None
