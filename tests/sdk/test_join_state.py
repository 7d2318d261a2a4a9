"""The channel state machine, without a network: every interleaving the resume promise depends on."""

from __future__ import annotations

import pytest
from relay_client.join_state import ChannelState, ReplyOutcome
from relay_client.protocol import ChannelClosedByServer, Resumed, Subscribed
from relay_client.types import Binding, ChannelStates, ResyncNeeded

OK = {
    "status": "ok",
    "response": {"postgres_changes": [{"event": "*", "id": 5}, {"event": "INSERT", "id": 6}]},
}
ERR = {"status": "error", "response": {"reason": "InvalidJWTToken: Token has expired 1 seconds ago"}}


def p(n: int) -> str:
    return f"{n:016X}:00000000"


def state(st: ChannelState) -> ChannelStates:
    """(Read through a call, so the type checker does not keep an earlier narrowing.)"""
    return st.state


def joined(position: str | None = None) -> ChannelState:
    st = ChannelState("dash", position=position)
    st.add_binding(Binding())
    st.add_binding(Binding("INSERT", table="alerts"))
    st.wanted = True
    st.begin_join("1", "1", "tok")
    assert st.on_reply("1", OK) == ReplyOutcome("joined")
    return st


def test_first_join_is_fresh_and_rejoins_resume_from_the_last_processed_position() -> None:
    st = ChannelState("dash")
    st.add_binding(Binding())
    st.wanted = True
    assert st.needs_join()
    frame = st.begin_join("1", "1", "tok")
    assert frame.topic == "realtime:dash" and "resume_from" not in frame.payload["config"]
    assert state(st) is ChannelStates.JOINING and not st.needs_join()
    st.on_reply("1", OK)
    st.on_system(Subscribed(p(10)))
    assert st.position == p(10)  # no change yet: the subscribed position is the resume point
    assert st.is_new(p(11))
    st.processed(p(11))
    st.on_disconnect()
    assert state(st) is ChannelStates.ERRORED and st.needs_join()
    again = st.begin_join("2", "2", "tok")
    assert again.payload["config"]["resume_from"] == p(11)


def test_a_persisted_position_resumes_the_very_first_join() -> None:
    st = ChannelState("dash", position=p(3))
    st.add_binding(Binding())
    st.wanted = True
    assert st.begin_join("1", "1", None).payload["config"]["resume_from"] == p(3)


def test_duplicates_and_stale_positions_are_dropped_and_counted() -> None:
    st = joined(p(10))
    assert not st.is_new(p(10)) and not st.is_new(p(9))
    assert st.is_new(p(12))
    st.processed(p(12))
    assert not st.is_new(p(11))
    assert st.stats.duplicates == 3 and st.stats.changes == 1
    # is_new alone does not advance: only processed() (after delivery) does
    assert st.is_new(p(13)) and st.position == p(12)


def test_system_events_only_move_the_position_forward() -> None:
    st = joined(p(20))
    st.on_system(Subscribed(p(20)))  # a resume's Subscribed repeats resume_from
    st.on_system(Resumed(p(25), p(20), 4))
    assert st.position == p(25) and st.stats.resumes == 1 and st.stats.replayed == 4
    st.on_system(Resumed(p(21), p(20), 0))
    assert st.position == p(25)
    st.on_system(ResyncNeeded("dash", "m", p(40)))
    assert st.position == p(40) and st.stats.resyncs == 1  # continue live after it
    st.on_system(ChannelClosedByServer("Token has expired 1 seconds ago", token=True))
    assert st.token_error


OLD_STREAM, NEW_STREAM = "1111111111111111", "2222222222222222"


def sp(stream: str, n: int) -> str:
    return f"{stream}/{p(n)}"


def test_a_resync_for_a_foreign_or_future_position_resets_the_dedup_position() -> None:
    """The database was restored / failed over: the relay answers resync_needed with a position
    of its stream that compares *lower* than ours.  Kept as the higher of the two, every later
    change would be dropped as a duplicate."""
    st = joined(sp(OLD_STREAM, 0xFFFFFF))
    st.on_system(Subscribed(sp(OLD_STREAM, 0xFFFFFF)))  # a resume's Subscribed echoes resume_from
    st.on_system(ResyncNeeded("dash", "m", sp(NEW_STREAM, 40)))
    assert st.position == sp(NEW_STREAM, 40)
    assert st.is_new(sp(NEW_STREAM, 41)) and st.stats.duplicates == 0
    st.processed(sp(NEW_STREAM, 41))
    assert not st.is_new(sp(NEW_STREAM, 41))  # dedup works again within the new stream
    # same stream, position from the future (e.g. FFFFFFFFFFFFFFFF:FFFFFFFF): also reset
    st = joined(sp(NEW_STREAM, 0xFFFFFFFF))
    st.on_system(ResyncNeeded("dash", "m", sp(NEW_STREAM, 40)))
    assert st.is_new(sp(NEW_STREAM, 41))


