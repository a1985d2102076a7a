// What the end-to-end scripts (recover.js, jwt.js) share: failed checks as CheckError, bounded waits, and
// calls to Herald's HTTP server API.
'use strict';

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

module.exports = { CheckError, check, within, apiCall };
