#!/usr/bin/env node
// Herald's Pusher Channels adapter driven by the real Pusher libraries (run by tests/pusher_sdk.rs): pusher-js
// 8.6 as the browser/Laravel Echo client and `pusher` 5.3 (pusher-http-node) as the application backend.
//
//   a. clients A and B (pusher-js, ws only) subscribe `news` and `private-chat`; private channels are authorised
//      by a channelAuthorization.customHandler calling the server library's authorizeChannel(socketId, channel),
//      as a Laravel /broadcasting/auth backend would; expect pusher:subscription_succeeded on all four
//   b. trigger('news', 'order-shipped', {n:1}): A and B both get {n:1}
//   c. trigger {n:2} with socket_id = A's socket id, then {n:3}: B gets 2 then 3, A's next event is 3 (2 excluded)
//   d. A triggers client-typing {who:'a'} on private-chat: B gets it; then the server triggers `done` there and
//      A's next private-chat event is `done` (a client event is not echoed to its sender)
//   e. client C subscribes `private-secret` with a wrong signature: pusher:subscription_error with status 401 on
//      that channel, and C stays connected (no state change, and a pusher:ping still gets its pusher:pong)
//   f. Herald's own HTTP API publishes {n:5} to `news` with tag event=native-event: A and B get `native-event`
//   g. GET /channels/news?info=subscription_count → 200 {occupied:true, subscription_count:2}; GET /channels lists
//      news and private-chat (and not private-secret, whose subscription failed)
//   h. a trigger with more than 10 KiB of data is rejected with HTTP 413
//   i. a server library with a wrong secret is rejected with HTTP 401
//   then trigger `end` on news: A and B get it next (neither the 413 nor the 401 event was delivered); disconnect.
//
// Env: HERALD_PUSHER_HOST, HERALD_PUSHER_PORT, HERALD_PUSHER_APP_ID, HERALD_PUSHER_KEY, HERALD_PUSHER_SECRET,
//      HERALD_API_URL (Herald's own `/api` base), HERALD_API_KEY; HERALD_E2E_TIMEOUT (s, default 60).
// Prints the events log as JSON, then PASS and exits 0 on success; FAIL and exit 1 on a failed check or timeout;
// exit 2 on a missing or malformed variable.
'use strict';

const { isDeepStrictEqual } = require('node:util');
const PusherJs = require('pusher-js');
const PusherServer = require('pusher');

const PusherClient = PusherJs.default || PusherJs;

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`pusher.js: ${name} is not set`);
    process.exit(2);
  }
  return value;
};
const cfg = {
  host: env('HERALD_PUSHER_HOST'),
  port: Number(env('HERALD_PUSHER_PORT')),
  appId: env('HERALD_PUSHER_APP_ID'),
  key: env('HERALD_PUSHER_KEY'),
  secret: env('HERALD_PUSHER_SECRET'),
  apiUrl: env('HERALD_API_URL').replace(/\/+$/, ''),
  apiKey: env('HERALD_API_KEY'),
  timeoutMs: Number(process.env.HERALD_E2E_TIMEOUT || '60') * 1000,
};
if (!Number.isInteger(cfg.port) || cfg.port <= 0 || cfg.port > 65535) {
  console.error(`pusher.js: HERALD_PUSHER_PORT must be a TCP port, got ${process.env.HERALD_PUSHER_PORT}`);
  process.exit(2);
}
if (!Number.isFinite(cfg.timeoutMs) || cfg.timeoutMs <= 0) {
  console.error(`pusher.js: HERALD_E2E_TIMEOUT must be a positive number of seconds, got ${process.env.HERALD_E2E_TIMEOUT}`);
  process.exit(2);
}

// Bound for every single wait.
const WAIT_MS = 10000;

const T0 = Date.now();
// The events log keeps its first 300 and its last 700 lines (a reconnect loop would flood it).
const events = [];
let dropped = 0;
const log = (line) => {
  events.push(`${Date.now() - T0}ms ${line}`);
  if (events.length > 1000) {
    events.splice(300, 1);
    dropped += 1;
  }
};
const clients = [];

