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
    "REST_MESSAGES",
    "ConnectionCounts",
    "KeyedBuckets",
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
REST_MESSAGES: Final = Quota(
    "rest_messages",
    Code.TOO_MANY_MESSAGES,
    "ClientMessageRateLimitReached: Too many messages per second",
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

    @property
    def stamp(self) -> float:
        """When tokens were last counted (the last :meth:`take` that moved the clock)."""
        return self._stamp

    def full(self, now: float) -> bool:
        """Whether the bucket would be full at ``now`` (forgetting it then changes nothing)."""
        return self.rate <= 0 or self._tokens + max(0.0, now - self._stamp) * self.rate >= self.burst


class KeyedBuckets:
    """One :class:`TokenBucket` per key (a caller of the HTTP API), with a bounded number of keys.

    Why bounded: the keys come from requests (a token's ``sub``, a remote address), so an
    unbounded map would let a caller grow the relay's memory at will.  Over ``max_keys`` the
    buckets that are full again (their caller has been quiet for a second's worth of its rate)
    are forgotten first, which changes nothing for anyone: a new bucket starts full too.  If
    that is not enough, the longest-idle ones go; that can only ever let a forgotten caller
    through early, never refuse one that kept to its rate.
    """

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[Hashable, TokenBucket] = {}

    def take(self, key: Hashable, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens of ``key``'s bucket at ``now``; False (nothing spent) if short."""
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now=now)
        return bucket.take(now, n)

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:  # all busy: forget the longest-idle half
            idle = sorted(self._buckets, key=lambda k: self._buckets[k].stamp)
            for key in idle[: len(idle) // 2 + 1]:
                del self._buckets[key]


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
