// Drive the official @supabase/realtime-js client for broadcast and presence, controlled over
// stdin/stdout JSON lines (one object per line both ways). Used by test_broadcast_presence.py.
//
// Environment:
//   RT_URL           base URL, e.g. ws://127.0.0.1:4000/realtime/v1 (required)
//   RT_TOKEN         JWT sent as the apikey param (required)
//   RT_ACCESS_TOKEN  optional: client.setAuth(token) before anything (join payload + REST Authorization)
//   RT_VSN           "1.0.0" | "2.0.0"; unset = client default (2.0.0: broadcasts go as binary kind 3)
//   RT_TIMEOUT_MS    push / join / REST timeout (default 5000)
//   RT_HEARTBEAT_MS  heartbeat interval (default: the client's 25000)
//
// Commands (stdin), every one may carry an "id" that its result line repeats:
//   {"cmd":"join","channel":"room","config":{"broadcast":{"self":true,"ack":true},
//        "presence":{"key":"k"},"private":false},"presence":true,"rejoin":false}
//        presence: attach presence sync/join/leave listeners (this enables presence on the join).
//        rejoin: false (default) removes the channel after a CHANNEL_ERROR so that the client does
//        not retry the join on its own; true keeps realtime-js's own rejoin loop.
//   {"cmd":"send","channel":"room","event":"e","payload":{...}}         channel.send() broadcast
//   {"cmd":"send_binary","channel":"room","event":"e","b64":"..."}      payload is an ArrayBuffer
//   {"cmd":"track","channel":"room","meta":{...}}  /  {"cmd":"untrack","channel":"room"}
//   {"cmd":"state","channel":"room"}                                   prints presenceState()
//   {"cmd":"leave","channel":"room"}                                   removeChannel()
//   {"cmd":"http_send","channel":"room","event":"e","payload":{...}|"b64":"...","private":false}
//        channel.httpSend(); a temporary (never subscribed) channel when "room" is not joined here
//   {"cmd":"rest_send","channel":"room","event":"e","payload":{...},"private":false}
//        channel.send() on a never-subscribed channel: realtime-js's implicit REST fallback
//   {"cmd":"exit"}                                                     leave everything, exit 0
//
// Output (stdout):
//   {"ev":"ready","vsn":"2.0.0","endpoint":"..."}
//   {"ev":"status","channel","join","status","error"?}   join: the id of the join command
//   {"ev":"broadcast","channel","event","payload"|"b64","meta"?,"wire":"binary"|"text","kind"?}
//        b64 when the payload arrived as an ArrayBuffer; wire/kind describe the frame it came in
//   {"ev":"presence","channel","kind":"sync"|"join"|"leave","key"?,"presences"?,"state":{...}}
//   {"ev":"system","channel","payload":{...}}            every system event (channel.on('system'))
//   {"ev":"result","id","cmd","result"} / {"ev":"result","id","cmd","error"}
//   {"ev":"sent","wire":"binary"|"text","kind"?,"event"?}       every frame the client writes
//        that is not a heartbeat (so tests can see realtime-js really sent kind 3)
// The script exits by itself when stdin closes, and after RT_LIFETIME_MS (default 120000).

import readline from 'node:readline'
import realtime from '@supabase/realtime-js'
import WebSocket from 'ws'

const { RealtimeClient, RealtimeChannel } = realtime

const url = process.env.RT_URL || ''
const apikey = process.env.RT_TOKEN || ''
const timeoutMs = Number(process.env.RT_TIMEOUT_MS || '5000')
const lifetimeMs = Number(process.env.RT_LIFETIME_MS || '120000')

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

if (!url || !apikey) {
  process.stderr.write('room.mjs: RT_URL and RT_TOKEN are required\n')
  process.exit(2)
}

const options = { params: { apikey }, transport: WebSocket, timeout: timeoutMs }
if (process.env.RT_VSN) options.vsn = process.env.RT_VSN
if (Number(process.env.RT_HEARTBEAT_MS || '0') > 0) options.heartbeatIntervalMs = Number(process.env.RT_HEARTBEAT_MS)
const client = new RealtimeClient(url, options)
if (process.env.RT_ACCESS_TOKEN) await client.setAuth(process.env.RT_ACCESS_TOKEN)

// Record the kind of frame each message arrived in / left in (binary kind 3/4 or text).
const sock = client.socketAdapter.getSocket()
let inbound = { wire: 'text' }
const decode = sock.decode
sock.decode = (raw, cb) => {
  inbound = isBinary(raw) ? { wire: 'binary', kind: new Uint8Array(raw)[0] } : { wire: 'text' }
  return decode.call(sock, raw, cb)
}
const encode = sock.encode
sock.encode = (msg, cb) =>
  encode.call(sock, msg, (frame) => {
    if (msg.topic !== 'phoenix') {
      const line = { ev: 'sent', event: msg.event, topic: msg.topic }
      if (isBinary(frame)) Object.assign(line, { wire: 'binary', kind: new Uint8Array(frame)[0] })
      else line.wire = 'text'
      out(line)
    }
    return cb(frame)
  })

function isBinary(x) {
  return x instanceof ArrayBuffer || x?.constructor?.name === 'ArrayBuffer'
}

