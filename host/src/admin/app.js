// Herald's admin page: polls /admin/api/* and draws what it gets. No dependencies; every request that
// changes something is a POST with the X-Herald-Admin header the server requires against CSRF.
"use strict";

const $ = (id) => document.getElementById(id);
const POINTS = 90;
const series = { connections: [], deliveries: [], p50: [], p99: [] };
let previous = null;
let timers = [];

async function request(method, path, body) {
  const init = { method, headers: { "X-Herald-Admin": "1" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    showLogin();
    throw new Error("not logged in");
  }
  const text = await response.text();
  if (!response.ok) throw new Error(text || response.statusText);
  return text ? JSON.parse(text) : null;
}

const api = (method, body) => request("POST", `/admin/api/call/${method}`, body || {});

function text(element, value) {
  element.textContent = value;
}

function row(cells, onClick) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = cell;
    if (typeof cell === "number") td.className = "num";
    tr.appendChild(td);
  }
  if (onClick) {
    tr.className = "clickable";
    tr.addEventListener("click", onClick);
  }
  return tr;
}

function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows);
}

function push(list, value) {
  list.push(value);
  if (list.length > POINTS) list.shift();
}

// A latency quantile (ms) from the growth of cumulative histogram buckets between two polls.
function quantile(before, after, q) {
  const counts = after.map(([bound, count], i) => [bound, count - (before ? before[i][1] : 0)]);
  const total = counts.length ? counts[counts.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  for (const [bound, count] of counts) {
    if (count >= rank) return bound * 1000;
  }
  return counts[counts.length - 1][0] * 1000;
}

function draw(canvasId, lines) {
  const canvas = $(canvasId);
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const values = lines.flatMap((line) => line.values.filter((v) => v !== null));
  const top = Math.max(1, ...values) * 1.1;
  context.strokeStyle = "#e5e7eb";
  context.fillStyle = "#6b7480";
  context.font = "11px system-ui";
  for (let i = 0; i <= 4; i++) {
    const y = height - (i / 4) * (height - 14) - 1;
    context.beginPath();
    context.moveTo(0, y);
    context.lineTo(width, y);
    context.stroke();
    context.fillText(formatNumber((top * i) / 4), 2, y - 2);
  }
  for (const line of lines) {
    context.strokeStyle = line.colour;
    context.lineWidth = 2;
    context.beginPath();
    let started = false;
    line.values.forEach((value, i) => {
      if (value === null) return;
      const x = (i / (POINTS - 1)) * width;
      const y = height - (value / top) * (height - 14) - 1;
      if (started) context.lineTo(x, y);
      else context.moveTo(x, y);
      started = true;
    });
    context.stroke();
  }
}

function formatNumber(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function formatUptime(seconds) {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return h ? `${h} h ${m} min` : `${m} min ${seconds % 60} s`;
}

async function refreshOverview() {
  const o = await request("GET", "/admin/api/overview");
  text($("node-name"), `${o.node} · ${o.version} · up ${formatUptime(o.uptime)}`);
  const state = $("node-state");
  state.className = "badge " + (o.ready.length ? "unready" : "ready");
  text(state, o.ready.length ? `not ready: ${o.ready.join("; ")}` : "ready");
  text($("clients"), o.clients);
  text($("users"), o.users);
  text($("channels-count"), o.channels);
  text($("subscriptions"), o.subscriptions);
  push(series.connections, o.clients);
  if (previous) {
    const seconds = Math.max(0.001, (o.time_ms - previous.time_ms) / 1000);
    const rate = (o.totals.deliveries - previous.totals.deliveries) / seconds;
    push(series.deliveries, rate);
    text($("delivery-rate"), formatNumber(rate));
    const before = previous.totals.publish_buckets;
    const after = o.totals.publish_buckets;
    const p99 = quantile(before, after, 0.99);
    push(series.p50, quantile(before, after, 0.5));
    push(series.p99, p99);
    if (p99 !== null) text($("publish-p99"), `≤ ${formatNumber(p99)} ms`);
  }
  previous = o;
  draw("chart-connections", [{ values: series.connections, colour: "#2f6fdb" }]);
  draw("chart-deliveries", [{ values: series.deliveries, colour: "#15803d" }]);
  draw("chart-latency", [
    { values: series.p50, colour: "#2f6fdb" },
    { values: series.p99, colour: "#c2410c" },
  ]);
}

async function refreshCluster() {
  const info = await api("info");
  fill("nodes", (info.result?.nodes || []).map((n) =>
    row([n.name, n.version, n.num_clients, n.num_users, n.num_channels, formatUptime(n.uptime)])));
  const channels = await api("channels");
  const entries = Object.entries(channels.result?.channels || {})
    .sort((a, b) => b[1].num_clients - a[1].num_clients)
    .slice(0, 50);
  fill("channels", entries.map(([name, c]) => row([name, c.num_clients], () => showChannel(name))));
  const plugins = await request("GET", "/admin/api/plugins");
  fill("plugins", plugins.plugins.map((p) => row([p.name, p.version, p.calls, p.denies, p.failures])));
  const errors = [
    ...plugins.load_errors.map((e) => `${e.file}: ${e.error}`),
    ...plugins.plugins.flatMap((p) => p.failure_reasons.map((r) => `${p.name} ${r.hook}: ${r.reason} × ${r.count}`)),
  ];
  $("plugin-errors").replaceChildren(...errors.map((e) => {
    const li = document.createElement("li");
    li.textContent = e;
    return li;
  }));
}

async function showChannel(name) {
  $("channel-detail").hidden = false;
  text($("channel-name"), name);
  const presence = await api("presence", { channel: name });
  const members = Object.values(presence.result?.presence || {});
  $("channel-presence").replaceChildren(...(members.length ? members : [null]).map((m) => {
    const li = document.createElement("li");
    li.textContent = m ? `${m.user || "(anonymous)"} · ${m.client}` : presence.error ? presence.error.message : "nobody";
    return li;
  }));
  const history = await api("history", { channel: name, limit: 10, reverse: true });
  const publications = history.result?.publications || [];
  $("channel-history").replaceChildren(...(publications.length ? publications : [null]).map((p) => {
    const li = document.createElement("li");
    li.textContent = p ? `#${p.offset || "–"} ${JSON.stringify(p.data)}` : history.error ? history.error.message : "none kept";
    return li;
  }));
}

async function findUser(event) {
  event.preventDefault();
  const user = $("user").value.trim();
  const found = await request("GET", `/admin/api/connections?user=${encodeURIComponent(user)}`);
  text($("user-result"), `${found.clients.length} connection(s) on ${found.node}: ${found.clients.join(", ") || "none"}`);
  const button = $("disconnect-user");
  button.hidden = false;
  button.dataset.user = user;
}

async function disconnectUser() {
  const user = $("disconnect-user").dataset.user;
  const answer = await api("disconnect", { user });
  text($("user-result"), answer.error ? `refused: ${answer.error.message}` : `${user} disconnected on every node`);
  $("disconnect-user").hidden = true;
  refreshOverview().catch(() => {});
}

async function publish(event) {
  event.preventDefault();
  let data;
  try {
    data = JSON.parse($("publish-data").value);
  } catch (error) {
    text($("publish-result"), `not JSON: ${error.message}`);
    return;
  }
  const answer = await api("publish", { channel: $("publish-channel").value.trim(), data });
  text($("publish-result"), answer.error ? `refused: ${answer.error.message}` : `published at offset ${answer.result?.offset ?? 0}`);
}

function every(ms, task) {
  const run = () => task().catch(() => {});
  run();
  timers.push(setInterval(run, ms));
}

function showLogin() {
  timers.forEach(clearInterval);
  timers = [];
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
}

function showDashboard(login) {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = !login;
  every(2000, refreshOverview);
  every(5000, refreshCluster);
}

async function logIn(event) {
  event.preventDefault();
  const response = await fetch("/admin/login", {
    method: "POST",
    headers: { "X-Herald-Admin": "1", "Content-Type": "application/json" },
    body: JSON.stringify({ password: $("password").value }),
  });
  if (response.ok) {
    text($("login-error"), "");
    showDashboard(true);
  } else {
    text($("login-error"), (await response.text()).trim() || response.statusText);
  }
}

async function start() {
  $("login-form").addEventListener("submit", logIn);
  $("user-form").addEventListener("submit", (e) => findUser(e).catch((error) => text($("user-result"), error.message)));
  $("disconnect-user").addEventListener("click", () => disconnectUser().catch((error) => text($("user-result"), error.message)));
  $("publish-form").addEventListener("submit", (e) => publish(e).catch((error) => text($("publish-result"), error.message)));
  $("logout").addEventListener("click", async () => {
    await request("POST", "/admin/logout");
    showLogin();
  });
  const session = await (await fetch("/admin/session")).json();
  text($("node-name"), session.node);
  if (session.authenticated) showDashboard(session.login);
  else showLogin();
}

start();
