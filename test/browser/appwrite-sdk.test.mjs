// The unchanged Appwrite Web SDKs 28.0.0 and 16.1.0 (their browser
// bundles, served from the origin as /sdk28.js and /sdk16.js) in headless
// Chromium, behind one origin that routes /v1/realtime to Switchboard
// (--auth appwrite) and the rest of /v1 to internal/appwritetest, as
// Traefik does in Appwrite's compose. Each page signs in with
// account.createEmailPasswordSession and subscribes: nothing else. The Go
// test (TestAppwriteSDKsInChromium) starts the pieces and checks what this
// prints.
//
// Users of project p1 (appwritetest.NewExample): ann (email verified,
// label vip, admin of t1), bob (unverified; invited to t1 as admin but not
// confirmed) and cat (phone verified). Each SDK gets a page (its own
// cookie jar) per user. Events (published at the node's admin API):
// team:t1/admin, label:vip, users/verified; then bob's invitation is
// confirmed and ann leaves t1 at the stand-in (CONTROL), each announced
// with permissionsChanged as Appwrite publishes it; then team:t1/admin
// again. Every page must see exactly its own events, over the one socket
// it opened.
//
// Usage: ORIGIN=http://host:port ADMIN=host:port CONTROL=http://host:port
//        CHROMIUM=/usr/bin/chromium node appwrite-sdk.test.mjs
// Prints one JSON line per page and exits 0 when every check passed.
import { launch, need, pageErrors, screenshot } from './launch.mjs';

const origin = need('ORIGIN');
const admin = need('ADMIN');
const control = need('CONTROL');

const users = { ann: 'ann@example.com', bob: 'bob@example.com', cat: 'cat@example.com' };

const publish = async (roles, payload, change) => {
  const body = {
    project: 'p1', roles, permissionsChanged: !!change, userId: change || null,
    data: { events: ['databases.db.collections.c.documents.d.update'], channels: ['documents'],
      timestamp: new Date().toISOString(), payload },
  };
  const res = await fetch(`http://${admin}/v1/publish`, { method: 'POST', body: JSON.stringify(body) });
  if (res.status !== 202) throw new Error(`publish: ${res.status} ${await res.text()}`);
};

// What each user's page must receive after the probes, in order.
const want = {
  ann: [{ for: 'admins' }, { for: 'vip' }, { for: 'verified' }, { joined: 'bob' }, { marker: 'end' }],
  bob: [{ joined: 'bob' }, { left: 'ann' }, { for: 'admins', after: 'changes' }, { marker: 'end' }],
  cat: [{ for: 'verified' }, { marker: 'end' }],
};

const browser = await launch();
let failed = false;
const fail = (why) => { failed = true; console.error(why); };
try {
  const pages = [];
  for (const sdk of ['28', '16']) {
    for (const [user, email] of Object.entries(users)) {
      const context = await browser.newContext();
      const page = await context.newPage();
      const p = { sdk, user, context, page, errors: pageErrors(page), sockets: 0, sent: [], connected: [] };
      page.on('websocket', (ws) => {
        p.sockets++;
        ws.on('framesent', (f) => p.sent.push(String(f.payload)));
        ws.on('framereceived', (f) => {
          const m = JSON.parse(String(f.payload));
          if (m.type === 'connected') p.connected.push(m.data.user ? m.data.user.$id : null);
        });
      });
      await page.goto(`${origin}/sdk${sdk}.html`);
      // The application's code: sign in, then subscribe.
      p.account = await page.evaluate(async ([endpoint, email, password]) => {
        window.got = [];
        const client = new Appwrite.Client().setEndpoint(endpoint).setProject('p1');
        const account = new Appwrite.Account(client);
        await account.createEmailPasswordSession(email, password);
        client.subscribe('documents', (r) => {
          window.got.push(r.payload);
          document.getElementById('log').textContent = JSON.stringify(window.got, null, 1);
        });
        return (await account.get()).$id;
      }, [`${origin}/v1`, email, `password-${user}`]);
      p.cookies = (await context.cookies()).map((c) => c.name);
      pages.push(p);
    }
  }

  // The SDKs subscribe asynchronously: probe with events for any until
  // every page has one.
  const end = Date.now() + 20000;
  for (let probe = 0; ; probe++) {
    const counts = await Promise.all(pages.map((p) => p.page.evaluate(() => window.got.length)));
    if (counts.every((n) => n > 0)) break;
    if (Date.now() > end) throw new Error(`not every page got a probe: ${counts}`);
    await publish(['any'], { probe });
    await new Promise((r) => setTimeout(r, 200));
  }
  await publish(['team:t1/admin'], { for: 'admins' });
  await publish(['label:vip'], { for: 'vip' });
  await publish(['users/verified'], { for: 'verified' });
  // bob accepts the invitation to t1; ann leaves t1. Appwrite publishes
  // each membership event with permissionsChanged and the user's id.
  const change = async (what) => {
    const res = await fetch(`${control}/${what}`, { method: 'POST' });
    if (res.status !== 204) throw new Error(`control ${what}: ${res.status}`);
  };
  await change('confirm-bob');
  await publish(['team:t1'], { joined: 'bob' }, 'bob');
  await change('remove-ann');
  await publish(['team:t1'], { left: 'ann' }, 'ann');
  await publish(['team:t1/admin'], { for: 'admins', after: 'changes' });
  await publish(['any'], { marker: 'end' });

  for (const p of pages) {
    // Every page gets the marker last: anything else meant for it, or
    // not meant for it, arrived before. Probes still landing are dropped.
    await p.page.waitForFunction(() => window.got.some((e) => e.marker), null, { timeout: 15000 }).catch(() => {});
    const got = await p.page.evaluate(() => window.got.filter((e) => !('probe' in e)));
    const auth = p.sent.filter((s) => s.includes('"authentication"')).length;
    console.log(JSON.stringify({ sdk: p.sdk, user: p.user, account: p.account, got, sockets: p.sockets,
      connectedAs: p.connected, authenticationMessages: auth, cookies: p.cookies, errors: p.errors }));
    if (JSON.stringify(got) !== JSON.stringify(want[p.user])) fail(`SDK ${p.sdk} ${p.user}: got ${JSON.stringify(got)}, want ${JSON.stringify(want[p.user])}`);
    if (p.account !== p.user) fail(`SDK ${p.sdk} ${p.user}: signed in as ${p.account}`);
    if (p.sockets !== 1) fail(`SDK ${p.sdk} ${p.user}: ${p.sockets} WebSockets, want 1 (no reconnect)`);
    // The session cookie went with the upgrade through the origin: the
    // node knew the user from its first message, and the SDK had no
    // reason to send its localStorage fallback.
    if (p.connected[0] !== p.user || auth !== 0) fail(`SDK ${p.sdk} ${p.user}: connected as ${p.connected}, ${auth} authentication messages`);
    if (p.errors.length) fail(`SDK ${p.sdk} ${p.user}: page errors ${JSON.stringify(p.errors)}`);
    await screenshot(p.page, `appwrite-sdk${p.sdk}-${p.user}`);
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
