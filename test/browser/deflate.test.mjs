// Runs the Appwrite Web SDK (appwrite@28, its browser bundle) inside
// headless Chromium against a running Switchboard node: Chromium offers
// permessage-deflate as every browser does, the node agrees, and the
// events (Appwrite documents of ~1.4 KB) must arrive intact. What the upgrade agreed is
// read from Chromium's own view of the handshake (DevTools protocol);
// that the events went out compressed is the Go test's to check, from the
// node's metrics.
//
// Usage: SWITCHBOARD_ADDR=host:port SWITCHBOARD_ADMIN=host:port
//        CHROMIUM=/usr/bin/chromium DOC='<JSON document>' EVENTS=5
//        [SCREENSHOT=path.png] node deflate.test.mjs
// Prints one JSON line with what it saw and exits 0 when every check passed.
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { chromium } from 'playwright-core';

const addr = process.env.SWITCHBOARD_ADDR;
const admin = process.env.SWITCHBOARD_ADMIN;
const doc = JSON.parse(process.env.DOC || 'null');
const events = Number(process.env.EVENTS || 5);
if (!addr || !admin || !doc) {
  console.error('SWITCHBOARD_ADDR, SWITCHBOARD_ADMIN and DOC are required');
  process.exit(2);
}

// The page and the SDK's browser bundle, from a server of our own, so that
// the page has a real http origin as an app would.
const sdk = await readFile(new URL('./node_modules/appwrite/dist/iife/sdk.js', import.meta.url));
const page = `<!doctype html><meta charset="utf-8"><title>switchboard deflate</title>
<script src="/sdk.js"></script><pre id="log">waiting</pre>`;
const server = http.createServer((req, res) => {
  if (req.url === '/sdk.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' }).end(sdk);
    return;
  }
  res.writeHead(200, { 'content-type': 'text/html' }).end(page);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
let failed = false;
try {
  const tab = await browser.newPage();
  const cdp = await tab.context().newCDPSession(tab);
  await cdp.send('Network.enable');
  const handshakes = [];
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push(e.response));

  await tab.goto(`http://127.0.0.1:${server.address().port}/`);
  await tab.evaluate((endpoint) => {
    window.got = [];
    const client = new Appwrite.Client().setEndpoint(endpoint).setProject('p1');
    client.subscribe('documents', (r) => {
      window.got.push(r);
      document.getElementById('log').textContent =
        `${window.got.length} events\n` + JSON.stringify(r.payload, null, 1).slice(0, 1500);
    });
  }, `http://${addr}/v1`);

  const publish = async (payload) => {
    const body = {
      project: 'p1', roles: ['any'], permissionsChanged: false, userId: null,
      data: { events: ['databases.chat.collections.messages.documents.d1.update'], channels: ['documents'],
        timestamp: new Date().toISOString(), payload },
    };
    const res = await fetch(`http://${admin}/v1/publish`, { method: 'POST', body: JSON.stringify(body) });
    if (res.status !== 202) throw new Error(`publish: ${res.status} ${await res.text()}`);
  };
  // The SDK subscribes asynchronously: probe until one arrives, then send
  // the documents.
  const end = Date.now() + 15000;
  for (let probe = 0; !(await tab.evaluate(() => window.got.length > 0)); probe++) {
    if (Date.now() > end) throw new Error('no event reached the page');
    await publish({ probe });
    await new Promise((r) => setTimeout(r, 200));
  }
  const before = await tab.evaluate(() => window.got.length);
  for (let i = 0; i < events; i++) await publish({ ...doc, seq: i });
  await tab.waitForFunction((n) => window.got.length >= n, before + events, { timeout: 15000 });
  const got = await tab.evaluate((from) => window.got.slice(from).map((r) => r.payload), before);
  const intact = got.filter((p, i) => {
    const { seq, ...rest } = p;
    return seq === i && JSON.stringify(rest) === JSON.stringify(doc);
  }).length;
  if (process.env.SCREENSHOT) await tab.screenshot({ path: process.env.SCREENSHOT });

  const ext = handshakes.map((h) => h.headers['Sec-WebSocket-Extensions'] || h.headers['sec-websocket-extensions'] || '');
  console.log(JSON.stringify({ events: got.length, intact, extensions: ext, userAgent: await tab.evaluate(() => navigator.userAgent) }));
  if (intact !== events) {
    failed = true;
    console.error(`only ${intact} of ${events} documents arrived intact`);
  }
  if (!ext.length || !ext.every((e) => e.includes('permessage-deflate'))) {
    failed = true;
    console.error(`the upgrade did not agree on permessage-deflate: ${JSON.stringify(ext)}`);
  }
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
