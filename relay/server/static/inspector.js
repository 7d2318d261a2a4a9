// The relay inspector: connects with the vendored @supabase/realtime-js, as an application would.
// The token stays in the page (typed, or given as #token=... in the URL fragment, which browsers
// never send to the server); counts come from /health, the table list from /inspector/tables.
import { RealtimeClient } from './realtime-js.js'

const $ = (id) => document.getElementById(id)
const MAX_ROWS = 200
let client = null
let channel = null

function say(text) {
  $('messages').textContent = text
}

function setStatus(state) {
  const el = $('status')
  if (el.dataset.state !== state) {
    el.dataset.state = state
    el.textContent = state
  }
}

function base() {
  return location.origin.replace(/^http/, 'ws') + '/realtime/v1'
}

async function loadTables(token) {
  const list = $('tables')
  list.replaceChildren()
  try {
    const res = await fetch('inspector/tables', { headers: { Authorization: `Bearer ${token}` } })
    const body = await res.json()
    if (!res.ok) {
      say(`table list: ${body.error || res.status} (type schema.table yourself)`)
      return
    }
    for (const t of body.tables) {
      const opt = document.createElement('option')
      opt.value = t
      list.append(opt)
    }
    if (!$('table').value && body.tables.length) $('table').value = body.tables[0]
  } catch (e) {
    say(`table list: ${e}`)
  }
}

function connect() {
  const token = $('token').value.trim()
  if (!token) {
    say('paste a token first')
    return
  }
  if (client) {
    client.setAuth(token) // a refreshed token for a running connection (and its channels)
    say('token updated')
    return
  }
  client = new RealtimeClient(base(), { params: { apikey: token } })
  client.connect()
  setStatus('connecting')
  loadTables(token)
}

function cell(text, cls) {
  const td = document.createElement('td')
  td.textContent = text
  if (cls) td.className = cls
  return td
}

function addChange(p) {
  const tr = document.createElement('tr')
  tr.dataset.type = p.eventType
  const rec = p.eventType === 'DELETE' ? p.old : p.new
  const json = JSON.stringify(rec)
  tr.append(
    cell(p.commit_timestamp),
    cell(p.eventType, 'type'),
    cell(`${p.schema}.${p.table}`),
    cell(json.length > 400 ? json.slice(0, 400) + '…' : json, 'rec'),
    cell(p.errors ? p.errors.join('; ') : ''),
  )
  const body = $('changes')
  body.prepend(tr)
  while (body.rows.length > MAX_ROWS) body.lastElementChild.remove()
}

function watch() {
  if (!client) connect()
  if (!client) return
  const [schema, table] = $('table').value.trim().includes('.')
    ? $('table').value.trim().split('.', 2)
    : ['public', $('table').value.trim()]
  if (!table) {
    say('pick a table')
    return
  }
  if (channel) client.removeChannel(channel)
  const params = { event: $('event').value, schema, table }
  const filter = $('filter').value.trim()
  if (filter) params.filter = filter
  $('changes').replaceChildren()
  channel = client
    .channel(`inspector:${schema}.${table}`)
    .on('postgres_changes', params, addChange)
    .on('system', {}, (p) => {
      if (p && p.code === 'token_expiring') say(`${p.message} (paste a new token and press Connect)`)
      else if (p && p.status === 'error') say(p.message)
    })
    .subscribe((status, err) => {
      $('channel-status').textContent = err ? `${status}: ${err.message}` : status
      $('channel-status').dataset.status = status
    })
}

async function pollCounts() {
  try {
    const res = await fetch('health', { cache: 'no-store' })
    const h = await res.json()
    $('count-connections').textContent = h.connections
    $('count-channels').textContent = h.channels
    $('count-changes').textContent = h.changes_seen
    $('count-frames').textContent = h.frames_queued
    $('count-quota').textContent = Object.values(h.quota_hits || {}).reduce((a, b) => a + b, 0)
    $('count-stream').textContent = h.status
  } catch (e) {
    $('count-stream').textContent = 'unreachable'
  }
}

function pollStatus() {
  if (!client) return setStatus('disconnected')
  const state = client.connectionState()
  setStatus(state === 'open' ? 'connected' : state === 'connecting' ? 'connecting' : 'error')
}

$('connect').addEventListener('click', connect)
$('subscribe').addEventListener('click', watch)
const fragment = new URLSearchParams(location.hash.slice(1))
if (fragment.get('token')) {
  $('token').value = fragment.get('token')
  history.replaceState(null, '', location.pathname + location.search)
  if (fragment.get('table')) $('table').value = fragment.get('table')
  connect()
}
setInterval(pollStatus, 300)
setInterval(pollCounts, 1000)
pollCounts()
