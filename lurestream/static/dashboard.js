// lurestream dashboard: watch one attacker or topology live.
// Every value shown comes from attackers and is rendered with textContent only — never as HTML.
// Sign-in trades the JWT (from the URL fragment or pasted) for a browser session: an HttpOnly,
// SameSite=Strict cookie this page cannot read and does not need to — the browser sends it with every
// same-origin request under /api/v1/. The JWT is not kept; no URL carries a token or ticket.
// The stream is read with fetch() so every event name (topology tails are open-ended) arrives; a
// reconnect passes the last event id in the Last-Event-ID header.
'use strict';

const BADGE_HOLD_MS = 3000;   // how long "resumed · N replayed" / "snapshot rebuilt" stay before "live"
const MAX_DELAY_MS = 30000;   // the reconnect back-off's ceiling
const END_REASONS = {
  expired: 'signed out: token expired',
  revoked: 'signed out: access revoked',
  forbidden: 'signed out: no longer allowed',
};

const view = {
  target: null,       // {kind: 'attacker'|'topology', id}
  lastId: null,       // last SSE id seen for this target (resume point)
  retryMs: 3000,      // the server's retry: hint (EventSource's default until one arrives)
  failures: 0,        // connects in a row that did not get a stream; 0 again after one does
  controller: null,   // aborts the current stream
  badgeTimer: null,   // puts the badge back to "live" after a resume
  events: 0,
};

const $ = (id) => document.getElementById(id);

function setState(name, detail) {
  clearTimeout(view.badgeTimer);
  const el = $('state');
  el.dataset.state = name;
  el.textContent = detail ? `${name} · ${detail}` : name;
}

// Shows `name · detail` for a moment, then `live` (unless something else happened meanwhile).
function flashState(name, detail) {
  setState(name, detail);
  view.badgeTimer = setTimeout(() => setState('live'), BADGE_HOLD_MS);
}

function notify(message) {
  $('notice').textContent = message || '';
}

class HttpError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

async function failure(response) {
  const body = await response.json().catch(() => ({}));
  return new HttpError(response.status, body.detail || response.statusText);
}

// Same-origin calls carry the session cookie; none carries the JWT except the sign-in itself.
async function api(path, options = {}) {
  const response = await fetch(path, {
    cache: 'no-store',
    credentials: 'same-origin',
    ...options,
    headers: {Accept: 'application/json', ...(options.headers || {})},
  });
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// -- rendering (textContent only) ------------------------------------------------------------
function cell(value) {
  const td = document.createElement('td');
  td.textContent = value === null || value === undefined ? '' : String(value);
  return td;
}

function when(ts) {
  if (ts === null || ts === undefined || ts === '') return '';
  const date = typeof ts === 'number' ? new Date(ts * 1000) : new Date(String(ts));
  return Number.isNaN(date.getTime()) ? String(ts) : date.toLocaleTimeString();
}

function upsertRow(tbody, key, values) {
  let row = Array.from(tbody.rows).find((r) => r.dataset.key === key);
  const fresh = document.createElement('tr');
  fresh.dataset.key = key;
  values.forEach((v) => fresh.appendChild(cell(v)));
  if (row) tbody.replaceChild(fresh, row); else tbody.appendChild(fresh);
  fresh.classList.add('fresh');
  return fresh;
}

function upsertObservation(obs, ts) {
  const primitive = String(obs.primitive ?? '');
  if (!primitive) return;
  const row = upsertRow($('observations').tBodies[0], primitive,
    [primitive, obs.value, obs.confidence, obs.source, when(obs.ts ?? ts)]);
  row.dataset.primitive = primitive;
}

function upsertMutation(m, state) {
  const tbody = $('mutations').tBodies[0];
  const id = String(m.id ?? m.mutation_id ?? '');
  if (!id) return;
  if (['applied', 'failed', 'rejected', 'cancelled'].includes(state)) {
    const row = Array.from(tbody.rows).find((r) => r.dataset.key === id);
    if (row) row.remove();
    return;
  }
  upsertRow(tbody, id, [id, m.op, state, when(m.requested_at)]);
}

function addFeed(name, ts, payload) {
  const li = document.createElement('li');
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = when(ts) || new Date().toLocaleTimeString();
  const label = document.createElement('span');
  label.className = 'name';
  label.textContent = name;
  const summary = document.createElement('span');
  summary.className = 'summary';
  const text = typeof payload === 'string' ? payload : JSON.stringify(payload);
  summary.textContent = text.length > 400 ? `${text.slice(0, 400)}…` : text;
  li.append(time, label, summary);
  const feed = $('feed');
  feed.prepend(li);
  while (feed.children.length > 200) feed.lastChild.remove();
  view.events += 1;
  $('event-count').textContent = `(${view.events})`;
}

function rebuild(snapshot) {
  if (view.target.kind === 'attacker') {
    $('observations').tBodies[0].replaceChildren();
    (snapshot.observations || []).forEach((o) => upsertObservation(o));
  } else {
    $('topology-status').textContent = snapshot.status ?? '';
    $('mutations').tBodies[0].replaceChildren();
    (snapshot.in_flight || []).forEach((m) => upsertMutation(m, m.state));
  }
}

function applyEvent(name, event) {
  const payload = event.payload || {};
  if (view.target.kind === 'attacker') {
    if (name === 'observation') {
      const primitive = payload.primitive ?? String(event.topic || '').replace(/^attacker\.observation\./, '');
      upsertObservation({...payload, primitive}, event.ts);
    }
  } else if (name === 'status') {
    $('topology-status').textContent = payload.status ?? '';
  } else if (name.startsWith('mutation.')) {
    upsertMutation(payload, payload.state ?? name.slice('mutation.'.length));
  }
  addFeed(name, event.ts, payload);
}

// -- the stream --------------------------------------------------------------------------------
function parseFrame(block) {
  const frame = {event: null, data: [], id: null, retry: null};
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') frame.event = value;
    else if (field === 'data') frame.data.push(value);
    else if (field === 'id') frame.id = value;
    else if (field === 'retry' && /^\d+$/.test(value)) frame.retry = Number(value);
  }
  frame.data = frame.data.length ? frame.data.join('\n') : null;
  return frame;
}

