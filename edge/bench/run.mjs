// Times the edge's CPU path stage by stage as wasm under V8 (node's V8, the
// engine workerd embeds). Usage: node run.mjs <spoor_edge_bench.wasm> [events]
// Prints one line per stage: median µs per batch over 7 samples of ≥ 200 ms.
import { readFileSync } from "node:fs";

const [file, eventsArg] = process.argv.slice(2);
const events = Number(eventsArg ?? 50);
const { instance } = await WebAssembly.instantiate(readFileSync(file), {});
const x = instance.exports;
const bodyBytes = x.prepare(events);
const name = (i) =>
  new TextDecoder().decode(new Uint8Array(x.memory.buffer, x.stage_name(i), x.stage_name_len(i)));

function time(stage, iters) {
  const t0 = process.hrtime.bigint();
  x.run(stage, iters);
  return Number(process.hrtime.bigint() - t0) / 1e3 / iters; // µs per iteration
}

console.log(`wasm stage bench: ${events} events, ${bodyBytes} bytes per batch`);
const results = [];
for (let s = 0; s < x.stages(); s++) {
  // Warm up (tier-up to TurboFan), then size a sample to about 200 ms.
  let iters = 1;
  while (time(s, iters) * iters < 50_000 && iters < 1 << 20) iters *= 2;
  iters = Math.max(1, Math.round((200_000 / time(s, iters))));
  const samples = [];
  for (let k = 0; k < 7; k++) samples.push(time(s, iters));
  samples.sort((a, b) => a - b);
  const us = samples[3];
  results.push({ stage: name(s), us_per_batch: us, us_per_event: us / events });
  console.log(`${name(s).padEnd(32)} ${us.toFixed(1).padStart(9)} µs/batch ${(us / events).toFixed(2).padStart(7)} µs/event`);
}
if (process.env.SPOOR_BENCH_JSON) console.log(JSON.stringify(results));
