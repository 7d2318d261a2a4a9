-- 0006: topic policies: who may join, receive and send on private channels.
--
-- Why: a private channel (join config `private: true`) carries broadcast and presence, not rows,
-- so row policies (0003) cannot decide who may use it.  Supabase decides with RLS policies on
-- realtime.messages; this relay has no such table (broadcasts travel as logical messages, 0005),
-- so a topic policy is the same idea stored the 0003 way: a boolean SQL expression, checked at
-- creation with Postgres's own parser and errors, evaluated by the relay through
-- realtime.eval_topic_policies when a client joins a private channel.
--
-- In scope of an expression:
--   topic      text   the channel name without the 'realtime:' prefix (also realtime.topic())
--   extension  text   'broadcast' or 'presence'
--   claims     jsonb  the subscriber's JWT claims (also auth.jwt(), auth.uid(), auth.role())
-- `action` is 'read' (join and receive broadcast / presence) or 'write' (send broadcast, track
-- presence).  Like RLS, policies are permissive: a (action, extension) is allowed when ANY policy
-- of that action whose `roles` contain the subscriber's `role` claim evaluates to TRUE; with no
-- such policy it is denied.  Examples:
--   select realtime.create_topic_policy('members read', 'read',
--     $$exists (select 1 from public.room_members m where m.room = topic and m.user_id = auth.uid())$$);
--   select realtime.create_topic_policy('own presence', 'write',
--     $$extension = 'presence' and realtime.topic() = 'user:' || (claims->>'sub')$$);
--
-- Idempotent (IF NOT EXISTS / OR REPLACE) like the other migrations.


-- ---------------------------------------------------------------------------------------------
-- Storage.
--
-- Unlike row policies, topic policies belong to no table, so there is no owner to defer to: only
-- the owner of this catalog (the migrating role), superusers, and roles the DBA grants INSERT /
-- DELETE on it may manage them.  SELECT for everyone: the relay may run as a non-owner role and
-- must read them.  No UPDATE: drop and re-create, which re-validates the expression.
create table if not exists realtime.topic_policies (
    id         bigint generated always as identity primary key,
    name       text not null,
    action     text not null,
    using_expr text not null,
    roles      text[] not null,
    created_at timestamptz default now(),
    created_by name default current_user,
    -- named: create_topic_policy's ON CONFLICT refers to it
    constraint topic_policies_name_key unique (name),
    constraint topic_policies_action_check check (action in ('read', 'write'))
);

comment on table realtime.topic_policies is
    'Private-channel policies evaluated by the relay on join; manage with realtime.create_topic_policy/drop_topic_policy';

grant select on realtime.topic_policies to public;


-- ---------------------------------------------------------------------------------------------
-- realtime.topic(): the channel being authorized, as in Supabase (which also maps '' to NULL).
--
-- realtime.eval_topic_policies sets the GUC for the duration of its transaction, so expressions
-- (and functions they call) can use realtime.topic() exactly as Supabase RLS policies do.
-- Created only when absent, like the auth helpers of 0003: a database that already has one keeps
-- it (and its owner).
do $$
begin
    if not exists (
        select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'realtime' and p.proname = 'topic' and p.pronargs = 0
    ) then
        create function realtime.topic()
        returns text
        language sql
        stable
        set search_path = pg_catalog, pg_temp
        as $f$
            select nullif(pg_catalog.current_setting('realtime.topic', true), '')::text
        $f$;
        comment on function realtime.topic() is
            'The channel being authorized (GUC realtime.topic, set by realtime.eval_topic_policies)';
    end if;
end;
$$;


-- ---------------------------------------------------------------------------------------------
-- create_topic_policy / drop_topic_policy.
--
-- create_topic_policy has no pinned search_path for the reason create_policy has none: the
-- expression is compiled with the caller's search_path, as eval_topic_policies evaluates it with
-- the relay's, so a DBA may call their own functions unqualified.  Everything the function itself
-- touches is schema-qualified, and it is SECURITY INVOKER.
create or replace function realtime.create_topic_policy(
    name text,
    action text,
    using_expr text,
    roles text[] default '{authenticated}'
)
returns void
language plpgsql
volatile
as $$
declare
    typ     regtype;
    msg     text;
    state   text;
    detail  text;
    hint    text;
    checked text;
