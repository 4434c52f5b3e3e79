// A small hand-written client of the current protocol generation, as the
// svelte-adapter-uws 0.5 client speaks it (docs/protocol.md §2.4–§2.6, §5, §6):
//
//   with `auth`: the auth preflight (POST /__ws/auth) before every attempt;
//   on open: cursor-snapshot per cursor topic (tab visible), hello with the
//   batch cap, resume with the previous welcome id and last seen seqs, one
//   subscribe-batch with every topic held; then queued frames.
//
// It tracks seq per topic, applies batch frames element by element, keeps
// presence (presence_state / presence_diff) and cursor (snapshot / update /
// bulk / remove) maps, runs replay requests with reqId, answers server
// requests, and reconnects with the 0.5 backoff. `__` topics are local taps:
// they are never subscribed on the wire.
//
// Not a library: the demo's page (app.js) and the browser tests use it.

const TERMINAL = new Set([1008, 4401, 4403]);

export function connect({ path = '/ws', auth = false } = {}) {
	const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`;
	// `auth: true` (or a path) asks the auth preflight (§2.2) before every
	// socket attempt, as the 0.5 client does.
	const authPath = auth === true ? '/__ws/auth' : auth || '';
	const sessionKey = `svelte-adapter-uws.session.${path}`;

	/** topic -> Set of listeners; non-`__` topics are held on the wire */
	const listeners = new Map();
	/** topic -> last seen seq (the latest, so a restarted counter is followed) */
	const seqs = new Map();
	const cursorTopics = new Set();
	const statusFns = new Set();
	const sessionFns = new Set();
	const queue = []; // frames waiting for an open socket
	const unfinished = new Map(); // reqId -> replay frame still waiting for its end
	let requestHandler = null;

	let ws = null;
	let status = 'connecting';
	let sessionId = '';
	let attempt = 0;
	let retryTimer = null;
	let terminal = false;
	let preflighting = false;
	let lastMessage = Date.now();
	let ref = 0;
	let reqId = 0;
	let pendingSubs = new Set(); // topics mounted while open, flushed at the end of the tick

	const held = () => [...listeners.keys()].filter((t) => !t.startsWith('__'));
	const isOpen = () => ws && ws.readyState === WebSocket.OPEN;
	const visible = () => typeof document === 'undefined' || document.visibilityState !== 'hidden';

	function setStatus(s) {
		status = s;
		for (const fn of statusFns) fn(s);
	}

	function send(frame) {
		if (isOpen()) ws.send(JSON.stringify(frame));
	}

	function sendQueued(frame) {
		if (isOpen()) ws.send(JSON.stringify(frame));
		else queue.push(frame);
	}

	function subscribeFrames(topics) {
		// At most 200 topics and ~8000 bytes per subscribe-batch (§7.3).
		let batch = [];
		let size = 50;
		const flush = () => {
			if (batch.length) send({ type: 'subscribe-batch', topics: batch, ref: ++ref });
			batch = [];
			size = 50;
		};
		for (const t of topics) {
			const n = JSON.stringify(t).length + 1;
			if (batch.length === 200 || size + n > 8000) flush();
			batch.push(t);
			size += n;
		}
		flush();
	}

	function retry() {
		setStatus('disconnected');
		const delay = Math.min(3000 * 2.2 ** attempt, 300000) * (0.75 + Math.random() / 2);
		attempt++;
		retryTimer = setTimeout(open, delay);
	}

	function open() {
		if (terminal || preflighting || (ws && ws.readyState <= WebSocket.OPEN)) return;
		clearTimeout(retryTimer);
		retryTimer = null;
		setStatus('connecting');
		if (!authPath) return openSocket();
		// 2xx: open the socket; 4xx: final until the page reloads; 5xx or a
		// network error: the normal backoff.
		preflighting = true;
		fetch(authPath, { method: 'POST', credentials: 'include', headers: { 'x-requested-with': 'svelte-adapter-uws' } })
			.then((res) => {
				preflighting = false;
				if (res.ok) return openSocket();
				if (res.status >= 400 && res.status < 500) {
					terminal = true;
					setStatus('failed');
					return;
				}
				retry();
			})
			.catch(() => {
				preflighting = false;
				retry();
			});
	}

	function openSocket() {
		const sock = new WebSocket(url);
		ws = sock;
		sock.onopen = () => {
			attempt = 0;
			lastMessage = Date.now();
			setStatus('open');
			if (visible()) for (const t of cursorTopics) send({ type: 'cursor-snapshot', topic: t });
			send({ type: 'hello', caps: ['batch'] });
			const previous = sessionStorage.getItem(sessionKey);
			if (previous && seqs.size > 0) {
				send({ type: 'resume', sessionId: previous, lastSeenSeqs: Object.fromEntries(seqs) });
			}
			pendingSubs.clear();
			subscribeFrames(held());
			// A replay whose `end` never came (the socket closed) is asked again.
			for (const frame of unfinished.values()) send(frame);
			while (queue.length && isOpen()) ws.send(JSON.stringify(queue.shift()));
		};
		sock.onmessage = (e) => {
			if (sock !== ws) return;
			lastMessage = Date.now();
			let f;
			try {
				f = JSON.parse(e.data);
			} catch {
				return;
			}
			if (!f || typeof f !== 'object') return;
			if (f.topic && f.event !== undefined) return deliver(f);
			switch (f.type) {
				case 'batch':
					if (Array.isArray(f.events)) for (const ev of f.events) if (ev && ev.topic) deliver(ev);
					break;
				case 'welcome':
					sessionId = f.sessionId;
					sessionStorage.setItem(sessionKey, f.sessionId);
					for (const fn of sessionFns) fn(sessionId);
					break;
				case 'subscribe-denied':
					console.warn(`[realtime] subscribe ${f.topic} denied: ${f.reason}`);
					break;
				case 'request':
					answer(f);
					break;
				// subscribed, resumed, heartbeat and unknown types: nothing to do.
			}
		};
		sock.onclose = (e) => {
			if (sock !== ws) return;
			ws = null;
			if (TERMINAL.has(e.code)) {
				terminal = true;
				setStatus('failed');
				return;
			}
			if (e.code === 4429) attempt = Math.max(attempt, 5);
			retry();
		};
	}

	function deliver(env) {
		if (typeof env.seq === 'number') seqs.set(env.topic, env.seq);
		const fns = listeners.get(env.topic);
		if (fns) for (const fn of [...fns]) fn(env);
	}

	async function answer(f) {
		let frame;
		try {
			if (!requestHandler) throw new Error('no request handler');
			frame = { type: 'reply', ref: f.ref, data: (await requestHandler(f.event, f.data)) ?? null };
		} catch (err) {
			frame = { type: 'reply', ref: f.ref, error: String(err && err.message ? err.message : err) };
		}
		send(frame);
	}

	/** Listen to a topic; a non-`__` topic is subscribed while it has listeners. */
	function on(topic, fn) {
		let fns = listeners.get(topic);
		if (!fns) {
			fns = new Set();
			listeners.set(topic, fns);
			if (!topic.startsWith('__') && isOpen()) {
				// Topics mounted in the same tick go as one frame.
				if (pendingSubs.size === 0) {
					queueMicrotask(() => {
						const ts = [...pendingSubs].filter((t) => listeners.has(t));
						pendingSubs.clear();
						if (ts.length === 1) send({ type: 'subscribe', topic: ts[0], ref: ++ref });
						else if (ts.length > 1) subscribeFrames(ts);
					});
				}
				pendingSubs.add(topic);
			}
		}
		fns.add(fn);
		return () => {
			fns.delete(fn);
			if (fns.size === 0 && listeners.get(topic) === fns) {
				listeners.delete(topic);
				pendingSubs.delete(topic);
				if (!topic.startsWith('__')) send({ type: 'unsubscribe', topic });
			}
		};
	}

	/**
	 * Events of `topic` after `since` from the gateway's replay buffer, then
	 * live ones: live events are held back until the replay's `end` (§5.4).
	 */
	function replay(topic, since, fn) {
		const id = ++reqId;
		let done = false;
		const offLive = on(topic, (e) => done && fn(e));
		const offReplay = on(`__replay:${topic}`, (e) => {
			const d = e.data;
			if (e.event === 'msg' && d && d.reqId === id) {
				if (typeof d.seq === 'number') {
					seqs.set(topic, d.seq);
					frame.since = d.seq; // a repeated request continues from here
				}
				fn({ topic, event: d.event, data: d.data, seq: d.seq });
			} else if (e.event === 'end' && (d == null || d.reqId === undefined || d.reqId === id)) {
				done = true;
				unfinished.delete(id);
				offReplay();
				if (d && d.truncated) fn({ topic, event: 'truncated', data: null });
			}
		});
		const frame = { type: 'replay', topic, since, reqId: id };
		unfinished.set(id, frame);
		// After the subscribe that on() queued for this tick, so nothing
		// published between the replay and the subscribe is lost.
		if (isOpen()) queueMicrotask(() => unfinished.has(id) && send(frame));
		return () => {
			unfinished.delete(id);
			offLive();
			offReplay();
		};
	}

	/** Join `topic`'s presence; fn gets a Map key -> member data on every change. */
	function presence(topic, fn) {
		let members = new Map();
		const offJoin = on(topic, () => {});
		const offTap = on(`__presence:${topic}`, (e) => {
			if (e.event === 'presence_state' && e.data && typeof e.data === 'object') {
				members = new Map(Object.entries(e.data));
			} else if (e.event === 'presence_diff' && e.data) {
				for (const k of Object.keys(e.data.leaves || {})) members.delete(k);
				for (const [k, v] of Object.entries(e.data.joins || {})) members.set(k, v);
			} else return;
			fn(new Map(members));
		});
		return () => {
			offJoin();
			offTap();
		};
	}

	/** Follow `topic`'s cursors; fn gets a Map key -> {user, data}. */
	function cursors(topic, fn) {
		let entries = new Map();
		cursorTopics.add(topic);
		if (isOpen() && visible()) send({ type: 'cursor-snapshot', topic });
		const off = on(`__cursor:${topic}`, (e) => {
			const d = e.data;
			if (e.event === 'snapshot' && Array.isArray(d)) {
				entries = new Map(d.map((x) => [x.key, { user: x.user, data: x.data }]));
			} else if (e.event === 'update' && d) {
				entries.set(d.key, { user: d.user, data: d.data });
			} else if (e.event === 'bulk' && Array.isArray(d)) {
				for (const x of d) entries.set(x.key, { user: x.user, data: x.data });
			} else if (e.event === 'remove' && d) {
				entries.delete(d.key);
			} else return;
			fn(new Map(entries));
		});
		return () => {
			cursorTopics.delete(topic);
			off();
		};
	}

	function moveCursor(topic, data) {
		send({ type: 'cursor', topic, data });
	}

	if (typeof document !== 'undefined') {
		document.addEventListener('visibilitychange', () => {
			if (!visible() || terminal) return;
			if (isOpen()) for (const t of cursorTopics) send({ type: 'cursor-snapshot', topic: t });
			else if (!ws) {
				attempt = 0;
				open();
			}
		});
	}
	// A visible client that heard nothing for 150 s reconnects (§2.5).
	setInterval(() => {
		if (isOpen() && Date.now() - lastMessage > 150000) ws.close();
	}, 30000);

	open();

	return {
		on,
		replay,
		presence,
		cursors,
		moveCursor,
		send: sendQueued,
		onRequest(fn) {
			requestHandler = fn;
		},
		onStatus(fn) {
			statusFns.add(fn);
			fn(status);
			return () => statusFns.delete(fn);
		},
		onSession(fn) {
			sessionFns.add(fn);
			if (sessionId) fn(sessionId);
			return () => sessionFns.delete(fn);
		},
		get sessionId() {
			return sessionId;
		},
	};
}
