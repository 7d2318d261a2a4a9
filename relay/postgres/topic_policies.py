"""Authorize private channels: ask Postgres what a subscriber's claims may do on a topic.

Why in Postgres and not in-process like row policies: a topic policy is evaluated once per join
(and per token refresh), not once per change, so one round trip is cheap, and its expressions
typically look up membership tables (``exists (select 1 from room_members ...)``) that only the
database can answer.  ``realtime.eval_topic_policies`` (migration 0006) answers all four
questions a channel can ask (read/write x broadcast/presence) in one call, evaluating each policy
in its own subtransaction so one broken policy only denies, and reports, instead of failing the
join for everyone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from relay.postgres.catalog import Catalog

__all__ = ["PUBLIC_GRANTS", "TopicAuthorizer", "TopicGrants", "TopicPolicyError"]

_QUERY = (
    "select action::text as action, extension::text as extension, allowed, error::text as error "
    "from realtime.eval_topic_policies($1::text, $2::text::jsonb)"
)


@dataclass(frozen=True, slots=True)
class TopicGrants:
    """What one subscriber may do on one topic.

    ``errors`` holds the ``<policy>: <sqlstate>: <message>`` texts of policies that failed while
    being evaluated (they granted nothing), so the relay can log them and tell the client why a
    join was refused rather than silently denying.
    """

    broadcast_read: bool
    broadcast_write: bool
    presence_read: bool
    presence_write: bool
    errors: tuple[str, ...] = ()

    @property
    def can_join(self) -> bool:
        """A channel is worth joining when it may receive something: broadcast or presence."""
        return self.broadcast_read or self.presence_read


PUBLIC_GRANTS = TopicGrants(True, True, True, True)
"""Public channels are not subject to topic policies: everything is allowed."""


class TopicPolicyError(RuntimeError):
    """Topic policies could not be evaluated (Postgres unreachable, migration missing, ...).

    The message says what to do.  Callers must treat it as "deny": a private channel whose
    policies cannot be read is not joinable.
    """


class TopicAuthorizer:
    """Evaluates the topic policies for (topic, claims) through the catalog's asyncpg pool."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    async def grants(self, topic: str, claims: Mapping[str, Any]) -> TopicGrants:
        """The grants of ``claims`` on ``topic`` (the channel name without ``realtime:``).

        Claims travel as JSON text cast to jsonb in SQL, so any JSON-valued claim reaches the
        policies exactly as the token carried it.
        """
        claims_json = orjson.dumps(dict(claims)).decode()
        try:
            # _fetch retries once: after a Postgres restart the pooled connections are dead.
            rows = await self._catalog._fetch(_QUERY, topic, claims_json)
        except asyncpg.UndefinedFunctionError as exc:
            raise TopicPolicyError(
                "realtime.eval_topic_policies does not exist: the database lacks migration "
                "0006_topic_policies.sql; run `relay migrate` (private channels cannot be joined until then)"
            ) from exc
        except (
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            ConnectionError,
            OSError,
            TimeoutError,
        ) as exc:
            raise TopicPolicyError(
                f"cannot reach Postgres to evaluate topic policies ({type(exc).__name__}: {exc}); check "
                "that the database is running and reachable (RELAY_DATABASE_URL)"
            ) from exc
        except asyncpg.PostgresError as exc:
            state = getattr(exc, "sqlstate", None) or "?"
            raise TopicPolicyError(
                f"evaluating topic policies for {topic!r} failed: {state}: {exc}; check "
                "realtime.topic_policies and the relay role's privileges"
            ) from exc
        return _grants_from_rows(rows)

    async def wait_visible(self, xid: str, within: float = 5.0) -> bool:
        """Wait until transaction ``xid`` is visible to new snapshots on the relay's connections.

        Why: logical decoding can hand the relay a commit a moment before other sessions see it,
        so a re-check run at once may still read the policy a ``drop_topic_policy`` just
        removed.  Returns False if it is still not visible after ``within`` seconds (checked anyway).
        """
        deadline = asyncio.get_running_loop().time() + within
        while True:
            rows = await self._catalog._fetch(
                "select pg_catalog.pg_visible_in_snapshot($1::text::xid8, pg_catalog.pg_current_snapshot())",
                xid,
            )
            if rows and rows[0][0] is True:
                return True
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.01)


def _grants_from_rows(rows: list[Any]) -> TopicGrants:
    """Fold the function's four rows into :class:`TopicGrants`; a missing row means denied."""
    allowed: dict[tuple[str, str], bool] = {}
    errors: list[str] = []
    for row in rows:
        allowed[(str(row["action"]), str(row["extension"]))] = row["allowed"] is True
        err = row["error"]
        # The same failing policy usually fails for both extensions: report it once.
        if err is not None and err not in errors:
            errors.append(str(err))
    return TopicGrants(
        broadcast_read=allowed.get(("read", "broadcast"), False),
        broadcast_write=allowed.get(("write", "broadcast"), False),
        presence_read=allowed.get(("read", "presence"), False),
        presence_write=allowed.get(("write", "presence"), False),
        errors=tuple(errors),
    )
