#!/usr/bin/env node
// Herald's Pusher Channels adapter driven by Laravel Echo 2.5 (run by tests/pusher_sdk.rs), as a Laravel front
// end uses it: `broadcaster: 'pusher'` on pusher-js 8.6, with the `pusher` Node server library 5.3 standing in
// for Laravel's PusherBroadcaster (trigger with JSON-encoded data, `socket_id` for toOthers()) and for its
// /broadcasting/auth route (authorizeChannel, handed to Echo through the `authorizer` option).
//
// An ES module: laravel-echo 2.5 is `"type": "module"`, so Node takes its `require` entry (dist/echo.common.js,
// CommonJS code in a .js file) for ESM: require('laravel-echo') gives an empty module on Node 20.19+ (the code
// fails with "exports is not defined in ES module scope"), so `import Echo from 'laravel-echo'` it is.
//
// Echo instances A (user 1, {name:'Ada'}) and B (user 2, {name:'Bob'}):
//   1. Echo.channel('orders').listen('.OrderShipped', cb) on A and B; trigger `OrderShipped` on `orders` → both
//      callbacks get the payload object
//   2. listen('OrderShipped') (no dot: Echo prefixes the namespace App.Events); trigger `App\Events\OrderShipped`,
//      the name Laravel broadcasts → that handler fires on A and B (and the `.OrderShipped` one does not)
//   3. Echo.private('orders.1') (channel private-orders.1, authorised) .listen('.StatusChanged') and
//      .listenForWhisper('typing') on A and B; trigger StatusChanged → both get it; A whispers typing {name:'a'}
//      → B gets it; a following StatusChanged is A's next event there (its own whisper is not echoed)
//   4. Echo.join('chat') (presence-chat): A's here() lists Ada; B joins → B's here() lists Ada and Bob, A's
//      joining() gets {name:'Bob'}; B calls Echo.leave('chat') → A's leaving() gets {name:'Bob'}
//   5. toOthers: listenToAll on `orders` for A and B; trigger App\Events\OrderShipped {n:2} with socket_id =
//      A.socketId(), then {n:3}: B gets 2 then 3, A's next event is 3
//   disconnect.
//
// Env: HERALD_PUSHER_HOST, HERALD_PUSHER_PORT, HERALD_PUSHER_APP_ID, HERALD_PUSHER_KEY, HERALD_PUSHER_SECRET;
//      HERALD_E2E_TIMEOUT (s, default 60). (HERALD_API_URL and HERALD_API_KEY, which pusher.js uses, are not
//      needed here.)
// Prints the events log as JSON, then PASS and exits 0 on success; FAIL and exit 1 on a failed check or timeout;
// exit 2 on a missing or malformed variable.

import { isDeepStrictEqual } from 'node:util';
import Echo from 'laravel-echo';
import PusherJs from 'pusher-js';
import harness from './pusher-harness.js';

const PusherClient = PusherJs.default || PusherJs;

const { WAIT_MS, pusherConfig, startRun, disconnecting, backend: backendFor, clientOptions, check, within, Queue } = harness;

const cfg = pusherConfig('echo.mjs');

const instances = [];
const { log, finish } = startRun({
  sdk: 'laravel-echo + pusher-js + pusher (node)',
  passLine: 'Laravel Echo 2.5 on pusher-js 8.6 works unchanged against Herald',
  timeoutMs: cfg.timeoutMs,
  teardown: disconnecting(instances, (c) => c.echo.disconnect()),
});

const backend = backendFor(cfg);

// A trigger as Laravel's PusherBroadcaster makes it (the library JSON-encodes `data`); must answer HTTP 200 {}.
async function trigger(channel, event, data, params) {
  const what = `trigger ${channel} ${event} ${JSON.stringify(data)}${params ? ` ${JSON.stringify(params)}` : ''}`;
  let response;
  try {
    response = await within(backend.trigger(channel, event, data, params), what);
  } catch (e) {
    throw new Error(`${what} failed: ${e && e.message} status=${e && e.status} body=${JSON.stringify(e && e.body)}`);
  }
  const text = await response.text();
  log(`${what}: HTTP ${response.status} ${text}`);
  check(response.status === 200, `${what}: expected HTTP 200, got ${response.status} ${text}`);
}

