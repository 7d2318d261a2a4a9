"""docker/README.md's commands work as written against docker/compose.yaml (no Docker engine).

Why simulate compose's variable handling: there is no engine here, and the defects this guards
against are exactly in that layer — ``compose exec`` interpolates the whole file again, so a
``${RELAY_JWT_SECRET:?}`` given inline to ``up`` only made every later command refuse; and a fixed
host port 5432 clashed with a local Postgres.  The test reads the README's shell block, tracks
the working directory and the ``.env`` file it writes, and for every ``docker compose`` command
resolves the compose file the way compose does (``${VAR}``, ``:-``, ``-``, ``:?``, ``?``, ``$$``)
with only the variables that command would see.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"

_VAR = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>(?:[^{}]|\{[^{}]*\})*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class Missing(Exception):
    """A ``${VAR:?message}`` whose variable is not set: compose refuses to run."""


def interpolate(value: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        val = env.get(name)
        unset_or_empty = val is None or (op is not None and op.startswith(":") and val == "")
        if op in (":-", "-") and unset_or_empty:
            return interpolate(arg, env)
        if op in (":?", "?") and unset_or_empty:
            raise Missing(f"{name}: {interpolate(arg, env)}")
        return val or ""

    return _VAR.sub(sub, value)


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    return node


def compose() -> dict[str, Any]:
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def readme_commands() -> list[str]:
    text = (DOCKER / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block is not None, "docker/README.md has no sh block"
    return [ln.split("  #")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def _dotenv(path: Path, files: dict[Path, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in files.get(path, "").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            out[key.strip()] = value.strip()
    return out


def test_compose_file_is_valid_yaml_with_the_services() -> None:
    doc = compose()
    assert set(doc["services"]) == {"postgres", "redis", "relay", "relay-2", "lb"}
    for svc in doc["services"].values():
        if "build" in svc:
            build = svc["build"]
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file()


def test_every_readme_command_resolves_with_what_it_would_see() -> None:
    """Walk the README's commands; each compose command must interpolate without a refusal."""
    cwd = ROOT  # the README's reader starts at the repository root
    files: dict[Path, str] = {}
    ran: list[str] = []
    for line in readme_commands():
        words = shlex.split(line.replace("$(openssl rand -hex 32)", "0" * 64))
        inline: dict[str, str] = {}
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            inline[key] = value
        if words[0] == "cd":
            cwd = (cwd / words[1]).resolve()
            continue
        if words[0] == "echo":
            assert words[-2] == ">", line
            files[(cwd / words[-1]).resolve()] = words[1] + "\n"
            continue
        assert words[:2] == ["docker", "compose"], f"unexpected command in docker/README.md: {line}"
        args = words[2:]
        file = cwd / "compose.yaml"
        if args[:1] == ["-f"]:
            file = cwd / args[1]
            args = args[2:]
        assert file.resolve() == (DOCKER / "compose.yaml").resolve(), f"{line}: no compose file at {file}"
        # compose reads .env from the project directory (the compose file's), then the shell env
        env = {**_dotenv(file.parent.resolve() / ".env", files), **inline}
        try:
            resolved = resolve(compose(), env)
        except Missing as exc:
            pytest.fail(f"`{line}` would be refused by compose: {exc}")
        verb = args[0]
        if verb in ("run", "exec", "logs"):
            service = next(a for a in args[1:] if not a.startswith("-"))
            assert service in resolved["services"], line
        if verb in ("run", "exec") and "relay" in args[1:3]:
            relay_env = resolved["services"]["relay"]["environment"]
            assert len(relay_env["RELAY_JWT_SECRET"]) >= 32, "the relay needs the secret in every command"
        ran.append(verb)
    assert {"build", "run", "up", "exec"} <= set(ran), ran
    assert ran.index("run") < ran.index("up"), "tables must be enabled before the relay starts"


def test_host_ports_can_be_overridden_and_do_not_default_to_5432() -> None:
    doc = compose()
    readme = (DOCKER / "README.md").read_text()
    for name, svc in doc["services"].items():
        for port in svc.get("ports", []):
            m = re.fullmatch(r"127\.0\.0\.1:\$\{(\w+):-(\d+)\}:(\d+)", port)
            assert m, f"{name}: {port} is not 127.0.0.1:${{VAR:-default}}:port"
            assert m.group(1) in readme, f"docker/README.md does not document {m.group(1)}"
            assert interpolate(port, {m.group(1): "55555"}).startswith("127.0.0.1:55555:")
    pg = resolve(doc["services"]["postgres"]["ports"][0], {})
    assert not pg.startswith("127.0.0.1:5432:"), "a local Postgres already owns 5432"


def test_interpolation_rules() -> None:
    env = {"A": "a", "E": ""}
    assert interpolate("${A}-${B:-b}-${E:-e}-${E-e}-$$A-${B:-${A}x}", env) == "a-b-e--$A-ax"
    with pytest.raises(Missing):
        interpolate("${E:?need E}", env)
    assert interpolate("${E?set}", env) == ""
