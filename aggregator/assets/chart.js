// A tiny SVG chart library for the dashboard: bars and lines with a value
// axis, a few x labels and a legend. Every mark carries data-* attributes
// (data-label, data-value, data-series) so tests can read what was drawn.

const NS = 'http://www.w3.org/2000/svg';
const H = 220;
const PAD = { left: 48, right: 28, top: 12, bottom: 28 };

export const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed',
  '#0891b2', '#db2777', '#65a30d', '#525252', '#ea580c'];

function svg(name, attrs = {}, parent = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

/** 1234.5 -> "1,234.5"; integers without decimals. */
export function formatNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const digits = Number.isInteger(v) ? 0 : Math.abs(v) < 10 ? 2 : 1;
  return v.toLocaleString('en-US', { maximumFractionDigits: digits });
}

/** The smallest of 1, 2, 2.5, 5 × 10^k at or above v. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
}

/** An empty chart as wide as `host` (so text keeps its size) with a value axis. */
function frame(host, maxValue) {
  const W = Math.max(320, Math.round(host.clientWidth) || 800);
  host.replaceChildren();
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'chart-svg' }, host);
  const top = niceMax(maxValue);
  const y = (v) => PAD.top + (H - PAD.top - PAD.bottom) * (1 - v / top);
  for (const t of [0, top / 2, top]) {
    svg('line', { x1: PAD.left, x2: W - PAD.right, y1: y(t), y2: y(t), class: 'grid' }, root);
    const label = svg('text', { x: PAD.left - 6, y: y(t) + 4, 'text-anchor': 'end', class: 'axis' }, root);
    label.textContent = formatNumber(t);
  }
  return { root, y, W };
}

function xLabel(root, x, text) {
  const t = svg('text', { x, y: H - 8, 'text-anchor': 'middle', class: 'axis' }, root);
  t.textContent = text;
}

/**
 * Vertical bars, one per item: [{label, value, tick?}]. `tick` is the
 * x-axis text (shown where there is room); `label` names the bar.
 */
export function barChart(host, bars, { color = PALETTE[0] } = {}) {
  const { root, y, W } = frame(host, Math.max(0, ...bars.map((b) => b.value)));
  const slot = (W - PAD.left - PAD.right) / Math.max(1, bars.length);
  const every = Math.max(1, Math.ceil(bars.length / Math.floor(W / 70)));
  bars.forEach((b, i) => {
    const x = PAD.left + i * slot;
    const rect = svg('rect', {
      x: x + slot * 0.1, width: Math.max(1, slot * 0.8),
      y: y(b.value), height: Math.max(0, y(0) - y(b.value)),
      fill: b.color || color, class: 'bar', 'data-label': b.label, 'data-value': b.value,
    }, root);
    svg('title', {}, rect).textContent = `${b.label}: ${formatNumber(b.value)}`;
    if (i % every === 0) xLabel(root, x + slot / 2, b.tick ?? b.label);
  });
  return root;
}

/**
 * One line per series: [{name, points: [{x, value}]}], x numeric (ms).
 * `tick(x)` gives an x-axis label. A legend with one entry per series
 * follows the chart.
 */
export function lineChart(host, series, { tick = String } = {}) {
  const xs = series.flatMap((s) => s.points.map((p) => p.x));
  const values = series.flatMap((s) => s.points.map((p) => p.value));
  const { root, y, W } = frame(host, Math.max(0, ...values));
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const span = x1 > x0 ? x1 - x0 : 1;
  const x = (v) => PAD.left + (W - PAD.left - PAD.right) * (xs.length > 1 ? (v - x0) / span : 0.5);
  const distinct = [...new Set(xs)].sort((a, b) => a - b);
  const every = Math.max(1, Math.ceil(distinct.length / Math.floor(W / 70)));
  distinct.forEach((v, i) => { if (i % every === 0) xLabel(root, x(v), tick(v)); });
  const legend = document.createElement('ul');
  legend.className = 'legend';
  legend.dataset.testid = 'legend';
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const pts = [...s.points].sort((a, b) => a.x - b.x);
    const d = pts.map((p, j) => `${j ? 'L' : 'M'}${x(p.x).toFixed(1)},${y(p.value).toFixed(1)}`).join('');
    const path = svg('path', { d, stroke: color, class: 'series', 'data-series': s.name, 'data-points': pts.length }, root);
    svg('title', {}, path).textContent = s.name;
    if (pts.length <= 120) {
      for (const p of pts) {
        const dot = svg('circle', { cx: x(p.x), cy: y(p.value), r: 2.5, fill: color, class: 'dot' }, root);
        svg('title', {}, dot).textContent = `${s.name} ${tick(p.x)}: ${formatNumber(p.value)}`;
      }
    }
    const item = document.createElement('li');
    item.dataset.series = s.name;
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = color;
    item.append(swatch, s.name);
    legend.append(item);
  });
  host.append(legend);
  return root;
}
