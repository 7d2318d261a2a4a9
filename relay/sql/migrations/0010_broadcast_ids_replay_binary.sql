-- 0010: database broadcasts get Supabase's id, can be replayed, and can carry bytes.
--
-- * Every message from realtime.send now carries an "id" (a uuid, sent to clients as meta.id as
--   Supabase does) and "ts" (the sending transaction's start, ms since the epoch), which
--   config.broadcast.replay.since compares against.  The relay keeps recent private messages
--   in memory for replay (docs/broadcast-presence.md says how many and how long).
-- * realtime.send_binary(payload bytea, event, topic, private default true), as upstream: the
--   bytes reach vsn 2.0.0 clients as a binary broadcast frame and text clients as
--   {"base64": ...} with meta.encoding = "base64".
-- * Both go through one internal function, so their checks cannot drift apart.
--
-- Same privileges as 0005 (SECURITY INVOKER, pinned search_path, EXECUTE for PUBLIC): see there.

create or replace function realtime.emit_broadcast(
    topic text,
    event text,
    body jsonb,
    private boolean,
    is_binary boolean
)
returns void
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    sub text := emit_broadcast.topic;
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
    if emit_broadcast.event is null or emit_broadcast.event = '' then
        raise exception 'event must not be %', case when emit_broadcast.event is null then 'null' else 'empty' end
            using errcode = 'invalid_parameter_value',
                  hint = 'pass the broadcast event name clients listen for, e.g. ''new_message''';
    end if;
    if pg_catalog.octet_length(emit_broadcast.event) > 255 then
        raise exception 'event is too long: % bytes, at most 255', pg_catalog.octet_length(emit_broadcast.event)
            using errcode = 'invalid_parameter_value',
                  hint = 'the binary wire format stores the event length in one byte: use a shorter event name';
    end if;

    perform pg_catalog.pg_logical_emit_message(
        true,
        'realtime',
        pg_catalog.jsonb_build_object(
            'op', 'broadcast',
            'id', pg_catalog.gen_random_uuid()::text,
            'ts', pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.now()) * 1000)::bigint,
            'topic', sub,
            'event', emit_broadcast.event,
            'payload', emit_broadcast.body,
            'private', coalesce(emit_broadcast.private, true),
            'binary', coalesce(emit_broadcast.is_binary, false)
        )::text
    );
end;
$$;

comment on function realtime.emit_broadcast(text, text, jsonb, boolean, boolean) is
    'Internal: checks and emits a database broadcast (used by realtime.send and realtime.send_binary)';

grant execute on function realtime.emit_broadcast(text, text, jsonb, boolean, boolean) to public;


create or replace function realtime.send(
    payload jsonb,
    event text,
    topic text,
    private boolean default true
)
returns void
language sql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
    select realtime.emit_broadcast(send.topic, send.event, coalesce(send.payload, '{}'::jsonb), send.private, false);
$$;

comment on function realtime.send(jsonb, text, text, boolean) is
    'Broadcast a message to a channel when (and only if) the calling transaction commits (Supabase-compatible)';


create or replace function realtime.send_binary(
    payload bytea,
    event text,
    topic text,
    private boolean default true
)
returns void
language sql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
    -- base64 without the line breaks encode() inserts every 76 characters
    select realtime.emit_broadcast(
        send_binary.topic,
        send_binary.event,
        pg_catalog.to_jsonb(pg_catalog.translate(pg_catalog.encode(coalesce(send_binary.payload, ''::bytea), 'base64'), E'\n', '')),
        send_binary.private,
        true
    );
$$;

comment on function realtime.send_binary(bytea, text, text, boolean) is
    'Broadcast bytes to a channel when (and only if) the calling transaction commits (Supabase-compatible)';

grant execute on function realtime.send_binary(bytea, text, text, boolean) to public;
