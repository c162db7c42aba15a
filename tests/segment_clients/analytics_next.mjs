// Loads Segment's browser library, @segment/analytics-next (bundled for the
// page by tests/it/segment_clients.rs with esbuild), in headless chromium
// (Debian's, through playwright-core) and makes a page, an identify and a
// track call, each posted on its own (scenario `calls`) or together in one
// batch (`batching`), or three tracks of which the edge's rate limit
// refuses two at first (`retry`), with `integrations["Segment.io"].apiHost`
// pointed at a Spoor edge. The settings Segment's CDN would serve are passed
// to `load` as `cdnSettings`, so the page asks nothing of cdn.segment.com.
// Run with one JSON argument:
//   {scenario: "calls" | "batching" | "retry", site, api_host, write_key, chromium}
// `site` serves index.html, which defines `AnalyticsBrowser`.
// It waits for the edge's answer to each call, then prints one line
// `segment-clients: sent {calls, answers, page, started_ms, finished_ms}`:
// calls, each message as the library posted it (by type); answers, each
// answer's path, status and body; page, the document's url and title.
// Any request off this machine, or a failed check, exits 1.

import { chromium } from 'playwright-core';

const args = JSON.parse(process.argv[2]);
const started = Date.now();
const log = (...m) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...m);

function check(ok, what, detail) {
  if (!ok) throw new Error(`${what}${detail === undefined ? '' : `: ${JSON.stringify(detail)}`}`);
  log('ok', what);
}

const browser = await chromium.launch({
  executablePath: args.chromium,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on('pageerror', (e) => log('page error:', e.message));
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') log(`console ${m.type()}:`, m.text()); });

  // Every request the page makes; none may leave this machine.
  const edge = `http://${args.api_host}/`;
  const foreign = [];
  const calls = {};
  const answers = [];
  const retried = [];
  const others = [];
  page.on('request', (r) => {
    const url = r.url();
    if (!url.startsWith(args.site) && !url.startsWith(edge) && !url.startsWith('data:')) foreign.push(url);
    if (url.startsWith(edge) && r.method() === 'POST') {
      if (!/\/v1\/[tpib]$/.test(url)) others.push(url);
      const body = JSON.parse(r.postData());
      for (const m of body.batch ?? [body]) {
        const key = m.type === 'track' && args.scenario === 'retry' ? `track ${m.properties.n}` : m.type;
        calls[key] = m;
      }
      const retry = r.headers()['x-retry-count'];
      if (retry !== undefined) retried.push(retry);
      log('posted', url, (body.batch ?? [body]).map((m) => m.type).join(' '),
        retry === undefined ? '' : `X-Retry-Count: ${retry}`);
    }
  });
  page.on('requestfailed', (r) => log('request failed:', r.method(), r.url(), r.failure()?.errorText));
  page.on('response', async (r) => {
    if (r.url().startsWith(edge) && r.request().method() === 'POST') {
      const body = await r.text().catch((e) => `${e}`);
      answers.push({ path: new URL(r.url()).pathname, status: r.status(), body });
      log('answered', r.status(), body);
    }
  });

  await page.goto(`${args.site}/index.html?utm_source=newsletter`);
  const loaded = await page.evaluate(async ([writeKey, apiHost, batching]) => {
    const [analytics] = await AnalyticsBrowser.load(
      {
        writeKey,
        // What Segment's CDN serves for a source whose only destination is
        // Segment itself; `load` takes it instead of fetching it. A zero
        // sampleRate keeps the library's own telemetry (`{apiHost}/m`) off.
        cdnSettings: { integrations: { 'Segment.io': { apiKey: writeKey } }, metrics: { sampleRate: 0 } },
      },
      { integrations: { 'Segment.io': { apiHost, protocol: 'http', ...(batching ? {
        // The three calls go in one batch, sent when it holds three.
        deliveryStrategy: { strategy: 'batching', config: { size: 3, timeout: 10_000 } },
      } : {}) } } },
    );
    window.analytics = analytics;
    return { anonymousId: analytics.user().anonymousId() };
  }, [args.write_key, args.api_host, args.scenario === 'batching']);
  log('loaded', loaded);

  const accepted = () => answers.filter((a) => a.status === 200).length;
  const deadline = Date.now() + 45_000;
  const waitFor = async (n) => {
    while (accepted() < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  };
  if (args.scenario === 'calls' || args.scenario === 'batching') {
    const n = args.scenario === 'calls' ? 3 : 1;
    // One after the other, so the page is sent before identify; batched
    // calls resolve only once their batch is sent, so those start at once.
    await page.evaluate(async (oneByOne) => {
      const calls = [
        () => analytics.page('Catalog', 'Shoes', { section: 'winter' }),
        () => analytics.identify('u-next', { email: 'next@example.com', plan: 'pro' }),
        () => analytics.track('Signed Up', { plan: 'pro', seats: 3 }),
      ];
      if (oneByOne) for (const call of calls) await call();
      else await Promise.all(calls.map((call) => call()));
    }, n === 3);
    // Each call posted on its own (`/p`, `/i`, `/t`), or one batch (`/b`).
    await waitFor(n);
    check(answers.length === n, `the edge answered ${n} request(s)`, answers);
    check(answers.every((a) => a.status === 200), 'every answer is 200', answers);
  } else {
    // retry: three tracks at once against a bucket of one event; the edge
    // refuses two with 429 and Retry-After, and the library sends them
    // again with its X-Retry-Count header, which CORS must allow.
    await page.evaluate(() => Promise.all([1, 2, 3].map((n) => analytics.track('Retried', { n }))));
    await waitFor(3);
    check(answers.some((a) => a.status === 429), 'the edge answered 429 first', answers);
    check(accepted() === 3, 'every track is accepted in the end', answers);
    check(retried.length > 0, 'the retries carry X-Retry-Count', retried);
  }
  check(foreign.length === 0, 'nothing was asked of another host (no CDN settings fetch)', foreign);
  check(others.length === 0, 'every post to the edge is a call (no telemetry to /m)', others);
  const pageInfo = await page.evaluate(() => ({ url: location.href, title: document.title, userAgent: navigator.userAgent }));
  console.log(`segment-clients: sent ${JSON.stringify({
    calls, answers, page: pageInfo, anonymous_id: loaded.anonymousId, started_ms: started, finished_ms: Date.now(),
  })}`);
} finally {
  await browser.close();
}
