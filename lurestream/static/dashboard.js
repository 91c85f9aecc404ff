// lurestream dashboard: watch one attacker or topology live.
// Every value shown comes from attackers and is rendered with textContent only — never as HTML.
// The stream is read with fetch() so every event name (topology tails are open-ended) arrives;
// each connect and reconnect mints a fresh single-use ticket and passes the last event id.
'use strict';

const view = {
  token: null,        // the JWT, kept in sessionStorage only
  target: null,       // {kind: 'attacker'|'topology', id}
  lastId: null,       // last SSE id seen for this target (resume point)
  retryMs: 2000,      // the server's retry: hint
  controller: null,   // aborts the current stream
  events: 0,
};

const $ = (id) => document.getElementById(id);

function setState(name, detail) {
  const el = $('state');
  el.dataset.state = name;
  el.textContent = detail ? `${name} · ${detail}` : name;
}

function showError(message) {
  $('error').textContent = message || '';
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    cache: 'no-store',
    headers: {Authorization: `Bearer ${view.token}`, Accept: 'application/json'},
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const error = new Error(`${response.status}: ${body.detail || response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
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

function onFrame(frame) {
  if (frame.id !== null) {
    view.lastId = frame.id;
    $('position').textContent = `#${frame.id}`;
  }
  if (frame.retry !== null) view.retryMs = frame.retry;
  if (frame.data === null) return;  // keepalive, id-only or retry-only frame
  const data = JSON.parse(frame.data);
  const name = frame.event || 'message';
  if (name === 'snapshot') {
    rebuild(data);
    const rebuilt = data.resumed === false;
    setState(rebuilt ? 'snapshot rebuilt' : 'live');
    addFeed(rebuilt ? 'snapshot (rebuilt: events were missed)' : 'snapshot', null, rebuilt ? 'state rebuilt' : 'initial state');
  } else if (name === 'resumed') {
    setState('resumed', `${data.replayed} replayed`);
    addFeed('resumed', null, `${data.replayed} missed events replayed`);
  } else if (name === 'error') {
    setState('error', data.message);
  } else {
    applyEvent(name, data);
  }
}

async function readStream(url, signal) {
  const response = await fetch(url, {signal, cache: 'no-store', headers: {Accept: 'text/event-stream'}});
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const error = new Error(`${response.status}: ${body.detail || response.statusText}`);
    error.status = response.status;
    throw error;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      onFrame(parseFrame(block));
    }
  }
}

async function connect(target, attempt) {
  if (view.target !== target) return;  // the user picked something else meanwhile
  setState(attempt === 0 ? 'connecting' : 'reconnecting');
  const controller = new AbortController();
  view.controller = controller;
  try {
    const {ticket} = await api('/api/v1/auth/sse-ticket', {method: 'POST'});
    const path = target.kind === 'attacker' ? 'attackers' : 'topologies';
    let url = `/api/v1/${path}/${encodeURIComponent(target.id)}/events?ticket=${encodeURIComponent(ticket)}`;
    if (view.lastId !== null) url += `&last_event_id=${encodeURIComponent(view.lastId)}`;
    await readStream(url, controller.signal);
  } catch (error) {
    if (controller.signal.aborted || view.target !== target) return;
    if (error.status === 401 || error.status === 403) {
      setState('error', error.message);
      showError(`${error.message} — check the token`);
      return;
    }
    if (error.status === 404) {
      setState('error', 'not found');
      return;
    }
  }
  if (controller.signal.aborted || view.target !== target) return;
  const delay = Math.min(view.retryMs * (0.5 + Math.random()) * Math.min(attempt + 1, 5), 30000);
  setState('reconnecting');
  setTimeout(() => connect(target, attempt + 1), delay);
}

function watch(kind, id) {
  if (!id) return;
  if (view.controller) view.controller.abort();
  view.target = {kind, id};
  view.lastId = null;
  view.events = 0;
  showError('');
  $('feed').replaceChildren();
  $('event-count').textContent = '';
  $('position').textContent = '';
  $('view').hidden = false;
  $('view-title').textContent = `${kind} ${id}`;
  $('attacker-view').hidden = kind !== 'attacker';
  $('topology-view').hidden = kind !== 'topology';
  connect(view.target, 0);
}

// -- start-up ----------------------------------------------------------------------------------
function fillSelect(select, items, label) {
  select.replaceChildren();
  for (const item of items) {
    const option = document.createElement('option');
    option.value = item.uuid ?? item.id;
    option.textContent = label(item);
    select.appendChild(option);
  }
}

async function loadPicker() {
  $('signin').hidden = true;
  $('picker').hidden = false;
  try {
    const [attackers, topologies] = await Promise.all([api('/api/v1/attackers?limit=100'), api('/api/v1/topologies?limit=100')]);
    fillSelect($('attacker-select'), attackers.items, (a) => `${a.uuid}${a.ip ? ` (${a.ip})` : ''}`);
    fillSelect($('topology-select'), topologies.items, (t) => `${t.id}${t.status ? ` [${t.status}]` : ''}`);
    setState('idle', 'pick something to watch');
  } catch (error) {
    showError(error.message);
    if (error.status === 401 || error.status === 403) signOut();
  }
}

function signOut() {
  if (view.controller) view.controller.abort();
  view.target = null;
  view.token = null;
  sessionStorage.removeItem('lurestream.token');
  $('picker').hidden = true;
  $('view').hidden = true;
  $('signin').hidden = false;
  setState('idle', 'signed out');
}

function start() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromHash) {
    sessionStorage.setItem('lurestream.token', fromHash);
    history.replaceState(null, '', location.pathname + location.search);  // keep it out of the address bar
  }
  view.token = sessionStorage.getItem('lurestream.token');
  $('signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const value = $('token-input').value.trim();
    if (!value) return;
    sessionStorage.setItem('lurestream.token', value);
    view.token = value;
    $('token-input').value = '';
    showError('');
    loadPicker();
  });
  $('watch-attacker').addEventListener('click', () => watch('attacker', $('attacker-select').value));
  $('watch-topology').addEventListener('click', () => watch('topology', $('topology-select').value));
  $('signout').addEventListener('click', signOut);
  if (view.token) loadPicker(); else signOut();
}

start();
