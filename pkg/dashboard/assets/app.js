// The dashboard page: one EventSource on dashboard/events ("init" with the
// last minutes, then a "tick" a second), charts drawn by the vendored
// uPlot. A figure the node does not have arrives as null: "n/a" in a tile,
// a gap in a chart.
"use strict";

const KEEP = 300; // points per chart: five minutes, as the node keeps

const num = (v, digits = 0) => v == null ? "n/a" : v.toLocaleString("en-US", { maximumFractionDigits: digits });
const ms = (v) => v == null ? "n/a" : (v * 1000).toFixed(v < 0.01 ? 2 : 1) + " ms";
// compact labels an axis: 100k rather than 100,000, which would not fit.
const compact = (v) => Math.abs(v) >= 1e6 ? +(v / 1e6).toFixed(1) + "M" : Math.abs(v) >= 1e3 ? +(v / 1e3).toFixed(1) + "k" : +v.toFixed(3) + "";
const bytes = (v) => v == null ? "n/a" : v >= 1048576 ? (v / 1048576).toFixed(1) + " MiB" : v >= 1024 ? (v / 1024).toFixed(1) + " KiB" : v + " B";
const mib = (v) => v == null ? "n/a" : (v / 1048576).toFixed(1) + " MiB";

// Each chart: a title, and series that read a sample (or a total).
const nodeCharts = [
  { title: "connections", series: [["connections", (s) => s.conns]] },
  { title: "upgrades/s", series: [["ok", (s) => s.upg], ["rejected", (s) => s.rej]] },
  { title: "events/s", series: [["events", (s) => s.ev]] },
  { title: "deliveries/s", series: [["deliveries", (s) => s.del]] },
  { title: "delivery latency (ms)", series: [["p50", (s) => s.p50 == null ? null : s.p50 * 1000], ["p99", (s) => s.p99 == null ? null : s.p99 * 1000]] },
  { title: "queue wait (ms) / router backlog", series: [["oldest ms", (s) => s.oldest == null ? null : s.oldest * 1000], ["backlog", (s) => s.backlog]] },
  { title: "memory (MiB)", series: [["RSS", (s) => s.rss == null ? null : s.rss / 1048576], ["heap", (s) => s.heap == null ? null : s.heap / 1048576]] },
  { title: "goroutines", series: [["goroutines", (s) => s.gor]] },
  { title: "writev calls/s", series: [["writev", (s) => s.writev]] },
  { title: "broker: up (1) / dropped messages/s", series: [["up", (s) => s.up ? 1 : 0], ["dropped/s", (s) => s.drop]] },
];
const clusterCharts = [
  { title: "cluster connections", series: [["connections", (t) => t.conns]] },
  { title: "cluster deliveries/s", series: [["deliveries", (t) => t.del]] },
  { title: "cluster upgrades/s", series: [["upgrades", (t) => t.upg]] },
  { title: "nodes", series: [["reporting", (t) => t.nodes], ["gone", (t) => t.gone]] },
];
const colors = ["#2f6fdb", "#d9480f", "#2b8a3e", "#862e9c", "#e8590c", "#0b7285", "#c2255c", "#5f3dc4",
  "#5c940d", "#a61e4d", "#1864ab", "#e67700", "#087f5b", "#495057", "#9c36b5", "#f03e3e", "#364fc7", "#74b816"];

// closesChart charts connections ended per second, one series a reason,
// for the reasons the node counts (all of them from its first sample on).
function closesChart(samples) {
  const reasons = new Set();
  for (const s of samples) Object.keys(s.closes || {}).forEach((r) => reasons.add(r));
  if (!reasons.size) return null;
  return { title: "closes/s by reason", id: "closes", series: [...reasons].sort().map((r) => [r, (s) => s.closes ? s.closes[r] : null]) };
}

// A chart holds its own columns: x (unix seconds) and one per series.
function makeChart(parent, def) {
  const div = document.createElement("div");
  if (def.id) div.id = "chart-" + def.id;
  parent.appendChild(div);
  const data = [[], ...def.series.map(() => [])];
  const plot = new uPlot({
    title: def.title, width: 420, height: 190,
    scales: { x: { time: true } },
    series: [{}, ...def.series.map(([label], i) => ({ label, stroke: colors[i], width: 1.5, spanGaps: false }))],
    axes: [{}, { size: 50, values: (u, vals) => vals.map(compact) }],
  }, data, div);
  return {
    push(item) {
      data[0].push(item.at / 1000);
      def.series.forEach(([, get], i) => data[i + 1].push(get(item) ?? null));
      if (data[0].length > KEEP) data.forEach((col) => col.shift());
    },
    draw() { plot.setData(data); },
  };
}

let charts = [], totals = [];
// closedKept: the kept samples' per-reason totals, oldest first, for the
// closes table's "last 5 minutes" (the newest total minus the oldest).
let closedKept = [];

