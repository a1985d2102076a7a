// The compression benchmark's client: N subscribers on one channel and a publisher of a realistic document
// stream, measuring bytes on the wire and the server's CPU per delivery.
//
// The document is ~3 KiB of JSON (40 instruments with prices) of which one price and a timestamp change per
// update: what delta compression is for. Subscribers are raw `ws` clients (the JSON or Protobuf Centrifugo
// protocol written by hand, or a plain room of the `ws` peer), with permessage-deflate offered or not; they
// count deliveries and the bytes their sockets read. The server's CPU time is read from /proc before and
// after. Prints one JSON line.
//
// Usage: node compression.js --server herald|ws --url WS_URL --publish HTTP_URL [--key KEY] --pid PID
//          [--subscribers 1000] [--messages 300] [--rate 30] [--deflate] [--delta] [--protobuf]
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const WebSocket = require('ws');

const args = parseArgs(process.argv.slice(2));
const subscribers = Number(args.subscribers || 1000);
const messages = Number(args.messages || 300);
const rate = Number(args.rate || 30);
const channel = 'bench';

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 1) {
    const name = argv[i].replace(/^--/, '');
    if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
      out[name] = argv[i + 1];
      i += 1;
    } else {
      out[name] = true;
    }
  }
  return out;
}

function documentVersion(n) {
  const items = [];
  for (let i = 0; i < 40; i += 1) {
    items.push({ id: i, name: `instrument-${i}`, price: 100 + i + (i === n % 40 ? n / 100 : 0), unit: 'EUR' });
  }
  return { version: n, updated: `2026-12-06T02:00:${String(n % 60).padStart(2, '0')}Z`, items };
}

// Protobuf, written by hand: varints and length-delimited fields of Centrifugo's Command.
function varint(n) {
  const out = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return out;
}
function field(tag, bytes) {
  return [...varint((tag << 3) | 2), ...varint(bytes.length), ...bytes];
}
function delimited(bytes) {
  return [...varint(bytes.length), ...bytes];
}
function protobufHandshake(delta) {
  const connect = [0x08, 0x01, ...field(4, [])];
  const request = [...field(1, [...Buffer.from(channel)])];
  if (delta) request.push(...field(12, [...Buffer.from('fossil')]));
  const subscribe = [0x08, 0x02, ...field(5, request)];
  return Buffer.from([...delimited(connect), ...delimited(subscribe)]);
}

// Counts the publications in one message, answering pings; the first two replies (connect, subscribe) are
// not publications, and `ready` is called once both are in.
function counter(protobuf, ready) {
  let replies = 0;
  return (socket, data, isBinary) => {
    let count = 0;
    if (protobuf) {
      const bytes = Buffer.from(data);
      let at = 0;
      while (at < bytes.length) {
        let length = 0;
        let shift = 0;
        let byte;
        do {
          byte = bytes[at];
          at += 1;
          length |= (byte & 0x7f) << shift;
          shift += 7;
        } while (byte & 0x80);
        if (length === 0) {
          socket.send(Buffer.from([0]));
        } else if (replies < 2) {
          replies += 1;
          if (replies === 2) ready();
        } else {
          count += 1;
        }
        at += length;
      }
      return count;
    }
    const text = isBinary ? data.toString() : data.toString();
    for (const line of text.split('\n')) {
      if (line === '{}') {
        socket.send('{}');
      } else if (/^\{"id":[12],/.test(line)) {
        replies += 1;
        if (replies === 2) ready();
      } else if (line.startsWith('{"push"')) {
        count += 1;
      } else if (args.server === 'ws') {
        count += 1;
      }
    }
    return count;
  };
}

function cpuTicks(pid) {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

async function openSubscriber(index, tally) {
  const herald = args.server === 'herald';
  const url = herald ? args.url : `${args.url}?channel=${channel}`;
  const protocols = args.protobuf ? ['centrifuge-protobuf'] : [];
  const socket = new WebSocket(url, protocols, {
    perMessageDeflate: Boolean(args.deflate),
    localAddress: `127.0.0.${2 + (index % 200)}`,
  });
  let subscribed;
  const ready = new Promise((resolve) => {
    subscribed = resolve;
  });
  const count = counter(Boolean(args.protobuf), () => subscribed());
  socket.on('open', () => {
    if (!herald) {
      subscribed();
      return;
    }
    if (args.protobuf) {
      socket.send(protobufHandshake(Boolean(args.delta)));
    } else {
      const subscribe = { channel };
      if (args.delta) subscribe.delta = 'fossil';
      socket.send(`${JSON.stringify({ id: 1, connect: {} })}\n${JSON.stringify({ id: 2, subscribe })}`);
    }
  });
  socket.on('message', (data, isBinary) => {
    tally.deliveries += count(socket, data, isBinary);
  });
  socket.on('error', (error) => {
    console.error(`subscriber ${index}: ${error.message}`);
    process.exit(1);
  });
  await ready;
  return socket;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
function publish(n) {
  const body = JSON.stringify(args.server === 'herald'
    ? { channel, data: documentVersion(n) }
    : documentVersion(n));
  const target = args.server === 'herald' ? args.publish : `${args.publish}?channel=${channel}`;
  return new Promise((resolve, reject) => {
    const request = http.request(target, {
      method: 'POST', agent, headers: { 'content-type': 'application/json', 'x-api-key': args.key || '' },
    }, (response) => {
      response.resume();
      response.on('end', resolve);
    });
    request.on('error', reject);
    request.end(body);
  });
}

async function main() {
  const tally = { deliveries: 0 };
  const sockets = [];
  for (let i = 0; i < subscribers; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(i + 50, subscribers); j += 1) batch.push(openSubscriber(j, tally));
    sockets.push(...await Promise.all(batch));
  }
  const negotiated = sockets[0].extensions || '';
  const bytesBefore = sockets.reduce((sum, s) => sum + s._socket.bytesRead, 0);
  const cpuBefore = cpuTicks(args.pid);
  const started = Date.now();
  tally.deliveries = 0;
  for (let n = 1; n <= messages; n += 1) {
    const due = started + (n * 1000) / rate;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    await publish(n);
  }
  const expected = messages * subscribers;
  const deadline = Date.now() + 30000;
  while (tally.deliveries < expected && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const cpuAfter = cpuTicks(args.pid);
  const bytes = sockets.reduce((sum, s) => sum + s._socket.bytesRead, 0) - bytesBefore;
  const document = Buffer.byteLength(JSON.stringify(documentVersion(1)));
  console.log(JSON.stringify({
    server: args.server,
    protocol: args.protobuf ? 'protobuf' : 'json',
    deflate: Boolean(args.deflate),
    negotiated,
    delta: Boolean(args.delta),
    subscribers,
    messages,
    document_bytes: document,
    deliveries: tally.deliveries,
    expected,
    wire_bytes_per_delivery: Math.round(bytes / Math.max(tally.deliveries, 1)),
    server_cpu_us_per_delivery: ((cpuAfter - cpuBefore) * 10000) / Math.max(tally.deliveries, 1),
  }));
  for (const socket of sockets) socket.terminate();
  agent.destroy();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