// An Echo instance for `user` ({user_id, user_info}), configured as a Laravel app's resources/js/echo.js would be
// for a self-hosted Pusher-compatible server, with an authorizer in place of the HTTP call to /broadcasting/auth.
// Everything its handlers receive goes to one queue per channel name, in arrival order, as {handler, data}.
function connectEcho(name, user) {
  const echo = new Echo({
    broadcaster: 'pusher',
    Pusher: PusherClient,
    key: cfg.key,
    ...clientOptions(cfg),
    authorizer: (channel) => ({
      authorize: (socketId, callback) => {
        try {
          const auth = channel.name.startsWith('presence-')
            ? backend.authorizeChannel(socketId, channel.name, user)
            : backend.authorizeChannel(socketId, channel.name);
          log(`${name} authorizer ${channel.name} socket ${socketId} → ${JSON.stringify(auth)}`);
          callback(null, auth);
        } catch (e) {
          log(`${name} authorizer ${channel.name} failed: ${e}`);
          callback(e, null);
        }
      },
    }),
  });
  const c = { name, echo, queues: new Map(), connected: new Queue(), socketIds: new Set() };
  instances.push(c);
  // Echo 2's connector reports connected / connecting / disconnected / failed (Echo itself has no such hook),
  // possibly several times per change.
  let lastStatus;
  echo.connector.onConnectionChange((status) => {
    if (status === lastStatus) return;
    lastStatus = status;
    const socketId = echo.socketId();
    log(`${name} connection ${status}${status === 'connected' ? ` as ${socketId}` : ''}`);
    if (status === 'connected') {
      c.socketIds.add(socketId);
      c.connected.push(socketId);
    }
  });
  // Diagnostics only: what pusher-js underneath reports.
  echo.connector.pusher.connection.bind('error',
    (e) => log(`${name} connection error ${JSON.stringify(e && (e.data || e.error) || e)}`));

  c.queue = (channelName) => {
    if (!c.queues.has(channelName)) c.queues.set(channelName, new Queue());
    return c.queues.get(channelName);
  };
  // A callback for an Echo handler that records what it got under `handler`.
  c.record = (channelName, handler) => (data) => {
    log(`${name} ${channelName} ${handler} ${JSON.stringify(data)}`);
    c.queue(channelName).push({ handler, data });
  };
  // Echo's subscribed() / error() of `channel` (an Echo channel object named channelName), as one wait.
  c.subscribed = (channel, channelName) => {
    const outcome = new Promise((resolve, reject) => {
      channel.subscribed(() => { log(`${name} ${channelName} subscribed`); resolve(); });
      channel.error((e) => {
        log(`${name} ${channelName} subscription error ${JSON.stringify(e)}`);
        reject(new Error(`${name}: subscription to ${channelName} failed: ${JSON.stringify(e)}`));
      });
    });
    return within(outcome, `${name}: subscription to ${channelName}`);
  };
  // Takes the next record on channelName and checks which handler got what.
  c.expect = async (channelName, handler, data, what) => {
    const got = await c.queue(channelName).take(`${name}: ${what || `${handler} ${JSON.stringify(data)}`} on ${channelName}`);
    check(got.handler === handler && isDeepStrictEqual(got.data, data),
      `${name}: expected ${handler} ${JSON.stringify(data)} on ${channelName}` +
      `${what ? ` (${what})` : ''}, got ${JSON.stringify(got)}`);
  };
  return c;
}

const ADA = { user_id: '1', user_info: { name: 'Ada' } };
const BOB = { user_id: '2', user_info: { name: 'Bob' } };
const byName = (users) => [...users].sort((x, y) => String(x && x.name).localeCompare(String(y && y.name)));

