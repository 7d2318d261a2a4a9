-- 0001: the `realtime` schema: settings and the enable/disable/list table functions.
--
-- Why this shape: the relay treats the configured publication (default `supabase_realtime`, so the
-- Supabase habit `alter publication supabase_realtime add table ...` keeps working) as the catalog
-- of tables clients may subscribe to.  wal2json itself ignores publications, so the functions below
-- also emit a transactional logical message: the relay sees "table enabled/disabled" in exactly the
-- commit order of the surrounding row changes, with no polling and no race.
--
-- Every function pins `search_path = pg_catalog, pg_temp` and schema-qualifies what it touches, so
-- the functions stay safe even if someone later marks them SECURITY DEFINER.  They are SECURITY
-- INVOKER today: adding a table to a publication and changing its replica identity should require
-- owning the table, exactly as the equivalent raw SQL does.
--
-- Idempotent (IF NOT EXISTS / OR REPLACE) so a half-applied run or a manual re-run is harmless.

create schema if not exists realtime;

comment on schema realtime is 'Change relay: settings and table enable/disable functions (managed by relay migrate)';

create table if not exists realtime.settings (
    key   text primary key,
    value text not null
);

comment on table realtime.settings is
    'Relay settings; key ''publication'' names the publication listing the tables the relay streams';

-- The migrator overwrites this with the configured name; the default lets the SQL work on its own.
insert into realtime.settings (key, value)
values ('publication', 'supabase_realtime')
on conflict (key) do nothing;

-- Readable by everyone: a relay or `relay check` running as a non-owner role must learn the
-- publication name and list enabled tables.  Nothing here is secret; writes stay owner-only.
grant usage on schema realtime to public;
grant select on realtime.settings to public;


-- The configured publication name; one place so every function agrees on it.
create or replace function realtime.publication_name()
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    pub text;
begin
    select s.value into pub from realtime.settings s where s.key = 'publication';
    if pub is null then
        raise exception 'realtime.settings has no ''publication'' entry'
            using errcode = 'object_not_in_prerequisite_state',
                  hint = 'run "relay migrate", or insert into realtime.settings values (''publication'', ''supabase_realtime'')';
    end if;
    return pub;
end;
$$;


create or replace function realtime.enable_table(tbl regclass)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    rel      record;
    pub      text := realtime.publication_name();
    pub_row  record;
    qualname text;
begin
    select c.oid, c.relname, c.relkind, c.relreplident, c.relpersistence, n.nspname
      into rel
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.oid = tbl;
    if not found then
        raise exception 'relation with OID % does not exist', tbl::oid using errcode = 'undefined_table';
    end if;

    if rel.relkind = 'p' then
        -- wal2json reports changes under the leaf partition's name, and replica identity is per
        -- partition, so enabling the parent would silently stream nothing useful.
        raise exception 'table % is partitioned: only ordinary tables can be enabled', tbl
            using errcode = 'wrong_object_type',
                  hint = 'enable each partition instead, e.g. select realtime.enable_table(''<partition>'')';
    elsif rel.relkind <> 'r' then
        raise exception '% is a %: only ordinary tables can be enabled', tbl,
            case rel.relkind
                when 'v' then 'view'
                when 'm' then 'materialized view'
                when 'f' then 'foreign table'
                when 'S' then 'sequence'
                when 'i' then 'index'
                when 'I' then 'partitioned index'
                when 'c' then 'composite type'
                when 't' then 'TOAST table'
                else 'relation of kind ' || rel.relkind::text
            end
            using errcode = 'wrong_object_type',
                  hint = 'enable the underlying table(s) instead';
    end if;

    if rel.relpersistence <> 'p' then
        -- Temporary and unlogged tables write no WAL, so there would be nothing to stream.
        raise exception 'table % is % and writes no WAL: only ordinary (logged) tables can be enabled', tbl,
            case rel.relpersistence when 't' then 'temporary' else 'unlogged' end
            using errcode = 'wrong_object_type',
                  hint = format('make it logged first: ALTER TABLE %s SET LOGGED', tbl);
    end if;

    -- Clients address rows (and the relay authorizes them) by primary key.
    if not exists (select 1 from pg_catalog.pg_index i where i.indrelid = tbl and i.indisprimary) then
        raise exception 'table % has no primary key', tbl
            using errcode = 'object_not_in_prerequisite_state',
                  hint = format('add one, e.g. ALTER TABLE %s ADD PRIMARY KEY (id), then enable the table again', tbl);
    end if;

    qualname := pg_catalog.quote_ident(rel.nspname) || '.' || pg_catalog.quote_ident(rel.relname);

    select p.oid, p.puballtables into pub_row from pg_catalog.pg_publication p where p.pubname = pub;
    if pub_row.oid is null then
        -- Normally created by the migrator; recreate it (empty) if someone dropped it.
        execute pg_catalog.format('create publication %I', pub);
        select p.oid, p.puballtables into pub_row from pg_catalog.pg_publication p where p.pubname = pub;
    end if;

    if not pub_row.puballtables and not exists (
        select 1 from pg_catalog.pg_publication_rel pr where pr.prpubid = pub_row.oid and pr.prrelid = tbl
    ) then
        begin
            execute pg_catalog.format('alter publication %I add table %s', pub, qualname);
        exception when duplicate_object then
            null;  -- a concurrent enable_table won the race: the table is published, which is the goal
        end;
    end if;

    -- FULL so UPDATE/DELETE carry the complete old row: needed to evaluate filters and RLS-style
    -- authorization on the old values and to send `old_record` like Supabase Realtime does.
    if rel.relreplident <> 'f' then
        execute pg_catalog.format('alter table %s replica identity full', qualname);
    end if;

    perform pg_catalog.pg_logical_emit_message(
        true,
        'realtime',
        pg_catalog.jsonb_build_object(
            'op', 'enable_table',
            'table', rel.nspname || '.' || rel.relname,
            'schema', rel.nspname,
            'name', rel.relname
        )::text
    );
