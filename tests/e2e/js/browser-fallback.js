// centrifuge-js in a real browser (Debian's headless Chromium, driven over the DevTools protocol by
// puppeteer-core) where WebSocket does not exist: it falls back to HTTP streaming; where streaming `fetch`
// bodies do not exist either (no ReadableStream), to SSE. For each: connect, subscribe, receive
// publications, publish from the page, get dropped by the server (API disconnect 3011) and recover exactly
// what was missed. Over HTTPS the browser uses HTTP/2 for the emulation's requests (checked in the page's
// resource timing). Last, a page with only the browser's own EventSource on `uni_sse`.
//
// Env: HERALD_BASE_URL (https://127.0.0.1:port), HERALD_API_URL, HERALD_API_KEY, HERALD_CHANNEL; CHROMIUM
// (default /usr/bin/chromium); HERALD_E2E_TIMEOUT (s, default 90). Node reaches the API over HTTPS with
// NODE_EXTRA_CA_CERTS set by the test.
'use strict';

const path = require('node:path');
const puppeteer = require('puppeteer-core');
const { check, apiCall, runScenario } = require('./common');

const need = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`browser-fallback.js: ${name} is not set`);
    process.exit(2);
  }
  return value;
};
const base = need('HERALD_BASE_URL').replace(/\/+$/, '');
const api = { apiUrl: need('HERALD_API_URL').replace(/\/+$/, ''), apiKey: need('HERALD_API_KEY') };
const channel = need('HERALD_CHANNEL');
const timeoutMs = Number(process.env.HERALD_E2E_TIMEOUT || '90') * 1000;
// The SDK's browser bundle (the package does not export its path).
const BUNDLE = path.join(__dirname, 'node_modules', 'centrifuge', 'dist', 'centrifuge.js');

// Runs in the page: a client over the first transport the page supports, recording what it sees.
function startClient(origin, name) {
  window.events = [];
  const client = new Centrifuge([
    { transport: 'websocket', endpoint: `${origin.replace(/^http/, 'ws')}/connection/websocket` },
    { transport: 'http_stream', endpoint: `${origin}/connection/http_stream` },
    { transport: 'sse', endpoint: `${origin}/connection/sse` },
  ], { emulationEndpoint: `${origin}/emulation`, minReconnectDelay: 100, maxReconnectDelay: 500 });
  client.on('connected', (ctx) => window.events.push({ connected: ctx.transport, client: ctx.client }));
  const sub = client.newSubscription(name, { recoverable: true, positioned: true });
  sub.on('subscribed', (ctx) => window.events.push({
    subscribed: { wasRecovering: ctx.wasRecovering, recovered: ctx.recovered },
  }));
  sub.on('publication', (ctx) => window.events.push({ n: ctx.data.n, offset: ctx.offset }));
  window.client = client;
  window.sub = sub;
  sub.subscribe();
  client.connect();
}

async function run(browser, mode) {
  const page = await browser.newPage();
  const failures = [];
  page.on('pageerror', (error) => failures.push(`page error: ${error.message}`));
  // What this browser lacks: no WebSocket at all; for SSE, no streaming fetch either.
  await page.evaluateOnNewDocument((lacks) => {
    window.WebSocket = undefined;
    if (lacks === 'sse') window.ReadableStream = undefined;
  }, mode);
  await page.goto(`${base}/health`, { waitUntil: 'load' });
  await page.addScriptTag({ path: BUNDLE });
  const name = `${channel}-${mode}`;
  await page.evaluate(startClient, base, name);
  const events = () => page.evaluate(() => window.events);
  const until = (what, predicate) => page.waitForFunction(predicate, { timeout: 15000 })
    .catch(async () => { throw new Error(`${mode}: no ${what}; events ${JSON.stringify(await events())}`); });

  await until('subscribe', () => window.events.some((e) => e.subscribed));
  const connected = (await events()).find((e) => e.connected);
  check(connected.connected === mode, `${mode}: connected over ${connected.connected}`);
  for (let n = 1; n <= 3; n += 1) {
    await apiCall(api, 'publish', { channel: name, data: { n } });
  }
  await until('n=1..3', () => window.events.filter((e) => e.n).length === 3);
  await page.evaluate(() => window.sub.publish({ n: 4 }));
  await until('its own n=4', () => window.events.some((e) => e.n === 4));

  await apiCall(api, 'disconnect', {
    user: '', client: connected.client, disconnect: { code: 3011, reason: 'come back' },
  });
  for (let n = 5; n <= 7; n += 1) {
    await apiCall(api, 'publish', { channel: name, data: { n } });
  }
  await until('the recovery', () => window.events.filter((e) => e.n).length === 7);
  await apiCall(api, 'publish', { channel: name, data: { n: 8 } });
  await until('n=8', () => window.events.some((e) => e.n === 8));

  const seen = await events();
  const numbers = seen.filter((e) => e.n).map((e) => e.n);
  check(JSON.stringify(numbers) === JSON.stringify([1, 2, 3, 4, 5, 6, 7, 8]),
    `${mode}: publications ${JSON.stringify(numbers)}`);
  const subscribes = seen.filter((e) => e.subscribed).map((e) => e.subscribed);
  check(subscribes.length === 2 && subscribes[1].wasRecovering && subscribes[1].recovered,
    `${mode}: subscribes ${JSON.stringify(subscribes)}`);
  const transports = seen.filter((e) => e.connected).map((e) => e.connected);
  check(transports.every((t) => t === mode), `${mode}: transports ${JSON.stringify(transports)}`);
  if (base.startsWith('https:')) {
    const protocols = await page.evaluate(() => performance.getEntriesByType('resource')
      .filter((entry) => entry.name.includes('/emulation'))
      .map((entry) => entry.nextHopProtocol));
    check(protocols.length > 0 && protocols.every((p) => p === 'h2'),
      `${mode}: emulation requests over ${JSON.stringify(protocols)}, expected h2`);
  }
  check(failures.length === 0, `${mode}: ${failures.join('; ')}`);
  await page.evaluate(() => window.client.disconnect());
  await page.close();
}

