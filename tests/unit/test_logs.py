"""Log formatting: JSON lines parse, context is attached, secrets never reach the output."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import datetime

import orjson
import pytest

from relay.core.tokens import mint
from relay.logs import audit_event, bind, configure_logging, redact
from relay.server.metrics import join_refusal_code, token_refusal_reason

TOKEN = mint("s" * 40, role="authenticated", ttl=60)


@pytest.fixture()
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_redact_tokens_and_passwords() -> None:
    line = (
        f"connect postgresql://app:hunter2pw@db:5432/x failed; token {TOKEN}; password=abc123 apikey: 'k3y'"
    )
    out = redact(line)
    for secret in ("hunter2pw", TOKEN, TOKEN.split(".")[2], "abc123", "k3y"):
        assert secret not in out
    assert "postgresql://app:***@db:5432/x" in out
    assert redact("nothing secret here") == "nothing secret here"


def test_json_lines_parse_with_context_and_tracebacks(restore_root: None) -> None:
    buf = io.StringIO()
    configure_logging("DEBUG", "json", stream=buf)
    log = logging.getLogger("relay.test")
    with bind(remote="10.0.0.1", socket="abc"):
        log.info("joined %s", "realtime:room", extra={"topic": "realtime:room", "code": "ok"})
        try:
            raise RuntimeError(f"boom with postgresql://u:pw-in-exc@h/db and {TOKEN}")
        except RuntimeError:
            log.exception("handler failed")
        audit_event("token_refused", reason="expired", code="InvalidJWTToken")
    log.warning("outside")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4  # the traceback stays inside its line
    recs = [orjson.loads(x) for x in lines]
    first = recs[0]
    assert (
        first["level"] == "INFO"
        and first["logger"] == "relay.test"
        and first["message"] == "joined realtime:room"
    )
    assert first["remote"] == "10.0.0.1" and first["socket"] == "abc" and first["topic"] == "realtime:room"
    assert datetime.fromisoformat(first["timestamp"]).tzinfo is not None and "T" in first["timestamp"]
    assert "Traceback" in recs[1]["exc_info"] and "pw-in-exc" not in lines[1] and TOKEN not in lines[1]
    audit = recs[2]
    assert audit["logger"] == "relay.audit" and audit["event"] == "token_refused"
    assert audit["reason"] == "expired" and audit["remote"] == "10.0.0.1" and audit["level"] == "WARNING"
    assert "remote" not in recs[3]


def test_plain_text_is_the_default_and_redacted(restore_root: None) -> None:
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    logging.getLogger("relay.test").warning("dsn postgres://a:b-secret@h/d")
    out = buf.getvalue()
    assert " WARNING relay.test: dsn postgres://a:***@h/d" in out
    assert not out.lstrip().startswith("{")
    with pytest.raises(ValueError):
        configure_logging("INFO", "xml", stream=buf)


def test_metric_labels_are_bounded() -> None:
    assert join_refusal_code("UnknownTopic: topics are realtime:<x>", None) == "UnknownTopic"
    assert join_refusal_code("anything a user typed: " + "x" * 50, None) == "other"
    assert join_refusal_code("too big", "payload_too_large") == "payload_too_large"
    assert token_refusal_reason("InvalidJWTToken", "Token has expired 3 seconds ago") == "expired"
    assert (
        token_refusal_reason("InvalidJWTToken", "Fields `role` and `exp` are required in JWT")
        == "missing_claims"
    )
    assert token_refusal_reason("JwtSignatureError", "No JWKS key matches kid 'x'") == "signature"
    assert token_refusal_reason("InvalidJWTToken", "Token is not yet valid (nbf)") == "not_yet_valid"


def test_a_quota_hit_is_counted_and_audited(caplog: pytest.LogCaptureFixture) -> None:
    """The hook later quotas use: one call counts ``relay_rate_limit_hits_total{kind}`` and audits."""
    from relay.server.metrics import RelayMetrics

    m = RelayMetrics()
    with caplog.at_level(logging.WARNING, logger="relay.audit"), bind(remote="10.1.1.1"):
        m.rate_limited("broadcasts_per_second", topic="realtime:r")
        m.rate_limited("broadcasts_per_second", topic="realtime:r")
    assert m.rate_limit_hits["broadcasts_per_second"] == 2
    rec = caplog.records[-1]
    assert rec.name == "relay.audit" and rec.getMessage().startswith("quota_hit ")
    assert vars(rec)["kind"] == "broadcasts_per_second" and vars(rec)["remote"] == "10.1.1.1"


def test_audit_fields_named_like_record_attributes(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="relay.audit"):
        audit_event("quota_hit", name="x", msg="y", kind="k")
    rec = caplog.records[-1]
    fields = vars(rec)  # extra= fields are set on the record, unknown to LogRecord's stub
    assert (
        rec.name == "relay.audit"
        and fields["name_"] == "x"
        and fields["msg_"] == "y"
        and fields["kind"] == "k"
    )
    assert rec.getMessage() == "quota_hit name=x msg=y kind=k"
