// Drives the aggregator's dashboard in headless chromium (Debian's, through
// playwright-core) and checks what it shows against values the Rust test
// computed from the rows it inserted. Run by tests/it/dashboard.rs with one
// JSON argument:
//   {url, project, token, chromium, artifacts, timezone,
//    expect: {live_total, top: {event: count}, series_groups: [..],
//             funnel: {steps: [..], window_minutes, entered: [..], converted: [..]},
//             timeline: {kind, id, events: [[ts_ms, event], ..], page}}}
// Protocol on stdout/stdin: the script prints `spoor-dashboard: insert`
// when the page has loaded, the test inserts one more event and answers
// `inserted`; the live count must then move within 10 s. Screenshots go to
// `artifacts`. Any failed check throws: exit status 1 with the reason.

import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const args = JSON.parse(process.argv[2]);
const { expect } = args;
const started = Date.now();
const log = (...m) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...m);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function check(ok, what, detail) {
  if (!ok) throw new Error(`${what}${detail === undefined ? '' : `: ${JSON.stringify(detail)}`}`);
  log('ok', what);
}

/** JSON with object keys sorted, so objects compare by content. */
const canonical = (v) => JSON.stringify(v, (_, x) => (x && typeof x === 'object' && !Array.isArray(x)
  ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => a.localeCompare(b))) : x));

function same(got, want, what) {
  check(canonical(got) === canonical(want), what, { got, want });
}

