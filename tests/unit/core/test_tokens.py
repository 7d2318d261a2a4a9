"""Unit tests for relay.core.tokens: JWT verification with the reference server's reasons."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from relay.core.tokens import TokenError, Verifier, mint

SECRET = "super-secret-jwt-token-with-at-least-32-characters-long-padded-to-64-bytes!"
OTHER = "another-secret-jwt-token-with-at-least-32-characters-long-padded-to-64-bytes"
NOW = 1_800_000_000.0


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs_token(header: dict[str, Any], payload: Any, secret: str = SECRET) -> str:
    """An HS256-signed token with an arbitrary (even invalid) header/payload."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(sig)


def claims(**kw: Any) -> dict[str, Any]:
    return {"role": "authenticated", "sub": "u1", "exp": int(NOW) + 3600, **kw}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(key: Any, kid: str | None, alg: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        d: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    else:
        d = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    d["alg"] = alg
    d["use"] = "sig"
    if kid is not None:
        d["kid"] = kid
    return d


# -- HS256 ----------------------------------------------------------------------------------------
class TestHS256:
    def test_valid(self) -> None:
        tok = jwt.encode(claims(extra=[1, 2]), SECRET, algorithm="HS256")
        out = Verifier(secret=SECRET).verify(tok, now=NOW)
        assert out == claims(extra=[1, 2])
        assert isinstance(out, dict)

    @pytest.mark.parametrize("alg", ["HS384", "HS512"])
    def test_other_hs_algs(self, alg: str) -> None:
        tok = jwt.encode(claims(), SECRET, algorithm=alg)
        assert Verifier(secret=SECRET).verify(tok, now=NOW)["role"] == "authenticated"

    def test_expired(self) -> None:
        tok = jwt.encode(claims(exp=int(NOW) - 42), SECRET, algorithm="HS256")
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        assert ei.value.reason == "InvalidJWTToken: Token has expired 42 seconds ago"
        assert ei.value.code == "InvalidJWTToken"
        assert str(ei.value) == ei.value.reason

    def test_expires_exactly_now(self) -> None:
        tok = jwt.encode(claims(exp=int(NOW)), SECRET, algorithm="HS256")
        with pytest.raises(TokenError, match="Token has expired 0 seconds ago"):
            Verifier(secret=SECRET).verify(tok, now=NOW)

    def test_one_second_left_is_valid(self) -> None:
        tok = jwt.encode(claims(exp=int(NOW) + 1), SECRET, algorithm="HS256")
        assert Verifier(secret=SECRET).verify(tok, now=NOW)

    def test_leeway(self) -> None:
        tok = jwt.encode(claims(exp=int(NOW) - 5), SECRET, algorithm="HS256")
        assert Verifier(secret=SECRET, leeway=10).verify(tok, now=NOW)
        with pytest.raises(TokenError, match="expired 5 seconds"):
            Verifier(secret=SECRET, leeway=2).verify(tok, now=NOW)

    def test_not_before(self) -> None:
        tok = jwt.encode(claims(nbf=int(NOW) + 100), SECRET, algorithm="HS256")
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        assert ei.value.code == "InvalidJWTToken"
        assert Verifier(secret=SECRET).verify(tok, now=NOW + 100)

    def test_aud_and_iat_not_verified(self) -> None:
        tok = jwt.encode(claims(aud="someone-else", iat=int(NOW) + 10_000), SECRET, algorithm="HS256")
        assert Verifier(secret=SECRET).verify(tok, now=NOW)["aud"] == "someone-else"

    @pytest.mark.parametrize("drop", ["role", "exp"])
    def test_missing_role_or_exp(self, drop: str) -> None:
        c = claims()
        del c[drop]
        tok = jwt.encode(c, SECRET, algorithm="HS256")
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        assert ei.value.reason == "InvalidJWTToken: Fields `role` and `exp` are required in JWT"

    def test_null_exp(self) -> None:
        tok = jwt.encode(claims(exp=None), SECRET, algorithm="HS256")
        with pytest.raises(TokenError, match="Fields `role` and `exp` are required"):
            Verifier(secret=SECRET).verify(tok, now=NOW)

    @pytest.mark.parametrize("exp", ["soon", True, [1], {"a": 1}])
    def test_non_numeric_exp(self, exp: Any) -> None:
        tok = hs_token({"alg": "HS256", "typ": "JWT"}, claims(exp=exp))
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        assert ei.value.code == "InvalidJWTToken"

    def test_nan_exp_refused(self) -> None:
        tok = hs_token({"alg": "HS256", "typ": "JWT"}, claims(exp=float("nan")))
        with pytest.raises(TokenError):
            Verifier(secret=SECRET).verify(tok, now=NOW)

    def test_float_exp(self) -> None:
        tok = hs_token({"alg": "HS256", "typ": "JWT"}, claims(exp=NOW + 0.5))
        assert Verifier(secret=SECRET).verify(tok, now=NOW)

    def test_bad_signature(self) -> None:
        tok = jwt.encode(claims(), OTHER, algorithm="HS256")
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        assert ei.value.code == "JwtSignatureError"
        assert ei.value.reason.startswith("JwtSignatureError: ")

    def test_tampered_payload(self) -> None:
        tok = jwt.encode(claims(role="authenticated"), SECRET, algorithm="HS256")
        h, _, s = tok.split(".")
        forged = h + "." + _b64(json.dumps(claims(role="service_role")).encode()) + "." + s
        with pytest.raises(TokenError, match=r"^JwtSignatureError: "):
            Verifier(secret=SECRET).verify(forged, now=NOW)

    def test_check_claims_reusable(self) -> None:
        v = Verifier(secret=SECRET)
        c = claims()
        assert v.check_claims(c, now=NOW) == c
        with pytest.raises(TokenError, match="expired 10 seconds"):
            v.check_claims(c, now=c["exp"] + 10)

    def test_default_clock(self) -> None:
        import time

        tok = jwt.encode(claims(exp=int(time.time()) + 60), SECRET, algorithm="HS256")
        assert Verifier(secret=SECRET).verify(tok)
        tok = jwt.encode(claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256")
        with pytest.raises(TokenError, match="expired"):
            Verifier(secret=SECRET).verify(tok)


# -- malformed / refused ------------------------------------------------------------------------
class TestMalformed:
    @pytest.mark.parametrize(
        "tok",
        [
            "",
            "garbage",
            "a.b.c",
            "....",
            "eyJhbGciOiJIUzI1NiJ9",
            "not.a.jwt",
            "\x00\xff",
            "ä.ö.ü",
            None,
            5,
            b"x.y.z",
        ],
    )
    def test_garbage(self, tok: Any) -> None:
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        assert ei.value.reason.startswith("MalformedJWT: ")

    @pytest.mark.parametrize("payload", [[1], "x", 5])
    def test_non_object_payload(self, payload: Any) -> None:
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(hs_token({"alg": "HS256"}, payload), now=NOW)
        assert ei.value.code in ("InvalidJWTToken", "MalformedJWT")

    def test_alg_none_refused(self) -> None:
        tok = _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(json.dumps(claims()).encode()) + "."
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        assert ei.value.code == "JwtSignatureError"

    @pytest.mark.parametrize("alg", ["None", "NONE", "", None, ["HS256"], {"a": 1}, "HS1"])
    def test_odd_algs_refused(self, alg: Any) -> None:
        tok = hs_token({"alg": alg}, claims())
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        assert ei.value.code == "JwtSignatureError"

    def test_header_alg_vs_signature_mismatch(self) -> None:
        # signed with HS256 but claims HS512 in the header
        tok = hs_token({"alg": "HS512"}, claims())
        with pytest.raises(TokenError, match=r"^JwtSignatureError"):
            Verifier(secret=SECRET).verify(tok, now=NOW)

    @pytest.mark.parametrize("header", [{"alg": "HS256", "kid": 123}, {"alg": "HS256", "crit": ["x"]}])
    def test_hostile_header_is_token_error(self, header: dict[str, Any]) -> None:
        with pytest.raises(TokenError):
            Verifier(secret=SECRET).verify(hs_token(header, claims()), now=NOW)

    def test_hs_refused_without_secret(self, rsa_key: rsa.RSAPrivateKey) -> None:
        # the classic confusion attack: HMAC signed with the public key as secret
        pub = pem(rsa_key)
        tok = hs_token({"alg": "HS256"}, claims(), secret=pub)
        with pytest.raises(TokenError) as ei:
            Verifier(public_key=pub).verify(tok, now=NOW)
        assert ei.value.reason == "JwtSignatureError: Algorithm HS256 is not accepted by this server"

    def test_rs_refused_with_only_secret(self, rsa_key: rsa.RSAPrivateKey) -> None:
        tok = jwt.encode(claims(), rsa_key, algorithm="RS256")
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        assert ei.value.reason == "JwtSignatureError: Algorithm RS256 is not accepted by this server"

    def test_no_key_configured(self) -> None:
        with pytest.raises(ValueError, match="no JWT key"):
            Verifier()
        with pytest.raises(ValueError):
            Verifier(secret="")

    @settings(max_examples=200, deadline=None)
    @given(
        st.text()
        | st.binary().map(lambda b: _b64(b))
        | st.lists(st.text(alphabet="abcXYZ-_=", max_size=20), min_size=3, max_size=3).map(".".join)
    )
    def test_only_token_error_escapes(self, tok: str) -> None:
        try:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        except TokenError:
            pass


# -- asymmetric ------------------------------------------------------------------------------------
class TestAsymmetric:
    def test_rs256_pem(self, rsa_key: rsa.RSAPrivateKey) -> None:
        tok = jwt.encode(claims(), rsa_key, algorithm="RS256")
        assert Verifier(public_key=pem(rsa_key)).verify(tok, now=NOW) == claims()

    def test_rs256_pem_wrong_key(self, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> None:
        tok = jwt.encode(claims(), rsa_key2, algorithm="RS256")
        with pytest.raises(TokenError, match=r"^JwtSignatureError: "):
            Verifier(public_key=pem(rsa_key)).verify(tok, now=NOW)

    def test_rs256_pem_expired(self, rsa_key: rsa.RSAPrivateKey) -> None:
        tok = jwt.encode(claims(exp=int(NOW) - 7), rsa_key, algorithm="RS256")
        with pytest.raises(TokenError) as ei:
            Verifier(public_key=pem(rsa_key)).verify(tok, now=NOW)
        assert ei.value.reason == "InvalidJWTToken: Token has expired 7 seconds ago"

    def test_es256_pem(self, ec_key: ec.EllipticCurvePrivateKey) -> None:
        tok = jwt.encode(claims(), ec_key, algorithm="ES256")
        assert Verifier(public_key=pem(ec_key)).verify(tok, now=NOW)["sub"] == "u1"

    def test_es256_token_against_rsa_pem(
        self, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
    ) -> None:
        tok = jwt.encode(claims(), ec_key, algorithm="ES256")
        with pytest.raises(TokenError):
            Verifier(public_key=pem(rsa_key)).verify(tok, now=NOW)

    def test_secret_and_public_key_together(self, rsa_key: rsa.RSAPrivateKey) -> None:
        v = Verifier(secret=SECRET, public_key=pem(rsa_key))
        assert v.verify(jwt.encode(claims(), SECRET, algorithm="HS256"), now=NOW)
        assert v.verify(jwt.encode(claims(), rsa_key, algorithm="RS256"), now=NOW)

    def test_jwks_single_key_without_kid(self, rsa_key: rsa.RSAPrivateKey) -> None:
        jwks = json.dumps({"keys": [jwk(rsa_key, None, "RS256")]})
        tok = jwt.encode(claims(), rsa_key, algorithm="RS256")
        assert Verifier(jwks=jwks).verify(tok, now=NOW) == claims()

    def test_jwks_bare_key_document(self, rsa_key: rsa.RSAPrivateKey) -> None:
        jwks = json.dumps(jwk(rsa_key, "k1", "RS256"))
        tok = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
        assert Verifier(jwks=jwks).verify(tok, now=NOW)

    def test_jwks_list_document(self, rsa_key: rsa.RSAPrivateKey) -> None:
        jwks = json.dumps([jwk(rsa_key, "k1", "RS256")])
        tok = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
        assert Verifier(jwks=jwks).verify(tok, now=NOW)

    def test_jwks_kid_selection(
        self, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
    ) -> None:
        jwks = json.dumps(
            {
                "keys": [
                    jwk(rsa_key, "one", "RS256"),
                    jwk(rsa_key2, "two", "RS256"),
                    jwk(ec_key, "ec", "ES256"),
                ]
            }
        )
        v = Verifier(jwks=jwks)
        t1 = jwt.encode(claims(sub="a"), rsa_key, algorithm="RS256", headers={"kid": "one"})
        t2 = jwt.encode(claims(sub="b"), rsa_key2, algorithm="RS256", headers={"kid": "two"})
        t3 = jwt.encode(claims(sub="c"), ec_key, algorithm="ES256", headers={"kid": "ec"})
        assert [v.verify(t, now=NOW)["sub"] for t in (t1, t2, t3)] == ["a", "b", "c"]
        # right kid, wrong signing key
        bad = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "two"})
        with pytest.raises(TokenError, match=r"^JwtSignatureError: "):
            v.verify(bad, now=NOW)

    def test_jwks_unknown_kid(self, rsa_key: rsa.RSAPrivateKey) -> None:
        v = Verifier(jwks=json.dumps({"keys": [jwk(rsa_key, "one", "RS256")]}))
        tok = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "nope"})
        with pytest.raises(TokenError) as ei:
            v.verify(tok, now=NOW)
        assert ei.value.reason == "JwtSignatureError: No JWKS key matches kid 'nope'"

    def test_jwks_no_kid_with_several_keys(
        self, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
    ) -> None:
        v = Verifier(jwks=json.dumps({"keys": [jwk(rsa_key, "one", "RS256"), jwk(rsa_key2, "two", "RS256")]}))
        tok = jwt.encode(claims(), rsa_key, algorithm="RS256")
        with pytest.raises(TokenError, match=r"^JwtSignatureError: No JWKS key matches kid None"):
            v.verify(tok, now=NOW)

    def test_jwks_and_secret(self, rsa_key: rsa.RSAPrivateKey) -> None:
        v = Verifier(secret=SECRET, jwks=json.dumps({"keys": [jwk(rsa_key, "one", "RS256")]}))
        assert v.verify(jwt.encode(claims(), SECRET, algorithm="HS256"), now=NOW)
        assert v.verify(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "one"}), now=NOW)


