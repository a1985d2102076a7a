#!/usr/bin/env node
// Data crosses between the Centrifugo and the Pusher protocol without changing type (run by tests/pusher_sdk.rs):
// pusher-js 8.6 and centrifuge-js 5.8 subscribed to the same channels of one Herald, the `pusher` Node server
// library 5.3 triggering, Herald's own HTTP API publishing.
//
// pusher-js JSON.parses the `data` string of every event and keeps the string when that fails, so a server that
// sent a published string "123" as the event data 123 would hand pusher-js the number 123. Each value below is
// sent one at a time and awaited on every subscriber before the next:
//   a. centrifuge-js client C publishes JS values to `lossless` (strings that spell JSON — "123", "true", "null",
//      "{\"a\":1}", " 1 " —, strings that do not — "", "hello", "a\"b\nc" —, numbers, booleans, objects, arrays;
//      not null, which Herald refuses as publication data): pusher-js clients A and B get exactly that value
//      (deep strict equality: same type), and C its own publication
//   b. Herald's HTTP API publishes JSON texts as written (1e400, -0, a lone surrogate escape, duplicate keys,
//      big integers, …): A, B and C get JSON.parse of the text
//   c. the `pusher` library triggers values on `lossless`: it sends a string as it is and anything else
//      JSON-encoded, and hosted Pusher hands that string to pusher-js, which JSON.parses it when it can; A, B and C
//      all get exactly that value (for C, the JSON value of the string when it is JSON, else the string)
//   d. A sends client events with those values on `private-lossless` (pusher-js `channel.trigger`): B and C get
//      exactly the value A sent (A gets no echo: the next event it sees there is the closing trigger)
//
// Env: HERALD_PUSHER_HOST, HERALD_PUSHER_PORT, HERALD_PUSHER_APP_ID, HERALD_PUSHER_KEY, HERALD_PUSHER_SECRET,
//      HERALD_WS_URL (Herald's Centrifugo WebSocket), HERALD_API_URL (Herald's own `/api` base), HERALD_API_KEY;
//      HERALD_E2E_TIMEOUT (s, default 60).
// Prints the events log as JSON, then PASS and exits 0 on success; FAIL and exit 1 on a failed check or timeout;
// exit 2 on a missing or malformed variable.
'use strict';

const { isDeepStrictEqual, inspect } = require('node:util');
const PusherJs = require('pusher-js');
const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');

const PusherClient = PusherJs.default || PusherJs;

const { WAIT_MS, env, pusherConfig, startRun, disconnecting, backend: backendFor, clientOptions, check, within, Queue } = require('./pusher-harness');

const SCRIPT = 'pusher-data.js';
const cfg = {
  ...pusherConfig(SCRIPT),
  wsUrl: env(SCRIPT, 'HERALD_WS_URL'),
  apiUrl: env(SCRIPT, 'HERALD_API_URL').replace(/\/+$/, ''),
  apiKey: env(SCRIPT, 'HERALD_API_KEY'),
};

const PUBLIC = 'lossless';
const PRIVATE = 'private-lossless';

// The values of steps a, c and d.
const VALUES = [
  '123', '-1.5e3', 'true', 'false', 'null', '{"a":1}', '[1,"2"]', '"quoted"', '"123"',
  '', ' ', ' 1 ', '\t1\n', 'hello', 'a"b\nc', '{oops', '\ufeff1', 'é ☃ \u2028 \u0001',
  123, -1.5e3, 0.1, 12345678901234567890, true, false, null,
  { a: 1, s: '123', n: 'null', nested: { t: 'true', list: [null, 'null', 1, '1'] } },
  [1, '1', true, 'true', null, 'null', [], {}, '', '[]'],
  {}, [],
];

