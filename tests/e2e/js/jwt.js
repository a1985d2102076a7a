#!/usr/bin/env node
// End-to-end JWT authentication scenario for Herald with the jwt-auth plugin, using the official
// centrifuge-js SDK. Tokens are minted here with Node's built-in crypto (no JWT library).
//
//   1. HS256 connect: the first token getToken returns is already expired -> error 109, the SDK calls
//      getToken again and connects (alice, exp = now + 3 s)
//   2. refresh: at ttl the SDK sends `refresh` with a fresh token from getToken; the connection outlives
//      the first token's exp + expired_close_delay (the server must run with expired_close_delay = 1s)
//      and a publication on HERALD_CHANNEL still arrives
//   3. subscription token: `$private:room` subscribes with a token from the subscription's getToken and
//      receives a publication; `$private:other` without a token ends unsubscribed with code 103
//   4. RS256: bob connects with an RS256 token; presence of HERALD_CHANNEL lists alice and bob
//   5. a token signed with the wrong secret -> disconnected with code 3500, no reconnect
//
// Env: HERALD_WS_URL, HERALD_API_URL, HERALD_API_KEY, HERALD_HMAC_SECRET, HERALD_RSA_PRIVATE_KEY (PEM),
//      HERALD_CHANNEL (a channel of a namespace with presence that authenticated clients may subscribe to);
//      (optional) HERALD_E2E_TIMEOUT: overall timeout in seconds, default 40.
// Exits 0 on success, 1 on a failed check or timeout, 2 on bad configuration.
'use strict';

const crypto = require('crypto');
const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');
const { readEnv, CheckError, check, within, apiCall } = require('./common');

const T0 = Date.now();
const elapsed = () => Date.now() - T0;
const nowSec = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------- config ---

function readJwtEnv() {
  const base = readEnv('jwt.js', {
    extra: ['HERALD_HMAC_SECRET', 'HERALD_RSA_PRIVATE_KEY'],
    usage: 'HERALD_WS_URL=ws://127.0.0.1:PORT/connection/websocket HERALD_API_URL=http://127.0.0.1:PORT/api ' +
      'HERALD_API_KEY=... HERALD_HMAC_SECRET=... HERALD_RSA_PRIVATE_KEY="$(cat key.pem)" HERALD_CHANNEL=chan ' +
      'node jwt.js',
    defaultTimeoutSec: 40,
  });
  let rsaKey;
  try {
    rsaKey = crypto.createPrivateKey(process.env.HERALD_RSA_PRIVATE_KEY);
  } catch (e) {
    console.error(`jwt.js: HERALD_RSA_PRIVATE_KEY is not a private key PEM: ${e && e.message}`);
    process.exit(2);
  }
  if (rsaKey.asymmetricKeyType !== 'rsa') {
    console.error(`jwt.js: HERALD_RSA_PRIVATE_KEY is a ${rsaKey.asymmetricKeyType} key, expected RSA`);
    process.exit(2);
  }
  return { ...base, hmacSecret: process.env.HERALD_HMAC_SECRET, rsaKey };
}

const cfg = readJwtEnv();

// The server's expired_close_delay (the Rust test configures 1s).
const EXPIRED_CLOSE_DELAY_MS = 1000;
// Connection token lifetime for alice: short, so that refresh happens within the test.
const CONN_TTL_SEC = 3;
// Reconnect delays: short for the 109 retry; the no-reconnect check of step 5 waits longer than the max.
const MIN_RECONNECT_DELAY_MS = 200;
const MAX_RECONNECT_DELAY_MS = 1000;

// ---------------------------------------------------------------- tokens ---

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

