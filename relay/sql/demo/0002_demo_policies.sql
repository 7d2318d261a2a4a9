-- Demo row policies: who sees which demo rows (see docs/authorization.md).
--
-- Tokens minted by `relay demo` / `relay token` carry e.g. {"role": "authenticated",
-- "sub": "<user uuid>", "branch_id": 1} or {"user_role": "admin"}.  Idempotent: each policy is
-- (re)created only when missing.

do $$
declare
    p record;
begin
    for p in
        select * from (values
            ('public.bookings',   'branch members', $e$branch_id = (claims->>'branch_id')::int$e$),
            ('public.bookings',   'assignee',       $e$assignee_id = auth.uid()$e$),
            ('public.bookings',   'admins',         $e$claims->>'user_role' in ('admin', 'manager')$e$),
            ('public.payments',   'branch members', $e$branch_id = (claims->>'branch_id')::int$e$),
            ('public.payments',   'admins',         $e$claims->>'user_role' in ('admin', 'manager')$e$),
            ('public.clients',    'branch members', $e$branch_id = (claims->>'branch_id')::int$e$),
            ('public.clients',    'admins',         $e$claims->>'user_role' in ('admin', 'manager')$e$),
            ('public.staff',      'branch members', $e$branch_id = (claims->>'branch_id')::int$e$),
            ('public.staff',      'admins',         $e$claims->>'user_role' in ('admin', 'manager')$e$),
            ('public.attendance', 'branch members', $e$branch_id = (claims->>'branch_id')::int$e$),
            ('public.attendance', 'admins',         $e$claims->>'user_role' in ('admin', 'manager')$e$),
            ('public.alerts',     'branch or company-wide',
                                  $e$branch_id = (claims->>'branch_id')::int or branch_id is null$e$),
            ('public.alerts',     'admins',         $e$claims->>'user_role' in ('admin', 'manager')$e$),
            ('public.tasks',      'assignee or owner', $e$assignee_id = auth.uid() or owner_id = auth.uid()$e$),
            ('public.tasks',      'admins',         $e$claims->>'user_role' in ('admin', 'manager')$e$)
        ) as v(tbl, name, expr)
    loop
        if not exists (select 1 from realtime.row_policies r where r.tbl = p.tbl::regclass and r.name = p.name) then
            perform realtime.create_policy(p.tbl::regclass, p.name, p.expr);
        end if;
    end loop;
    if not exists (select 1 from realtime.row_policies r
                   where r.tbl = 'public.branches'::regclass and r.name = 'public list') then
        perform realtime.create_policy('public.branches', 'public list', 'true', '{anon,authenticated}');
    end if;
end;
$$;