// A page with nothing but the browser's own EventSource on the unidirectional SSE endpoint: the connect
// plugin subscribes it to `${channel}-plain` (the test's config) and the server API to another channel; it
// receives publications; the server drops it (code 3011) and publishes while it is away; the EventSource
// reconnects by itself with `Last-Event-ID`, which recovers what it missed, in order; last, a disconnect
// without reconnect arrives as the last event.
async function plainEventSource(browser) {
  const page = await browser.newPage();
  await page.goto(`${base}/health`, { waitUntil: 'load' });
  await page.evaluate(() => {
    window.pushes = [];
    const request = encodeURIComponent(JSON.stringify({ token: 'good' }));
    const source = new EventSource(`/connection/uni_sse?cf_connect=${request}`);
    source.onmessage = (event) => window.pushes.push({ ...JSON.parse(event.data), id: event.lastEventId });
    window.source = source;
  });
  const pushes = () => page.evaluate(() => window.pushes);
  const until = (what, predicate, arg) => page.waitForFunction(predicate, { timeout: 15000 }, arg)
    .catch(async () => { throw new Error(`EventSource: no ${what}; pushes ${JSON.stringify(await pushes())}`); });
  const name = `${channel}-plain`;
  await until('connect push', () => window.pushes.some((p) => p.connect));
  const client = (await pushes()).find((p) => p.connect).connect.client;
  await until('subscribe push', (name) => window.pushes.some((p) => p.subscribe && p.channel === name), name);
  await apiCall(api, 'publish', { channel: name, data: { n: 1 } });
  await until('publication', () => window.pushes.some((p) => p.pub));
  const publication = (await pushes()).find((p) => p.pub);
  check(publication.channel === name && publication.pub.data.n === 1, `EventSource: ${JSON.stringify(publication)}`);
  check(publication.id.startsWith(`${name}=${publication.pub.offset}.`), `event id ${publication.id}`);

  await apiCall(api, 'disconnect', { user: 'alice', client, disconnect: { code: 3011, reason: 'come back' } });
  for (let n = 2; n <= 3; n += 1) {
    await apiCall(api, 'publish', { channel: name, data: { n } });
  }
  await until('the reconnect', () => window.pushes.filter((p) => p.connect).length === 2);
  await until('recovered publications', () => window.pushes.filter((p) => p.pub).length === 3);
  const all = await pushes();
  const again = all.filter((p) => p.connect)[1].connect.client;
  check(again !== client, 'the same client after the reconnect');
  const resubscribed = all.slice(all.findIndex((p) => p.connect && p.connect.client === again))
    .find((p) => p.subscribe);
  check(resubscribed && resubscribed.subscribe.offset === publication.pub.offset,
    `not recovering from the last event id: ${JSON.stringify(resubscribed)}`);
  const received = all.filter((p) => p.pub).map((p) => p.pub.data.n);
  check(JSON.stringify(received) === '[1,2,3]', `received ${JSON.stringify(received)}`);

  await apiCall(api, 'disconnect', { user: 'alice', client: again, disconnect: { code: 3503, reason: 'bye' } });
  await until('disconnect push', () => window.pushes.some((p) => p.disconnect && p.disconnect.code === 3503));
  await page.evaluate(() => window.source.close());
  await page.close();
}

async function main() {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // Root in a container has no user namespaces for Chromium's sandbox; the test's certificate is
    // self-signed.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--ignore-certificate-errors'],
  });
  try {
    for (const mode of ['http_stream', 'sse']) {
      await run(browser, mode);
      console.log(`${mode} ok`);
    }
    await plainEventSource(browser);
    console.log('plain EventSource on uni_sse ok');
  } finally {
    await browser.close();
  }
  console.log('PASS: centrifuge-js in Chromium without WebSocket');
}

runScenario(main, timeoutMs);
