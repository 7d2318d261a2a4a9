"""Quotas: how much one client may take of the relay (connections, channels, rates, sizes).

Why here and pure: a quota decides on numbers and a clock only, and its refusal must be the
same everywhere it is checked; the server asks, refuses with the :class:`Quota` it got back
(its ``reason`` in the reply, its ``code`` beside it), counts the hit and audits it.  Time is
passed in, so the rate limits are tested without sleeping.

Names follow the reference server where it has a counterpart (``ChannelRateLimitReached: Too
many channels``, ``ConnectionRateLimitReached: Too many connected users``,
``ClientJoinRateLimitReached: Too many joins per second``); ``code`` is this relay's stable,
documented name (docs/protocol.md, docs/operations.md#quotas).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Final

from relay.core.errors import Code
from relay.core.protocol import dumps

__all__ = [
    "CHANGE_TOO_LARGE",
    "CHANGE_TOO_LARGE_ERROR",
    "CHANNELS",
    "CONNECTIONS",
    "CONNECTIONS_PER_ADDRESS",
    "CONNECTIONS_PER_SUB",
    "JOINS",
    "MESSAGES",
    "PRESENCE_EVENTS",
    "PRESENCE_KEYS",
    "ConnectionCounts",
    "Quota",
    "TokenBucket",
    "trim_change_data",
]


@dataclass(frozen=True, slots=True)
class Quota:
    """One quota's refusal: ``kind`` counts and audits it, ``code`` and ``reason`` go to the client."""

    kind: str
    code: Code
    reason: str


CONNECTIONS: Final = Quota(
    "connections", Code.TOO_MANY_CONNECTIONS, "ConnectionRateLimitReached: Too many connected users"
)
CONNECTIONS_PER_SUB: Final = Quota(
    "connections_per_sub",
    Code.TOO_MANY_CONNECTIONS,
    "ConnectionRateLimitReached: Too many connections for this user (sub)",
)
CONNECTIONS_PER_ADDRESS: Final = Quota(
    "connections_per_address",
    Code.TOO_MANY_CONNECTIONS,
    "ConnectionRateLimitReached: Too many connections from this address",
)
CHANNELS: Final = Quota("channels", Code.TOO_MANY_CHANNELS, "ChannelRateLimitReached: Too many channels")
JOINS: Final = Quota("joins", Code.TOO_MANY_JOINS, "ClientJoinRateLimitReached: Too many joins per second")
MESSAGES: Final = Quota(
    "messages", Code.TOO_MANY_MESSAGES, "ClientMessageRateLimitReached: Too many messages per second"
)
PRESENCE_EVENTS: Final = Quota(
    "presence_events",
    Code.TOO_MANY_PRESENCE_MESSAGES,
    "PresenceRateLimitReached: Too many presence messages per second",
)
PRESENCE_KEYS: Final = Quota(
    "presence_keys",
    Code.TOO_MANY_PRESENCE_KEYS,
    "PresenceKeysLimitReached: Too many keys in the presence payload",
)
CHANGE_TOO_LARGE: Final = Quota(
    "postgres_change_too_large", Code.PAYLOAD_TOO_LARGE, "Postgres change payload over the size limit"
)
# The ``errors`` entry of a trimmed postgres_changes payload: the reference server's text.
CHANGE_TOO_LARGE_ERROR: Final = "Error 413: Payload Too Large"
# Values up to this many bytes (encoded JSON) stay in a trimmed record, as upstream keeps them.
KEPT_VALUE_BYTES: Final = 64


class TokenBucket:
    """``rate`` events a second on average, at most ``burst`` at once; ``rate <= 0`` is unlimited.

    Why a bucket and not a fixed window: a window lets 2x the rate through across its edge,
    and a client that paces itself at the rate must never be refused.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float | None = None, now: float = 0.0) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._tokens = self.burst
        self._stamp = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens at time ``now`` (seconds, monotonic); False (nothing spent) if short."""
        if self.rate <= 0:
            return True
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


class ConnectionCounts:
    """Open sockets, in total and per key (a token's ``sub``, a remote address).

    ``admit`` and ``add`` are separate so that a refused socket is never counted; ``remove``
    undoes exactly what ``add`` did.  A limit of 0 means no limit.
    """

    def __init__(self, total: int, per_sub: int, per_address: int) -> None:
        self.limits = (total, per_sub, per_address)
        self.total = 0
        self.by_sub: Counter[Hashable] = Counter()
        self.by_address: Counter[Hashable] = Counter()

    def admit(self, sub: Hashable | None, address: Hashable) -> Quota | None:
        total, per_sub, per_address = self.limits
        if total and self.total >= total:
            return CONNECTIONS
        if per_sub and sub is not None and self.by_sub[sub] >= per_sub:
            return CONNECTIONS_PER_SUB
        if per_address and self.by_address[address] >= per_address:
            return CONNECTIONS_PER_ADDRESS
        return None

    def add(self, sub: Hashable | None, address: Hashable) -> None:
        self.total += 1
        if sub is not None:
            self.by_sub[sub] += 1
        self.by_address[address] += 1

    def remove(self, sub: Hashable | None, address: Hashable) -> None:
        self.total -= 1
        for counter, key in ((self.by_sub, sub), (self.by_address, address)):
            if key is None:
                continue
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]


def trim_change_data(data: dict[str, Any]) -> dict[str, Any]:
    """A ``postgres_changes`` ``data`` over the size limit, as the reference server sends it.

    ``record`` and ``old_record`` keep only the fields whose encoded value is at most
    :data:`KEPT_VALUE_BYTES` bytes (so keys and small columns such as ids survive), and
    ``errors`` says :data:`CHANGE_TOO_LARGE_ERROR`.  The subscriber learns that it must fetch the
    row itself, instead of the change being dropped or the socket choked by one huge frame.
    """
    out = dict(data)
    for name in ("record", "old_record"):
        row = out.get(name)
        if isinstance(row, dict):
            out[name] = {k: v for k, v in row.items() if len(dumps(v)) <= KEPT_VALUE_BYTES}
    errors = out.get("errors")
    out["errors"] = [*(errors if isinstance(errors, list) else []), CHANGE_TOO_LARGE_ERROR]
    return out
