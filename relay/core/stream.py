"""Stream identity: which database history a position belongs to.

Why positions need one: a position is a commit LSN and an index, and an LSN is only meaningful
within one WAL history.  After the database is restored from a backup, failed over to another
server, or replaced by a new cluster, the same LSNs name other transactions (or none yet), and a
client resuming with an old position would be told "nothing missed" and then drop every new row
whose position compares lower as a duplicate.  The relay therefore prefixes every position with
the identity of the stream it was read from and answers ``resync_needed`` to a position from
another stream.

What the identity is made of, and what each part catches:

- the cluster's **system identifier** (fixed at ``initdb``): another cluster, including a new one
  created by a dump/restore or ``pg_upgrade``;
- the **timeline** (changes on promotion and point-in-time recovery): a failover or a restore
  whose WAL forked from the history the client followed;
- the **database OID**: the database was dropped and created again;
- the **slot name**: the relay was pointed at another slot.

A slot dropped and created again under the same name, in the same database, needs no part of
its own: it starts at the server's current WAL position, so every position issued from the
previous slot is older than the new slot's start and the replay window refuses it
(``resync_needed`` too).  A position of the right stream that lies beyond the server's WAL
("from the future", e.g. ``FFFFFFFFFFFFFFFF:FFFFFFFF``) was never issued by it and is refused
as well (checked by the server, which knows the WAL position).

Pure: the parts are read from Postgres by :func:`relay.postgres.identity.read_identity`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["StreamIdentity"]


@dataclass(frozen=True)
class StreamIdentity:
    """The parts of a stream's identity; :attr:`id` is what positions carry."""

    system_identifier: str
    timeline: int
    database_oid: int
    slot: str

    @property
    def id(self) -> str:
        """16 upper-case hex digits: a hash of the parts (fixed length, so positions of one
        stream still compare as strings in commit order)."""
        text = f"{self.system_identifier}/{self.timeline}/{self.database_oid}/{self.slot}"
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest().upper()

    def as_dict(self) -> dict[str, object]:
        """For /health: the id and what it was made of (to tell why it changed)."""
        return {
            "id": self.id,
            "system_identifier": self.system_identifier,
            "timeline": self.timeline,
            "database_oid": self.database_oid,
            "slot": self.slot,
        }