# -- mint ---------------------------------------------------------------------------------------------
class TestMint:
    def test_round_trip(self) -> None:
        tok = mint(SECRET, role="anon", sub="user-1", ttl=60, claims={"email": "a@b.c"}, now=NOW)
        out = Verifier(secret=SECRET).verify(tok, now=NOW + 59)
        assert out == {
            "role": "anon",
            "sub": "user-1",
            "iat": int(NOW),
            "exp": int(NOW) + 60,
            "email": "a@b.c",
        }
        assert jwt.get_unverified_header(tok)["alg"] == "HS256"

    def test_defaults(self) -> None:
        out = Verifier(secret=SECRET).verify(mint(SECRET, now=NOW), now=NOW)
        assert out["role"] == "authenticated"
        assert out["exp"] - out["iat"] == 3600
        assert "sub" not in out

    def test_expiry(self) -> None:
        tok = mint(SECRET, ttl=10, now=NOW)
        with pytest.raises(TokenError, match="Token has expired 5 seconds ago"):
            Verifier(secret=SECRET).verify(tok, now=NOW + 15)

    def test_claims_override(self) -> None:
        tok = mint(SECRET, claims={"role": "service_role"}, now=NOW)
        assert Verifier(secret=SECRET).verify(tok, now=NOW)["role"] == "service_role"

    def test_wrong_secret(self) -> None:
        with pytest.raises(TokenError, match=r"^JwtSignatureError"):
            Verifier(secret=OTHER).verify(mint(SECRET, now=NOW), now=NOW)

    def test_default_now(self) -> None:
        assert Verifier(secret=SECRET).verify(mint(SECRET))["role"] == "authenticated"


