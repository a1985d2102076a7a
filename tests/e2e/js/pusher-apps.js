#!/usr/bin/env node
// Two Pusher apps on one Herald, isolated from each other (run by tests/pusher_apps.rs): pusher-js 8.6 clients
// and the `pusher` Node server library 5.3 of each app.
//
//   a. client A (app 1's key) and client B (app 2's key) subscribe `news` and `private-orders`, each authorised
//      by its own app's backend; expect pusher:subscription_succeeded on all four
//   b. app 2's backend triggers `hello` {app:2} on news and private-orders, then app 1's triggers {app:1}: A's
//      next event on each channel is app 1's, B's is app 2's (neither hears the other app's channel)
//   c. client B subscribes `private-stolen` with a signature app 1's backend made (for B's socket id):
//      pusher:subscription_error 401, one app's secret does not open another's channels
//   d. app 1's GET /channels lists news and private-orders only from A's side — B's `only-two` (subscribed by
//      B alone) is listed by app 2's backend and not by app 1's; app 1's GET /channels/only-two is unoccupied
//   e. a backend with app 1's id and app 2's secret is refused with 401
//   f. a client with a disabled app's key is refused: pusher-js reports the PusherError 4003 and gives up
//
// Env: HERALD_PUSHER_HOST, HERALD_PUSHER_PORT; app 1 as HERALD_PUSHER_APP_ID, HERALD_PUSHER_KEY,
//      HERALD_PUSHER_SECRET; app 2 as HERALD_PUSHER_APP2_ID, HERALD_PUSHER_APP2_KEY, HERALD_PUSHER_APP2_SECRET;
//      the disabled app's key as HERALD_PUSHER_DISABLED_KEY; HERALD_E2E_TIMEOUT (s, default 60).
// Prints the events log as JSON, then PASS and exits 0 on success; FAIL and exit 1 on a failed check or timeout;
// exit 2 on a missing or malformed variable.
'use strict';

const PusherJs = require('pusher-js');

const PusherClient = PusherJs.default || PusherJs;

const {
  env, pusherConfig, startRun, disconnecting, backend: backendFor, clientOptions, serverRequests, check, Queue,
} = require('./pusher-harness');

const SCRIPT = 'pusher-apps.js';
const one = pusherConfig(SCRIPT);
const two = {
  ...one,
  appId: env(SCRIPT, 'HERALD_PUSHER_APP2_ID'),
  key: env(SCRIPT, 'HERALD_PUSHER_APP2_KEY'),
  secret: env(SCRIPT, 'HERALD_PUSHER_APP2_SECRET'),
};
const disabledKey = env(SCRIPT, 'HERALD_PUSHER_DISABLED_KEY');

const clients = [];
const { log, finish } = startRun({
  sdk: 'pusher-js + pusher (node), two apps',
  passLine: 'two Pusher apps on one Herald are isolated from each other',
  timeoutMs: one.timeoutMs,
  teardown: disconnecting(clients),
});
const { rejectedStatus, okJson } = serverRequests(log);

const backendOne = backendFor(one);
const backendTwo = backendFor(two);

// A pusher-js client of the app `cfg` names, authorised by `backend` (by default, its own app's), with a
// queue of events per channel and one of the errors pusher-js reports.
function connectClient(name, cfg, backend) {
  const authorize = backend && ((socketId, channel) => backend.authorizeChannel(socketId, channel));
  const client = new PusherClient(cfg.key, clientOptions(cfg, authorize));
  clients.push(client);
  const c = { client, queues: new Map(), states: new Queue(), errors: new Queue() };
  client.connection.bind('state_change', ({ previous, current }) => {
    log(`${name} state ${previous} -> ${current}`);
    c.states.push(current);
  });
  // A refusal in the handshake arrives wrapped: a WebSocketError whose error is the PusherError.
  client.connection.bind('error', (error) => {
    const pusherError = error && error.type === 'WebSocketError' ? error.error : error;
    log(`${name} error ${error && error.type} ${JSON.stringify(pusherError)}`);
    if (pusherError && pusherError.type === 'PusherError') c.errors.push(pusherError.data && pusherError.data.code);
  });
  c.subscribe = (channelName) => {
    const queue = new Queue();
    c.queues.set(channelName, queue);
    client.subscribe(channelName).bind_global((event, data) => {
      log(`${name} ${channelName} ${event} ${JSON.stringify(data)}`);
      if (event !== 'pusher:subscription_count') queue.push({ event, data });
    });
  };
  c.next = (channelName) => c.queues.get(channelName).take(`${name}: an event on ${channelName}`);
  c.expect = async (channelName, event, data) => {
    const got = await c.next(channelName);
    check(got.event === event && JSON.stringify(got.data) === JSON.stringify(data),
      `${name}: expected ${event} ${JSON.stringify(data)} on ${channelName}, got ${JSON.stringify(got)}`);
  };
  return c;
}

