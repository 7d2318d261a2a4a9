"""The relay's logical-message vocabulary, decoded in one place."""

from __future__ import annotations

import orjson
import pytest

from relay.core.relay_messages import (
    DatabaseBroadcast,
    PolicyChanged,
    TableSetChanged,
    TopicPolicyChanged,
    decode_message,
)


@pytest.mark.parametrize("op", ["enable_table", "disable_table", "publication_changed"])
def test_table_set_changes(op: str) -> None:
    assert decode_message(orjson.dumps({"op": op, "table": "public.t"}).decode(), 5) == TableSetChanged(op)


def test_policy_messages() -> None:
    assert decode_message('{"op": "policy_changed"}', 5) == PolicyChanged()
    assert decode_message('{"op": "topic_policy_changed", "xid": "712"}', 5) == TopicPolicyChanged("712")
    assert decode_message('{"op": "topic_policy_changed", "xid": 712}', 5) == TopicPolicyChanged(None)


def test_broadcast_keeps_its_body_and_commit_position() -> None:
    body = {"op": "broadcast", "topic": "room", "event": "e", "payload": {"a": 1}, "private": True}
    assert decode_message(orjson.dumps(body).decode(), 0x16B3748) == DatabaseBroadcast(body, 0x16B3748)


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]", '"op"', '{"op": "from_the_future"}', "{}"])
def test_unknown_or_malformed_messages_are_ignored(content: str) -> None:
    assert decode_message(content, 1) is None