end;
$$;

comment on function realtime.enable_table(regclass) is
    'Add a table to the relay publication, set REPLICA IDENTITY FULL and notify the relay (in commit order)';


create or replace function realtime.disable_table(tbl regclass)
returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    rel      record;
    pub      text := realtime.publication_name();
    pub_oid  oid;
    qualname text;
begin
    select c.relname, n.nspname
      into rel
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.oid = tbl;
    if not found then
        raise exception 'relation with OID % does not exist', tbl::oid using errcode = 'undefined_table';
    end if;

    qualname := pg_catalog.quote_ident(rel.nspname) || '.' || pg_catalog.quote_ident(rel.relname);

    select p.oid into pub_oid from pg_catalog.pg_publication p where p.pubname = pub;
    if pub_oid is not null and exists (
        select 1 from pg_catalog.pg_publication_rel pr where pr.prpubid = pub_oid and pr.prrelid = tbl
    ) then
        begin
            execute pg_catalog.format('alter publication %I drop table %s', pub, qualname);
        exception when undefined_object then
            null;  -- a concurrent disable_table removed it first
        end;
    end if;

    -- Replica identity is left alone: other consumers may rely on it, and FULL is harmless.
    perform pg_catalog.pg_logical_emit_message(
        true,
        'realtime',
        pg_catalog.jsonb_build_object(
            'op', 'disable_table',
            'table', rel.nspname || '.' || rel.relname,
            'schema', rel.nspname,
            'name', rel.relname
        )::text
    );
end;
$$;

comment on function realtime.disable_table(regclass) is
    'Remove a table from the relay publication and notify the relay (in commit order)';


create or replace function realtime.enabled_tables()
returns table (schema_name name, table_name name, replica_identity text, has_primary_key boolean)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select pt.schemaname,
           pt.tablename,
           case c.relreplident
               when 'd' then 'default'
               when 'f' then 'full'
               when 'i' then 'index'
               when 'n' then 'nothing'
           end,
           exists (select 1 from pg_catalog.pg_index i where i.indrelid = c.oid and i.indisprimary)
      from pg_catalog.pg_publication_tables pt
      join pg_catalog.pg_namespace n on n.nspname = pt.schemaname
      join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename
     where pt.pubname = realtime.publication_name()
     order by pt.schemaname, pt.tablename
$$;

comment on function realtime.enabled_tables() is
    'Tables in the relay publication with their replica identity and whether they have a primary key';
