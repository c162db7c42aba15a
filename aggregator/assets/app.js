// Spoor's dashboard: plain ES module, no framework. Every query goes to
// this aggregator's API with the project's read token and the
// `X-Spoor-Lane: dashboard` header. The live panels (events per minute,
// top events, the time series) refresh every REFRESH_MS; every answer
// updates the freshness badge; every error shows its message in its panel.

import { barChart, lineChart, formatNumber } from './chart.js';

const REFRESH_MS = 5000;
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const TIMELINE_PAGE = 50;
const GRANULARITY_MS = { minute: MINUTE, hour: HOUR, day: DAY };

const $ = (id) => document.getElementById(id);
const state = {
  project: '',
  token: '',
  timezone: Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC',
  timer: null,
  /** The last timeline lookup and the cursor of its next page. */
  timeline: { request: null, cursor: null },
  seriesSeq: 0,
};

// ---- connection: #project=…&token=… or the form, kept in localStorage ----

function loadConnection() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get('project') && fragment.get('token')) {
    localStorage.setItem('spoor.project', fragment.get('project'));
    localStorage.setItem('spoor.token', fragment.get('token'));
    // Keep the token out of the address bar (and out of screenshots).
    history.replaceState(null, '', location.pathname + location.search);
  }
  state.project = localStorage.getItem('spoor.project') || '';
  state.token = localStorage.getItem('spoor.token') || '';
  $('project-name').textContent = state.project;
  $('connect-project').value = state.project;
  return Boolean(state.project && state.token);
}

function showConnect(message) {
  $('connect').hidden = false;
  if (message) showError('live-error', message);
}

// ---- API ----

class ApiError extends Error {}
/** A request that a newer one of the same panel replaced: its answer is dropped. */
class Superseded extends Error {}

