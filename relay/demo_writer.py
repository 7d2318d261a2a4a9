"""Generate realistic activity on the demo schema (``relay/sql/demo``) so the dashboard has something to show.

Why it exists: a relay demo with an idle database shows nothing; this writer plays "the business"
- bookings are made, confirmed, completed and paid, staff check in and out, alerts fire and get
acknowledged, tasks move across a board, and cancelled bookings are purged - at a steady, modest
rate.  It deliberately produces every event shape the relay must handle: INSERTs, UPDATEs with
changing status, cascading DELETEs, multi-statement transactions and large TOASTed ``notes``.

Robustness over cleverness: each transaction is independent; a failing statement is logged and the
loop carries on, and a lost connection is re-established with backoff.  Pacing sleeps on the stop
event, so stopping is prompt and there is no busy loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import string
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import TupleRow

__all__ = ["run_demo_writer"]

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[TupleRow]
Action = Callable[[Conn, random.Random], Awaitable[bool]]

SERVICES: dict[str, tuple[int, Decimal]] = {
    # service -> (minutes, list price)
    "Haircut": (45, Decimal("35.00")),
    "Colouring": (120, Decimal("95.00")),
    "Manicure": (40, Decimal("25.00")),
    "Massage": (60, Decimal("70.00")),
    "Consultation": (30, Decimal("40.00")),
    "Device repair": (90, Decimal("120.00")),
    "Follow-up": (20, Decimal("0.00")),
}
FIRST_NAMES = ["Ana", "Rui", "Marta", "Tomasz", "Julia", "Pau", "Laia", "Inês", "Kasia", "Marc", "Sofia"]
LAST_NAMES = ["Silva", "Kowalski", "Garcia", "Oliveira", "Nowak", "Puig", "Costa", "Wójcik", "Ferrer", "Reis"]
TAGS = ["vip", "first-visit", "loyalty", "corporate", "gift", "online", "walk-in"]
ALERT_KINDS: dict[str, tuple[str, str]] = {
    "payment_failed": ("warning", "Payment failed for a booking"),
    "double_booking": ("warning", "Two bookings overlap for one specialist"),
    "staff_late": ("info", "A staff member checked in late"),
    "low_stock": ("info", "Supplies running low"),
    "system": ("critical", "Card terminal offline"),
}
TASK_TITLES = [
    "Call back client about reschedule",
    "Restock supplies",
    "Review weekly schedule",
    "Prepare monthly report",
    "Clean and check equipment",
    "Follow up on failed payment",
    "Train new receptionist",
]


def _uuid(rng: random.Random) -> uuid.UUID:
    """A random v4 uuid drawn from ``rng`` so a seeded run is reproducible."""
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _large_text(rng: random.Random, size: int) -> str:
    """Incompressible-ish text larger than the TOAST threshold, to exercise out-of-line values."""
    words: list[str] = []
    total = 0
    while total < size:
        w = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10)))
        words.append(w)
        total += len(w) + 1
    return "Visit log: " + " ".join(words)


async def _pick(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


# -- actions: each runs inside a transaction and returns False when it found nothing to do -----------


async def new_booking(conn: Conn, rng: random.Random) -> bool:
    staff = await _pick(conn, "select id, branch_id, user_id from public.staff where active")
    if not staff:
        return False
    staff_id, branch_id, assignee = rng.choice(staff)
    clients = await _pick(
        conn,
        "select id, owner_id from public.clients where branch_id = %s order by id desc limit 50",
        (branch_id,),
    )
    if not clients or rng.random() < 0.2:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        cur = await conn.execute(
            "insert into public.clients (branch_id, owner_id, full_name, email, phone, tags, details) "
            "values (%s, %s, %s, %s, %s, %s, %s) returning id, owner_id",
            (
                branch_id,
                assignee,
                f"{first} {last}",
                f"{first.lower()}.{last.lower()}.{rng.randrange(10**6)}@example.org",
                f"+351 9{rng.randrange(10**8):08d}",
                rng.sample(TAGS, k=rng.randint(0, 2)),
                json.dumps({"source": rng.choice(["web", "phone", "walk-in", "referral"])}),
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        client_id, owner = row
    else:
        client_id, owner = rng.choice(clients)
    service = rng.choice(list(SERVICES))
    minutes, price = SERVICES[service]
    discount = Decimal(rng.choice([0, 0, 0, 5, 10])) / 100
    await conn.execute(
        "insert into public.bookings (branch_id, client_id, staff_id, owner_id, assignee_id, service, "
        "starts_at, ends_at, price, tags, details) "
        "values (%s, %s, %s, %s, %s, %s, now() + make_interval(mins => %s), "
        "now() + make_interval(mins => %s), %s, %s, %s)",
        (
            branch_id,
            client_id,
            staff_id,
            owner,
            assignee,
            service,
            (start := rng.randint(30, 14 * 24 * 60)),
            start + minutes,
            (price * (1 - discount)).quantize(Decimal("0.01")),
            rng.sample(TAGS, k=rng.randint(0, 2)),
            json.dumps({"channel": rng.choice(["web", "phone", "app"]), "discount": str(discount)}),
        ),
    )
    return True


async def confirm_booking(conn: Conn, rng: random.Random) -> bool:
    rows = await _pick(
        conn, "select id from public.bookings where status = 'pending' order by id desc limit 20"
    )
    if not rows:
        return False
    await conn.execute(
        "update public.bookings set status = 'confirmed', updated_at = now(), "
        "details = details || jsonb_build_object('confirmed_via', %s::text) "
        "where id = %s and status = 'pending'",
        (rng.choice(["sms", "email", "phone"]), rng.choice(rows)[0]),
    )
    return True


async def complete_booking(conn: Conn, rng: random.Random) -> bool:
    """Complete a confirmed booking and take the payment in the same transaction."""
    rows = await _pick(
        conn,
        "select id, branch_id, client_id, price from public.bookings where status = 'confirmed' "
        "order by id limit 20",
    )
    if not rows:
        return False
    booking_id, branch_id, client_id, price = rng.choice(rows)
    no_show = rng.random() < 0.07
    await conn.execute(
        "update public.bookings set status = %s, updated_at = now() where id = %s and status = 'confirmed'",
        ("no_show" if no_show else "completed", booking_id),
    )
    if no_show:
        return True
    failed = rng.random() < 0.08
    await conn.execute(
        "insert into public.payments (booking_id, branch_id, client_id, amount, method, status, "
        "provider_ref, details) values (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            booking_id,
            branch_id,
            client_id,
            price,
            rng.choice(["card", "card", "cash", "transfer", "voucher"]),
            "failed" if failed else "succeeded",
            "ch_" + "".join(rng.choices(string.ascii_letters + string.digits, k=16)),
            json.dumps({"tip": str(Decimal(rng.randint(0, 10)))}),
        ),
    )
    if failed:
        kind = "payment_failed"
        await conn.execute(
            "insert into public.alerts (branch_id, severity, kind, title, body, details) "
            "values (%s, %s, %s, %s, %s, %s)",
            (
                branch_id,
                ALERT_KINDS[kind][0],
                kind,
                ALERT_KINDS[kind][1],
                f"Booking {booking_id}: card declined",
                json.dumps({"booking_id": booking_id}),
            ),
        )
    return True


async def cancel_booking(conn: Conn, rng: random.Random) -> bool:
    rows = await _pick(
        conn,
        "select id from public.bookings where status in ('pending', 'confirmed') order by id desc limit 20",
    )
    if not rows:
        return False
    booking_id = rng.choice(rows)[0]
    await conn.execute(
        "update public.bookings set status = 'cancelled', updated_at = now(), "
        "details = details || jsonb_build_object('cancel_reason', %s::text) where id = %s",
        (rng.choice(["client request", "illness", "double booked", "weather"]), booking_id),
    )
    await conn.execute(
        "update public.payments set status = 'refunded', updated_at = now() "
        "where booking_id = %s and status = 'succeeded'",
        (booking_id,),
    )
    return True


async def purge_cancelled(conn: Conn, rng: random.Random) -> bool:
    """Delete a few cancelled bookings; their payments go with them (ON DELETE CASCADE)."""
    cur = await conn.execute(
        "delete from public.bookings where id in "
        "(select id from public.bookings where status = 'cancelled' order by id limit %s)",
        (rng.randint(1, 3),),
    )
    return cur.rowcount > 0


async def annotate_booking(conn: Conn, rng: random.Random) -> bool:
    """Write a large ``notes`` value (TOAST) so the relay sees out-of-line and unchanged-TOAST columns."""
    rows = await _pick(conn, "select id from public.bookings order by id desc limit 50")
    if not rows:
        return False
    await conn.execute(
        "update public.bookings set notes = %s, updated_at = now() where id = %s",
        (_large_text(rng, rng.randint(4_000, 20_000)), rng.choice(rows)[0]),
    )
    return True


async def attendance(conn: Conn, rng: random.Random) -> bool:
    """Check a staff member in, or out if they are currently checked in."""
    staff = await _pick(conn, "select id, user_id, branch_id from public.staff where active")
    if not staff:
        return False
    staff_id, user_id, branch_id = rng.choice(staff)
    cur = await conn.execute(
        "update public.attendance set check_out_at = now() where id = "
        "(select id from public.attendance where staff_id = %s and check_in_at is not null "
        "and check_out_at is null order by id desc limit 1)",
        (staff_id,),
    )
    if cur.rowcount:
        return True
    late = rng.random() < 0.15
    await conn.execute(
        "insert into public.attendance (staff_id, user_id, branch_id, status, check_in_at, notes) "
        "values (%s, %s, %s, %s, now(), %s)",
        (staff_id, user_id, branch_id, "late" if late else "present", "traffic" if late else None),
    )
    return True


async def raise_alert(conn: Conn, rng: random.Random) -> bool:
    kind = rng.choice(list(ALERT_KINDS))
    severity, title = ALERT_KINDS[kind]
    branches = await _pick(conn, "select id from public.branches")
    branch_id = rng.choice(branches)[0] if branches and rng.random() < 0.85 else None
    await conn.execute(
        "insert into public.alerts (branch_id, severity, kind, title, body, details) "
        "values (%s, %s, %s, %s, %s, %s)",
        (branch_id, severity, kind, title, f"{title} (auto-generated)", json.dumps({"demo": True})),
    )
    return True


async def handle_alert(conn: Conn, rng: random.Random) -> bool:
    rows = await _pick(
        conn, "select id, status from public.alerts where status <> 'resolved' order by id limit 20"
    )
    managers = await _pick(conn, "select user_id from public.staff where role in ('manager', 'admin')")
    if not rows or not managers:
        return False
    alert_id, status = rng.choice(rows)
    if status == "open":
        await conn.execute(
            "update public.alerts set status = 'acknowledged', acknowledged_by = %s, acknowledged_at = now() "
            "where id = %s and status = 'open'",
            (rng.choice(managers)[0], alert_id),
        )
    else:
        await conn.execute(
            "update public.alerts set status = 'resolved', resolved_at = now() where id = %s", (alert_id,)
        )
    return True


async def new_task(conn: Conn, rng: random.Random) -> bool:
    staff = await _pick(conn, "select branch_id, user_id, role from public.staff where active")
    if not staff:
        return False
    branch_id = rng.choice(staff)[0]
    local = [s for s in staff if s[0] == branch_id]
    owners = [s[1] for s in local if s[2] in ("manager", "admin")] or [s[1] for s in local]
    await conn.execute(
        "insert into public.tasks (branch_id, title, description, owner_id, assignee_id, priority, due_at, "
        "tags) "
        "values (%s, %s, %s, %s, %s, %s, now() + make_interval(hours => %s), %s)",
        (
            branch_id,
            rng.choice(TASK_TITLES),
            "Created by the demo writer.",
            rng.choice(owners),
            rng.choice(local)[1],
            rng.randint(1, 5),
            rng.randint(1, 72),
            rng.sample(["ops", "clients", "finance", "hr"], k=rng.randint(0, 2)),
        ),
    )
    return True


async def advance_task(conn: Conn, rng: random.Random) -> bool:
    rows = await _pick(
        conn,
        "select id, status from public.tasks where status in ('todo', 'in_progress') order by id limit 20",
    )
    if not rows:
        return False
    task_id, status = rng.choice(rows)
    if status == "todo":
        new = "cancelled" if rng.random() < 0.1 else "in_progress"
    else:
        new = "done"
    await conn.execute(
        "update public.tasks set status = %s, updated_at = now(), "
        "completed_at = case when %s = 'done' then now() end where id = %s",
        (new, new, task_id),
    )
    return True


ACTIONS: list[tuple[Action, int]] = [
    (new_booking, 25),
    (confirm_booking, 15),
    (complete_booking, 12),
    (cancel_booking, 5),
    (purge_cancelled, 3),
    (annotate_booking, 3),
    (attendance, 12),
    (raise_alert, 4),
    (handle_alert, 5),
    (new_task, 7),
    (advance_task, 9),
]


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``, waking early when ``stop`` is set; True if stopped."""
    if seconds <= 0:
        return stop.is_set()
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True


