"""Unit tests for relay.config: environment parsing, overrides, key material from files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from relay.config import ENV_VARS, Config, ConfigError

PEM = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqh\n-----END PUBLIC KEY-----\n"


def test_defaults_from_empty_env() -> None:
    cfg = Config.from_env({})
    assert cfg == Config()
    assert cfg.host == "127.0.0.1"
    assert cfg.port == 4000
    assert cfg.slot == "realtime_relay"
    assert cfg.publication == "supabase_realtime"
    assert cfg.database_url is None and cfg.jwt_secret is None
    assert cfg.compression is False


def test_every_field_has_a_variable() -> None:
    names = {f.name for f in dataclasses.fields(Config)}
    assert names == set(ENV_VARS)
    assert all(v[0].startswith("RELAY_") for v in ENV_VARS.values())


def test_parsing_all_types() -> None:
    env = {
        "RELAY_DATABASE_URL": "postgresql://u@h/db",
        "RELAY_JWT_SECRET": "s3cret",
        "RELAY_HOST": "0.0.0.0",
        "RELAY_PORT": "8080",
        "RELAY_SLOT": "myslot",
        "RELAY_PUBLICATION": "pub",
        "RELAY_MAX_FRAME_BYTES": "1024",
        "RELAY_SOCKET_QUEUE_FRAMES": "5",
        "RELAY_HEARTBEAT_TIMEOUT": "2.5",
        "RELAY_PUBLICATION_POLL": "0.25",
        "RELAY_COMPRESSION": "yes",
        "RELAY_LOG_LEVEL": "DEBUG",
    }
    cfg = Config.from_env(env)
    assert cfg.database_url == "postgresql://u@h/db"
    assert cfg.jwt_secret == "s3cret"
    assert cfg.host == "0.0.0.0"
    assert cfg.port == 8080 and isinstance(cfg.port, int)
    assert cfg.slot == "myslot" and cfg.publication == "pub"
    assert cfg.max_frame_bytes == 1024 and cfg.socket_queue_frames == 5
    assert cfg.heartbeat_timeout == 2.5 and isinstance(cfg.heartbeat_timeout, float)
    assert cfg.publication_poll_interval == 0.25
    assert cfg.compression is True
    assert cfg.log_level == "DEBUG"


def test_empty_values_ignored() -> None:
    assert Config.from_env({"RELAY_PORT": "", "RELAY_HOST": ""}) == Config()


def test_unrelated_variables_ignored() -> None:
    assert Config.from_env({"PORT": "1", "relay_port": "2", "DATABASE_URL": "x"}) == Config()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" On ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_bool_spellings(raw: str, expected: bool) -> None:
    assert Config.from_env({"RELAY_COMPRESSION": raw}).compression is expected


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("RELAY_PORT", "abc"),
        ("RELAY_PORT", "4000.5"),
        ("RELAY_MAX_FRAME_BYTES", "5MB"),
        ("RELAY_SOCKET_QUEUE_FRAMES", "ten"),
        ("RELAY_HEARTBEAT_TIMEOUT", "soon"),
        ("RELAY_COMPRESSION", "maybe"),
    ],
)
def test_bad_values(var: str, raw: str) -> None:
    with pytest.raises(ConfigError) as ei:
        Config.from_env({var: raw})
    assert var in str(ei.value)
    assert repr(raw) in str(ei.value)


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("port", ["0", "65536", "-1"])
def test_port_range(port: str) -> None:
    with pytest.raises(ConfigError, match=r"RELAY_PORT must be 1\.\.65535"):
        Config.from_env({"RELAY_PORT": port})


def test_port_range_override() -> None:
    with pytest.raises(ConfigError, match="RELAY_PORT"):
        Config.from_env({}, port=70000)


def test_overrides_win_and_none_ignored() -> None:
    env = {"RELAY_PORT": "5000", "RELAY_HOST": "10.0.0.1", "RELAY_SLOT": "envslot"}
    cfg = Config.from_env(env, port=6000, host=None, compression=True)
    assert cfg.port == 6000
    assert cfg.host == "10.0.0.1"
    assert cfg.slot == "envslot"
    assert cfg.compression is True


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PORT", "4321")
    monkeypatch.setenv("RELAY_LOG_LEVEL", "WARNING")
    cfg = Config.from_env()
    assert cfg.port == 4321 and cfg.log_level == "WARNING"


def test_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


# -- key material --------------------------------------------------------------------------------
def test_public_key_inline_kept() -> None:
    assert Config.from_env({"RELAY_JWT_PUBLIC_KEY": PEM}).jwt_public_key == PEM


def test_public_key_from_path(tmp_path: Path) -> None:
    p = tmp_path / "key.pem"
    p.write_text(PEM)
    assert Config.from_env({"RELAY_JWT_PUBLIC_KEY": str(p)}).jwt_public_key == PEM


def test_public_key_from_at_path(tmp_path: Path) -> None:
    p = tmp_path / "key.pem"
    p.write_text(PEM)
    assert Config.from_env({"RELAY_JWT_PUBLIC_KEY": "@" + str(p)}).jwt_public_key == PEM


def test_jwks_inline_and_file(tmp_path: Path) -> None:
    doc = '{"keys": []}'
    assert Config.from_env({"RELAY_JWT_JWKS": doc}).jwt_jwks == doc
    p = tmp_path / "jwks.json"
    p.write_text(doc)
    assert Config.from_env({"RELAY_JWT_JWKS": str(p)}).jwt_jwks == doc
    assert Config.from_env({}, jwt_jwks=str(p)).jwt_jwks == doc


def test_secret_file_only_with_at(tmp_path: Path) -> None:
    p = tmp_path / "secret.txt"
    p.write_text("from-file")
    # a secret that happens to look like a path is taken literally...
    assert Config.from_env({"RELAY_JWT_SECRET": str(p)}).jwt_secret == str(p)
    # ...unless it is given as @path
    assert Config.from_env({"RELAY_JWT_SECRET": "@" + str(p)}).jwt_secret == "from-file"


def test_secret_file_trailing_newline_stripped(tmp_path: Path) -> None:
    p = tmp_path / "secret.txt"
    p.write_text("from-file\n")
    assert Config.from_env({"RELAY_JWT_SECRET": "@" + str(p)}).jwt_secret == "from-file"


def test_secret_with_slash_literal() -> None:
    assert Config.from_env({"RELAY_JWT_SECRET": "ab/cd+ef=="}).jwt_secret == "ab/cd+ef=="


def test_missing_key_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "key.pem"
    with pytest.raises(ConfigError, match="RELAY_JWT_PUBLIC_KEY: cannot read"):
        Config.from_env({"RELAY_JWT_PUBLIC_KEY": str(missing)})
    with pytest.raises(ConfigError, match="RELAY_JWT_SECRET: cannot read"):
        Config.from_env({"RELAY_JWT_SECRET": "@" + str(missing)})


def test_resolved_idempotent(tmp_path: Path) -> None:
    p = tmp_path / "key.pem"
    p.write_text(PEM)
    cfg = Config.from_env({"RELAY_JWT_PUBLIC_KEY": str(p)})
    assert cfg.resolved() == cfg


# -- require_* -------------------------------------------------------------------------------------
def test_require_database() -> None:
    with pytest.raises(ConfigError, match="RELAY_DATABASE_URL"):
        Config().require_database()
    assert Config(database_url="postgresql://x").require_database() == "postgresql://x"


def test_require_jwt() -> None:
    with pytest.raises(ConfigError, match="RELAY_JWT_SECRET"):
        Config().require_jwt()
    Config(jwt_secret="s").require_jwt()
    Config(jwt_public_key=PEM).require_jwt()
    Config(jwt_jwks="{}").require_jwt()


def test_payload_and_presence_limits() -> None:
    cfg = Config.from_env({"RELAY_MAX_PAYLOAD_DEPTH": "32", "RELAY_MAX_PAYLOAD_BYTES": "1000"})
    assert cfg.payload_limits.max_depth == 32 and cfg.payload_limits.max_bytes == 1000
    assert Config.from_env({}).payload_limits.max_depth == 64
    # the JSON encoder writes at most 254 levels, and frames wrap the payload in a few more
    with pytest.raises(ConfigError, match="RELAY_MAX_PAYLOAD_DEPTH"):
        Config.from_env({"RELAY_MAX_PAYLOAD_DEPTH": "300"})
    with pytest.raises(ConfigError, match="RELAY_MAX_ROOM_PRESENCES"):
        Config.from_env({"RELAY_MAX_ROOM_PRESENCES": "0"})


def test_handshake_timeout() -> None:
    assert Config().handshake_timeout == 10.0
    assert Config.from_env({"RELAY_HANDSHAKE_TIMEOUT": "2.5"}).handshake_timeout == 2.5
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="RELAY_HANDSHAKE_TIMEOUT must be positive"):
            Config.from_env({"RELAY_HANDSHAKE_TIMEOUT": bad})
