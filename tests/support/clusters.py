"""A Postgres cluster of the test's own, which it may stop, crash and start again.

Why not the session's server: stopping it would break every other test.  ``stop()`` removes the
data directory (the next ``start()`` runs initdb: another cluster behind the same address) unless
``keep`` is set (the same database comes back).

Why a copied data directory: initdb is the slow part of a cluster's start (1-2 s, and about 20
tests own a cluster), so it runs once per session into a template that each own cluster starts
from a copy of.  Every copy is still a cluster of its own (its directory, its port, its
process); only its first start skips initdb.  After a ``stop()`` without ``keep`` the directory
is gone and the next ``start()`` runs initdb as before: a new system identifier, which the
"another cluster behind the same address" tests rely on.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.postgres.cluster import ClusterError, LocalCluster

_template: Path | None = None


def _template_data_dir() -> Path:
    """A data directory initdb'd and configured once per session, then shut down cleanly."""
    global _template
    if _template is None:
        tmpl = LocalCluster()
        tmpl.start()
        tmpl.keep = True
        tmpl.stop()
        assert tmpl.base_dir is not None
        atexit.register(shutil.rmtree, tmpl.base_dir, True)
        _template = tmpl.data_dir
    return _template


def _seed(cluster: LocalCluster) -> None:
    """Copy the template into ``cluster``'s data directory, with its owner and modes.

    ``cp -a`` rather than shutil.copytree and a chown walk: twice as fast for the 40 MB.
    """
    subprocess.run(["cp", "-a", str(_template_data_dir()), str(cluster.data_dir)], check=True)


@contextlib.contextmanager
def own_cluster() -> Iterator[LocalCluster]:
    """Use from a fixture: ``with own_cluster() as cluster: yield cluster``."""
    if os.environ.get("RELAY_TEST_DSN"):
        pytest.skip("needs a cluster the test can stop (RELAY_TEST_DSN is shared)")
    cluster = LocalCluster()
    try:
        _seed(cluster)
        cluster.start()
    except ClusterError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.keep = False
        cluster.stop()


def stop_keeping_data(cluster: LocalCluster) -> None:
    """Stop the server; its next start brings the same database back."""
    cluster.keep = True
    try:
        cluster.stop()
    finally:
        cluster.keep = False
