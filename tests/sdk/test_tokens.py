"""When the client asks its token provider for a new token, without a network."""

from __future__ import annotations

from relay_client.tokens import claims_of, refresh_at, token_expiry

from tests.support.relay import token


def test_expiry_is_read_without_verifying() -> None:
    t = token(ttl=100)
    claims = claims_of(t)
    assert claims is not None and claims["role"] == "service_role"
    assert token_expiry(t) == float(claims["exp"])
    for bad in (None, "", "abc", "a.b.c", "a.!!!.c"):
        assert token_expiry(bad) is None


def test_refresh_margin_before_expiry() -> None:
    t = token(ttl=3600)
    claims = claims_of(t)
    assert claims is not None
    exp, iat = float(claims["exp"]), float(claims["iat"])
    assert refresh_at(t, iat, margin=60) == exp - 60


def test_short_tokens_refresh_at_half_their_life() -> None:
    t = token(ttl=10)
    claims = claims_of(t)
    assert claims is not None
    exp, iat = float(claims["exp"]), float(claims["iat"])
    assert refresh_at(t, iat + 1, margin=60) == exp - 5


def test_opaque_tokens_are_never_scheduled() -> None:
    assert refresh_at("opaque-api-key", 0.0, 60) is None
    assert refresh_at(None, 0.0, 60) is None
