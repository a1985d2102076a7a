#!/usr/bin/env node
// A centrifuge-js subscriber through a Redis failover (run by tests/redis_sentinel.rs).
//
//   1. connect to HERALD_WS_URL, subscribe to HERALD_CHANNEL (recoverable + positioned), print
//      "STEP subscribed"
//   2. record every publication ({n} data, offset) and every (re)subscribe (wasRecovering, recovered, epoch)
//      while the test publishes and fails the Redis primary over
//   3. on "go" from stdin, wait for the publication with {last: true}, print "RESULT <json of the record>"
//      and PASS; the test judges the record (every publication received, or the break reported)
//
// Env: HERALD_WS_URL, HERALD_CHANNEL; HERALD_E2E_TIMEOUT (s, default 90).
'use strict';

const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');
const readline = require('readline');

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`redis-failover.js: ${name} is not set`);
    process.exit(2);
  }
  return value;
};
const wsUrl = env('HERALD_WS_URL');
const channel = env('HERALD_CHANNEL');
const timeoutMs = Number(process.env.HERALD_E2E_TIMEOUT || '90') * 1000;

const record = [];
let client = null;
let lastSeen = false;
let reportWhenLast = false;

function report() {
  console.log(`RESULT ${JSON.stringify(record)}`);
  console.log('PASS: recorded the failover (centrifuge-js)');
  client.disconnect();
  process.exit(0);
}

setTimeout(() => {
  console.error(`FAIL: timed out after ${timeoutMs} ms; record: ${JSON.stringify(record)}`);
  process.exit(1);
}, timeoutMs).unref();

client = new Centrifuge(wsUrl, {
  websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 1000, timeout: 10000,
});
const sub = client.newSubscription(channel, { recoverable: true, positioned: true });
let announced = false;
sub.on('subscribed', (ctx) => {
  record.push({
    subscribed: {
      wasRecovering: ctx.wasRecovering,
      recovered: ctx.recovered,
      epoch: ctx.streamPosition && ctx.streamPosition.epoch,
    },
  });
  if (!announced) {
    announced = true;
    console.log('STEP subscribed');
  }
});
sub.on('subscribing', (ctx) => record.push({ subscribing: { code: ctx.code, reason: ctx.reason } }));
sub.on('unsubscribed', (ctx) => record.push({ unsubscribed: { code: ctx.code, reason: ctx.reason } }));
sub.on('publication', (ctx) => {
  if (ctx.data && ctx.data.last) {
    lastSeen = true;
    if (reportWhenLast) report();
    return;
  }
  record.push({ publication: { n: ctx.data && ctx.data.n, offset: ctx.offset } });
});
sub.subscribe();
client.connect();

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() !== 'go') return;
  reportWhenLast = true;
  if (lastSeen) report();
});