# -- claim types and values (issue 12 item 3) ------------------------------------------------------
class TestClaimValues:
    """One set of rules wherever claims are accepted: connect, join, access_token, stored claims."""

    HS = {"alg": "HS256", "typ": "JWT"}

    @pytest.mark.parametrize("name", ["nbf", "iat"])
    @pytest.mark.parametrize("value", [str(int(NOW) - 10), True, None, [1], {"a": 1}, float("nan")])
    def test_time_claims_must_be_numbers(self, name: str, value: Any) -> None:
        tok = hs_token(self.HS, claims(**{name: value}))
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        assert ei.value.reason == f"InvalidJWTToken: Field `{name}` must be a finite number"

    def test_string_exp_and_string_nbf_are_refused_alike(self) -> None:
        v = Verifier(secret=SECRET)
        for name in ("exp", "nbf"):
            with pytest.raises(TokenError, match=f"Field `{name}` must be a finite number"):
                v.check_claims(claims(exp=str(int(NOW) + 60)) if name == "exp" else claims(nbf="0"), now=NOW)

    @pytest.mark.parametrize("name", ["nbf", "iat"])
    def test_numeric_time_claims_accepted(self, name: str) -> None:
        for value in (int(NOW) - 10, NOW - 0.5):
            tok = hs_token(self.HS, claims(**{name: value}))
            assert Verifier(secret=SECRET).verify(tok, now=NOW)[name] == value

    @pytest.mark.parametrize("name", ["exp", "nbf", "iat", "branch_id", "user_level"])
    @pytest.mark.parametrize("value", [2**70, -(2**70), 10**400])
    def test_integers_beyond_64_bits_refused(self, name: str, value: int) -> None:
        body = claims(**{name: value})
        tok = hs_token(self.HS, body)
        with pytest.raises(TokenError) as ei:
            Verifier(secret=SECRET).verify(tok, now=NOW)
        assert ei.value.reason == (
            f"InvalidJWTToken: Claim `{name}` holds an integer outside the 64-bit range"
        )

    def test_nested_huge_integer_refused(self) -> None:
        tok = hs_token(self.HS, claims(app_metadata={"branches": [1, 2**64]}))
        with pytest.raises(TokenError, match="Claim `app_metadata` holds an integer outside the 64-bit"):
            Verifier(secret=SECRET).verify(tok, now=NOW)

    def test_64_bit_limits_accepted_and_canonicalisable(self) -> None:
        from relay.core.authorize import claims_key

        body = claims(exp=2**63 - 1, lo=-(2**63), nbf=int(NOW) - 1)
        out = Verifier(secret=SECRET).verify(hs_token(self.HS, body), now=NOW)
        assert out == body and claims_key(out)

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), {"x": [float("-inf")]}])
    def test_non_finite_numbers_refused(self, value: Any) -> None:
        tok = hs_token(self.HS, claims(score=value))
        with pytest.raises(TokenError, match="Claim `score` holds NaN or Infinity"):
            Verifier(secret=SECRET).verify(tok, now=NOW)

    @pytest.mark.parametrize(
        "body", [claims(email="a\x00b"), claims(meta={"k\x00": 1}), claims(**{"x\x00": 1})]
    )
    def test_nul_characters_refused(self, body: dict[str, Any]) -> None:
        with pytest.raises(TokenError, match="contains a NUL character"):
            Verifier(secret=SECRET).verify(hs_token(self.HS, body), now=NOW)

    def test_backslash_u0000_text_is_fine(self) -> None:
        body = claims(note="\\u0000 is just text")
        assert Verifier(secret=SECRET).verify(hs_token(self.HS, body), now=NOW)["note"] == body["note"]

    def test_deep_nesting_refused(self) -> None:
        deep: Any = 1
        for _ in range(300):
            deep = [deep]
        with pytest.raises(TokenError, match=r"^InvalidJWTToken: Claim `deep` cannot be used"):
            Verifier(secret=SECRET).check_claims(claims(deep=deep), now=NOW)

    def test_stored_claims_rechecked_with_the_same_rules(self) -> None:
        v = Verifier(secret=SECRET)
        stored = v.verify(hs_token(self.HS, claims(exp=int(NOW) + 2)), now=NOW)
        assert v.check_claims(stored, now=NOW + 1) == stored
        with pytest.raises(TokenError, match=r"^InvalidJWTToken: Token has expired 1 seconds ago$"):
            v.check_claims(stored, now=NOW + 3)