function toArrayBuffer(b64) {
  const buf = Buffer.from(b64, 'base64')
  const u8 = new Uint8Array(buf.length)
  u8.set(buf)
  return u8.buffer
}

const channels = new Map() // name -> RealtimeChannel joined by a "join" command

function errText(e) {
  return String(e && e.message ? e.message : e)
}

function withTimeout(promise, ms, label) {
  return Promise.race([
    promise,
    new Promise((resolve) => setTimeout(() => resolve(label), ms)),
  ])
}

function join(cmd) {
  const name = cmd.channel
  if (channels.has(name)) throw new Error(`already joined ${name}`)
  const ch = client.channel(name, { config: cmd.config || {} })
  channels.set(name, ch)
  ch.on('broadcast', { event: '*' }, (msg) => {
    const line = { ev: 'broadcast', channel: name, event: msg.event, ...inbound }
    if (isBinary(msg.payload)) line.b64 = Buffer.from(msg.payload).toString('base64')
    else line.payload = msg.payload
    if (msg.meta !== undefined) line.meta = msg.meta
    out(line)
  })
  ch.on('system', {}, (payload) => out({ ev: 'system', channel: name, payload }))
  if (cmd.presence) {
    const state = () => ch.presenceState()
    ch.on('presence', { event: 'sync' }, () => out({ ev: 'presence', channel: name, kind: 'sync', state: state() }))
    ch.on('presence', { event: 'join' }, ({ key, newPresences }) =>
      out({ ev: 'presence', channel: name, kind: 'join', key, presences: newPresences, state: state() }),
    )
    ch.on('presence', { event: 'leave' }, ({ key, leftPresences }) =>
      out({ ev: 'presence', channel: name, kind: 'leave', key, presences: leftPresences, state: state() }),
    )
  }
  ch.subscribe((status, err) => {
    const line = { ev: 'status', channel: name, join: cmd.id ?? null, status }
    if (err) line.error = errText(err)
    out(line)
    if (status === 'CHANNEL_ERROR' && !cmd.rejoin && channels.get(name) === ch) {
      channels.delete(name)
      client.removeChannel(ch).catch(() => {})
    }
  })
  return 'joining'
}

function joined(name) {
  const ch = channels.get(name)
  if (!ch) throw new Error(`not joined: ${name}`)
  return ch
}

// A channel object for REST sends: the joined one, or a temporary one that is never subscribed
// (and is not registered with the client, so it never joins).
async function withRestChannel(cmd, fn) {
  const existing = channels.get(cmd.channel)
  if (existing) return await fn(existing)
  const ch = new RealtimeChannel(`realtime:${cmd.channel}`, { config: { private: !!cmd.private } }, client)
  try {
    return await fn(ch)
  } finally {
    ch.teardown()
    sock.remove(ch.channelAdapter.getChannel())
  }
}

async function run(cmd) {
  switch (cmd.cmd) {
    case 'join':
      return join(cmd)
    case 'send':
      return await joined(cmd.channel).send({ type: 'broadcast', event: cmd.event, payload: cmd.payload })
    case 'send_binary':
      return await joined(cmd.channel).send({
        type: 'broadcast',
        event: cmd.event,
        payload: toArrayBuffer(cmd.b64),
      })
    case 'track':
      return await joined(cmd.channel).track(cmd.meta || {})
    case 'untrack':
      return await joined(cmd.channel).untrack()
    case 'state':
      return joined(cmd.channel).presenceState()
    case 'leave': {
      const ch = joined(cmd.channel)
      channels.delete(cmd.channel)
      return await withTimeout(client.removeChannel(ch), timeoutMs + 1000, 'no reply')
    }
    case 'http_send': {
      const payload = cmd.b64 !== undefined ? toArrayBuffer(cmd.b64) : cmd.payload
      return await withRestChannel(cmd, (ch) => ch.httpSend(cmd.event, payload))
    }
    case 'rest_send':
      return await withRestChannel(cmd, (ch) => ch.send({ type: 'broadcast', event: cmd.event, payload: cmd.payload }))
    case 'exit':
      await shutdown(0)
      return null
    default:
      throw new Error(`unknown command ${cmd.cmd}`)
  }
}

let stopping = false
async function shutdown(code) {
  if (stopping) return
  stopping = true
  await withTimeout(
    client.removeAllChannels().catch(() => null),
    3000,
    null,
  )
  process.exit(code)
}

setTimeout(() => {
  process.stderr.write('room.mjs: lifetime exceeded\n')
  process.exit(3)
}, lifetimeMs).unref()

out({ ev: 'ready', vsn: client.vsn, endpoint: client.endpointURL() })

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (text) => {
  if (!text.trim()) return
  let cmd
  try {
    cmd = JSON.parse(text)
  } catch (e) {
    out({ ev: 'result', id: null, cmd: null, error: `bad json: ${errText(e)}` })
    return
  }
  // Commands run concurrently; the results carry the command's id.
  Promise.resolve()
    .then(() => run(cmd))
    .then(
      (result) => out({ ev: 'result', id: cmd.id ?? null, cmd: cmd.cmd, result: result ?? null }),
      (e) => out({ ev: 'result', id: cmd.id ?? null, cmd: cmd.cmd, error: errText(e) }),
    )
})
rl.on('close', () => shutdown(0))
