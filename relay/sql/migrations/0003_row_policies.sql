-- 0003: per-row authorization policies that the relay evaluates itself.
--
-- Why not Postgres RLS: the relay reads changes from the WAL, not through queries, so RLS never
-- runs for them.  DBAs still want to write the rules the way they write RLS `USING` clauses, so a
-- policy here is exactly that: a boolean SQL expression over the table's columns (unqualified),
-- `claims` (jsonb: the subscriber's JWT claims) and the Supabase helpers auth.uid()/role()/jwt().
-- The relay evaluates it per change and per subscriber (in-process for the common shapes, through
-- realtime.eval_policy otherwise).  Policies are stored, not compiled, so the expression is checked
-- against the table at creation with Postgres's own parser and errors.
--
-- Idempotent (IF NOT EXISTS / OR REPLACE / DROP ... IF EXISTS) like the other migrations.


-- ---------------------------------------------------------------------------------------------
-- Supabase-style auth helpers.
--
-- A Supabase database already has auth.uid()/role()/jwt() (owned by supabase_auth_admin and used
-- by its RLS policies): replacing them could break that database, so each one is created only when
-- absent.  Ours follow Supabase's definitions, reading the claims from the GUCs PostgREST sets
-- (`request.jwt.claims`, and the legacy per-claim `request.jwt.claim.*`), so a policy expression
-- means the same thing in psql (after set_config('request.jwt.claims', ...)) as in the relay, which
-- rewrites these calls to read the subscriber's claims.
do $$
begin
    if not exists (select 1 from pg_catalog.pg_namespace where nspname = 'auth') then
        create schema auth;
        -- Only when we created it: a Supabase `auth` schema keeps its own grants.
        grant usage on schema auth to public;
    end if;

    if not exists (
        select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'auth' and p.proname = 'jwt' and p.pronargs = 0
    ) then
        create function auth.jwt()
        returns jsonb
        language sql
        stable
        set search_path = pg_catalog, pg_temp
        as $f$
            select coalesce(
                nullif(pg_catalog.current_setting('request.jwt.claims', true), ''),
                nullif(pg_catalog.current_setting('request.jwt.claim', true), '')
            )::jsonb
        $f$;
        comment on function auth.jwt() is
            'The JWT claims of the current request (GUC request.jwt.claims); created by the relay migration';
    end if;

    if not exists (
        select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'auth' and p.proname = 'uid' and p.pronargs = 0
    ) then
        create function auth.uid()
        returns uuid
        language sql
        stable
        set search_path = pg_catalog, pg_temp
        as $f$
            select coalesce(
                nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
                (nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
            )::uuid
        $f$;
        comment on function auth.uid() is
            'The ''sub'' claim of the current request as a uuid; created by the relay migration';
    end if;

    if not exists (
        select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'auth' and p.proname = 'role' and p.pronargs = 0
    ) then
        create function auth.role()
        returns text
        language sql
        stable
        set search_path = pg_catalog, pg_temp
        as $f$
            select coalesce(
                nullif(pg_catalog.current_setting('request.jwt.claim.role', true), ''),
                (nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
            )::text
        $f$;
        comment on function auth.role() is
            'The ''role'' claim of the current request; created by the relay migration';
    end if;
end;
$$;


-- ---------------------------------------------------------------------------------------------
-- Storage.
--
-- `tbl regclass` rather than schema/name text: the policy follows the table through ALTER TABLE
-- ... RENAME / SET SCHEMA, and pg_dump writes it as a name that restores to the new OID.
create table if not exists realtime.row_policies (
    id         bigint generated always as identity primary key,
    tbl        regclass not null,
    name       text not null,
    using_expr text not null,
    roles      text[] not null,
    created_at timestamptz default now(),
    created_by name default current_user,
    -- named: create_policy's ON CONFLICT refers to it
    constraint row_policies_tbl_name_key unique (tbl, name)
);

comment on table realtime.row_policies is
    'Row policies evaluated by the relay per subscriber; manage with realtime.create_policy/drop_policy';

-- Who may write here: the owner of the table a policy is for, the same rule CREATE POLICY uses.
-- The functions below check it with a clear message; row level security on this catalog makes
-- the rule hold for plain INSERT/DELETE too, so the grants to public below give nobody more than
-- the functions would.  (The owner of this table, i.e. the migrating role, and superusers bypass
-- RLS, as they may manage any policy.)  No UPDATE grant: drop and re-create instead, which also
-- re-validates the expression.
alter table realtime.row_policies enable row level security;

drop policy if exists row_policies_read on realtime.row_policies;
create policy row_policies_read on realtime.row_policies
    for select using (true);

drop policy if exists row_policies_insert on realtime.row_policies;
create policy row_policies_insert on realtime.row_policies
    for insert with check (
        created_by = current_user
        and pg_catalog.pg_has_role(
            current_user,
            (select c.relowner from pg_catalog.pg_class c where c.oid = tbl),
            'USAGE')
    );

drop policy if exists row_policies_delete on realtime.row_policies;
create policy row_policies_delete on realtime.row_policies
    for delete using (
        pg_catalog.pg_has_role(
            current_user,
            (select c.relowner from pg_catalog.pg_class c where c.oid = tbl),
            'USAGE')
    );

-- SELECT for everyone: the relay may run as a non-owner role and must load every policy.
-- INSERT/DELETE for everyone so that table owners who are not the migrating role can manage their
-- policies; the RLS policies above limit each role to the tables it owns.
grant select, insert, delete on realtime.row_policies to public;


-- The relay reads this view.  The inner join with pg_class is what keeps it valid when a table
-- is dropped: the regclass of a dropped table degrades to a bare OID number, and such rows simply
-- drop out here instead of showing up as '12345' or breaking a ::text cast.  The sql_drop event
-- trigger at the end also deletes those rows, where it can be installed (superuser), so that a
-- future table that happens to reuse the OID cannot inherit them.
create or replace view realtime.policies as
select n.nspname    as schema_name,
       c.relname    as table_name,
       p.name,
       p.roles,
       p.using_expr,
       p.created_at,
       p.created_by
  from realtime.row_policies p
  join pg_catalog.pg_class c on c.oid = p.tbl
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 order by n.nspname, c.relname, p.name;

comment on view realtime.policies is
    'Row policies of existing tables, by schema, table and policy name (read by the relay)';

grant select on realtime.policies to public;


-- ---------------------------------------------------------------------------------------------
-- Checks shared by create_policy and drop_policy.

-- The relation must exist and the caller must own it (or be a member of the owning role, or a
-- superuser), exactly like CREATE POLICY.  Returns its names: `qualname` (quoted, for messages)
-- and `label` (schema.table unquoted, the form the relay's logical messages use).
create or replace function realtime.policy_table_check(tbl regclass, for_create boolean)
returns table (qualname text, label text)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    rel record;
begin
    if tbl is null then
        raise exception 'table must not be null' using errcode = 'null_value_not_allowed';
    end if;
    select n.nspname, c.relname, c.relkind, c.relowner
      into rel
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.oid = tbl;
    if not found then
        raise exception 'relation with OID % does not exist', tbl::oid using errcode = 'undefined_table';
    end if;
    if not (pg_catalog.pg_has_role(current_user, rel.relowner, 'USAGE')
            or exists (select 1 from pg_catalog.pg_roles r where r.rolname = current_user and r.rolsuper)) then
        raise exception 'must be owner of table %', rel.relname
            using errcode = 'insufficient_privilege',
                  hint = 'row policies are managed by the table''s owner, as with CREATE POLICY';
    end if;
    if for_create and rel.relkind <> 'r' then
        -- The relay streams ordinary tables only (see realtime.enable_table): a policy on anything
        -- else would never apply, which is a mistake worth reporting now.
        if rel.relkind = 'p' then
            raise exception '% is partitioned: row policies apply to ordinary tables only', tbl
                using errcode = 'wrong_object_type',
                      hint = 'the relay streams partitions under their own names: create the policy on each partition';
        end if;
        raise exception '% is not an ordinary table: row policies apply to ordinary tables only', tbl
            using errcode = 'wrong_object_type';
    end if;
    qualname := pg_catalog.quote_ident(rel.nspname) || '.' || pg_catalog.quote_ident(rel.relname);
    label := rel.nspname || '.' || rel.relname;
    return next;
end;
$$;

comment on function realtime.policy_table_check(regclass, boolean) is
    'Internal: the table exists and the caller owns it (create_policy/drop_policy)';


-- The expression is pasted into `select (<expr>) ...` both when it is checked here and when the
-- relay evaluates it (realtime.eval_policy), so it must not be able to end that parenthesis and
-- add clauses of its own, nor smuggle in a second statement.  DBAs are trusted: this catches
-- mistakes (a stray `)`, a trailing `;` or `-- comment`), it is not a sandbox.  The scan follows
-- Postgres's lexer far enough to ignore parentheses inside string constants ('', E'' with
-- backslash escapes, $tag$ $tag$), quoted identifiers and comments (which nest in Postgres).
-- A `;` is refused anywhere, even inside a string constant: simple to explain, rarely needed.
create or replace function realtime.policy_expr_syntax_check(using_expr text)
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    n       int := pg_catalog.length(using_expr);
    i       int := 1;
    ch      text;
    depth   int := 0;
    nest    int;
    esc     boolean;
    tag     text;
    endpos  int;
    std_str boolean := coalesce(pg_catalog.current_setting('standard_conforming_strings', true), 'on') = 'on';
begin
    if using_expr is null or pg_catalog.btrim(using_expr, e' \t\r\n\f') = '' then
        raise exception 'policy expression must not be empty' using errcode = 'invalid_parameter_value';
    end if;
    if pg_catalog.strpos(using_expr, ';') > 0 then
        raise exception 'policy expression must not contain ";"'
            using errcode = 'syntax_error',
                  detail = 'A policy is one boolean expression, not a statement.',
                  hint = 'e.g. branch_id = (claims->>''branch_id'')::int';
    end if;

    while i <= n loop
        ch := pg_catalog.substr(using_expr, i, 1);
        if ch = '''' then
            -- String constant.  E'...' (E starting a token), or any string when
            -- standard_conforming_strings is off, takes backslash escapes.
            esc := not std_str or (
                i > 1 and pg_catalog.lower(pg_catalog.substr(using_expr, i - 1, 1)) = 'e'
                and (i = 2 or pg_catalog.substr(using_expr, i - 2, 1) !~ '[[:alnum:]_$]'));
            i := i + 1;
            loop
                if i > n then
                    raise exception 'unterminated string constant in policy expression' using errcode = 'syntax_error';
                end if;
                ch := pg_catalog.substr(using_expr, i, 1);
                if esc and ch = '\' then
                    i := i + 2;
                elsif ch = '''' then
                    exit when pg_catalog.substr(using_expr, i + 1, 1) <> '''';
                    i := i + 2;  -- '' is an escaped quote
                else
                    i := i + 1;
                end if;
            end loop;
            i := i + 1;
        elsif ch = '"' then
            endpos := i + 1;
            loop
                if endpos > n then
                    raise exception 'unterminated quoted identifier in policy expression' using errcode = 'syntax_error';
                end if;
                if pg_catalog.substr(using_expr, endpos, 1) = '"' then
                    exit when pg_catalog.substr(using_expr, endpos + 1, 1) <> '"';
                    endpos := endpos + 1;
                end if;
                endpos := endpos + 1;
            end loop;
            i := endpos + 1;
        elsif ch = '$' and (i = 1 or pg_catalog.substr(using_expr, i - 1, 1) !~ '[[:alnum:]_$]')
              and pg_catalog.substr(using_expr, i) ~ '^\$([[:alpha:]_][[:alnum:]_]*)?\$' then
            -- Dollar-quoted string ($1 is a parameter, not a quote: a tag cannot start with a digit).
            tag := (pg_catalog.regexp_match(pg_catalog.substr(using_expr, i), '^(\$(?:[[:alpha:]_][[:alnum:]_]*)?\$)'))[1];
            endpos := pg_catalog.strpos(pg_catalog.substr(using_expr, i + pg_catalog.length(tag)), tag);
            if endpos = 0 then
                raise exception 'unterminated dollar-quoted string in policy expression' using errcode = 'syntax_error';
            end if;
            i := i + 2 * pg_catalog.length(tag) + endpos - 1;
        elsif ch = '-' and pg_catalog.substr(using_expr, i + 1, 1) = '-' then
            endpos := pg_catalog.strpos(pg_catalog.substr(using_expr, i), e'\n');
            if endpos = 0 then
                -- Would comment out whatever follows the expression when it is evaluated.
                raise exception 'policy expression must not end with a -- comment'
                    using errcode = 'syntax_error', hint = 'use /* ... */ or end the comment with a newline';
            end if;
            i := i + endpos;
        elsif ch = '/' and pg_catalog.substr(using_expr, i + 1, 1) = '*' then
            nest := 1;
            i := i + 2;
            while nest > 0 loop
                if i > n then
                    raise exception 'unterminated /* comment in policy expression' using errcode = 'syntax_error';
                end if;
                if pg_catalog.substr(using_expr, i, 2) = '/*' then
                    nest := nest + 1;
                    i := i + 2;
                elsif pg_catalog.substr(using_expr, i, 2) = '*/' then
                    nest := nest - 1;
                    i := i + 2;
                else
                    i := i + 1;
                end if;
            end loop;
        else
            if ch = '(' then
                depth := depth + 1;
            elsif ch = ')' then
                depth := depth - 1;
                if depth < 0 then
                    raise exception 'unbalanced parentheses in policy expression: ")" at position % has no "("', i
                        using errcode = 'syntax_error',
                              detail = 'A policy is a single expression; it cannot close the parenthesis it is placed in.';
                end if;
            end if;
            i := i + 1;
        end if;
    end loop;

    if depth > 0 then
        raise exception 'unbalanced parentheses in policy expression: % "(" not closed', depth
            using errcode = 'syntax_error';
    end if;
end;
$$;

comment on function realtime.policy_expr_syntax_check(text) is
    'Internal: refuse a policy expression that is not one parenthesizable expression (;, unbalanced parentheses)';


-- ---------------------------------------------------------------------------------------------
-- create_policy / drop_policy.
--
-- create_policy deliberately has no pinned search_path: the expression is compiled with the
-- caller's search_path, as the relay's realtime.eval_policy evaluates it with the relay's, so a
-- DBA may call their own functions or types unqualified just as in psql.  Everything the function
-- itself touches is schema-qualified (operators resolve in pg_catalog first unless the caller
-- lists it later on purpose), and it is SECURITY INVOKER: a hostile search_path could only fool
-- the caller's own call, and RLS on row_policies still guards what it may write.
create or replace function realtime.create_policy(
    tbl regclass,
    name text,
    using_expr text,
    roles text[] default '{authenticated}'
)
returns void
language plpgsql
volatile
as $$
declare
    rel     record;
    typ     regtype;
    msg     text;
    state   text;
    detail  text;
    hint    text;
    checked text;
begin
    select * into rel from realtime.policy_table_check(create_policy.tbl, true);

    if create_policy.name is null or pg_catalog.btrim(create_policy.name) = '' then
        raise exception 'policy name must not be empty' using errcode = 'invalid_parameter_value';
    end if;
    if create_policy.roles is null or pg_catalog.cardinality(create_policy.roles) = 0 then
        raise exception 'policy roles must not be empty'
            using errcode = 'invalid_parameter_value',
                  hint = 'roles are JWT ''role'' claims, e.g. ''{authenticated}'' or ''{anon,authenticated}''';
    end if;
    if pg_catalog.array_ndims(create_policy.roles) <> 1
       or exists (select 1 from pg_catalog.unnest(create_policy.roles) r(role)
                   where r.role is null or pg_catalog.btrim(r.role) = '') then
        raise exception 'policy roles must be a one-dimensional array of non-empty role names, not %',
            create_policy.roles
            using errcode = 'invalid_parameter_value';
    end if;

    perform realtime.policy_expr_syntax_check(create_policy.using_expr);

    -- Compile the expression against the table, in the same shape realtime.eval_policy uses
    -- (columns of `t` unqualified, `claims` from `c`), without running it:
    --  * the select list yields its type: the outer join returns one row whose `v` is a typed
    --    NULL, so pg_typeof works although LIMIT 0 keeps the expression from being evaluated;
    --  * the WHERE clause refuses aggregates, window and set-returning functions, as RLS does;
    --  * OFFSET 0 keeps `claims` a column rather than a NULL constant, so the planner cannot
    --    fold claim expressions and report errors (a failing cast) that depend on real claims.
    -- Run in a subtransaction so a compile error can be re-raised with Postgres's own message and
    -- SQLSTATE but without the position in this wrapper query, which would only confuse.
    checked := pg_catalog.format(
        'select pg_catalog.pg_typeof(s.v)::pg_catalog.regtype from (select 1) as one left join ('
        'select (%s) as v from %s as t, (select null::jsonb as claims offset 0) as c '
        'where (%s) is not null limit 0) as s on true',
        create_policy.using_expr, create_policy.tbl, create_policy.using_expr);
    begin
        execute checked into typ;
    exception when others then
        get stacked diagnostics msg = message_text, state = returned_sqlstate,
                                detail = pg_exception_detail, hint = pg_exception_hint;
        raise exception using
            message = msg,
            errcode = state,
            detail = coalesce(nullif(detail, ''), pg_catalog.format('In the policy expression for table %s.', rel.qualname)),
            hint = coalesce(nullif(hint, ''),
                'The table''s columns are in scope unqualified, plus claims (jsonb) and auth.uid(), auth.role(), auth.jwt().');
    end;

    if typ <> 'pg_catalog.bool'::pg_catalog.regtype
       and not exists (select 1 from pg_catalog.pg_type ty
                        where ty.oid = typ
                          and ty.typbasetype = 'pg_catalog.bool'::pg_catalog.regtype) then
        raise exception 'policy expression must return boolean, not type %', typ
            using errcode = 'datatype_mismatch',
                  hint = 'compare the value, e.g. branch_id = (claims->>''branch_id'')::int';
    end if;

    insert into realtime.row_policies as p (tbl, name, using_expr, roles)
    values (create_policy.tbl, create_policy.name, create_policy.using_expr, create_policy.roles)
    on conflict on constraint row_policies_tbl_name_key do nothing;
    if not found then
        raise exception 'policy "%" for table % already exists', create_policy.name, rel.qualname
            using errcode = 'duplicate_object',
                  hint = 'drop it first with realtime.drop_policy';
    end if;

    -- In commit order with the surrounding changes: a running relay reloads its policies exactly
    -- when this transaction's effects become visible in the stream.
    perform pg_catalog.pg_logical_emit_message(
        true,
        'realtime',
        pg_catalog.jsonb_build_object(
            'op', 'policy_changed',
            'table', rel.label,
            'name', create_policy.name
        )::text
    );
end;
$$;

comment on function realtime.create_policy(regclass, text, text, text[]) is
    'Add a row policy (a boolean expression over the table''s columns, claims and auth.*) and notify the relay';


create or replace function realtime.drop_policy(tbl regclass, name text, if_exists boolean default false)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    rel record;
begin
    select * into rel from realtime.policy_table_check(drop_policy.tbl, false);

    delete from realtime.row_policies p
     where p.tbl = drop_policy.tbl and p.name = drop_policy.name;
    if not found then
        if coalesce(drop_policy.if_exists, false) then
            raise notice 'policy "%" for table % does not exist, skipping', drop_policy.name, rel.qualname;
            return;
        end if;
        raise exception 'policy "%" for table % does not exist', drop_policy.name, rel.qualname
            using errcode = 'undefined_object';
    end if;

    perform pg_catalog.pg_logical_emit_message(
        true,
        'realtime',
        pg_catalog.jsonb_build_object(
            'op', 'policy_changed',
            'table', rel.label,
            'name', drop_policy.name
        )::text
    );
end;
$$;

comment on function realtime.drop_policy(regclass, text, boolean) is
    'Remove a row policy and notify the relay (in commit order)';


-- ---------------------------------------------------------------------------------------------
-- Dropped tables: delete their policies in the dropping transaction.
--
-- SECURITY DEFINER because whoever drops a table must not need rights on realtime.row_policies
-- (and RLS there could not even see the owner of a table that is already gone); it only deletes
-- rows for OIDs Postgres reports as dropped.  The to_regclass guard lets `drop schema realtime
-- cascade` through.  Like 0002 this needs a superuser to install; without it the view's join
-- still hides such rows.
create or replace function realtime.on_drop_policy_tables()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    r record;
begin
    if pg_catalog.to_regclass('realtime.row_policies') is null then
        return;
    end if;
    for r in
        delete from realtime.row_policies p
         using pg_catalog.pg_event_trigger_dropped_objects() d
         where d.classid = 'pg_catalog.pg_class'::regclass
           and d.objsubid = 0
           and p.tbl::oid = d.objid
        returning p.name, d.schema_name, d.object_name
    loop
        perform pg_catalog.pg_logical_emit_message(
            true, 'realtime',
            pg_catalog.jsonb_build_object(
                'op', 'policy_changed',
                'table', r.schema_name || '.' || r.object_name,
                'name', r.name
            )::text);
    end loop;
end;
$$;

do $$
begin
    if exists (select 1 from pg_catalog.pg_roles where rolname = current_user and rolsuper) then
        if not exists (select 1 from pg_catalog.pg_event_trigger where evtname = 'realtime_drop_policy_tables') then
            create event trigger realtime_drop_policy_tables on sql_drop
                execute function realtime.on_drop_policy_tables();
        end if;
    else
        raise notice 'not a superuser: skipping the sql_drop event trigger (policies of dropped tables stay in realtime.row_policies, hidden by realtime.policies)';
    end if;
end;
$$;
