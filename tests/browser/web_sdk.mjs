// Drives Spoor's web SDK (sdk/web) in headless chromium (Debian's, through
// playwright-core) against a real edge. Run by tests/it/web_sdk.rs with one
// JSON argument:
//   {scenario: "offline" | "pagehide" | "storm", site, edge, write_key, chromium}
// `site` serves index.html (the IIFE build in a script tag), esm.html (the ES
// module build) and both builds; each page defines `rec(id)`, which reads an
// event back from the SDK's localStorage queue.
// The script checks what the page can see (queue, drops, requests, answers),
// then prints one line `spoor-web-sdk: expect {stored: [event], absent: [id], skew_ms}`
// (event: {event_id, event, user_id, anonymous_id, session_id, properties};
// skew_ms: how far the page's clock was off)
// and keeps the browser open until the test answers `checked` on stdin: a
// request the browser still carries after the page closed must not be cut.
// Any failed check throws: exit status 1 with the reason.

import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const args = JSON.parse(process.argv[2]);
const started = Date.now();
const log = (...m) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...m);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function check(ok, what, detail) {
  if (!ok) throw new Error(`${what}${detail === undefined ? '' : `: ${JSON.stringify(detail)}`}`);
  log('ok', what);
}

const browser = await chromium.launch({
  executablePath: args.chromium,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run',
    // A page served by page.route (the offline reload) has no address, so
    // Local Network Access would count it public and block its requests to
    // the edge on 127.0.0.1 for good; a real site and edge are both public.
    '--disable-features=LocalNetworkAccessChecks'],
});
const context = await browser.newContext();
const page = await context.newPage();
page.setDefaultTimeout(30_000);
page.on('pageerror', (e) => log('page error:', e.message));
page.on('console', (m) => { if (m.type() === 'error') log('console:', m.text()); });

// Every POST to the edge's /v1/batch and its answer, as the page saw them.
const posts = [];
const isBatch = (r) => r.method() === 'POST' && r.url().startsWith(`${args.edge}/v1/batch`);
page.on('request', (r) => { if (isBatch(r)) posts.push({ at: Date.now(), request: r }); });
const answers = [];
page.on('response', (r) => {
  if (isBatch(r.request())) answers.push({ at: Date.now(), status: r.status(), retryAfter: r.headers()['retry-after'] });
});

// A query that differs each time, so a new document loads (the server ignores it).
let loads = 0;
const open = (options, file = 'index.html', tab = page) => tab.goto(`${args.site}/${file}?${++loads}#${encodeURIComponent(JSON.stringify({
  writeKey: args.write_key, host: args.edge, ...options,
}))}`);
const stats = () => page.evaluate(() => spoor.stats());
const drained = () => page.waitForFunction(() => spoor.stats().queued === 0, null, { timeout: 60_000 });
/** Runs `call` (a function of the page's `spoor`) in the page and records the event it queued. */
const rec = (call, arg, tab = page) => tab.evaluate(([c, a]) => rec(new Function('spoor', 'a', `return (${c})(spoor, a)`)(spoor, a)), [call.toString(), arg]);

const stored = [];
const absent = [];
/** How far the page's clock is off. */
let skew = 0;

