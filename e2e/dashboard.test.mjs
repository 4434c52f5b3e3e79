// The dashboard (`dashboard /_dashboard` in Caddyfile.example) in headless
// Chromium: it loads without console errors, its connection count follows
// WebSocket clients the test opens, and a click on a topic shows who is
// present; with two instances on Redis it shows the cluster. Screenshots
// (dashboard.png, dashboard-cluster.png), consoles and the logs are kept in
// e2e/artifacts/dashboard/ after every run, passed or failed.
//
//   cd e2e && npm install --no-save && node build.mjs     # and redis-server on the PATH
//   CHROMIUM_PATH=/usr/bin/chromium REALTIME_CADDY_BIN=<caddy> node --test dashboard.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { artifacts, caddyBinary, eventually, freePort, launchChromium, startGatewayLoggingTo, uid } from './lib.mjs';

const dir = join(artifacts, 'dashboard');

let gw;
let bin;
let browser;
const procs = [];

before(async () => {
	// Only this file's directory: e2e.test.mjs owns the rest of artifacts/.
	rmSync(dir, { recursive: true, force: true });
	mkdirSync(dir, { recursive: true });
	bin = caddyBinary();
	gw = await startGatewayLoggingTo(bin, join(dir, 'caddy.log'));
	browser = await launchChromium();
});

