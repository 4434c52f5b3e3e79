// Browser end-to-end tests: headless Chromium drives the demo (Caddyfile.example)
// against a real Caddy, through both client generations:
//   /         the current protocol, hand-written client (demo/realtime.js)
//   /legacy/  the svelte-adapter-uws 0.3.4 client from npm (demo/legacy/app.js, bundled)
//
//   cd e2e && npm install && npm test     # scripts/test.sh runs this as its browser tier
//
// Failed tests leave screenshots, page consoles and WebSocket frames in e2e/artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
	caddyBinary,
	chatTexts,
	closes,
	cursorsShown,
	deliveries,
	eventually,
	launchChromium,
	pointAt,
	presenceUsers,
	repo,
	resetArtifacts,
	startGateway,
	todoItems,
	uid,
	waitOpen,
	withSession,
} from './lib.mjs';

const PAGES = { current: '/', legacy: '/legacy/' };

let gw;
let browser;

before(async () => {
	resetArtifacts();
	if (!existsSync(join(repo, 'demo', 'legacy', 'bundle.js'))) {
		throw new Error('demo/legacy/bundle.js is missing: run `npm run build` in e2e/ first');
	}
	gw = await startGateway(caddyBinary());
	browser = await launchChromium();
});

after(async () => {
	await browser?.close();
	await gw?.stop();
});

const e2e = (name, fn, timeout = 60000) =>
	test(name, { timeout }, () => withSession(browser, gw, name, fn));

for (const [gen, path] of Object.entries(PAGES)) {
	e2e(`${gen} page: subscribes and receives publishes (chat, crud todos from an app server)`, async (s) => {
		const user = `${gen}-${uid()}`;
		const page = await s.open(path, user);

		// The page speaks its generation on the wire (DevTools reports frames asynchronously).
		const last = gen === 'current' ? (f) => f.type === 'subscribe-batch' : (f) => f.topic === '__cursor:canvas';
		await eventually(() => s.sent(page).some(last), true, { what: 'the frames sent on open' });
		const sent = s.sent(page);
		if (gen === 'current') {
			assert.deepEqual(sent.find((f) => f.type === 'hello'), { type: 'hello', caps: ['batch'] });
			const batch = sent.find((f) => f.type === 'subscribe-batch');
			assert.ok(batch && typeof batch.ref === 'number', 'subscribe-batch with a ref');
			assert.deepEqual([...batch.topics].sort(), ['chat', 'room', 'todos']);
			assert.ok(!sent.some((f) => typeof f.topic === 'string' && f.type === 'subscribe' && f.topic.startsWith('__')));
		} else {
			assert.ok(!sent.some((f) => f.type === 'hello' || f.type === 'subscribe-batch'), 'no current-generation frames');
			for (const t of ['chat', 'todos', 'room', '__presence:room', '__cursor:canvas']) {
				assert.ok(
					sent.some((f) => f.type === 'subscribe' && f.topic === t && !('ref' in f)),
					`legacy subscribe to ${t} without ref`,
				);
			}
		}

		// An app server publishes to chat through the HTTP API.
		const text = `hello from the API ${uid()}`;
		const { seq } = await gw.publish('chat', 'created', { id: uid(), user: 'server', text });
		assert.ok(seq >= 1);
		await eventually(async () => (await chatTexts(page)).filter((t) => t === text).length, 1, { what: 'published chat message shown' });
		// Delivered once, with its seq (the page would hide a duplicate: check the frames).
		const got = deliveries(s.received(page), 'chat').filter((d) => d.data?.text === text);
		assert.deepEqual(got.map((d) => d.seq), [seq]);

		// A batch publish: one `batch` frame for the current page, plain envelopes for 0.3.4.
		const pair = [`batch one ${uid()}`, `batch two ${uid()}`];
		await gw.api('POST', '/publish', pair.map((t) => ({ topic: 'chat', event: 'created', data: { id: t, user: 'server', text: t } })));
		await eventually(async () => (await chatTexts(page)).slice(-2), pair, { what: 'batch-published messages in order' });
		const batches = s.received(page).filter((f) => f.type === 'batch');
		if (gen === 'current') assert.deepEqual(batches.at(-1).events.map((e) => e.data.text), pair);
		else assert.equal(batches.length, 0, 'no batch frame to a legacy client');

		// The page's own form publishes too (as a loopback API caller).
		const mine = `typed in the ${gen} page ${uid()}`;
		await page.fill('#chat-text', mine);
		await page.press('#chat-text', 'Enter');
		await eventually(async () => (await chatTexts(page)).slice(-3), [...pair, mine], { what: 'typed message after the published ones' });

		// Todos: created / updated / deleted from demo/todo.sh, the demo's "app server".
		const todo = (...args) =>
			execFileSync('bash', [join(repo, 'demo', 'todo.sh'), ...args], {
				env: { ...process.env, REALTIME_URL: `${gw.base}/_realtime`, REALTIME_API_KEY: '' },
			})
				.toString()
				.trim();
		const title = `Water the plants ${uid()}`;
		const id = todo('add', title);
		const mineOnly = async () => (await todoItems(page)).filter((t) => t.id === id);
		await eventually(mineOnly, [{ id, title, done: false }], { what: 'created todo' });
		todo('done', id, title);
		await eventually(mineOnly, [{ id, title, done: true }], { what: 'updated todo' });
		todo('rm', id);
		await eventually(mineOnly, [], { what: 'deleted todo' });
	});
}

