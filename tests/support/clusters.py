"""A Postgres cluster of the test's own, which it may stop, crash and start again.

Why not the session's server: stopping it would break every other test.  ``stop()`` removes the
data directory (the next ``start()`` runs initdb: another cluster behind the same address) unless
``keep`` is set (the same database comes back).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from relay.postgres.cluster import ClusterError, LocalCluster


@contextlib.contextmanager
def own_cluster() -> Iterator[LocalCluster]:
    """Use from a fixture: ``with own_cluster() as cluster: yield cluster``."""
    if os.environ.get("RELAY_TEST_DSN"):
        pytest.skip("needs a cluster the test can stop (RELAY_TEST_DSN is shared)")
    cluster = LocalCluster()
    try:
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
