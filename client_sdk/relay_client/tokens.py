"""When to refresh an access token: read its ``exp`` and pick a time before it.

Why the SDK reads the token at all: the relay closes a channel the moment its token expires
(and refuses a reconnect with it), so a provider must be asked *before* ``exp``, early enough
for a slow provider.  The signature is not checked (the relay does that); only the expiry is
read, and an unreadable token simply means "no scheduled refresh".  Pure: times are passed in.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

__all__ = ["claims_of", "refresh_at", "token_expiry"]


def claims_of(token: str) -> dict[str, Any] | None:
    """The (unverified) claims of a JWT, or None if it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    body = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(body.encode()))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def token_expiry(token: str | None) -> float | None:
    """``exp`` (seconds since the epoch) of a JWT, or None."""
    claims = claims_of(token) if token else None
    exp = claims.get("exp") if claims else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def refresh_at(token: str | None, now: float, margin: float) -> float | None:
    """When to ask the provider for the next token: ``margin`` seconds before ``exp``.

    For short-lived tokens the margin is at most half the token's remaining life at ``now``
    (measured from ``iat`` when present), so a 10-second token is refreshed after about
    5 seconds rather than immediately and forever.  None: nothing to schedule.
    """
    exp = token_expiry(token)
    if exp is None:
        return None
    claims = claims_of(token) if token else None
    iat = claims.get("iat") if claims else None
    start = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else now
    life = max(0.0, exp - min(start, now))
    return exp - min(margin, life / 2)
