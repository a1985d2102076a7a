#!/usr/bin/env node
// Herald's Pusher Channels adapter driven by the real Pusher libraries (run by tests/pusher_sdk.rs): pusher-js
// 8.6 as the browser/Laravel Echo client and `pusher` 5.3 (pusher-http-node) as the application backend.
//
//   a. clients A and B (pusher-js, ws only) subscribe `news` and `private-chat`; private channels are authorised
//      by a channelAuthorization.customHandler calling the server library's authorizeChannel(socketId, channel),
//      as a Laravel /broadcasting/auth backend would; expect pusher:subscription_succeeded on all four
//   b. trigger('news', 'order-shipped', {n:1}): A and B both get {n:1}
//   c. trigger {n:2} with socket_id = A's socket id, then {n:3}: B gets 2 then 3, A's next event is 3 (2 excluded)
//   d. A triggers client-typing {who:'a'} on private-chat: B gets it; then the server triggers `done` there and
//      A's next private-chat event is `done` (a client event is not echoed to its sender)
//   e. client C subscribes `private-secret` with a wrong signature: pusher:subscription_error with status 401 on
//      that channel, and C stays connected (no state change, and a pusher:ping still gets its pusher:pong)
//   f. Herald's own HTTP API publishes {n:5} to `news` with tag event=native-event: A and B get `native-event`
//   g. GET /channels/news?info=subscription_count → 200 {occupied:true, subscription_count:2}; GET /channels lists
//      news and private-chat (and not private-secret, whose subscription failed)
//   h. a trigger with more than 10 KiB of data is rejected with HTTP 413
//   i. a server library with a wrong secret is rejected with HTTP 401
//   then trigger `end` on news: A and B get it next (neither the 413 nor the 401 event was delivered)
//   j. presence (channel_data signed by authorizeChannel(socketId, channel, {user_id, user_info})): A as user "1"
//      {name:'Ada'} subscribes `presence-room` → members.count 1, me.id "1"; B as user "2" {name:'Bob'} → B sees
//      count 2 with Ada, and A gets pusher:member_added for "2" {name:'Bob'}; client M, whose handler signs other
//      channel_data than it sends, gets pusher:subscription_error 401; client A2, user 1 again (as the number 1,
//      which the server normalises to "1"), subscribes → count 2, and a trigger right after is the next
//      presence-room event of A, B and A2 (no member_added for a second connection of a present user); GET
//      /channels/presence-room/users lists 1 and 2, ?info=user_count gives 2, GET /channels?filter_by_prefix=
//      presence-&info=user_count gives presence-room 2, /channels/news/users is a 400; A2 disconnects (awaited by
//      polling the connection count of Herald's `info` API) → a trigger is A's and B's next event (no
//      member_removed while user 1 is still connected through A); B unsubscribes → A gets pusher:member_removed
//      for "2", count 1, and /users lists 1 alone
//   disconnect.
//
// Env: HERALD_PUSHER_HOST, HERALD_PUSHER_PORT, HERALD_PUSHER_APP_ID, HERALD_PUSHER_KEY, HERALD_PUSHER_SECRET,
//      HERALD_API_URL (Herald's own `/api` base), HERALD_API_KEY; HERALD_E2E_TIMEOUT (s, default 60).
// Prints the events log as JSON, then PASS and exits 0 on success; FAIL and exit 1 on a failed check or timeout;
// exit 2 on a missing or malformed variable.
'use strict';

const { isDeepStrictEqual } = require('node:util');
const PusherJs = require('pusher-js');

const PusherClient = PusherJs.default || PusherJs;

const {
  WAIT_MS, env, pusherConfig, startRun, disconnecting, backend: backendFor, clientOptions, serverRequests, check,
  Queue,
} = require('./pusher-harness');

const cfg = {
  ...pusherConfig('pusher.js'),
  apiUrl: env('pusher.js', 'HERALD_API_URL').replace(/\/+$/, ''),
  apiKey: env('pusher.js', 'HERALD_API_KEY'),
};

const clients = [];
const { log, finish } = startRun({
  sdk: 'pusher-js + pusher (node)',
  passLine: 'pusher-js 8.6 and the pusher server library 5.3 work unchanged against Herald',
  timeoutMs: cfg.timeoutMs,
  teardown: disconnecting(clients),
});

