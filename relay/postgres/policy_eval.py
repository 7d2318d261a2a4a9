"""The slow path of row authorization: evaluate policies in Postgres, batched.

Why: a policy outside the in-process fast path must still be exact, so Postgres evaluates it —
once per change and per distinct claims (``realtime.eval_policy`` takes a claims array), never
once per subscriber.  Errors come back per claims and become :class:`Denied` verdicts for those
subscribers only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from relay.core.authorize import Authorizer, Denied, Verdict, VerdictMemo
from relay.core.changes import RowChange
from relay.core.protocol import dumps
from relay.core.subscriptions import repair_unencodable
from relay.postgres.catalog import Catalog

__all__ = ["PolicyEvaluator"]

log = logging.getLogger("relay.policies")


class PolicyEvaluator:
    """Resolves :data:`ASK_POSTGRES` verdicts into the change's memo."""

    def __init__(self, catalog: Catalog, authorizer: Authorizer) -> None:
        self.catalog = catalog
        self.authorizer = authorizer
        self.queries = 0
        self.failures = 0  # queries that failed outright (database down, function missing)

    async def resolve(
        self,
        change: RowChange,
        memo: VerdictMemo,
        pending: Sequence[tuple[Mapping[str, Any], bytes, int]],
    ) -> None:
        """Evaluate every (claims, which-row) in ``pending`` and record the verdicts in ``memo``."""
        by_which: dict[int, dict[bytes, Mapping[str, Any]]] = {}
        for claims, key, which in pending:
            by_which.setdefault(which, {})[key] = claims
        tbl = (
            f'"{change.schema.replace(chr(34), chr(34) * 2)}"."{change.table.replace(chr(34), chr(34) * 2)}"'
        )
        for which, claims_by_key in by_which.items():
            row = change.record if which == 0 else change.old_record
            if row is None:
                for key in claims_by_key:
                    memo.set(which, key, False)
                continue
            try:
                row_json = dumps(row).decode()
            except (TypeError, ValueError, RecursionError):
                # the same repair the frame encoder makes: the value goes out as null + marker
                repair_unencodable(change)
                row = (change.record if which == 0 else change.old_record) or {}
                row_json = dumps(row).decode()
            keys = list(claims_by_key)
            # start from the in-process verdict of the fast policies (an error there still counts)
            verdicts: dict[bytes, Verdict] = {k: False for k in keys}
            for cp in {
                cp
                for k in keys
                for cp in self.authorizer.postgres_policies(change.schema, change.table, claims_by_key[k])
            }:
                applicable = [
                    k
                    for k in keys
                    if claims_by_key[k].get("role") in cp.policy.roles and verdicts[k] is not True
                ]
                if not applicable:
                    continue
                claims_json = [orjson.dumps(claims_by_key[k]).decode() for k in applicable]
                try:
                    rows = await self.catalog.pool.fetch(
                        "select idx, result, error from "
                        "realtime.eval_policy($1, $2::text::regclass, $3::jsonb, $4::jsonb[])",
                        cp.sql,
                        tbl,
                        row_json,
                        claims_json,
                    )
                except Exception as exc:  # the database is down or the function is missing
                    self.failures += 1
                    log.error(
                        "policy_eval_failed: %s on %s.%s: %s",
                        cp.policy.name,
                        change.schema,
                        change.table,
                        exc,
                    )
                    for k in applicable:
                        if verdicts[k] is not True:
                            verdicts[k] = Denied("policy_eval_failed", str(exc), cp.policy.name)
                    continue
                self.queries += 1
                for r in rows:
                    k = applicable[r["idx"] - 1]
                    if r["result"] is True:
                        verdicts[k] = True
                    elif r["error"] is not None and verdicts[k] is False:
                        code, _, msg = str(r["error"]).partition(": ")
                        verdicts[k] = Denied(code, msg, cp.policy.name)
            for k in keys:
                if verdicts[k] is not True:
                    fast = self._fast_verdict(change, which, row, claims_by_key[k])
                    if fast is True or (isinstance(fast, Denied) and verdicts[k] is False):
                        verdicts[k] = fast
                memo.set(which, k, verdicts[k])

    def _fast_verdict(
        self, change: RowChange, which: int, row: Mapping[str, Any], claims: Mapping[str, Any]
    ) -> Verdict:
        """The verdict of the in-process policies alone (the ones Postgres did not evaluate)."""
        return self.authorizer.verdict(change.schema, change.table, row, claims, fast_only=True)