mkdirSync(args.artifacts, { recursive: true });
const browser = await chromium.launch({
  executablePath: args.chromium,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const context = await browser.newContext({
  viewport: { width: 1280, height: 900 }, timezoneId: args.timezone, locale: 'en-US',
});
const page = await context.newPage();
const apiRequests = [];
page.on('request', (r) => {
  if (new URL(r.url()).pathname.startsWith('/v1/')) apiRequests.push(r);
});
page.on('pageerror', (e) => log('page error:', e.message));
page.on('console', (m) => { if (m.type() === 'error') log('console error:', m.text()); });
page.setDefaultTimeout(15_000);

const shot = (name, locator = page) =>
  locator.screenshot({ path: join(args.artifacts, `${name}.png`), ...(locator === page ? { fullPage: true } : {}) });
const testid = (id) => page.getByTestId(id);
const text = async (id) => (await testid(id).textContent()).trim();

/** Waits for `selector`, failing at once with the panel's message if `errorId` shows instead. */
async function result(selector, errorId) {
  await page.waitForSelector(`${selector}, [data-testid="${errorId}"]:not([hidden])`);
  if (await testid(errorId).isVisible()) throw new Error(`${errorId}: ${await text(errorId)}`);
}

try {
  await page.goto(`${args.url}/#project=${args.project}&token=${args.token}`);

  // The token leaves the address bar; project and token stay in localStorage.
  await result('#live-total[data-value]', 'live-error');
  check(!page.url().includes('token='), 'the token is removed from the URL', page.url());
  same(await text('project-name'), args.project, 'the header names the project');

  // Live events per minute: the total, and bars that add up to it.
  const liveTotal = Number(await testid('live-total').getAttribute('data-value'));
  same(liveTotal, expect.live_total, 'live panel: events in the last 60 minutes');
  const bars = await page.$$eval('#live-chart rect.bar', (rs) => rs.map((r) => Number(r.dataset.value)));
  same(bars.length, 60, 'live panel: one bar per minute');
  same(bars.reduce((a, b) => a + b, 0), expect.live_total, 'live panel: the bars add up to the total');

  // Top events of the last 24 hours.
  await page.waitForSelector('#top-rows tr[data-event]');
  const top = Object.fromEntries(await page.$$eval('#top-rows tr[data-event]',
    (rows) => rows.map((r) => [r.dataset.event, Number(r.dataset.count)])));
  same(top, expect.top, 'top events: counts per event');
  const order = await page.$$eval('#top-rows tr[data-event]', (rows) => rows.map((r) => r.dataset.event));
  const wantOrder = Object.entries(expect.top).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map((e) => e[0]);
  same(order, wantOrder, 'top events: largest first');

  // Freshness badge: a number of seconds, coloured by age.
  const seconds = await testid('freshness').getAttribute('data-seconds');
  check(seconds !== null && Number.isFinite(Number(seconds)), 'the freshness badge shows a number', seconds);
  check(/fresh|lagging|stale/.test(await testid('freshness').getAttribute('class')), 'the freshness badge is coloured');
  check(/^updated \d\d:\d\d:\d\d/.test(await text('updated')), 'the page says when it was updated', await text('updated'));

  // Time series grouped by device type: one line and one legend entry per group.
  await page.selectOption('#series-group', 'device_type');
  await page.waitForFunction((n) => {
    const lines = [...document.querySelectorAll('#series-chart path.series')];
    return lines.length === n && !lines.some((l) => l.dataset.series === 'all');
  }, expect.series_groups.length);
  const drawn = await page.$$eval('#series-chart path.series', (ps) => ps.map((p) => p.dataset.series).sort());
  same(drawn, [...expect.series_groups].sort(), 'time series: one line per device type');
  const legend = await page.$$eval('#series-chart .legend li', (ls) => ls.map((l) => l.dataset.series).sort());
  same(legend, [...expect.series_groups].sort(), 'time series: a legend entry per device type');
  await shot('timeseries', testid('timeseries'));

  // An API error shows its message in the panel: 30 days of minutes is too many buckets.
  await page.selectOption('#series-granularity', 'minute');
  await page.selectOption('#series-range', '2592000000');
  await testid('series-error').waitFor({ state: 'visible' });
  const error = await text('series-error');
  check(/^400: .*buckets/.test(error), 'an API error is shown with its message', error);
  await shot('timeseries-error', testid('timeseries'));
  await page.selectOption('#series-range', '86400000');
  await page.selectOption('#series-granularity', 'hour');
  await testid('series-error').waitFor({ state: 'hidden' });

  {
    // Funnel builder: replace the default steps with the expected ones.
    for (const button of await page.$$('#funnel-steps .step-remove')) await button.click();
    for (const event of expect.funnel.steps) {
      await testid('funnel-add').click();
      await page.locator('#funnel-steps .step-event').last().fill(event);
    }
    await page.fill('#funnel-window', String(expect.funnel.window_minutes));
    await testid('funnel-run').click();
    await result('#funnel-result tr[data-step]', 'funnel-error');
    const steps = await page.$$eval('#funnel-result [data-group=""] tr[data-step]', (rows) => rows.map((r) => ({
      entered: Number(r.dataset.entered), converted: Number(r.dataset.converted),
    })));
    same(steps.map((s) => s.entered), expect.funnel.entered, 'funnel: entered per step');
    same(steps.map((s) => s.converted), expect.funnel.converted, 'funnel: converted per step');
    same(await page.$$eval('#funnel-result [data-group=""] rect.bar', (rs) => rs.map((r) => Number(r.dataset.value))),
      expect.funnel.entered, 'funnel: a bar per step, as high as its entered users');
    await shot('funnel', testid('funnel'));

    // With a breakdown: a block per device type, whose first steps add up to everyone's.
    await page.selectOption('#funnel-breakdown', 'device_type');
    await testid('funnel-run').click();
    await result('#funnel-result .funnel-group:not([data-group=""])', 'funnel-error');
    const firstSteps = await page.$$eval('#funnel-result .funnel-group:not([data-group=""]) tr[data-step="0"]',
      (rows) => rows.map((r) => Number(r.dataset.entered)));
    same(firstSteps.reduce((a, b) => a + b, 0), expect.funnel.entered[0], 'funnel: the breakdown adds up to everyone');
    await shot('funnel-breakdown', testid('funnel'));
  }

  {
    // Timeline of a known device, in order, a page at a time.
    const { kind, id, events, page: pageSize } = expect.timeline;
    await page.selectOption('#timeline-kind', kind);
    await page.fill('#timeline-id', id);
    await testid('timeline-run').click();
    await result('#timeline-rows tr[data-ts]', 'timeline-error');
    const rows = () => page.$$eval('#timeline-rows tr[data-ts]', (rs) => rs.map((r) => [Number(r.dataset.ts), r.dataset.event]));
    same(await rows(), events.slice(0, pageSize), 'timeline: the first page, in order');
    await shot('timeline', testid('timeline'));
    while (await testid('timeline-more').isVisible()) {
      const before = (await rows()).length;
      await testid('timeline-more').click();
      await page.waitForFunction((n) => document.querySelectorAll('#timeline-rows tr[data-ts]').length > n, before);
    }
    same(await rows(), events, 'timeline: every event after "more", in order');
  }

  // Refresh: one more event, and the live count moves within 10 s.
  await shot('live', testid('live'));
  await shot('top-events', testid('top-events'));
  const refreshes = Number(await testid('updated').getAttribute('data-refreshes'));
  console.log('spoor-dashboard: insert');
  const answer = await lines.next();
  check(answer.value === 'inserted', 'the test inserted an event', answer.value);
  const inserted = Date.now();
  await page.waitForFunction((want) => Number(document.getElementById('live-total').dataset.value) === want,
    expect.live_total + 1, { timeout: 10_000 });
  log(`ok the live count moved ${((Date.now() - inserted) / 1000).toFixed(1)} s after the insert`);
  // The tick that drew the new count finishes (and counts itself) after its other panels.
  await page.waitForFunction((n) => Number(document.getElementById('updated').dataset.refreshes) > n, refreshes);
  log('ok the page refreshed itself');
  await page.waitForFunction(() => Number(document.getElementById('freshness').dataset.seconds) < 60);
  check(await testid('freshness').getAttribute('class') === 'badge fresh', 'the badge turns fresh after the new event');

  // Every query the page sent ran in the dashboard lane.
  const lanes = new Set(await Promise.all(apiRequests.map(async (r) => (await r.allHeaders())['x-spoor-lane'])));
  same([...lanes], ['dashboard'], `all ${apiRequests.length} API requests carry X-Spoor-Lane: dashboard`);

  await shot('dashboard');
  log('all checks passed');
} catch (e) {
  await shot('failure').catch(() => {});
  console.error(`dashboard check failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  process.stdin.destroy();
}
