// Harness of the browser end-to-end tests: a Caddy process running the repo's
// Caddyfile.example on free ports, headless Debian Chromium through
// playwright-core, pages of the demo, polling assertions, and artifacts
// (screenshots, page consoles and WebSocket frames of a failed test; Caddy's log).
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, mkdirSync, rmSync, openSync, closeSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual, inspect } from 'node:util';
import { chromium } from 'playwright-core';

export const e2eDir = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(e2eDir, '..');
export const artifacts = join(e2eDir, 'artifacts');

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
// Playwright adds --headless and a fresh --user-data-dir (a new temp profile
// per launch) itself; these are the rest of the flags this machine needs.
export const CHROMIUM_ARGS = [
	'--no-sandbox',
	'--disable-gpu',
	'--no-first-run',
	'--disable-background-networking',
	'--disable-component-update',
	'--disable-sync',
	'--disable-quic',
];

export function resetArtifacts() {
	rmSync(artifacts, { recursive: true, force: true });
	mkdirSync(artifacts, { recursive: true });
}

export function freePort() {
	return new Promise((ok, fail) => {
		const srv = createServer();
		srv.unref();
		srv.on('error', fail);
		srv.listen(0, '127.0.0.1', () => {
			const { port } = srv.address();
			srv.close(() => ok(port));
		});
	});
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The caddy binary: $REALTIME_CADDY_BIN (scripts/test.sh builds it), else built here. */
export function caddyBinary() {
	if (process.env.REALTIME_CADDY_BIN) return process.env.REALTIME_CADDY_BIN;
	const out = join(mkdtempSync(join(tmpdir(), 'realtime-e2e-bin-')), 'caddy');
	execFileSync('go', ['build', '-o', out, './cmd/caddy'], { cwd: repo, stdio: 'inherit' });
	return out;
}

/**
 * A started Gateway on a free port. Another process may take the port
 * between freePort() and Caddy's listen: then it tries another one.
 */
export async function startGateway(bin) {
	for (let attempt = 1; ; attempt++) {
		const gw = new Gateway({ bin, port: await freePort() });
		try {
			await gw.start();
			return gw;
		} catch (err) {
			if (err.code !== 'EADDRINUSE' || attempt === 5) throw err;
		}
	}
}

/**
 * Caddy running Caddyfile.example (the demo) on a fixed port it can restart
 * on; or, with `caddyfile`, that Caddyfile, which reads its port from
 * {$REALTIME_DEMO_PORT} and its other settings from `env`, logging to `log`.
 * Either must serve the API under /_realtime (start waits for its health).
 */
export class Gateway {
	constructor({ bin, port, caddyfile, log, env }) {
		this.bin = bin;
		this.port = port;
		this.base = `http://localhost:${port}`;
		this.home = mkdtempSync(join(tmpdir(), 'realtime-e2e-home-'));
		this.caddyfile = caddyfile ?? join(repo, 'Caddyfile.example');
		this.log = log ?? join(artifacts, 'caddy.log');
		this.env = env ?? {};
		this.proc = null;
	}

	async start() {
		const env = {
			...process.env,
			XDG_DATA_HOME: join(this.home, 'data'),
			XDG_CONFIG_HOME: join(this.home, 'config'),
			REALTIME_DEMO_PORT: String(this.port),
			REALTIME_DEMO_ADMIN: 'off',
			REALTIME_DEMO_ROOT: join(repo, 'demo'),
			...this.env,
		};
		delete env.REALTIME_API_KEY; // the demo page publishes as a loopback caller
		const fd = openSync(this.log, 'a');
		const proc = spawn(this.bin, ['run', '--config', this.caddyfile, '--adapter', 'caddyfile'], {
			cwd: repo,
			env,
			stdio: ['ignore', fd, fd],
		});
		closeSync(fd);
		this.proc = proc;
		proc.exited = new Promise((r) => proc.once('exit', (code, signal) => r({ code, signal })));
		const deadline = Date.now() + 30000;
		for (;;) {
			if (proc.exitCode !== null || proc.signalCode !== null) {
				const tail = this.tail();
				const err = new Error(`caddy exited at start (${proc.exitCode ?? proc.signalCode}):\n${tail}`);
				if (/address already in use/.test(tail)) err.code = 'EADDRINUSE';
				throw err;
			}
			try {
				const res = await fetch(`${this.base}/_realtime/health`, { signal: AbortSignal.timeout(1000) });
				if (res.ok) return;
			} catch {}
			if (Date.now() > deadline) throw new Error(`caddy not healthy on ${this.base} within 30 s:\n${this.tail()}`);
			await sleep(50);
		}
	}

	/** SIGTERM and wait: the gateway closes every WebSocket with 1001. */
	async stop() {
		const proc = this.proc;
		if (!proc) return;
		this.proc = null;
		if (proc.exitCode === null && proc.signalCode === null) {
			proc.kill('SIGTERM');
			const killer = setTimeout(() => proc.kill('SIGKILL'), 20000);
			await proc.exited;
			clearTimeout(killer);
		}
	}

	tail(n = 30) {
		try {
			return readFileSync(this.log, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
		} catch {
			return '';
		}
	}

	async api(method, path, body) {
		const res = await fetch(`${this.base}/_realtime${path}`, {
			method,
			headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
			body: body === undefined ? undefined : JSON.stringify(body),
		});
		const text = await res.text();
		if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
		return JSON.parse(text);
	}

	/** What an app server does: POST /publish. */
	publish(topic, event, data) {
		return this.api('POST', '/publish', { topic, event, data });
	}
}

export function launchChromium() {
	if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}`);
	return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

function parse(f) {
	try {
		return JSON.parse(f);
	} catch {
		return f;
	}
}

const slug = (s) => s.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 80);

/**
 * One test's browser state: its contexts (one per simulated browser, i.e.
 * per user) and pages, with each page's console and WebSocket frames kept
 * for the artifacts of a failure.
 */
export class Session {
	constructor(browser, gw, name) {
		this.browser = browser;
		this.gw = gw;
		this.name = name;
		this.contexts = [];
		this.pages = [];
	}

	/** Frames the page's WebSockets sent, parsed: all of them, or those of socket `i` (-1: the last). */
	sent(page, i) {
		return this.#frames(page, i, 'sent');
	}

	/** The page's auth preflights (POST /__ws/auth, §2.2): method, x-requested-with, status, in order. */
	preflights(page) {
		return this.pages.find((r) => r.page === page).preflights;
	}

	/** The response headers of the page's WebSocket upgrades, in order. */
	handshakes(page) {
		return this.pages.find((r) => r.page === page).handshakes;
	}

	/** How many WebSockets the page opened. */
	sockets(page) {
		return this.pages.find((r) => r.page === page).sockets.length;
	}

	/** Frames the page's WebSockets received, parsed, like sent(). */
	received(page, i) {
		return this.#frames(page, i, 'received');
	}

	#frames(page, i, dir) {
		const { sockets } = this.pages.find((r) => r.page === page);
		const pick = i === undefined ? sockets : [sockets.at(i)].filter(Boolean);
		return pick.flatMap((sock) => sock[dir].map(parse));
	}

	async context() {
		const ctx = await this.browser.newContext({ viewport: { width: 1100, height: 900 } });
		this.contexts.push(ctx);
		return ctx;
	}

	/**
	 * Open the demo at `path` ('/' current, '/legacy/' 0.3.4) as `user` in
	 * `ctx` (a new browser context when absent) and wait for its socket.
	 */
	async open(path, user, ctx) {
		ctx = ctx || (await this.context());
		const page = await ctx.newPage();
		page.setDefaultTimeout(15000);
		const label = `${user}${path.replace(/\//g, '_')}`;
		const rec = { page, label, console: [], sockets: [], preflights: [], handshakes: [] };
		this.pages.push(rec);
		// Close codes are invisible to the DevTools WebSocket events: record them in the page.
		await page.addInitScript(() => {
			const Native = window.WebSocket;
			window.__wsCloses = [];
			window.WebSocket = class extends Native {
				constructor(...args) {
					super(...args);
					this.addEventListener('close', (e) => window.__wsCloses.push({ code: e.code, reason: e.reason }));
				}
			};
		});
		page.on('console', (m) => rec.console.push(`${m.type()}: ${m.text()}`));
		page.on('pageerror', (e) => rec.console.push(`pageerror: ${e.stack || e}`));
		// The upgrade's response headers (negotiated extensions) are only
		// visible through the DevTools protocol.
		const cdp = await ctx.newCDPSession(page);
		await cdp.send('Network.enable');
		cdp.on('Network.webSocketHandshakeResponseReceived', (e) => rec.handshakes.push(e.response.headers));
		page.on('response', (res) => {
			const req = res.request();
			if (new URL(req.url()).pathname !== '/__ws/auth') return;
			rec.preflights.push({ method: req.method(), xrw: req.headers()['x-requested-with'], status: res.status() });
			rec.console.push(`auth preflight ${req.method()} ${res.status()}`);
		});
		page.on('websocket', (ws) => {
			const sock = { sent: [], received: [] };
			rec.sockets.push(sock);
			rec.console.push(`websocket ${rec.sockets.length} opening ${ws.url()}`);
			ws.on('framesent', (f) => sock.sent.push(String(f.payload)));
			ws.on('framereceived', (f) => sock.received.push(String(f.payload)));
			ws.on('close', () => rec.console.push(`websocket ${rec.sockets.indexOf(sock) + 1} closed`));
		});
		await page.goto(`${this.gw.base}${path}?user=${encodeURIComponent(user)}`);
		await waitOpen(page);
		// The first attempt must have succeeded: a refused upgrade (say, a 401
		// from the auth hook) shows as a 1006 close, and the retry seconds later
		// would hide it.
		const failed = await closes(page);
		if (failed.length) throw new Error(`${label}: WebSocket attempts failed before the open: ${JSON.stringify(failed)}`);
		return page;
	}

	/** Screenshots and logs of every open page, into e2e/artifacts/. */
	async saveArtifacts(err) {
		mkdirSync(artifacts, { recursive: true });
		const base = slug(this.name);
		const notes = [`${this.name}\n\n${err && err.stack ? err.stack : inspect(err)}\n`];
		for (const [i, rec] of this.pages.entries()) {
			const file = `${base}--${i}-${slug(rec.label)}`;
			if (!rec.page.isClosed()) {
				await rec.page.screenshot({ path: join(artifacts, `${file}.png`), fullPage: true }).catch((e) => {
					notes.push(`screenshot of ${rec.label} failed: ${e.message}`);
				});
			}
			writeFileSync(
				join(artifacts, `${file}.log`),
				[
					`page ${rec.label}${rec.page.isClosed() ? ' (closed)' : ` ${rec.page.url()}`}`,
					'--- console',
					...rec.console,
					...rec.sockets.flatMap((sock, n) => [
						`--- websocket ${n + 1}: frames sent`,
						...sock.sent,
						`--- websocket ${n + 1}: frames received`,
						...sock.received,
					]),
				].join('\n') + '\n',
			);
		}
		notes.push(`--- caddy log (tail)\n${this.gw.tail(40)}`);
		writeFileSync(join(artifacts, `${base}.txt`), notes.join('\n'));
	}

	async close() {
		for (const ctx of this.contexts) await ctx.close().catch(() => {});
	}
}

/**
 * Run `fn(session)`; on failure save screenshots and logs, then rethrow
 * (E2E_ARTIFACTS=always saves them for passing tests too).
 */
export async function withSession(browser, gw, name, fn) {
	const s = new Session(browser, gw, name);
	try {
		await fn(s);
		if (process.env.E2E_ARTIFACTS === 'always') await s.saveArtifacts('passed');
	} catch (err) {
		await s.saveArtifacts(err).catch((e) => console.error('saving artifacts failed:', e));
		throw err;
	} finally {
		await s.close();
	}
}

export async function waitOpen(page, timeout = 15000) {
	await page.locator('#status[data-status="open"]').waitFor({ timeout });
}

/**
 * Poll `fn` until its value deep-equals `expected` (or, with a function
 * `expected`, until it returns true for the value); throw with the last
 * value otherwise.
 */
export async function eventually(fn, expected, { timeout = 10000, interval = 50, what = '' } = {}) {
	const ok = typeof expected === 'function' ? expected : (v) => isDeepStrictEqual(v, expected);
	const deadline = Date.now() + timeout;
	let last;
	for (;;) {
		last = await fn();
		if (ok(last)) return last;
		if (Date.now() > deadline) {
			throw new Error(
				`${what || 'condition'} not met within ${timeout} ms: last value ${inspect(last, { depth: 5 })}` +
					(typeof expected === 'function' ? '' : `, expected ${inspect(expected, { depth: 5 })}`),
			);
		}
		await sleep(interval);
	}
}

// What the demo's DOM shows.
export const chatTexts = (page) => page.locator('#chat-log li .text').allTextContents();
export const presenceUsers = async (page) =>
	(await page.locator('#presence li').evaluateAll((lis) => lis.map((li) => li.dataset.user))).sort();
export const todoItems = (page) =>
	page.locator('#todos li').evaluateAll((lis) =>
		lis.map((li) => ({
			id: li.dataset.id,
			title: li.querySelector('.title').textContent,
			done: li.querySelector('.done').checked,
		})),
	);
export const cursorsShown = (page) =>
	page.locator('#canvas .cursor').evaluateAll((els) =>
		els
			.map((el) => ({ user: el.dataset.user, x: parseFloat(el.style.left), y: parseFloat(el.style.top) }))
			.sort((a, b) => (a.user < b.user ? -1 : 1)),
	);

/** Move the mouse to fractions (fx, fy) of the page's cursor canvas. */
export async function pointAt(page, fx, fy) {
	const box = await page.locator('#canvas').boundingBox();
	await page.mouse.move(box.x + box.width * fx, box.y + box.height * fy, { steps: 4 });
}

/**
 * The `topic` events a client of either generation takes from `frames` (one
 * socket's, in order): replay `msg`s, then envelopes (batch elements
 * included) once the replay of `topic` has ended (clients drop live events
 * before it, so the gateway may send those twice), or every envelope when no
 * replay ran. Each as {seq, event, data, via}.
 */
export function deliveries(frames, topic) {
	// A batch frame's elements count as frames of their own (§7.2): the
	// gateway may put any envelopes queued together into one, replay
	// answers included.
	const envs = frames
		.filter((f) => f && typeof f === 'object')
		.flatMap((f) => (f.type === 'batch' && Array.isArray(f.events) ? f.events : [f]));
	const replayed = envs.some((e) => e.topic === `__replay:${topic}`);
	let live = !replayed;
	const out = [];
	for (const e of envs) {
		if (e.topic === `__replay:${topic}`) {
			if (e.event === 'msg') out.push({ seq: e.data.seq, event: e.data.event, data: e.data.data, via: 'replay' });
			else if (e.event === 'end') live = true;
			continue;
		}
		if (live && e.topic === topic && e.event !== undefined) out.push({ seq: e.seq, event: e.event, data: e.data, via: 'live' });
	}
	return out;
}

/** Close codes and reasons of the page's WebSockets so far. */
export const closes = (page) => page.evaluate(() => window.__wsCloses);

export const uid = () => Math.random().toString(36).slice(2, 8);

/**
 * startGateway with Caddy's log written to `log` instead of
 * e2e/artifacts/caddy.log, for test files that keep their artifacts apart.
 */
export async function startGatewayLoggingTo(bin, log) {
	for (let attempt = 1; ; attempt++) {
		const gw = new Gateway({ bin, port: await freePort() });
		gw.log = log;
		try {
			await gw.start();
			return gw;
		} catch (err) {
			if (err.code !== 'EADDRINUSE' || attempt === 5) throw err;
		}
	}
}
