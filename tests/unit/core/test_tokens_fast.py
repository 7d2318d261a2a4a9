"""The HS* fast path of :class:`Verifier` against pyjwt, token by token.

Why differential: the fast path (relay/core/tokens.py ``Verifier._fast``) exists only for
speed (pyjwt was a quarter of a socket's connect); it must accept exactly the tokens pyjwt
accepts, with the same claims, and leave every other token to pyjwt so that each refusal keeps
its code and text.  Each token below is verified twice — with the fast path, and with it turned
off (the relay as it was) — and the outcomes must be identical.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from relay.core.tokens import TokenError, Verifier

SECRET = "fast-path-secret-0123456789-0123456789-0123456789-0123456789-abcdef"  # 64+ bytes: HS512 too
NOW = time.time()
EXP = int(NOW) + 3600


DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(
    payload: Any = None,
    header: Any = None,
    *,
    alg: str = "HS256",
    secret: str = SECRET,
    raw_payload: bytes | None = None,
    raw_header: bytes | None = None,
    signature: str | None = None,
) -> str:
    h = raw_header if raw_header is not None else json.dumps(header or {"alg": alg, "typ": "JWT"}).encode()
    body = {"role": "authenticated", "exp": EXP, "sub": "u1"} if payload is None else payload
    p = raw_payload if raw_payload is not None else json.dumps(body).encode()
    signing_input = f"{b64(h)}.{b64(p)}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(
        alg, hashlib.sha256
    )
    sig = (
        signature
        if signature is not None
        else b64(hmac.digest(secret.encode(), signing_input.encode(), digest))
    )
    return f"{signing_input}.{sig}"


GOOD = token()
H, P, S = GOOD.split(".")
# a token whose payload and signature segments need padding, to pad them
PADDABLE = next(
    t
    for t in (token(payload={"role": "authenticated", "exp": EXP, "x": "a" * n}) for n in range(8))
    if len(t.split(".")[1]) % 4 and len(t.split(".")[2]) % 4
)
PH, PP, PS = PADDABLE.split(".")

TOKENS: dict[str, Any] = {
    "plain HS256": GOOD,
    "HS384": token(alg="HS384", header={"alg": "HS384"}),
    "HS512": token(alg="HS512", header={"alg": "HS512", "typ": "JWT"}),
    "string kid": token(header={"alg": "HS256", "kid": "k1"}),
    "number kid": token(header={"alg": "HS256", "kid": 7}),
    "null kid": token(header={"alg": "HS256", "kid": None}),
    "crit header": token(header={"alg": "HS256", "crit": ["exp"]}),
    "b64 false": token(header={"alg": "HS256", "b64": False, "crit": ["b64"]}),
    "unknown header field": token(header={"alg": "HS256", "x5u": "https://example.invalid"}),
    "alg none": token(header={"alg": "none"}),
    "alg RS256": token(header={"alg": "RS256"}),
    "alg not a string": token(header={"alg": 256}),
    "no alg": token(header={"typ": "JWT"}),
    "header not an object": token(raw_header=b'["HS256"]'),
    "header not JSON": token(raw_header=b"{alg:HS256}"),
    "wrong secret": token(secret="another-secret-0123456789-0123456789-0123456789"),
    "signature of another token": f"{H}.{P}.{token(payload={'role': 'x', 'exp': EXP}).split('.')[2]}",
    "empty signature": f"{H}.{P}.",
    "paddable, unpadded": PADDABLE,
    "padded signature": f"{PH}.{PP}.{PS}{'=' * (-len(PS) % 4)}",
    "padded payload": f"{PH}.{PP}{'=' * (-len(PP) % 4)}.{PS}",
    "junk in signature": f"{H}.{P}.{S[:-2]}!!",
    "stray bits in the last character": f"{H}.{P}.{S[:-1]}{'B' if S[-1] == 'A' else 'A'}",
    "two segments": f"{H}.{P}",
    "four segments": f"{GOOD}.{S}",
    "not base64 at all": "not.a.jwt",
    "non-ascii": f"{H}.{P}é.{S}",
    "whitespace": f" {GOOD}",
    "payload not an object": token(raw_payload=b"[1, 2]"),
    "payload not JSON": token(raw_payload=b"{role: authenticated}"),
    "payload with NaN": token(raw_payload=b'{"role": "authenticated", "exp": NaN}'),
    "payload with a huge integer": token(payload={"role": "authenticated", "exp": EXP, "n": 2**70}),
    "duplicate claims": token(
        raw_payload=f'{{"role": "anon", "exp": {EXP}, "role": "authenticated"}}'.encode()
    ),
    "numeric sub": token(payload={"role": "authenticated", "exp": EXP, "sub": 42}),
    "numeric jti": token(payload={"role": "authenticated", "exp": EXP, "jti": 1}),
    "string jti": token(payload={"role": "authenticated", "exp": EXP, "jti": "j1"}),
    "expired": token(payload={"role": "authenticated", "exp": int(NOW) - 10}),
    "no role": token(payload={"exp": EXP}),
    "exp as string": token(payload={"role": "authenticated", "exp": str(EXP)}),
    "nested claims": token(payload={"role": "authenticated", "exp": EXP, "app": {"org": [1, {"a": None}]}}),
    "unicode claims": token(payload={"role": "authenticated", "exp": EXP, "name": "Zoë \u2603"}),
    "NUL in a claim": token(payload={"role": "authenticated", "exp": EXP, "name": "a\u0000b"}),
    "empty": "",
    "not a string": 12345,
}


def outcome(v: Verifier, tok: Any) -> tuple[str, Any]:
    try:
        return "ok", v.verify(tok, now=NOW)
    except TokenError as exc:
        return "refused", (str(exc.code), exc.message)


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_fast_path_and_pyjwt_agree(name: str) -> None:
    fast = Verifier(secret=SECRET)
    assert set(fast._fast_keys) == {"HS256", "HS384", "HS512"}
    slow = Verifier(secret=SECRET)
    slow._fast_keys.clear()  # the relay without the fast path: pyjwt decides everything
    tok = TOKENS[name]
    assert outcome(fast, tok) == outcome(slow, tok)


def test_fast_path_takes_the_plain_tokens_and_leaves_the_rest() -> None:
    v = Verifier(secret=SECRET)
    taken = {name for name, tok in TOKENS.items() if isinstance(tok, str) and v._fast(tok) is not None}
    # the claim rules (check_claims) still refuse some of these: both paths share them
    assert {"plain HS256", "HS384", "HS512", "string kid", "paddable, unpadded", "expired"} <= taken
    assert not taken & {
        "crit header",
        "b64 false",
        "wrong secret",
        "padded signature",
        "padded payload",
        "stray bits in the last character",
        "numeric sub",
        "numeric jti",
        "alg none",
        "null kid",
        "number kid",
        "unknown header field",
    }


def test_a_secret_pyjwt_warns_about_or_refuses_keeps_pyjwt() -> None:
    """Short secrets (pyjwt warns on every decode) and key-shaped ones (pyjwt refuses) are not
    fast-pathed: their tokens keep pyjwt's behaviour, warning included."""
    short = Verifier(secret="short-secret")
    assert short._fast_keys == {}
    assert set(Verifier(secret="x" * 32)._fast_keys) == {"HS256"}  # 32 bytes: enough for SHA-256 only
    pem = Verifier(secret="-----BEGIN PUBLIC KEY-----\nMIIBIjANBg\n-----END PUBLIC KEY-----\n")
    assert pem._fast_keys == {}
