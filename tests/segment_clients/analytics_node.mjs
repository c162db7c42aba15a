// Sends one event of every Segment type through Segment's own Node library,
// @segment/analytics-node, pointed at a Spoor edge (`host`), then a second
// client (as a restarted process would) resends one of them under the same
// messageId. Run by tests/it/segment_clients.rs with one JSON argument:
//   {host, write_key}
// It prints one line `segment-clients: sent {calls, requests, started_ms, finished_ms}`:
// calls, each message as the library put it on the wire (by call name);
// requests, every HTTP exchange (status and answer body). The test checks
// the answers and what ClickHouse stores. A delivery error exits 1.

import { Analytics, FetchHTTPClient } from '@segment/analytics-node';
import { randomUUID } from 'node:crypto';

const args = JSON.parse(process.argv[2]);
const requests = [];

/** The library's own fetch client, recording each exchange as it happens. */
class RecordingClient extends FetchHTTPClient {
  async makeRequest(options) {
    const response = await super.makeRequest(options);
    requests.push({ url: options.url, status: response.status, body: await response.clone().text(),
      sent: JSON.parse(options.body) });
    return response;
  }
}

function client() {
  const analytics = new Analytics({
    writeKey: args.write_key,
    host: args.host,
    // Everything in one batch, sent by closeAndFlush.
    flushAt: 50,
    flushInterval: 60_000,
    maxRetries: 2,
    httpClient: new RecordingClient(),
  });
  analytics.on('error', (e) => {
    console.error('analytics-node error:', e);
    process.exitCode = 1;
  });
  return analytics;
}

const started = Date.now();
const minuteAgo = new Date(started - 60_000);
const ids = {
  track: randomUUID(),
  page: randomUUID(),
  screen: randomUUID(),
  identify: randomUUID(),
  group: randomUUID(),
  // alias keeps the library's own messageId (`node-next-…`, not a UUID).
};

const first = client();
first.track({
  event: 'Order Completed', userId: 'u-node', anonymousId: 'a-node', messageId: ids.track,
  timestamp: minuteAgo, properties: { total: 79.5, currency: 'EUR' },
  context: {
    page: { url: 'https://shop.example/done', title: 'Done', path: '/done', referrer: 'https://shop.example/cart' },
    locale: 'de-DE', campaign: { name: 'winter', source: 'newsletter' }, ip: '203.0.113.77',
  },
});
first.page({
  anonymousId: 'a-node', messageId: ids.page, name: 'Shoes', category: 'Catalog',
  properties: { path: '/shoes', url: 'https://shop.example/shoes' },
});
first.screen({
  userId: 'u-node', messageId: ids.screen, name: 'Cart', properties: { items: 2 },
  context: { app: { name: 'Spoor Shop', version: '3.2.1' }, os: { name: 'Android', version: '14' },
    device: { type: 'android', model: 'Pixel 8' }, screen: { width: 1080, height: 2205 } },
});
first.identify({ userId: 'u-node', anonymousId: 'a-node', messageId: ids.identify,
  traits: { email: 'node@example.com', plan: 'pro' } });
first.group({ userId: 'u-node', messageId: ids.group, groupId: 'org-42', traits: { name: 'Acme Inc', seats: 12 } });
first.alias({ userId: 'u-node', previousId: 'a-node' });
await first.closeAndFlush({ timeout: 30_000 });

// A second client resends the track under its messageId.
const second = client();
second.track({
  event: 'Order Completed', userId: 'u-node', anonymousId: 'a-node', messageId: ids.track,
  timestamp: minuteAgo, properties: { total: 79.5, currency: 'EUR' },
});
await second.closeAndFlush({ timeout: 30_000 });
const finished = Date.now();

// Each message as sent, by call; the resend last.
const calls = {};
for (const m of requests[0]?.sent.batch ?? []) calls[m.type] = m;
calls.resend = requests.at(-1)?.sent.batch[0];
console.log(`segment-clients: sent ${JSON.stringify({
  calls, requests: requests.map(({ url, status, body, sent }) => ({ url, status, body, messages: sent.batch.length })),
  started_ms: started, finished_ms: finished,
})}`);
