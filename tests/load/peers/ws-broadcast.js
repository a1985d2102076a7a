// The plain Node `ws` peer Herald is measured against: a WebSocket broadcast server with rooms.
//
// A client joins rooms R1, R2, … by opening ws://HOST:PORT/?channel=R1,R2. Anything it sends is broadcast,
// unchanged, to every client of its first room (itself included, as Herald delivers a client's publication
// to the publisher too). `POST /publish?channel=R` broadcasts the request body to room R and answers 200 `{}`.
// Messages are text frames sent as they are; no history, no presence, no auth — the least a server can do.
//
// Usage: node ws-broadcast.js [PORT]   (default 9001; listens on 127.0.0.1)
'use strict';

const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || 9001);
const rooms = new Map(); // room name -> Set of sockets

function roomsOf(url) {
  const channel = new URL(url, 'http://peer').searchParams.get('channel');
  return (channel || 'default').split(',');
}

function broadcast(room, text) {
  const members = rooms.get(room);
  if (!members) return;
  for (const socket of members) {
    if (socket.readyState === WebSocket.OPEN) socket.send(text);
  }
}

const server = http.createServer((request, response) => {
  if (request.method !== 'POST' || !request.url.startsWith('/publish')) {
    response.writeHead(404).end();
    return;
  }
  const [room] = roomsOf(request.url);
  const chunks = [];
  request.on('data', (chunk) => chunks.push(chunk));
  request.on('end', () => {
    broadcast(room, Buffer.concat(chunks).toString('utf8'));
    response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
});

// perMessageDeflate off and no payload limit beyond the default: what a broadcast server would ship with.
// PER_MESSAGE_DEFLATE=1 turns compression on (ws's defaults, messages from 256 bytes on) for the
// compression benchmark (tests/load/compression).
const perMessageDeflate = process.env.PER_MESSAGE_DEFLATE === '1' ? { threshold: 256 } : false;
const sockets = new WebSocketServer({ server, perMessageDeflate });
sockets.on('connection', (socket, request) => {
  const joined = roomsOf(request.url);
  for (const room of joined) {
    let members = rooms.get(room);
    if (!members) {
      members = new Set();
      rooms.set(room, members);
    }
    members.add(socket);
  }
  socket.on('message', (data, isBinary) => broadcast(joined[0], isBinary ? data : data.toString('utf8')));
  socket.on('close', () => {
    for (const room of joined) {
      const members = rooms.get(room);
      if (!members) continue;
      members.delete(socket);
      if (members.size === 0) rooms.delete(room);
    }
  });
  socket.on('error', () => {});
});

server.listen(port, '127.0.0.1', () => {
  console.log(`ws broadcast peer listening on 127.0.0.1:${port} (pid ${process.pid})`);
});
