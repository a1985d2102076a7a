#!/usr/bin/env node
// Departure time after a node kill (run by tests/load/departures): USERS pusher-js members, one user each,
// join a presence channel on node A (HERALD_A_PORT); a pusher-js watcher on node B (HERALD_B_PORT) sees them
// all added and, when it has, this script kills node A (KILL_PID) with SIGKILL. Then it waits for every
// member's `member_removed` at the watcher. Prints one JSON line: {users, first_ms, last_ms, duplicates},
// the times counted from the kill.
'use strict';

const path = require('path');
const modules = path.join(__dirname, '..', 'e2e', 'js', 'node_modules');
const PusherJs = require(path.join(modules, 'pusher-js'));
const PusherServer = require(path.join(modules, 'pusher'));

const key = 'bench-key';
const secret = 'bench-secret';
const users = Number(process.env.USERS || '1000');
const channel = 'presence-departures';
const killPid = Number(process.env.KILL_PID);
const backend = new PusherServer({ appId: '1', key, secret, host: '127.0.0.1', port: 1 });

function client(port, userId) {
  return new PusherJs(key, {
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) =>
        callback(null, backend.authorizeChannel(socketId, channelName, { user_id: userId })),
    },
  });
}

function fail(message) {
  console.error(`departures: ${message}`);
  process.exit(1);
}

setTimeout(() => fail(`no result within 2 minutes: ${added.size} added, ${removed.size} removed, killed: ${killedAt !== null}`), 120000).unref();

const added = new Set();
const removed = new Map();
let duplicates = 0;
let killedAt = null;
let members = [];

const watcher = client(Number(process.env.HERALD_B_PORT), 'watcher');
const room = watcher.subscribe(channel);
room.bind('pusher:subscription_succeeded', () => {
  for (let i = 0; i < users; i += 1) {
    const member = client(Number(process.env.HERALD_A_PORT), `user-${i}`);
    member.subscribe(channel);
    members.push(member);
  }
});
room.bind('pusher:member_added', (member) => {
  added.add(member.id);
  if (added.size === users && killedAt === null) {
    killedAt = Date.now();
    process.kill(killPid, 'SIGKILL');
  }
});
room.bind('pusher:member_removed', (member) => {
  if (killedAt === null) fail(`${member.id} removed before the kill`);
  if (removed.has(member.id)) duplicates += 1;
  else removed.set(member.id, Date.now() - killedAt);
  if (removed.size === users) {
    const times = [...removed.values()].sort((a, b) => a - b);
    // Duplicates would arrive right after the last; give them a moment before reporting.
    setTimeout(() => {
      process.stdout.write(`${JSON.stringify({ users, first_ms: times[0], last_ms: times[times.length - 1], duplicates })}\n`,
        () => process.exit(0));
    }, 1000);
  }
});
