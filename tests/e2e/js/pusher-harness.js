// What the Pusher end-to-end scripts (pusher.js, echo.mjs) share: their environment, a bounded event log,
// one way to finish (a JSON summary, PASS or FAIL, the exit code once stdout is flushed), bounded waits and
// an ordered queue of what arrived.
'use strict';

// Bound for every single wait.
const WAIT_MS = 10000;

// Reads a required environment variable; a missing one ends the script with exit code 2.
function env(script, name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${script}: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

// The Pusher app and server the script drives (HERALD_PUSHER_*), and its overall timeout.
function pusherConfig(script) {
  const cfg = {
    host: env(script, 'HERALD_PUSHER_HOST'),
    port: Number(env(script, 'HERALD_PUSHER_PORT')),
    appId: env(script, 'HERALD_PUSHER_APP_ID'),
    key: env(script, 'HERALD_PUSHER_KEY'),
    secret: env(script, 'HERALD_PUSHER_SECRET'),
    timeoutMs: Number(process.env.HERALD_E2E_TIMEOUT || '60') * 1000,
  };
  if (!Number.isInteger(cfg.port) || cfg.port <= 0 || cfg.port > 65535) {
    console.error(`${script}: HERALD_PUSHER_PORT must be a TCP port, got ${process.env.HERALD_PUSHER_PORT}`);
    process.exit(2);
  }
  if (!Number.isFinite(cfg.timeoutMs) || cfg.timeoutMs <= 0) {
    console.error(`${script}: HERALD_E2E_TIMEOUT must be a positive number of seconds, got ${process.env.HERALD_E2E_TIMEOUT}`);
    process.exit(2);
  }
  return cfg;
}

// A run: `log` keeps its first 300 and last 700 lines (a reconnect loop would flood it); `finish` runs
// `teardown`, prints the summary (and `passLine` on success) and exits once stdout is flushed, at most once.
// The run fails by itself after `timeoutMs` or on an unhandled rejection.
function startRun({ sdk, passLine, timeoutMs, teardown }) {
  const t0 = Date.now();
  const events = [];
  let dropped = 0;
  let finished = false;
  const log = (line) => {
    events.push(`${Date.now() - t0}ms ${line}`);
    if (events.length > 1000) {
      events.splice(300, 1);
      dropped += 1;
    }
  };
  const finish = (ok, message) => {
    if (finished) return;
    finished = true;
    teardown(log);
    if (!ok) console.error(`FAIL: ${message}`);
    const summary = { sdk, ok, error: message || null, dropped, events };
    const out = `${JSON.stringify(summary)}\n${ok ? `PASS: ${passLine}\n` : ''}`;
    // Exit once stdout is flushed: process.exit() may cut a long write to a pipe.
    process.exitCode = ok ? 0 : 1;
    process.stdout.write(out, () => process.exit(ok ? 0 : 1));
  };
  setTimeout(() => finish(false, `overall timeout of ${timeoutMs} ms`), timeoutMs).unref();
  process.on('unhandledRejection', (e) => finish(false, `unhandled rejection: ${e && e.stack || e}`));
  return { log, finish };
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// Awaits a promise for at most WAIT_MS, failing with a message naming what was awaited.
function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${WAIT_MS} ms waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Resolves with the next value pushed after the call, in order.
class Queue {
  constructor() { this.items = []; this.waiters = []; }
  push(item) { const w = this.waiters.shift(); if (w) w(item); else this.items.push(item); }
  take(what) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    let waiter;
    const next = new Promise((resolve) => { waiter = resolve; this.waiters.push(resolve); });
    return within(next, what).catch((e) => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
      throw e;
    });
  }
}

// A run's teardown: disconnects every client `clients` holds by then (`disconnect` says how), logging
// failures instead of throwing, so the summary is still printed.
function disconnecting(clients, disconnect = (client) => client.disconnect()) {
  return (log) => {
    for (const client of clients) {
      try { disconnect(client); } catch (e) { log(`disconnect failed: ${e}`); }
    }
  };
}

// The application backend, as Laravel's PusherBroadcaster has it: the Node `pusher` library pointed at
// Herald (required here, not at the top, so scripts without a backend need not install it).
function backend(cfg, secret = cfg.secret) {
  const PusherServer = require('pusher');
  return new PusherServer({
    appId: cfg.appId, key: cfg.key, secret, host: cfg.host, port: cfg.port, useTLS: false, timeout: WAIT_MS,
  });
}

// pusher-js options for Herald at `cfg` over plain ws, as an app would set them; with `authorize`
// (socketId, channelName) → auth, private and presence channels are authorised through it, the way
// pusher-js's customHandler asks an app's auth endpoint.
function clientOptions(cfg, authorize) {
  const options = {
    cluster: 'mt1',
    wsHost: cfg.host,
    wsPort: cfg.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
  };
  if (authorize) {
    options.channelAuthorization = {
      customHandler: ({ socketId, channelName }, callback) => {
        try {
          callback(null, authorize(socketId, channelName));
        } catch (e) {
          callback(e, null);
        }
      },
    };
  }
  return options;
}

// Server-library requests whose outcome is checked, logging to `log`: `rejectedStatus` for one that must
// fail (its HTTP status), `okJson` for one that must answer HTTP 200 with JSON (the body).
function serverRequests(log) {
  async function rejectedStatus(promise, what) {
    let result;
    try {
      result = await within(promise, what);
    } catch (e) {
      log(`${what}: rejected status=${e && e.status} body=${JSON.stringify(e && e.body)}`);
      check(e && e.status !== undefined, `${what}: failed without an HTTP status: ${e && e.stack || e}`);
      return e.status;
    }
    throw new Error(`${what}: expected an HTTP error, got HTTP ${result && result.status}`);
  }

  async function okJson(promise, what) {
    let response;
    try {
      response = await within(promise, what);
    } catch (e) {
      throw new Error(`${what} failed: ${e && e.message} status=${e && e.status} body=${JSON.stringify(e && e.body)}`);
    }
    const text = await response.text();
    log(`${what}: HTTP ${response.status} ${text}`);
    check(response.status === 200, `${what}: expected HTTP 200, got ${response.status} ${text}`);
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Error(`${what}: HTTP 200 with a body that is not JSON: ${JSON.stringify(text)}`);
    }
  }

  return { rejectedStatus, okJson };
}

module.exports = {
  WAIT_MS, env, pusherConfig, startRun, disconnecting, backend, clientOptions, serverRequests, check, within, Queue,
};
