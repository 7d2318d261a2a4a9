"""JWT verification with the reference server's error reasons.

Why here and pure: every connect and every ``phx_join`` / ``access_token`` push verifies a token,
and the error text is part of the protocol (clients and dashboards show it).  The clock is passed
in so expiry is testable; keys come from configuration (HS256 secret, a PEM public key, or a
JWKS document) and are parsed once.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from jwt import PyJWK

from relay.core.errors import Code, RelayError

__all__ = ["Claims", "TokenError", "Verifier", "mint"]

Claims = dict[str, Any]

_HS = ["HS256", "HS384", "HS512"]
_ASYM = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA"]


class TokenError(RelayError):
    """A refused token.  ``reason`` is the ``<Code>: <message>`` string sent to clients."""

    def __init__(self, code: Code | str, message: str) -> None:
        super().__init__(code, message)
        self.args = (f"{self.code}: {message}",)  # str(exc) is the reason, as Supabase words it


@dataclass
class Verifier:
    """Verifies tokens against the configured key material.

    At least one of ``secret`` (HS*), ``public_key`` (PEM, RS*/ES*) or ``jwks`` (JSON text) must
    be given.  ``leeway`` seconds of clock skew are tolerated on ``exp``/``nbf``.
    """

    secret: str | None = None
    public_key: str | None = None
    jwks: str | None = None
    leeway: float = 0.0
    _jwk_by_kid: dict[str, PyJWK] = field(default_factory=dict, init=False)
    _jwk_list: list[PyJWK] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if not (self.secret or self.public_key or self.jwks):
            raise ValueError(
                "no JWT key configured: set RELAY_JWT_SECRET, RELAY_JWT_PUBLIC_KEY or RELAY_JWT_JWKS"
            )
        if self.jwks:
            doc = json.loads(self.jwks)
            keys = doc.get("keys", [doc]) if isinstance(doc, dict) else doc
            for k in keys:
                jwk = PyJWK.from_dict(k)
                self._jwk_list.append(jwk)
                if "kid" in k:
                    self._jwk_by_kid[k["kid"]] = jwk

    def verify(self, token: object, now: float | None = None) -> Claims:
        """Return the claims of a valid token or raise :class:`TokenError`."""
        if not isinstance(token, str) or not token:
            raise TokenError("MalformedJWT", "The token provided is not a valid JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:  # DecodeError, and InvalidTokenError for a bad kid/crit header
            raise TokenError("MalformedJWT", "The token provided is not a valid JWT") from None
        alg = header.get("alg")
        key: Any
        if alg in _HS:
            if not self.secret:
                raise TokenError("JwtSignatureError", f"Algorithm {alg} is not accepted by this server")
            key = self.secret
        elif alg in _ASYM:
            if self.jwks:
                kid = header.get("kid")
                jwk = (
                    self._jwk_by_kid.get(kid)
                    if kid
                    else (self._jwk_list[0] if len(self._jwk_list) == 1 else None)
                )
                if jwk is None:
                    raise TokenError("JwtSignatureError", f"No JWKS key matches kid {kid!r}")
                key = jwk.key
            elif self.public_key:
                key = self.public_key
            else:
                raise TokenError("JwtSignatureError", f"Algorithm {alg} is not accepted by this server")
        else:
            raise TokenError("JwtSignatureError", f"Unsupported JWT algorithm {alg!r}")
        try:
            claims: Claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                options={"verify_exp": False, "verify_aud": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            raise TokenError("JwtSignatureError", "Failed to validate JWT signature") from None
        except jwt.PyJWTError as exc:
            raise TokenError("InvalidJWTToken", str(exc) or type(exc).__name__) from None
        return self.check_claims(claims, now)

    def check_claims(self, claims: Mapping[str, Any], now: float | None = None) -> Claims:
        """The claim rules, applied identically wherever a token's claims are (re)accepted.

        Called on every connect, on every ``phx_join`` (its ``access_token``, or the connect
        token's stored claims, which may have expired since the socket opened) and on every
        ``access_token`` push.  pyjwt's own ``exp``/``nbf``/``iat`` checks coerce with ``int()``
        (so ``"123"`` and ``true`` pass), hence the explicit type rules here: a time claim is a
        JSON number (not a string, not a boolean, not null) and finite.  Every claim must also
        be usable later without surprises: its JSON must fit orjson (integers within 64 bits,
        bounded nesting: claims are canonicalised for the fan-out memo) and Postgres ``jsonb``
        (no NUL characters: claims are sent to policy evaluation).  Refusing such a token here
        is a clear answer; accepting it meant an internal error on every later join.
        """
        if now is None:
            now = time.time()
        exp = claims.get("exp")
        if "role" not in claims or exp is None:
            raise TokenError("InvalidJWTToken", "Fields `role` and `exp` are required in JWT")
        for name in _TIME_CLAIMS:
            if name in claims:
                v = claims[name]
                if (
                    not isinstance(v, int | float)
                    or isinstance(v, bool)
                    or (isinstance(v, float) and not math.isfinite(v))
                ):
                    raise TokenError("InvalidJWTToken", f"Field `{name}` must be a finite number")
        for name, value in claims.items():
            _check_usable(name, value)
        if exp + self.leeway <= now:
            raise TokenError("InvalidJWTToken", f"Token has expired {int(now - exp)} seconds ago")
        nbf = claims.get("nbf")
        if nbf is not None and nbf - self.leeway > now:
            raise TokenError("InvalidJWTToken", "Token is not yet valid (nbf)")
        # A copy, with the claim names (and the role) interned: every socket keeps its claims
        # for its lifetime, and the JSON decoder makes new strings for "role", "exp", "sub"...
        # on every token (≈ 0.25 KiB per idle socket, issue 16).
        out = {sys.intern(k) if type(k) is str else k: v for k, v in claims.items()}
        role = out["role"]
        if type(role) is str:
            out["role"] = sys.intern(role)
        return out


_TIME_CLAIMS = ("exp", "nbf", "iat")


def _check_usable(name: str, value: Any) -> None:
    """Refuse a claim the relay could not canonicalise (orjson) or hand to Postgres (jsonb)."""
    try:
        orjson.dumps({name: value})  # depth is bounded once this succeeds
    except orjson.JSONEncodeError as exc:
        if "64-bit" in str(exc):
            raise TokenError(
                "InvalidJWTToken", f"Claim `{name}` holds an integer outside the 64-bit range"
            ) from None
        raise TokenError("InvalidJWTToken", f"Claim `{name}` cannot be used: {exc}") from None
    bad = _unstorable(name) or _unstorable(value)
    if bad:
        raise TokenError("InvalidJWTToken", f"Claim `{name}` {bad}")


def _unstorable(value: Any) -> str | None:
    """What Postgres jsonb would refuse (NUL) or orjson would silently turn into null (NaN)."""
    if isinstance(value, str):
        return "contains a NUL character" if "\x00" in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else "holds NaN or Infinity"
    if isinstance(value, dict):
        items: list[Any] = [*value.keys(), *value.values()]
        return next((r for r in map(_unstorable, items) if r), None)
    if isinstance(value, list):
        return next((r for r in map(_unstorable, value) if r), None)
    return None


def mint(
    secret: str,
    *,
    role: str = "authenticated",
    sub: str | None = None,
    ttl: int = 3600,
    claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """Mint an HS256 development token (``relay token``, the demo and the tests)."""
    iat = int(now if now is not None else time.time())
    body: dict[str, Any] = {"role": role, "iat": iat, "exp": iat + int(ttl)}
    if sub is not None:
        body["sub"] = sub
    if claims:
        body.update(claims)
    return jwt.encode(body, secret, algorithm="HS256")
