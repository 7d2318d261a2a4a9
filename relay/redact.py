"""Keep secrets out of what the relay prints and logs: DSN passwords, JWTs, the JWT secret.

Why a separate, pure module: secrets reach output by routes nobody wrote on purpose — psycopg
quotes a malformed DSN verbatim in its error, asyncpg or aiohttp messages may carry a URL, a
traceback logged at DEBUG shows a frame's arguments.  Rather than trusting every message, the
CLI passes everything it prints and every log record through one :class:`Redactor` that knows
the configured secrets *and* the shapes secrets have (``scheme://user:password@``,
``password=...``, ``eyJ...`` JWTs), so even a secret it was not told about is masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

__all__ = ["MASK", "Redactor", "dsn_password", "redact_dsn"]

MASK = "***"

# scheme://user:password@  (password up to the last '@' before whitespace or a quote)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)[^\s'\"]*(?=@)")
# libpq keyword form: password=secret or password='se cret'
_KW_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.I)
# other secret-looking key=value / key: value pairs (tokens, api keys, secrets)
_KV_SECRET = re.compile(
    r"(?P<head>\b(?:passwd|pwd|secret|apikey|api_key|access_token|token)\s*[=:]\s*)"
    r"(?P<q>[\"']?)[^\s\"'&,;]+",
    re.IGNORECASE,
)
# a JWT: three base64url parts, the first starting like '{"' does ("eyJ")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*")


def _mask_url_password(m: re.Match[str]) -> str:
    """Mask a URL's password, except the placeholder of a usage hint (``user:password@``)."""
    if m.group(0)[len(m.group("head")) :].lower() in ("password", "pw", MASK):
        return m.group(0)
    return m.group("head") + MASK


def dsn_password(dsn: str | None) -> str | None:
    """The password written in a Postgres URL or keyword DSN, if any (for :class:`Redactor`)."""
    if not dsn:
        return None
    if "://" in dsn:
        try:
            pw = urlsplit(dsn).password
        except ValueError:  # e.g. a non-numeric port: fall back to the pattern
            pw = None
        if pw is None:
            m = re.search(r"://[^\s:/@]*:([^\s]*)@", dsn)
            pw = m.group(1) if m else None
        return pw or None
    m = _KW_PASSWORD.search(dsn)
    if m is None:
        return None
    value = m.group(0)[len(m.group("head")) :]
    return value.strip("'") or None


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***`` (URL or keyword form)."""
    return Redactor([dsn_password(dsn) or ""]).scrub(dsn)


class Redactor:
    """Masks known secret strings and anything shaped like a password or a JWT."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        found: set[str] = set()
        for s in secrets:
            if not s or len(s) < 3:  # a 1-2 character "secret" would mask ordinary text
                continue
            found.add(s)
            found.add(unquote(s))
        # longest first: a secret that contains another is masked whole
        self.secrets = sorted(found, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, MASK)
        text = _URL_PASSWORD.sub(_mask_url_password, text)
        text = _KW_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
        if "eyJ" in text:
            text = _JWT.sub("<redacted-jwt>", text)
        return _KV_SECRET.sub(lambda m: m.group("head") + m.group("q") + MASK, text)