def test_positions_of_different_streams_never_compare() -> None:
    st = joined(p(0xFFFFFFFFFFFFFFFF))  # a legacy position (no stream id), compares higher
    assert st.is_new(sp(NEW_STREAM, 1))
    st.processed(sp(NEW_STREAM, 1))
    assert st.position == sp(NEW_STREAM, 1)
    st.on_system(Resumed(sp(NEW_STREAM, 3), sp(NEW_STREAM, 1), 0))
    assert st.position == sp(NEW_STREAM, 3)


def test_stale_replies_and_the_close_of_a_replaced_join_are_ignored() -> None:
    st = joined()
    st.on_disconnect()
    st.begin_join("7", "7", "tok")
    assert st.on_reply("1", OK) is None  # the old join's reply
    assert not st.on_close("1")  # the old join's phx_close (ref = its join_ref)
    assert state(st) is ChannelStates.JOINING
    assert st.on_reply("7", OK) == ReplyOutcome("joined")
    assert st.stats.joins == 2


def test_binding_indexes_route_by_the_ids_of_the_last_join() -> None:
    st = joined()
    assert st.binding_indexes((5,)) == [0]
    assert st.binding_indexes((6, 5)) == [0, 1]
    assert st.binding_indexes((99,)) == []


def test_a_refused_first_join_is_final_but_a_refused_rejoin_is_retried() -> None:
    st = ChannelState("dash")
    st.add_binding(Binding())
    st.wanted = True
    st.begin_join("1", "1", None)
    out = st.on_reply("1", ERR)
    assert out is not None and out.kind == "refused" and out.final
    assert state(st) is ChannelStates.CLOSED and not st.needs_join()
    st = joined()
    st.on_disconnect()
    st.begin_join("2", "2", "expired")
    out = st.on_reply("2", ERR)
    assert out is not None and not out.final and out.reason and "expired" in out.reason
    assert state(st) is ChannelStates.ERRORED and st.needs_join() and st.stats.refusals == 1


def test_a_first_join_refused_as_retryable_by_code_is_retried() -> None:
    """``UnableToConnectToProject`` (Postgres unreachable) passes by itself: even a first join is
    retried, as the official clients do; the text is not read, only the code."""
    unreachable = {
        "status": "error",
        "response": {"reason": "Realtime was unable to connect", "code": "UnableToConnectToProject"},
    }
    st = ChannelState("dash")
    st.add_binding(Binding())
    st.wanted = True
    st.begin_join("1", "1", None)
    out = st.on_reply("1", unreachable)
    assert out == ReplyOutcome("refused", "Realtime was unable to connect", False, "UnableToConnectToProject")
    assert state(st) is ChannelStates.ERRORED and st.needs_join()
    # the same text with a final code stays final
    st = ChannelState("dash")
    st.wanted = True
    st.begin_join("1", "1", None)
    bad = {"status": "error", "response": {"reason": "UnableToConnectToProject: x", "code": "InvalidBinding"}}
    out = st.on_reply("1", bad)
    assert out is not None and out.final and out.code == "InvalidBinding"
    assert state(st) is ChannelStates.CLOSED


def test_server_close_makes_a_wanted_channel_rejoin() -> None:
    st = joined()
    assert st.on_close("1")
    assert state(st) is ChannelStates.ERRORED and st.needs_join() and st.stats.server_closes == 1


def test_leave() -> None:
    st = joined()
    frame = st.begin_leave("9")
    assert frame is not None and frame.event == "phx_leave" and frame.join_ref == "1"
    assert state(st) is ChannelStates.LEAVING and not st.needs_join()
    assert st.on_reply("9", {"status": "ok", "response": {}}) == ReplyOutcome("left")
    assert state(st) is ChannelStates.CLOSED
    assert not st.on_close("1")  # the phx_close after the leave reply changes nothing
    # leaving a channel that is not joined sends nothing
    st2 = ChannelState("x")
    assert st2.begin_leave("1") is None and state(st2) is ChannelStates.CLOSED


def test_join_timeout_and_disconnect_while_joining() -> None:
    st = ChannelState("dash")
    st.add_binding(Binding())
    st.wanted = True
    st.begin_join("1", "1", None)
    assert st.join_timed_out() and state(st) is ChannelStates.ERRORED and st.stats.timeouts == 1
    assert not st.join_timed_out()
    assert st.on_reply("1", OK) is None  # a late reply to the timed-out join
    st.begin_join("2", "2", None)
    st.on_disconnect()
    assert state(st) is ChannelStates.ERRORED and st.join_push is None


def test_bindings_are_fixed_once_subscribed() -> None:
    st = joined()
    with pytest.raises(RuntimeError):
        st.add_binding(Binding())