async function offline() {
  await open({ flushAt: 5, flushInterval: 1000, maxQueue: 8 });
  // What else may sit under the SDK's key is ignored, not sent or thrown over.
  await page.evaluate(() => localStorage.setItem('spoor.q', '[1, null, "x", [], {"event": "no_id"}]'));
  await page.reload();
  check((await stats()).queued === 0, 'junk in the stored queue is ignored');
  await page.evaluate(() => localStorage.setItem('spoor.q', '{not json'));
  await page.reload();
  check((await stats()).queued === 0, 'an unreadable stored queue is ignored');
  stored.push(await rec((s) => s.page({ section: 'home' })));
  stored.push(await rec((s) => s.track('signup')));
  stored.push(await rec((s) => s.track('add_to_cart', { sku: 's-1', price: 9.5 })));
  await page.evaluate(() => spoor.flush());
  await drained();
  check(answers.some((a) => a.status === 202), 'online: the first events are accepted', answers);

  // Offline: the page is served from here, the edge cannot be reached.
  const files = {};
  for (const f of ['index.html', 'spoor.js']) files[f] = await (await fetch(`${args.site}/${f}`)).text();
  await context.setOffline(true);
  await page.route(`${args.site}/**`, (route) => {
    const name = new URL(route.request().url()).pathname.slice(1);
    return files[name] === undefined ? route.abort('internetdisconnected')
      : route.fulfill({ contentType: name.endsWith('.js') ? 'text/javascript' : 'text/html', body: files[name] });
  });
  const offline = [];
  for (let i = 0; i < 10; i++) offline.push(await rec((s, i) => s.track('offline_view', { i }), i));
  await page.evaluate(() => spoor.flush());
  const before = await stats();
  check(before.queued === 8 && before.dropped === 2, 'offline: the queue keeps 8 events and counts 2 dropped', before);
  absent.push(...offline.slice(0, 2).map((e) => e.event_id));
  stored.push(...offline.slice(2));
  const persisted = await page.evaluate(() => JSON.parse(localStorage.getItem('spoor.q')).map((e) => e.event_id));
  check(JSON.stringify(persisted) === JSON.stringify(offline.slice(2).map((e) => e.event_id)),
    'offline: localStorage holds the 8 newest, oldest first', persisted);

  await page.reload();
  check(await page.evaluate(() => navigator.onLine) === false, 'reloaded while offline');
  const after = await stats();
  check(after.queued === 8 && after.dropped === 2, 'the queue and the drop count survive the reload', after);

  // Back online: the browser's `online` event sends the queue.
  await context.setOffline(false);
  await page.unroute(`${args.site}/**`);
  await drained();
  check((await stats()).dropped === 2, 'back online: the queue is sent, nothing more dropped');
  stored.push(await rec((s) => s.track('back_online', { n: 1 })));
  stored.push(await rec((s) => s.track('back_online', { n: 2 })));
  await drained();
}

async function pagehide() {
  // This browser's clock is two hours slow: the edge corrects it with sent_at.
  skew = -2 * 3600_000;
  await context.addInitScript((skew) => { const now = Date.now; Date.now = () => now() + skew; }, skew);
  // Nothing is sent on a timer or by count: only leaving the page sends.
  const quiet = { flushAt: 1000, flushInterval: 600_000 };
  await open(quiet);
  // A second tab of the same site, open from the start.
  const other = await context.newPage();
  await open(quiet, 'index.html', other);
  stored.push(await rec((s) => s.track('view_item', { sku: 's-9' })));
  // 31 minutes without an event: the next one starts a new session.
  await page.evaluate(() => localStorage.setItem('spoor.last', String(Date.now() - 31 * 60_000)));
  stored.push(await rec((s) => s.track('view_item', { sku: 's-10' })));
  stored.push(await rec((s) => s.identify('u-42', { plan: 'pro' })));
  stored.push(await rec((s) => s.alias('u-43')));
  stored.push(await rec((s) => s.page()));
  await page.evaluate(() => spoor.reset());
  stored.push(await rec((s) => s.track('after_reset')));
  const [a, b, idf, al, pv, r] = stored;
  check(a.session_id !== b.session_id, 'a new session after 30 minutes without events', [a.session_id, b.session_id]);
  check(b.session_id === idf.session_id && idf.session_id === al.session_id, 'the session holds while events keep coming');
  check(a.anonymous_id === pv.anonymous_id && !a.user_id, 'one anonymous id until reset, no user before identify');
  check(idf.user_id === 'u-42' && al.user_id === 'u-43' && pv.user_id === 'u-43', 'identify, then alias, set the user');
  check(al.properties.previous_id === 'u-42', 'alias names the previous id', al.properties);
  check(r.anonymous_id !== a.anonymous_id && !r.user_id && r.session_id !== pv.session_id,
    'reset: a new anonymous id and session, no user', r);
  // The other tab's write keeps this tab's events in the shared queue.
  const theirs = await rec((s) => s.track('other_tab'), undefined, other);
  const shared = await page.evaluate(() => JSON.parse(localStorage.getItem('spoor.q')).map((e) => e.event_id));
  const want = [...stored, theirs].map((e) => e.event_id);
  check(want.every((id) => shared.includes(id)) && shared.length === want.length,
    "a tab's write keeps the other tab's events in storage", { shared, want });
  stored.push(theirs);
  check(posts.length === 0, 'nothing sent before the pages close', posts.length);
  await other.close();
  // What the closing page sends, playwright no longer sees: the store tells.
  await page.close();
}