const backend = backendFor(cfg);

// A pusher-js client whose every channel event goes to a queue per channel, in arrival order.
function connectClient(name, authorize) {
  const client = new PusherClient(cfg.key, clientOptions(cfg, authorize));
  clients.push(client);
  const c = { name, client, queues: new Map(), states: [], connected: new Queue(), pongs: new Queue() };
  client.connection.bind('state_change', ({ previous, current }) => {
    log(`${name} state ${previous} -> ${current}`);
    c.states.push(current);
    if (current === 'connected') c.connected.push(client.connection.socket_id);
    else if (previous === 'connected') c.pongs.push({ left: current }); // fails a pending pong wait at once
  });
  client.connection.bind('error', (e) => log(`${name} connection error ${JSON.stringify(e && (e.data || e.error) || e)}`));
  client.bind('pusher:pong', () => { log(`${name} pusher:pong`); c.pongs.push({ pong: true }); });
  c.subscribe = (channelName) => {
    const queue = new Queue();
    c.queues.set(channelName, queue);
    const channel = client.subscribe(channelName);
    channel.bind_global((event, data) => {
      log(`${name} ${channelName} ${event} ${JSON.stringify(data)}`);
      // An optional hosted-Pusher feature; not part of what this scenario checks.
      if (event === 'pusher:subscription_count') return;
      queue.push({ event, data });
    });
    return channel;
  };
  c.next = (channelName, what) => c.queues.get(channelName).take(`${name}: ${what} on ${channelName}`);
  // Takes the next event on channelName and checks its name and data.
  c.expect = async (channelName, event, data, what) => {
    const got = await c.next(channelName, what || `${event} ${JSON.stringify(data)}`);
    check(got.event === event && (data === undefined || isDeepStrictEqual(got.data, data)),
      `${name}: expected ${event} ${data === undefined ? '' : JSON.stringify(data)} on ${channelName}, ` +
      `got ${JSON.stringify(got)}`);
    return got;
  };
  return c;
}

// Authorises private channels as authorizeChannel does, and presence channels as `presence` (user_id, user_info).
const authorizeAs = (presence) => (socketId, channelName) => (channelName.startsWith('presence-')
  ? backend.authorizeChannel(socketId, channelName, presence)
  : backend.authorizeChannel(socketId, channelName));

// The presence users of step j: channel_data as the app backend would sign it.
const ADA = { user_id: '1', user_info: { name: 'Ada' } };
const BOB = { user_id: '2', user_info: { name: 'Bob' } };

// A presence channel's members as pusher-js holds them right now: {id: info}.
function roster(channel) {
  const members = {};
  channel.members.each((member) => { members[member.id] = member.info; });
  return members;
}

const { rejectedStatus, okJson } = serverRequests(log);

