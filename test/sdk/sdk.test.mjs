// Drives the official Appwrite Web SDK against a running Switchboard node.
// Three generations of the realtime protocol: appwrite 16.1, 21.5 and
// 22.0 (channels[] in the URL), 24.2 (URL subscription slots), 25.0 and 28
// (subscribe messages).
//
// Usage: SWITCHBOARD_ADDR=host:port SWITCHBOARD_ADMIN=host:port
//        SWITCHBOARD_JWT=<HS256 token for user u1>
//        SWITCHBOARD_JWTS='{"u1t1":..,"u2t1":..,"u3":..}' node sdk.test.mjs
// (u1t1 and u2t1 are in team t1, u3 is not: the presence check).
// Exits 0 when every check passed; prints one line per check.
import WebSocket from 'ws';
import * as sdk28 from 'appwrite';
import * as sdk25 from 'appwrite25';
import * as sdk24 from 'appwrite24';
import * as sdk22 from 'appwrite22';
import * as sdk21 from 'appwrite21';
import * as sdk16 from 'appwrite16';

// The browser globals the SDK expects. The WebSocket keeps what it
// receives, so that the presence check can read the `response` frame the
// SDK itself ignores.
const received = new WeakMap();
class RecordingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    received.set(this, []);
    this.addEventListener('message', (m) => received.get(this).push(JSON.parse(m.data)));
  }
}
globalThis.window = globalThis;
globalThis.WebSocket = RecordingWebSocket;
const store = new Map();
globalThis.localStorage = {
  getItem: (k) => (store.has(k) ? store.get(k) : null),
  setItem: (k, v) => store.set(k, String(v)),
  removeItem: (k) => store.delete(k),
};

const addr = process.env.SWITCHBOARD_ADDR;
const admin = process.env.SWITCHBOARD_ADMIN;
const jwt = process.env.SWITCHBOARD_JWT;
const jwts = JSON.parse(process.env.SWITCHBOARD_JWTS || '{}');
if (!addr || !admin || !jwt || !jwts.u1t1 || !jwts.u2t1 || !jwts.u3) {
  console.error('SWITCHBOARD_ADDR, SWITCHBOARD_ADMIN, SWITCHBOARD_JWT and SWITCHBOARD_JWTS are required');
  process.exit(2);
}