// The JSON texts of step b, published by Herald's API exactly as written.
const JSON_TEXTS = [
  '"123"', '"null"', '"{\\"a\\":1}"', '"\\u0031"', '" 1 "', '""', '"hello"', '"\\u00e9\\n\\"q\\""',
  '"\\ud800"', '"\\"\\\\ud800\\""', '1e400', '-1e400', '-0', '12345678901234567890123', '1E-7',
  '{"a":1,"a":2}', '[ 1 , "x" ]', '{"deep":[[[[[["1"]]]]]]}', 'true',
];

// Herald's Centrifugo publish (client and API) refuses null data ("data required"); triggers and client events
// carry it.
const PUBLISHABLE = VALUES.filter((value) => value !== null);

const show = (value) => inspect(value, { depth: null, breakLength: Infinity });

const clients = [];
const { log, finish } = startRun({
  sdk: 'pusher-js + centrifuge-js + pusher (node)',
  passLine: 'data keeps its type between centrifuge-js, pusher-js and the pusher server library',
  timeoutMs: cfg.timeoutMs,
  teardown: disconnecting(clients),
});

const backend = backendFor(cfg);

// A pusher-js client whose channel events go to a queue per channel, in arrival order.
function pusherClient(name) {
  const authorize = (socketId, channelName) => backend.authorizeChannel(socketId, channelName);
  const client = new PusherClient(cfg.key, clientOptions(cfg, authorize));
  clients.push(client);
  const c = { name, client, queues: new Map(), connected: new Queue() };
  client.connection.bind('state_change', ({ previous, current }) => {
    log(`${name} state ${previous} -> ${current}`);
    if (current === 'connected') c.connected.push(client.connection.socket_id);
  });
  for (const channelName of [PUBLIC, PRIVATE]) {
    const queue = new Queue();
    c.queues.set(channelName, queue);
    client.subscribe(channelName).bind_global((event, data) => {
      log(`${name} ${channelName} ${event} ${show(data)}`);
      if (event === 'pusher:subscription_count') return;
      queue.push({ event, data });
    });
  }
  c.next = (channelName, what) => c.queues.get(channelName).take(`${name}: ${what} on ${channelName}`);
  return c;
}

// A centrifuge-js client subscribed to both channels, publications queued per channel.
function centrifugeClient(name) {
  const client = new Centrifuge(cfg.wsUrl, { websocket: WebSocket, timeout: WAIT_MS });
  clients.push(client);
  client.on('state', (ctx) => log(`${name} state ${ctx.oldState} -> ${ctx.newState}`));
  const c = { name, client, subs: new Map(), queues: new Map() };
  for (const channelName of [PUBLIC, PRIVATE]) {
    const queue = new Queue();
    c.queues.set(channelName, queue);
    const sub = client.newSubscription(channelName);
    sub.on('publication', (ctx) => {
      log(`${name} ${channelName} ${show(ctx.data)} tags=${JSON.stringify(ctx.tags || {})}`);
      queue.push(ctx);
    });
    sub.on('error', (ctx) => log(`${name} ${channelName} error ${JSON.stringify(ctx.error)}`));
    c.subs.set(channelName, sub);
    sub.subscribe();
  }
  client.connect();
  c.next = (channelName, what) => c.queues.get(channelName).take(`${name}: ${what} on ${channelName}`);
  return c;
}

// What pusher-js makes of an event's `data` string: JSON.parse of it, or the string when that fails.
function pusherJsValue(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    return text;
  }
}

// The `data` string the `pusher` library sends for a triggered value (its ensureJSON).
const triggered = (value) => (typeof value === 'string' ? value : JSON.stringify(value));

// Takes the next event of a pusher-js client on a channel and checks its name and value (same type).
async function expectEvent(c, channelName, event, value, what) {
  const got = await c.next(channelName, what);
  check(got.event === event, `${c.name}: ${what}: expected event ${event}, got ${show(got)}`);
  check(isDeepStrictEqual(got.data, value),
    `${c.name}: ${what}: expected the value ${show(value)} (${typeof value}), got ${show(got.data)} (${typeof got.data})`);
}

