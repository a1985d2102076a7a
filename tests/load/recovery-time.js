#!/usr/bin/env node
// Recovery time after a node kill, measured with the real centrifuge-js SDK (run by tests/load/recovery-time).
//
// Opens CLIENTS SDK clients through the load balancer (HERALD_WS_URL), each subscribed recoverable to one
// channel, and keeps publishing through HERALD_API_URL (with idempotency keys, so a retry after the kill is
// harmless). When every client has received a publication it kills the node KILL_PID with SIGKILL. Then it
// measures, for every client that lost its
// connection, the time from KILLED to its resubscribe with `recovered: true`, and checks every client saw
// every publication exactly once. Prints one JSON line: {clients, affected, p50_ms, p90_ms, max_ms, lost,
// duplicates}.
'use strict';

const path = require('path');
const modules = path.join(__dirname, '..', 'e2e', 'js', 'node_modules');
const { Centrifuge } = require(path.join(modules, 'centrifuge'));
const WebSocket = require(path.join(modules, 'ws'));

const wsUrl = process.env.HERALD_WS_URL;
const apiUrl = process.env.HERALD_API_URL;
const apiKey = process.env.HERALD_API_KEY;
const count = Number(process.env.CLIENTS || '200');
const channel = 'recovery-bench';

let killedAt = null;
let published = 0;
let stopPublishing = false;
const clients = [];

async function publish(n) {
  for (;;) {
    try {
      const response = await fetch(`${apiUrl}/api/publish`, {
        method: 'POST',
        headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
        body: JSON.stringify({ channel, data: { n }, idempotency_key: `bench-${n}` }),
      });
      const body = await response.json();
      if (body.result) return;
    } catch (_) {
      // The node behind the balancer died mid-request: retry (the key makes it safe).
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function publisher() {
  while (!stopPublishing) {
    published += 1;
    await publish(published);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function open(index) {
  const state = { seen: new Map(), disconnectedAt: null, recoveredAt: null };
  const client = new Centrifuge(wsUrl, { websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 2000 });
  client.on('error', (ctx) => console.error(`client ${index}: ${JSON.stringify(ctx.error)}`));
  client.on('connecting', () => {
    if (killedAt !== null && state.disconnectedAt === null) state.disconnectedAt = Date.now();
  });
  const sub = client.newSubscription(channel, { recoverable: true, positioned: true });
  sub.on('unsubscribed', (ctx) => console.error(`subscription ${index}: ${JSON.stringify(ctx)}`));
  sub.on('publication', (ctx) => {
    const n = ctx.data.n;
    state.seen.set(n, (state.seen.get(n) || 0) + 1);
  });
  sub.on('subscribed', (ctx) => {
    if (killedAt !== null && ctx.wasRecovering && ctx.recovered) state.recoveredAt = Date.now();
  });
  sub.subscribe();
  client.connect();
  clients.push({ client, state, index });
}

function percentile(values, p) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function main() {
  for (let i = 0; i < count; i += 1) open(i);
  const publishing = publisher();
  const progress = setInterval(() => {
    const ready = clients.filter((c) => c.state.seen.size > 0).length;
    console.error(`${ready}/${clients.length} clients receiving, ${published} published`);
  }, 1000);
  while (!clients.every((c) => c.state.seen.size > 0)) await new Promise((r) => setTimeout(r, 50));
  clearInterval(progress);
  process.kill(Number(process.env.KILL_PID), 'SIGKILL');
  killedAt = Date.now();
  const deadline = killedAt + 60000;
  for (;;) {
    const affected = clients.filter((c) => c.state.disconnectedAt !== null);
    if (affected.length > 0 && affected.every((c) => c.state.recoveredAt !== null)) break;
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  stopPublishing = true;
  await publishing;
  // Let the last publication reach everyone.
  const last = published;
  const waitUntil = Date.now() + 10000;
  while (!clients.every((c) => c.state.seen.has(last)) && Date.now() < waitUntil) {
    await new Promise((r) => setTimeout(r, 20));
  }
  let lost = 0;
  let duplicates = 0;
  for (const c of clients) {
    const first = Math.min(...c.state.seen.keys());
    for (let n = first; n <= last; n += 1) {
      const times = c.state.seen.get(n) || 0;
      if (times === 0) lost += 1;
      if (times > 1) duplicates += times - 1;
    }
  }
  const affected = clients.filter((c) => c.state.disconnectedAt !== null);
  const times = affected.filter((c) => c.state.recoveredAt !== null).map((c) => c.state.recoveredAt - killedAt);
  console.log(JSON.stringify({
    clients: clients.length,
    affected: affected.length,
    recovered: times.length,
    p50_ms: percentile(times, 50),
    p90_ms: percentile(times, 90),
    max_ms: times.length ? Math.max(...times) : null,
    published: last,
    lost,
    duplicates,
  }));
  for (const c of clients) c.client.disconnect();
  process.exit(0);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
