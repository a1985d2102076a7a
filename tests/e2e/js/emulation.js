#!/usr/bin/env node
// centrifuge-js over the HTTP emulation (run by tests/emulation.rs): WebSocket is made unavailable (its
// endpoint answers 404), so the SDK falls back to HTTP streaming; with HERALD_TRANSPORT=sse the
// HTTP-streaming endpoint is unavailable too, so it falls back to SSE.
//
//   1. connect with transports [websocket, http_stream, sse], check it settled on HERALD_TRANSPORT
//   2. subscribe (recoverable + positioned), receive n=1..3 published through the API
//   3. publish n=4 from the client and receive it
//   4. the server drops the connection (API disconnect, code 3011: reconnect); while away, n=5..7 are
//      published; after the SDK reconnects (over the same transport) the resubscribe recovers exactly
//      n=5..7; then n=8 arrives live
//
// Env: HERALD_BASE_URL (http://host:port), HERALD_API_URL, HERALD_API_KEY, HERALD_CHANNEL,
//      HERALD_TRANSPORT (http_stream | sse); HERALD_E2E_TIMEOUT (s, default 45);
//      HERALD_PROTOCOL=protobuf: the SDK's Protobuf build (HTTP streaming only: its SSE is JSON).
'use strict';

const PROTOBUF = process.env.HERALD_PROTOCOL === 'protobuf';
const { Centrifuge } = require(PROTOBUF ? 'centrifuge/build/protobuf' : 'centrifuge');
const WebSocket = require('ws');
const { EventSource } = require('eventsource');
const { requireEnv, check, Queue, apiCall, runScenario } = require('./common');

const need = (name) => requireEnv('emulation.js', name);
const base = need('HERALD_BASE_URL').replace(/\/+$/, '');
const api = { apiUrl: need('HERALD_API_URL').replace(/\/+$/, ''), apiKey: need('HERALD_API_KEY') };
const channel = need('HERALD_CHANNEL');
const wanted = need('HERALD_TRANSPORT');
const timeoutMs = Number(process.env.HERALD_E2E_TIMEOUT || '45') * 1000;
const wsBase = base.replace(/^http/, 'ws');

async function main() {
  const transports = [
    { transport: 'websocket', endpoint: `${wsBase}/blocked/websocket` },
    {
      transport: 'http_stream',
      endpoint: wanted === 'sse' ? `${base}/blocked/http_stream` : `${base}/connection/http_stream`,
    },
    { transport: 'sse', endpoint: `${base}/connection/sse` },
  ];
  const client = new Centrifuge(transports, {
    protocol: PROTOBUF ? 'protobuf' : 'json',
    websocket: WebSocket,
    eventsource: EventSource,
    emulationEndpoint: `${base}/emulation`,
    minReconnectDelay: 100,
    maxReconnectDelay: 500,
    timeout: 5000,
  });
  const connected = new Queue();
  const subscribed = new Queue();
  const publications = new Queue();
  client.on('connected', (ctx) => connected.push(ctx));
  const sub = client.newSubscription(channel, { recoverable: true, positioned: true });
  sub.on('subscribed', (ctx) => subscribed.push(ctx));
  sub.on('publication', (ctx) => {
    // In Protobuf, data is the JSON text's bytes.
    const data = PROTOBUF ? JSON.parse(Buffer.from(ctx.data).toString('utf8')) : ctx.data;
    publications.push({ n: data && data.n, offset: ctx.offset });
  });
  sub.subscribe();
  client.connect();

  const first = await connected.take('the first connection');
  check(first.transport === wanted, `connected over ${first.transport}, expected ${wanted}`);
  const initial = await subscribed.take('the subscribe');
  check(initial.recoverable && initial.positioned, 'not recoverable and positioned');
  let last = initial.streamPosition.offset;

  const expect = async (n, what) => {
    const p = await publications.take(`${what} n=${n}`);
    check(p.n === n && p.offset === last + 1, `${what}: expected n=${n} at ${last + 1}, got ${JSON.stringify(p)}`);
    last = p.offset;
  };
  for (let n = 1; n <= 3; n += 1) {
    await apiCall(api, 'publish', { channel, data: { n } });
    await expect(n, 'live');
  }
  await sub.publish(PROTOBUF ? new TextEncoder().encode(JSON.stringify({ n: 4 })) : { n: 4 });
  await expect(4, 'own publication');

  await apiCall(api, 'disconnect', {
    user: '', client: first.client, disconnect: { code: 3011, reason: 'go away and come back' },
  });
  for (let n = 5; n <= 7; n += 1) {
    await apiCall(api, 'publish', { channel, data: { n } });
  }
  const second = await connected.take('the reconnection');
  check(second.transport === wanted, `reconnected over ${second.transport}, expected ${wanted}`);
  check(second.client !== first.client, 'the same client id after reconnecting');
  const again = await subscribed.take('the resubscribe');
  check(again.wasRecovering && again.recovered, `not recovered: ${JSON.stringify(again)}`);
  for (let n = 5; n <= 7; n += 1) {
    await expect(n, 'recovered');
  }
  await apiCall(api, 'publish', { channel, data: { n: 8 } });
  await expect(8, 'live after recovery');
  client.disconnect();
  console.log(`PASS: centrifuge-js (${PROTOBUF ? 'Protobuf' : 'JSON'}) over ${wanted}`);
}

runScenario(main, timeoutMs);