async function main() {
  // a.
  const a = connectClient('A', one, backendOne);
  const b = connectClient('B', two, backendTwo);
  for (const c of [a, b]) {
    for (const channel of ['news', 'private-orders']) c.subscribe(channel);
  }
  b.subscribe('only-two');
  for (const [c, channels] of [[a, ['news', 'private-orders']], [b, ['news', 'private-orders', 'only-two']]]) {
    for (const channel of channels) {
      const answer = await c.next(channel);
      check(answer.event === 'pusher:subscription_succeeded', `expected to subscribe ${channel}, got ${JSON.stringify(answer)}`);
    }
  }

  // b. App 2's events go out first: were they to leak, they would be A's next events.
  for (const channel of ['news', 'private-orders']) {
    await backendTwo.trigger(channel, 'hello', { app: 2 });
    await backendOne.trigger(channel, 'hello', { app: 1 });
    await a.expect(channel, 'hello', { app: 1 });
    await b.expect(channel, 'hello', { app: 2 });
  }

  // c. B's socket id, signed with app 1's secret.
  const stolen = connectClient('B2', two, backendOne);
  for (let state; state !== 'connected';) state = await stolen.states.take('B2 connected');
  stolen.subscribe('private-stolen');
  const refused = await stolen.next('private-stolen');
  check(refused.event === 'pusher:subscription_error' && refused.data && refused.data.status === 401,
    `B2: expected pusher:subscription_error 401, got ${JSON.stringify(refused)}`);

  // d.
  const listedOne = Object.keys((await okJson(backendOne.get({ path: '/channels' }), 'app 1 GET /channels')).channels).sort();
  check(JSON.stringify(listedOne) === JSON.stringify(['news', 'private-orders']),
    `app 1 lists ${JSON.stringify(listedOne)}, expected news and private-orders`);
  const listedTwo = Object.keys((await okJson(backendTwo.get({ path: '/channels' }), 'app 2 GET /channels')).channels).sort();
  check(JSON.stringify(listedTwo) === JSON.stringify(['news', 'only-two', 'private-orders']),
    `app 2 lists ${JSON.stringify(listedTwo)}, expected news, only-two and private-orders`);
  const onlyTwo = await okJson(backendOne.get({ path: '/channels/only-two' }), 'app 1 GET /channels/only-two');
  check(onlyTwo.occupied === false, `app 1 sees app 2's channel: ${JSON.stringify(onlyTwo)}`);

  // e.
  const crossed = backendFor({ ...one, secret: two.secret });
  const status = await rejectedStatus(crossed.trigger('news', 'hello', { crossed: true }), 'app 1 signed with app 2\'s secret');
  check(status === 401, `expected 401 for a request signed with another app's secret, got ${status}`);

  // f.
  const off = connectClient('D', { ...one, key: disabledKey });
  const code = await off.errors.take('D: the refusal');
  check(code === 4003, `D: expected PusherError 4003 (app disabled), got ${code}`);
  // Refused, not retried: pusher-js gives up.
  for (let state; state !== 'disconnected';) {
    state = await off.states.take('D disconnected');
    check(['connecting', 'disconnected'].includes(state), `D: expected to give up, got ${state}`);
  }
}

main().then(() => finish(true), (e) => finish(false, e && e.stack || String(e)));
