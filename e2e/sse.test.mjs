// Browser test of the SSE endpoint (docs/protocol.md §10): a real EventSource
// in headless Chromium, against two Caddy instances sharing a Redis replay
// store. The page's Caddy stops while the other keeps publishing, then
// starts again on the same port; the EventSource reconnects by itself,
// sending Last-Event-ID, and the stream it saw must be gap-free.
//
//   cd e2e && npm install --no-save && node build.mjs
//   CHROMIUM_PATH=/usr/bin/chromium REALTIME_CADDY_BIN=<caddy> node --test sse.test.mjs
//
// Redis: $REALTIME_TEST_REDIS (host:port), else 127.0.0.1:6379, under a key
// prefix of this run. Artifacts (Caddy logs, what the page saw) go to
// e2e/artifacts/sse/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gateway, artifacts, caddyBinary, eventually, freePort, launchChromium, uid } from './lib.mjs';

const dir = join(artifacts, 'sse');
const redis = process.env.REALTIME_TEST_REDIS || '127.0.0.1:6379';

const caddyfile = `{
	admin off
	persist_config off
	skip_install_trust
	http_port {$REALTIME_DEMO_PORT}
	grace_period 3s
	realtime {
		redis redis://{$REALTIME_SSE_REDIS} {
			key_prefix {$REALTIME_SSE_PREFIX}
		}
	}
}

http://localhost:{$REALTIME_DEMO_PORT} {
	realtime {
		api /_realtime
		sse /events
		shutdown_spread 0
		replay chat {
			store redis
		}
	}
	respond "sse test page" 200
}
`;

let browser;
let a;
let b;

function reachable(addr) {
	const [host, port] = addr.split(':');
	return new Promise((ok) => {
		const sock = connect({ host, port: Number(port) });
		sock.setTimeout(2000);
		sock.once('connect', () => (sock.destroy(), ok(true)));
		sock.once('error', () => ok(false));
		sock.once('timeout', () => (sock.destroy(), ok(false)));
	});
}

before(async () => {
	rmSync(dir, { recursive: true, force: true });
	mkdirSync(dir, { recursive: true });
	if (!(await reachable(redis))) {
		throw new Error(`no Redis at ${redis}: start one (redis-server --port 6379 --save '') or set REALTIME_TEST_REDIS`);
	}
	// The config lives outside artifacts/, which another test file may reset.
	const config = join(mkdtempSync(join(tmpdir(), 'realtime-e2e-sse-')), 'Caddyfile');
	writeFileSync(config, caddyfile);
	const bin = caddyBinary();
	const env = { REALTIME_SSE_REDIS: redis, REALTIME_SSE_PREFIX: `e2e-sse-${uid()}:` };
	a = new Gateway({ bin, port: await freePort(), caddyfile: config, log: join(dir, 'caddy-a.log'), env });
	b = new Gateway({ bin, port: await freePort(), caddyfile: config, log: join(dir, 'caddy-b.log'), env });
	await a.start();
	await b.start();
	browser = await launchChromium();
});

after(async () => {
	await browser?.close();
	await a?.stop();
	await b?.stop();
});

test('an EventSource resumes gap-free by itself across a restart of its Caddy', { timeout: 90000 }, async () => {
	const context = await browser.newContext();
	const page = await context.newPage();
	// The Last-Event-ID of each request of the stream, null for none; the
	// header is the network stack's, which allHeaders() includes.
	const requests = [];
	page.on('request', (r) => {
		if (new URL(r.url()).pathname !== '/events') return;
		const i = requests.push(undefined) - 1;
		r.allHeaders().then((h) => (requests[i] = h['last-event-id'] ?? null), () => {});
	});
	const seen = () => page.evaluate(() => window.__sse);
	try {
		await page.goto(`${a.base}/`);
		await page.evaluate(() => {
			const st = { events: [], opens: 0, errors: 0, closes: [], welcomes: 0 };
			window.__sse = st;
			const es = new EventSource('/events?topic=chat');
			window.__es = es;
			es.onopen = () => st.opens++;
			es.onerror = () => st.errors++;
			es.onmessage = (e) => st.events.push({ env: JSON.parse(e.data), id: e.lastEventId });
			es.addEventListener('welcome', () => st.welcomes++);
			es.addEventListener('close', (e) => st.closes.push(JSON.parse(e.data)));
		});
		await eventually(async () => (await seen()).welcomes, 1, { what: 'the welcome event' });

		const publish = (gw, n) => gw.publish('chat', 'msg', { n });
		for (let n = 1; n <= 5; n++) await publish(a, n);
		await eventually(async () => (await seen()).events.length, 5, { what: 'the first five events' });
		const before = await seen();
		const lastID = before.events.at(-1).id;
		assert.ok(lastID, 'the events carry an id');

		// The page's Caddy stops (its stream gets the close event), the
		// other instance publishes meanwhile, then it starts again.
		await a.stop();
		for (let n = 6; n <= 10; n++) await publish(b, n);
		mkdirSync(dir, { recursive: true }); // for its log, should artifacts/ have been reset meanwhile
		await a.start();

		await eventually(async () => (await seen()).events.length, 10, { timeout: 40000, what: 'the five events published while it was down' });
		await publish(a, 11);
		await eventually(async () => (await seen()).events.length, 11, { what: 'the live event after the resume' });

		const st = await seen();
		const seqs = st.events.map((e) => e.env.seq);
		assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 'every seq once, in order');
		assert.deepEqual(st.events.map((e) => e.env.data.n), seqs, 'each event is its publish');
		for (const e of st.events) {
			assert.deepEqual(Object.keys(e.env), ['topic', 'event', 'data', 'seq'], 'the envelope as a WebSocket gets it');
		}
		assert.deepEqual(st.closes, [{ code: 1001, reason: 'Server shutting down' }], 'the stop ended the stream with the close event');
		assert.ok(st.opens >= 2 && st.errors >= 1, `the EventSource reconnected by itself (opens ${st.opens}, errors ${st.errors})`);
		assert.equal(requests[0], null, 'the first request carries no Last-Event-ID');
		assert.ok(requests.includes(lastID), `a reconnect carried Last-Event-ID ${lastID}: ${JSON.stringify(requests)}`);
		assert.equal(await page.evaluate(() => window.__es.readyState), 1, 'the EventSource is open');
	} catch (err) {
		mkdirSync(dir, { recursive: true });
		writeFileSync(join(dir, 'page.json'), JSON.stringify({ seen: await seen().catch(() => null), requests }, null, 2));
		await page.screenshot({ path: join(dir, 'failure.png') }).catch(() => {});
		throw err;
	} finally {
		await context.close();
	}
});
