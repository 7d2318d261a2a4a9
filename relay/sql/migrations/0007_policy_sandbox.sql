-- 0007: policy expressions run as an unprivileged role, never as the relay's.
--
-- Why: row and topic policies are SQL written by table owners (or whoever may write topic
-- policies).  Until now realtime.eval_policy / eval_topic_policies ran that SQL as the role the
-- relay connects with - often a superuser - so a table owner could write a policy calling their
-- own function (`alter role me superuser`) and have the relay run it for them on the next insert.
--
-- How: the expression is executed inside a SECURITY DEFINER function owned by
-- `realtime_policy_eval`, a NOLOGIN role with no privileges beyond what the DBA grants it (and
-- PUBLIC's).  Two properties of Postgres make that a real boundary where `SET ROLE` is not:
--   * inside a security-definer function `SET ROLE` / `SET SESSION AUTHORIZATION` are refused,
--     whereas after a plain `SET LOCAL ROLE` the evaluated code could `RESET ROLE` back to the
--     relay's (superuser) session user;
--   * the function's pinned search_path (pg_catalog, public, then pg_temp last, so objects in
--     pg_temp can never shadow anything) cannot be redirected by a schema an attacker controls
--     ("$user", a schema earlier on the relay's search_path).
-- Because the owner of a function may ALTER it (e.g. to SECURITY INVOKER, which would hand the
-- next call the relay's privileges), the relay-facing wrappers below, which are not owned by the
-- evaluation role, check that the sandbox functions are still intact before every call and refuse
-- to evaluate (deny, with an error naming the fix) if not.  EXECUTE on the sandbox functions is
-- revoked from PUBLIC: otherwise any database user could evaluate arbitrary SQL with whatever the
-- DBA granted the evaluation role.
--
-- Consequence for DBAs (docs/authorization.md, docs/roles.md): a policy that reads other tables
-- (`exists (select 1 from app.members ...)`) needs `GRANT USAGE ON SCHEMA app` and
-- `GRANT SELECT ON app.members` to realtime_policy_eval; a row policy evaluated in Postgres needs
-- USAGE on its table's schema.  Without them the subscriber gets a PolicyError saying which
-- permission is missing, never silence and never more privilege.


-- ---------------------------------------------------------------------------------------------
-- The evaluation role.  Roles are cluster-wide: the first database migrated creates it.
do $$
begin
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'realtime_policy_eval') then
        begin
            create role realtime_policy_eval nologin noinherit;
        exception
            when duplicate_object or unique_violation then
                null;  -- another database's migration created it a moment ago
            when insufficient_privilege then
                raise exception 'role realtime_policy_eval does not exist and role % may not create it', current_user
                    using errcode = 'insufficient_privilege',
                          hint = pg_catalog.format(
                              'as a superuser run: CREATE ROLE realtime_policy_eval NOLOGIN NOINHERIT; '
                              'GRANT realtime_policy_eval TO %I;  then relay migrate again (docs/roles.md)',
                              current_user);
        end;
    end if;
    if exists (select 1 from pg_catalog.pg_roles
                where rolname = 'realtime_policy_eval'
                  and (rolsuper or rolcreaterole or rolcreatedb or rolreplication or rolbypassrls or rolcanlogin)) then
        raise exception 'role realtime_policy_eval must be an unprivileged NOLOGIN role: policies run with its privileges'
            using errcode = 'insufficient_privilege',
                  hint = 'ALTER ROLE realtime_policy_eval NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS NOLOGIN';
    end if;
    -- The migrating role must be able to hand the sandbox functions to the evaluation role.
    if not pg_catalog.pg_has_role(current_user, 'realtime_policy_eval', 'MEMBER') then
        begin
            execute pg_catalog.format('grant realtime_policy_eval to %I', current_user);
        exception when insufficient_privilege then
            raise exception 'role % is not a member of realtime_policy_eval', current_user
                using errcode = 'insufficient_privilege',
                      hint = pg_catalog.format('as a superuser run: GRANT realtime_policy_eval TO %I (docs/roles.md)',
                                               current_user);
        end;
    end if;
end;
$$;


-- ---------------------------------------------------------------------------------------------
-- The sandbox functions: the only places policy text is executed.

-- Row policies: the body of 0004's eval_policy, now running as realtime_policy_eval.
create or replace function realtime.eval_policy_sandboxed(expr text, tbl regclass, rec jsonb, claims jsonb[])
returns table (idx int, result boolean, error text)
language plpgsql
volatile
security definer
set search_path = pg_catalog, public, pg_temp
as $$
declare
    c    jsonb;
    i    int := 0;
    r    boolean;
    q    text := pg_catalog.format(
        'select (%s)::pg_catalog.bool from pg_catalog.jsonb_populate_record(null::%s, $1) as t, '
        '(select $2::pg_catalog.jsonb as claims) as c', expr, tbl);
begin
    foreach c in array claims loop
        i := i + 1;
        begin
            execute q into r using rec, c;
            idx := i; result := r; error := null;
        exception when others then
            idx := i; result := null; error := sqlstate || ': ' || sqlerrm;
        end;
        return next;
    end loop;
end;
$$;

comment on function realtime.eval_policy_sandboxed(text, regclass, jsonb, jsonb[]) is
    'Internal: evaluate a row policy expression as realtime_policy_eval (call realtime.eval_policy)';

-- Topic policies: one expression; errors propagate to eval_topic_policies, which reports them.
create or replace function realtime.eval_topic_policy_sandboxed(expr text, topic text, extension text, claims jsonb)
returns boolean
language plpgsql
volatile
security definer
set search_path = pg_catalog, public, pg_temp
as $$
declare
    r boolean;
begin
    execute pg_catalog.format(
        'select (%s)::pg_catalog.bool from (select $1::pg_catalog.text as topic, '
        '$2::pg_catalog.text as extension, $3::pg_catalog.jsonb as claims) as messages',
        expr)
       into r
      using topic, extension, claims;
    return r;
end;
$$;

comment on function realtime.eval_topic_policy_sandboxed(text, text, text, jsonb) is
    'Internal: evaluate a topic policy expression as realtime_policy_eval (call realtime.eval_topic_policies)';

-- A new owner needs CREATE on the schema (unless a superuser migrates): granted for the hand-over
-- only, since CREATE in realtime would let policy code plant objects next to the relay's.
grant create on schema realtime to realtime_policy_eval;
alter function realtime.eval_policy_sandboxed(text, regclass, jsonb, jsonb[]) owner to realtime_policy_eval;
alter function realtime.eval_topic_policy_sandboxed(text, text, text, jsonb) owner to realtime_policy_eval;
revoke create on schema realtime from realtime_policy_eval;
revoke all on function realtime.eval_policy_sandboxed(text, regclass, jsonb, jsonb[]) from public;
revoke all on function realtime.eval_topic_policy_sandboxed(text, text, text, jsonb) from public;


-- The sandbox must still be one: both functions exist, are SECURITY DEFINER, owned by an
-- unprivileged realtime_policy_eval, with the pinned search_path.  Called before every
-- evaluation because code running in the sandbox (as the owner) could have altered them.
create or replace function realtime.policy_sandbox_check()
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    broken text;
begin
    select pg_catalog.string_agg(v.sig, ', ')
      into broken
      from (values ('realtime.eval_policy_sandboxed(text,regclass,jsonb,jsonb[])'),
                   ('realtime.eval_topic_policy_sandboxed(text,text,text,jsonb)')) as v(sig)
      left join pg_catalog.pg_proc p on p.oid = pg_catalog.to_regprocedure(v.sig)
      left join pg_catalog.pg_roles r on r.oid = p.proowner
     where p.oid is null
        or not p.prosecdef
        or r.rolname is distinct from 'realtime_policy_eval'
        or r.rolsuper or r.rolbypassrls
        or p.proconfig is distinct from array['search_path=pg_catalog, public, pg_temp'];
    if broken is not null then
        raise exception 'policy sandbox altered: % no longer run(s) as an unprivileged security-definer function; policies are not evaluated', broken
            using errcode = 'insufficient_privilege',
                  hint = 'recreate it: as the migrating role run the statements of migration 0007_policy_sandbox.sql again';
    end if;
end;
$$;

comment on function realtime.policy_sandbox_check() is
    'Internal: refuse to evaluate policies if the sandbox functions were altered';


-- New policies are compiled with the search_path they will be evaluated with, so a name that
-- resolves only through the author's own search_path (`is_member(...)` meaning app.is_member) is
-- refused at creation ("function is_member(jsonb) does not exist") instead of failing for every
-- subscriber later.  The table argument is still resolved with the caller's search_path: the
-- text -> regclass conversion happens in the calling statement.
alter function realtime.create_policy(regclass, text, text, text[])
    set search_path = pg_catalog, public, pg_temp;
alter function realtime.create_topic_policy(text, text, text, text[])
    set search_path = pg_catalog, public, pg_temp;


-- ---------------------------------------------------------------------------------------------
-- The relay-facing functions keep their signatures (an older relay keeps working, and is
-- sandboxed too).  Their callers need EXECUTE on the sandbox functions: superusers have it;
-- grant it to a non-superuser relay role (docs/roles.md).

create or replace function realtime.eval_policy(expr text, tbl regclass, rec jsonb, claims jsonb[])
returns table (idx int, result boolean, error text)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform realtime.policy_sandbox_check();
    return query
        select s.idx, s.result, s.error
          from realtime.eval_policy_sandboxed(eval_policy.expr, eval_policy.tbl, eval_policy.rec,
                                              eval_policy.claims) as s;
end;
$$;

comment on function realtime.eval_policy(text, regclass, jsonb, jsonb[]) is
    'Relay slow path: evaluate a (rewritten) row policy expression for one row and many claims, as realtime_policy_eval';


-- As in 0006, except that each expression runs through the sandbox (checked before each call:
-- an earlier policy's code may have altered it).
create or replace function realtime.eval_topic_policies(topic text, claims jsonb)
returns table (action text, extension text, allowed boolean, error text)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
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
                perform realtime.policy_sandbox_check();
                r := realtime.eval_topic_policy_sandboxed(pol.using_expr, eval_topic_policies.topic,
                                                          combo.ext, eval_topic_policies.claims);
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
    'Relay: evaluate the topic policies for one topic and one subscriber''s claims (read/write x broadcast/presence), as realtime_policy_eval';
