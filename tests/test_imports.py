"""The import graph of ``relay/`` and ``client_sdk/relay_client/``: layered, one way, no cycles.

Why a test: the layering is what keeps the pure logic testable without I/O and lets a part be
changed without reading the parts above it; it erodes one convenient import at a time unless
something fails.  Imports are read with ``ast`` (nothing is imported), including those under
``if TYPE_CHECKING:``: a type-only import of an owner is still a back-reference in the design.

The layers, lowest first (a module may import its own layer and the layers below it):

====  =====================================================  ====================================
 0    ``relay.core.*``                                       pure logic and value types, no I/O
 1    ``relay.config``, ``relay.logs``, ``relay.redact``,    settings, logging and process helpers
      ``relay.gc_policy``
 2    ``relay.postgres.*``                                   everything that talks to Postgres
 3    ``relay.pipeline``                                     WAL stream -> ChangeSink
 4    ``relay.server.*``                                     WebSocket/HTTP serving
 5    ``relay.service``                                      composition root (wires 2-4)
 6    ``relay.cli``, ``relay.demo*``, ``relay.__main__``     entry points
====  =====================================================  ====================================

The SDK (``relay_client``) never imports ``relay`` (it is installed on its own), and is layered
as: ``protocol``/``errors``/``types``/small helpers below ``channel`` below ``client``; the only
rule checked for it is no cycles (its own layering is the SDK owners' to tighten).

Within ``relay.server`` an owner may import the parts it owns (:data:`SERVER_ORDER`); a part importing
something above it is listed in :data:`KNOWN_BACK_REFERENCES` — the debt still to pay
down.  The list must match exactly: a new back-reference fails, and so does a fixed one that is
still listed (shrink the list).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS: dict[str, int] = {
    "relay.core": 0,
    "relay.config": 1,
    "relay.logs": 1,
    "relay.redact": 1,
    "relay.gc_policy": 1,  # the process's GC settings (relay serve, each worker)
    "relay.postgres": 2,
    "relay.pipeline": 3,
    "relay.cluster": 4,  # cluster mode (issue 17): capture leader, change log, followers; wired by service
    "relay.server": 4,
    "relay.service": 5,
    "relay.cli": 6,
    "relay.demo": 6,
    "relay.demo_writer": 6,
    "relay.__main__": 6,
    "relay": 6,  # the package's __init__ (version only)
}

# (importer, imported): type-only imports of something above the importer.  The HTTP handlers
# read the server they serve (health, metrics, readiness, REST, inspector): that is the
# composition boundary (docs/architecture.md).  The feed and the topic hub name the Channel
# record, which lives below both in relay/server/channel.py.
KNOWN_BACK_REFERENCES: set[tuple[str, str]] = {
    ("relay.server.http_api", "relay.server.app"),
    ("relay.server.inspector", "relay.server.app"),
    ("relay.server.metrics", "relay.server.app"),
    ("relay.server.probes", "relay.server.app"),
}

# Within relay.server, owners above what they own: an import of a higher module is a back-reference.
SERVER_ORDER: dict[str, int] = {
    "relay.server": 4,
    "relay.server.app": 3,  # owns everything below
    "relay.server.http_api": 2,
    "relay.server.inspector": 2,
    "relay.server.probes": 2,
    "relay.server.connection": 2,  # one socket: uses the feed, the hub, the outbox
    "relay.server.feed": 1,  # subscriptions, fan-out, tx_end, resume
    "relay.server.snapshot": 1,  # snapshot on join: rows, then the feed's held changes
    "relay.server.topics": 1,  # broadcast and presence
    "relay.server.channel": 0,  # the Channel record and the Socket face the feed and hub use
    "relay.server.metrics": 0,
    "relay.server.outbox": 0,
    "relay.server.silence": 0,  # every socket's heartbeat timeout (one sweep)
    "relay.server.session": 0,  # sans-I/O: frames in, typed requests out
    "relay.server.websocket": 0,  # one socket after the upgrade: frames in, close handshake
}

# The SDK's channel <-> client circle is being removed on h/arch-checks (issue 13, item 3);
# once merged this must be empty.
KNOWN_SDK_CYCLES: list[list[str]] = []


def _modules(base: Path, package: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted((base / package).rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports (absolute and relative, any depth)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from pkg import mod`` imports the module pkg.mod
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph(package: str, base: Path) -> dict[str, set[str]]:
    mods = _modules(base, package)
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(module: str) -> int:
    key = module
    while key not in LAYERS:
        key = key.rpartition(".")[0]
        assert key, f"{module} is in no layer: add it to LAYERS (and to docs/architecture.md)"
    return LAYERS[key]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


RELAY = _graph("relay", ROOT)
SDK = _graph("relay_client", ROOT / "client_sdk")


def test_the_graph_was_read() -> None:
    """Guards the parser itself: known edges must be found, or every check below is vacuous."""
    assert "relay.core.errors" in RELAY["relay.core.tokens"]
    assert "relay.server.app" in RELAY["relay.service"]
    assert "relay.server.feed" in RELAY["relay.server.connection"]
    assert len(SDK) > 5 and any(SDK.values())


def test_no_upward_imports_in_relay() -> None:
    upward = sorted(
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, deps in RELAY.items()
        for b in deps
        if _layer(b) > _layer(a)
    )
    assert upward == []


def test_back_references_in_the_server_are_only_the_known_ones() -> None:
    back = {
        (a, b)
        for a, deps in RELAY.items()
        if a.startswith("relay.server.")
        for b in deps
        if b.startswith("relay.server.") and SERVER_ORDER[b] > SERVER_ORDER[a]
    }
    assert back == KNOWN_BACK_REFERENCES


def test_no_import_cycles_other_than_the_known_back_references() -> None:
    graph = {a: {b for b in deps if (a, b) not in KNOWN_BACK_REFERENCES} for a, deps in RELAY.items()}
    assert _cycles(graph) == []


def test_no_import_cycles_in_the_sdk() -> None:
    assert _cycles(SDK) == KNOWN_SDK_CYCLES


def test_sdk_never_imports_the_relay() -> None:
    for path in (ROOT / "client_sdk" / "relay_client").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            assert not any(n == "relay" or n.startswith("relay.") for n in names), path


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