begin
    if not pg_catalog.has_table_privilege('realtime.topic_policies', 'INSERT') then
        raise exception 'permission denied to create topic policies'
            using errcode = 'insufficient_privilege',
                  hint = 'topic policies are managed by the owner of realtime.topic_policies (the role that ran relay migrate), a superuser, or a role granted INSERT on it';
    end if;

    if create_topic_policy.name is null or pg_catalog.btrim(create_topic_policy.name) = '' then
        raise exception 'topic policy name must not be empty' using errcode = 'invalid_parameter_value';
    end if;
    if create_topic_policy.action is null or create_topic_policy.action not in ('read', 'write') then
        raise exception 'topic policy action must be ''read'' or ''write'', not %',
            coalesce(pg_catalog.quote_literal(create_topic_policy.action), 'NULL')
            using errcode = 'invalid_parameter_value',
                  hint = '''read'' allows joining and receiving broadcast/presence, ''write'' allows sending broadcast and tracking presence';
    end if;
    if create_topic_policy.roles is null or pg_catalog.cardinality(create_topic_policy.roles) = 0 then
        raise exception 'policy roles must not be empty'
            using errcode = 'invalid_parameter_value',
                  hint = 'roles are JWT ''role'' claims, e.g. ''{authenticated}'' or ''{anon,authenticated}''';
    end if;
    if pg_catalog.array_ndims(create_topic_policy.roles) <> 1
       or exists (select 1 from pg_catalog.unnest(create_topic_policy.roles) r(role)
                   where r.role is null or pg_catalog.btrim(r.role) = '') then
        raise exception 'policy roles must be a one-dimensional array of non-empty role names, not %',
            create_topic_policy.roles
            using errcode = 'invalid_parameter_value';
    end if;

    perform realtime.policy_expr_syntax_check(create_topic_policy.using_expr);

    -- Compile without evaluating, in the shape eval_topic_policies uses (see create_policy for
    -- why each piece is there: typed NULL through the outer join, WHERE refusing aggregates and
    -- set-returning functions, OFFSET 0 so the NULL inputs are not folded into constants).
    checked := pg_catalog.format(
        'select pg_catalog.pg_typeof(s.v)::pg_catalog.regtype from (select 1) as one left join ('
        'select (%s) as v from (select null::pg_catalog.text as topic, null::pg_catalog.text as extension, '
        'null::pg_catalog.jsonb as claims offset 0) as messages '
        'where (%s) is not null limit 0) as s on true',
        create_topic_policy.using_expr, create_topic_policy.using_expr);
    begin
        execute checked into typ;
    exception when others then
        get stacked diagnostics msg = message_text, state = returned_sqlstate,
                                detail = pg_exception_detail, hint = pg_exception_hint;
        raise exception using
            message = msg,
            errcode = state,
            detail = coalesce(nullif(detail, ''),
                pg_catalog.format('In the expression of topic policy "%s".', create_topic_policy.name)),
            hint = coalesce(nullif(hint, ''),
                'In scope: topic (text), extension (text: broadcast or presence), claims (jsonb), '
                'and auth.uid(), auth.role(), auth.jwt(), realtime.topic().');
    end;

    if typ <> 'pg_catalog.bool'::pg_catalog.regtype
       and not exists (select 1 from pg_catalog.pg_type ty
                        where ty.oid = typ
                          and ty.typbasetype = 'pg_catalog.bool'::pg_catalog.regtype) then
        raise exception 'policy expression must return boolean, not type %', typ
            using errcode = 'datatype_mismatch',
                  hint = 'compare the value, e.g. topic = ''room:'' || (claims->>''room_id'')';
    end if;

    insert into realtime.topic_policies as p (name, action, using_expr, roles)
    values (create_topic_policy.name, create_topic_policy.action, create_topic_policy.using_expr,
            create_topic_policy.roles)
    on conflict on constraint topic_policies_name_key do nothing;
    if not found then
        raise exception 'topic policy "%" already exists', create_topic_policy.name
            using errcode = 'duplicate_object',
                  hint = 'drop it first with realtime.drop_topic_policy';
    end if;

    -- In commit order with the surrounding changes: a running relay re-authorizes (or drops its
    -- cached verdicts) exactly when this transaction's effects become visible in the stream.
    perform pg_catalog.pg_logical_emit_message(
        true,
        'realtime',
        -- xid: the relay waits until this transaction is visible to its own queries before it
        -- re-checks (decoding can see the commit a moment before other sessions do)
        pg_catalog.jsonb_build_object('op', 'topic_policy_changed', 'name', create_topic_policy.name,
                                      'xid', pg_catalog.pg_current_xact_id()::text)::text
    );
end;
$$;

comment on function realtime.create_topic_policy(text, text, text, text[]) is
    'Add a private-channel policy (a boolean expression over topic, extension, claims and auth.*) and notify the relay';