function hs256(claims, secret = cfg.hmacSecret) {
  const input = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${input}.${crypto.createHmac('sha256', secret).update(input).digest('base64url')}`;
}

function rs256(claims) {
  const input = `${b64url({ alg: 'RS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${input}.${crypto.sign('sha256', Buffer.from(input), cfg.rsaKey).toString('base64url')}`;
}

// --------------------------------------------------------------- summary ---

const summary = {
  sdk: 'centrifuge-js',
  scenario: 'jwt',
  ok: false,
  step: 'init',
  passed: [],
  events: [], // compact event log for debugging
  error: null,
};

function log(ev) {
  summary.events.push(`${elapsed()}ms ${ev}`);
}

const clients = [];
let finished = false;

function finish(ok, message) {
  if (finished) return;
  finished = true;
  summary.ok = ok;
  summary.elapsedMs = elapsed();
  if (!ok) summary.error = message;
  for (const c of clients) {
    try {
      c.disconnect();
    } catch (_) { /* ignore */ }
  }
  if (!ok) console.error(`FAIL [${summary.step}]: ${message}`);
  console.log(JSON.stringify(summary, null, 1));
  if (ok) console.log('PASS: jwt-auth scenario (centrifuge-js)');
  process.exit(ok ? 0 : 1);
}

const hardTimer = setTimeout(() => {
  finish(false, `overall timeout of ${cfg.timeoutMs} ms exceeded`);
}, cfg.timeoutMs);

process.on('unhandledRejection', (e) => finish(false, `unhandled rejection: ${e && e.stack || e}`));
process.on('uncaughtException', (e) => finish(false, `uncaught exception: ${e && e.stack || e}`));

// --------------------------------------------------------------- helpers ---

// Only for checking that something does NOT happen within a protocol time span.
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// An event stream: `next(pred)` resolves with the next event satisfying pred; all events are kept.
class Events {
  constructor() { this.all = []; this.waiters = []; }
  next(pred = () => true) {
    return new Promise((resolve) => this.waiters.push({ pred, resolve }));
  }
  fire(value) {
    this.all.push(value);
    const keep = [];
    for (const w of this.waiters) {
      if (w.pred(value)) w.resolve(value); else keep.push(w);
    }
    this.waiters = keep;
  }
  get count() { return this.all.length; }
  // Resolves once at least n events have fired.
  atLeast(n) {
    if (this.all.length >= n) return Promise.resolve(this.all[n - 1]);
    return this.next(() => this.all.length >= n);
  }
}

// A client with every event recorded.
function newClient(name, options) {
  const client = new Centrifuge(cfg.wsUrl, {
    websocket: WebSocket,
    minReconnectDelay: MIN_RECONNECT_DELAY_MS,
    maxReconnectDelay: MAX_RECONNECT_DELAY_MS,
    timeout: 5000,
    ...options,
  });
  clients.push(client);
  const ev = {
    client,
    connecting: new Events(),
    connected: new Events(),
    disconnected: new Events(),
    errors: new Events(),
    lastError: 'none',
  };
  client.on('connecting', (ctx) => { log(`${name} connecting code=${ctx.code} reason=${ctx.reason}`); ev.connecting.fire(ctx); });
  client.on('connected', (ctx) => { log(`${name} connected client=${ctx.client}`); ev.connected.fire(ctx); });
  client.on('disconnected', (ctx) => { log(`${name} disconnected code=${ctx.code} reason=${ctx.reason}`); ev.disconnected.fire(ctx); });
  client.on('error', (ctx) => {
    ev.lastError = `${ctx.type}: ${ctx.error && ctx.error.code} ${ctx.error && ctx.error.message}`;
    log(`${name} error ${ev.lastError}`);
    ev.errors.fire(ctx);
  });
  return ev;
}

// A subscription with every event recorded.
function newSub(name, client, channel, options) {
  const sub = client.newSubscription(channel, options);
  const ev = {
    sub,
    subscribing: new Events(),
    subscribed: new Events(),
    unsubscribed: new Events(),
    errors: new Events(),
    pubs: new Events(),
    lastError: 'none',
  };
  sub.on('subscribing', (ctx) => { log(`${name} ${channel} subscribing code=${ctx.code} reason=${ctx.reason}`); ev.subscribing.fire(ctx); });
  sub.on('subscribed', (ctx) => { log(`${name} ${channel} subscribed data=${JSON.stringify(ctx.data)}`); ev.subscribed.fire(ctx); });
  sub.on('unsubscribed', (ctx) => { log(`${name} ${channel} unsubscribed code=${ctx.code} reason=${ctx.reason}`); ev.unsubscribed.fire(ctx); });
  sub.on('error', (ctx) => {
    ev.lastError = `${ctx.type}: ${ctx.error && ctx.error.code} ${ctx.error && ctx.error.message}`;
    log(`${name} ${channel} error ${ev.lastError}`);
    ev.errors.fire(ctx);
  });
  sub.on('publication', (ctx) => { log(`${name} ${channel} publication ${JSON.stringify(ctx.data)}`); ev.pubs.fire(ctx); });
  return ev;
}

const api = (method, body) => apiCall(cfg, method, body);

// Publishes `data` to `channel` through the API and awaits it on `subEv`.
async function publishAndReceive(subEv, channel, data) {
  const marker = JSON.stringify(data);
  const arrived = subEv.pubs.next((ctx) => JSON.stringify(ctx.data) === marker);
  await api('publish', { channel, data });
  log(`api publish ${channel} ${marker}`);
  return within(arrived, 5000, `publication ${marker} on ${channel}`, () => `subscription state ${subEv.sub.state}`);
}

function pass(step) {
  summary.passed.push(step);
  log(`PASSED ${step}`);
}

// ------------------------------------------------------------------ main ---

async function main() {
  // ---- 1. HS256 connect; the first token is already expired -> 109 -> getToken again -> connected
  summary.step = '1 hs256 connect after 109';
  const aliceTokens = new Events(); // {n, exp} of every connection token handed out
  const alice = newClient('alice', {
    getToken: async (ctx) => {
      if (!ctx || typeof ctx !== 'object') finish(false, `client getToken got ${JSON.stringify(ctx)}, expected a context object`);
      const n = aliceTokens.count + 1;
      const now = nowSec();
      const exp = n === 1 ? now - 10 : now + CONN_TTL_SEC;
      aliceTokens.fire({ n, exp, at: Date.now() });
      log(`alice getToken #${n} exp=${exp} (now ${now})`);
      return hs256({ sub: 'alice', exp, iat: now });
    },
  });
  const aliceMain = newSub('alice', alice.client, cfg.channel);

  const got109 = alice.errors.next((ctx) => ctx.type === 'connect' && ctx.error && ctx.error.code === 109);
  const aliceConnected = alice.connected.next();
  const aliceSubscribed = aliceMain.subscribed.next();
  aliceMain.sub.subscribe();
  alice.client.connect();
  await within(got109, 5000, 'connect error 109 for the expired first token',
    () => `last error: ${alice.lastError}; getToken calls: ${aliceTokens.count}`);
  const cctx = await within(aliceConnected, 5000, 'alice connected after refetching the token',
    () => `last error: ${alice.lastError}; getToken calls: ${aliceTokens.count}`);
  const connectedAt = Date.now();
  check(typeof cctx.client === 'string' && cctx.client.length > 0,
    `connected context has no client id: ${JSON.stringify(cctx)}`);
  const aliceClientId = cctx.client;
  check(aliceTokens.count >= 2, `getToken called ${aliceTokens.count} time(s) before connecting, expected >= 2`);
  check(alice.disconnected.count === 0,
    `alice went disconnected after the 109 instead of reconnecting: ${JSON.stringify(alice.disconnected.all)}`);
  const connToken = aliceTokens.all[aliceTokens.count - 1]; // the token the connection was made with
  await within(aliceSubscribed, 5000, `alice subscribed to ${cfg.channel}`, () => `last error: ${aliceMain.lastError}`);
  await publishAndReceive(aliceMain, cfg.channel, { step: 1 });
  pass(summary.step);

  // ---- 2. refresh at ttl; the connection outlives exp + expired_close_delay
  summary.step = '2 refresh keeps the connection';
  const tokensAtConnect = aliceTokens.count;
  const aliceHint = () => `getToken calls: ${aliceTokens.count}; last error: ${alice.lastError}; ` +
    `connecting events since start: ${JSON.stringify(alice.connecting.all.map((c) => c.code))}`;
  const refresh1 = await within(aliceTokens.atLeast(tokensAtConnect + 1), (CONN_TTL_SEC + 3) * 1000,
    'the getToken call of the first refresh', aliceHint);
  log(`first refresh getToken after ${refresh1.at - connectedAt} ms`);
  // Without a successful refresh the server closes at the latest (connection exp + 1 s) + expired_close_delay;
  // await further refreshes (each proves the previous refresh reply came back with expires/ttl) until that
  // moment, plus a margin, has passed.
  const mustOutlive = (connToken.exp + 1) * 1000 + EXPIRED_CLOSE_DELAY_MS + 500;
  let refreshes = aliceTokens.count - tokensAtConnect;
  while (Date.now() < mustOutlive || refreshes < 2) {
    await within(aliceTokens.atLeast(tokensAtConnect + refreshes + 1), (CONN_TTL_SEC + 3) * 1000,
      `the getToken call of refresh #${refreshes + 1}`,
      aliceHint);
    refreshes = aliceTokens.count - tokensAtConnect;
  }
  check(Date.now() > mustOutlive, 'internal: did not wait past the expiry');
  // The refreshes must have kept this very connection.
  await publishAndReceive(aliceMain, cfg.channel, { step: 2 });
  check(alice.connected.count === 1 && alice.disconnected.count === 0 && alice.client.state === 'connected',
    `alice's connection did not survive the refresh: connected ${alice.connected.count}x, ` +
    `disconnected ${alice.disconnected.count}x, state ${alice.client.state}`);
  check(alice.connecting.all.every((c) => c.code !== 3005),
    `alice was disconnected with 3005 (connection expired): ${JSON.stringify(alice.connecting.all)}`);
  check(alice.connecting.count <= 2,
    `alice reconnected after the 109 retry: connecting events ${JSON.stringify(alice.connecting.all)}`);
  check(aliceMain.subscribed.count === 1, `alice resubscribed ${aliceMain.subscribed.count - 1} time(s)`);
  log(`alice still connected ${Date.now() - connectedAt} ms after connecting with exp=${connToken.exp}, ` +
    `${refreshes} refresh(es)`);
  pass(summary.step);

  // ---- 3. subscription token for a private channel; none -> 103
  summary.step = '3 subscription token';
  const privChannel = '$private:room';
  const subTokens = new Events();
  const priv = newSub('alice', alice.client, privChannel, {
    getToken: async (ctx) => {
      if (!ctx || ctx.channel !== privChannel) {
        finish(false, `subscription getToken got ${JSON.stringify(ctx)}, expected {channel: ${JSON.stringify(privChannel)}}`);
      }
      subTokens.fire(ctx);
      return hs256({ sub: 'alice', channel: ctx.channel, exp: nowSec() + 60, data: { room: 'welcome' } });
    },
  });
  const privSubscribed = priv.subscribed.next();
  priv.sub.subscribe();
  const pctx = await within(privSubscribed, 5000, `subscribed to ${privChannel} with a token`,
    () => `last error: ${priv.lastError}; state ${priv.sub.state}`);
  check(subTokens.count === 1, `subscription getToken called ${subTokens.count} time(s), expected 1`);
  check(pctx.data && pctx.data.room === 'welcome',
    `subscribed context data ${JSON.stringify(pctx.data)}, expected the token's data claim {"room":"welcome"}`);
  await publishAndReceive(priv, privChannel, { step: 3 });

  const otherChannel = '$private:other';
  const other = newSub('alice', alice.client, otherChannel);
  const otherEnded = other.unsubscribed.next();
  other.sub.subscribe();
  const uctx = await within(otherEnded, 5000, `${otherChannel} without a token to end unsubscribed`,
    () => `last error: ${other.lastError}; state ${other.sub.state}`);
  check(uctx.code === 103,
    `${otherChannel} without a token: unsubscribed code=${uctx.code} reason=${uctx.reason}, expected 103 permission denied`);
  check(other.subscribed.count === 0, `${otherChannel} without a token was subscribed`);
  check(alice.client.state === 'connected', `alice state ${alice.client.state} after the refused subscribe`);
  pass(summary.step);

  // ---- 4. RS256 connect; presence lists alice and bob
  summary.step = '4 rs256 connect + presence';
  let bobTokens = 0;
  const bob = newClient('bob', {
    getToken: async () => {
      bobTokens += 1;
      const now = nowSec();
      return rs256({ sub: 'bob', exp: now + 60, iat: now });
    },
  });
  const bobMain = newSub('bob', bob.client, cfg.channel);
  const bobConnected = bob.connected.next();
  const bobSubscribed = bobMain.subscribed.next();
  bobMain.sub.subscribe();
  bob.client.connect();
  const bctx = await within(bobConnected, 5000, 'bob connected with an RS256 token',
    () => `last error: ${bob.lastError}; disconnects ${JSON.stringify(bob.disconnected.all)}`);
  check(typeof bctx.client === 'string' && bctx.client.length > 0, `bob's connected context has no client id`);
  check(bobTokens === 1, `bob's getToken called ${bobTokens} time(s), expected 1`);
  await within(bobSubscribed, 5000, `bob subscribed to ${cfg.channel}`, () => `last error: ${bobMain.lastError}`);
  const presence = await api('presence', { channel: cfg.channel });
  log(`api presence ${JSON.stringify(presence)}`);
  check(presence.presence && typeof presence.presence === 'object',
    `presence result has no presence map: ${JSON.stringify(presence)}`);
  const entries = Object.values(presence.presence);
  const users = entries.map((e) => e.user).sort();
  check(JSON.stringify(users) === JSON.stringify(['alice', 'bob']),
    `presence users ${JSON.stringify(users)}, expected ["alice","bob"]: ${JSON.stringify(presence)}`);
  const byUser = Object.fromEntries(entries.map((e) => [e.user, e.client]));
  check(byUser.alice === aliceClientId && byUser.bob === bctx.client,
    `presence clients ${JSON.stringify(byUser)}, expected alice=${aliceClientId} bob=${bctx.client}`);
  pass(summary.step);

  // ---- 5. wrong signature -> 3500, terminal
  summary.step = '5 invalid token -> 3500';
  let malloryTokens = 0;
  const mallory = newClient('mallory', {
    getToken: async () => {
      malloryTokens += 1;
      return hs256({ sub: 'mallory', exp: nowSec() + 60 }, `wrong-${cfg.hmacSecret}`);
    },
  });
  const malloryDown = mallory.disconnected.next();
  mallory.client.connect();
  const dctx = await within(malloryDown, 5000, 'disconnected after a token with a bad signature',
    () => `state ${mallory.client.state}; last error: ${mallory.lastError}`);
  check(dctx.code === 3500, `disconnected code=${dctx.code} reason=${dctx.reason}, expected 3500 invalid token`);
  check(mallory.connected.count === 0, 'the client with a bad token was connected');
  const connectingBefore = mallory.connecting.count;
  // Terminal means no reconnect: watch for longer than the longest reconnect delay.
  await pause(2 * MAX_RECONNECT_DELAY_MS);
  check(mallory.connecting.count === connectingBefore && mallory.client.state === 'disconnected' &&
    malloryTokens === 1,
  `the client reconnected after 3500: connecting events ${JSON.stringify(mallory.connecting.all)}, ` +
    `state ${mallory.client.state}, getToken calls ${malloryTokens}`);
  pass(summary.step);

  // ---- alice's single connection lasted through everything
  summary.step = 'final';
  check(alice.connected.count === 1 && alice.disconnected.count === 0 && alice.client.state === 'connected',
    `alice: connected ${alice.connected.count}x, disconnected ${alice.disconnected.count}x, state ${alice.client.state}`);
  await publishAndReceive(aliceMain, cfg.channel, { step: 'final' });

  summary.step = 'disconnect';
  for (const ev of [alice, bob]) {
    const bye = ev.disconnected.next();
    ev.client.disconnect();
    await within(bye, 2000, 'disconnected event');
  }
  clearTimeout(hardTimer);
  finish(true);
}

main().catch((e) => {
  finish(false, e instanceof CheckError ? e.message : `unexpected error: ${e && e.stack || e}`);
});