let finished = false;
function finish(ok, message) {
  if (finished) return;
  finished = true;
  for (const client of clients) {
    try { client.disconnect(); } catch (e) { log(`disconnect failed: ${e}`); }
  }
  if (!ok) console.error(`FAIL: ${message}`);
  const summary = { sdk: 'pusher-js + pusher (node)', ok, error: message || null, dropped, events };
  const out = `${JSON.stringify(summary)}\n` +
    (ok ? 'PASS: pusher-js 8.6 and the pusher server library 5.3 work unchanged against Herald\n' : '');
  // Exit once stdout is flushed: process.exit() may cut a long write to a pipe.
  process.exitCode = ok ? 0 : 1;
  process.stdout.write(out, () => process.exit(ok ? 0 : 1));
}
setTimeout(() => finish(false, `overall timeout of ${cfg.timeoutMs} ms`), cfg.timeoutMs).unref();
process.on('unhandledRejection', (e) => finish(false, `unhandled rejection: ${e && e.stack || e}`));

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// Awaits a promise for at most WAIT_MS, failing with a message naming what was awaited.
function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${WAIT_MS} ms waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Resolves with the next value pushed after the call, in order.
class Queue {
  constructor() { this.items = []; this.waiters = []; }
  push(item) { const w = this.waiters.shift(); if (w) w(item); else this.items.push(item); }
  take(what) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    let waiter;
    const next = new Promise((resolve) => { waiter = resolve; this.waiters.push(resolve); });
    return within(next, what).catch((e) => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
      throw e;
    });
  }
}

// The application backend: signs private channels and triggers events, like Laravel's PusherBroadcaster.
const backend = new PusherServer({
  appId: cfg.appId, key: cfg.key, secret: cfg.secret, host: cfg.host, port: cfg.port, useTLS: false, timeout: WAIT_MS,
});

// A pusher-js client whose every channel event goes to a queue per channel, in arrival order.
function connectClient(name, authorize) {
  const client = new PusherClient(cfg.key, {
    cluster: 'mt1',
    wsHost: cfg.host,
    wsPort: cfg.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        try {
          callback(null, authorize(socketId, channelName));
        } catch (e) {
          callback(e, null);
        }
      },
    },
  });
  clients.push(client);
  const c = { name, client, queues: new Map(), states: [], connected: new Queue(), pongs: new Queue() };
  client.connection.bind('state_change', ({ previous, current }) => {
    log(`${name} state ${previous} -> ${current}`);
    c.states.push(current);
    if (current === 'connected') c.connected.push(client.connection.socket_id);
    else if (previous === 'connected') c.pongs.push({ left: current }); // fails a pending pong wait at once
  });
  client.connection.bind('error', (e) => log(`${name} connection error ${JSON.stringify(e && (e.data || e.error) || e)}`));
  client.bind('pusher:pong', () => { log(`${name} pusher:pong`); c.pongs.push({ pong: true }); });
  c.subscribe = (channelName) => {
    const queue = new Queue();
    c.queues.set(channelName, queue);
    const channel = client.subscribe(channelName);
    channel.bind_global((event, data) => {
      log(`${name} ${channelName} ${event} ${JSON.stringify(data)}`);
      // An optional hosted-Pusher feature; not part of what this scenario checks.
      if (event === 'pusher:subscription_count') return;
      queue.push({ event, data });
    });
    return channel;
  };
  c.next = (channelName, what) => c.queues.get(channelName).take(`${name}: ${what} on ${channelName}`);
  // Takes the next event on channelName and checks its name and data.
  c.expect = async (channelName, event, data, what) => {
    const got = await c.next(channelName, what || `${event} ${JSON.stringify(data)}`);
    check(got.event === event && (data === undefined || isDeepStrictEqual(got.data, data)),
      `${name}: expected ${event} ${data === undefined ? '' : JSON.stringify(data)} on ${channelName}, ` +
      `got ${JSON.stringify(got)}`);
    return got;
  };
  return c;
}

