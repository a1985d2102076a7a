#!/usr/bin/env node
// centrifuge-js against Herald with the backend-proxy plugin and a Laravel-style backend that speaks
// Centrifugo's proxy protocol and authenticates by session cookie (run by tests/examples.rs, which serves
// the backend).
//
//   1. with the session cookie the backend accepts: connected as the user it names, with its connect data
//   2. subscribe to a channel the backend allows (with its subscribe data); one it refuses ends with 103
//   3. a publication is rewritten by the backend's publish proxy before subscribers see it
//   4. an RPC is answered by the backend
//   5. without the cookie: the backend's disconnect (4501) ends the client, no reconnect
//
// Env: HERALD_WS_URL, HERALD_COOKIE; HERALD_E2E_TIMEOUT (s, default 40).
'use strict';

const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');
const { requireEnv, check, Queue, runScenario } = require('./common');

const need = (name) => requireEnv('backend-proxy.js', name);
const wsUrl = need('HERALD_WS_URL');
const cookie = need('HERALD_COOKIE');
const timeoutMs = Number(process.env.HERALD_E2E_TIMEOUT || '40') * 1000;

/// A browser sends its cookies with the WebSocket upgrade; Node's `ws` is told to.
function withCookie(value) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, value ? { headers: { cookie: value } } : {});
    }
  };
}

function client(cookieValue) {
  const c = new Centrifuge(wsUrl, { websocket: withCookie(cookieValue), minReconnectDelay: 100, maxReconnectDelay: 300 });
  const events = { connected: new Queue(), disconnected: new Queue() };
  c.on('connected', (ctx) => events.connected.push(ctx));
  c.on('disconnected', (ctx) => events.disconnected.push(ctx));
  c.connect();
  return { c, events };
}

async function main() {
  const alice = client(cookie);
  const connected = await alice.events.connected.take('connected through the backend');
  check(connected.data && connected.data.welcome === 'alice', `connect data ${JSON.stringify(connected.data)}`);

  const room = alice.c.newSubscription('chat-room');
  const subscribed = new Queue();
  const publications = new Queue();
  room.on('subscribed', (ctx) => subscribed.push(ctx));
  room.on('publication', (ctx) => publications.push(ctx.data));
  room.subscribe();
  const sub = await subscribed.take('subscribed to chat-room');
  check(sub.data && sub.data.room === 'chat-room', `subscribe data ${JSON.stringify(sub.data)}`);

  const secret = alice.c.newSubscription('secret-plans');
  const refused = new Queue();
  secret.on('unsubscribed', (ctx) => refused.push(ctx));
  secret.on('error', (ctx) => refused.push(ctx.error));
  secret.subscribe();
  const refusal = await refused.take('secret-plans refused');
  check(refusal.code === 103, `secret-plans ended with ${JSON.stringify(refusal)}`);

  await room.publish({ text: 'hello' });
  const published = await publications.take('the rewritten publication');
  check(published.text === 'hello' && published.by === 'alice', `publication ${JSON.stringify(published)}`);

  const answer = await alice.c.rpc('sum', { a: 1, b: 2 });
  check(answer.data && answer.data.sum === 3, `rpc ${JSON.stringify(answer)}`);
  alice.c.disconnect();

  const stranger = client('');
  const ended = await stranger.events.disconnected.take('a stranger refused');
  check(ended.code === 4501, `the stranger ended with ${ended.code}, expected 4501`);
  stranger.c.disconnect();
  console.log('PASS: centrifuge-js through backend-proxy');
}

runScenario(main, timeoutMs);
