// What the end-to-end scripts share: their common environment, failed checks as CheckError, bounded waits,
// calls to Herald's HTTP server API, and running a scenario to its exit status.
'use strict';

// Reads and checks the variables every script needs (plus `extra` names), exiting with 2 and `usage` when
// one is missing or malformed: {wsUrl, apiUrl, apiKey, channel, timeoutMs}.
// The value of the environment variable `name`, or exit 2 saying which script lacks it.
function requireEnv(script, name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${script}: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

function readEnv(script, { extra = [], usage, defaultTimeoutSec }) {
  const fail = (message) => {
    console.error(`${script}: ${message}`);
    process.exit(2);
  };
  const names = ['HERALD_WS_URL', 'HERALD_API_URL', 'HERALD_API_KEY', 'HERALD_CHANNEL', ...extra];
  const missing = names.filter((n) => !process.env[n]);
  if (missing.length) {
    fail(`missing required env var(s): ${missing.join(', ')}\nusage: ${usage}`);
  }
  if (!/^wss?:\/\/[^/]/.test(process.env.HERALD_WS_URL)) {
    fail(`HERALD_WS_URL must be a ws:// or wss:// URL, got ${JSON.stringify(process.env.HERALD_WS_URL)}`);
  }
  if (!/^https?:\/\/[^/]/.test(process.env.HERALD_API_URL)) {
    fail(`HERALD_API_URL must be an http:// or https:// URL, got ${JSON.stringify(process.env.HERALD_API_URL)}`);
  }
  const timeoutSec = Number(process.env.HERALD_E2E_TIMEOUT || String(defaultTimeoutSec));
  if (!Number.isFinite(timeoutSec) || timeoutSec <= 0) {
    fail(`HERALD_E2E_TIMEOUT must be a positive number of seconds, got ${process.env.HERALD_E2E_TIMEOUT}`);
  }
  return {
    wsUrl: process.env.HERALD_WS_URL,
    apiUrl: process.env.HERALD_API_URL.replace(/\/+$/, ''),
    apiKey: process.env.HERALD_API_KEY,
    channel: process.env.HERALD_CHANNEL,
    timeoutMs: timeoutSec * 1000,
  };
}

class CheckError extends Error {}

function check(cond, message) {
  if (!cond) throw new CheckError(message);
}

// Awaits a promise for at most ms milliseconds, failing with a message naming what we waited for.
function within(promise, ms, what, hint) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new CheckError(
      `timed out after ${ms} ms waiting for ${what}${hint ? ` (${hint()})` : ''}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

// Resolves each take() with the next value pushed, in order; a take that waits longer than `ms` fails
// naming what it waited for (and gives up its place).
class Queue {
  constructor() { this.items = []; this.waiters = []; }
  push(item) { const w = this.waiters.shift(); if (w) w(item); else this.items.push(item); }
  take(what, ms = 20000) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    let waiter;
    const next = new Promise((resolve) => { waiter = resolve; this.waiters.push(resolve); });
    return within(next, ms, what).catch((e) => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
      throw e;
    });
  }
}

// POST {apiUrl}/{method} with the key; the reply's `result`, or a CheckError saying what went wrong.
async function apiCall({ apiUrl, apiKey }, method, body) {
  const url = `${apiUrl}/${method}`;
  let resp;
  try {
    resp = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': apiKey },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
  } catch (e) {
    const cause = e && e.cause ? ` (${e.cause.code || e.cause.message || e.cause})` : '';
    throw new CheckError(`HTTP API ${url} request failed: ${e && e.message}${cause}`);
  }
  const text = await resp.text();
  if (resp.status !== 200) {
    throw new CheckError(`HTTP API ${url} returned HTTP ${resp.status}: ${JSON.stringify(text.slice(0, 300))}`);
  }
  let json;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CheckError(`HTTP API ${url} returned non-JSON body: ${JSON.stringify(text.slice(0, 300))}`);
  }
  if (json.error) {
    throw new CheckError(`HTTP API ${method} returned error: ${JSON.stringify(json.error)}`);
  }
  if (!json.result || typeof json.result !== 'object') {
    throw new CheckError(`HTTP API ${method} reply has no "result" object: ${text.slice(0, 300)}`);
  }
  return json.result;
}

// Runs a scenario's `main` within `timeoutMs` and exits: 0 when it resolves, 1 (with the reason) when it
// throws or times out.
function runScenario(main, timeoutMs) {
  const timer = setTimeout(() => {
    console.error(`FAIL: timed out after ${timeoutMs} ms`);
    process.exit(1);
  }, timeoutMs);
  main().then(() => {
    clearTimeout(timer);
    process.exit(0);
  }, (e) => {
    console.error(e instanceof CheckError ? `FAIL: ${e.message}` : e);
    process.exit(1);
  });
}

module.exports = { requireEnv, readEnv, CheckError, check, within, Queue, apiCall, runScenario };