async def _one_transaction(conn: Conn, rng: random.Random, action: Action) -> bool:
    """Run ``action`` (falling back to a new booking when it had nothing to do) in one transaction."""
    async with conn.transaction():
        did = await action(conn, rng)
        if not did and action is not new_booking:
            did = await new_booking(conn, rng)
    return did


async def run_demo_writer(
    dsn: str, *, rate: float = 2.0, stop: asyncio.Event, seed: int | None = None
) -> int:
    """Write demo activity at about ``rate`` transactions per second until ``stop`` is set.

    Returns the number of committed transactions that changed something.  The first connection
    failure is raised (a wrong DSN should fail loudly); later ones are retried with backoff.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    actions = [a for a, _ in ACTIONS]
    weights = [w for _, w in ACTIONS]
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    count = 0
    backoff = 0.5
    conn: Conn | None = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        next_at = loop.time()
        while not stop.is_set():
            if conn is None or conn.closed:
                try:
                    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
                    backoff = 0.5
                except psycopg.OperationalError as exc:
                    log.warning("demo writer: reconnect failed (%s); retrying in %.1fs", exc, backoff)
                    if await _wait(stop, backoff):
                        break
                    backoff = min(backoff * 2, 10.0)
                    continue
            action = rng.choices(actions, weights)[0]
            try:
                if await _one_transaction(conn, rng, action):
                    count += 1
            except psycopg.OperationalError as exc:
                log.warning("demo writer: connection problem in %s: %s", action.__name__, exc)
                await conn.close()
                conn = None
            except psycopg.Error as exc:
                log.warning("demo writer: %s failed: %s", action.__name__, exc)
            # Jittered fixed-rate schedule; if we fell far behind (slow DB), don't try to catch up.
            next_at += interval * rng.uniform(0.5, 1.5)
            now = loop.time()
            if next_at < now - 5 * interval:
                next_at = now
            if await _wait(stop, next_at - now):
                break
    finally:
        if conn is not None and not conn.closed:
            await conn.close()
    return count
