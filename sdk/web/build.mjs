// Builds the SDK with esbuild: dist/spoor.mjs (an ES module) and
// dist/spoor.js (an IIFE defining the global `spoor`, for a script tag),
// both minified for ES2018 browsers. `node build.mjs [outdir]` builds into
// outdir instead (the tests build into a temp dir).
import { build } from 'esbuild';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] || join(here, 'dist'));
const common = {
  entryPoints: [join(here, 'src/index.ts')],
  bundle: true,
  minify: true,
  target: 'es2018',
  logLevel: 'warning',
};
await build({ ...common, format: 'esm', outfile: join(out, 'spoor.mjs') });
await build({ ...common, format: 'iife', globalName: 'spoor', outfile: join(out, 'spoor.js') });
console.log(`spoor web sdk: built ${out}/spoor.mjs and spoor.js`);
