#!/usr/bin/env node
// End-to-end recovery scenario for Herald using the official centrifuge-js SDK.
//
//   1. connect anonymously, subscribe to HERALD_CHANNEL (recoverable + positioned)
//   2. publish n=1..3 through the HTTP API, expect them live with contiguous offsets
//   3. force a reconnect (API disconnect, code 3011); while the client is away,
//      publish n=4..7
//   4. expect the resubscribe to report wasRecovering && recovered, and exactly
//      n=4..7 replayed in order with contiguous offsets; then publish n=8 live and
//      expect it right after n=7 (proves there were no duplicates)
//
// Env: HERALD_WS_URL, HERALD_API_URL, HERALD_API_KEY, HERALD_CHANNEL
//      (optional) HERALD_E2E_TIMEOUT: overall timeout in seconds, default 30;
//      HERALD_PROTOCOL=protobuf: the SDK's Protobuf build.
// Exits 0 on success, 1 on a failed check or timeout, 2 on bad configuration.
'use strict';

// HERALD_PROTOCOL=protobuf runs the same scenario with the SDK's Protobuf build.
const PROTOBUF = process.env.HERALD_PROTOCOL === 'protobuf';
const { Centrifuge } = require(PROTOBUF ? 'centrifuge/build/protobuf' : 'centrifuge');
const WebSocket = require('ws');
const { readEnv, CheckError, check, within, apiCall } = require('./common');

const T0 = Date.now();
const elapsed = () => Date.now() - T0;

// ---------------------------------------------------------------- config ---

const cfg = readEnv('recover.js', {
  usage: 'HERALD_WS_URL=ws://127.0.0.1:PORT/connection/websocket HERALD_API_URL=http://127.0.0.1:PORT/api ' +
    'HERALD_API_KEY=... HERALD_CHANNEL=ns:chan node recover.js',
  defaultTimeoutSec: 30,
});

// --------------------------------------------------------------- summary ---

const summary = {
  sdk: 'centrifuge-js',
  ok: false,
  phase: 'init',
  channel: cfg.channel,
  clientIds: [],
  events: [], // compact event log for debugging
  initialPosition: null,
  published: [], // {n, offset, epoch} from the API
  received: [], // {n, offset, afterResubscribe}
  resubscribe: null,
  error: null,
};

function log(ev) {
  summary.events.push(`${elapsed()}ms ${ev}`);
}

let client = null;
let finished = false;

function finish(ok, message) {
  if (finished) return;
  finished = true;
  summary.ok = ok;
  summary.elapsedMs = elapsed();
  if (!ok) summary.error = message;
  try {
    if (client) client.disconnect();
  } catch (_) { /* ignore */ }
  if (!ok) console.error(`FAIL [${summary.phase}]: ${message}`);
  console.log(JSON.stringify(summary));
  if (ok) console.log('PASS: recovery scenario (centrifuge-js)');
  process.exit(ok ? 0 : 1);
}

const hardTimer = setTimeout(() => {
  finish(false, `overall timeout of ${cfg.timeoutMs} ms exceeded`);
}, cfg.timeoutMs);

process.on('unhandledRejection', (e) => finish(false, `unhandled rejection: ${e && e.stack || e}`));
process.on('uncaughtException', (e) => finish(false, `uncaught exception: ${e && e.stack || e}`));

// --------------------------------------------------------------- helpers ---

// A one-shot event latch: `next(pred)` resolves with the next event satisfying pred.
class Latch {
  constructor() { this.waiters = []; }
  next(pred = () => true) {
    return new Promise((resolve) => this.waiters.push({ pred, resolve }));
  }
  fire(value) {
    const keep = [];
    for (const w of this.waiters) {
      if (w.pred(value)) w.resolve(value); else keep.push(w);
    }
    this.waiters = keep;
  }
}

