-- 0002: make raw `ALTER PUBLICATION <ours> ADD/DROP/SET TABLE` as safe as realtime.enable_table.
--
-- Why: wal2json does not know publications, so the relay restarts its stream with a new table
-- list when the publication changes.  realtime.enable_table() tells it in commit order through a
-- logical message; a DBA who runs plain ALTER PUBLICATION (the Supabase habit) would otherwise be
-- noticed only by the relay's 1 s poll, and rows written to a newly added table in between could be
-- skipped.  This event trigger emits the same transactional message for any ALTER PUBLICATION on
-- the configured publication, so both paths are lossless.
--
-- Event triggers need a superuser.  Where the migrating role is not one (managed Postgres), the
-- trigger is skipped with a NOTICE; realtime.enable_table() stays lossless, and raw ALTER
-- PUBLICATION falls back to the poll.

-- ddl_command_end fires for every ALTER PUBLICATION (ADD, DROP and SET TABLE alike); rather than
-- decode object identities we signal each one.  A change to some other publication costs the relay
-- one cheap stream restart, never a lost row.
create or replace function realtime.on_alter_publication()
returns event_trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform pg_catalog.pg_logical_emit_message(
        true, 'realtime',
        pg_catalog.jsonb_build_object('op', 'publication_changed', 'event', tg_event)::text);
end;
$$;

do $$
begin
    if exists (select 1 from pg_catalog.pg_roles where rolname = current_user and rolsuper) then
        if not exists (select 1 from pg_catalog.pg_event_trigger where evtname = 'realtime_alter_publication') then
            create event trigger realtime_alter_publication on ddl_command_end
                when tag in ('ALTER PUBLICATION')
                execute function realtime.on_alter_publication();
        end if;
    else
        raise notice 'not a superuser: skipping the ALTER PUBLICATION event trigger (use realtime.enable_table for lossless table changes)';
    end if;
end;
$$;
