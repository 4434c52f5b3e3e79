// The demo app on the current protocol generation, through the hand-written
// client in realtime.js. The same app on the 0.3.4 client is legacy/app.js.
import { connect } from './realtime.js';
import { identity, mountUI, applyChat, applyCrud } from './ui.js';

const me = await identity(); // the `user` cookie is set before the socket opens
const rt = connect({ auth: true }); // the auth preflight before every socket attempt
const ui = mountUI({ me, onCursor: (data) => rt.moveCursor('canvas', data) });

rt.onStatus(ui.status);
rt.onSession(ui.session);

// Chat and todos: everything still buffered (replay since 0), then live
// events; a reconnect resumes from the last seen seq without gaps.
let chat = [];
rt.replay('chat', 0, (e) => ui.chat((chat = applyChat(chat, e))));
let todos = [];
rt.replay('todos', 0, (e) => ui.todos((todos = applyCrud(todos, e))));

// Subscribing to `room` joins its presence.
rt.presence('room', (members) => ui.presence([...members].map(([key, data]) => ({ key, data }))));

// Everyone's pointer on the canvas but our own.
rt.cursors('canvas', (entries) =>
	ui.cursors([...entries].filter(([key]) => key !== rt.sessionId).map(([key, v]) => ({ key, ...v }))),
);

// For the browser tests and the curious: window.demo.rt in the console.
window.demo = { rt, me };
