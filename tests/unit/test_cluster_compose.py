"""docker/compose.yaml's cluster (Redis, two relay nodes, HAProxy) and docker/haproxy.cfg.

Why these checks: there is no Docker engine here, so what can go wrong must be caught from the
files: a relay node without Redis (it would run alone, not as a node), two nodes with one node
id, Redis without AOF (its restart would lose the change log), a node reachable around the load
balancer, a balancer that pins clients to a node (sticky) or checks liveness instead of
readiness, or a server list that does not match the compose services.  HAProxy's own parser
(``haproxy -c``, Debian's package, installed by scripts/install-system-deps.sh) checks the
syntax; tests/integration/test_load_balancer.py runs this very file in front of real relays.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_docker import resolve

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
HAPROXY_CFG = DOCKER / "haproxy.cfg"
ENV = {"RELAY_JWT_SECRET": "0" * 64}


def services() -> dict[str, Any]:
    doc = resolve(yaml.safe_load((DOCKER / "compose.yaml").read_text()), ENV)
    out = doc["services"]
    assert isinstance(out, dict)
    return out


def relay_nodes() -> dict[str, dict[str, Any]]:
    return {
        name: svc for name, svc in services().items() if svc.get("image", "").startswith("pg-change-relay")
    }


def haproxy_sections(text: str) -> dict[str, list[str]]:
    """``{"backend relays": [directive, ...], ...}``: HAProxy's section/keyword layout, comments out."""
    out: dict[str, list[str]] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = " ".join(line.split())
            out[current] = []
        else:
            out[current].append(" ".join(line.split()))
    return out


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


def test_two_relay_nodes_share_redis_and_have_their_own_ids() -> None:
    nodes = relay_nodes()
    assert set(nodes) == {"relay", "relay-2"}
    ids = set()
    for name, svc in nodes.items():
        env = svc["environment"]
        assert env["RELAY_REDIS_URL"] == "redis://redis:6379/0", name
        ids.add(env["RELAY_NODE_ID"])
        assert "ports" not in svc, f"{name} is reachable around the load balancer"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert len(env["RELAY_JWT_SECRET"]) >= 32 and env["RELAY_DATABASE_URL"].startswith("postgresql://")
    assert len(ids) == 2, "each node needs a node id of its own"
    assert nodes["relay"]["environment"]["RELAY_WORKERS"] == "1"


def test_redis_keeps_its_data_with_aof() -> None:
    redis = services()["redis"]
    cmd = redis["command"]
    assert cmd[0] == "redis-server"
    opts = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert opts["--appendonly"] == "yes" and opts["--appendfsync"] in ("everysec", "always")
    assert any(v.endswith(":/data") for v in redis["volumes"]), "the AOF must live on a volume"
    assert "ports" not in redis


def test_the_load_balancer_is_the_only_way_in_and_lists_every_node() -> None:
    lb = services()["lb"]
    assert lb["image"].startswith("haproxy:")
    mount = next(v for v in lb["volumes"] if v.endswith("haproxy.cfg:ro"))
    assert (DOCKER / mount.split(":")[0]).resolve() == HAPROXY_CFG
    assert lb["ports"] == ["127.0.0.1:4000:4000"]
    backend = haproxy_sections(HAPROXY_CFG.read_text())["backend relays"]
    servers = [d.split()[2] for d in backend if d.startswith("server ")]
    assert sorted(servers) == sorted(f"{name}:4000" for name in relay_nodes())
    assert set(lb["depends_on"]) == set(relay_nodes())


def test_haproxy_routes_sticky_free_on_readiness_and_keeps_websockets_open() -> None:
    sections = haproxy_sections(HAPROXY_CFG.read_text())
    backend = sections["backend relays"]
    defaults = sections["defaults"]
    assert "mode http" in defaults  # HTTP mode: HAProxy passes the WebSocket upgrade through
    assert "balance leastconn" in backend
    sticky = [d for d in backend if re.match(r"(cookie|stick|hash-type|balance (source|uri|hdr))\b", d)]
    assert not sticky, sticky
    assert "http-check expect status 200" in backend
    assert any(re.match(r"http-check send meth GET uri /ready\b", d) for d in backend)
    assert "option httpchk" in backend
    assert any(d.startswith("default-server check ") for d in backend)
    tunnel = next(d for d in defaults if d.startswith("timeout tunnel "))
    assert tunnel.split()[2] in ("1h", "3600s"), "an upgraded socket must outlive the HTTP timeouts"
    assert "option redispatch" in defaults


def test_haproxy_accepts_the_file() -> None:
    binary = haproxy_binary()
    if binary is None:
        msg = "haproxy is not installed (scripts/install-system-deps.sh installs Debian's haproxy)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    res = subprocess.run([binary, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Configuration file is valid" in res.stdout + res.stderr
