// End-to-end: one channel, a JSON subscriber (centrifuge-js) and a Protobuf subscriber (centrifuge-js's
// Protobuf build) side by side.
//
//   1. both connect and subscribe to HERALD_CHANNEL
//   2. publications come from every entrance in turn: the HTTP API, the JSON client, the Protobuf client
//      (its data the JSON text's bytes)
//   3. both subscribers must receive every publication, in the same order, with equal data and offsets
//   4. the Protobuf client publishing bytes that are not JSON is refused with error 107, and nobody
//      receives them; presence and history answer the Protobuf client too
//
// With HERALD_EXPECT_DEFLATE=1 it first checks that the server takes `ws`'s permessage-deflate offer (the SDK
// clients then run compressed).
//
// Env: HERALD_WS_URL, HERALD_API_URL, HERALD_API_KEY, HERALD_CHANNEL
//      (optional) HERALD_E2E_TIMEOUT: overall timeout in seconds, default 30; HERALD_EXPECT_DEFLATE.
// Exits 0 on success, 1 on a failed check or timeout, 2 on bad configuration.
'use strict';

const { Centrifuge: JsonCentrifuge } = require('centrifuge');
const { Centrifuge: ProtobufCentrifuge } = require('centrifuge/build/protobuf');
const WebSocket = require('ws');
const { readEnv, check, within, apiCall, runScenario } = require('./common');

const cfg = readEnv('mixed.js', {
  usage: 'HERALD_WS_URL=ws://127.0.0.1:8000/connection/websocket HERALD_API_URL=http://127.0.0.1:8000/api '
    + 'HERALD_API_KEY=secret HERALD_CHANNEL=mixed node tests/e2e/js/mixed.js',
  defaultTimeoutSec: 30,
});

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// A subscriber: its client, its subscription and the publications it received as {n, from, offset}.
function subscriber(name, Centrifuge, decode) {
  const client = new Centrifuge(cfg.wsUrl, { websocket: WebSocket, name });
  const sub = client.newSubscription(cfg.channel, { positioned: true, recoverable: true });
  const received = [];
  const waiters = [];
  sub.on('publication', (ctx) => {
    received.push({ ...decode(ctx.data), offset: ctx.offset });
    waiters.splice(0).forEach((wake) => wake());
  });
  const until = (count) => new Promise((resolve) => {
    const poll = () => (received.length >= count ? resolve() : waiters.push(poll));
    poll();
  });
  return { name, client, sub, received, until };
}

// Opens a plain `ws` connection (which offers permessage-deflate) and checks the server took the offer.
async function checkDeflateNegotiated() {
  const ws = new WebSocket(cfg.wsUrl);
  await within(new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  }), 5000, 'a plain ws connection');
  check(/permessage-deflate/.test(ws.extensions), `permessage-deflate not negotiated: "${ws.extensions}"`);
  const reply = new Promise((resolve) => ws.once('message', (data) => resolve(JSON.parse(data))));
  ws.send(JSON.stringify({ id: 1, connect: {} }));
  const connected = await within(reply, 5000, 'the connect reply');
  check(connected.connect && connected.connect.client, `connect over deflate: ${JSON.stringify(connected)}`);
  ws.close();
}

async function main() {
  if (process.env.HERALD_EXPECT_DEFLATE === '1') {
    await checkDeflateNegotiated();
  }
  const json = subscriber('json', JsonCentrifuge, (data) => data);
  const protobuf = subscriber('protobuf', ProtobufCentrifuge, (data) => JSON.parse(decoder.decode(data)));
  for (const s of [json, protobuf]) {
    s.client.connect();
    s.sub.subscribe();
    await within(s.sub.ready(5000), 6000, `${s.name} subscribed`);
  }

  // 2. Every entrance in turn, each publication awaited before the next so the order is known.
  const expected = [];
  for (let n = 1; n <= 9; n += 1) {
    const from = ['api', 'json', 'protobuf'][n % 3];
    const data = { n, from, text: `line ${n}\nwith a newline` };
    if (from === 'api') {
      await apiCall(cfg, 'publish', { channel: cfg.channel, data });
    } else if (from === 'json') {
      await within(json.sub.publish(data), 5000, `json publish n=${n}`);
    } else {
      await within(protobuf.sub.publish(encoder.encode(JSON.stringify(data))), 5000, `protobuf publish n=${n}`);
    }
    expected.push(data);
    await within(Promise.all([json.until(n), protobuf.until(n)]), 5000, `n=${n} at both subscribers`,
      () => `json has ${json.received.length}, protobuf has ${protobuf.received.length}`);
  }

  // 3. The same publications, in the same order, with the same data and offsets.
  for (let i = 0; i < expected.length; i += 1) {
    const [a, b] = [json.received[i], protobuf.received[i]];
    check(JSON.stringify({ ...a, offset: 0 }) === JSON.stringify({ ...expected[i], offset: 0 }),
      `json subscriber #${i}: expected ${JSON.stringify(expected[i])}, got ${JSON.stringify(a)}`);
    check(JSON.stringify(a) === JSON.stringify(b),
      `#${i} differs: json ${JSON.stringify(a)}, protobuf ${JSON.stringify(b)}`);
    check(a.offset === i + 1, `#${i}: offset ${a.offset}, expected ${i + 1}`);
  }

  // 4. Bytes that are not JSON are refused, and reach nobody.
  let refused = null;
  try {
    await protobuf.sub.publish(new Uint8Array([0xff, 0x00, 0x01]));
  } catch (e) {
    refused = e;
  }
  check(refused && refused.code === 107, `non-JSON publish: expected error 107, got ${JSON.stringify(refused)}`);
  const presence = await within(protobuf.sub.presenceStats(), 5000, 'protobuf presence stats');
  check(presence.numClients === 2, `presence stats: expected 2 clients, got ${JSON.stringify(presence)}`);
  const history = await within(protobuf.sub.history({ limit: -1 }), 5000, 'protobuf history');
  const offsets = history.publications.map((p) => p.offset);
  check(offsets.length === 9 && offsets[8] === 9, `history: expected offsets 1..9, got ${offsets}`);
  const last = JSON.parse(decoder.decode(history.publications[8].data));
  check(last.n === 9, `history: last publication ${JSON.stringify(last)}`);
  check(json.received.length === 9 && protobuf.received.length === 9,
    `after the refused publish: json has ${json.received.length}, protobuf ${protobuf.received.length}`);

  json.client.disconnect();
  protobuf.client.disconnect();
  console.log(`PASS: 9 publications from the API, JSON and Protobuf clients reached both subscribers in order`);
}

runScenario(main, cfg.timeoutMs);
