"""Unit tests for relay.core.protocol: Phoenix frame parsing and encoding (vsn 1.0.0 / 2.0.0)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.protocol import (
    SUPPORTED_VSN,
    Frame,
    ProtocolError,
    dumps,
    encode,
    encode_push_prefix,
    parse,
    reply,
)

V1, V2 = "1.0.0", "2.0.0"


def test_supported_versions() -> None:
    assert SUPPORTED_VSN == (V1, V2)


# -- parse: vsn 1.0.0 ---------------------------------------------------------------------------
class TestParseV1:
    def test_full_object(self) -> None:
        f = parse('{"topic":"realtime:x","event":"phx_join","payload":{"a":1},"ref":"1","join_ref":"1"}', V1)
        assert f == Frame("realtime:x", "phx_join", {"a": 1}, "1", "1")

    def test_bytes_input(self) -> None:
        f = parse(b'{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}', V1)
        assert f == Frame("phoenix", "heartbeat", {}, "7", None)

    def test_int_refs_become_strings(self) -> None:
        f = parse('{"topic":"t","event":"e","payload":{},"ref":12,"join_ref":3}', V1)
        assert (f.ref, f.join_ref) == ("12", "3")

    def test_null_refs_and_missing_payload(self) -> None:
        f = parse('{"topic":"t","event":"e","ref":null,"join_ref":null}', V1)
        assert f.ref is None and f.join_ref is None
        assert f.payload == {}

    def test_null_payload_becomes_empty_object(self) -> None:
        assert parse('{"topic":"t","event":"e","payload":null}', V1).payload == {}

    def test_array_refused(self) -> None:
        with pytest.raises(ProtocolError, match=r"1\.0\.0"):
            parse('[null,"1","t","e",{}]', V1)

    def test_unknown_vsn_treated_as_v1(self) -> None:
        assert parse('{"topic":"t","event":"e"}', "0.9").topic == "t"


# -- parse: vsn 2.0.0 ---------------------------------------------------------------------------
class TestParseV2:
    def test_array(self) -> None:
        f = parse('["3","4","realtime:room","broadcast",{"x":[1]}]', V2)
        assert f == Frame("realtime:room", "broadcast", {"x": [1]}, "4", "3")

    def test_array_int_and_null_refs(self) -> None:
        f = parse('[null,5,"t","e",null]', V2)
        assert (f.join_ref, f.ref, f.payload) == (None, "5", {})

    def test_object_accepted(self) -> None:
        f = parse('{"topic":"t","event":"e","payload":{"k":1},"ref":"2","join_ref":"1"}', V2)
        assert f == Frame("t", "e", {"k": 1}, "2", "1")

    @pytest.mark.parametrize("data", ["[]", '["1","2","t","e"]', '["1","2","t","e",{},6]'])
    def test_wrong_length(self, data: str) -> None:
        with pytest.raises(ProtocolError, match=r"\[join_ref, ref, topic, event, payload\]"):
            parse(data, V2)

    @pytest.mark.parametrize("data", ['"x"', "1", "null", "true"])
    def test_scalar(self, data: str) -> None:
        with pytest.raises(ProtocolError, match="array"):
            parse(data, V2)


# -- parse: errors (both versions) -------------------------------------------------------------
def _both(obj: dict[str, Any]) -> list[tuple[str, str]]:
    arr = [obj.get("join_ref"), obj.get("ref"), obj.get("topic"), obj.get("event"), obj.get("payload")]
    return [(json.dumps(obj), V1), (json.dumps(arr), V2)]


class TestParseErrors:
    @pytest.mark.parametrize("vsn", [V1, V2])
    @pytest.mark.parametrize("data", ["", "{", "not json", b"\xff\xfe", "[1,", "{'a':1}", "NaN", "\ud800"])
    def test_malformed_json(self, data: str | bytes, vsn: str) -> None:
        with pytest.raises(ProtocolError, match="malformed JSON"):
            parse(data, vsn)

    @pytest.mark.parametrize(
        ("data", "vsn"),
        [
            *_both({"event": "e", "payload": {}, "ref": "1", "join_ref": "9"}),
            *_both({"topic": "", "event": "e", "ref": "1", "join_ref": "9"}),
            *_both({"topic": 5, "event": "e", "ref": "1", "join_ref": "9"}),
        ],
    )
    def test_missing_topic(self, data: str, vsn: str) -> None:
        with pytest.raises(ProtocolError, match="no topic") as ei:
            parse(data, vsn)
        assert ei.value.topic is None
        assert ei.value.ref == "1"
        assert ei.value.join_ref == "9"

    @pytest.mark.parametrize(
        ("data", "vsn"),
        [
            *_both({"topic": "t", "payload": {}, "ref": 2}),
            *_both({"topic": "t", "event": "", "ref": 2}),
            *_both({"topic": "t", "event": ["x"], "ref": 2}),
        ],
    )
    def test_missing_event(self, data: str, vsn: str) -> None:
        with pytest.raises(ProtocolError, match="no event") as ei:
            parse(data, vsn)
        assert ei.value.topic == "t"
        assert ei.value.ref == "2"

    @pytest.mark.parametrize("bad", [True, False, 1.5, [1], {"a": 1}])
    @pytest.mark.parametrize("field", ["ref", "join_ref"])
    @pytest.mark.parametrize("vsn", [V1, V2])
    def test_bad_ref_types(self, bad: Any, field: str, vsn: str) -> None:
        obj = {"topic": "t", "event": "e", "payload": {}, field: bad}
        text = next(d for d, v in _both(obj) if v == vsn)
        with pytest.raises(ProtocolError, match="ref") as ei:
            parse(text, vsn)
        assert ei.value.topic == "t"

    def test_error_is_value_error_with_safe_message(self) -> None:
        with pytest.raises(ValueError) as ei:
            parse("[", V2)
        assert isinstance(ei.value, ProtocolError)
        assert str(ei.value).startswith("malformed JSON")


# -- parse never raises anything but ProtocolError ----------------------------------------------
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=8,
)
_frame_like = st.one_of(
    st.lists(_json_values, min_size=5, max_size=5),
    st.fixed_dictionaries(
        {},
        optional={
            "topic": _json_values,
            "event": _json_values,
            "payload": _json_values,
            "ref": _json_values,
            "join_ref": _json_values,
        },
    ),
)


def _assert_only_protocol_error(data: str | bytes, vsn: str) -> None:
    try:
        f = parse(data, vsn)
    except ProtocolError:
        return
    assert isinstance(f.topic, str) and f.topic
    assert isinstance(f.event, str) and f.event
    assert f.ref is None or isinstance(f.ref, str)
    assert f.join_ref is None or isinstance(f.join_ref, str)


@pytest.mark.parametrize("vsn", [V1, V2])
@settings(max_examples=300, deadline=None)
@given(data=st.text())
def test_parse_arbitrary_text(vsn: str, data: str) -> None:
    _assert_only_protocol_error(data, vsn)


@pytest.mark.parametrize("vsn", [V1, V2])
@settings(max_examples=300, deadline=None)
@given(data=st.binary())
def test_parse_arbitrary_bytes(vsn: str, data: bytes) -> None:
    _assert_only_protocol_error(data, vsn)


@pytest.mark.parametrize("vsn", [V1, V2])
@settings(max_examples=150, deadline=None)
@given(obj=st.one_of(_json_values, _frame_like))
def test_parse_arbitrary_json(vsn: str, obj: Any) -> None:
    _assert_only_protocol_error(json.dumps(obj), vsn)


@pytest.mark.parametrize("vsn", [V1, V2])
@pytest.mark.parametrize(
    "data",
    [
        "[" * 2000 + "]" * 2000,
        '{"topic":"t","event":"e","ref":123456789012345678901234567890}',
        "1e999",
        '{"topic":"t","event":"e","payload":' + "[" * 1500 + "]" * 1500 + "}",
    ],
)
def test_parse_pathological(vsn: str, data: str) -> None:
    _assert_only_protocol_error(data, vsn)


# -- encode ---------------------------------------------------------------------------------------
class TestEncode:
    def test_v1_object_has_ref_but_no_join_ref(self) -> None:
        out = json.loads(encode(Frame("t", "phx_reply", {"status": "ok"}, "5", "4"), V1))
        assert out == {"topic": "t", "event": "phx_reply", "payload": {"status": "ok"}, "ref": "5"}
        assert "join_ref" not in out

    def test_v1_null_ref_present(self) -> None:
        out = json.loads(encode(Frame("t", "e", {}), V1))
        assert "ref" in out and out["ref"] is None

    def test_v2_array(self) -> None:
        out = json.loads(encode(Frame("t", "phx_reply", {"a": [1]}, "5", "4"), V2))
        assert out == ["4", "5", "t", "phx_reply", {"a": [1]}]

    def test_v2_nulls(self) -> None:
        assert json.loads(encode(Frame("t", "e", {}), V2)) == [None, None, "t", "e", {}]

    @pytest.mark.parametrize("vsn", [V1, V2])
    def test_round_trip(self, vsn: str) -> None:
        f = Frame('realtime:a"b', "ev\u00e9nt", {"nested": {"x": [1, None, "s"]}}, "1", "2")
        back = parse(encode(f, vsn), vsn)
        assert (back.topic, back.event, back.payload, back.ref) == (f.topic, f.event, f.payload, f.ref)
        if vsn == V2:
            assert back.join_ref == f.join_ref

    @pytest.mark.parametrize("vsn", [V1, V2])
    def test_decimal_payload_exact(self, vsn: str) -> None:
        f = Frame("t", "e", {"n": Decimal("12345678901234567.123")})
        text = encode(f, vsn)
        assert "12345678901234567.123" in text
        payload = json.loads(text, parse_float=Decimal)
        payload = payload["payload"] if vsn == V1 else payload[4]
        assert payload == {"n": Decimal("12345678901234567.123")}

    def test_unencodable_raises_type_error(self) -> None:
        with pytest.raises(TypeError):
            encode(Frame("t", "e", {"x": object()}), V2)

    def test_reply_helper(self) -> None:
        r = reply("t", "3", "1", "ok", {"postgres_changes": []})
        assert r == Frame("t", "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}, "3", "1")
        assert json.loads(encode(r, V2)) == [
            "1",
            "3",
            "t",
            "phx_reply",
            {"status": "ok", "response": {"postgres_changes": []}},
        ]


class TestPushPrefix:
    @pytest.mark.parametrize("vsn", [V1, V2])
    @pytest.mark.parametrize("topic", ["realtime:public:t", 'we"ird\\topic\n', "ünï"])
    def test_prefix_payload_suffix_equals_encode(self, vsn: str, topic: str) -> None:
        payload = {"ids": [1, 2], "data": {"n": Decimal("1.50"), "s": "x"}}
        prefix, suffix = encode_push_prefix(topic, "postgres_changes", vsn)
        text = prefix + dumps(payload).decode() + suffix
        expected = encode(Frame(topic, "postgres_changes", payload), vsn)
        assert json.loads(text, parse_float=Decimal) == json.loads(expected, parse_float=Decimal)
        assert parse(text, vsn).topic == topic

    def test_v1_shape(self) -> None:
        prefix, suffix = encode_push_prefix("t", "e", V1)
        out = json.loads(prefix + "{}" + suffix)
        assert out == {"topic": "t", "event": "e", "ref": None, "payload": {}}

    def test_v2_shape(self) -> None:
        prefix, suffix = encode_push_prefix("t", "e", V2)
        assert json.loads(prefix + "[1]" + suffix) == [None, None, "t", "e", [1]]

    @given(topic=st.text(), event=st.text(min_size=1), vsn=st.sampled_from([V1, V2]))
    def test_any_topic_valid_json(self, topic: str, event: str, vsn: str) -> None:
        prefix, suffix = encode_push_prefix(topic, event, vsn)
        expected = encode(Frame(topic, event, {"k": 1}), vsn)
        assert orjson.loads(prefix + '{"k":1}' + suffix) == orjson.loads(expected)


class TestDumps:
    @pytest.mark.parametrize(
        "d",
        [
            "12345678901234567.123",
            "0.10000000000000001",
            "-1E+30",
            "1.50",
            "0",
            "123456789012345678901234567890",
        ],
    )
    def test_decimal_exact(self, d: str) -> None:
        out = dumps({"n": Decimal(d)})
        assert json.loads(out, parse_float=Decimal, parse_int=Decimal) == {"n": Decimal(d)}

    def test_decimal_in_list_and_nested(self) -> None:
        out = dumps([Decimal("1.1"), {"a": [Decimal("2.25")]}])
        assert out == b'[1.1,{"a":[2.25]}]'

    def test_returns_bytes_and_big_int(self) -> None:
        assert dumps({"a": 1}) == b'{"a":1}'
        assert json.loads(dumps([2**63 - 1])) == [2**63 - 1]

    @given(st.decimals(allow_nan=False, allow_infinity=False))
    def test_decimal_property(self, d: Decimal) -> None:
        assert json.loads(dumps(d), parse_float=Decimal, parse_int=Decimal) == d
