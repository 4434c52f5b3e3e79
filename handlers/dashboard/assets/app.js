// The caddy-realtime dashboard. It reads one DashboardView per sample from
// the event stream at ./events (handlers/dashboard_stats.go): this
// instance's snapshot and, in a cluster, every instance's. Snapshots hold
// totals; rates are the difference of two samples of one instance over
// their time apart. Nothing here writes to the gateway.
'use strict';

const WINDOW_S = 600; // what the chart and the timeline cover
const CLUSTER = '__cluster';

const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const num = (v) => (v === undefined || v === null || Number.isNaN(v) ? '–' : fmt.format(v));

const state = {
	scope: null, // instance id, or CLUSTER
	scopeChosen: false, // picked in the menu, rather than the default
	prev: new Map(), // instance → previous snapshot
	rates: new Map(), // instance → rates of its last two snapshots
	series: new Map(), // scope → {x, conns, ups, downs}
	latest: [], // the last view's snapshots
	self: null,
	topic: null,
};

function delta(now, before) {
	// A counter that went down belongs to a gateway that restarted.
	return now >= before ? now - before : now;
}

function sumMap(m) {
	return Object.values(m || {}).reduce((a, b) => a + b, 0);
}

// ratesOf returns what changed per second between two snapshots of one instance.
function ratesOf(cur, prev) {
	const r = { connects: 0, disconnects: 0, published: 0, slow: 0, dropped: {}, closes: {}, hooks: {} };
	if (!prev) return r;
	const dt = (cur.at - prev.at) / 1000;
	if (dt <= 0) return r;
	r.connects = delta(cur.connects_total, prev.connects_total) / dt;
	r.disconnects = delta(cur.disconnects_total, prev.disconnects_total) / dt;
	r.published = delta(sumMap(cur.published_total), sumMap(prev.published_total)) / dt;
	r.slow = delta(cur.slow_consumer_closes_total, prev.slow_consumer_closes_total) / dt;
	for (const [k, v] of Object.entries(cur.dropped_total || {})) r.dropped[k] = delta(v, (prev.dropped_total || {})[k] || 0) / dt;
	for (const [k, v] of Object.entries(cur.closes_total || {})) r.closes[k] = delta(v, (prev.closes_total || {})[k] || 0) / dt;
	for (const [k, h] of Object.entries(cur.hooks || {})) {
		const p = (prev.hooks || {})[k] || { calls_total: 0, seconds_total: 0 };
		const calls = delta(h.calls_total, p.calls_total);
		const secs = h.seconds_total >= p.seconds_total ? h.seconds_total - p.seconds_total : h.seconds_total;
		r.hooks[k] = { perSecond: calls / dt, avg: calls > 0 ? secs / calls : null };
	}
	return r;
}

function push(scope, at, conns, ups, downs) {
	let s = state.series.get(scope);
	if (!s) state.series.set(scope, (s = { x: [], conns: [], ups: [], downs: [] }));
	s.x.push(at / 1000);
	s.conns.push(conns);
	s.ups.push(ups);
	s.downs.push(downs);
	while (s.x.length && s.x[0] < at / 1000 - WINDOW_S) {
		s.x.shift();
		s.conns.shift();
		s.ups.shift();
		s.downs.shift();
	}
}

function onView(view) {
	state.self = view.self;
	const snaps = view.cluster && view.cluster.length ? view.cluster : [view.self];
	snaps.sort((a, b) => (a.instance < b.instance ? -1 : 1));
	state.latest = snaps;
	const ce = $('cluster-error');
	ce.hidden = !view.cluster_error;
	ce.textContent = view.cluster_error || '';
	let conns = 0, ups = 0, downs = 0;
	for (const s of snaps) {
		const prev = state.prev.get(s.instance);
		if (prev && prev.at === s.at) continue; // an instance that has not sampled since
		const r = ratesOf(s, prev);
		state.rates.set(s.instance, r);
		state.prev.set(s.instance, s);
		push(s.instance, s.at, s.connections, r.connects, r.disconnects);
	}
	for (const s of snaps) {
		const r = state.rates.get(s.instance) || ratesOf(s, null);
		conns += s.connections;
		ups += r.connects;
		downs += r.disconnects;
	}
	if (snaps.length > 1) push(CLUSTER, view.self.at, conns, ups, downs);
	renderScopes(snaps);
	render();
}

