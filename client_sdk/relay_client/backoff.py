"""The reconnect schedule: exponential backoff with full jitter, capped, reset when stable.

Why full jitter: after a relay restart every client reconnects at once; drawing each wait
uniformly from ``[0, cap]`` spreads them out (AWS "Exponential Backoff And Jitter").  The cap
grows ``initial * 2**(attempt-1)`` up to ``maximum`` (tenacity's ``wait_exponential``, the
window of its ``wait_random_exponential``), so while offline a client still probes at least
every ``maximum`` seconds and notices promptly when the network returns.

Why "reset when stable" instead of "reset on success": a link that connects and dies at once
(a flapping proxy, a relay that refuses right after the handshake) would otherwise reconnect in
a tight loop.  The attempt count returns to zero only once a connection stayed up for
``stable_after`` seconds.

Pure: no clock, no sleep; the caller passes times in and sleeps itself.  The random source is
injectable so the schedule is unit-tested deterministically.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import tenacity

__all__ = ["Backoff", "BackoffPolicy"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How reconnect waits grow: ``initial`` doubles per attempt up to ``maximum``."""

    initial: float = 0.5
    maximum: float = 15.0
    stable_after: float = 10.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError(f"need 0 < initial <= maximum, got initial={self.initial}, max={self.maximum}")
        if self.stable_after < 0:
            raise ValueError("stable_after must not be negative")


@dataclass(slots=True)
class Backoff:
    """Attempt counter + jittered delays for one thing that retries (the socket, a channel)."""

    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    _window: tenacity.wait_exponential = field(init=False)

    def __post_init__(self) -> None:
        self._window = tenacity.wait_exponential(multiplier=self.policy.initial, max=self.policy.maximum)

    def cap(self, attempt: int) -> float:
        """Upper bound of the wait before retry number ``attempt`` (1-based)."""
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = max(1, attempt)
        return float(self._window(state))

    def next_delay(self) -> float:
        """Count one more failed attempt and return how long to wait before the next one."""
        self.attempt += 1
        return self.rng.uniform(0.0, self.cap(self.attempt))

    def reset(self) -> None:
        self.attempt = 0

    def connection_ended(self, connected_for: float) -> None:
        """A connection that lived ``connected_for`` seconds ended: reset if it was stable."""
        if connected_for >= self.policy.stable_after:
            self.reset()
