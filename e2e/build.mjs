// Builds the demo's legacy page: bundles demo/legacy/app.js, which imports the
// svelte-adapter-uws 0.3.4 client (and svelte/store) from e2e/node_modules,
// into demo/legacy/bundle.js. Run after `npm install` in e2e/: `npm run build`.
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const legacy = join(here, '..', 'demo', 'legacy');

const result = await build({
	entryPoints: [join(legacy, 'app.js')],
	outfile: join(legacy, 'bundle.js'),
	bundle: true,
	format: 'esm',
	platform: 'browser',
	target: 'es2022', // top-level await
	nodePaths: [join(here, 'node_modules')], // demo/ has no node_modules of its own
	sourcemap: true,
	legalComments: 'inline',
	logLevel: 'warning',
	metafile: true,
});

const inputs = Object.keys(result.metafile.inputs);
if (!inputs.some((p) => p.includes('svelte-adapter-uws/client.js'))) {
	throw new Error('the bundle does not contain svelte-adapter-uws/client.js');
}
console.log(`built demo/legacy/bundle.js from ${inputs.length} modules`);