function renderScopes(snaps) {
	const sel = $('scope');
	const want = [...(snaps.length > 1 ? [[CLUSTER, `cluster (${snaps.length} instances)`]] : []),
		...snaps.map((s) => [s.instance, s.instance === state.self.instance ? `${s.instance} (this one)` : s.instance])];
	const have = [...sel.options].map((o) => o.value + '\u0000' + o.text).join('\n');
	if (have !== want.map(([v, t]) => v + '\u0000' + t).join('\n')) {
		sel.replaceChildren(...want.map(([v, t]) => new Option(t, v)));
	}
	// Until someone picks a view, the widest one: the cluster appears a
	// sample or two after the page opens, once the others have seen the
	// watch mark.
	if (!state.scopeChosen || !want.some(([v]) => v === state.scope)) state.scope = snaps.length > 1 ? CLUSTER : state.self.instance;
	sel.value = state.scope;
}

// scoped returns the snapshots and rates the selected view covers.
function scoped() {
	const snaps = state.scope === CLUSTER ? state.latest : state.latest.filter((s) => s.instance === state.scope);
	return snaps.map((s) => ({ s, r: state.rates.get(s.instance) || ratesOf(s, null) }));
}

function render() {
	const items = scoped();
	$('gateway').textContent = state.self ? `gateway ${state.self.gateway}` : '';
	const total = (f) => items.reduce((a, it) => a + f(it), 0);
	$('connections').textContent = num(total((it) => it.s.connections));
	$('connects-rate').textContent = num(total((it) => it.r.connects));
	$('disconnects-rate').textContent = num(total((it) => it.r.disconnects));
	$('subscriptions').textContent = num(total((it) => it.s.subscriptions));
	$('topics').textContent = num(total((it) => it.s.topics));
	$('publish-rate').textContent = num(total((it) => it.r.published));
	$('slow-closes').textContent = `${num(total((it) => it.s.slow_consumer_closes_total))}`;
	const degraded = items.filter((it) => !it.s.bus.healthy).length;
	const bus = $('bus');
	bus.textContent = degraded ? (items.length > 1 ? `degraded (${degraded})` : 'degraded') : items.length ? 'ok' : '–';
	$('bus-backend').textContent = items.length ? `(${items[0].s.bus.backend})` : '';
	bus.className = 'value ' + (degraded ? 'bad' : 'ok');
	renderChart();
	renderTimeline(items);
	renderTopics(items);
	renderHooks(items);
	renderDrops(items);
	renderRules(items);
	renderInstances();
}

function xRange(u, min, max) {
	const xs = u.data[0];
	if (!xs || !xs.length) return [min, max];
	const hi = xs[xs.length - 1];
	return [Math.min(xs[0], hi - 60), hi];
}

let chart;
function renderChart() {
	const s = state.series.get(state.scope) || { x: [], conns: [], ups: [], downs: [] };
	const data = [s.x, s.conns, s.ups, s.downs];
	const el = $('chart');
	if (!chart) {
		chart = new uPlot({
			width: el.clientWidth || 800,
			height: 240,
			// The samples' own span, at least a minute wide: for a single
			// point uPlot would pad the axis to 86400/ms seconds, years.
			scales: { x: { time: true, range: xRange }, n: { range: (u, min, max) => [0, Math.max(1, max)] }, r: { range: (u, min, max) => [0, Math.max(1, max)] } },
			series: [
				{},
				{ label: 'Connections', scale: 'n', stroke: '#2f6feb', width: 2, value: (u, v) => num(v) },
				{ label: 'Connects/s', scale: 'r', stroke: '#1a7f37', value: (u, v) => num(v) },
				{ label: 'Disconnects/s', scale: 'r', stroke: '#cf222e', value: (u, v) => num(v) },
			],
			axes: [{}, { scale: 'n', label: 'connections' }, { scale: 'r', side: 1, grid: { show: false }, label: 'per second' }],
		}, data, el);
		window.addEventListener('resize', () => chart.setSize({ width: el.clientWidth, height: 240 }));
	} else {
		chart.setData(data);
	}
}

