// The demo's UI, shared by both pages: the current-protocol page (app.js on
// realtime.js) and the legacy page (legacy/app.js on svelte-adapter-uws 0.3.4).
// Only the client differs; the DOM, the reducers and the publishing are the
// same, so the browser tests drive both pages with the same selectors.

const NAME = /^[A-Za-z0-9._~-]{1,32}$/;

/**
 * Who this browser is: `?user=<name>`, else the name this browser used
 * before, else a new guest name. It goes into the `user` cookie, which the
 * gateway's auth hook (the /_demo/auth route of Caddyfile.example) turns into
 * the identity {"id": "<name>"}: tabs of one browser are one user.
 */
export async function identity() {
	const asked = new URLSearchParams(location.search).get('user');
	let name = asked && NAME.test(asked) ? asked : localStorage.getItem('demo.user');
	if (!name || !NAME.test(name)) name = `guest-${Math.random().toString(36).slice(2, 6)}`;
	localStorage.setItem('demo.user', name);
	// Chromium stores document.cookie writes asynchronously: a WebSocket opened
	// right after one may go out without the cookie (the browser tests saw it:
	// a 401 from the auth hook, then a retry seconds later). The Cookie Store
	// API resolves once the cookie is stored, so the upgrade carries it.
	if (globalThis.cookieStore) {
		try {
			await cookieStore.set({ name: 'user', value: name, path: '/', sameSite: 'lax' });
			return name;
		} catch {}
	}
	document.cookie = `user=${name}; path=/; SameSite=Lax`;
	return name;
}

/**
 * Publish through the gateway's HTTP API. In a real app your server does
 * this; the demo page may, because the API serves loopback callers when no
 * key is set and the demo is opened on localhost.
 */
export async function publish(topic, event, data) {
	const res = await fetch('/_realtime/publish', {
		method: 'POST',
		headers: { 'Content-Type': 'application/json' },
		body: JSON.stringify({ topic, event, data }),
	});
	if (!res.ok) {
		const body = await res.json().catch(() => ({}));
		throw new Error(`publish ${topic} ${event}: ${res.status} ${body.error || ''}`.trim());
	}
	return res.json();
}