create or replace function realtime.drop_topic_policy(name text, if_exists boolean default false)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if not pg_catalog.has_table_privilege('realtime.topic_policies', 'DELETE') then
        raise exception 'permission denied to drop topic policies'
            using errcode = 'insufficient_privilege',
                  hint = 'topic policies are managed by the owner of realtime.topic_policies (the role that ran relay migrate), a superuser, or a role granted DELETE on it';
    end if;

    delete from realtime.topic_policies p where p.name = drop_topic_policy.name;
    if not found then
        if coalesce(drop_topic_policy.if_exists, false) then
            raise notice 'topic policy "%" does not exist, skipping', drop_topic_policy.name;
            return;
        end if;
        raise exception 'topic policy "%" does not exist', drop_topic_policy.name
            using errcode = 'undefined_object';
    end if;

    perform pg_catalog.pg_logical_emit_message(
        true,
        'realtime',
        -- xid: the relay waits until this transaction is visible to its own queries before it
        -- re-checks (decoding can see the commit a moment before other sessions do)
        pg_catalog.jsonb_build_object('op', 'topic_policy_changed', 'name', drop_topic_policy.name,
                                      'xid', pg_catalog.pg_current_xact_id()::text)::text
    );
end;
$$;

comment on function realtime.drop_topic_policy(text, boolean) is
    'Remove a private-channel policy and notify the relay (in commit order)';


-- ---------------------------------------------------------------------------------------------
-- eval_topic_policies: what `claims` may do on `topic`, as four rows in a fixed order:
--   (read, broadcast), (read, presence), (write, broadcast), (write, presence).
--
-- `topic` is the channel name without the 'realtime:' prefix, exactly as the policies see it.
-- The relay calls this once per private join (and per token refresh), so one call answers every
-- question a channel can ask.  request.jwt.claims and realtime.topic are set for the transaction
-- (set_config(..., true)) so auth.*() and realtime.topic() work inside expressions, and restored
-- before returning so a caller's own transaction is left as it was.  Each policy runs in its own
-- subtransaction: a policy that fails (a bad cast of a claim, a table the relay's role may not
-- read) grants nothing and reports `<policy name>: <sqlstate>: <message>` in `error` (the first
-- failure of that row), and the other policies still decide.  Policies are tried in name order
-- and a row stops at the first one that grants.
--
-- SECURITY INVOKER with no pinned search_path, like eval_policy: expressions run with the
-- relay's privileges and resolve names as when they were created.
create or replace function realtime.eval_topic_policies(topic text, claims jsonb)
returns table (action text, extension text, allowed boolean, error text)
language plpgsql
volatile
-- no pinned search_path: a policy may call the DBA's own functions, resolved as when it was created
as $$
declare
    role_claim  text := eval_topic_policies.claims ->> 'role';
    prev_claims text := pg_catalog.current_setting('request.jwt.claims', true);
    prev_topic  text := pg_catalog.current_setting('realtime.topic', true);
    combo       record;
    pol         record;
    r           boolean;
begin
    if eval_topic_policies.topic is null then
        raise exception 'topic must not be null'
            using errcode = 'invalid_parameter_value',
                  hint = 'pass the channel name without the ''realtime:'' prefix';
    end if;

    perform pg_catalog.set_config('request.jwt.claims', coalesce(eval_topic_policies.claims::text, ''), true);
    perform pg_catalog.set_config('realtime.topic', eval_topic_policies.topic, true);

    for combo in
        select v.act, v.ext
          from (values (1, 'read', 'broadcast'), (2, 'read', 'presence'),
                       (3, 'write', 'broadcast'), (4, 'write', 'presence')) as v(ord, act, ext)
         order by v.ord
    loop
        action := combo.act;
        extension := combo.ext;
        allowed := false;
        error := null;
        for pol in
            select p.name, p.using_expr
              from realtime.topic_policies p
             where p.action = combo.act and role_claim = any (p.roles)
             order by p.name
        loop
            begin
                execute pg_catalog.format(
                    'select (%s)::pg_catalog.bool from (select $1::pg_catalog.text as topic, '
                    '$2::pg_catalog.text as extension, $3::pg_catalog.jsonb as claims) as messages',
                    pol.using_expr)
                   into r
                  using eval_topic_policies.topic, combo.ext, eval_topic_policies.claims;
            exception when others then
                r := null;
                if error is null then
                    error := pol.name || ': ' || sqlstate || ': ' || sqlerrm;
                end if;
            end;
            if r then
                allowed := true;
                exit;
            end if;
        end loop;
        return next;
    end loop;

    perform pg_catalog.set_config('request.jwt.claims', prev_claims, true);
    perform pg_catalog.set_config('realtime.topic', prev_topic, true);
end;
$$;

comment on function realtime.eval_topic_policies(text, jsonb) is
    'Relay: evaluate the topic policies for one topic and one subscriber''s claims (read/write x broadcast/presence)';
