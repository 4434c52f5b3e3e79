// The demo app on the svelte-adapter-uws 0.3.4 client from npm (the legacy
// protocol generation: plain subscribes, `list`/`join`/`leave` presence,
// `__cursor:` and `__replay:` subscribes). e2e/build.mjs bundles this file
// with esbuild into bundle.js:  cd e2e && npm install && npm run build
//
// The stores are the package's own; only the DOM (../ui.js) is shared with
// the current-protocol page.
import { on, status, connect } from 'svelte-adapter-uws/client';
import { presence } from 'svelte-adapter-uws/plugins/presence/client';
import { cursor } from 'svelte-adapter-uws/plugins/cursor/client';
import { onReplay } from 'svelte-adapter-uws/plugins/replay/client';
import { identity, mountUI, applyChat, applyCrud } from '../ui.js';

const me = await identity(); // the `user` cookie is set before the client connects
const ui = mountUI({
	me,
	// 0.3.4 has no cursor API of its own for moves: app code sends the frame.
	onCursor: (data) => connect().send({ type: 'cursor', topic: 'canvas', data }),
});

status.subscribe(ui.status);
ui.session('(0.3.4 ignores welcome)');

// Chat and todos: a replay from seq 0 (what the SSR load function would hand
// over), folded with .scan like the package's crud() store folds events.
onReplay('chat', { since: 0 }).scan([], applyChat).subscribe(ui.chat);
onReplay('todos', { since: 0 }).scan([], applyCrud).subscribe(ui.todos);

// 0.3.4 joins presence by subscribing to the topic itself; presence() follows
// `__presence:room` and lists members' data.
on('room').subscribe(() => {});
presence('room').subscribe((list) => ui.presence(list.map((data) => ({ key: String(data?.id), data }))));

// Cursor entries carry the mover's identity as `user`; 0.3.4 never learns its
// own session id (it ignores `welcome`), so it hides its own user's pointers.
cursor('canvas').subscribe((map) =>
	ui.cursors([...map].filter(([, v]) => v.user?.id !== me).map(([key, v]) => ({ key, ...v }))),
);

window.demo = { me };
