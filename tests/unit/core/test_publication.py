"""Column lists applied to wal2json bytes: only the listed columns stay, every value byte for byte."""

from __future__ import annotations

import orjson
import pytest

from relay.core.publication import ColumnStripper, PublicationRules
from relay.core.wal2json import Decoder

BEGIN = b'{"action":"B","xid":7,"lsn":"0/16B3748","nextlsn":"0/16B3778","timestamp":"2026-12-06 10:00:00+00"}'


def _row(schema: str, table: str, cols: list[tuple[str, str, str]], identity: bool = False) -> bytes:
    """A wal2json format-2 row message; values given as raw JSON text (kept exactly)."""

    def js(text: str) -> str:
        return orjson.dumps(text).decode()

    body = ",".join('{"name":' + js(n) + ',"type":' + js(t) + ',"value":' + v + "}" for n, t, v in cols)
    action = "D" if identity else "I"
    side = "identity" if identity else "columns"
    return (
        f'{{"action":"{action}","xid":7,"schema":{js(schema)},"table":{js(table)},"{side}":[{body}],'
        '"pk":[{"name":"id","type":"integer"}]}'
    ).encode()


COLS = [
    ("id", "integer", "1"),
    ("name", "text", '"Ann \\"the\\" \\u00e9"'),
    ("ssn", "text", '"111-11"'),
    ("amount", "numeric", "123456789012345678901234567890.000000000000000000001"),
    ("doc", "jsonb", '{"a":[1,2,{"b":null}],"big":1e400}'),
]


def test_only_the_listed_columns_stay_and_values_are_kept_byte_for_byte() -> None:
    strip = ColumnStripper({("public", "people"): frozenset({"id", "name", "amount", "doc"})})
    out = strip(_row("public", "people", COLS))
    assert b"ssn" not in out and b"111-11" not in out
    assert out == _row("public", "people", [c for c in COLS if c[0] != "ssn"])
    # the decoder reads it as a row without the column
    dec = Decoder()
    dec.decode(BEGIN)
    change = dec.decode(out)
    assert change is not None and [c.name for c in change.columns] == ["id", "name", "amount", "doc"]  # type: ignore[union-attr]


def test_identity_is_stripped_too_and_other_messages_are_untouched() -> None:
    strip = ColumnStripper({("public", "people"): frozenset({"id"})})
    old = _row("public", "people", COLS, identity=True)
    assert strip(old) == _row("public", "people", COLS[:1], identity=True)
    other = _row("public", "other", COLS)
    assert strip(other) is other  # not parsed at all (no listed table named in it)
    # a value that spells a listed table's name in another table's row: parsed, left as it was
    tricky = _row("app", "notes", [("id", "integer", "1"), ("body", "text", '"\\"table\\":\\"people\\""')])
    tricky2 = _row(
        "app", "people", [("id", "integer", "1"), ("ssn", "text", '"x"')]
    )  # same name, other schema
    assert strip(tricky) == tricky and strip(tricky2) == tricky2
    for msg in (BEGIN, b'{"action":"C"}', b'{"action":"M","prefix":"realtime","content":"people"}'):
        assert strip(msg) == msg
    # every column listed: nothing changes
    assert ColumnStripper({("public", "people"): frozenset(c[0] for c in COLS)})(
        _row("public", "people", COLS)
    ) == (_row("public", "people", COLS))


def test_odd_identifiers_are_matched_exactly() -> None:
    name = 'we"ird tä,ble.*'
    strip = ColumnStripper({("s p", name): frozenset({"id"})})
    msg = _row("s p", name, COLS[:3])
    assert strip(msg) == _row("s p", name, COLS[:1])
    assert not ColumnStripper({})  # no lists: the pipeline does not even call it


def test_a_message_that_cannot_be_parsed_raises_rather_than_passing_unstripped() -> None:
    strip = ColumnStripper({("public", "people"): frozenset({"id"})})
    with pytest.raises(Exception):  # noqa: B017 - the pipeline skips (and counts) such a message
        strip(b'{"action":"I","schema":"public","table":"people","columns":[{"name":"ssn",')


def test_published_actions_become_wal2json_actions() -> None:
    assert PublicationRules().wal2json_actions() is None
    assert PublicationRules(actions=frozenset({"insert"})).wal2json_actions() == "insert"
    assert PublicationRules(actions=frozenset({"delete", "insert"})).wal2json_actions() == "insert,delete"
    assert PublicationRules(actions=frozenset()).wal2json_actions() == "truncate"
    rules = PublicationRules(row_filters={("public", "f"): "active"})
    assert rules.streamed([("public", "f"), ("public", "g")]) == [("public", "g")]


def test_hostile_values_pass_byte_for_byte() -> None:
    """What wal2json prints for the values Postgres can hold: deep jsonb (a JSON string), NaN
    (null), huge numerics (digits), control characters and non-ASCII text."""
    strip = ColumnStripper({("public", "people"): frozenset({"id", "doc", "n", "t"})})
    deep = '"' + "[" * 100_000 + "]" * 100_000 + '"'
    cols = [
        ("id", "integer", "1"),
        ("doc", "jsonb", deep),
        ("n", "numeric", "1" + "0" * 5000),
        ("t", "text", '"\\u0000é\\u0001\\"\\\\"'),
        ("ssn", "text", '"x"'),
        ("f", "double precision", "null"),
    ]
    out = strip(_row("public", "people", cols))
    assert out == _row("public", "people", [c for c in cols if c[0] in {"id", "doc", "n", "t"}])
