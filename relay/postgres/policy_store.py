"""Load the DBA's row policies from ``realtime.policies`` and keep the relay's copy current.

Why a poll *and* a poke: ``realtime.create_policy`` / ``drop_policy`` emit a logical message,
so the pipeline can ask for a reload the moment it decodes one; the poll (every 2 s) catches
anything else (a policy row edited by hand, a table's columns changing).  Either way a policy
change applies to running relays within the 5 s the docs promise, without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any

import asyncpg

from relay.core.authorize import Authorizer
from relay.core.policies import CompiledPolicy, Policy, PolicyError, compile_policy
from relay.postgres.catalog import Catalog

__all__ = ["PolicyStore"]

log = logging.getLogger("relay.policies")

_QUERY = (
    "select schema_name::text as s, table_name::text as t, name::text as n, roles::text[] as r, "
    "using_expr::text as e from realtime.policies order by 1, 2, 3"
)


class PolicyStore:
    """Owns the refresh loop; writes compiled policies into an :class:`Authorizer`."""

    def __init__(self, catalog: Catalog, authorizer: Authorizer, interval: float = 2.0) -> None:
        self.catalog = catalog
        self.authorizer = authorizer
        self.interval = interval
        self._signature: tuple[Any, ...] | None = None
        self._poke = asyncio.Event()
        self._missing_warned = False
        self.loaded = asyncio.Event()

    def poke(self) -> None:
        """Reload soon (a policy_changed message was decoded)."""
        self._poke.set()

    async def refresh(self) -> bool:
        """Reload if the policy rows changed; returns True when the set was replaced."""
        try:
            rows = await self.catalog._fetch(_QUERY)
        except asyncpg.UndefinedTableError:
            if not self._missing_warned:
                log.warning(
                    "realtime.policies does not exist (run `relay migrate`): no rows are "
                    "delivered except to service_role"
                )
                self._missing_warned = True
            rows = []
        signature = tuple((r["s"], r["t"], r["n"], tuple(r["r"]), r["e"]) for r in rows)
        if signature == self._signature:
            self.loaded.set()
            return False
        compiled: list[CompiledPolicy] = []
        for s, t, n, roles, expr in signature:
            shape = await self.catalog.table(s, t)
            policy = Policy(s, t, n, roles, expr)
            try:
                compiled.append(compile_policy(policy, shape.columns if shape else {}))
            except PolicyError as exc:
                # Default deny: a policy the relay cannot read grants nothing (and says so).
                log.error("policy_invalid: %s on %s.%s ignored: %s", n, s, t, exc)
        self.authorizer.replace(compiled)
        self._signature = signature
        fast = sum(1 for c in compiled if c.fast is not None)
        log.info(
            "loaded %d row policies (%d evaluated in-process, %d in Postgres)",
            len(compiled),
            fast,
            len(compiled) - fast,
        )
        self.loaded.set()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop``: every ``interval`` seconds, or at once when poked."""
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # database away: keep the last good set, retry later
                log.warning("policy refresh failed: %s", exc)
            self._poke.clear()
            waiter = asyncio.ensure_future(self._poke.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait(
                    {waiter, stopper}, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for f in (waiter, stopper):
                    f.cancel()
                    with suppress(asyncio.CancelledError):
                        await f
