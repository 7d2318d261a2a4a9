"""The error model: every :class:`Code` is documented, every refusal exception carries one.

Why: clients (the SDK, dashboards) switch on ``code``; an undocumented code, or a refusal whose
code is missing or changed, breaks them silently.  The reason texts are checked unchanged too:
clients show them, and Supabase's clients match some of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay.core.broadcast import BroadcastError
from relay.core.errors import Code, RelayError
from relay.core.filters import FilterError
from relay.core.payload_limits import PayloadRejected
from relay.core.presence import PresenceError
from relay.core.protocol import ProtocolError, parse
from relay.core.quotas import CHANNELS, CONNECTIONS, JOINS, MESSAGES, PRESENCE_EVENTS, PRESENCE_KEYS
from relay.core.subscriptions import TABLE_UNAVAILABLE_REASON, BindingError, TableUnavailable
from relay.core.tokens import TokenError
from relay.server.http_api import HttpError
from relay.server.topics import JoinRefused

DOCS = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


def documented_codes() -> list[str]:
    """The first column of the "Error codes" table of docs/protocol.md."""
    text = DOCS.read_text()
    section = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def test_every_code_has_one_row_in_the_docs_and_every_row_is_a_code() -> None:
    rows = documented_codes()
    assert len(rows) == len(set(rows)), "a code is documented twice"
    assert sorted(rows) == sorted(c.value for c in Code)


def test_codes_are_unique_and_stable_strings() -> None:
    values = [c.value for c in Code]
    assert len(values) == len(set(values))
    # the codes that existed before the enumeration keep their spelling (clients match them)
    for old in (
        "resync_needed",
        "table_not_enabled",
        "UnableToConnectToProject",
        "token_expiring",
        "broadcast_replay_incomplete",
        "too_many_channels",
        "payload_too_deep",
        "room_presence_full",
    ):
        assert Code(old).value == old


@pytest.mark.parametrize(
    ("exc", "code", "reason"),
    [
        (
            TokenError("InvalidJWTToken", "Token has expired 3 seconds ago"),
            Code.INVALID_JWT_TOKEN,
            "InvalidJWTToken: Token has expired 3 seconds ago",
        ),
        (
            TokenError(Code.MALFORMED_JWT, "The token provided is not a valid JWT"),
            Code.MALFORMED_JWT,
            "MalformedJWT: The token provided is not a valid JWT",
        ),
        (
            BindingError('select: column "x" does not exist in public.t'),
            Code.INVALID_BINDING,
            'InvalidBinding: select: column "x" does not exist in public.t',
        ),
        (TableUnavailable(), Code.TABLE_NOT_ENABLED, TABLE_UNAVAILABLE_REASON),
        (
            FilterError('invalid filter "x=zz.1": unknown operator "zz"'),
            Code.INVALID_BINDING,
            'InvalidBinding: invalid filter "x=zz.1": unknown operator "zz"',
        ),
        (
            BroadcastError("a broadcast needs an event"),
            Code.INVALID_BROADCAST,
            "invalid broadcast: a broadcast needs an event",
        ),
        (PayloadRejected("payload_too_deep", "too deep"), Code.PAYLOAD_TOO_DEEP, "too deep"),
        (PresenceError("not an object"), Code.PRESENCE_INVALID, "not an object"),
        (PresenceError("full", "room_presence_full"), Code.ROOM_PRESENCE_FULL, "full"),
        (JoinRefused("Unauthorized: nope"), Code.UNAUTHORIZED, "Unauthorized: nope"),
        (ProtocolError("malformed JSON"), Code.INVALID_MESSAGE, "malformed JSON"),
        (
            HttpError(413, "request body too large", Code.PAYLOAD_TOO_LARGE),
            Code.PAYLOAD_TOO_LARGE,
            "request body too large",
        ),
    ],
)
def test_refusals_are_relay_errors_with_a_code_and_their_old_text(
    exc: RelayError, code: Code, reason: str
) -> None:
    assert isinstance(exc, RelayError)
    assert exc.code is code
    assert exc.reason == reason


def test_token_error_text_is_code_then_message() -> None:
    exc = TokenError("JwtSignatureError", "Failed to validate JWT signature")
    assert str(exc) == exc.reason == "JwtSignatureError: Failed to validate JWT signature"
    assert exc.message == "Failed to validate JWT signature"


def test_value_errors_stay_value_errors() -> None:
    """Callers that caught ValueError before the error model still catch these."""
    for cls in (BindingError, FilterError, BroadcastError, PayloadRejected, PresenceError, ProtocolError):
        assert issubclass(cls, ValueError) and issubclass(cls, RelayError)


def test_quotas_carry_codes() -> None:
    for quota in (CONNECTIONS, CHANNELS, JOINS, MESSAGES, PRESENCE_EVENTS, PRESENCE_KEYS):
        assert isinstance(quota.code, Code)


def test_unknown_code_is_refused() -> None:
    with pytest.raises(ValueError):
        RelayError("no_such_code", "x")


def test_protocol_error_from_parse_is_invalid_message() -> None:
    with pytest.raises(ProtocolError) as info:
        parse("{not json", "1.0.0")
    assert info.value.code is Code.INVALID_MESSAGE
