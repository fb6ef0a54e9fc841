// The browser side of issue 24's acceptance test (TestResumeInChromium):
// the unchanged Appwrite Web SDKs 28.0.0 and 25.2.0 (their browser bundles,
// served from ORIGIN as /sdk28.js and /sdk25.js) in headless Chromium, one
// page each, subscribed as guests of project p1 to `documents` through
// HAProxy (ENDPOINT, http://127.0.0.1:<port>/v1) in front of two nodes.
//
// Each page subscribes twice, through both subscription APIs these SDKs
// have, each with a socket of its own: `client.subscribe` (the Client's own
// realtime) and `new Realtime(client).subscribe`. Both make their
// subscription ids client-side and send them again in a `subscribe`
// message after every reconnect. Read in node_modules/appwrite/dist/iife/
// sdk.js (28.0.0) and node_modules/appwrite25/dist/iife/sdk.js (25.2.0,
// the same code at other lines), line numbers 28.0.0 / 25.2.0:
//   - Client.subscribe (l. 4860 / 4837) takes `ID.unique()` as the id and
//     keeps it in `realtime.subscriptions`; on every `connected` (case
//     'connected', l. 4579 / 4532; a reconnect is a new socket, so a new
//     `connected`) it puts every kept id back in `pendingSubscribes`, and
//     `sendPendingSubscribes` (l. 4558 / 4512) sends `{type: 'subscribe',
//     data: [{subscriptionId, channels, queries}]}`. On close (l. 4537 /
//     4491) it reconnects after 1 s (5 s after 5 tries), unless the last
//     message was error 1008.
//   - Realtime.subscribe (l. 12306 / 9681) takes
//     `generateUniqueSubscriptionId()` (l. 12216 / 9592, `ID.unique()`)
//     into `activeSubscriptions`; handleResponseConnected (l. 12487 / 9859)
//     re-enqueues every active id and sendPendingSubscribes (l. 12262 /
//     9638) sends the same `subscribe` message. On close (l. 12121 / 9500)
//     it reconnects after getTimeout() unless the code was 1008.
// This script checks that too: every `subscribe` it sees a page send after
// the first carries ids the page sent before.
//
// The Go test drives it through stdin, one request per line, and reads one
// JSON line per answer on stdout:
//   (start)  -> {"ready":true} once both pages have subscribed
//   state    -> {"now": the console's clock, "pages":[{sdk, streams:{client:[seq...], realtime:[seq...]},
//               sockets:[...], console:[...], errors:[...]}]}: every event's
//               payload.seq each callback got, in the order it got them
//   quit     -> screenshots, browser closed, exit 0
//
// Usage: ORIGIN=http://host:port ENDPOINT=http://host:port/v1
//        CHROMIUM=/usr/bin/chromium node resume.test.mjs
import { createInterface } from 'node:readline';
import { launch, need, pageErrors, screenshot } from './launch.mjs';

const origin = need('ORIGIN');
const endpoint = need('ENDPOINT');
const t0 = Date.now();
const since = () => ((Date.now() - t0) / 1000).toFixed(3);

const browser = await launch();
const pages = [];
for (const sdk of ['28', '25']) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const p = { sdk, page, errors: pageErrors(page), console: [], sockets: [], ids: new Set(), foreignIds: [] };
  // The SDK's console (its reconnect messages) with the script's clock.
  page.on('console', (m) => p.console.push(`${since()} ${m.type()}: ${m.text()}`));
  page.on('websocket', (ws) => {
    const s = { n: p.sockets.length, openedAt: since(), connected: false, closed: false, subscribed: [] };
    p.sockets.push(s);
    ws.on('framesent', (f) => {
      let m;
      try { m = JSON.parse(String(f.payload)); } catch { return; }
      if (m.type !== 'subscribe') return;
      for (const row of m.data) {
        const id = row.subscriptionId;
        s.subscribed.push(id);
        // The first socket of each API brings its id; any later one
        // must only bring ids seen before.
        if (p.ids.size >= 2 && !p.ids.has(id)) p.foreignIds.push(id);
        p.ids.add(id);
      }
    });
    ws.on('framereceived', (f) => {
      if (!s.connected && String(f.payload).includes('"type":"connected"')) s.connected = true;
    });
    ws.on('socketerror', (e) => { s.error = String(e); });
    ws.on('close', () => { s.closed = true; s.closedAt = since(); });
  });
  await page.goto(`${origin}/sdk${sdk}.html`);
  // The application's code: subscribe, nothing else.
  await page.evaluate(async (endpoint) => {
    window.got = { client: [], realtime: [] };
    const log = document.getElementById('log');
    const client = new Appwrite.Client().setEndpoint(endpoint).setProject('p1');
    client.subscribe('documents', (r) => { window.got.client.push(r.payload.seq); log.textContent = `client ${r.payload.seq}`; });
    const realtime = new Appwrite.Realtime(client);
    await realtime.subscribe('documents', (r) => { window.got.realtime.push(r.payload.seq); });
  }, endpoint);
  pages.push(p);
}
console.log(JSON.stringify({ ready: true }));

const state = async () => ({
  now: since(),
  pages: await Promise.all(pages.map(async (p) => ({
    sdk: p.sdk,
    streams: await p.page.evaluate(() => window.got),
    sockets: p.sockets,
    ids: [...p.ids],
    foreignIds: p.foreignIds,
    console: p.console,
    errors: p.errors,
  }))),
});

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (line === 'state') {
    console.log(JSON.stringify(await state()));
  } else if (line === 'quit') {
    break;
  } else {
    console.log(JSON.stringify({ error: `unknown request ${line}` }));
  }
}
for (const p of pages) await screenshot(p.page, `resume-sdk${p.sdk}`).catch(() => {});
await browser.close();
process.exit(0);