function renderTimeline(items) {
	const now = Date.now(), from = now - WINDOW_S * 1000;
	const rows = items.map(({ s }) => {
		const row = document.createElement('div');
		row.className = 'timeline-row';
		const who = document.createElement('span');
		who.className = 'who';
		who.textContent = `${s.instance} (${s.bus.backend})`;
		const bar = document.createElement('div');
		bar.className = 'bar';
		bar.dataset.instance = s.instance;
		// Walk the changes: each degraded stretch becomes a red segment.
		const changes = s.bus.changes || [];
		let downAt = null;
		const pct = (t) => `${(100 * (Math.max(t, from) - from)) / (now - from)}%`;
		const seg = (a, b) => {
			if (b < from) return;
			const d = document.createElement('div');
			d.className = 'down';
			d.style.left = pct(a);
			d.style.width = `${(100 * (b - Math.max(a, from))) / (now - from)}%`;
			bar.append(d);
		};
		const started = s.at - s.uptime_seconds * 1000;
		if (started > from) {
			const u = document.createElement('div');
			u.className = 'unknown';
			u.style.width = pct(started);
			bar.append(u);
		}
		if (changes.length && changes[0].healthy) downAt = started; // degraded from the start
		for (const c of changes) {
			if (!c.healthy && downAt === null) downAt = c.at;
			if (c.healthy && downAt !== null) {
				seg(downAt, c.at);
				downAt = null;
			}
		}
		if (!s.bus.healthy) seg(downAt ?? started, now);
		bar.title = changes.length ? changes.map((c) => `${new Date(c.at).toLocaleTimeString()} ${c.healthy ? 'recovered' : 'degraded'}`).join('\n') : 'no change since start';
		row.append(who, bar);
		return row;
	});
	$('timeline').replaceChildren(...rows);
}

// mergeTopics adds up one list across instances: subscribers and rates
// sum, the head and the presence count (cluster-wide already) take the max.
function mergeTopics(items, key) {
	const m = new Map();
	for (const { s } of items) {
		for (const t of s[key] || []) {
			const o = m.get(t.topic) || { topic: t.topic, subscribers: 0, per_second: 0, head: 0, presence: -1 };
			o.subscribers += t.subscribers;
			o.per_second += t.per_second;
			o.head = Math.max(o.head, t.head);
			o.presence = Math.max(o.presence, t.presence);
			m.set(t.topic, o);
		}
	}
	return [...m.values()];
}

// setRows replaces a table body's rows only when they changed, so a row
// being hovered or clicked is not swapped under the pointer every sample.
function setRows(tbody, rows) {
	const next = rows.map((r) => r.outerHTML).join('');
	if (tbody.dataset.html === next) return;
	tbody.replaceChildren(...rows);
	tbody.dataset.html = next;
}

function cell(text, cls) {
	const td = document.createElement('td');
	td.textContent = text;
	if (cls) td.className = cls;
	return td;
}

function emptyRow(cols, text) {
	const tr = document.createElement('tr');
	const td = cell(text, 'empty');
	td.colSpan = cols;
	tr.append(td);
	return tr;
}

