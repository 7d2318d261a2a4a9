-- 0005: broadcast from the database: realtime.send and realtime.broadcast_changes.
--
-- Why a logical message and not a table: Supabase's realtime.send inserts into realtime.messages
-- and its server polls/replicates that table.  This relay already reads the WAL in commit order,
-- so send emits a TRANSACTIONAL logical message instead: it reaches the relay only if, and when,
-- the calling transaction commits, in commit order with that transaction's row changes, and it
-- leaves no table to vacuum or partition.  A rolled-back transaction broadcasts nothing.
--
-- The signatures are Supabase's, so triggers and functions written for Supabase work unchanged:
--   realtime.send(payload jsonb, event text, topic text, private boolean default true)
--   realtime.broadcast_changes(topic_name, event_name, operation, table_name, table_schema,
--                              new record, old record, level text default 'ROW')
-- One deliberate difference: Supabase's send swallows every error into a WARNING (the message is
-- then silently lost); here invalid arguments raise, with a hint, because a broadcast that can
-- never be delivered is a bug the caller should see.
--
-- Idempotent (CREATE OR REPLACE) like the other migrations.


-- ---------------------------------------------------------------------------------------------
-- realtime.send
--
-- The logical message (prefix 'realtime', like the relay's other messages) carries
--   {"op": "broadcast", "topic": <topic>, "event": <event>, "payload": <payload>, "private": <bool>}
-- with `topic` the channel name WITHOUT the 'realtime:' prefix (a leading 'realtime:' is stripped:
-- callers often pass the full Phoenix topic).
--
-- Limits: the binary (vsn 2.0.0) wire format stores the topic ('realtime:' || topic) and the
-- event name with one-byte lengths, so each must fit in 255 bytes; refusing here beats a relay
-- that has to drop the message later.  A NULL payload becomes {} (clients expect an object);
-- a NULL `private` counts as true, the safe reading (private channels check topic policies).
--
-- Privileges, decided on PostgreSQL 15: pg_logical_emit_message is executable by PUBLIC and
-- needs no special attribute, so send needs no SECURITY DEFINER: it is SECURITY INVOKER with a
-- pinned search_path, and EXECUTE stays granted to PUBLIC (the Postgres default), as in Supabase,
-- where send is SECURITY INVOKER and executable by every role with USAGE on schema realtime.  That
-- is what lets a trigger fired by an ordinary application role broadcast.  Revoking EXECUTE here
-- would not be a security boundary anyway: any role can call pg_logical_emit_message directly.
-- A server that has revoked EXECUTE on pg_logical_emit_message from PUBLIC must grant it to the
-- roles that broadcast.
create or replace function realtime.send(
    payload jsonb,
    event text,
    topic text,
    private boolean default true
)
returns void
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    sub text := send.topic;
begin
    if sub is null then
        raise exception 'topic must not be null'
            using errcode = 'invalid_parameter_value',
                  hint = 'pass the channel name, e.g. realtime.send(''{}'', ''new_message'', ''room:42'')';
    end if;
    if pg_catalog.starts_with(sub, 'realtime:') then
        sub := pg_catalog.substr(sub, 10);
    end if;
    if sub = '' then
        raise exception 'topic must not be empty'
            using errcode = 'invalid_parameter_value',
                  hint = 'pass the channel name, e.g. ''room:42'' (a leading ''realtime:'' is optional)';
    end if;
    if pg_catalog.octet_length('realtime:' || sub) > 255 then
        raise exception 'topic is too long: % bytes with the ''realtime:'' prefix, at most 255',
            pg_catalog.octet_length('realtime:' || sub)
            using errcode = 'invalid_parameter_value',
                  hint = 'the binary wire format stores the topic length in one byte: use a channel name of at most 246 bytes';
    end if;
    if send.event is null or send.event = '' then
        raise exception 'event must not be %', case when send.event is null then 'null' else 'empty' end
            using errcode = 'invalid_parameter_value',
                  hint = 'pass the broadcast event name clients listen for, e.g. ''new_message''';
    end if;
    if pg_catalog.octet_length(send.event) > 255 then
        raise exception 'event is too long: % bytes, at most 255', pg_catalog.octet_length(send.event)
            using errcode = 'invalid_parameter_value',
                  hint = 'the binary wire format stores the event length in one byte: use a shorter event name';
    end if;

    perform pg_catalog.pg_logical_emit_message(
        true,
        'realtime',
        pg_catalog.jsonb_build_object(
            'op', 'broadcast',
            'topic', sub,
            'event', send.event,
            'payload', coalesce(send.payload, '{}'::jsonb),
            'private', coalesce(send.private, true)
        )::text
    );
end;
$$;

comment on function realtime.send(jsonb, text, text, boolean) is
    'Broadcast a message to a channel when (and only if) the calling transaction commits (Supabase-compatible)';

grant execute on function realtime.send(jsonb, text, text, boolean) to public;


-- ---------------------------------------------------------------------------------------------
-- realtime.broadcast_changes
--
-- Supabase's helper for row triggers, with its payload shape:
--   {"operation": ..., "table": ..., "schema": ..., "record": <new row>, "old_record": <old row>}
-- (record / old_record are JSON null where the operation has no such row), sent with Supabase's
-- default private = true.  Typical use:
--   create function public.room_messages_broadcast() returns trigger language plpgsql as $f$
--   begin
--     perform realtime.broadcast_changes('room:' || coalesce(new.room_id, old.room_id)::text,
--         tg_op, tg_op, tg_table_name, tg_table_schema, new, old);
--     return null;
--   end $f$;
--   create trigger room_messages_broadcast after insert or update or delete on public.messages
--     for each row execute function public.room_messages_broadcast();
--
-- Errors keep their SQLSTATE (Supabase re-raises everything as P0001 'Failed to process the row:
-- ...'; the same words prefix the message here, so log searches still match).  SECURITY INVOKER
-- and executable by PUBLIC for the same reasons as send.
create or replace function realtime.broadcast_changes(
    topic_name text,
    event_name text,
    operation text,
    table_name text,
    table_schema text,
    new record,
    old record,
    level text default 'ROW'
)
returns void
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    msg   text;
    state text;
    hint  text;
begin
    if level = 'STATEMENT' then
        raise exception 'function can only be triggered for each row, not for each statement'
            using errcode = 'invalid_parameter_value',
                  hint = 'create the trigger FOR EACH ROW, or call realtime.send from a statement trigger';
    end if;
    if operation is null or operation not in ('INSERT', 'UPDATE', 'DELETE') then
        raise exception 'Unexpected operation type: %', coalesce(operation, 'NULL')
            using errcode = 'invalid_parameter_value',
                  hint = 'pass TG_OP from a row trigger: INSERT, UPDATE or DELETE';
    end if;
    perform realtime.send(
        pg_catalog.jsonb_build_object(
            'old_record', old,
            'record', new,
            'operation', operation,
            'table', table_name,
            'schema', table_schema
        ),
        event_name,
        topic_name
    );
exception when others then
    get stacked diagnostics msg = message_text, state = returned_sqlstate, hint = pg_exception_hint;
    if hint is null or hint = '' then
        raise exception 'Failed to process the row: %', msg using errcode = state;
    end if;
    raise exception 'Failed to process the row: %', msg using errcode = state, hint = hint;
end;
$$;

comment on function realtime.broadcast_changes(text, text, text, text, text, record, record, text) is
    'Row-trigger helper: broadcast a row change with Supabase''s payload shape (via realtime.send)';

grant execute on function realtime.broadcast_changes(text, text, text, text, text, record, record, text) to public;