export function newId() {
	return globalThis.crypto && crypto.randomUUID
		? crypto.randomUUID()
		: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

/** created / updated / deleted on a list keyed by `id`, as the 0.3.4 `crud()` store does. */
export function applyCrud(list, { event, data }) {
	if (!data || typeof data !== 'object') return list;
	if (event === 'created') {
		return list.some((x) => x.id === data.id) ? list.map((x) => (x.id === data.id ? data : x)) : [...list, data];
	}
	if (event === 'updated') return list.map((x) => (x.id === data.id ? data : x));
	if (event === 'deleted') return list.filter((x) => x.id !== data.id);
	return list;
}

/** Chat: `created` messages in arrival order, once each, the last 200. */
export function applyChat(list, { event, data }) {
	if (event !== 'created' || !data || typeof data !== 'object' || list.some((m) => m.id === data.id)) return list;
	const next = [...list, data];
	return next.length > 200 ? next.slice(next.length - 200) : next;
}

const SKELETON = `
<p class="bar">
	<span>you: <b id="me"></b></span>
	<span>status: <b id="status" data-status="connecting">connecting</b></span>
	<span>session: <code id="session">–</code></span>
</p>
<p id="error" class="error" hidden></p>
<div class="grid">
	<section class="chat">
		<h2>Chat <small>topic <code>chat</code>, replayed on load</small></h2>
		<ul id="chat-log"></ul>
		<form id="chat-form"><input id="chat-text" placeholder="Say something" autocomplete="off"><button>Send</button></form>
	</section>
	<section class="presence">
		<h2>Here now <small>(<span id="presence-count">0</span>)</small></h2>
		<ul id="presence"></ul>
		<p class="hint">Open a second tab: still one of you. Another browser (or <code>?user=bob</code> in a private window) is someone else.</p>
	</section>
	<section class="canvas-box">
		<h2>Cursors <small>topic <code>canvas</code></small></h2>
		<div id="canvas"></div>
	</section>
	<section class="todos">
		<h2>Todos <small><span id="todo-count">0 open</span> · created / updated / deleted on <code>todos</code></small></h2>
		<ul id="todos"></ul>
		<form id="todo-form"><input id="todo-title" placeholder="New todo" autocomplete="off"><button>Add</button></form>
		<p class="hint">Or from an app server: <code>./demo/todo.sh add "Water the plants"</code></p>
	</section>
</div>
`;

function el(tag, attrs = {}, ...children) {
	const e = document.createElement(tag);
	for (const [k, v] of Object.entries(attrs)) {
		if (k === 'class') e.className = v;
		else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
		else e.setAttribute(k, v);
	}
	e.append(...children);
	return e;
}

/** A render that runs at most once per frame, with the latest value. */
function perFrame(render) {
	let latest;
	let queued = false;
	return (value) => {
		latest = value;
		if (queued) return;
		queued = true;
		requestAnimationFrame(() => {
			queued = false;
			render(latest);
		});
	};
}

function hue(s) {
	let h = 0;
	for (const c of String(s)) h = (h * 31 + c.charCodeAt(0)) % 360;
	return h;
}

/**
 * Wire the page's DOM. Returns the render functions the page's client
 * calls, and calls `onCursor(data | null)` when the pointer moves over (or
 * leaves) the canvas.
 */
export function mountUI({ me, onCursor, root = document.getElementById('app') }) {
	root.innerHTML = SKELETON;
	const $ = (id) => document.getElementById(id);
	const status = $('status');
	$('me').textContent = me;
	$('me').style.color = `hsl(${hue(me)} 70% 35%)`;

	let todos = [];

	$('chat-form').addEventListener('submit', async (e) => {
		e.preventDefault();
		const input = $('chat-text');
		const text = input.value.trim();
		if (!text) return;
		input.value = '';
		try {
			await publish('chat', 'created', { id: newId(), user: me, text, at: Date.now() });
		} catch (err) {
			showError(err);
		}
	});

	$('todo-form').addEventListener('submit', async (e) => {
		e.preventDefault();
		const input = $('todo-title');
		const title = input.value.trim();
		if (!title) return;
		input.value = '';
		try {
			await publish('todos', 'created', { id: newId(), title, done: false });
		} catch (err) {
			showError(err);
		}
	});

	function showError(err) {
		const box = $('error');
		box.textContent = String(err.message || err);
		box.hidden = false;
	}

	// Pointer positions as fractions of the canvas, at most one per frame.
	const canvas = $('canvas');
	let pending;
	let scheduled = false;
	const flush = () => {
		scheduled = false;
		onCursor(pending);
	};
	const queue = (data) => {
		pending = data;
		if (!scheduled) {
			scheduled = true;
			requestAnimationFrame(flush);
		}
	};
	canvas.addEventListener('pointermove', (e) => {
		const r = canvas.getBoundingClientRect();
		const x = Math.min(1, Math.max(0, (e.clientX - r.left) / r.width));
		const y = Math.min(1, Math.max(0, (e.clientY - r.top) / r.height));
		queue({ x: Math.round(x * 1000) / 1000, y: Math.round(y * 1000) / 1000 });
	});
	canvas.addEventListener('pointerleave', () => queue(null));

	return {
		status(s) {
			status.textContent = s;
			status.dataset.status = s;
		},
		session(id) {
			$('session').textContent = id || '–';
		},
		// A replay of hundreds of events renders once, not once per event.
		chat: perFrame((list) => {
			const log = $('chat-log');
			log.replaceChildren(
				...list.map((m) =>
					el(
						'li',
						{ 'data-id': String(m.id) },
						el('span', { class: 'who', style: `color: hsl(${hue(m.user)} 70% 35%)` }, String(m.user ?? '?')),
						el('span', { class: 'text' }, String(m.text ?? JSON.stringify(m))),
					),
				),
			);
			log.scrollTop = log.scrollHeight;
		}),
		/** members: [{key, data}] */
		presence: perFrame((members) => {
			$('presence-count').textContent = String(members.length);
			$('presence').replaceChildren(
				...members.map(({ key, data }) => {
					const name = String((data && data.id) ?? key);
					return el(
						'li',
						{ 'data-key': key, 'data-user': name, style: `--c: hsl(${hue(name)} 70% 45%)` },
						name + (name === me ? ' (you)' : ''),
					);
				}),
			);
		}),
		/** entries: [{key, user, data}]; an entry without data is hidden */
		cursors: perFrame((entries) => {
			canvas.querySelectorAll('.cursor').forEach((c) => c.remove());
			for (const { key, user, data } of entries) {
				if (!data || typeof data.x !== 'number' || typeof data.y !== 'number') continue;
				const name = String((user && user.id) ?? key);
				canvas.append(
					el(
						'div',
						{
							class: 'cursor',
							'data-key': key,
							'data-user': name,
							style: `left: ${data.x * 100}%; top: ${data.y * 100}%; --c: hsl(${hue(name)} 70% 45%)`,
						},
						el('span', {}, name),
					),
				);
			}
		}),
		todos: perFrame((list) => {
			todos = list;
			$('todos').replaceChildren(
				...list.map((t) => {
					const box = el('input', {
						type: 'checkbox',
						class: 'done',
						onchange: () => publish('todos', 'updated', { ...t, done: box.checked }).catch(showError),
					});
					box.checked = !!t.done;
					return el(
						'li',
						{ 'data-id': String(t.id), class: t.done ? 'is-done' : '' },
						box,
						el('span', { class: 'title' }, String(t.title ?? '')),
						el('button', { class: 'rm', title: 'delete', onclick: () => publish('todos', 'deleted', { id: t.id }).catch(showError) }, '×'),
					);
				}),
			);
			$('todo-count').textContent = `${todos.filter((t) => !t.done).length} open`;
		}),
	};
}