after(async () => {
	await browser?.close();
	await gw?.stop();
	for (const p of procs.reverse()) {
		if (p.exitCode === null && p.signalCode === null) {
			p.kill('SIGTERM');
			await p.exited;
		}
	}
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A process whose output goes to `log`, stopped (SIGTERM) after the tests. */
function run(cmd, args, log, env = {}) {
	const fd = openSync(log, 'a');
	const p = spawn(cmd, args, { stdio: ['ignore', fd, fd], env: { ...process.env, ...env } });
	closeSync(fd);
	p.exited = new Promise((r) => p.once('exit', r));
	procs.push(p);
	return p;
}

async function until(what, fn, timeout = 20000) {
	const deadline = Date.now() + timeout;
	for (;;) {
		try {
			if (await fn()) return;
		} catch {}
		if (Date.now() > deadline) throw new Error(`${what} within ${timeout} ms`);
		await sleep(100);
	}
}

/**
 * Two Caddy instances of one gateway on a throwaway redis-server: each
 * serves the dashboard and presence on `room`, no auth hook.
 */
async function startCluster() {
	const home = mkdtempSync(join(tmpdir(), 'realtime-e2e-cluster-'));
	const redisPort = await freePort();
	run('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], join(dir, 'redis.log'));
	await until('redis-server answering', async () => {
		const { createConnection } = await import('node:net');
		return new Promise((ok) => {
			const c = createConnection(redisPort, '127.0.0.1', () => c.write('PING\r\n'));
			c.on('data', (d) => { c.destroy(); ok(String(d).startsWith('+PONG')); });
			c.on('error', () => ok(false));
		});
	});
	const nodes = [];
	for (const i of [0, 1]) {
		const port = await freePort();
		const file = join(home, `Caddyfile.${i}`);
		writeFileSync(file, `{
	admin off
	persist_config off
	grace_period 2s
	realtime {
		redis redis://127.0.0.1:${redisPort}
	}
}
http://:${port} {
	realtime {
		api /_realtime
		dashboard /_dashboard
		presence room
		shutdown_spread 0
	}
	respond "cluster node ${i}"
}
`);
		run(bin, ['run', '--config', file, '--adapter', 'caddyfile'], join(dir, `caddy-cluster-${i}.log`), {
			XDG_DATA_HOME: join(home, `data${i}`),
			XDG_CONFIG_HOME: join(home, `config${i}`),
		});
		const base = `http://localhost:${port}`;
		await until(`cluster node ${i} healthy`, async () => (await fetch(`${base}/_realtime/health`)).ok);
		nodes.push(base);
	}
	return nodes;
}

/**
 * A WebSocket client of the demo's gateway, opened from a blank page of its
 * origin in a browser context of its own (the demo's auth hook reads the
 * `user` cookie), subscribed to `topics`.
 */
async function client(user, topics, base = gw.base) {
	const ctx = await browser.newContext();
	await ctx.addCookies([{ name: 'user', value: user, url: base }]);
	const page = await ctx.newPage();
	await page.goto(`${base}/_realtime/health`);
	await page.evaluate(
		({ url, topics }) =>
			new Promise((ok, fail) => {
				const ws = new WebSocket(url);
				window.__ws = ws;
				const want = new Set(topics);
				ws.onopen = () => topics.forEach((t) => ws.send(JSON.stringify({ type: 'subscribe', topic: t, ref: t })));
				ws.onmessage = (e) => {
					const f = JSON.parse(e.data);
					if (f.type === 'subscribed') want.delete(f.topic);
					if (want.size === 0) ok();
				};
				ws.onclose = (e) => fail(new Error(`closed ${e.code} ${e.reason}`));
			}),
		{ url: `${base.replace('http', 'ws')}/ws`, topics },
	);
	return { user, ctx, page };
}

test('dashboard: live connection count, busiest topics and a topic\'s presence', { timeout: 90000 }, async () => {
	const ctx = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
	const page = await ctx.newPage();
	page.setDefaultTimeout(15000);
	const consoleLog = [];
	const errors = [];
	page.on('console', (m) => {
		consoleLog.push(`${m.type()}: ${m.text()}`);
		if (m.type() === 'error') errors.push(`${m.text()} (${m.location().url})`);
	});
	page.on('pageerror', (e) => {
		consoleLog.push(`pageerror: ${e.stack || e}`);
		errors.push(String(e));
	});
	page.on('requestfailed', (r) => consoleLog.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
	const clients = [];
	try {
		await page.goto(`${gw.base}/_dashboard/`);
		await page.locator('#status[data-status="open"]').waitFor();
		const shown = () => page.locator('#connections').textContent();
		await eventually(shown, '0', { what: 'the dashboard showing no connection' });
		// uPlot drew its chart.
		await page.locator('#chart .uplot canvas').waitFor();

		const users = ['ann', 'bo', 'cy'].map((u) => `${u}-${uid()}`);
		for (const u of users) clients.push(await client(u, ['room', 'chat']));
		await eventually(shown, '3', { timeout: 15000, what: 'the dashboard counting 3 connections' });
		await gw.publish('chat', 'created', { id: `e2e-${uid()}`, user: 'dashboard', text: 'hello from the test' });

		// The busiest topics list room; a click shows its presence.
		const row = page.locator('#top-subs tr[data-topic="room"]');
		await row.waitFor();
		await eventually(() => row.locator('td').nth(1).textContent(), '3', { what: 'room with 3 subscribers' });
		await row.click();
		const members = () =>
			page.locator('#presence-members li[data-key]').evaluateAll((lis) => lis.map((li) => li.dataset.key).sort());
		await eventually(members, [...users].sort(), { what: 'room\'s presence list' });
		assert.equal(await page.locator('#topic-name').textContent(), 'room');

		// chat's buffered event.
		const chat = page.locator('#top-subs tr[data-topic="chat"]');
		await chat.waitFor({ timeout: 10000 });
		await chat.click();
		await eventually(() => page.locator('#topic-events tbody tr td:nth-child(3)').allTextContents(),
			(texts) => texts.some((t) => t.includes('hello from the test')), { what: 'chat\'s last events' });

		// Clients leave: the count goes back down.
		await clients.pop().ctx.close();
		await eventually(shown, '2', { timeout: 15000, what: 'the dashboard counting the disconnect' });
		// Back to room for the screenshot.
		await row.click();
		await eventually(members, (m) => m.length === 2, { what: 'room\'s presence after one left' });
		assert.deepEqual(errors, [], 'console errors on the dashboard');
	} finally {
		await page.screenshot({ path: join(dir, 'dashboard.png'), fullPage: true }).catch((e) => consoleLog.push(`screenshot failed: ${e}`));
		writeFileSync(join(dir, 'console.log'), consoleLog.join('\n') + '\n');
		for (const c of clients) await c.ctx.close().catch(() => {});
		await ctx.close();
	}
});

test('dashboard: the cluster view of two instances on Redis', { timeout: 90000 }, async () => {
	const [a, b] = await startCluster();
	const ctx = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
	const page = await ctx.newPage();
	page.setDefaultTimeout(15000);
	const consoleLog = [];
	const errors = [];
	page.on('console', (m) => {
		consoleLog.push(`${m.type()}: ${m.text()}`);
		if (m.type() === 'error') errors.push(`${m.text()} (${m.location().url})`);
	});
	page.on('pageerror', (e) => {
		consoleLog.push(`pageerror: ${e.stack || e}`);
		errors.push(String(e));
	});
	const clients = [];
	try {
		await page.goto(`${a}/_dashboard/`);
		await page.locator('#status[data-status="open"]').waitFor();
		// Two clients on the other instance, one on this one.
		clients.push(await client('u1', ['room'], b), await client('u2', ['room'], b), await client('u3', ['room'], a));
		await eventually(() => page.locator('#scope option').first().textContent(), 'cluster (2 instances)', { timeout: 15000, what: 'the cluster view offered' });
		await eventually(() => page.locator('#connections').textContent(), '3', { timeout: 15000, what: 'the cluster counting 3 connections' });
		await eventually(() => page.locator('#instances tbody tr td:nth-child(2)').allTextContents(), (v) => [...v].sort().join() === '1,2',
			{ what: 'the instances table: 2 on one, 1 on the other' });
		const row = page.locator('#top-subs tr[data-topic="room"]');
		await eventually(() => row.locator('td').nth(1).textContent(), '3', { what: 'room with 3 subscribers across the cluster' });
		await row.click();
		await eventually(() => page.locator('#presence-members li[data-key]').count(), 3, { what: 'room\'s presence across the cluster' });
		// One instance alone.
		const self = await page.locator('#scope option', { hasText: '(this one)' }).getAttribute('value');
		await page.selectOption('#scope', self);
		await eventually(() => page.locator('#connections').textContent(), '1', { what: 'this instance alone' });
		await page.selectOption('#scope', '__cluster');
		assert.deepEqual(errors, [], 'console errors on the dashboard');
	} finally {
		await page.screenshot({ path: join(dir, 'dashboard-cluster.png'), fullPage: true }).catch((e) => consoleLog.push(`screenshot failed: ${e}`));
		writeFileSync(join(dir, 'console-cluster.log'), consoleLog.join('\n') + '\n');
		for (const c of clients) await c.ctx.close().catch(() => {});
		await ctx.close();
	}
});