async function api(name, body) {
  const headers = { Authorization: `Bearer ${state.token}`, 'X-Spoor-Lane': 'dashboard' };
  const init = { method: 'GET', headers };
  if (body !== undefined) {
    init.method = 'POST';
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/v1/projects/${encodeURIComponent(state.project)}/${name}`, init);
  } catch (e) {
    throw new ApiError(`the aggregator did not answer (${e.message})`);
  }
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    if (response.status === 401 || response.status === 403) $('connect').hidden = false;
    throw new ApiError(`${response.status}: ${data?.message || response.statusText}`);
  }
  if (data && 'freshness_seconds' in data) showFreshness(data.freshness_seconds);
  return data;
}

function showError(id, message) {
  const p = $(id);
  p.textContent = message || '';
  p.hidden = !message;
}

/** Runs `work`, showing its error (or clearing the old one) in `errorId`. */
async function guarded(errorId, work) {
  try {
    await work();
    showError(errorId, '');
    return true;
  } catch (e) {
    if (e instanceof Superseded) return true;
    showError(errorId, e instanceof ApiError ? e.message : `dashboard error: ${e.message}`);
    return false;
  }
}

// ---- time helpers ----

const pad2 = (n) => String(n).padStart(2, '0');
const clock = (d) => `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;

/** `ms` as ClickHouse prints a DateTime in `timezone`: "2026-11-22 10:05:00". */
function bucketLabel(ms, timezone) {
  const parts = {};
  const format = new Intl.DateTimeFormat('en-US', {
    timeZone: timezone, hourCycle: 'h23', year: 'numeric', month: '2-digit',
    day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
  for (const p of format.formatToParts(new Date(ms))) parts[p.type] = p.value;
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second}`;
}

/** A bucket label read as if it were UTC: a number for the x axis. */
const naive = (label) => Date.parse(`${label.replace(' ', 'T')}Z`);
const naiveLabel = (x) => new Date(x).toISOString().slice(0, 19).replace('T', ' ');

/** The end of the current minute: windows end there so nothing just sent is cut off. */
const windowEnd = () => Math.floor(Date.now() / MINUTE) * MINUTE + MINUTE;

// ---- freshness badge ----

function showFreshness(seconds) {
  const badge = $('freshness');
  if (seconds === null || seconds === undefined) {
    badge.textContent = 'no events';
    badge.className = 'badge none';
    delete badge.dataset.seconds;
    return;
  }
  const s = Math.round(seconds);
  const text = s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : s < 172800
    ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86400)} d`;
  badge.textContent = `fresh ${text} ago`;
  badge.dataset.seconds = String(s);
  badge.className = `badge ${s < 60 ? 'fresh' : s < 600 ? 'lagging' : 'stale'}`;
}

// ---- live events per minute ----

async function refreshLive() {
  const until = windowEnd();
  const since = until - 60 * MINUTE;
  const answer = await api('metrics', {
    measure: { kind: 'count' }, since_ms: since, until_ms: until,
    granularity: 'minute', timezone: state.timezone,
  });
  const byBucket = new Map(answer.rows.map((r) => [r.bucket, r.value]));
  const bars = [];
  for (let t = since; t < until; t += MINUTE) {
    const label = bucketLabel(t, state.timezone);
    bars.push({ label, tick: label.slice(11, 16), value: byBucket.get(label) ?? 0 });
  }
  const total = answer.rows.reduce((sum, r) => sum + r.value, 0);
  $('live-total').textContent = formatNumber(total);
  $('live-total').dataset.value = String(total);
  $('live-last').textContent = formatNumber(bars[bars.length - 1].value);
  barChart($('live-chart'), bars);
}

// ---- top events ----

async function refreshTop() {
  const until = windowEnd();
  const answer = await api('metrics', {
    measure: { kind: 'count' }, since_ms: until - DAY, until_ms: until,
    granularity: 'day', timezone: 'UTC', group_by: ['event'],
  });
  const counts = new Map();
  for (const r of answer.rows) counts.set(r.groups[0], (counts.get(r.groups[0]) ?? 0) + r.value);
  const top = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, 10);
  const max = top.length ? top[0][1] : 1;
  const rows = top.map(([event, count]) => {
    const tr = document.createElement('tr');
    tr.dataset.event = event;
    tr.dataset.count = String(count);
    const name = document.createElement('td');
    name.textContent = event;
    const value = document.createElement('td');
    value.className = 'num';
    value.textContent = formatNumber(count);
    const bar = document.createElement('td');
    bar.innerHTML = `<span class="hbar" style="width:${(100 * count / max).toFixed(1)}%"></span>`;
    tr.append(name, value, bar);
    return tr;
  });
  if (!rows.length) rows.push(emptyRow(3, 'no events in the last 24 hours'));
  $('top-rows').replaceChildren(...rows);
}

function emptyRow(columns, text) {
  const tr = document.createElement('tr');
  const td = document.createElement('td');
  td.colSpan = columns;
  td.className = 'empty';
  td.textContent = text;
  tr.append(td);
  return tr;
}

// ---- time series ----

function seriesRequest() {
  const kind = $('series-measure').value;
  const measure = kind === 'sum' || kind === 'avg'
    ? { kind, property: $('series-property').value.trim() } : { kind };
  const events = $('series-events').value.split(',').map((e) => e.trim()).filter(Boolean);
  const group = $('series-group').value;
  const until = windowEnd();
  return {
    measure, events, since_ms: until - Number($('series-range').value), until_ms: until,
    granularity: $('series-granularity').value, timezone: state.timezone,
    group_by: group ? [group] : [],
  };
}

async function refreshSeries() {
  const request = seriesRequest();
  const seq = ++state.seriesSeq;
  const answer = await api('metrics', request).catch((e) => {
    if (seq !== state.seriesSeq) throw new Superseded();
    $('series-chart').replaceChildren(); // no stale chart under the error
    throw e;
  });
  if (seq !== state.seriesSeq) throw new Superseded();
  const step = GRANULARITY_MS[request.granularity];
  // Every bucket of the window, so a quiet bucket draws as 0 (not for averages).
  const first = Math.floor(naive(bucketLabel(request.since_ms, request.timezone)) / step) * step;
  const last = naive(bucketLabel(request.until_ms - 1, request.timezone));
  const byGroup = new Map();
  for (const r of answer.rows) {
    const name = r.groups.length ? r.groups.map((g) => g || '(none)').join(' / ') : 'all';
    if (!byGroup.has(name)) byGroup.set(name, new Map());
    byGroup.get(name).set(naive(r.bucket), r.value);
  }
  const fill = request.measure.kind !== 'avg';
  let series = [...byGroup].map(([name, values]) => {
    const points = [];
    if (fill) for (let x = first; x <= last; x += step) points.push({ x, value: values.get(x) ?? 0 });
    for (const [x, value] of values) if (!fill || x < first || x > last) points.push({ x, value });
    return { name, points, total: [...values.values()].reduce((a, b) => a + b, 0) };
  });
  series.sort((a, b) => b.total - a.total || a.name.localeCompare(b.name));
  const hidden = Math.max(0, series.length - 10);
  series = series.slice(0, 10);
  const tick = request.granularity === 'day'
    ? (x) => naiveLabel(x).slice(5, 10) : (x) => naiveLabel(x).slice(11, 16);
  const host = $('series-chart');
  if (!series.length) {
    host.replaceChildren(Object.assign(document.createElement('p'), { className: 'empty', textContent: 'no data in this range' }));
  } else {
    lineChart(host, series, { tick });
  }
  if (hidden) host.append(Object.assign(document.createElement('p'), { className: 'hint', textContent: `${hidden} smaller groups not shown` }));
  if (answer.truncated) host.append(Object.assign(document.createElement('p'), { className: 'hint', textContent: 'the answer hit the row limit: shorten the range or coarsen the granularity' }));
}

// ---- funnel builder ----

function addStep(event = '') {
  const li = $('funnel-step').content.firstElementChild.cloneNode(true);
  li.querySelector('.step-event').value = event;
  li.querySelector('.step-remove').addEventListener('click', () => {
    li.remove();
    renumberSteps();
  });
  $('funnel-steps').append(li);
  renumberSteps();
}

function renumberSteps() {
  [...$('funnel-steps').children].forEach((li, i) => { li.dataset.step = String(i); });
}

function funnelRequest() {
  const steps = [...$('funnel-steps').children].map((li) => {
    const step = { event: li.querySelector('.step-event').value.trim() };
    const name = li.querySelector('.step-prop-name').value.trim();
    if (name) step.properties = [{ name, value: li.querySelector('.step-prop-value').value }];
    return step;
  });
  const until = windowEnd();
  const breakdown = $('funnel-breakdown').value;
  const request = {
    steps, window_seconds: Math.round(Number($('funnel-window').value) * 60),
    since_ms: until - Number($('funnel-range').value), until_ms: until,
  };
  if (breakdown) request.breakdown = breakdown;
  return request;
}

async function runFunnel() {
  const answer = await api('funnel', funnelRequest());
  const host = $('funnel-result');
  host.replaceChildren();
  for (const group of funnelGroups(answer)) {
    const block = document.createElement('div');
    block.className = 'funnel-group';
    block.dataset.group = group.name;
    if (answer.breakdown) block.append(Object.assign(document.createElement('h3'), { textContent: group.title }));
    const chart = document.createElement('div');
    chart.className = 'chart';
    block.append(chart);
    host.append(block); // in the page first, so the chart takes its width
    barChart(chart, group.steps.map((s, i) => ({
      label: `${i + 1}. ${s.event}`, tick: `${i + 1}. ${s.event} (${rate(s.overall_conversion_rate)})`,
      value: s.entered,
    })));
    const table = document.createElement('table');
    table.innerHTML = '<thead><tr><th>Step</th><th class="num">Entered</th><th class="num">Converted</th>'
      + '<th class="num">From previous</th><th class="num">From first</th><th class="num">Drop-off</th></tr></thead>';
    const body = document.createElement('tbody');
    group.steps.forEach((s, i) => {
      const tr = document.createElement('tr');
      tr.dataset.step = String(i);
      tr.dataset.entered = String(s.entered);
      tr.dataset.converted = String(s.converted);
      const cells = [`${i + 1}. ${s.event}`, formatNumber(s.entered), formatNumber(s.converted),
        rate(s.conversion_rate), rate(s.overall_conversion_rate), rate(s.drop_off_rate)];
      cells.forEach((text, c) => {
        const td = document.createElement('td');
        td.textContent = text;
        if (c) td.className = 'num';
        tr.append(td);
      });
      body.append(tr);
    });
    table.append(body);
    block.append(table);
  }
}

const rate = (r) => `${(100 * r).toFixed(1)}%`;

/**
 * The funnel answer as blocks to draw: everyone first (data-group ""),
 * then each breakdown value, then the remainder ("other").
 */
function funnelGroups(answer) {
  const groups = [{ name: '', title: 'all users', steps: answer.steps }];
  for (const g of answer.groups ?? []) groups.push({ name: g.value, title: g.value || '(empty)', steps: g.steps });
  if (answer.other) groups.push({ name: 'other', title: 'other values', steps: answer.other });
  return groups;
}

// ---- timeline lookup ----

/** A new lookup, or the next page of the last one (same window, its cursor). */
function timelineRequest(more) {
  if (more) return { ...state.timeline.request, cursor: state.timeline.cursor };
  const until = windowEnd();
  return {
    [$('timeline-kind').value]: $('timeline-id').value.trim(),
    since_ms: until - Number($('timeline-range').value), until_ms: until, limit: TIMELINE_PAGE,
  };
}

async function lookUpTimeline(more) {
  const request = timelineRequest(more);
  const answer = await api('timeline', request);
  const rows = answer.events.map((e) => {
    const tr = document.createElement('tr');
    tr.dataset.event = e.event;
    tr.dataset.ts = String(e.ts_ms);
    const cells = [new Date(e.ts_ms).toLocaleString(), e.event, propertiesText(e.properties)];
    for (const text of cells) tr.append(Object.assign(document.createElement('td'), { textContent: text }));
    return tr;
  });
  if (more) {
    $('timeline-rows').append(...rows);
  } else {
    $('timeline-rows').replaceChildren(...(rows.length ? rows : [emptyRow(3, 'no events for this id in this range')]));
  }
  state.timeline = { request, cursor: answer.next_cursor ?? null };
  $('timeline-more').hidden = !state.timeline.cursor;
}

function propertiesText(properties) {
  let value = properties;
  if (typeof value === 'string') {
    try { value = JSON.parse(value); } catch { return value; }
  }
  if (!value || typeof value !== 'object') return String(value ?? '');
  return Object.entries(value).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(', ');
}

// ---- refresh loop and wiring ----

async function refresh() {
  clearTimeout(state.timer);
  const results = await Promise.all([
    guarded('live-error', refreshLive),
    guarded('top-error', refreshTop),
    guarded('series-error', refreshSeries),
  ]);
  const updated = $('updated');
  updated.textContent = `updated ${clock(new Date())}${results.every(Boolean) ? '' : ' (with errors)'}`;
  updated.dataset.refreshes = String(Number(updated.dataset.refreshes || 0) + 1);
  state.timer = setTimeout(refresh, REFRESH_MS);
}

function start() {
  $('connect').hidden = true;
  $('project-name').textContent = state.project;
  refresh();
}

function wire() {
  $('connect').addEventListener('submit', (e) => {
    e.preventDefault();
    localStorage.setItem('spoor.project', $('connect-project').value.trim());
    localStorage.setItem('spoor.token', $('connect-token').value.trim());
    if (loadConnection()) start();
  });
  $('settings-toggle').addEventListener('click', () => { $('connect').hidden = !$('connect').hidden; });
  $('series-form').addEventListener('submit', (e) => {
    e.preventDefault();
    guarded('series-error', refreshSeries);
  });
  $('series-form').addEventListener('change', () => {
    const kind = $('series-measure').value;
    $('series-property-label').hidden = kind !== 'sum' && kind !== 'avg';
    guarded('series-error', refreshSeries);
  });
  $('funnel-add').addEventListener('click', () => addStep());
  $('funnel-form').addEventListener('submit', (e) => {
    e.preventDefault();
    guarded('funnel-error', runFunnel);
  });
  $('timeline-form').addEventListener('submit', (e) => {
    e.preventDefault();
    guarded('timeline-error', () => lookUpTimeline(false));
  });
  $('timeline-more').addEventListener('click', () => guarded('timeline-error', () => lookUpTimeline(true)));
  window.addEventListener('hashchange', () => { if (loadConnection()) start(); });
  addStep('page_view');
  addStep('add_to_cart');
}

wire();
if (loadConnection()) start(); else showConnect('');
