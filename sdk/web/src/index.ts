/**
 * Spoor's web SDK: batches events in the browser and sends them to the edge's
 * `POST /v1/batch`. Every event is written to localStorage before it is sent
 * and leaves it only when an answer settles it, so reloads, offline spells
 * and 429s lose nothing; a resend is harmless because each event carries its
 * own `event_id`, which Spoor deduplicates. It has no runtime dependencies
 * and must stay under 3 KB minified and gzipped (tests/it/web_sdk.rs checks).
 */

export interface InitOptions {
  /** The project's write key (public: it ships in the page). */
  writeKey: string;
  /** The edge's origin, e.g. `https://ingest.example.com`. */
  host: string;
  /** Send as soon as this many events wait (20). */
  flushAt?: number;
  /** Send whatever waits this often, in ms (5000). */
  flushInterval?: number;
  /** Events kept while the edge cannot be reached; the oldest go first (1000). */
  maxQueue?: number;
}

export type Properties = Record<string, unknown>;

export interface Stats {
  /** Events waiting to be sent, this page's and earlier pages'. */
  queued: number;
  /** Events dropped because the queue was full (kept across reloads). */
  dropped: number;
  /** Events the edge refused (an invalid event, or a 4xx other than 429). */
  rejected: number;
}

interface Event {
  event: string;
  event_id: string;
  anonymous_id: string;
  user_id?: string;
  session_id: string;
  timestamp: string;
  properties: Properties;
  context: Properties;
}

const SESSION_MS = 30 * 60_000;
const MAX_EVENTS = 100;
/** A batch's JSON, in UTF-8 bytes, stays well under the edge's 512 KB. */
const MAX_BYTES = 400_000;
/** Browsers cap the bodies of keepalive requests in flight at 64 KB. */
const KEEPALIVE_BYTES = 60_000;
const MAX_RETRY_MS = 30_000;
const PREFIX = 'spoor.';

let opts: Required<InitOptions> | undefined;
let queue: Event[] | undefined;
/** Ids of the events in a request still waiting for its answer. */
const sending = new Set<string>();
/** Ids of the events this page settled or dropped: gone from storage too. */
const gone = new Set<string>();
let attempt = 0;
let retryAt = 0;
let rejected = 0;
let storage: Storage | null | undefined;
const memory: Record<string, string> = {};

function store(): Storage | null {
  if (storage === undefined) {
    try {
      storage = localStorage;
      storage.setItem(PREFIX + 't', '1');
    } catch {
      storage = null;
    }
  }
  return storage;
}

function get(key: string): string | null {
  const s = store();
  return s ? s.getItem(PREFIX + key) : (memory[key] ?? null);
}

/** False when storage is full. */
function set(key: string, value: string | null): boolean {
  const s = store();
  try {
    if (value === null) s ? s.removeItem(PREFIX + key) : delete memory[key];
    else s ? s.setItem(PREFIX + key, value) : (memory[key] = value);
    return true;
  } catch {
    return false;
  }
}

/** The queue as storage holds it now, ignoring anything that is not an event of ours. */
function stored(): Event[] {
  let q: unknown;
  try {
    q = JSON.parse(get('q') || '[]');
  } catch {
    q = [];
  }
  return Array.isArray(q) ? q.filter((e) => e && typeof e.event_id == 'string') : [];
}

function events(): Event[] {
  return queue || (queue = stored());
}

function dropped(): number {
  return Number(get('dropped')) || 0;
}

function drop(n: number): void {
  events()
    .splice(0, n)
    .forEach((e) => gone.add(e.event_id));
  set('dropped', String(dropped() + n));
}

/**
 * Writes the queue, dropping the oldest quarter while storage is full.
 * Other tabs of the origin write the same key: their events there (neither
 * ours nor settled or dropped here) are kept, so a tab that dies leaves
 * its events for the next page load instead of losing them to our write.
 */
function save(): void {
  const q = events();
  const mine = new Set(q.map((e) => e.event_id));
  const others = stored().filter((e) => !mine.has(e.event_id) && !gone.has(e.event_id));
  while (!set('q', JSON.stringify(others.concat(q))) && q.length) drop(Math.ceil(q.length / 4));
}