let seq = 0;
async function publish(roles, channels, payload) {
  const body = {
    project: 'p1', roles, permissionsChanged: false, userId: null,
    data: { events: ['test.event'], channels, timestamp: new Date().toISOString(), payload },
  };
  const res = await fetch(`http://${admin}/v1/publish`, { method: 'POST', body: JSON.stringify(body) });
  if (res.status !== 202) throw new Error(`publish: ${res.status} ${await res.text()}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// until publishes a probe every 200 ms until pred() holds (the SDK connects
// and subscribes asynchronously, with no hook that says it is done).
async function until(what, probe, pred, ms = 10000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await probe();
    await sleep(200);
  }
}

function client(mod, session) {
  const c = new mod.Client().setEndpoint(`http://${addr}/v1`).setProject('p1');
  if (session) c.setSession(session);
  return c;
}

const payloads = (list) => list.map((r) => JSON.stringify(r.payload));

// check runs the checks of one SDK version. viaCookieFallback: the version
// authenticates its socket only with the session in localStorage's
// cookieFallback (appwrite 16; later ones also take Client.setSession).
async function check(name, mod, withQueries, viaCookieFallback) {
  const anon = client(mod);
  const user = client(mod, viaCookieFallback ? undefined : jwt);
  const anonGot = [];
  const userGot = [];
  const unsubs = [anon.subscribe('files', (r) => anonGot.push(r))];

  // 1. client.subscribe('files', cb) receives a published event.
  const probe = ++seq;
  await until(`${name}: anonymous client receives an event on 'files'`,
    () => publish(['any'], ['files'], { probe }),
    () => anonGot.some((r) => r.payload.probe === probe));
  const ev = anonGot.find((r) => r.payload.probe === probe);
  if (!ev.channels.includes('files') || !Array.isArray(ev.events) || !ev.timestamp) {
    throw new Error(`${name}: event shape ${JSON.stringify(ev)}`);
  }
  console.log(`ok ${name}: subscribe('files') receives the event`);

  // Every client of a page shares localStorage: the cookieFallback is set
  // only while the signed-in client connects, after the anonymous one has.
  if (viaCookieFallback) localStorage.setItem('cookieFallback', JSON.stringify({ a_session_p1: jwt }));
  unsubs.push(user.subscribe('files', (r) => userGot.push(r)));

  // 2. The signed-in client authenticates (the SDK sends its session after
  // 'connected') and then receives a user:u1-only event...
  const who = ++seq;
  await until(`${name}: authenticated client receives a user:u1 event`,
    () => publish(['user:u1'], ['files'], { who }),
    () => userGot.some((r) => r.payload.who === who));
  localStorage.removeItem('cookieFallback');

  // ...and the anonymous one never does: it sees the guests marker that was
  // published after the secret, and not the secret.
  anonGot.length = 0;
  userGot.length = 0;
  await publish(['user:u1'], ['files'], { secret: seq });
  await publish(['guests'], ['files'], { guestsOnly: seq });
  await publish(['any'], ['files'], { end: seq });
  await until(`${name}: both clients receive the end marker`, async () => {},
    () => anonGot.some((r) => r.payload.end) && userGot.some((r) => r.payload.end));
  const a = payloads(anonGot);
  const u = payloads(userGot);
  if (a.some((p) => p.includes('secret')) || !a.some((p) => p.includes('guestsOnly'))) {
    throw new Error(`${name}: anonymous client got ${a}`);
  }
  if (!u.some((p) => p.includes('secret')) || u.some((p) => p.includes('guestsOnly'))) {
    throw new Error(`${name}: signed-in client got ${u}`);
  }
  console.log(`ok ${name}: user:u1 event reaches the signed-in client only`);

  // 3. A query-filtered subscription receives only matching payloads
  // (generations with query filters: 24.2 in URL slots, 28 in messages).
  if (withQueries) {
    const filtered = client(mod);
    const got = [];
    unsubs.push(filtered.subscribe('files', (r) => got.push(r),
      [mod.Query.equal('status', ['done']), mod.Query.greaterThan('size', 10)]));
    const ready = ++seq;
    await until(`${name}: filtered subscription receives a matching event`,
      () => publish(['any'], ['files'], { status: 'done', size: 11, ready }),
      () => got.some((r) => r.payload.ready === ready));
    got.length = 0;
    const mark = ++seq;
    await publish(['any'], ['files'], { status: 'open', size: 11, mark, no: 1 });
    await publish(['any'], ['files'], { status: 'done', size: 10, mark, no: 2 });
    await publish(['any'], ['files'], { status: 'done', size: '11', mark, no: 3 });
    await publish(['any'], ['files'], { status: 'done', size: 12, mark, no: 4 });
    await until(`${name}: filtered subscription receives the matching marker`, async () => {},
      () => got.some((r) => r.payload.mark === mark && r.payload.no === 4));
    const nos = got.filter((r) => r.payload.mark === mark).map((r) => r.payload.no);
    if (nos.join() !== '4') {
      throw new Error(`${name}: filtered subscription got ${nos}, want only 4`);
    }
    console.log(`ok ${name}: a query-filtered subscription receives only matching payloads`);
  }

  for (const f of unsubs) f();
}

// The presence of appwrite@28: realtime.upsertPresence is answered with
// the document; a signed-in client whose roles the presence's read
// permission names receives the upsert event, one whose roles it does not
// name receives nothing, and when the first client's socket closes the
// delete event reaches the reader.
async function checkPresence() {
  const name = 'appwrite@28 presence';
  const watcher = new sdk28.Realtime(client(sdk28, jwts.u2t1));
  const outsider = new sdk28.Realtime(client(sdk28, jwts.u3));
  const watched = [];
  const outside = [];
  const subs = [
    await watcher.subscribe(sdk28.Channel.presences(), (r) => watched.push(r)),
    await outsider.subscribe('presences', (r) => outside.push(r)),
  ];
  const ready = ++seq;
  await until(`${name}: both readers are subscribed to presences`,
    () => publish(['any'], ['presences'], { ready }),
    () => watched.some((r) => r.payload.ready === ready) && outside.some((r) => r.payload.ready === ready));

  const owner = new sdk28.Realtime(client(sdk28, jwts.u1t1));
  await owner.upsertPresence({
    status: 'online', presenceId: 'sdk-p1',
    permissions: [sdk28.Permission.read(sdk28.Role.team('t1'))], metadata: { page: '/docs' },
  });
  let resp;
  await until(`${name}: upsertPresence is answered`, async () => {}, () => {
    resp = owner.socket && received.get(owner.socket).find((m) => m.type === 'response' && m.data.to === 'presence');
    return resp;
  });
  const doc = resp.data.presence;
  if (doc.$id !== 'sdk-p1' || doc.userId !== 'u1' || doc.status !== 'online' || doc.source !== 'realtime' ||
      doc.metadata.page !== '/docs' || !doc.$createdAt || !doc.expiresAt ||
      JSON.stringify(doc.$permissions) !== JSON.stringify(['read("team:t1")'])) {
    throw new Error(`${name}: response ${JSON.stringify(resp)}`);
  }
  console.log(`ok ${name}: upsertPresence is answered with the document`);

  const isEvent = (r, action) => r.events.includes(`presences.sdk-p1.${action}`);
  await until(`${name}: the team reader receives the upsert event`, async () => {}, () => watched.some((r) => isEvent(r, 'upsert')));
  const up = watched.find((r) => isEvent(r, 'upsert'));
  if (!up.channels.includes('presences') || up.payload.status !== 'online') {
    throw new Error(`${name}: upsert event ${JSON.stringify(up)}`);
  }
  const mark = ++seq;
  await publish(['any'], ['presences'], { mark });
  await until(`${name}: the outsider receives the marker`, async () => {}, () => outside.some((r) => r.payload.mark === mark));
  if (outside.some((r) => r.events.some((e) => e.startsWith('presences.sdk-p1')))) {
    throw new Error(`${name}: the outsider got ${JSON.stringify(outside)}`);
  }
  console.log(`ok ${name}: the reader the permission names gets the upsert event, the other nothing`);

  await owner.disconnect();
  await until(`${name}: the delete event reaches the reader once the socket closed`, async () => {}, () => watched.some((r) => isEvent(r, 'delete')));
  console.log(`ok ${name}: closing the socket sends the delete event`);
  for (const s of subs) await s.close();
  await watcher.disconnect();
  await outsider.disconnect();
}

try {
  await checkPresence();
  const versions = [
    ['appwrite@28 (subscribe messages)', sdk28, true, false],
    ['appwrite@25.0 (subscribe messages)', sdk25, true, false],
    ['appwrite@24.2 (URL slots)', sdk24, true, false],
    ['appwrite@22.0 (channels[])', sdk22, false, false],
    ['appwrite@21.5 (channels[])', sdk21, false, false],
    ['appwrite@16.1 (channels[], session from cookieFallback)', sdk16, false, true],
  ];
  for (const [name, mod, withQueries, viaCookieFallback] of versions) await check(name, mod, withQueries, viaCookieFallback);
  console.log(`${versions.length + 1} passed, 0 failed`);
  process.exit(0);
} catch (err) {
  console.error(`FAIL ${err.stack || err}`);
  process.exit(1);
}