e2e('presence across pages: one user once across two tabs, leave with the last tab, both generations agree', async (s) => {
	const tag = uid();
	const [ann, bob, cat] = ['ann', 'bob', 'cat'].map((n) => `${n}-${tag}`);
	const annCtx = await s.context(); // one browser: one cookie, one user
	const ann1 = await s.open(PAGES.current, ann, annCtx);
	const ann2 = await s.open(PAGES.legacy, ann, annCtx);
	const bob1 = await s.open(PAGES.legacy, bob);
	const mine = async (page) => (await presenceUsers(page)).filter((u) => u.endsWith(tag));

	for (const page of [ann1, ann2, bob1]) {
		await eventually(() => mine(page), [ann, bob], { what: 'ann once and bob' });
	}
	// The current page names itself "(you)".
	assert.equal(await ann1.locator(`#presence li[data-user="${ann}"]`).textContent(), `${ann} (you)`);

	// Record every list bob's page shows from now on: ann must never leave it.
	await bob1.evaluate(() => {
		window.__lists = [];
		const ul = document.getElementById('presence');
		new MutationObserver(() => window.__lists.push([...ul.children].map((li) => li.dataset.user))).observe(ul, { childList: true });
	});
	await ann1.close();
	const cat1 = await s.open(PAGES.current, cat);
	for (const page of [ann2, bob1, cat1]) {
		await eventually(() => mine(page), [ann, bob, cat], { what: 'ann still there with one tab, cat joined' });
	}
	const lists = await bob1.evaluate(() => window.__lists);
	assert.ok(lists.length > 0, 'bob saw the list change');
	for (const l of lists) assert.ok(l.includes(ann), `ann left early: bob saw ${JSON.stringify(l)}`);

	// The last tab closes: ann leaves, for pages of both generations.
	await ann2.close();
	for (const page of [bob1, cat1]) {
		await eventually(() => mine(page), [bob, cat], { what: 'ann left with the last tab' });
	}
	const api = await gw.api('GET', '/presence?topic=room');
	assert.deepEqual(api.members.map((m) => m.key).filter((k) => k.endsWith(tag)).sort(), [bob, cat]);
});