function topicRows(list, cols) {
	if (!list.length) return [emptyRow(5, 'nothing in the last sample')];
	return list.slice(0, 10).map((t) => {
		const tr = document.createElement('tr');
		tr.dataset.topic = t.topic;
		if (t.topic === state.topic) tr.className = 'selected';
		const v = { topic: t.topic, subs: num(t.subscribers), rate: num(t.per_second), head: num(t.head), presence: t.presence < 0 ? '–' : num(t.presence) };
		tr.append(...cols.map((c) => cell(v[c], c === 'topic' ? '' : 'num')));
		tr.addEventListener('click', () => openTopic(t.topic));
		return tr;
	});
}

function renderTopics(items) {
	const bySubs = mergeTopics(items, 'top_by_subscribers').sort((a, b) => b.subscribers - a.subscribers || (a.topic < b.topic ? -1 : 1));
	const byPubs = mergeTopics(items, 'top_by_publishes').sort((a, b) => b.per_second - a.per_second || (a.topic < b.topic ? -1 : 1));
	setRows($('top-subs').tBodies[0], topicRows(bySubs, ['topic', 'subs', 'rate', 'head', 'presence']));
	setRows($('top-pubs').tBodies[0], topicRows(byPubs, ['topic', 'rate', 'subs', 'head', 'presence']));
}

function renderHooks(items) {
	const m = new Map();
	for (const { s, r } of items) {
		for (const [k, h] of Object.entries(s.hooks || {})) {
			const o = m.get(k) || { calls: 0, perSecond: 0, secs: 0, n: 0, errors: {} };
			o.calls += h.calls_total;
			const hr = r.hooks[k];
			if (hr) {
				o.perSecond += hr.perSecond;
				if (hr.avg !== null) {
					o.secs += hr.avg * hr.perSecond;
					o.n += hr.perSecond;
				}
			}
			for (const [c, v] of Object.entries(h.errors_total || {})) o.errors[c] = (o.errors[c] || 0) + v;
			m.set(k, o);
		}
	}
	const rows = [...m.entries()].sort().map(([k, o]) => {
		const tr = document.createElement('tr');
		const errs = Object.entries(o.errors).map(([c, v]) => `${c} ${num(v)}`).join(', ') || '0';
		tr.append(cell(k), cell(num(o.perSecond), 'num'), cell(o.n > 0 ? `${num((1000 * o.secs) / o.n)} ms` : '–', 'num'), cell(num(o.calls), 'num'), cell(errs, Object.keys(o.errors).length ? 'bad' : ''));
		return tr;
	});
	setRows($('hooks').tBodies[0], (rows.length ? rows : [emptyRow(5, 'no hook called yet')]));
}

function counterRows(items, key, rateKey, none) {
	const tot = {}, rate = {};
	for (const { s, r } of items) {
		for (const [k, v] of Object.entries(s[key] || {})) tot[k] = (tot[k] || 0) + v;
		for (const [k, v] of Object.entries(r[rateKey] || {})) rate[k] = (rate[k] || 0) + v;
	}
	const rows = Object.keys(tot).sort().map((k) => {
		const tr = document.createElement('tr');
		tr.append(cell(k), cell(num(rate[k] || 0), 'num'), cell(num(tot[k]), 'num'));
		return tr;
	});
	return rows.length ? rows : [emptyRow(3, none)];
}

function renderDrops(items) {
	setRows($('drops').tBodies[0], counterRows(items, 'dropped_total', 'dropped', 'nothing dropped'));
	setRows($('closes').tBodies[0], counterRows(items, 'closes_total', 'closes', 'no close by the gateway'));
}

function renderRules(items) {
	const s = items[0] && items[0].s;
	const rows = [];
	for (const r of (s && s.replay) || []) {
		const tr = document.createElement('tr');
		tr.append(cell('replay'), cell(r.pattern), cell(r.store), cell(num(r.size), 'num'), cell(r.ttl_seconds ? `${num(r.ttl_seconds)} s` : 'none', 'num'));
		rows.push(tr);
	}
	for (const r of (s && s.presence) || []) {
		const tr = document.createElement('tr');
		tr.append(cell('presence'), cell(r.pattern), cell(''), cell(''), cell(''));
		rows.push(tr);
	}
	setRows($('rules').tBodies[0], (rows.length ? rows : [emptyRow(5, 'no replay or presence rule')]));
}

