// The dashboard (`dashboard /_dashboard` in Caddyfile.example) in headless
// Chromium: it loads without console errors, its connection count follows
// WebSocket clients the test opens, and a click on a topic shows who is
// present. Its screenshot, console and Caddy's log are kept in
// e2e/artifacts/dashboard/ after every run, passed or failed.
//
//   cd e2e && npm install --no-save && node build.mjs
//   CHROMIUM_PATH=/usr/bin/chromium REALTIME_CADDY_BIN=<caddy> node --test dashboard.test.mjs
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { artifacts, caddyBinary, eventually, launchChromium, startGatewayLoggingTo, uid } from './lib.mjs';

const dir = join(artifacts, 'dashboard');

let gw;
let browser;

before(async () => {
	// Only this file's directory: e2e.test.mjs owns the rest of artifacts/.
	rmSync(dir, { recursive: true, force: true });
	mkdirSync(dir, { recursive: true });
	gw = await startGatewayLoggingTo(caddyBinary(), join(dir, 'caddy.log'));
	browser = await launchChromium();
});

after(async () => {
	await browser?.close();
	await gw?.stop();
});

/**
 * A WebSocket client of the demo's gateway, opened from a blank page of its
 * origin in a browser context of its own (the demo's auth hook reads the
 * `user` cookie), subscribed to `topics`.
 */
async function client(user, topics) {
	const ctx = await browser.newContext();
	await ctx.addCookies([{ name: 'user', value: user, url: gw.base }]);
	const page = await ctx.newPage();
	await page.goto(`${gw.base}/_realtime/health`);
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
		{ url: `${gw.base.replace('http', 'ws')}/ws`, topics },
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