const authorizeChannel = (socketId, channelName) => backend.authorizeChannel(socketId, channelName);

// Runs a server-library request that must fail, and returns the HTTP status it failed with.
async function rejectedStatus(promise, what) {
  let result;
  try {
    result = await within(promise, what);
  } catch (e) {
    log(`${what}: rejected status=${e && e.status} body=${JSON.stringify(e && e.body)}`);
    check(e && e.status !== undefined, `${what}: failed without an HTTP status: ${e && e.stack || e}`);
    return e.status;
  }
  throw new Error(`${what}: expected an HTTP error, got HTTP ${result && result.status}`);
}

// A server-library request that must succeed: HTTP 200 with a JSON body, which is returned.
async function okJson(promise, what) {
  let response;
  try {
    response = await within(promise, what);
  } catch (e) {
    throw new Error(`${what} failed: ${e && e.message} status=${e && e.status} body=${JSON.stringify(e && e.body)}`);
  }
  const text = await response.text();
  log(`${what}: HTTP ${response.status} ${text}`);
  check(response.status === 200, `${what}: expected HTTP 200, got ${response.status} ${text}`);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${what}: HTTP 200 with a body that is not JSON: ${JSON.stringify(text)}`);
  }
}

const trigger = (channel, event, data, params) =>
  okJson(backend.trigger(channel, event, data, params), `trigger ${channel} ${event} ${JSON.stringify(data)}`);

async function main() {
  // a. A and B subscribe a public and a private channel.
  const a = connectClient('A', authorizeChannel);
  const b = connectClient('B', authorizeChannel);
  for (const c of [a, b]) {
    c.subscribe('news');
    c.subscribe('private-chat');
  }
  const socketA = await a.connected.take('A to connect');
  const socketB = await b.connected.take('B to connect');
  check(/^\d+\.\d+$/.test(socketA) && /^\d+\.\d+$/.test(socketB),
    `socket ids must be <digits>.<digits>: A=${socketA} B=${socketB}`);
  check(socketA !== socketB, `A and B got the same socket id ${socketA}`);
  for (const c of [a, b]) {
    for (const channel of ['news', 'private-chat']) {
      const got = await c.next(channel, 'pusher:subscription_succeeded');
      check(got.event === 'pusher:subscription_succeeded',
        `${c.name}: expected pusher:subscription_succeeded on ${channel}, got ${JSON.stringify(got)}`);
    }
  }

  // b. A trigger reaches both.
  const body = await trigger('news', 'order-shipped', { n: 1 });
  check(isDeepStrictEqual(body, {}), `trigger: expected the body {}, got ${JSON.stringify(body)}`);
  await a.expect('news', 'order-shipped', { n: 1 });
  await b.expect('news', 'order-shipped', { n: 1 });

  // c. socket_id excludes that connection.
  await trigger('news', 'order-shipped', { n: 2 }, { socket_id: socketA });
  await trigger('news', 'order-shipped', { n: 3 });
  await b.expect('news', 'order-shipped', { n: 2 });
  await b.expect('news', 'order-shipped', { n: 3 });
  await a.expect('news', 'order-shipped', { n: 3 }, 'n=3 (n=2 was triggered with its socket_id)');

  // d. Client events go to the other subscribers only.
  check(a.client.channel('private-chat').trigger('client-typing', { who: 'a' }) === true, 'A could not send client-typing');
  await b.expect('private-chat', 'client-typing', { who: 'a' });
  await trigger('private-chat', 'done', { step: 'd' });
  await a.expect('private-chat', 'done', { step: 'd' }, 'done (not its own client-typing)');
  await b.expect('private-chat', 'done', { step: 'd' });

  // e. A wrong signature fails that subscription only.
  const c = connectClient('C', () => ({ auth: `${cfg.key}:${'0'.repeat(64)}` }));
  await c.connected.take('C to connect');
  const cStates = c.states.length;
  c.subscribe('private-secret');
  const failed = await c.next('private-secret', 'pusher:subscription_error');
  check(failed.event === 'pusher:subscription_error',
    `C: expected pusher:subscription_error on private-secret, got ${JSON.stringify(failed)}`);
  check(failed.data && failed.data.status === 401 && failed.data.type === 'AuthError',
    `C: expected {type:"AuthError", status:401}, got ${JSON.stringify(failed.data)}`);
  c.client.send_event('pusher:ping', {});
  const pong = await c.pongs.take('C: pusher:pong after the failed subscription');
  check(pong.pong, `C left the connected state (now ${pong.left}) after the failed subscription`);
  check(c.client.connection.state === 'connected' && c.states.length === cStates,
    `C left the connected state: ${c.client.connection.state}, states ${JSON.stringify(c.states)}`);

  // f. Herald's own API publishes to the same channels.
  let response;
  try {
    response = await fetch(`${cfg.apiUrl}/publish`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': cfg.apiKey },
      body: JSON.stringify({ channel: 'news', data: { n: 5 }, tags: { event: 'native-event' } }),
      signal: AbortSignal.timeout(WAIT_MS),
    });
  } catch (e) {
    throw new Error(`Herald API publish failed: ${e && e.message} ${e && e.cause || ''}`);
  }
  const published = await response.text();
  log(`Herald API publish: HTTP ${response.status} ${published}`);
  check(response.status === 200, `Herald API publish: HTTP ${response.status} ${published}`);
  await a.expect('news', 'native-event', { n: 5 });
  await b.expect('news', 'native-event', { n: 5 });

  // g. Channel queries.
  const news = await okJson(backend.get({ path: '/channels/news', params: { info: 'subscription_count' } }),
    'GET /channels/news?info=subscription_count');
  check(news.occupied === true && news.subscription_count === 2,
    `GET /channels/news: expected {occupied:true, subscription_count:2}, got ${JSON.stringify(news)}`);
  const listed = await okJson(backend.get({ path: '/channels' }), 'GET /channels');
  const names = Object.keys(listed.channels || {});
  check(names.includes('news') && names.includes('private-chat'),
    `GET /channels: expected news and private-chat, got ${JSON.stringify(listed)}`);
  check(!names.includes('private-secret'),
    `GET /channels lists private-secret, whose only subscription failed: ${JSON.stringify(listed)}`);

  // h. Data over 10 KiB → 413.
  const big = await rejectedStatus(backend.trigger('news', 'too-big', { blob: 'x'.repeat(11 * 1024) }),
    'trigger with 11 KiB of data');
  check(big === 413, `trigger with 11 KiB of data: expected HTTP 413, got ${big}`);

  // i. A wrong secret → 401.
  const forger = new PusherServer({
    appId: cfg.appId, key: cfg.key, secret: `${cfg.secret}-wrong`, host: cfg.host, port: cfg.port, useTLS: false,
    timeout: WAIT_MS,
  });
  const forged = await rejectedStatus(forger.trigger('news', 'forged', { n: 666 }), 'trigger with a wrong secret');
  check(forged === 401, `trigger with a wrong secret: expected HTTP 401, got ${forged}`);

  // Neither rejected trigger was delivered: the next event is `end`.
  await trigger('news', 'end', { n: 6 });
  await a.expect('news', 'end', { n: 6 }, 'end (not too-big nor forged)');
  await b.expect('news', 'end', { n: 6 }, 'end (not too-big nor forged)');
  check(c.client.connection.state === 'connected' && c.states.length === cStates,
    `C left the connected state: ${c.client.connection.state}, states ${JSON.stringify(c.states)}`);
  finish(true);
}

main().catch((e) => finish(false, e && e.message || String(e)));