// Handles one frame; returns the reason when the server ended the stream for good (`event: end`).
function onFrame(frame) {
  if (frame.id !== null) {
    view.lastId = frame.id;
    $('position').textContent = `#${frame.id}`;
  }
  if (frame.retry !== null) view.retryMs = frame.retry;
  if (frame.data === null) return null;  // keepalive, id-only or retry-only frame
  const data = JSON.parse(frame.data);
  const name = frame.event || 'message';
  if (name === 'snapshot') {
    view.failures = 0;  // connected: the next reconnect starts from the shortest delay again
    rebuild(data);
    if (data.resumed === false) {
      flashState('snapshot rebuilt');
      addFeed('snapshot (rebuilt: events were missed)', null, 'state rebuilt');
    } else {
      setState('live');
      addFeed('snapshot', null, 'initial state');
    }
  } else if (name === 'resumed') {
    view.failures = 0;
    flashState('resumed', `${data.replayed} replayed`);
    addFeed('resumed', null, `${data.replayed} missed events replayed`);
  } else if (name === 'end') {
    return String(data.reason ?? 'ended');
  } else if (name === 'error') {
    setState('error', data.message);
  } else {
    applyEvent(name, data);
  }
  return null;
}

// Reads one response to its end: null when the server closed it (reconnect), or the end reason.
async function readStream(url, signal) {
  const headers = {Accept: 'text/event-stream'};
  if (view.lastId !== null) headers['Last-Event-ID'] = view.lastId;
  const response = await fetch(url, {signal, cache: 'no-store', credentials: 'same-origin', headers});
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return null;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const ended = onFrame(parseFrame(block));
      if (ended !== null) {
        reader.cancel().catch(() => {});
        return ended;
      }
    }
  }
}

// The wait before the next connect: the server's hint, doubling with each failed connect in a row
// (reset by a successful one), at most MAX_DELAY_MS, jittered ±25% so many tabs do not come back at once.
function reconnectDelay() {
  const base = Math.min(view.retryMs * 2 ** view.failures, MAX_DELAY_MS);
  return Math.round(base * (0.75 + Math.random() / 2));
}

async function connect(target) {
  if (view.target !== target) return;  // the user picked something else meanwhile
  setState(view.lastId === null ? 'connecting' : 'reconnecting');
  const controller = new AbortController();
  view.controller = controller;
  const path = target.kind === 'attacker' ? 'attackers' : 'topologies';
  let ended = null;
  try {
    ended = await readStream(`/api/v1/${path}/${encodeURIComponent(target.id)}/events`, controller.signal);
  } catch (error) {
    if (controller.signal.aborted || view.target !== target) return;
    if (error.status === 401) return signedOut('signed out: the session has ended — sign in again');
    if (error.status === 403) return signedOut(END_REASONS.forbidden);
    if (error.status === 404) {
      setState('error', 'not found');
      return;
    }
    // anything else (network down, 429, 503): try again below
  }
  if (controller.signal.aborted || view.target !== target) return;
  if (ended !== null) return signedOut(END_REASONS[ended] || `signed out: ${ended}`);
  const delay = reconnectDelay();
  view.failures += 1;
  setState('reconnecting', `in ${(delay / 1000).toFixed(1)} s`);
  console.info(`lurestream: reconnecting in ${delay} ms (attempt ${view.failures})`);
  setTimeout(() => connect(target), delay);
}