/** A random (v4) UUID, from `crypto.randomUUID` where the browser has it. */
function uuid(): string {
  const c = globalThis.crypto;
  if (c && c.randomUUID) return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && c.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.random() * 256;
  b[6] = (b[6] & 15) | 64;
  b[8] = (b[8] & 63) | 128;
  const h = Array.from(b, (x) => (x + 256).toString(16).slice(1)).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function anonymousId(): string {
  let id = get('aid');
  if (!id) set('aid', (id = uuid()));
  return id;
}

/** The session id, a new one after 30 minutes without an event. */
function sessionId(now: number): string {
  let id = get('sid');
  if (!id || now - Number(get('last')) > SESSION_MS) set('sid', (id = uuid()));
  set('last', String(now));
  return id;
}

const iso = (ms: number) => new Date(ms).toISOString();

function enqueue(event: string, properties: Properties = {}, userId?: string | null): string {
  const now = Date.now();
  const e: Event = {
    event,
    event_id: uuid(),
    anonymous_id: anonymousId(),
    session_id: sessionId(now),
    timestamp: iso(now),
    properties,
    context: {
      page: { url: location.href, path: location.pathname, referrer: document.referrer, title: document.title },
      library: { name: 'spoor-web', version: '0.1.0' },
      locale: navigator.language,
      screen: { width: screen.width, height: screen.height },
    },
  };
  const user = userId || get('uid');
  if (user) e.user_id = user;
  const q = events();
  q.push(e);
  if (opts && q.length > opts.maxQueue) drop(q.length - opts.maxQueue);
  save();
  if (opts && q.length >= opts.flushAt) flush();
  return e.event_id;
}

/** After a failure: Retry-After (plus up to 1 s of jitter) when the edge
 * gave one, else exponential backoff with jitter, capped at 30 s. */
function retry(after: string | null): void {
  const s = after ? Number(after) : NaN;
  const ms =
    s >= 0 ? s * 1000 + Math.random() * 1000 : Math.min(MAX_RETRY_MS, 1000 * 2 ** attempt) * (0.5 + Math.random() / 2);
  attempt++;
  retryAt = Date.now() + ms;
  setTimeout(() => {
    retryAt = 0;
    flush();
  }, ms);
}

/**
 * Sends what waits now; the promise settles with that request's answer (at
 * once when a request is already on its way or a retry is waiting). On
 * page unload (`unload`), sends the events not already on their way in a
 * keepalive request, even while a retry waits.
 */
export function flush(unload?: boolean): Promise<void> {
  const o = opts;
  if (!o || (!unload && (sending.size || Date.now() < retryAt))) return Promise.resolve();
  const batch: Event[] = [];
  let bytes = 0;
  for (const e of events()) {
    if (sending.has(e.event_id)) continue;
    const n = new TextEncoder().encode(JSON.stringify(e)).length;
    if (batch.length && (batch.length >= MAX_EVENTS || bytes + n > (unload ? KEEPALIVE_BYTES : MAX_BYTES))) break;
    batch.push(e);
    bytes += n;
  }
  if (!batch.length) return Promise.resolve();
  const ids = new Set(batch.map((e) => e.event_id));
  ids.forEach((id) => sending.add(id));
  const settle = (done: boolean) => {
    ids.forEach((id) => {
      sending.delete(id);
      if (done) gone.add(id);
    });
    if (done) {
      queue = events().filter((e) => !ids.has(e.event_id));
      save();
    }
  };
  return fetch(o.host.replace(/\/$/, '') + '/v1/batch', {
    method: 'POST',
    keepalive: unload,
    headers: { 'Content-Type': 'application/json', 'X-Spoor-Write-Key': o.writeKey },
    body: JSON.stringify({ sent_at: iso(Date.now()), batch }),
  }).then(
    async (r) => {
      if (r.status == 429 || r.status >= 500) {
        settle(false);
        return retry(r.headers.get('Retry-After'));
      }
      // 2xx settles each event (accepted, or rejected for good); any other
      // 4xx would be answered the same way again.
      if (r.ok) rejected += ((await r.json().catch(() => ({}))).rejected || []).length;
      else rejected += batch.length;
      attempt = 0;
      settle(true);
      if (events().length >= o.flushAt) return flush();
    },
    () => {
      settle(false);
      retry(null);
    },
  );
}

/** Starts sending: call once per page, before or after the first events. */
export function init(options: InitOptions): void {
  if (opts) return;
  if (!options || !options.writeKey || !options.host) throw new Error('spoor.init needs writeKey and host');
  opts = { flushAt: 20, flushInterval: 5000, maxQueue: 1000, ...options };
  setInterval(() => flush(), opts.flushInterval);
  const away = () => flush(true);
  addEventListener('pagehide', away);
  document.addEventListener('visibilitychange', () => document.visibilityState == 'hidden' && away());
  addEventListener('online', () => {
    attempt = retryAt = 0;
    flush();
  });
  flush();
}

/** Queues an event; answers its `event_id`. */
export function track(event: string, properties?: Properties): string {
  return enqueue(event, properties);
}

/** A `page_view` with the page's path, URL, title and referrer. */
export function page(properties?: Properties): string {
  return enqueue('page_view', { path: location.pathname, url: location.href, title: document.title, referrer: document.referrer, ...properties });
}

/** Remembers `userId` for later events and sends an `identify` event with the traits. */
export function identify(userId: string, traits?: Properties): string {
  set('uid', userId);
  return enqueue('identify', traits);
}

/** Sends an `alias` event linking `previousId` (the current user or device) to `userId`, and becomes `userId`. */
export function alias(userId: string, previousId?: string): string {
  const id = enqueue('alias', { previous_id: previousId || get('uid') || anonymousId() }, userId);
  set('uid', userId);
  return id;
}

/** Forgets the user: a new anonymous id and session; queued events are still sent. */
export function reset(): void {
  set('uid', null);
  set('aid', uuid());
  set('sid', null);
}

export function stats(): Stats {
  return { queued: events().length, dropped: dropped(), rejected };
}