async function storm() {
  // The ES module build, in a browser without crypto.randomUUID.
  await context.addInitScript(() => { delete Crypto.prototype.randomUUID; });
  // First an unknown write key: the 401 is final, the batch dropped and counted, never retried.
  await open({ writeKey: 'wk_unknown', flushAt: 10, flushInterval: 500 }, 'esm.html');
  await page.waitForFunction(() => window.spoor);
  check(await page.evaluate(() => typeof crypto.randomUUID) === 'undefined', 'no crypto.randomUUID in this page');
  // Both at once, so they go in one batch whichever flush takes them.
  const refused = await page.evaluate(() => [rec(spoor.track('unknown_key')), rec(spoor.track('unknown_key'))]);
  absent.push(...refused.map((e) => e.event_id));
  await page.evaluate(() => spoor.flush());
  await drained();
  await page.waitForTimeout(1500);
  check(answers.length === 1 && answers[0].status === 401 && posts.length === 1, 'a 401 is not retried', answers);
  check((await stats()).rejected === 2, 'the refused events are counted as rejected');
  posts.length = 0;
  answers.length = 0;

  await open({ flushAt: 10, flushInterval: 500 }, 'esm.html');
  await page.waitForFunction(() => window.spoor);
  // An invalid event is rejected on its own in a 202 and not sent again.
  absent.push((await rec((s) => s.track('9 bad name'))).event_id);
  const events = await page.evaluate(() => Array.from({ length: 400 }, (_, i) => rec(spoor.track('storm', { i }))));
  stored.push(...events);
  const v4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  check(events.every((e) => v4.test(e.event_id)), 'the fallback makes v4 UUIDs');
  check(new Set(events.map((e) => e.event_id)).size === events.length, 'every event id differs');
  await drained();
  const limited = answers.filter((a) => a.status === 429);
  check(limited.length >= 2 && limited.every((a) => Number(a.retryAfter) >= 1), 'the edge answered 429s with Retry-After', answers);
  // After each 429, the next attempt waits at least Retry-After.
  for (const a of limited) {
    const next = posts.find((p) => p.at > a.at);
    check(next && next.at - a.at >= Number(a.retryAfter) * 1000 - 200, 'Retry-After is honoured',
      { answered: a.at, retry_after: a.retryAfter, next: next && next.at });
  }
  check(answers.some((a) => a.status === 202 && a.at > limited.at(-1).at), 'accepted after the last 429');
  check((await stats()).rejected === 1, 'the invalid event is counted as rejected, once');
  log('answers:', answers.map((a) => a.status).join(' '));
}

try {
  await ({ offline, pagehide, storm })[args.scenario]();
  console.log(`spoor-web-sdk: expect ${JSON.stringify({ stored, absent, skew_ms: skew })}`);
  const answer = await lines.next();
  check(answer.value === 'checked', 'the test checked the store', answer.value);
} finally {
  await browser.close();
}
// stdin stays open: leave without waiting for it.
process.exit(0);