function watch(kind, id) {
  if (!id) return;
  if (view.controller) view.controller.abort();
  view.target = {kind, id};
  view.lastId = null;
  view.failures = 0;
  view.events = 0;
  notify('');
  $('feed').replaceChildren();
  $('event-count').textContent = '';
  $('position').textContent = '';
  $('view').hidden = false;
  $('view-title').textContent = `${kind} ${id}`;
  $('attacker-view').hidden = kind !== 'attacker';
  $('topology-view').hidden = kind !== 'topology';
  connect(view.target);
}

// -- sign-in, picker, sign-out -----------------------------------------------------------------
function fillSelect(select, items, label) {
  select.replaceChildren();
  for (const item of items) {
    const option = document.createElement('option');
    option.value = item.uuid ?? item.id;
    option.textContent = label(item);
    select.appendChild(option);
  }
}

function showSignIn() {
  if (view.controller) view.controller.abort();
  view.target = null;
  $('picker').hidden = true;
  $('signin').hidden = false;
}

// The stream (or the session) is over: keep what is on screen, stop, and offer the sign-in form.
function signedOut(message) {
  showSignIn();
  setState('signed out');
  notify(message);
}

// Lists what can be watched; true when the session works, false when there is none.
async function loadPicker(justSignedIn) {
  try {
    const [attackers, topologies] = await Promise.all([api('/api/v1/attackers?limit=100'), api('/api/v1/topologies?limit=100')]);
    fillSelect($('attacker-select'), attackers.items, (a) => `${a.uuid}${a.ip ? ` (${a.ip})` : ''}`);
    fillSelect($('topology-select'), topologies.items, (t) => `${t.id}${t.status ? ` [${t.status}]` : ''}`);
  } catch (error) {
    if (error.status === 401 && justSignedIn) {
      // the server set the cookie but the browser did not keep it: a Secure cookie over plain HTTP
      signedOut(window.isSecureContext
        ? 'the browser refused the session cookie'
        : 'the browser refused the session cookie: open the dashboard over HTTPS '
          + '(or run the server with LURESTREAM_COOKIE_SECURE=false for plain-HTTP development)');
    } else if (error.status === 401) {
      showSignIn();
      setState('idle', 'signed out');
    } else if (error.status === 403) {
      signedOut(END_REASONS.forbidden);
    } else {
      notify(error.message);
    }
    return false;
  }
  $('signin').hidden = true;
  $('picker').hidden = false;
  setState('idle', 'pick something to watch');
  return true;
}

async function signIn(token) {
  notify('');
  setState('connecting', 'signing in');
  try {
    await api('/api/v1/auth/sse-session', {method: 'POST', headers: {Authorization: `Bearer ${token}`}});
  } catch (error) {
    const why = {401: 'the token was refused', 403: 'this account may not watch streams', 429: 'too many sign-ins, wait a minute'};
    signedOut(`sign-in failed: ${why[error.status] || error.message}`);
    return;
  }
  await loadPicker(true);
}

async function signOut() {
  showSignIn();
  try {
    await api('/api/v1/auth/sse-session', {method: 'DELETE'});
    setState('idle', 'signed out');
    notify('');
  } catch (error) {
    notify(`sign-out failed: ${error.message}`);
  }
}

function start() {
  sessionStorage.removeItem('lurestream.token');  // earlier versions kept the JWT here
  const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromHash) history.replaceState(null, '', location.pathname + location.search);  // out of the address bar
  $('signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const value = $('token-input').value.trim();
    $('token-input').value = '';
    if (value) signIn(value);
  });
  $('watch-attacker').addEventListener('click', () => watch('attacker', $('attacker-select').value));
  $('watch-topology').addEventListener('click', () => watch('topology', $('topology-select').value));
  $('signout').addEventListener('click', signOut);
  if (fromHash) signIn(fromHash);
  else loadPicker(false);  // a session from before (the cookie outlives a reload) signs in by itself
}

start();
