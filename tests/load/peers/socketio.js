// The socket.io 4 peer Herald is measured against: rooms over the WebSocket transport.
//
// Clients connect with ws://HOST:PORT/socket.io/?EIO=4&transport=websocket. Events:
//   subscribe(room, ack)      joins the room, then acks (ack with no arguments);
//   publish({channel, data})  emits `message` with `data` to every client of `channel` (the sender too).
// `POST /publish?channel=R` with a JSON body emits `message` with that body to room R and answers 200 `{}`.
// Everything else is socket.io's defaults (heartbeat 25 s, in-memory adapter), long polling disabled.
//
// Usage: node socketio.js [PORT]   (default 9002; listens on 127.0.0.1)
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 9002);

const server = http.createServer((request, response) => {
  if (request.method !== 'POST' || !request.url.startsWith('/publish')) {
    response.writeHead(404).end();
    return;
  }
  const room = new URL(request.url, 'http://peer').searchParams.get('channel') || 'default';
  const chunks = [];
  request.on('data', (chunk) => chunks.push(chunk));
  request.on('end', () => {
    let data;
    try {
      data = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      response.writeHead(400).end();
      return;
    }
    io.to(room).emit('message', data);
    response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
});

const io = new Server(server, { transports: ['websocket'], perMessageDeflate: false });
io.on('connection', (socket) => {
  socket.on('subscribe', (room, ack) => {
    if (typeof room !== 'string') return;
    socket.join(room);
    if (typeof ack === 'function') ack();
  });
  socket.on('publish', (message) => {
    if (!message || typeof message.channel !== 'string') return;
    io.to(message.channel).emit('message', message.data);
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log(`socket.io peer listening on 127.0.0.1:${port} (pid ${process.pid})`);
});
