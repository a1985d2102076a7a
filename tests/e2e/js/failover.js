#!/usr/bin/env node
// Failover through a load balancer with the official centrifuge-js SDK (run by tests/load_balancer.rs).
//
//   1. connect through HERALD_WS_URL (nginx in front of two Herald nodes), subscribe to HERALD_CHANNEL
//      (recoverable + positioned)
//   2. publish n=1..3 through HERALD_API_URL, expect them live with contiguous offsets
//   3. print "STEP failover <client id>": the test freezes the node this client is on, publishes n=4..7
//      through the other node and kills the frozen one (kill -9)
//   4. the SDK reconnects by itself through nginx; expect the resubscribe to report wasRecovering and
//      recovered, and exactly n=4..7 replayed in order with contiguous offsets; then publish n=8 and
//      expect it live right after n=7 (no duplicates)
//
// Env: HERALD_WS_URL, HERALD_API_URL, HERALD_API_KEY, HERALD_CHANNEL; HERALD_E2E_TIMEOUT (s, default 60).
// Prints PASS and exits 0 on success; exits 1 on a failed check or timeout.
'use strict';

const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');
const { Queue } = require('./common');

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`failover.js: ${name} is not set`);
    process.exit(2);
  }
  return value;
};
const cfg = {
  wsUrl: env('HERALD_WS_URL'),
  apiUrl: env('HERALD_API_URL').replace(/\/+$/, ''),
  apiKey: env('HERALD_API_KEY'),
  channel: env('HERALD_CHANNEL'),
  timeoutMs: Number(process.env.HERALD_E2E_TIMEOUT || '60') * 1000,
};

const T0 = Date.now();
const events = [];
const log = (line) => events.push(`${Date.now() - T0}ms ${line}`);
let client = null;

function finish(ok, message) {
  if (client) client.disconnect();
  console.log(JSON.stringify({ sdk: 'centrifuge-js', ok, error: message || null, events }));
  if (ok) console.log('PASS: failover through the load balancer (centrifuge-js)');
  else console.error(`FAIL: ${message}`);
  process.exit(ok ? 0 : 1);
}
setTimeout(() => finish(false, `overall timeout of ${cfg.timeoutMs} ms`), cfg.timeoutMs).unref();
process.on('unhandledRejection', (e) => finish(false, `unhandled rejection: ${e && e.stack || e}`));

function check(condition, message) {
  if (!condition) throw new Error(message);
}


// Publishes {n} with an idempotency key, retrying (the balancer may try a dead node first).
async function publish(n) {
  let lastError;
  for (let attempt = 0; attempt < 20; attempt += 1) {
    try {
      const response = await fetch(`${cfg.apiUrl}/publish`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-API-Key': cfg.apiKey },
        body: JSON.stringify({ channel: cfg.channel, data: { n }, idempotency_key: `${cfg.channel}-${n}` }),
        signal: AbortSignal.timeout(10000),
      });
      const body = await response.json();
      if (response.status === 200 && body.result && body.result.offset > 0) {
        log(`published n=${n} offset=${body.result.offset}`);
        return body.result;
      }
      lastError = `HTTP ${response.status} ${JSON.stringify(body)}`;
    } catch (e) {
      lastError = String(e && e.cause || e);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`publish n=${n} failed: ${lastError}`);
}

async function main() {
  client = new Centrifuge(cfg.wsUrl, {
    websocket: WebSocket, minReconnectDelay: 200, maxReconnectDelay: 2000, timeout: 10000,
  });
  const subscribed = new Queue();
  const publications = new Queue();
  const connected = new Queue();
  let subscriptions = 0;
  client.on('connected', (ctx) => { log(`connected ${ctx.client}`); connected.push(ctx); });
  client.on('connecting', (ctx) => log(`connecting code=${ctx.code} reason=${ctx.reason}`));
  client.on('error', (ctx) => log(`error ${ctx.type} ${ctx.error && ctx.error.message}`));
  const sub = client.newSubscription(cfg.channel, { recoverable: true, positioned: true });
  sub.on('subscribed', (ctx) => {
    subscriptions += 1;
    log(`subscribed wasRecovering=${ctx.wasRecovering} recovered=${ctx.recovered} ` +
      `pos=${JSON.stringify(ctx.streamPosition)}`);
    subscribed.push(ctx);
  });
  sub.on('subscribing', (ctx) => log(`subscribing code=${ctx.code} reason=${ctx.reason}`));
  sub.on('unsubscribed', (ctx) => finish(false, `unsubscribed code=${ctx.code} reason=${ctx.reason}`));
  sub.on('publication', (ctx) => {
    log(`publication n=${ctx.data && ctx.data.n} offset=${ctx.offset}`);
    publications.push({ n: ctx.data && ctx.data.n, offset: ctx.offset, subscriptions });
  });
  sub.subscribe();
  client.connect();

  const first = await connected.take('the first connection');
  const initial = await subscribed.take('the first subscribe');
  check(initial.recoverable && initial.positioned, 'the subscription is not recoverable and positioned');
  const epoch = initial.streamPosition.epoch;
  let last = initial.streamPosition.offset;

  for (let n = 1; n <= 3; n += 1) {
    const result = await publish(n);
    const p = await publications.take(`live n=${n}`);
    check(p.n === n && p.offset === last + 1 && p.offset === result.offset,
      `live: expected n=${n} at offset ${last + 1}, got ${JSON.stringify(p)}`);
    last = p.offset;
  }

  console.log(`STEP failover ${first.client}`);
  const again = await subscribed.take('the resubscribe after the node was killed');
  check(again.wasRecovering && again.recovered, `resubscribe not recovered: ${JSON.stringify(again)}`);
  check(again.streamPosition.epoch === epoch, `epoch changed from ${epoch}: ${JSON.stringify(again)}`);
  const second = await connected.take('the reconnection');
  check(second.client !== first.client, 'the same client id after reconnecting');
  for (let n = 4; n <= 7; n += 1) {
    const p = await publications.take(`recovered n=${n}`);
    check(p.subscriptions === 2 && p.n === n && p.offset === last + 1,
      `recovered: expected n=${n} at offset ${last + 1} after the resubscribe, got ${JSON.stringify(p)}`);
    last = p.offset;
  }
  await publish(8);
  const p8 = await publications.take('live n=8');
  check(p8.n === 8 && p8.offset === last + 1, `after n=7 expected live n=8, got ${JSON.stringify(p8)}`);
  finish(true);
}

main().catch((e) => finish(false, e && e.message || String(e)));