// Takes the next publication of a centrifuge-js client on a channel and checks its value (same type).
async function expectPublication(c, channelName, value, what) {
  const got = await c.next(channelName, what);
  check(isDeepStrictEqual(got.data, value),
    `${c.name}: ${what}: expected the value ${show(value)} (${typeof value}), got ${show(got.data)} (${typeof got.data})`);
}

// Publishes with Herald's own API, `data` being the JSON text exactly as given.
async function apiPublish(channel, dataText) {
  const body = `{"channel":${JSON.stringify(channel)},"data":${dataText}}`;
  const response = await within(fetch(`${cfg.apiUrl}/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': cfg.apiKey },
    body,
    signal: AbortSignal.timeout(WAIT_MS),
  }), `Herald API publish ${dataText}`);
  const text = await response.text();
  check(response.status === 200 && !JSON.parse(text).error,
    `Herald API publish ${dataText}: HTTP ${response.status} ${text}`);
}

async function trigger(channel, event, value) {
  const response = await within(backend.trigger(channel, event, value), `trigger ${show(value)}`);
  check(response.status === 200, `trigger ${show(value)}: HTTP ${response.status}`);
}

async function main() {
  const a = pusherClient('A');
  const b = pusherClient('B');
  await a.connected.take('A to connect');
  await b.connected.take('B to connect');
  for (const p of [a, b]) {
    for (const channelName of [PUBLIC, PRIVATE]) {
      const got = await p.next(channelName, 'pusher:subscription_succeeded');
      check(got.event === 'pusher:subscription_succeeded',
        `${p.name}: expected pusher:subscription_succeeded on ${channelName}, got ${show(got)}`);
    }
  }
  const c = centrifugeClient('C');
  await within(Promise.all([...c.subs.values()].map((sub) => sub.ready(WAIT_MS))), 'C to subscribe');

  // a. centrifuge-js publishes: pusher-js gets the same value.
  for (const value of PUBLISHABLE) {
    const what = `C published ${show(value)}`;
    await within(c.client.publish(PUBLIC, value), what);
    await expectPublication(c, PUBLIC, value, what);
    await expectEvent(a, PUBLIC, 'message', value, what);
    await expectEvent(b, PUBLIC, 'message', value, what);
  }

  // b. Herald's API publishes JSON texts: everyone gets JSON.parse of the text.
  for (const text of JSON_TEXTS) {
    const value = JSON.parse(text);
    const what = `the API published ${text}`;
    await apiPublish(PUBLIC, text);
    await expectPublication(c, PUBLIC, value, what);
    await expectEvent(a, PUBLIC, 'message', value, what);
    await expectEvent(b, PUBLIC, 'message', value, what);
  }

  // c. The server library triggers: pusher-js gets what hosted Pusher gives it, centrifuge-js the same value.
  for (const value of VALUES) {
    const expected = pusherJsValue(triggered(value));
    const what = `trigger ${show(value)}`;
    await trigger(PUBLIC, 'data', value);
    await expectEvent(a, PUBLIC, 'data', expected, what);
    await expectEvent(b, PUBLIC, 'data', expected, what);
    await expectPublication(c, PUBLIC, expected, what);
  }

  // d. Client events: the other pusher-js client and centrifuge-js get what the sender sent.
  for (const value of VALUES) {
    const what = `A's client-value ${show(value)}`;
    check(a.client.channel(PRIVATE).trigger('client-value', value) === true, `${what} was not sent`);
    await expectEvent(b, PRIVATE, 'client-value', value, what);
    await expectPublication(c, PRIVATE, value, what);
  }
  await trigger(PRIVATE, 'end', 'end');
  await expectEvent(a, PRIVATE, 'end', 'end', 'the closing trigger (no echo of its own client events)');
  await expectEvent(b, PRIVATE, 'end', 'end', 'the closing trigger');
  await expectPublication(c, PRIVATE, 'end', 'the closing trigger');
}

main().then(() => finish(true), (e) => finish(false, e && e.stack || show(e)));
