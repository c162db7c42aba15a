// Samples a running workerd's isolate with V8's CPU profiler (through
// workerd's --inspector-addr) and prints where its time went.
// Usage: node profile.mjs <host:port> <seconds> [requests-counter-url]
// Output: one JSON object: total sampled ms, ms per category (wasm: the
// module's own code; js: the worker's JS glue; runtime: V8 builtins and
// workerd's native code running on the isolate's thread, "(program)";
// gc; idle) and the top functions by self time.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
// `ws` ships with wrangler (node 20 has no WebSocket client of its own).
const WebSocket = require(process.env.SPOOR_WS_MODULE ?? "ws");

const [addr, secsArg] = process.argv.slice(2);
const secs = Number(secsArg ?? 5);
const list = await (await fetch(`http://${addr}/json/list`)).json().catch(() => []);
const target = list[0]?.webSocketDebuggerUrl ?? `ws://${addr}/`;
const ws = new WebSocket(target);
await new Promise((ok, err) => { ws.once("open", ok); ws.once("error", err); });
let id = 0;
const pending = new Map();
ws.on("message", (m) => {
  const msg = JSON.parse(m.toString());
  if (msg.id && pending.has(msg.id)) { pending.get(msg.id)(msg); pending.delete(msg.id); }
});
const call = (method, params = {}) =>
  new Promise((ok) => { const i = ++id; pending.set(i, ok); ws.send(JSON.stringify({ id: i, method, params })); });

await call("Profiler.enable");
await call("Profiler.setSamplingInterval", { interval: 100 });
await call("Profiler.start");
await new Promise((r) => setTimeout(r, secs * 1000));
const { result } = await call("Profiler.stop");
ws.close();

const p = result.profile;
const byId = new Map(p.nodes.map((n) => [n.id, n]));
const self = new Map();
for (let i = 0; i < p.samples.length; i++) {
  const dt = (p.timeDeltas[i + 1] ?? 0) / 1000; // ms until the next sample
  self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + dt);
}
const cats = { wasm: 0, js: 0, runtime: 0, gc: 0, idle: 0 };
const fns = new Map();
for (const [nodeId, ms] of self) {
  const f = byId.get(nodeId).callFrame;
  const name = f.functionName || "(anonymous)";
  let cat;
  if (name === "(idle)") cat = "idle";
  else if (name === "(garbage collector)") cat = "gc";
  else if (name === "(program)" || name === "(root)" || f.url === "") cat = "runtime";
  else if (f.url.startsWith("wasm://")) cat = "wasm";
  else cat = "js";
  cats[cat] += ms;
  const key = `${cat}\t${name}`;
  fns.set(key, (fns.get(key) ?? 0) + ms);
}
const busy = cats.wasm + cats.js + cats.runtime + cats.gc;
const top = [...fns].sort((a, b) => b[1] - a[1]).filter(([k]) => !k.startsWith("idle")).slice(0, 40)
  .map(([k, ms]) => { const [cat, name] = k.split("\t"); return { cat, name, ms: +ms.toFixed(1), pct_busy: +(100 * ms / busy).toFixed(1) }; });
console.log(JSON.stringify({ sampled_ms: +(busy + cats.idle).toFixed(1), busy_ms: +busy.toFixed(1),
  categories: Object.fromEntries(Object.entries(cats).map(([k, v]) => [k, +v.toFixed(1)])), top }));
