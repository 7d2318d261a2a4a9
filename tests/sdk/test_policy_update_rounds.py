"""An UPDATE under a policy only Postgres can evaluate reaches its subscribers, live and replayed.

Why (found by the LiveTable property test, issue 18): routing an UPDATE asks for the new row's
verdict, and only once that is known for the old row's.  The feed evaluated one round in
Postgres, routed again, and dropped the change for every subscriber whose old-row verdict was
still pending ("policy verdict ... unresolved; change ... not delivered to it"): every UPDATE of
a table whose policy the relay cannot compile was lost, live and on resume.
"""

from __future__ import annotations

import psycopg
import pytest
from relay_client import Change, RelayClient

from relay.postgres.migrate import apply_migrations
from tests.sdk.helpers import until, url
from tests.support.relay import running_relay, token

pytestmark = pytest.mark.pg

SETUP = [
    "create table public.pe (id bigint primary key, val int not null)",
    "select realtime.enable_table('public.pe')",
    # `val % 7` is no shape the relay compiles: Postgres evaluates it (realtime.eval_policy)
    "select realtime.create_policy('public.pe', 'residue', $$val % 7 = (claims->>'mod7')::int$$)",
]


def execute(dsn: str, *sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in sql:
            conn.execute(s)


def summary(changes: list[Change]) -> list[tuple[str, int, bool]]:
    return [
        (c.type, int((c.record or c.old_record)["val"]) if c.record or c.old_record else -1, c.moved_out)
        for c in changes
    ]


async def test_updates_under_a_postgres_evaluated_policy_are_delivered_live_and_on_resume(
    pg_dsn: str,
) -> None:
    apply_migrations(pg_dsn)
    execute(pg_dsn, *SETUP)
    async with running_relay(pg_dsn, demo=False) as relay:
        got: list[Change] = []
        client = RelayClient(url(relay.port), token("authenticated", mod7=0))
        ch = client.channel("pe").on_postgres_changes("*", got.append, table="pe")
        await ch.subscribe(timeout=10)
        execute(
            pg_dsn,
            "insert into pe values (1, 7)",
            "update pe set val = 14 where id = 1",  # seen before and after: UPDATE
            "update pe set val = 15 where id = 1",  # leaves the view: DELETE, moved_out
            "update pe set val = 21 where id = 1",  # enters it: UPDATE
        )
        await until(lambda: len(got) >= 4, 10, "four changes")
        assert summary(got) == [
            ("INSERT", 7, False),
            ("UPDATE", 14, False),
            ("DELETE", 14, True),
            ("UPDATE", 21, False),
        ]
        position = ch.position
        await client.close()
        # The same UPDATEs replayed to a channel resuming from before them.
        execute(pg_dsn, "update pe set val = 28 where id = 1", "update pe set val = 29 where id = 1")
        replayed: list[Change] = []
        again = RelayClient(url(relay.port), token("authenticated", mod7=0))
        ch2 = again.channel("pe", resume_from=position).on_postgres_changes("*", replayed.append, table="pe")
        await ch2.subscribe(timeout=10)
        await until(lambda: len(replayed) >= 2, 10, "two replayed changes")
        assert summary(replayed) == [("UPDATE", 28, False), ("DELETE", 28, True)]
        await again.close()
