"""Position: one home for the bit layout, the wire form and the parser of positions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.changes import Action, Column, Lsn, RowChange, format_position, parse_stream_position
from relay.core.position import INDEX_MASK, Position, commit_of, index_of, pack, seq_before

LSNS = st.integers(min_value=0, max_value=2**64 - 1)
INDEXES = st.integers(min_value=0, max_value=INDEX_MASK)
STREAMS = st.sampled_from(["", "9F0C2A1B3D4E5F60", "0000000000000001"])


@given(LSNS, INDEXES)
def test_pack_unpacks(lsn: int, index: int) -> None:
    seq = pack(lsn, index)
    assert commit_of(seq) == lsn and index_of(seq) == index


@given(LSNS, INDEXES, LSNS, INDEXES)
def test_integer_order_is_commit_order_then_index(a: int, i: int, b: int, j: int) -> None:
    assert (pack(a, i) < pack(b, j)) == ((a, i) < (b, j))


@given(LSNS, INDEXES, STREAMS)
def test_text_round_trips_and_sorts_like_the_integer(lsn: int, index: int, stream: str) -> None:
    pos = Position(pack(lsn, index), stream)
    assert Position.parse(str(pos)) == pos
    assert parse_stream_position(format_position(pos.seq, stream)) == (stream, pos.seq)


@given(LSNS, INDEXES, LSNS, INDEXES)
def test_text_of_one_stream_compares_as_the_integers(a: int, i: int, b: int, j: int) -> None:
    x, y = Position(pack(a, i), "ABCDEF0123456789"), Position(pack(b, j), "ABCDEF0123456789")
    assert (str(x) < str(y)) == (x.seq < y.seq)


def test_change_position_is_position_format() -> None:
    """RowChange inlines the format on the hot path: it must stay the same as Position's."""
    ch = RowChange(
        schema="public",
        table="t",
        action=Action.INSERT,
        columns=(Column("id", "int4"),),
        record={"id": 1},
        old_record=None,
        commit_timestamp="",
        commit_lsn=Lsn(0x16B3748),
        index=7,
        stream="9F0C2A1B3D4E5F60",
    )
    assert ch.seq == pack(0x16B3748, 7)
    assert ch.position == str(Position(ch.seq, ch.stream)) == "9F0C2A1B3D4E5F60/00000000016B3748:00000007"


def test_seq_before_is_just_below_the_first_change_of_a_commit() -> None:
    assert seq_before(5) < pack(5, 0) and seq_before(5) == pack(4, INDEX_MASK)
    assert seq_before(0) == -1


def test_lower_case_stream_is_normalised_and_bad_text_refused() -> None:
    assert Position.parse("9f0c2a1b3d4e5f60/00000000016B3748:00000000").stream == "9F0C2A1B3D4E5F60"
    for bad in ("0/16B3748", "", None, 5, "00000000016B3748:0000000"):
        with pytest.raises(ValueError, match="invalid position"):
            Position.parse(bad)
    assert Position.format(-1) == "0000000000000000:00000000"
