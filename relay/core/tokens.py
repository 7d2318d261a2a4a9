"""JWT verification with the reference server's error reasons.

Why here and pure: every connect and every ``phx_join`` / ``access_token`` push verifies a token,
and the error text is part of the protocol (clients and dashboards show it).  The clock is passed
in so expiry is testable; keys come from configuration (HS256 secret, a PEM public key, or a
JWKS document) and are parsed once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import sys
import time
import warnings
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
_HS_DIGEST = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_PLAIN_HEADER = frozenset({"alg", "typ", "kid"})
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
    # HS algorithm -> the secret's bytes, for the algorithms whose plain tokens :meth:`_fast`
    # may verify (pyjwt takes the secret for them without an error or a warning)
    _fast_keys: dict[str, bytes] = field(default_factory=dict, init=False)

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
        if self.secret:
            algorithms = jwt.algorithms.get_default_algorithms()
            for alg in _HS:
                hs = algorithms[alg]
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("error")
                        key = hs.prepare_key(self.secret)
                except (jwt.PyJWTError, Warning):
                    continue
                if isinstance(key, bytes) and hs.check_key_length(key) is None:
                    self._fast_keys[alg] = key

    def verify(self, token: object, now: float | None = None) -> Claims:
        """Return the claims of a valid token or raise :class:`TokenError`."""
        if not isinstance(token, str) or not token:
            raise TokenError("MalformedJWT", "The token provided is not a valid JWT")
        fast = self._fast(token) if self._fast_keys else None
        if fast is not None:
            return self.check_claims(fast, now)
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

    def _fast(self, token: str) -> Claims | None:
        """The payload of a plain, valid HS256/384/512 token, or None: then pyjwt decides.

        Why: pyjwt 2.15 parses every token twice here (the header to pick the key, then the
        whole token), checks each base64 character in a Python loop and re-inspects the secret
        on every call — ≈ a quarter of a socket's connect (issue 16, py-spy).  This path accepts
        only what pyjwt accepts (canonical unpadded base64url segments, a header of ``alg``,
        ``typ`` and a string ``kid`` only, a good signature, a JSON object payload whose ``sub``
        and ``jti`` are strings when present) and returns None for everything else — padding,
        ``crit``/``b64`` headers, a bad signature, anything malformed — so every refusal, and
        every unusual token, still goes through pyjwt with its exact errors.
        """
        parts = token.split(".")
        if len(parts) != 3:
            return None
        raw = [_segment(p) for p in parts]
        if raw[0] is None or raw[1] is None or raw[2] is None:
            return None
        try:  # the stdlib's parser, as pyjwt's: orjson reads integers beyond 64 bits as floats
            header = json.loads(raw[0])
        except (ValueError, RecursionError):
            return None
        if type(header) is not dict or not header.keys() <= _PLAIN_HEADER:
            return None
        alg = header.get("alg")
        if type(alg) is not str:
            return None
        key = self._fast_keys.get(alg)
        if key is None or ("kid" in header and type(header["kid"]) is not str):
            return None
        signing_input = token[: len(parts[0]) + 1 + len(parts[1])].encode()
        if not hmac.compare_digest(hmac.digest(key, signing_input, _HS_DIGEST[alg]), raw[2]):
            return None
        try:
            payload = json.loads(raw[1])
        except (ValueError, RecursionError):
            return None
        if type(payload) is not dict:
            return None
        for name in ("sub", "jti"):
            if name in payload and type(payload[name]) is not str:
                return None
        return payload

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


def _segment(part: str) -> bytes | None:
    """A canonical unpadded base64url segment's bytes (what pyjwt accepts without ``=``), or None."""
    if len(part) % 4 == 1 or not _B64URL.fullmatch(part):
        return None
    data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=") != part.encode():
        return None  # stray bits in the last character: pyjwt refuses such a segment
    return data


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