// Publication queue: every publication is kept in order; take() pops the next one.
class PubQueue {
  constructor() { this.items = []; this.waiters = []; }
  push(p) {
    const w = this.waiters.shift();
    if (w) w(p); else this.items.push(p);
  }
  take() {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  get pending() { return this.items.length; }
}

const api = (method, body) => apiCall(cfg, method, body);

async function publish(n) {
  const result = await api('publish', { channel: cfg.channel, data: { n } });
  check(Number.isInteger(result.offset) && result.offset > 0,
    `publish n=${n}: result has no positive integer offset (${JSON.stringify(result)}); ` +
    'the namespace of HERALD_CHANNEL must have history enabled');
  check(typeof result.epoch === 'string' && result.epoch.length > 0,
    `publish n=${n}: result has no epoch (${JSON.stringify(result)})`);
  const rec = { n, offset: result.offset, epoch: result.epoch };
  summary.published.push(rec);
  log(`api publish n=${n} -> offset ${result.offset}`);
  return rec;
}

// ------------------------------------------------------------------ main ---

async function main() {
  client = new Centrifuge(cfg.wsUrl, {
    websocket: WebSocket,
    // Long enough that the client is surely away while we publish n=4..7.
    minReconnectDelay: 1500,
    maxReconnectDelay: 2000,
    timeout: 5000,
  });

  const connected = new Latch();
  const connecting = new Latch();
  const disconnected = new Latch();
  const subscribed = new Latch();
  const pubs = new PubQueue();
  let lastError = 'none';
  let subscribedCount = 0;
  let subscribedTwice = false;

  client.on('connecting', (ctx) => { log(`connecting code=${ctx.code} reason=${ctx.reason}`); connecting.fire(ctx); });
  client.on('connected', (ctx) => {
    log(`connected client=${ctx.client} transport=${ctx.transport}`);
    summary.clientIds.push(ctx.client);
    connected.fire(ctx);
  });
  client.on('disconnected', (ctx) => { log(`disconnected code=${ctx.code} reason=${ctx.reason}`); disconnected.fire(ctx); });
  client.on('error', (ctx) => {
    lastError = `${ctx.type}: ${ctx.error && ctx.error.code} ${ctx.error && ctx.error.message}`;
    log(`client error ${lastError}`);
  });

  const sub = client.newSubscription(cfg.channel, { recoverable: true, positioned: true });
  sub.on('subscribing', (ctx) => log(`subscribing code=${ctx.code} reason=${ctx.reason}`));
  sub.on('subscribed', (ctx) => {
    subscribedCount += 1;
    if (subscribedCount >= 2) subscribedTwice = true;
    log(`subscribed wasRecovering=${ctx.wasRecovering} recovered=${ctx.recovered} ` +
      `hasRecoveredPublications=${ctx.hasRecoveredPublications} pos=${JSON.stringify(ctx.streamPosition)}`);
    subscribed.fire(ctx);
  });
  sub.on('unsubscribed', (ctx) => {
    log(`unsubscribed code=${ctx.code} reason=${ctx.reason}`);
    if (!finished && summary.phase !== 'disconnect') {
      finish(false, `subscription to ${cfg.channel} ended: unsubscribed code=${ctx.code} reason=${ctx.reason}`);
    }
  });
  sub.on('error', (ctx) => {
    lastError = `subscription ${ctx.type}: ${ctx.error && ctx.error.code} ${ctx.error && ctx.error.message}`;
    log(lastError);
  });
  sub.on('publication', (ctx) => {
    // In Protobuf, data is the JSON text's bytes.
    const data = PROTOBUF ? JSON.parse(Buffer.from(ctx.data).toString('utf8')) : ctx.data;
    const n = data && data.n;
    summary.received.push({ n, offset: ctx.offset, afterResubscribe: subscribedTwice });
    log(`publication n=${n} offset=${ctx.offset}`);
    pubs.push({ data, offset: ctx.offset, afterResubscribe: subscribedTwice });
  });

  // ---- 1. connect + subscribe
  summary.phase = 'connect+subscribe';
  const firstConnected = connected.next();
  const firstSubscribed = subscribed.next();
  sub.subscribe();
  client.connect();
  const cctx = await within(firstConnected, 10000, `connection to ${cfg.wsUrl}`, () => `last error: ${lastError}`);
  const clientId = cctx.client;
  check(typeof clientId === 'string' && clientId.length > 0, `connected event has no client id: ${JSON.stringify(cctx)}`);
  const sctx = await within(firstSubscribed, 5000, `subscribed event for ${cfg.channel}`, () => `last error: ${lastError}`);
  check(sctx.recoverable === true, `first subscribe: recoverable=${sctx.recoverable}, expected true (namespace must allow recovery)`);
  check(sctx.positioned === true, `first subscribe: positioned=${sctx.positioned}, expected true (namespace must allow positioning)`);
  check(sctx.wasRecovering === false, `first subscribe: wasRecovering=${sctx.wasRecovering}, expected false`);
  check(sctx.streamPosition && typeof sctx.streamPosition.epoch === 'string' && sctx.streamPosition.epoch !== '',
    `first subscribe: missing stream position/epoch: ${JSON.stringify(sctx.streamPosition)}`);
  const epoch = sctx.streamPosition.epoch;
  let lastOffset = sctx.streamPosition.offset;
  summary.initialPosition = { offset: lastOffset, epoch };

  // ---- 2. three live publications
  summary.phase = 'live publications n=1..3';
  for (let n = 1; n <= 3; n++) {
    const rec = await publish(n);
    check(rec.epoch === epoch, `publish n=${n}: API epoch ${rec.epoch} != subscribe epoch ${epoch}`);
    const p = await within(pubs.take(), 5000, `publication n=${n}`);
    check(p.data && p.data.n === n, `live publication: expected data {"n":${n}}, got ${JSON.stringify(p.data)}`);
    check(p.offset === lastOffset + 1,
      `live publication n=${n}: offset ${p.offset}, expected ${lastOffset + 1} (contiguous after ${lastOffset})`);
    check(p.offset === rec.offset, `live publication n=${n}: offset ${p.offset} != API offset ${rec.offset}`);
    lastOffset = p.offset;
  }
  const offsetBeforeDisconnect = lastOffset;

  // ---- 3. force reconnect, publish while away
  summary.phase = 'force reconnect';
  const gone = connecting.next((ctx) => ctx.code === 3011);
  const reconnected = connected.next();
  const resubscribed = subscribed.next();
  let reconnectedEarly = false;
  reconnected.then(() => { reconnectedEarly = true; });
  const dres = await api('disconnect', {
    user: '',
    client: clientId,
    disconnect: { code: 3011, reason: 'force reconnect' },
  });
  log(`api disconnect -> ${JSON.stringify(dres)}`);
  const gctx = await within(gone, 5000, 'the connecting event with code 3011 after /api/disconnect',
    () => `client state ${client.state}`);
  check(gctx.code === 3011, `connecting code ${gctx.code}, expected 3011`);

  summary.phase = 'publish while away n=4..7';
  const missed = [];
  for (let n = 4; n <= 7; n++) {
    check(!reconnectedEarly, `client reconnected before n=${n} was published; the test needs the client away ` +
      '(reconnect delay 1.5-2 s) - publishing too slow?');
    missed.push(await publish(n));
  }
  check(!reconnectedEarly, 'client reconnected before all of n=4..7 were published; recovery not exercised');
  check(pubs.pending === 0, `received ${pubs.pending} publication(s) while disconnected: ${JSON.stringify(pubs.items)}`);
  missed.forEach((rec, i) => {
    check(rec.epoch === epoch, `publish n=${rec.n}: epoch changed from ${epoch} to ${rec.epoch}`);
    check(rec.offset === offsetBeforeDisconnect + 1 + i,
      `publish n=${rec.n}: API offset ${rec.offset}, expected ${offsetBeforeDisconnect + 1 + i}`);
  });

  // ---- 4. resubscribe with recovery
  summary.phase = 'reconnect+recover';
  const c2 = await within(reconnected, 8000, 'reconnect after the forced disconnect', () => `last error: ${lastError}`);
  const r = await within(resubscribed, 5000, 'resubscribe after reconnect', () => `last error: ${lastError}`);
  summary.resubscribe = {
    newClient: c2.client,
    wasRecovering: r.wasRecovering,
    recovered: r.recovered,
    hasRecoveredPublications: r.hasRecoveredPublications,
    streamPosition: r.streamPosition,
  };
  check(r.wasRecovering === true, `resubscribe: wasRecovering=${r.wasRecovering}, expected true`);
  check(r.recovered === true, `resubscribe: recovered=${r.recovered}, expected true`);
  check(r.hasRecoveredPublications === true,
    `resubscribe: hasRecoveredPublications=${r.hasRecoveredPublications}, expected true (missed n=4..7 must come in the subscribe reply)`);
  check(r.streamPosition && r.streamPosition.epoch === epoch,
    `resubscribe: epoch ${r.streamPosition && r.streamPosition.epoch}, expected unchanged ${epoch}`);
  check(r.streamPosition.offset === offsetBeforeDisconnect,
    `resubscribe: recovered reply offset ${r.streamPosition.offset}, expected the client's position ` +
    `${offsetBeforeDisconnect} (protocol §8.2: recovered => offset echoes the request offset)`);

  for (let n = 4; n <= 7; n++) {
    const p = await within(pubs.take(), 5000, `recovered publication n=${n}`);
    check(p.afterResubscribe, `publication ${JSON.stringify(p.data)} arrived before the resubscribe`);
    check(p.data && p.data.n === n, `recovered publication: expected data {"n":${n}}, got ${JSON.stringify(p.data)}`);
    check(p.offset === lastOffset + 1,
      `recovered publication n=${n}: offset ${p.offset}, expected ${lastOffset + 1} (contiguous)`);
    lastOffset = p.offset;
  }

  // ---- 5. one more live publication: the next thing we see must be n=8 (no duplicates)
  summary.phase = 'live publication after recovery';
  const rec8 = await publish(8);
  const p8 = await within(pubs.take(), 5000, 'live publication n=8 after recovery');
  check(p8.data && p8.data.n === 8,
    `after recovered n=7 expected live n=8, got ${JSON.stringify(p8.data)} offset ${p8.offset} (duplicate or stray publication)`);
  check(p8.offset === lastOffset + 1 && p8.offset === rec8.offset,
    `live publication n=8: offset ${p8.offset}, expected ${lastOffset + 1} (API said ${rec8.offset})`);
  lastOffset = p8.offset;
  check(summary.clientIds.length === 2, `expected exactly 2 connections, saw ${summary.clientIds.length}`);

  // ---- clean disconnect
  summary.phase = 'disconnect';
  const bye = disconnected.next();
  client.disconnect();
  await within(bye, 2000, 'disconnected event');
  client = null;
  clearTimeout(hardTimer);
  finish(true);
}

main().catch((e) => {
  finish(false, e instanceof CheckError ? e.message : `unexpected error: ${e && e.stack || e}`);
});