for (const [gen, path] of Object.entries(PAGES)) {
	e2e(`${gen} page: chat history and todos are replayed after a reload`, async (s) => {
		const page = await s.open(path, `${gen}-${uid()}`);
		const tag = uid();
		const texts = [`one ${tag}`, `two ${tag}`, `three ${tag}`];
		await gw.publish('chat', 'created', { id: `a-${tag}`, user: 'server', text: texts[0] });
		await page.fill('#chat-text', texts[1]);
		await page.press('#chat-text', 'Enter');
		await eventually(async () => (await chatTexts(page)).filter((t) => t.endsWith(tag)), texts.slice(0, 2));
		await gw.publish('chat', 'created', { id: `c-${tag}`, user: 'server', text: texts[2] });
		const title = `todo ${tag}`;
		await gw.publish('todos', 'created', { id: `t-${tag}`, title, done: false });
		await gw.publish('todos', 'updated', { id: `t-${tag}`, title, done: true });
		await gw.publish('todos', 'created', { id: `gone-${tag}`, title: 'deleted later', done: false });
		await gw.publish('todos', 'deleted', { id: `gone-${tag}` });
		const mineChat = async () => (await chatTexts(page)).filter((t) => t.endsWith(tag));
		const mineTodos = async () => (await todoItems(page)).filter((t) => t.id.endsWith(tag));
		const todosAfter = [{ id: `t-${tag}`, title, done: true }];
		await eventually(mineChat, texts, { what: 'live chat before the reload' });
		await eventually(mineTodos, todosAfter, { what: 'live todos before the reload' });

		await page.reload();
		await waitOpen(page);
		// History comes back in order, once each; the todo list is rebuilt from its events.
		await eventually(mineChat, texts, { what: 'chat history after the reload' });
		await eventually(mineTodos, todosAfter, { what: 'todos after the reload' });
		// Live events continue after the replay.
		const live = `four ${tag}`;
		await gw.publish('chat', 'created', { id: `d-${tag}`, user: 'server', text: live });
		await eventually(mineChat, [...texts, live], { what: 'live message after the replayed history' });
		// On the new socket each message came exactly once (the page would hide a
		// duplicate): the history from the replay, the new one live, seqs increasing.
		const got = deliveries(s.received(page, -1), 'chat').filter((d) => String(d.data?.text).endsWith(tag));
		assert.deepEqual(
			got.map((d) => [d.data.text, d.via]),
			[...texts.map((t) => [t, 'replay']), [live, 'live']],
		);
		assert.ok(got.every((d, i) => i === 0 || d.seq > got[i - 1].seq), `seqs increase: ${got.map((d) => d.seq)}`);

		// The replay went over the wire the generation's way.
		const replays = s.sent(page).filter((f) => f.type === 'replay');
		if (gen === 'current') assert.ok(replays.some((f) => f.topic === 'chat' && f.since === 0 && typeof f.reqId === 'number'));
		else assert.ok(replays.some((f) => f.topic === 'chat' && f.since === 0 && !('reqId' in f)));
	});
}

e2e('cursors between two pages of both generations', async (s) => {
	const tag = uid();
	const [ann, bob] = [`ann-${tag}`, `bob-${tag}`];
	const a = await s.open(PAGES.current, ann);
	const b = await s.open(PAGES.legacy, bob);
	const near = (want) => (got) =>
		got.length === want.length &&
		got.every((c, i) => c.user === want[i].user && Math.abs(c.x - want[i].x) < 1.5 && Math.abs(c.y - want[i].y) < 1.5);

	await pointAt(a, 0.25, 0.5);
	await eventually(() => cursorsShown(b), near([{ user: ann, x: 25, y: 50 }]), { what: "ann's cursor on bob's page" });
	await pointAt(a, 0.75, 0.2);
	await eventually(() => cursorsShown(b), near([{ user: ann, x: 75, y: 20 }]), { what: "ann's cursor moved on bob's page" });

	await pointAt(b, 0.1, 0.9);
	await eventually(() => cursorsShown(a), near([{ user: bob, x: 10, y: 90 }]), { what: "bob's cursor on ann's page" });
	// Neither page draws its own pointer.
	await eventually(() => cursorsShown(b), near([{ user: ann, x: 75, y: 20 }]), { what: "bob's page shows only ann" });

	// Pages that open later get the current positions at once: `snapshot`
	// (current) and `bulk` (legacy).
	const c = await s.open(PAGES.current, `cat-${tag}`);
	const d = await s.open(PAGES.legacy, `dan-${tag}`);
	for (const page of [c, d]) {
		await eventually(() => cursorsShown(page), near([{ user: ann, x: 75, y: 20 }, { user: bob, x: 10, y: 90 }]), {
			what: 'positions for a late page',
		});
	}

	// Closing ann's page removes her cursor everywhere.
	await a.close();
	await eventually(() => cursorsShown(b), [], { what: "ann's cursor removed on bob's page" });
	for (const page of [c, d]) {
		await eventually(() => cursorsShown(page), near([{ user: bob, x: 10, y: 90 }]), { what: "ann's cursor removed on a late page" });
	}
});

