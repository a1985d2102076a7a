// End-to-end: delta compression (`delta: 'fossil'`) with centrifuge-js, JSON and Protobuf builds.
//
//   1. a JSON and a Protobuf subscriber with `delta: 'fossil'` on HERALD_CHANNEL (its namespace allows
//      fossil), and a plain JSON subscriber beside them
//   2. a stream of slowly changing JSON documents (~3 KiB, a few fields change per update) is published
//      through the HTTP API; every subscriber must receive every document, equal to what was published,
//      in order — and the delta subscribers must have received most of them as deltas
//   3. a forced reconnect (API disconnect 3011) while documents are published: the delta subscribers
//      recover, then receive deltas again
//   4. asking for delta compression on a channel whose namespace does not allow it (HERALD_PLAIN_CHANNEL)
//      is refused with 107
//
// Env: HERALD_WS_URL, HERALD_API_URL, HERALD_API_KEY, HERALD_CHANNEL, HERALD_PLAIN_CHANNEL
//      (optional) HERALD_E2E_TIMEOUT: overall timeout in seconds, default 30.
// Exits 0 on success, 1 on a failed check or timeout, 2 on bad configuration.
'use strict';

const { Centrifuge: JsonCentrifuge } = require('centrifuge');
const { Centrifuge: ProtobufCentrifuge } = require('centrifuge/build/protobuf');
const WebSocket = require('ws');
const { readEnv, check, within, apiCall, runScenario } = require('./common');

const cfg = readEnv('delta.js', {
  extra: ['HERALD_PLAIN_CHANNEL'],
  usage: 'HERALD_WS_URL=… HERALD_API_URL=… HERALD_API_KEY=… HERALD_CHANNEL=deltas:doc '
    + 'HERALD_PLAIN_CHANNEL=doc node tests/e2e/js/delta.js',
  defaultTimeoutSec: 30,
});

const decoder = new TextDecoder();

// The n-th version of a document: the same ~3 KiB, with a few fields that change.
function documentVersion(n) {
  const items = [];
  for (let i = 0; i < 40; i += 1) {
    items.push({ id: i, name: `instrument-${i}`, price: 100 + i + (i === n % 40 ? n / 100 : 0), unit: 'EUR' });
  }
  return { version: n, updated: `2026-12-06T02:00:${String(n % 60).padStart(2, '0')}Z`, items };
}

function subscriber(name, Centrifuge, decode, delta) {
  const client = new Centrifuge(cfg.wsUrl, {
    websocket: WebSocket, name, minReconnectDelay: 100, maxReconnectDelay: 300,
  });
  const options = { positioned: true, recoverable: true };
  if (delta) options.delta = 'fossil';
  const sub = client.newSubscription(cfg.channel, options);
  const received = [];
  const waiters = [];
  sub.on('publication', (ctx) => {
    received.push(decode(ctx.data));
    waiters.splice(0).forEach((wake) => wake());
  });
  const until = (count) => new Promise((resolve) => {
    const poll = () => (received.length >= count ? resolve() : waiters.push(poll));
    poll();
  });
  return { name, client, sub, received, until, delta };
}

async function publishAndAwait(subs, from, to) {
  for (let n = from; n <= to; n += 1) {
    await apiCall(cfg, 'publish', { channel: cfg.channel, data: documentVersion(n) });
  }
  await within(Promise.all(subs.map((s) => s.until(to))), 10000, `documents up to ${to}`,
    () => subs.map((s) => `${s.name} has ${s.received.length}`).join(', '));
}

async function main() {
  const subs = [
    subscriber('json-delta', JsonCentrifuge, (data) => data, true),
    subscriber('protobuf-delta', ProtobufCentrifuge, (data) => JSON.parse(decoder.decode(data)), true),
    subscriber('json-plain', JsonCentrifuge, (data) => data, false),
  ];
  for (const s of subs) {
    s.client.connect();
    s.sub.subscribe();
    await within(s.sub.ready(5000), 6000, `${s.name} subscribed`);
  }

  // 2. A stream of slowly changing documents.
  await publishAndAwait(subs, 1, 30);

  // 3. A forced reconnect, documents published while the clients are away, recovery, then more.
  const reconnected = subs.map((s) => new Promise((resolve) => {
    s.sub.once('subscribed', (ctx) => resolve(ctx));
  }));
  await apiCall(cfg, 'disconnect', { user: '', disconnect: { code: 3011, reason: 'test' } });
  for (let n = 31; n <= 35; n += 1) {
    await apiCall(cfg, 'publish', { channel: cfg.channel, data: documentVersion(n) });
  }
  const contexts = await within(Promise.all(reconnected), 10000, 'the resubscribes');
  contexts.forEach((ctx, i) => check(ctx.recovered, `${subs[i].name} did not recover: ${JSON.stringify(ctx)}`));
  await publishAndAwait(subs, 36, 60);

  for (const s of subs) {
    check(s.received.length === 60, `${s.name}: ${s.received.length} documents, expected 60`);
    s.received.forEach((doc, i) => {
      check(JSON.stringify(doc) === JSON.stringify(documentVersion(i + 1)),
        `${s.name}: document ${i + 1} differs from what was published: ${JSON.stringify(doc).slice(0, 200)}`);
    });
    if (s.delta) {
      const deltas = s.sub._deltaNumDelta;
      check(deltas >= 40, `${s.name}: only ${deltas} of 60 documents came as deltas`);
      const ratio = s.sub._deltaBytesDecoded / s.sub._deltaBytesReceived;
      check(ratio > 5, `${s.name}: deltas saved too little: ${ratio.toFixed(1)}x`);
      console.log(`${s.name}: ${deltas} deltas, ${s.sub._deltaBytesReceived} bytes received for `
        + `${s.sub._deltaBytesDecoded} decoded (${ratio.toFixed(1)}x)`);
    }
  }

  // 4. A namespace that does not allow deltas.
  const plain = subs[0].client.newSubscription(cfg.plainChannel, { delta: 'fossil' });
  // A non-temporary subscribe error ends the subscription with the error's code.
  const refused = new Promise((resolve) => plain.once('unsubscribed', (ctx) => resolve(ctx)));
  plain.subscribe();
  const ended = await within(refused, 5000, 'the refusal of a delta the namespace does not allow');
  check(ended.code === 107, `expected the subscription to end with 107, got ${JSON.stringify(ended)}`);

  subs.forEach((s) => s.client.disconnect());
  console.log('PASS: 60 documents, deltas byte-exact through a forced reconnect, JSON and Protobuf');
}

cfg.plainChannel = process.env.HERALD_PLAIN_CHANNEL;
runScenario(main, cfg.timeoutMs);