// A call to Herald's own API (POST {apiUrl}/{method}) that must answer HTTP 200; its JSON body.
async function heraldApi(method, body) {
  let response;
  try {
    response = await fetch(`${cfg.apiUrl}/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': cfg.apiKey },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(WAIT_MS),
    });
  } catch (e) {
    throw new Error(`Herald API ${method} failed: ${e && e.message} ${e && e.cause || ''}`);
  }
  const text = await response.text();
  log(`Herald API ${method}: HTTP ${response.status} ${text}`);
  check(response.status === 200, `Herald API ${method}: HTTP ${response.status} ${text}`);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`Herald API ${method}: HTTP 200 with a body that is not JSON: ${JSON.stringify(text)}`);
  }
}

// The connections Herald counts (its own API's `info`, over all nodes). A connection is counted until its
// cleanup is over: unsubscribed everywhere, member_removed sent where it was due.
async function connectionCount() {
  const info = await heraldApi('info', {});
  const nodes = info && info.result && info.result.nodes;
  check(Array.isArray(nodes) && nodes.every((n) => Number.isInteger(n.num_clients)),
    `Herald API info: expected {result:{nodes:[{num_clients}, …]}}, got ${JSON.stringify(info)}`);
  return nodes.reduce((sum, n) => sum + n.num_clients, 0);
}

const trigger = (channel, event, data, params) =>
  okJson(backend.trigger(channel, event, data, params), `trigger ${channel} ${event} ${JSON.stringify(data)}`);

async function main() {
  // a. A and B subscribe a public and a private channel (in step j they are the presence users Ada and Bob).
  const a = connectClient('A', authorizeAs(ADA));
  const b = connectClient('B', authorizeAs(BOB));
  for (const c of [a, b]) {
    c.subscribe('news');
    c.subscribe('private-chat');
  }
  const socketA = await a.connected.take('A to connect');
  const socketB = await b.connected.take('B to connect');
  check(/^\d+\.\d+$/.test(socketA) && /^\d+\.\d+$/.test(socketB),
    `socket ids must be <digits>.<digits>: A=${socketA} B=${socketB}`);
  check(socketA !== socketB, `A and B got the same socket id ${socketA}`);
  for (const c of [a, b]) {
    for (const channel of ['news', 'private-chat']) {
      const got = await c.next(channel, 'pusher:subscription_succeeded');
      check(got.event === 'pusher:subscription_succeeded',
        `${c.name}: expected pusher:subscription_succeeded on ${channel}, got ${JSON.stringify(got)}`);
    }
  }

  // b. A trigger reaches both.
  const body = await trigger('news', 'order-shipped', { n: 1 });
  check(isDeepStrictEqual(body, {}), `trigger: expected the body {}, got ${JSON.stringify(body)}`);
  await a.expect('news', 'order-shipped', { n: 1 });
  await b.expect('news', 'order-shipped', { n: 1 });

  // c. socket_id excludes that connection.
  await trigger('news', 'order-shipped', { n: 2 }, { socket_id: socketA });
  await trigger('news', 'order-shipped', { n: 3 });
  await b.expect('news', 'order-shipped', { n: 2 });
  await b.expect('news', 'order-shipped', { n: 3 });
  await a.expect('news', 'order-shipped', { n: 3 }, 'n=3 (n=2 was triggered with its socket_id)');

  // d. Client events go to the other subscribers only.
  check(a.client.channel('private-chat').trigger('client-typing', { who: 'a' }) === true, 'A could not send client-typing');
  await b.expect('private-chat', 'client-typing', { who: 'a' });
  await trigger('private-chat', 'done', { step: 'd' });
  await a.expect('private-chat', 'done', { step: 'd' }, 'done (not its own client-typing)');
  await b.expect('private-chat', 'done', { step: 'd' });

  // e. A wrong signature fails that subscription only.
  const c = connectClient('C', () => ({ auth: `${cfg.key}:${'0'.repeat(64)}` }));
  await c.connected.take('C to connect');
  const cStates = c.states.length;
  c.subscribe('private-secret');
  const failed = await c.next('private-secret', 'pusher:subscription_error');
  check(failed.event === 'pusher:subscription_error',
    `C: expected pusher:subscription_error on private-secret, got ${JSON.stringify(failed)}`);
  check(failed.data && failed.data.status === 401 && failed.data.type === 'AuthError',
    `C: expected {type:"AuthError", status:401}, got ${JSON.stringify(failed.data)}`);
  c.client.send_event('pusher:ping', {});
  const pong = await c.pongs.take('C: pusher:pong after the failed subscription');
  check(pong.pong, `C left the connected state (now ${pong.left}) after the failed subscription`);
  check(c.client.connection.state === 'connected' && c.states.length === cStates,
    `C left the connected state: ${c.client.connection.state}, states ${JSON.stringify(c.states)}`);

  // f. Herald's own API publishes to the same channels.
  await heraldApi('publish', { channel: 'news', data: { n: 5 }, tags: { event: 'native-event' } });
  await a.expect('news', 'native-event', { n: 5 });
  await b.expect('news', 'native-event', { n: 5 });

  // g. Channel queries.
  const news = await okJson(backend.get({ path: '/channels/news', params: { info: 'subscription_count' } }),
    'GET /channels/news?info=subscription_count');
  check(news.occupied === true && news.subscription_count === 2,
    `GET /channels/news: expected {occupied:true, subscription_count:2}, got ${JSON.stringify(news)}`);
  const listed = await okJson(backend.get({ path: '/channels' }), 'GET /channels');
  const names = Object.keys(listed.channels || {});
  check(names.includes('news') && names.includes('private-chat'),
    `GET /channels: expected news and private-chat, got ${JSON.stringify(listed)}`);
  check(!names.includes('private-secret'),
    `GET /channels lists private-secret, whose only subscription failed: ${JSON.stringify(listed)}`);

  // h. Data over 10 KiB → 413.
  const big = await rejectedStatus(backend.trigger('news', 'too-big', { blob: 'x'.repeat(11 * 1024) }),
    'trigger with 11 KiB of data');
  check(big === 413, `trigger with 11 KiB of data: expected HTTP 413, got ${big}`);

  // i. A wrong secret → 401.
  const forger = backendFor(cfg, `${cfg.secret}-wrong`);
  const forged = await rejectedStatus(forger.trigger('news', 'forged', { n: 666 }), 'trigger with a wrong secret');
  check(forged === 401, `trigger with a wrong secret: expected HTTP 401, got ${forged}`);

  // Neither rejected trigger was delivered: the next event is `end`.
  await trigger('news', 'end', { n: 6 });
  await a.expect('news', 'end', { n: 6 }, 'end (not too-big nor forged)');
  await b.expect('news', 'end', { n: 6 }, 'end (not too-big nor forged)');
  check(c.client.connection.state === 'connected' && c.states.length === cStates,
    `C left the connected state: ${c.client.connection.state}, states ${JSON.stringify(c.states)}`);

  await presence(a, b);
  finish(true);
}

// j. Presence: the roster, member_added / member_removed per user (not per connection), the presence queries.
async function presence(a, b) {
  const ROOM = 'presence-room';
  // Takes c's pusher:subscription_succeeded on ROOM and checks the members pusher-js built from it.
  const joined = async (c, channel, meId, members) => {
    const got = await c.next(ROOM, 'pusher:subscription_succeeded');
    check(got.event === 'pusher:subscription_succeeded',
      `${c.name}: expected pusher:subscription_succeeded on ${ROOM}, got ${JSON.stringify(got)}`);
    const seen = { count: channel.members.count, me: channel.members.me, members: roster(channel) };
    log(`${c.name} ${ROOM} members ${JSON.stringify(seen)}`);
    check(seen.count === Object.keys(members).length && isDeepStrictEqual(seen.members, members),
      `${c.name}: expected the members ${JSON.stringify(members)}, got ${JSON.stringify(seen)}`);
    check(seen.me && String(seen.me.id) === meId && isDeepStrictEqual(seen.me.info, members[meId]),
      `${c.name}: expected members.me to be user ${meId} ${JSON.stringify(members[meId])}, ` +
      `got ${JSON.stringify(seen.me)}`);
  };
  // A trigger on ROOM that must be the next ROOM event of every client in `clients`: whatever the server sent
  // them before it (a member_added or member_removed that should not exist) would come first.
  const nothingBefore = async (clients, step, why) => {
    await trigger(ROOM, 'checkpoint', { step });
    for (const c of clients) await c.expect(ROOM, 'checkpoint', { step }, `checkpoint ${step} (${why})`);
  };
  const users = async (what) => {
    const body = await okJson(backend.get({ path: `/channels/${ROOM}/users` }),
      `GET /channels/${ROOM}/users ${what}`);
    check(Array.isArray(body.users) && body.users.every((u) => u && typeof u.id === 'string'),
      `GET /channels/${ROOM}/users: expected {users:[{id:"…"}, …]}, got ${JSON.stringify(body)}`);
    return body.users.map((u) => u.id).sort();
  };
  const ada = ADA.user_info;
  const bob = BOB.user_info;

  // A (user "1") first: alone in the room.
  const roomA = a.subscribe(ROOM);
  await joined(a, roomA, '1', { 1: ada });

  // B (user "2") joins: B sees both, A is told about B.
  const roomB = b.subscribe(ROOM);
  await joined(b, roomB, '2', { 1: ada, 2: bob });
  await a.expect(ROOM, 'pusher:member_added', { id: '2', info: bob });
  check(roomA.members.count === 2 && isDeepStrictEqual(roster(roomA), { 1: ada, 2: bob }),
    `A: expected members 1 and 2 after member_added, got ${roomA.members.count} ${JSON.stringify(roster(roomA))}`);

  // M signs user "3" but sends user "4": the signature covers the exact channel_data string, so 401.
  const m = connectClient('M', (socketId, channelName) => ({
    auth: backend.authorizeChannel(socketId, channelName, { user_id: '3', user_info: { name: 'Eve' } }).auth,
    channel_data: JSON.stringify({ user_id: '4', user_info: { name: 'Eve' } }),
  }));
  await m.connected.take('M to connect');
  m.subscribe(ROOM);
  const refused = await m.next(ROOM, 'pusher:subscription_error');
  check(refused.event === 'pusher:subscription_error',
    `M: expected pusher:subscription_error on ${ROOM}, got ${JSON.stringify(refused)}`);
  check(refused.data && refused.data.status === 401 && refused.data.type === 'AuthError',
    `M: expected {type:"AuthError", status:401}, got ${JSON.stringify(refused.data)}`);

  // A2 is user 1 again, given as a number: the same user, so the count stays 2 and nobody is told.
  const a2 = connectClient('A2', authorizeAs({ user_id: 1, user_info: ada }));
  const roomA2 = a2.subscribe(ROOM);
  const socketA2 = await a2.connected.take('A2 to connect');
  await joined(a2, roomA2, '1', { 1: ada, 2: bob });
  await nothingBefore([a, b, a2], 'A2 joined', 'a second connection of user 1 is no member_added');

  // The presence queries.
  const ids = await users('with A, B and A2');
  check(isDeepStrictEqual(ids, ['1', '2']),
    `GET /channels/${ROOM}/users: expected ids 1 and 2, got ${JSON.stringify(ids)}`);
  const room = await okJson(backend.get({ path: `/channels/${ROOM}`, params: { info: 'user_count' } }),
    `GET /channels/${ROOM}?info=user_count`);
  check(isDeepStrictEqual(room, { occupied: true, user_count: 2 }),
    `GET /channels/${ROOM}?info=user_count: expected {occupied:true, user_count:2}, got ${JSON.stringify(room)}`);
  const rooms = await okJson(
    backend.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } }),
    'GET /channels?filter_by_prefix=presence-&info=user_count');
  check(isDeepStrictEqual(rooms, { channels: { [ROOM]: { user_count: 2 } } }),
    `GET /channels?filter_by_prefix=presence-&info=user_count: expected {channels:{${ROOM}:{user_count:2}}}, ` +
    `got ${JSON.stringify(rooms)}`);
  const notPresence = await rejectedStatus(backend.get({ path: '/channels/news/users' }), 'GET /channels/news/users');
  check(notPresence === 400, `GET /channels/news/users: expected HTTP 400, got ${notPresence}`);

  // A2 leaves; user 1 is still there through A, so nobody is told. Herald has finished with A2 (and sent any
  // member_removed it decided on) once it counts one connection less; a checkpoint after that would come after
  // a member_removed. Nothing tells a client about the close, so this one wait polls.
  const before = await connectionCount();
  a2.client.disconnect();
  const deadline = Date.now() + WAIT_MS;
  for (let now = before; now >= before;) {
    check(Date.now() < deadline,
      `Herald still counts ${now} connections (${before} before) ${WAIT_MS} ms after A2 (${socketA2}) disconnected`);
    await new Promise((resolve) => setTimeout(resolve, 20)); // poll interval
    now = await connectionCount();
  }
  await nothingBefore([a, b], 'A2 left', 'user 1 is still connected through A: no member_removed');
  check(roomA.members.count === 2, `A: expected 2 members after A2 left, got ${roomA.members.count}`);

  // B leaves: user 2's last connection, so A is told.
  b.client.unsubscribe(ROOM);
  await a.expect(ROOM, 'pusher:member_removed', { id: '2', info: bob });
  check(roomA.members.count === 1 && isDeepStrictEqual(roster(roomA), { 1: ada }),
    `A: expected member 1 alone after member_removed, got ${roomA.members.count} ${JSON.stringify(roster(roomA))}`);
  const left = await users('after B unsubscribed');
  check(isDeepStrictEqual(left, ['1']),
    `GET /channels/${ROOM}/users: expected id 1 alone, got ${JSON.stringify(left)}`);
}

main().catch((e) => finish(false, e && e.message || String(e)));