e2e(
	'both generations reconnect after the gateway restarts and receive publishes again',
	async (s) => {
		const tag = uid();
		const [ann, bob] = [`ann-${tag}`, `bob-${tag}`];
		const cur = await s.open(PAGES.current, ann);
		const leg = await s.open(PAGES.legacy, bob);
		const mine = async (page) => (await presenceUsers(page)).filter((u) => u.endsWith(tag));
		for (const page of [cur, leg]) await eventually(() => mine(page), [ann, bob]);
		const before = `before the restart ${tag}`;
		await gw.publish('chat', 'created', { id: `b-${tag}`, user: 'server', text: before });
		for (const page of [cur, leg]) await eventually(async () => (await chatTexts(page)).includes(before), true);

		await gw.stop();
		await eventually(() => cur.locator('#status').getAttribute('data-status'), 'disconnected');
		await eventually(() => leg.locator('#status').getAttribute('data-status'), 'closed');
		// A graceful stop closes with 1001 (docs/protocol.md §2.7).
		for (const page of [cur, leg]) assert.deepEqual(await closes(page), [{ code: 1001, reason: 'Server shutting down' }]);

		await gw.start(); // same port
		// Backoff: first retry after 2.25-3.75 s (current) / 3-4 s (legacy).
		await waitOpen(cur, 20000);
		await waitOpen(leg, 20000);
		// Subscriptions and presence are back on the new gateway.
		for (const page of [cur, leg]) await eventually(() => mine(page), [ann, bob], { what: 'presence after the restart' });
		const text = `after the restart ${tag}`;
		await gw.publish('chat', 'created', { id: `r-${tag}`, user: 'server', text });
		for (const page of [cur, leg]) {
			await eventually(async () => (await chatTexts(page)).filter((t) => t === text), [text], { what: 'publish after the restart' });
		}
		// Each socket attempt of the current page followed its own auth
		// preflight, answered by the gateway from the auth hook.
		assert.deepEqual(
			s.preflights(cur).map((p) => p.status),
			[204, 204],
			'one 204 preflight per socket attempt',
		);
		// The current page resumed with its last seen seqs.
		const resumes = s.sent(cur).filter((f) => f.type === 'resume');
		assert.equal(resumes.length, 1, 'one resume, on the reconnect');
		assert.equal(typeof resumes[0].lastSeenSeqs.chat, 'number');
	},
	90000,
);

e2e('both generations negotiate permessage-deflate and read compressed events unchanged', async (s) => {
	const tag = uid();
	const pages = {};
	for (const [gen, path] of Object.entries(PAGES)) pages[gen] = await s.open(path, `${gen}-z-${tag}`);
	for (const [gen, page] of Object.entries(pages)) {
		const h = s.handshakes(page)[0] || {};
		const ext = Object.entries(h).find(([k]) => k.toLowerCase() === 'sec-websocket-extensions')?.[1];
		assert.equal(ext, 'permessage-deflate; client_no_context_takeover; server_no_context_takeover', `${gen}: the upgrade's extensions`);
	}
	// A chat message well over min_size goes out compressed; both pages show it whole.
	const text = `${'a long message that compresses well '.repeat(60)}${tag}`;
	await gw.publish('chat', 'created', { id: `z-${tag}`, user: 'server', text });
	for (const page of Object.values(pages)) {
		await eventually(async () => (await chatTexts(page)).includes(text), true, { what: 'the compressed chat message' });
	}
});

e2e('current client: the auth preflight opens the socket, its 401 ends the attempts', async (s) => {
	const user = `pre-${uid()}`;
	const page = await s.open(PAGES.current, user);
	// The page connected only after the gateway's own 204 to its preflight.
	assert.deepEqual(s.preflights(page), [{ method: 'POST', xrw: 'svelte-adapter-uws', status: 204 }]);
	assert.equal(s.received(page, 0)[0]?.type, 'welcome');

	// Without its cookie the same client is refused at the preflight: no
	// socket is opened and it stops (a 4xx is final, §2.2).
	const sockets = s.sockets(page);
	const status = await page.evaluate(async () => {
		await cookieStore.delete('user');
		const { connect } = await import('/realtime.js');
		const rt = connect({ auth: true });
		return new Promise((ok) => rt.onStatus((st) => st === 'failed' && ok(st)));
	});
	assert.equal(status, 'failed');
	assert.deepEqual(s.preflights(page).at(-1), { method: 'POST', xrw: 'svelte-adapter-uws', status: 401 });
	await new Promise((r) => setTimeout(r, 1500));
	assert.equal(s.preflights(page).length, 2, 'no preflight after the 401');
	assert.equal(s.sockets(page), sockets, 'no socket attempt after the 401');
});
