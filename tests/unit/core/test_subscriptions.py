"""Unit tests for relay.core.subscriptions: binding parsing, ids, the fan-out plan, frame cache."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.authorize import ASK_POSTGRES, Denied, Verdict
from relay.core.changes import Action, Column, Lsn, RowChange
from relay.core.filters import parse_filter
from relay.core.protocol import dumps, parse
from relay.core.subscriptions import (
    CHANGE,
    ERROR,
    MOVED_IN,
    MOVED_OUT,
    BindingError,
    BindingSpec,
    FrameCache,
    SubscriptionIndex,
    binding_id,
    change_payload,
    parse_bindings,
)

V1, V2 = "1.0.0", "2.0.0"


class FakeSub:
    def __init__(self, topic: str = "realtime:room", vsn: str = V2, allow: bool = True) -> None:
        self.topic = topic
        self.vsn = vsn
        self.allow = allow
        self.asked: list[RowChange] = []

    def decide(self, change: RowChange, which: int) -> Verdict:
        self.asked.append(change)
        return self.allow


def route(idx: SubscriptionIndex[FakeSub], ch: RowChange) -> list[tuple[FakeSub, list[int]]]:
    """Deliveries of ``ch`` as (subscriber, ids), with FakeSub deciding visibility."""
    deliveries, pending = idx.route(ch, lambda sub, which: sub.decide(ch, which))
    assert pending == []
    return [(d.sub, d.ids) for d in deliveries]


def change(
    action: Action = Action.INSERT,
    record: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    schema: str = "public",
    table: str = "t",
) -> RowChange:
    if action is Action.INSERT:
        rec, old_rec = record if record is not None else {"id": 1, "v": "a"}, None
    elif action is Action.UPDATE:
        rec, old_rec = (
            record if record is not None else {"id": 1, "v": "b"},
            old if old is not None else {"id": 1},
        )
    else:
        rec, old_rec = None, old if old is not None else {"id": 1}
    cols_src = rec if rec is not None else old_rec
    assert cols_src is not None
    return RowChange(
        schema=schema,
        table=table,
        action=action,
        columns=tuple(Column(k, "int4" if k == "id" else "text") for k in cols_src),
        record=rec,
        old_record=old_rec,
        commit_timestamp="2026-11-23T13:10:50.276Z",
        commit_lsn=Lsn(0x150AFE0),
        index=0,
        pk=("id",),
        column_types={"id": "int4", "v": "text"},
    )


def new_index() -> SubscriptionIndex[FakeSub]:
    return SubscriptionIndex()


def add(
    index: SubscriptionIndex[FakeSub], owner: FakeSub, entry: dict[str, Any], col_type: str = "int4"
) -> BindingSpec:
    (spec,) = parse_bindings([entry])
    bound = spec.filter.bind(col_type) if spec.filter is not None else None
    index.add(spec, owner, bound)
    return spec


# -- parse_bindings -------------------------------------------------------------------------------
class TestParseBindings:
    def test_none_is_empty(self) -> None:
        assert parse_bindings(None) == []
        assert parse_bindings([]) == []

    @pytest.mark.parametrize("bad", [{}, "x", 1, {"event": "*"}, ("a",)])
    def test_non_list(self, bad: Any) -> None:
        with pytest.raises(BindingError, match="must be a list"):
            parse_bindings(bad)

    @pytest.mark.parametrize("bad", ["x", 1, None, ["*"]])
    def test_entry_not_object(self, bad: Any) -> None:
        with pytest.raises(BindingError, match=r"postgres_changes\[1\] must be an object"):
            parse_bindings([{"event": "*"}, bad])

    @pytest.mark.parametrize(
        ("event", "expected"),
        [
            ("INSERT", "INSERT"),
            ("UPDATE", "UPDATE"),
            ("DELETE", "DELETE"),
            ("*", "*"),
            ("insert", "INSERT"),
            ("Delete", "DELETE"),
            ("bogus", "*"),
            ("", "*"),
            (None, "*"),
            (5, "*"),
            (["INSERT"], "*"),
        ],
    )
    def test_event_normalisation(self, event: Any, expected: str) -> None:
        (spec,) = parse_bindings([{"event": event, "schema": "public", "table": "t"}])
        assert spec.event == expected

    def test_missing_event_is_star(self) -> None:
        (spec,) = parse_bindings([{"schema": "public"}])
        assert spec.event == "*"

    @pytest.mark.parametrize("schema", [None, ""])
    def test_schema_defaults_to_public(self, schema: Any) -> None:
        entry = {"event": "*"} if schema is None else {"event": "*", "schema": schema}
        (spec,) = parse_bindings([entry])
        assert spec.schema == "public"

    @pytest.mark.parametrize("table", [None, "", "*"])
    def test_table_wildcards(self, table: Any) -> None:
        entry: dict[str, Any] = {"event": "*", "schema": "s"}
        if table is not None:
            entry["table"] = table
        (spec,) = parse_bindings([entry])
        assert spec.table is None
        assert spec.schema == "s"

    def test_same_binding_id_for_table_spellings(self) -> None:
        a, b, c = parse_bindings(
            [
                {"event": "*", "schema": "public"},
                {"event": "*", "schema": "public", "table": "*"},
                {"event": "*", "table": ""},
            ]
        )
        assert a.id == b.id == c.id

    @pytest.mark.parametrize("entry", [{"schema": 5}, {"table": 5}, {"schema": ["a"]}, {"table": {"a": 1}}])
    def test_non_string_schema_table(self, entry: dict[str, Any]) -> None:
        with pytest.raises(BindingError, match="must be strings"):
            parse_bindings([{"event": "*", **entry}])

    def test_filter_parsed(self) -> None:
        (spec,) = parse_bindings([{"event": "UPDATE", "schema": "public", "table": "t", "filter": "id=eq.5"}])
        assert spec.filter is not None
        assert (spec.filter.column, spec.filter.op, spec.filter.values) == ("id", "eq", ("5",))
        assert spec.id == binding_id("UPDATE", "public", "t", "id=eq.5")

    def test_empty_filter_ignored(self) -> None:
        (spec,) = parse_bindings([{"event": "*", "schema": "public", "table": "t", "filter": ""}])
        assert spec.filter is None
        assert spec.id == binding_id("*", "public", "t", None)

    @pytest.mark.parametrize("table", [None, "*", ""])
    def test_filter_without_table(self, table: Any) -> None:
        entry: dict[str, Any] = {"event": "*", "schema": "public", "filter": "id=eq.1"}
        if table is not None:
            entry["table"] = table
        with pytest.raises(BindingError, match="a filter needs a table"):
            parse_bindings([entry])

    def test_filter_not_string(self) -> None:
        with pytest.raises(BindingError, match="filter must be a string"):
            parse_bindings([{"event": "*", "table": "t", "filter": 5}])

    @pytest.mark.parametrize("bad", ["id", "id=eq", "id=bogus.1", "=eq.1", "id=in.()"])
    def test_bad_filter_is_binding_error(self, bad: str) -> None:
        with pytest.raises(BindingError):
            parse_bindings([{"event": "*", "table": "t", "filter": bad}])

    def test_order_and_raw_kept(self) -> None:
        entries = [
            {"event": "INSERT", "schema": "public", "table": "a"},
            {"event": "DELETE", "schema": "other", "table": "b", "filter": "x=neq.1"},
        ]
        specs = parse_bindings(entries)
        assert [(s.event, s.schema, s.table) for s in specs] == [
            ("INSERT", "public", "a"),
            ("DELETE", "other", "b"),
        ]
        assert specs[0].raw is entries[0] and specs[1].raw is entries[1]

    def test_spec_ids_match_binding_id(self) -> None:
        (spec,) = parse_bindings([{"event": "insert", "schema": "", "table": "*"}])
        assert spec.id == binding_id("INSERT", "public", None, None)


# -- binding_id -----------------------------------------------------------------------------------
class TestBindingId:
    def test_stable(self) -> None:
        a = binding_id("INSERT", "public", "t", "id=eq.1")
        assert a == binding_id("INSERT", "public", "t", "id=eq.1")
        assert isinstance(a, int)

    def test_known_value_is_stable_across_processes(self) -> None:
        # crc32-based, not hash(): the value must not depend on PYTHONHASHSEED
        import zlib

        key = b"INSERT\x00public\x00t\x00id=eq.1"
        assert binding_id("INSERT", "public", "t", "id=eq.1") == ((zlib.crc32(key) & 0x7FFFFFFF) or 1)

    def test_distinct(self) -> None:
        ids = {
            binding_id("INSERT", "public", "t", "id=eq.1"),
            binding_id("INSERT", "public", "t", "id=eq.2"),
            binding_id("INSERT", "public", "t", None),
            binding_id("UPDATE", "public", "t", "id=eq.1"),
            binding_id("INSERT", "other", "t", "id=eq.1"),
            binding_id("INSERT", "public", "u", "id=eq.1"),
            binding_id("*", "public", None, None),
        }
        assert len(ids) == 7

    def test_no_separator_ambiguity(self) -> None:
        assert binding_id("*", "a", "bc", None) != binding_id("*", "ab", "c", None)

    @given(
        st.sampled_from(["*", "INSERT", "UPDATE", "DELETE"]),
        st.text(),
        st.none() | st.text(),
        st.none() | st.text(),
    )
    def test_positive_31_bit(self, event: str, schema: str, table: str | None, flt: str | None) -> None:
        i = binding_id(event, schema, table, flt)
        assert 0 < i <= 0x7FFFFFFF


# -- SubscriptionIndex.plan -----------------------------------------------------------------------
class TestPlan:
    def test_empty_index(self) -> None:
        assert new_index().plan(change()) == []

    def test_table_binding(self) -> None:
        idx, s = new_index(), FakeSub()
        spec = add(idx, s, {"event": "*", "schema": "public", "table": "t"})
        assert idx.plan(change()) == [(s, [spec.id])]
        assert idx.plan(change(table="other")) == []
        assert idx.plan(change(schema="other")) == []
        assert len(idx) == 1

    def test_schema_wide_binding(self) -> None:
        idx, s = new_index(), FakeSub()
        spec = add(idx, s, {"event": "*", "schema": "public"})
        assert idx.plan(change(table="anything")) == [(s, [spec.id])]
        assert idx.plan(change(schema="private")) == []
        assert "public" in idx.by_schema and not idx.by_table

    @pytest.mark.parametrize("event", ["INSERT", "UPDATE", "DELETE"])
    def test_event_filtering(self, event: str) -> None:
        idx, s = new_index(), FakeSub()
        spec = add(idx, s, {"event": event, "schema": "public", "table": "t"})
        for action in Action:
            expected = [(s, [spec.id])] if action.value == event else []
            assert idx.plan(change(action)) == expected

    def test_star_matches_all_actions(self) -> None:
        idx, s = new_index(), FakeSub()
        spec = add(idx, s, {"event": "*", "table": "t"})
        for action in Action:
            assert idx.plan(change(action)) == [(s, [spec.id])]

    def test_filter_on_new_row_for_insert_update(self) -> None:
        idx, s = new_index(), FakeSub()
        spec = add(idx, s, {"event": "*", "table": "t", "filter": "id=eq.2"})
        assert idx.plan(change(Action.INSERT, {"id": 2})) == [(s, [spec.id])]
        assert idx.plan(change(Action.INSERT, {"id": 3})) == []
        # UPDATE: the new row decides, not the old one
        assert idx.plan(change(Action.UPDATE, {"id": 2}, {"id": 1})) == [(s, [spec.id])]
        assert idx.plan(change(Action.UPDATE, {"id": 1}, {"id": 2})) == []

    def test_delete_filtered_on_old_row(self) -> None:
        idx, s = new_index(), FakeSub()
        spec = add(idx, s, {"event": "DELETE", "table": "t", "filter": "id=eq.7"})
        assert idx.plan(change(Action.DELETE, old={"id": 7})) == [(s, [spec.id])]
        assert idx.plan(change(Action.DELETE, old={"id": 8})) == []

    def test_filter_on_text_column(self) -> None:
        idx, s = new_index(), FakeSub()
        spec = add(idx, s, {"event": "INSERT", "table": "t", "filter": "v=in.(a,b)"}, "text")
        assert idx.plan(change(Action.INSERT, {"id": 1, "v": "b"})) == [(s, [spec.id])]
        assert idx.plan(change(Action.INSERT, {"id": 1, "v": "c"})) == []
        assert idx.plan(change(Action.INSERT, {"id": 1, "v": None})) == []

    def test_multiple_bindings_one_subscriber_one_entry(self) -> None:
        idx, s = new_index(), FakeSub()
        a = add(idx, s, {"event": "INSERT", "table": "t"})
        b = add(idx, s, {"event": "*", "schema": "public"})
        c = add(idx, s, {"event": "DELETE", "table": "t"})
        d = add(idx, s, {"event": "*", "table": "t", "filter": "id=eq.1"})
        plan = route(idx, change(Action.INSERT, {"id": 1}))
        assert len(plan) == 1
        owner, ids = plan[0]
        assert owner is s
        assert sorted(ids) == sorted([a.id, b.id, d.id])
        assert c.id not in ids
        assert len(s.asked) == 1  # authorization asked once per subscriber

    def test_duplicate_binding_ids_deduplicated(self) -> None:
        idx, s = new_index(), FakeSub()
        a = add(idx, s, {"event": "*", "table": "t"})
        add(idx, s, {"event": "*", "table": "t"})
        assert idx.plan(change()) == [(s, [a.id])]

    def test_several_subscribers(self) -> None:
        idx, s1, s2, s3 = new_index(), FakeSub("realtime:a"), FakeSub("realtime:b", V1), FakeSub()
        a = add(idx, s1, {"event": "*", "table": "t"})
        b = add(idx, s2, {"event": "INSERT", "schema": "public"})
        add(idx, s3, {"event": "UPDATE", "table": "t"})
        plan = route(idx, change(Action.INSERT))
        assert {id(o): ids for o, ids in plan} == {id(s1): [a.id], id(s2): [b.id]}
        assert s3.asked == []  # no binding matched: authorization not asked

    def test_not_visible_excluded(self) -> None:
        idx, yes, no = new_index(), FakeSub(), FakeSub(allow=False)
        a = add(idx, yes, {"event": "*", "table": "t"})
        add(idx, no, {"event": "*", "table": "t"})
        assert route(idx, change()) == [(yes, [a.id])]
        assert len(no.asked) == 1

    def test_remove_owner(self) -> None:
        idx, s1, s2 = new_index(), FakeSub(), FakeSub()
        add(idx, s1, {"event": "*", "table": "t"})
        add(idx, s1, {"event": "*", "schema": "public"})
        add(idx, s1, {"event": "*", "table": "only_s1"})
        b = add(idx, s2, {"event": "*", "table": "t"})
        assert len(idx) == 4
        idx.remove_owner(s1)
        assert len(idx) == 1
        assert idx.plan(change()) == [(s2, [b.id])]
        assert ("public", "only_s1") not in idx.by_table  # emptied keys dropped
        assert "public" not in idx.by_schema
        idx.remove_owner(s2)
        assert len(idx) == 0 and not idx.by_table and not idx.by_schema
        idx.remove_owner(s2)  # idempotent
        assert idx.plan(change()) == []

    def test_removal_is_lazy_but_never_visible(self) -> None:
        """Closes only mark the lists (one rebuild for a burst, not one filter per close), yet no
        read ever sees a removed owner, and an owner added again right away is kept."""
        idx = new_index()
        subs = [FakeSub(f"realtime:r{i}") for i in range(50)]
        ids = {id(s): add(idx, s, {"event": "*", "table": "t"}).id for s in subs}
        listed = idx.by_table[("public", "t")]
        for s in subs[:49]:
            idx.remove_owner(s)
        assert idx.by_table[("public", "t")] is listed  # nothing rebuilt yet
        assert idx.plan(change()) == [(subs[49], [ids[id(subs[49])]])]  # compacted before reading
        assert len(idx.by_table[("public", "t")]) == 1
        idx.remove_owner(subs[49])
        again = add(idx, subs[49], {"event": "INSERT", "table": "t"})  # re-added before a read
        assert idx.plan(change()) == [(subs[49], [again.id])]
        assert len(idx) == 1


# -- change_payload / FrameCache ---------------------------------------------------------------
def payload(ch: RowChange) -> dict[str, Any]:
    """change_payload as the client sees it (``columns`` is a pre-encoded fragment)."""
    return dict(json.loads(dumps(change_payload(ch))))


class TestPayload:
    def test_insert_shape(self) -> None:
        p = payload(change(Action.INSERT, {"id": 1, "v": "a"}))
        assert p == {
            "schema": "public",
            "table": "t",
            "commit_timestamp": "2026-11-23T13:10:50.276Z",
            "type": "INSERT",
            "columns": [{"name": "id", "type": "int4"}, {"name": "v", "type": "text"}],
            "errors": None,
            "record": {"id": 1, "v": "a"},
            "position": "000000000150AFE0:00000000",
        }

    def test_update_has_both(self) -> None:
        p = payload(change(Action.UPDATE, {"id": 1, "v": "b"}, {"id": 1}))
        assert p["record"] == {"id": 1, "v": "b"} and p["old_record"] == {"id": 1}
        assert p["type"] == "UPDATE"

    def test_delete_has_old_only(self) -> None:
        p = payload(change(Action.DELETE, old={"id": 3}))
        assert "record" not in p
        assert p["old_record"] == {"id": 3}
        assert p["type"] == "DELETE"


class TestFrameCache:
    def test_same_object_reused(self) -> None:
        fc = FrameCache(change())
        a = fc.frame("realtime:x", [1, 2], V2)
        b = fc.frame("realtime:x", (1, 2), V2)
        assert a is b
        assert fc.frame("realtime:x", [2, 1], V2) is not a
        assert fc.frame("realtime:y", [1, 2], V2) is not a
        assert fc.frame("realtime:x", [1, 2], V1) is not a
        assert fc.frame("realtime:x", iter([1, 2]), V2) is a

    def test_v2_shape(self) -> None:
        ch = change(Action.UPDATE, {"id": 1, "v": "b"}, {"id": 1, "v": "a"})
        out = json.loads(FrameCache(ch).frame("realtime:room", [11, 22], V2))
        assert out == [
            None,
            None,
            "realtime:room",
            "postgres_changes",
            {"ids": [11, 22], "data": payload(ch)},
        ]

    def test_v1_shape(self) -> None:
        ch = change(Action.DELETE, old={"id": 4})
        out = json.loads(FrameCache(ch).frame("realtime:room", [5], V1))
        assert out == {
            "topic": "realtime:room",
            "event": "postgres_changes",
            "ref": None,
            "payload": {"ids": [5], "data": payload(ch)},
        }
        assert "join_ref" not in out

    @pytest.mark.parametrize("vsn", [V1, V2])
    def test_parses_as_client_frame(self, vsn: str) -> None:
        text = FrameCache(change()).frame('realtime:we"ird', [1], vsn)
        f = parse(text, vsn)
        assert f.topic == 'realtime:we"ird' and f.event == "postgres_changes"
        assert f.payload["ids"] == [1]
        assert f.payload["data"]["record"] == {"id": 1, "v": "a"}

    def test_decimal_exact_in_frame(self) -> None:
        ch = change(Action.INSERT, {"id": 1, "n": Decimal("12345678901234567.123")})
        text = FrameCache(ch).frame("t", [1], V2)
        assert "12345678901234567.123" in text
        assert json.loads(text, parse_float=Decimal)[4]["data"]["record"]["n"] == Decimal(
            "12345678901234567.123"
        )

    def test_data_encoded_once(self) -> None:
        calls: list[RowChange] = []

        def enc(c: RowChange) -> dict[str, Any]:  # the payload builder runs once per change
            calls.append(c)
            return {"x": 1}

        fc = FrameCache(change(), enc)
        assert json.loads(fc.frame("a", [1], V2))[4] == {"ids": [1], "data": {"x": 1}}
        fc.frame("b", [2], V1)
        assert len(calls) == 1
        assert fc.change is calls[0]

    def test_empty_ids(self) -> None:
        out = json.loads(FrameCache(change()).frame("t", [], V2))
        assert out[4]["ids"] == []

    def test_plan_and_frames_end_to_end(self) -> None:
        idx, s1, s2 = new_index(), FakeSub("realtime:a", V1), FakeSub("realtime:b", V2)
        a = add(idx, s1, {"event": "INSERT", "table": "t", "filter": "id=gte.1"})
        b = add(idx, s2, {"event": "*", "schema": "public"})
        ch = change()
        fc = FrameCache(ch)
        frames = {o.topic: fc.frame(o.topic, ids, o.vsn) for o, ids in idx.plan(ch)}
        assert json.loads(frames["realtime:a"])["payload"]["ids"] == [a.id]
        assert json.loads(frames["realtime:b"])[4]["ids"] == [b.id]


def test_bind_filter_types() -> None:
    """Sanity check of the filters API the tests above rely on."""
    f = parse_filter("id=eq.5").bind("int4")
    assert f.matches({"id": 5}) and not f.matches({"id": 6}) and not f.matches({})


class Visibility:
    """decide() from a table of (subscriber name, which row) -> verdict."""

    def __init__(self, table: dict[tuple[str, int], Any]) -> None:
        self.table = table

    def __call__(self, sub: FakeSub, which: int) -> Any:
        return self.table.get((sub.topic, which), False)


class TestRouteUpdates:
    """UPDATE semantics: move-out, move-in, filters and errors (the authorization contract)."""

    def setup_method(self) -> None:
        self.idx: SubscriptionIndex[FakeSub] = new_index()
        self.s = FakeSub("realtime:s")
        self.b = add(self.idx, self.s, {"event": "*", "table": "t"})
        self.upd = change(Action.UPDATE, {"id": 1, "v": "new"}, {"id": 1, "v": "old"})

    def kinds(
        self, table: dict[tuple[str, int], Any], ch: RowChange | None = None
    ) -> list[tuple[str, list[int]]]:
        deliveries, pending = self.idx.route(ch or self.upd, Visibility(table))
        assert pending == []
        return [(d.kind, d.ids) for d in deliveries]

    def test_both_visible_is_update(self) -> None:
        assert self.kinds({("realtime:s", 0): True, ("realtime:s", 1): True}) == [(CHANGE, [self.b.id])]

    def test_only_old_visible_is_moved_out(self) -> None:
        assert self.kinds({("realtime:s", 1): True}) == [(MOVED_OUT, [self.b.id])]

    def test_only_new_visible_is_moved_in(self) -> None:
        assert self.kinds({("realtime:s", 0): True}) == [(MOVED_IN, [self.b.id])]

    def test_neither_visible_is_nothing(self) -> None:
        assert self.kinds({}) == []

    def test_filter_move_out(self) -> None:
        idx, s = new_index(), FakeSub("realtime:f")
        b = add(idx, s, {"event": "*", "table": "t", "filter": "v=eq.old"}, "text")
        deliveries, _ = idx.route(self.upd, lambda sub, w: True)
        assert [(d.kind, d.ids) for d in deliveries] == [(MOVED_OUT, [b.id])]

    def test_row_leaves_one_filter_and_enters_another(self) -> None:
        idx, s = new_index(), FakeSub("realtime:two")
        old = add(idx, s, {"event": "*", "table": "t", "filter": "v=eq.old"}, "text")
        new = add(idx, s, {"event": "*", "table": "t", "filter": "v=eq.new"}, "text")
        deliveries, _ = idx.route(self.upd, lambda sub, w: True)
        assert [(d.kind, d.ids) for d in deliveries] == [(CHANGE, [new.id]), (MOVED_OUT, [old.id])]

    def test_policy_move_out_for_star_binding(self) -> None:
        assert self.kinds({("realtime:s", 0): False, ("realtime:s", 1): True}) == [(MOVED_OUT, [self.b.id])]

    def test_delete_binding_gets_move_out_not_update(self) -> None:
        idx, s = new_index(), FakeSub("realtime:d")
        b = add(idx, s, {"event": "DELETE", "table": "t"})
        assert [(d.kind, d.ids) for d in idx.route(self.upd, lambda sub, w: w == 1)[0]] == [
            (MOVED_OUT, [b.id])
        ]
        assert idx.route(self.upd, lambda sub, w: True)[0] == []

    def test_error_reported_to_that_subscriber(self) -> None:
        err = Denied("invalid_text_representation", "bad", "p")
        other = FakeSub("realtime:o")
        add(self.idx, other, {"event": "*", "table": "t"})
        deliveries, _ = self.idx.route(
            self.upd, Visibility({("realtime:s", 0): err, ("realtime:o", 0): True, ("realtime:o", 1): True})
        )
        got = {d.sub.topic: (d.kind, d.error) for d in deliveries}
        assert got == {"realtime:s": (ERROR, err), "realtime:o": (CHANGE, None)}

    def test_pending_then_resolved(self) -> None:
        table: dict[tuple[str, int], Any] = {("realtime:s", 0): ASK_POSTGRES}
        deliveries, pending = self.idx.route(self.upd, Visibility(table))
        assert deliveries == [] and pending == [(self.s, 0)]
        table[("realtime:s", 0)] = True
        table[("realtime:s", 1)] = ASK_POSTGRES
        assert self.idx.route(self.upd, Visibility(table))[1] == [(self.s, 1)]
        table[("realtime:s", 1)] = True
        assert self.kinds(table) == [(CHANGE, [self.b.id])]

    def test_variant_payloads(self) -> None:
        ch = change(Action.UPDATE, {"id": 1, "v": "new"}, {"id": 1, "v": "old"})
        ch.pk = ("id",)
        fc = FrameCache(ch)
        out = json.loads(fc.variant(MOVED_OUT).frame("realtime:x", [1], V1))["payload"]["data"]
        assert out["type"] == "DELETE" and out["moved_out"] is True and "record" not in out
        assert out["old_record"] == {"id": 1, "v": "old"}
        inn = json.loads(fc.variant(MOVED_IN).frame("realtime:x", [1], V1))["payload"]["data"]
        assert (
            inn["type"] == "UPDATE"
            and inn["record"] == {"id": 1, "v": "new"}
            and inn["old_record"] == {"id": 1}
        )
        err = json.loads(fc.variant(ERROR, Denied("c", "m", "p")).frame("realtime:x", [1], V1))["payload"][
            "data"
        ]
        assert (
            err["record"] == {}
            and err["old_record"] == {}
            and err["errors"] == ["PolicyError c: m (policy p)"]
        )
        assert fc.variant(MOVED_OUT) is fc.variant(MOVED_OUT)  # encoded once per change


class TestPosition:
    def test_position_orders_like_commit_then_index(self) -> None:
        a = change(Action.INSERT, {"id": 1})
        a.commit_lsn, a.index = Lsn(0x1_0000_0000), 2
        b = change(Action.INSERT, {"id": 1})
        b.commit_lsn, b.index = Lsn(0x1_0000_0000), 10
        c = change(Action.INSERT, {"id": 1})
        c.commit_lsn, c.index = Lsn(0x2_0000_0000), 0
        assert a.position == "0000000100000000:00000002"
        assert a.position < b.position < c.position
        assert payload(a)["position"] == a.position


# -- select ----------------------------------------------------------------------------------------
def _frame_data(idx: SubscriptionIndex[FakeSub], ch: RowChange) -> list[dict[str, Any]]:
    """The ``data`` of each delivered frame, encoded as the server encodes it."""
    deliveries, pending = idx.route(ch, lambda sub, which: sub.decide(ch, which))
    assert pending == []
    cache = FrameCache(ch)
    out = []
    for d in deliveries:
        frame = cache.variant(d.kind, d.error, d.select).frame(d.sub.topic, d.ids, V2)
        out.append(json.loads(frame)[4]["data"])
    return out


def _wide(action: Action = Action.UPDATE) -> RowChange:
    return change(
        action,
        record={"id": 1, "v": "new", "secret": "s2", "n": 5},
        old={"id": 1, "v": "old", "secret": "s1", "n": 4},
    )


class TestSelect:
    @pytest.mark.parametrize(
        ("select", "expected"),
        [
            (["v", "n"], ("v", "n")),
            ("v, n", ("v", "n")),  # upstream also reads a comma-separated string
            (["v", "v"], ("v",)),
            ([], None),
            ("", None),
            (None, None),
        ],
    )
    def test_parsed(self, select: Any, expected: tuple[str, ...] | None) -> None:
        (spec,) = parse_bindings([{"event": "*", "table": "t", "select": select}])
        assert spec.select == expected

    @pytest.mark.parametrize("bad", [5, [1], [""], {"v": 1}, [None]])
    def test_bad_select(self, bad: Any) -> None:
        with pytest.raises(BindingError, match="select must be a list of column names"):
            parse_bindings([{"event": "*", "table": "t", "select": bad}])

    def test_select_needs_a_table(self) -> None:
        with pytest.raises(BindingError, match="select needs a table"):
            parse_bindings([{"event": "*", "schema": "public", "select": ["id"]}])

    def test_record_old_record_and_columns_cut_to_select_plus_pk(self) -> None:
        idx, sub = new_index(), FakeSub()
        add(idx, sub, {"event": "*", "table": "t", "select": ["v"]})
        (data,) = _frame_data(idx, _wide())
        assert data["record"] == {"id": 1, "v": "new"}
        assert data["old_record"] == {"id": 1, "v": "old"}
        assert [c["name"] for c in data["columns"]] == ["id", "v"]

    def test_filter_sees_the_whole_row(self) -> None:
        """The filter tests a column the client did not select."""
        idx, sub = new_index(), FakeSub()
        add(idx, sub, {"event": "*", "table": "t", "filter": "n=gt.4", "select": ["v"]})
        (data,) = _frame_data(idx, _wide(Action.INSERT))
        assert data["record"] == {"id": 1, "v": "new"}
        add(idx2 := new_index(), sub, {"event": "*", "table": "t", "filter": "n=gt.5", "select": ["v"]})
        assert _frame_data(idx2, _wide(Action.INSERT)) == []

    def test_delete_and_moved_out(self) -> None:
        idx, sub = new_index(), FakeSub()
        add(idx, sub, {"event": "*", "table": "t", "filter": "n=lt.5", "select": ["n"]})
        (data,) = _frame_data(idx, _wide())  # old n=4 matched, new n=5 does not: moved out
        assert data["type"] == "DELETE" and data["moved_out"] is True
        assert data["old_record"] == {"id": 1, "n": 4} and "record" not in data
        (data,) = _frame_data(idx, change(Action.DELETE, old={"id": 2, "v": "x", "n": 1}))
        assert data["old_record"] == {"id": 2, "n": 1}

    def test_union_of_matched_bindings_and_full_row_wins(self) -> None:
        idx, a, b = new_index(), FakeSub("realtime:a"), FakeSub("realtime:b")
        add(idx, a, {"event": "*", "table": "t", "select": ["v"]})
        add(idx, a, {"event": "UPDATE", "table": "t", "select": ["n"]})
        add(idx, b, {"event": "*", "table": "t", "select": ["v"]})
        add(idx, b, {"event": "UPDATE", "table": "t"})
        got = {json.dumps(d["record"], sort_keys=True) for d in _frame_data(idx, _wide())}
        assert got == {
            json.dumps({"id": 1, "v": "new", "n": 5}, sort_keys=True),  # a: union of both selects
            json.dumps({"id": 1, "v": "new", "secret": "s2", "n": 5}, sort_keys=True),  # b: whole row
        }
        only_insert = _frame_data(idx, _wide(Action.INSERT))  # a's UPDATE binding did not match
        assert {"id": 1, "v": "new"} in [d["record"] for d in only_insert]

    def test_unselected_subscriber_shares_the_plain_frame(self) -> None:
        ch = _wide()
        cache = FrameCache(ch)
        assert cache.variant(CHANGE, None, None) is cache
        assert cache.variant(CHANGE, None, ("v",)) is cache.variant(CHANGE, None, ("v",))
        assert cache.variant(CHANGE, None, ("v",)) is not cache


# -- plan for the authorization index's owners ----------------------------------------------------
_ENTRY = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["*", "INSERT", "UPDATE", "DELETE"]),
        "table": st.sampled_from(["t", "t", "other", "*"]),
        "filter": st.sampled_from([None, "id=gt.2", "id=eq.3", "id=lt.3"]),
    }
)


@given(
    subs=st.lists(st.lists(_ENTRY, min_size=1, max_size=3), min_size=1, max_size=6),
    chosen=st.sets(st.integers(0, 5)),
    action=st.sampled_from(list(Action)),
    new_id=st.integers(1, 5),
    old_id=st.integers(1, 5),
    removed=st.sets(st.integers(0, 5)),
)
def test_plan_for_given_owners_is_the_full_plan_restricted_to_them(
    subs: list[list[dict[str, Any]]],
    chosen: set[int],
    action: Action,
    new_id: int,
    old_id: int,
    removed: set[int],
) -> None:
    """The fan-out passes the authorization index's candidates as ``owners``: they restrict the
    table's bindings, schema-wide ones are always checked.  Per owner the binding ids must be
    exactly the matching ones (duplicates, events, filters, owners removed since)."""
    idx = new_index()
    owners = [FakeSub(f"realtime:{i}") for i in range(len(subs))]
    for owner, entries in zip(owners, subs, strict=True):
        for e in entries:
            entry = {k: v for k, v in e.items() if v is not None}
            if entry["table"] == "*":
                entry.pop("filter", None)  # a filter needs a table
            add(idx, owner, entry)
    for i in removed:
        if i < len(owners):
            idx.remove_owner(owners[i])
    ch = change(action, record={"id": new_id, "v": "x"}, old={"id": old_id, "v": "y"})
    given_owners = [owners[i] for i in chosen if i < len(owners)]
    len(idx)  # drops the removed owners' bindings from the lists read below
    expected: dict[int, set[int]] = {}
    table_bindings = [b for b in idx.by_table.get(("public", "t"), ()) if b.owner in given_owners]
    for b in table_bindings + idx.by_schema.get("public", []):
        if b.matches(ch):
            expected.setdefault(id(b.owner), set()).add(b.id)
    got = idx.plan(ch, given_owners)
    assert {id(o): set(ids) for o, ids in got} == expected
    assert all(len(ids) == len(set(ids)) for _, ids in got)  # one id once per frame


def test_select_follows_the_owner_out_and_back_in() -> None:
    """Owners without a ``select`` binding get the whole row without their bindings being read;
    an owner that leaves and comes back without one is no longer cut."""
    idx, sub = new_index(), FakeSub()
    add(idx, sub, {"event": "*", "table": "t", "select": ["v"]})
    (data,) = _frame_data(idx, _wide(Action.INSERT))
    assert data["record"] == {"id": 1, "v": "new"}
    idx.remove_owner(sub)
    add(idx, sub, {"event": "*", "table": "t"})
    (data,) = _frame_data(idx, _wide(Action.INSERT))
    assert data["record"] == {"id": 1, "v": "new", "secret": "s2", "n": 5}