function tiles(s) {
  document.getElementById("conns").textContent = num(s.conns);
  document.getElementById("upgrades").textContent = num(s.upg, 1);
  document.getElementById("events").textContent = num(s.ev, 1);
  document.getElementById("deliveries").textContent = num(s.del, 1);
  document.getElementById("latency").textContent = ms(s.p50) + " / " + ms(s.p99);
  document.getElementById("slow").textContent = num(s.slow, 1);
  const b = document.getElementById("broker");
  b.textContent = s.up ? "up" : "down";
  b.className = s.up ? "ok" : "bad";
  b.title = s.berr || "";
  const tbody = document.querySelector("#projects tbody");
  tbody.replaceChildren(...(s.top || []).map((p) => row([p.p, num(p.n)])));
  usageTable(s.usage);
  closesTable(s.closed);
}

// closesTable lists every reason the node counts: the counter since the
// node started (what /metrics says) and its growth over the kept samples.
function closesTable(closed) {
  if (!closed) return;
  closedKept.push(closed);
  if (closedKept.length > KEEP) closedKept.shift();
  const first = closedKept[0];
  const rows = Object.keys(closed).sort().map((r) => {
    const tr = row([r, num(closed[r]), num(closed[r] - (first[r] ?? 0))]);
    tr.dataset.reason = r;
    tr.dataset.total = closed[r];
    return tr;
  });
  document.querySelector("#closes tbody").replaceChildren(...rows);
}

// usageTable lists the top projects by each usage metric, a column each:
// "project: count" (bytes for inbound and outbound).
function usageTable(u) {
  const cols = u ? [[u.conns, num], [u.msgs, num], [u.in, bytes], [u.out, bytes]] : [];
  const n = Math.max(0, ...cols.map(([list]) => (list || []).length));
  const rows = [];
  for (let i = 0; i < n; i++) {
    const tr = row(cols.map(([list, fmt]) => (list && list[i] ? list[i].p + ": " + fmt(list[i].n) : "")));
    // The exact figure, for a script or a hover: bytes are shown rounded.
    cols.forEach(([list], j) => {
      if (!list || !list[i]) return;
      const td = tr.children[j];
      td.dataset.project = list[i].p;
      td.dataset.value = list[i].n;
      td.title = num(list[i].n);
    });
    rows.push(tr);
  }
  document.querySelector("#usage tbody").replaceChildren(...rows);
  const since = document.getElementById("usage-since");
  since.textContent = u && u.since ? "(since " + new Date(u.since).toISOString().slice(11, 16) + " UTC)" : "";
  since.dataset.since = u && u.since ? u.since : "";
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.appendChild(td);
  }
  return tr;
}

function nodesTable(nodes, total) {
  const tbody = document.querySelector("#nodes tbody");
  tbody.replaceChildren(...nodes.map((n) => {
    const tr = row([n.node, n.gone ? "gone" : "up", num(n.conns), num(n.upg, 1), num(n.ev, 1), num(n.del, 1), ms(n.p99),
      num(n.slow, 1), mib(n.rss), n.up ? "up" : "down", n.age.toFixed(1) + " s ago"]);
    tr.dataset.node = n.node;
    tr.dataset.state = n.gone ? "gone" : "up";
    return tr;
  }));
  document.getElementById("cluster-summary").textContent =
    `${total.nodes} reporting, ${total.gone} gone, ${num(total.conns)} connections`;
}

function start(h) {
  document.getElementById("node").textContent = h.node;
  const parent = document.getElementById("charts");
  parent.replaceChildren();
  const closes = closesChart(h.self);
  charts = [...nodeCharts, ...(closes ? [closes] : [])].map((def) => makeChart(parent, def));
  const cp = document.getElementById("cluster-charts");
  cp.replaceChildren();
  document.getElementById("cluster").hidden = !h.cluster;
  totals = h.cluster ? clusterCharts.map((def) => makeChart(cp, def)) : [];
  closedKept = h.self.filter((s) => s.closed).map((s) => s.closed).slice(0, -1);
  for (const s of h.self) charts.forEach((c) => c.push(s));
  for (const t of h.totals) totals.forEach((c) => c.push(t));
  [...charts, ...totals].forEach((c) => c.draw());
  if (h.self.length) tiles(h.self[h.self.length - 1]);
  if (h.cluster && h.totals.length) nodesTable(h.nodes, h.totals[h.totals.length - 1]);
}

function onTick(t) {
  charts.forEach((c) => { c.push(t.self); c.draw(); });
  totals.forEach((c) => { c.push(t.total); c.draw(); });
  tiles(t.self);
  if (totals.length) nodesTable(t.nodes, t.total);
}

const stream = document.getElementById("stream");

// connect opens the stream. EventSource retries a dropped connection by
// itself, but gives up for good on an HTTP error (a node restarting
// behind a proxy, a port briefly held by something else, too many pages
// open): then a new one is opened a second later.
function connect() {
  const es = new EventSource("dashboard/events");
  es.addEventListener("init", (e) => { start(JSON.parse(e.data)); stream.textContent = "live"; stream.className = "ok"; });
  es.addEventListener("tick", (e) => onTick(JSON.parse(e.data)));
  es.onerror = () => {
    stream.textContent = "reconnecting";
    stream.className = "bad";
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 1000);
  };
}
connect();
