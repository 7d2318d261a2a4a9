// Subscribe to postgres_changes with the official @supabase/realtime-js client, print JSON lines.
//
// Settings come from the environment, or from `--name=value` arguments (which win):
//   RT_URL      base URL, e.g. ws://127.0.0.1:4000/realtime/v1           (--url)
//   RT_TOKEN    JWT, sent as the apikey param                           (--token)
//   RT_SCHEMA   default "public"                                         (--schema)
//   RT_TABLE    e.g. "bookings"; empty = every table of the schema       (--table)
//   RT_FILTER   e.g. "branch_id=eq.2"; empty = none                      (--filter)
//   RT_FILTER_BUILDER  JSON list of postgresChangesFilter() calls, e.g.
//               [["gte","price",10],["not","status","in",["a","b"]]]; wins over RT_FILTER  (--filter-builder)
//   RT_SELECT   JSON list of columns for the binding's select, e.g. ["status"]  (--select)
//   RT_SNAPSHOT "1": the binding asks for a snapshot on join (snapshot: true)  (--snapshot)
//   RT_EVENT    INSERT | UPDATE | DELETE | * (default *)                 (--event)
//   RT_COUNT    exit 0 after this many payloads (default 1)              (--count)
//   RT_TIMEOUT_MS  exit 1 if not done by then (default 15000)            (--timeout-ms)
//   RT_VSN      protocol version ("1.0.0" | "2.0.0"); unset = client default (2.0.0)  (--vsn)
//   RT_CHANNEL  channel name (default "interop")                         (--channel)
//   RT_HEARTBEAT_MS  heartbeat interval; when set, heartbeat statuses are printed too  (--heartbeat-ms)
//   RT_KEEP_ON_ERROR  "1": a CHANNEL_ERROR is printed but does not end the run, so the client's
//               own rejoin can be observed (default: exit 1 on CHANNEL_ERROR)  (--keep-on-error)
//
// Output (stdout), one JSON object per line:
//   {"endpoint": "<url the client connects to>", "vsn": "<vsn>"}       once, at start
//   {"status": "SUBSCRIBED"}                 per subscribe status change (+ "error" on errors)
//   {"heartbeat": "ok"}                      per heartbeat status ("sent" is not printed), if RT_HEARTBEAT_MS
//   <callback payload as-is>                 per postgres_changes callback: it has eventType, new, old,
//                                            schema, table, commit_timestamp, errors
//   {"done": true, "received": N, "left": ["ok"]}   on success, after leaving the channel ("left" is
//                                            what removeAllChannels() resolved to, or "no reply")
// Exit code: 0 after RT_COUNT payloads; 1 on timeout, CHANNEL_ERROR, TIMED_OUT or an early CLOSED.

import realtime from '@supabase/realtime-js'
import WebSocket from 'ws'

const { RealtimeClient, postgresChangesFilter } = realtime

function settings() {
  const args = {}
  for (const a of process.argv.slice(2)) {
    const m = /^--([^=]+)=(.*)$/s.exec(a)
    if (m) args[m[1]] = m[2]
  }
  const pick = (arg, env, dflt) => (arg in args ? args[arg] : process.env[env] ?? dflt)
  return {
    url: pick('url', 'RT_URL', ''),
    token: pick('token', 'RT_TOKEN', ''),
    schema: pick('schema', 'RT_SCHEMA', 'public'),
    table: pick('table', 'RT_TABLE', ''),
    filter: pick('filter', 'RT_FILTER', ''),
    filterBuilder: pick('filter-builder', 'RT_FILTER_BUILDER', ''),
    select: pick('select', 'RT_SELECT', ''),
    snapshot: pick('snapshot', 'RT_SNAPSHOT', '') === '1',
    event: pick('event', 'RT_EVENT', '*'),
    count: Number(pick('count', 'RT_COUNT', '1')),
    timeoutMs: Number(pick('timeout-ms', 'RT_TIMEOUT_MS', '15000')),
    vsn: pick('vsn', 'RT_VSN', ''),
    channel: pick('channel', 'RT_CHANNEL', 'interop'),
    heartbeatMs: Number(pick('heartbeat-ms', 'RT_HEARTBEAT_MS', '0')),
    keepOnError: pick('keep-on-error', 'RT_KEEP_ON_ERROR', '') === '1',
  }
}

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const cfg = settings()
if (!cfg.url || !cfg.token) {
  process.stderr.write('subscribe.mjs: RT_URL and RT_TOKEN (or --url/--token) are required\n')
  process.exit(2)
}

let finished = false
let received = 0

const options = { params: { apikey: cfg.token }, transport: WebSocket }
if (cfg.vsn) options.vsn = cfg.vsn
if (cfg.heartbeatMs > 0) {
  options.heartbeatIntervalMs = cfg.heartbeatMs
  options.heartbeatCallback = (status) => {
    if (!finished && status !== 'sent') out({ heartbeat: status })
  }
}
const client = new RealtimeClient(cfg.url, options)

async function finish(code, extra) {
  if (finished) return
  finished = true
  // Leave (phx_leave) and disconnect, but never let that hold the exit up.
  const left = await Promise.race([
    client.removeAllChannels().catch((e) => [`error: ${e}`]),
    new Promise((resolve) => setTimeout(() => resolve('no reply'), 3000)),
  ])
  if (extra) out({ ...extra, left })
  process.exit(code)
}

const timer = setTimeout(() => {
  out({ timeout: true, received })
  finish(1)
}, cfg.timeoutMs)

out({ endpoint: client.endpointURL(), vsn: client.vsn })

const binding = { event: cfg.event, schema: cfg.schema }
if (cfg.table) binding.table = cfg.table
if (cfg.filter) binding.filter = cfg.filter
if (cfg.select) binding.select = JSON.parse(cfg.select)
if (cfg.snapshot) binding.snapshot = true
if (cfg.filterBuilder) {
  // The builder instance itself goes to .on(): realtime-js serializes it.
  let builder = postgresChangesFilter()
  for (const [method, ...args] of JSON.parse(cfg.filterBuilder)) builder = builder[method](...args)
  binding.filter = builder
  out({ filter: builder.build() })
}

client
  .channel(cfg.channel)
  .on('postgres_changes', binding, (payload) => {
    if (finished) return
    out(payload)
    received += 1
    if (received >= cfg.count) {
      clearTimeout(timer)
      finish(0, { done: true, received })
    }
  })
  .subscribe((status, err) => {
    if (finished) return
    const line = { status }
    if (err) line.error = String(err && err.message ? err.message : err)
    out(line)
    if (status === 'CHANNEL_ERROR' && cfg.keepOnError) return
    if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT' || status === 'CLOSED') {
      clearTimeout(timer)
      finish(1)
    }
  })
