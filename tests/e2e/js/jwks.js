#!/usr/bin/env node
// Key rotation through a JWKS endpoint, Keycloak-style, with centrifuge-js and the jwt-auth plugin
// (run by tests/sdk_jwt.rs, which serves the key set and rotates it when asked). Tokens are EdDSA
// (Ed25519), minted here with Node's crypto, each naming its key with `kid`.
//
//   1. alice connects with a token of key `k1` (the only key published), subscribes, receives
//   2. the provider rotates: `k2` is published beside `k1` (POST HERALD_ROTATE_URL)
//   3. bob connects with a token of `k2`: the plugin, which has never seen `k2`, refetches the set and
//      lets him in; alice's connection is untouched and both receive the next publication
//   4. a token naming a `kid` nobody published ends with 3500 and no reconnect
//
// Env: HERALD_WS_URL, HERALD_API_URL, HERALD_API_KEY, HERALD_CHANNEL, HERALD_ROTATE_URL,
//      HERALD_K1_PRIVATE_KEY, HERALD_K2_PRIVATE_KEY (PKCS#8 PEM); HERALD_E2E_TIMEOUT (s, default 40).
'use strict';

const crypto = require('crypto');
const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');
const { requireEnv, check, Queue, apiCall, runScenario } = require('./common');

const need = (name) => requireEnv('jwks.js', name);
const wsUrl = need('HERALD_WS_URL');
const api = { apiUrl: need('HERALD_API_URL').replace(/\/+$/, ''), apiKey: need('HERALD_API_KEY') };
const channel = need('HERALD_CHANNEL');
const rotateUrl = need('HERALD_ROTATE_URL');
const keys = { k1: need('HERALD_K1_PRIVATE_KEY'), k2: need('HERALD_K2_PRIVATE_KEY') };
const timeoutMs = Number(process.env.HERALD_E2E_TIMEOUT || '40') * 1000;

const b64url = (data) => Buffer.from(data).toString('base64url');

function token(sub, kid, signingKey) {
  const header = b64url(JSON.stringify({ alg: 'EdDSA', typ: 'JWT', kid }));
  const claims = b64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + 3600 }));
  const signature = crypto.sign(null, Buffer.from(`${header}.${claims}`), crypto.createPrivateKey(signingKey));
  return `${header}.${claims}.${b64url(signature)}`;
}

function client(jwt) {
  const c = new Centrifuge(wsUrl, { websocket: WebSocket, token: jwt, minReconnectDelay: 100, maxReconnectDelay: 300 });
  const events = { connected: new Queue(), disconnected: new Queue(), publications: new Queue() };
  c.on('connected', (ctx) => events.connected.push(ctx));
  c.on('disconnected', (ctx) => events.disconnected.push(ctx));
  const sub = c.newSubscription(channel);
  sub.on('publication', (ctx) => events.publications.push(ctx.data));
  sub.subscribe();
  c.connect();
  return { c, sub, events };
}

async function main() {
  const alice = client(token('alice', 'k1', keys.k1));
  check((await alice.events.connected.take('alice connected')).transport === 'websocket', 'alice on websocket');
  await apiCall(api, 'publish', { channel, data: { n: 1 } });
  check((await alice.events.publications.take('n=1')).n === 1, 'alice receives n=1');

  const rotated = await fetch(rotateUrl, { method: 'POST' });
  check(rotated.ok, `rotation answered ${rotated.status}`);
  const bob = client(token('bob', 'k2', keys.k2));
  await bob.events.connected.take('bob connected with the rotated key');
  await apiCall(api, 'publish', { channel, data: { n: 2 } });
  check((await alice.events.publications.take('alice n=2')).n === 2, 'alice receives n=2');
  check((await bob.events.publications.take('bob n=2')).n === 2, 'bob receives n=2');

  const mallory = client(token('mallory', 'k9', keys.k2));
  const ended = await mallory.events.disconnected.take('mallory refused');
  check(ended.code === 3500, `mallory ended with ${ended.code}, expected 3500`);
  for (const user of [alice, bob, mallory]) user.c.disconnect();
  console.log('PASS: centrifuge-js through a JWKS rotation');
}

runScenario(main, timeoutMs);
