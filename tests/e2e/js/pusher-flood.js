#!/usr/bin/env node
// A flooding pusher-js client is told why it was dropped (run by tests/pusher_sdk.rs against a Herald whose
// command rate is 1/s with a burst of 1, closing after 3,000 refused messages in a row):
//   pusher-js 8.6 connects, then sends 5,000 events of 4 KB in one go (20 MB, which ws buffers and writes out
//   while the server reads); the first 3,000 past the rate get pusher:error 4301, then the server closes the
//   connection with 4100 (over capacity: reconnect after a backoff). pusher-js must report that close as a
//   PusherError with code 4100 — not 1006, which is what it reports when the connection is reset under it.
//
// Env: HERALD_PUSHER_HOST, HERALD_PUSHER_PORT, HERALD_PUSHER_APP_ID, HERALD_PUSHER_KEY, HERALD_PUSHER_SECRET;
//      HERALD_E2E_TIMEOUT (s, default 60).
// Prints the events log as JSON, then PASS and exits 0 on success; FAIL and exit 1 on a failed check or timeout;
// exit 2 on a missing or malformed variable.
'use strict';

const PusherJs = require('pusher-js');

const PusherClient = PusherJs.default || PusherJs;

const { pusherConfig, startRun, disconnecting, clientOptions, check, Queue } = require('./pusher-harness');

const cfg = pusherConfig('pusher-flood.js');

const clients = [];
const { log, finish } = startRun({
  sdk: 'pusher-js',
  passLine: 'a flooding pusher-js client gets close code 4100',
  timeoutMs: cfg.timeoutMs,
  teardown: disconnecting(clients),
});

async function main() {
  const client = new PusherClient(cfg.key, clientOptions(cfg));
  clients.push(client);
  const states = new Queue();
  const closes = new Queue();
  let refused = 0;
  client.connection.bind('state_change', ({ previous, current }) => {
    log(`state ${previous} -> ${current}`);
    states.push(current);
  });
  client.connection.bind('error', (error) => {
    const code = error && error.data && error.data.code;
    if (code === 4301) {
      refused += 1;
      return;
    }
    // A transport error carries the socket's error event, which does not serialise.
    const detail = error && error.type === 'WebSocketError'
      ? String(error.error && (error.error.message || error.error.type) || error.error)
      : JSON.stringify(error && error.data);
    log(`error ${error && error.type} ${detail}`);
    if (error && error.type === 'PusherError') closes.push(code);
  });
  for (let state = client.connection.state; state !== 'connected';) {
    state = await states.take('connected');
    check(['connecting', 'connected'].includes(state), `expected to connect, got ${state}`);
  }

  const data = 'x'.repeat(4000);
  for (let i = 0; i < 5000; i += 1) client.send_event('flood', data);
  log('flood queued');

  const code = await closes.take('the close code');
  log(`closed with ${code} after ${refused} refusals`);
  check(code === 4100, `expected the close code 4100, got ${code}`);
  check(refused > 0, 'expected pusher:error 4301 replies before the close');
}

main().then(() => finish(true), (e) => finish(false, e && e.stack || String(e)));
