"""Unit tests for relay.redact and the CLI's failure explanations (no Postgres, no network)."""

from __future__ import annotations

import errno
import socket

import pytest

from relay.cli import explain_failure
from relay.config import Config, ConfigError, check_database_url
from relay.core.tokens import mint
from relay.redact import MASK, Redactor, dsn_password, redact_dsn


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("postgresql://u:pw-1@h:5432/db", "pw-1"),
        ("postgres://u:p%40ss@h/db", "p%40ss"),  # as written; Redactor masks both forms
        ("postgresql://u@h/db", None),
        ("postgresql://h/db", None),
        ("postgress://u:typo-pw@h:5432/db", "typo-pw"),
        ("postgresql://u:pw@h:notaport/db", "pw"),
        ("host=h password=kw-secret dbname=d", "kw-secret"),
        ("host=h password='quoted secret' dbname=d", "quoted secret"),
        ("", None),
        (None, None),
    ],
)
def test_dsn_password(dsn: str | None, password: str | None) -> None:
    assert dsn_password(dsn) == password


def test_redact_dsn_keeps_everything_but_the_password() -> None:
    assert redact_dsn("postgresql://app:hunter22@db.example:6543/app") == (
        f"postgresql://app:{MASK}@db.example:6543/app"
    )
    assert redact_dsn("postgresql://app@db/app") == "postgresql://app@db/app"
    assert "kw-secret" not in redact_dsn("host=h password=kw-secret")


def test_redactor_masks_known_secrets_and_secret_shapes() -> None:
    tok = mint("some-signing-secret-of-32-bytes!!", role="authenticated", ttl=60)
    r = Redactor(["some-signing-secret-of-32-bytes!!", "p%40ss", None, ""])
    text = (
        f'missing "=" after "postgress://u:other-pw@h:1/db" in connection info string; '
        f"key some-signing-secret-of-32-bytes!! token {tok} password=x1y2 pw p@ss"
    )
    out = r.scrub(text)
    for secret in ("other-pw", "some-signing-secret", tok, tok.split(".")[2], "x1y2", "p@ss"):
        assert secret not in out, (secret, out)
    assert "postgress://u:***@h:1/db" in out
    # a usage hint's placeholder stays readable
    assert r.scrub("use postgresql://user:password@host/db") == "use postgresql://user:password@host/db"
    # 1-2 character values would mask ordinary text: they are not taken as secrets
    assert Redactor(["a"]).scrub("a cat") == "a cat"


@pytest.mark.parametrize(
    "url",
    ["postgress://u:pw@h/db", "http://h/db", "host=h dbname=d", "just-a-name", "postgresql://u:pw@h:99999/d"],
)
def test_malformed_database_urls_are_refused_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_database_url(url)
    assert "pw@" not in str(err.value) and "postgresql://user:password@host" in str(err.value)


def test_valid_database_urls_pass() -> None:
    for url in ("postgresql://u:pw@h:5432/db", "postgres://h/db", "postgresql://u@[::1]:5/d"):
        check_database_url(url)


@pytest.mark.parametrize(
    ("exc", "expect"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "host 'db.example' not found"),
        (RuntimeError('FATAL:  password authentication failed for user "app"'), "refused the password"),
        (RuntimeError('FATAL:  database "nope" does not exist'), "no database 'app'"),
        (RuntimeError('FATAL:  role "app" does not exist'), "no role 'app'"),
        (RuntimeError("no pg_hba.conf entry for host"), "pg_hba.conf"),
        (TimeoutError(), "timed out"),
        (OSError(errno.EADDRINUSE, "address already in use"), "already in use"),
        (RuntimeError("replication did not start: connection refused"), "connection refused"),
        (ValueError("something odd\nsecond line"), "ValueError: something odd"),
    ],
)
def test_explain_failure_is_two_lines_with_a_fix(exc: BaseException, expect: str) -> None:
    cfg = Config(database_url="postgresql://app:pw@db.example:6543/app")
    text = explain_failure(exc, cfg)
    lines = text.splitlines()
    assert len(lines) == 2, text
    assert expect in lines[0], text
    assert "fix" in lines[1] or "DEBUG" in lines[1]


def test_weak_secret() -> None:
    assert Config(jwt_secret="short").weak_secret() == 5
    assert Config(jwt_secret="x" * 32).weak_secret() is None
    assert Config().weak_secret() is None