async function main() {
  const a = connectEcho('A', ADA);
  const b = connectEcho('B', BOB);
  const socketA = await a.connected.take('A to connect');
  const socketB = await b.connected.take('B to connect');
  check(/^\d+\.\d+$/.test(socketA) && /^\d+\.\d+$/.test(socketB),
    `Echo.socketId() must be <digits>.<digits>: A=${socketA} B=${socketB}`);
  check(socketA !== socketB, `A and B got the same socket id ${socketA}`);

  // 1 and 2. A public channel, an event named with a leading dot (as is) and one without (namespaced).
  const ORDERS = 'orders';
  for (const c of [a, b]) {
    const orders = c.echo.channel(ORDERS)
      .listen('.OrderShipped', c.record(ORDERS, '.OrderShipped'))
      .listen('OrderShipped', c.record(ORDERS, 'OrderShipped'));
    await c.subscribed(orders, ORDERS);
  }
  await trigger(ORDERS, 'OrderShipped', { order: { id: 1, total: 9.5 } });
  for (const c of [a, b]) await c.expect(ORDERS, '.OrderShipped', { order: { id: 1, total: 9.5 } });
  await trigger(ORDERS, 'App\\Events\\OrderShipped', { order: { id: 2 } });
  for (const c of [a, b]) {
    await c.expect(ORDERS, 'OrderShipped', { order: { id: 2 } }, 'the App.Events-namespaced listener');
  }

  // 3. A private channel: an authorised subscription, a server event, and a whisper to the other instance only.
  const PRIVATE = 'private-orders.1';
  for (const c of [a, b]) {
    const channel = c.echo.private('orders.1')
      .listen('.StatusChanged', c.record(PRIVATE, '.StatusChanged'))
      .listenForWhisper('typing', c.record(PRIVATE, 'whisper typing'));
    await c.subscribed(channel, PRIVATE);
  }
  await trigger(PRIVATE, 'StatusChanged', { status: 'shipped' });
  for (const c of [a, b]) await c.expect(PRIVATE, '.StatusChanged', { status: 'shipped' });
  a.echo.private('orders.1').whisper('typing', { name: 'a' });
  await b.expect(PRIVATE, 'whisper typing', { name: 'a' });
  await trigger(PRIVATE, 'StatusChanged', { status: 'delivered' });
  await a.expect(PRIVATE, '.StatusChanged', { status: 'delivered' }, 'not its own whisper first');
  await b.expect(PRIVATE, '.StatusChanged', { status: 'delivered' });

  // 4. A presence channel: here(), joining() and leaving() with the signed user_info.
  const PRESENCE = 'presence-chat';
  const join = (c) => c.echo.join('chat')
    .here((users) => c.record(PRESENCE, 'here')(byName(users)))
    .joining(c.record(PRESENCE, 'joining'))
    .leaving(c.record(PRESENCE, 'leaving'));
  await a.subscribed(join(a), PRESENCE);
  await a.expect(PRESENCE, 'here', [ADA.user_info], 'here() with A alone');
  await b.subscribed(join(b), PRESENCE);
  await b.expect(PRESENCE, 'here', [ADA.user_info, BOB.user_info], 'here() with both users');
  await a.expect(PRESENCE, 'joining', BOB.user_info, 'joining() for user 2');
  b.echo.leave('chat');
  await a.expect(PRESENCE, 'leaving', BOB.user_info, 'leaving() for user 2 after Echo.leave');

  // 5. toOthers(): a trigger with A's Echo.socketId() skips A. listenToAll sees every event from here on.
  const all = new Map();
  for (const c of [a, b]) {
    const queue = new Queue();
    all.set(c, queue);
    c.echo.channel(ORDERS).listenToAll((event, data) => {
      log(`${c.name} ${ORDERS} listenToAll ${event} ${JSON.stringify(data)}`);
      queue.push({ event, data });
    });
  }
  const nextOfAll = async (c, event, data, what) => {
    const got = await all.get(c).take(`${c.name}: ${what} on ${ORDERS} (listenToAll)`);
    check(got.event === event && isDeepStrictEqual(got.data, data),
      `${c.name}: expected ${event} ${JSON.stringify(data)} on ${ORDERS} (${what}), got ${JSON.stringify(got)}`);
  };
  check(a.echo.socketId() === socketA, `A's Echo.socketId() changed: ${a.echo.socketId()} (was ${socketA})`);
  await trigger(ORDERS, 'App\\Events\\OrderShipped', { n: 2 }, { socket_id: a.echo.socketId() });
  await trigger(ORDERS, 'App\\Events\\OrderShipped', { n: 3 });
  await nextOfAll(b, 'OrderShipped', { n: 2 }, 'n=2');
  await nextOfAll(b, 'OrderShipped', { n: 3 }, 'n=3');
  await b.expect(ORDERS, 'OrderShipped', { n: 2 });
  await b.expect(ORDERS, 'OrderShipped', { n: 3 });
  await nextOfAll(a, 'OrderShipped', { n: 3 }, 'n=3 (n=2 was triggered with its socket id)');
  await a.expect(ORDERS, 'OrderShipped', { n: 3 }, 'n=2 was triggered with its socket id');

  for (const c of [a, b]) {
    check(c.echo.connectionStatus() === 'connected' && c.socketIds.size === 1,
      `${c.name}: expected one connection throughout, status ${c.echo.connectionStatus()}, ` +
      `socket ids ${JSON.stringify([...c.socketIds])}`);
  }
  finish(true);
}

main().catch((e) => finish(false, e && e.message || String(e)));