function renderInstances() {
	const rows = state.latest.map((s) => {
		const tr = document.createElement('tr');
		tr.dataset.instance = s.instance;
		const up = s.uptime_seconds;
		const uptime = up > 86400 ? `${num(up / 86400)} d` : up > 3600 ? `${num(up / 3600)} h` : up > 60 ? `${num(up / 60)} min` : `${num(up)} s`;
		tr.append(cell(s.instance + (s.draining ? ' (draining)' : '')), cell(num(s.connections), 'num'), cell(num(s.topics), 'num'),
			cell(s.bus.healthy ? 'ok' : 'degraded', s.bus.healthy ? 'ok' : 'bad'), cell(uptime, 'num'));
		return tr;
	});
	setRows($('instances').tBodies[0], rows);
}

async function openTopic(topic) {
	state.topic = topic;
	render();
	const panel = $('topic-detail');
	panel.hidden = false;
	$('topic-name').textContent = topic;
	const res = await fetch(`topic?topic=${encodeURIComponent(topic)}`, { headers: { Accept: 'application/json' } });
	const body = await res.json();
	if (state.topic !== topic) return;
	if (!res.ok) {
		$('topic-summary').textContent = body.error || `HTTP ${res.status}`;
		return;
	}
	const parts = [`${num(body.subscribers)} ${body.subscribers === 1 ? 'subscriber' : 'subscribers'} on this instance`, `head ${num(body.head)}`];
	if (body.replay) parts.push(`${num(body.replay.buffered)} of ${num(body.replay.size)} events buffered`);
	$('topic-summary').textContent = parts.join(' · ');
	const ul = $('presence-members');
	if (!body.presence) {
		ul.replaceChildren(Object.assign(document.createElement('li'), { textContent: 'no presence on this topic', className: 'empty' }));
	} else {
		const lis = body.presence.members.map((m) => {
			const li = document.createElement('li');
			li.dataset.key = m.key;
			li.textContent = m.data === null ? m.key : `${m.key} ${JSON.stringify(m.data)}`;
			return li;
		});
		if (body.presence.count > lis.length) lis.push(Object.assign(document.createElement('li'), { textContent: `… ${body.presence.count - lis.length} more` }));
		ul.replaceChildren(...(lis.length ? lis : [Object.assign(document.createElement('li'), { textContent: 'nobody present', className: 'empty' })]));
		ul.dataset.count = String(body.presence.count);
	}
	const tb = $('topic-events').tBodies[0];
	const events = (body.replay && body.replay.events) || [];
	tb.replaceChildren(...(events.length ? events.map((e) => {
		const tr = document.createElement('tr');
		tr.append(cell(String(e.seq), 'num'), cell(e.event), cell(JSON.stringify(e.data)));
		return tr;
	}) : [emptyRow(3, body.replay ? 'buffer empty' : 'no replay buffer on this topic')]));
}

$('topic-close').addEventListener('click', () => {
	state.topic = null;
	$('topic-detail').hidden = true;
	render();
});
$('scope').addEventListener('change', (e) => {
	state.scope = e.target.value;
	state.scopeChosen = true;
	render();
});

function connect() {
	const status = $('status');
	const es = new EventSource('events');
	es.onopen = () => {
		status.dataset.status = 'open';
		status.textContent = 'live';
	};
	es.onmessage = (e) => {
		try {
			onView(JSON.parse(e.data));
		} catch (err) {
			console.warn('dashboard: bad view', err);
		}
	};
	// EventSource retries by itself; the badge says so meanwhile.
	es.onerror = () => {
		status.dataset.status = 'closed';
		status.textContent = 'reconnecting…';
	};
}
connect();
