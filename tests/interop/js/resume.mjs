// A dashboard that never misses a row across reconnects, with an UNCHANGED realtime-js.
//
// This is the pattern docs/protocol.md ("Gap-free reconnects from a browser") documents:
// realtime-js re-sends the application's binding object on every automatic rejoin, so the
// position the application keeps on it (`resume_from`) reaches the relay; `tx_end: true` on the
// binding asks for a `tx_end` event after each transaction, whose `position` is what to keep.
// Rows are applied per transaction; an unfinished transaction is discarded when the channel
// (re)joins, because the relay sends it again from the start.
//
// Settings (environment): RT_URL, RT_TOKEN, RT_TABLE (default alerts), RT_COUNT (rows to apply
// before exiting), RT_TIMEOUT_MS.  Output, one JSON line each:
//   {"status": "..."}                        subscribe statuses (SUBSCRIBED once per join)
//   {"system": {...}}                        system events (Subscribed / Resumed / resync)
//   {"applied": [ids...], "position": "..."} per applied transaction
//   {"done": true, "applied": N}             after RT_COUNT rows; exit 0 (1 on timeout)

import realtime from '@supabase/realtime-js'
import WebSocket from 'ws'

const { RealtimeClient } = realtime
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const count = Number(process.env.RT_COUNT ?? '1')
const client = new RealtimeClient(process.env.RT_URL, {
  params: { apikey: process.env.RT_TOKEN },
  transport: WebSocket,
  heartbeatIntervalMs: 500,
  reconnectAfterMs: () => 200,
})
setTimeout(() => { out({ timeout: true }); process.exit(1) }, Number(process.env.RT_TIMEOUT_MS ?? '30000'))

// --- the lines a dashboard developer adds -------------------------------------------------
const changes = { event: '*', schema: 'public', table: process.env.RT_TABLE ?? 'alerts', tx_end: true }
let pending = []
let applied = 0
client
  .channel('dashboard')
  .on('postgres_changes', changes, (p) => pending.push(p))
  .on('tx_end', {}, (t) => {
    const ids = pending.map((p) => (p.new && p.new.id) ?? p.old.id)
    pending = []
    changes.resume_from = t.position // re-sent by realtime-js on its next automatic rejoin
    applied += ids.length
    out({ applied: ids, position: t.position })
    if (applied >= count) { out({ done: true, applied }); process.exit(0) }
  })
  .on('system', {}, (s) => {
    if (s.extension === 'postgres_changes') pending = [] // (re)joined: replay starts after resume_from
    out({ system: s })
  })
  .subscribe((status) => out({ status }))
