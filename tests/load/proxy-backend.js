#!/usr/bin/env node
// A stand-in application backend for tests/load/backend-proxy: answers every Centrifugo connect proxy
// request with a user after DELAY_MS milliseconds (0: at once). Listens on 127.0.0.1:PORT.
'use strict';

const http = require('http');

const port = Number(process.env.PORT || '3000');
const delay = Number(process.env.DELAY_MS || '0');
let served = 0;

http.createServer((request, response) => {
  let body = '';
  request.on('data', (chunk) => { body += chunk; });
  request.on('end', () => {
    served += 1;
    const answer = JSON.stringify({ result: { user: `user-${served}` } });
    const reply = () => {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(answer);
    };
    if (delay > 0) setTimeout(reply, delay); else reply();
  });
}).listen(port, '127.0.0.1', () => console.log(`proxy backend on ${port}, delay ${delay} ms`));
