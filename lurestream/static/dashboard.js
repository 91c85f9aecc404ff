// lurestream ops room: the overview — the live log feed's stats, histogram and rows with DECNET's search,
// the identity, campaign and orchestrator firehoses — and one attacker or topology at a time.
//
// Security: every value shown comes from attackers, so it reaches the page through textContent, a DOM
// property or an attribute only — never parsed as markup, never in a URL unencoded.
// Credentials: sign-in trades the JWT (from the URL fragment, or pasted) for a browser session — an
// HttpOnly, SameSite=Strict cookie this page cannot read; the JWT is dropped at once (protocol §12).
// Streams: read with fetch() (stream.js), each reconnecting with Last-Event-ID by itself.
'use strict';

import {Histogram} from './chart.js';
import {ago, count, describeEvent, isoTime, pretty, short, summarize} from './format.js';
import {EventStream} from './stream.js';

const MAX_LOG_ROWS = 500;      // rows the live log keeps in the DOM (newest first)
const MAX_PANEL_ROWS = 50;     // rows per firehose panel (a snapshot carries the 50 newest)
const MAX_EVENTS = 200;        // rows of the watched attacker's or topology's event list
const MAX_EVENT_NAMES = 50;    // names the type filter offers (topology names are open-ended: a bound)
const MAX_LINE = 1000;         // characters of a log line shown in its cell (the rest on hover)
const BACKFILL_ROWS = 2000;    // a new search also looks back over the last this-many log ids
const HIDDEN_RELEASE_MS = 2000;  // a hidden tab lets its connections go after this long (see onVisibility)
const PICKER_LIMIT = 25;
const PICKER_REFRESH_MS = 15000;
const ATTACKER_QUERY = /^[A-Za-z0-9.:_-]{0,64}$/;  // what GET /api/v1/attackers?q= accepts
const LIVE_STATES = new Set(['live', 'resumed', 'snapshot rebuilt']);
const END_REASONS = {
  expired: 'signed out: token expired',
  revoked: 'signed out: access revoked',
  forbidden: 'signed out: no longer allowed',
  unauthorized: 'signed out: the session has ended — sign in again',
};

const $ = (id) => document.getElementById(id);

// An element with a class and text (textContent: a value is never markup).
function el(tag, className = '', text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null && text !== undefined) node.textContent = String(text);
  return node;
}

function showBadge(badge, state, detail) {
  badge.dataset.state = state;
  badge.textContent = detail ? `${state} · ${detail}` : state;
}

function notify(message) {
  $('notice').textContent = message || '';
}

// -- the session and its streams -------------------------------------------------------------------------
const room = {
  signedIn: false,
  streams: new Map(),    // logs, identities, campaigns, orchestrator, watch → EventStream
  hiddenTimer: null,
  suspended: [],         // streams let go while the tab was hidden, started again when it shows
};

class HttpError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

// Same-origin calls carry the session cookie; none carries the JWT except the sign-in itself.
async function api(path, options = {}) {
  const response = await fetch(path, {
    cache: 'no-store',
    credentials: 'same-origin',
    ...options,
    headers: {Accept: 'application/json', ...(options.headers || {})},
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new HttpError(response.status, body.detail || response.statusText);
  }
  return response.status === 204 ? null : response.json();
}

function replaceStream(name, stream) {
  const old = room.streams.get(name);
  if (old) old.stop();
  room.streams.set(name, stream);
  stream.start();
}

function stopStreams() {
  clearTimeout(room.hiddenTimer);
  room.suspended = [];
  for (const stream of room.streams.values()) stream.stop();
  room.streams.clear();
}

// The header badge sums the streams up: live when every open stream is, else how many are not.
function updateOverall() {
  if (!room.signedIn) return;
  const states = [...room.streams.values()].filter((s) => s.running || s.state === 'paused').map((s) => s.state);
  if (!states.length) return;
  const down = states.filter((s) => !LIVE_STATES.has(s));
  if (!down.length) showBadge($('state'), 'live');
  else if (down.every((s) => s === 'paused')) showBadge($('state'), 'paused', 'tab hidden');
  else if (down.includes('waiting')) showBadge($('state'), 'waiting', `${down.length} of ${states.length} streams`);
  else if (down.every((s) => s === 'connecting')) showBadge($('state'), 'connecting');
  else showBadge($('state'), 'reconnecting', `${down.length} of ${states.length} streams`);
}

// A stream's badge, and the header's sum.
function badgeFor(id) {
  return (state, detail) => {
    showBadge($(id), state, detail);
    updateOverall();
  };
}

// -- stats tiles and histogram ---------------------------------------------------------------------------
const histogram = new Histogram($('histogram'), $('histogram-caption'));

function showStats(stats) {
  for (const tile of document.querySelectorAll('#tiles .tile')) {
    tile.querySelector('.value').textContent = count(stats ? stats[tile.dataset.stat] : null);
  }
}

// -- the live log ----------------------------------------------------------------------------------------
const logs = {
  search: '',
  position: null,   // the greatest log id the feed has told us of (rows and keepalives): a search looks back from it
  newest: null,     // the greatest id shown: a row at or below it is never shown twice
  received: 0,
  paused: false,
  pending: [],      // rows that arrived while paused (the newest MAX_LOG_ROWS)
  skipped: 0,       // rows that arrived while paused and no longer fit
};

function logPath() {
  return logs.search ? `/api/v1/stream?search=${encodeURIComponent(logs.search)}` : '/api/v1/stream';
}

function openLogFeed(fromId) {
  // The feed has no snapshot: it is open once its first frame (stats) arrives.
  const stream = new EventStream('logs', logPath(), {
    state: badgeFor('logs-state'),
    event: onLogFrame,
    signedOut: endSession,
  }, {openOn: () => true});
  stream.lastId = fromId;
  replaceStream('logs', stream);
}

function onLogFrame(name, data, id) {
  if (id !== null && /^\d{1,19}$/.test(id)) logs.position = Math.max(logs.position ?? 0, Number(id));
  if (name !== 'message' || !data) return;
  if (data.type === 'stats') showStats(data.data);
  else if (data.type === 'histogram') histogram.set(data.data, data.truncated);
  else if (data.type === 'logs') addLogRows(data.data);
  else if (data.type === 'gap') addGapRow(data.data);
}

function addLogRows(rows) {
  const fresh = [];
  for (const row of Array.isArray(rows) ? rows : []) {
    if (row === null || typeof row !== 'object') continue;
    const id = Number(row.id);
    // the server sends each row once, in id order; this keeps a resume that overlapped from doubling one
    if (Number.isFinite(id) && logs.newest !== null && id <= logs.newest) continue;
    if (Number.isFinite(id)) logs.newest = id;
    fresh.push(row);
  }
  logs.received += fresh.length;
  if (logs.paused) {
    logs.pending.push(...fresh);
    if (logs.pending.length > MAX_LOG_ROWS) logs.skipped += logs.pending.splice(0, logs.pending.length - MAX_LOG_ROWS).length;
  } else {
    renderLogRows(fresh);
  }
  updateLogCount();
}

function renderLogRows(rows) {
  const tbody = $('logs').tBodies[0];
  const fragment = document.createDocumentFragment();
  const newest = rows.slice(-MAX_LOG_ROWS);  // a burst bigger than the table: only its newest can stay
  for (let i = newest.length - 1; i >= 0; i--) fragment.append(logRow(newest[i]));
  tbody.prepend(fragment);
  while (tbody.rows.length > MAX_LOG_ROWS) tbody.lastElementChild.remove();
}

function cell(value, className = '') {
  return el('td', className, value === null || value === undefined ? '' : short(value, 200));
}

function logRow(row) {
  const tr = el('tr', 'fresh');
  tr.dataset.id = String(row.id);
  const who = el('td', 'ip');
  if (typeof row.attacker_ip === 'string' && row.attacker_ip) who.append(attackerButton(row.attacker_ip));
  const line = el('td', 'line', short(row.raw_line, MAX_LINE));
  // the whole line and its fields on hover (an attribute, not markup)
  const fields = typeof row.fields === 'string' ? row.fields : JSON.stringify(row.fields ?? null);
  line.title = `${short(row.raw_line, 4000)}\nfields: ${fields}`.slice(0, 4000);
  tr.append(cell(isoTime(row.timestamp), 'time'), cell(row.decky), cell(row.service), cell(row.event_type), who, line);
  return tr;
}

// A line across the table where rows are missing: said, never silently skipped (protocol §16).
function addMarkerRow(text) {
  const tr = el('tr', 'gap');
  const td = el('td', '', text);
  td.colSpan = 6;
  tr.append(td);
  $('logs').tBodies[0].prepend(tr);
}

// The feed could not replay everything missed (more than LOG_REPLAY_MAX rows): it says so, and goes on.
function addGapRow(gap) {
  const after = short(gap && gap.after);
  const resumed = Number(gap && gap.resumed_at);
  addMarkerRow(`rows after #${after} were too many to replay: resumed at #${short(gap && gap.resumed_at)}`);
  if (Number.isFinite(resumed)) logs.newest = resumed;
}

function updateLogCount() {
  const shown = $('logs').tBodies[0].rows.length;
  const paused = logs.paused ? ` · paused: ${count(logs.pending.length + logs.skipped)} new` : '';
  $('logs-count').textContent = `${count(shown)} shown · ${count(logs.received)} received${paused}`;
}

function clearLogTable() {
  $('logs').tBodies[0].replaceChildren();
  logs.newest = null;
  logs.received = 0;
  logs.pending = [];
  logs.skipped = 0;
  updateLogCount();
}

// A new search: the table and histogram start over; the stream looks back BACKFILL_ROWS log ids (a resume
// from there: the server sends the matching rows among them), so recent matches show at once, then live.
function setLogSearch(text) {
  logs.search = text.trim();
  clearLogTable();
  histogram.clear();
  const from = logs.position === null ? null : String(Math.max(0, logs.position - BACKFILL_ROWS));
  openLogFeed(from);
}

function setLogsPaused(paused) {
  logs.paused = paused;
  $('logs-pause').setAttribute('aria-pressed', String(paused));
  $('logs-pause').textContent = paused ? 'Resume' : 'Pause';
  if (!paused) {
    if (logs.skipped) addMarkerRow(`${count(logs.skipped)} rows arrived while paused and were not kept`);
    renderLogRows(logs.pending);
    logs.pending = [];
    logs.skipped = 0;
  }
  updateLogCount();
}

// -- the firehoses ---------------------------------------------------------------------------------------
// How each panel names and summarises an item (a snapshot's document, or a live event's payload: the
// demo's and DECNET's payloads carry the document's fields).
const FIREHOSES = {
  identities: {
    path: '/api/v1/identities/events', items: 'identities', time: 'updated_at',
    key: (d) => d.label ?? d.id ?? d.identity_id ?? d.identity_uuid,
    fields: () => ['state', 'confidence', 'attackers', 'campaign_id', 'last_change'],
  },
  campaigns: {
    path: '/api/v1/campaigns/events', items: 'campaigns', time: 'updated_at',
    key: (d) => d.name ?? d.id ?? d.campaign_id,
    fields: () => ['state', 'identities', 'last_change'],
  },
  orchestrator: {
    path: '/api/v1/orchestrator/events/stream', items: 'events', time: 'ts',
    key: (d) => d.decky ?? d.decky_uuid,
    fields: (d) => ({
      traffic: ['src_ip', 'dst_port', 'protocol', 'bytes', 'direction'],
      file: ['action', 'path', 'size', 'src_ip'],
      email: ['sender', 'recipient', 'subject'],
    })[d.kind] || null,
  },
};

function panelRow(kind, name, doc, fallbackTs) {
  const spec = FIREHOSES[kind];
  const li = el('li');
  li.dataset.id = String(doc.id ?? '');
  li.dataset.name = name;
  const fields = spec.fields(doc);
  const key = el('span', 'key', short(spec.key(doc) ?? '', 60));
  const summary = el('span', 'summary');
  // an attacker's ip (an orchestrator event's source) leads the line, as a button that opens its stream
  const ip = typeof doc.src_ip === 'string' && doc.src_ip ? doc.src_ip : null;
  if (ip) summary.append('from ', attackerButton(ip), ' · ');
  summary.append(summarize(doc, fields, ['id', 'label', 'name', 'decky', 'decky_uuid', 'kind', 'src_ip', spec.time]));
  li.append(el('time', '', isoTime(doc[spec.time] ?? fallbackTs)), el('span', 'name', name), key, summary);
  key.title = pretty(doc).slice(0, 4000);  // the whole document on hover (an attribute, not markup)
  return li;
}

function openFirehose(kind) {
  const spec = FIREHOSES[kind];
  const feed = $(`${kind}-feed`);
  const stream = new EventStream(kind, spec.path, {
    state: badgeFor(`${kind}-state`),
    signedOut: endSession,
    event(name, data) {
      if (name === null || name === 'resumed') return;  // a resume: exactly the missed events follow
      if (name === 'snapshot') {  // the current state: replace whatever is shown
        const items = Array.isArray(data[spec.items]) ? data[spec.items] : [];
        feed.replaceChildren(...items.slice(0, MAX_PANEL_ROWS).filter((d) => d && typeof d === 'object')
          .map((d) => panelRow(kind, d.kind ?? 'current', d)));
        return;
      }
      const payload = data && typeof data.payload === 'object' && data.payload !== null ? data.payload : {};
      const row = panelRow(kind, name, payload, data.ts);
      row.classList.add('fresh');
      feed.prepend(row);
      while (feed.children.length > MAX_PANEL_ROWS) feed.lastElementChild.remove();
    },
  });
  replaceStream(kind, stream);
}

// -- attackers: the picker, and a click from anywhere ----------------------------------------------------
function attackerButton(ip) {
  const button = el('button', 'link attacker', short(ip, 64));
  button.type = 'button';
  button.dataset.ip = ip;
  button.title = `watch ${ip}`;
  return button;
}

const picker = {controller: null, timer: null, refresh: null, query: ''};

// Lists attackers whose ip or uuid contains `q`, most recently active first; returns them.
async function searchAttackers(q) {
  const note = $('attacker-note');
  if (!ATTACKER_QUERY.test(q)) {
    note.textContent = 'an IP or uuid: letters, digits and . : - _ (at most 64)';
    return [];
  }
  if (picker.controller) picker.controller.abort();
  const controller = new AbortController();
  picker.controller = controller;
  picker.query = q;
  let items;
  try {
    const query = q ? `&q=${encodeURIComponent(q)}` : '';
    ({items} = await api(`/api/v1/attackers?limit=${PICKER_LIMIT}${query}`, {signal: controller.signal}));
  } catch (error) {
    if (controller.signal.aborted) return [];
    if (error.status === 401 || error.status === 403) endSession(error.status === 401 ? 'unauthorized' : 'forbidden');
    else note.textContent = `search failed: ${error.message}`;
    return [];
  }
  if (!room.signedIn) return [];
  const rows = items.map((a) => {
    const tr = el('tr');
    tr.dataset.uuid = String(a.uuid);
    const ip = el('td');
    const button = el('button', 'link', a.ip ?? a.uuid);
    button.type = 'button';
    ip.append(button);
    const seen = el('td', 'time', a.last_seen ? `${isoTime(a.last_seen)} · ${ago(a.last_seen)}` : 'never');
    const uuid = el('td', 'uuid', a.uuid);
    uuid.title = String(a.uuid);
    tr.append(ip, seen, el('td', 'score', a.score ?? ''), uuid);
    if (currentWatch.target && currentWatch.target.id === a.uuid) tr.classList.add('current');
    return tr;
  });
  $('attacker-results').tBodies[0].replaceChildren(...rows);
  note.textContent = items.length ? `${items.length} most recently active${q ? ` matching “${q}”` : ''}`
    : `no attacker matches “${q}”`;
  return items;
}

// A log row's (or an orchestrator event's) attacker: found by its exact ip, then watched.
async function openAttackerByIp(ip) {
  $('attacker-search').value = ip;
  const items = await searchAttackers(ip);
  const found = items.find((a) => a.ip === ip);
  if (found) {
    watch('attacker', found.uuid, ip);
    $('watch').scrollIntoView({block: 'start', behavior: 'smooth'});
  } else if (ATTACKER_QUERY.test(ip)) {
    $('attacker-note').textContent = `no attacker record for ${ip} yet`;
  }
}

// -- one attacker or topology ----------------------------------------------------------------------------
const currentWatch = {target: null, paused: false, pending: [], skipped: 0, events: 0, names: new Set()};

function watch(kind, id, label = id) {
  if (!id) return;
  currentWatch.target = {kind, id};
  clearWatchView();
  $('view').hidden = false;
  $('view-title').textContent = `${kind} ${label}${label !== id ? ` (${id})` : ''}`;
  $('attacker-view').hidden = kind !== 'attacker';
  $('topology-view').hidden = kind !== 'topology';
  for (const tr of $('attacker-results').tBodies[0].rows) tr.classList.toggle('current', tr.dataset.uuid === id);
  const path = `/api/v1/${kind === 'attacker' ? 'attackers' : 'topologies'}/${encodeURIComponent(id)}/events`;
  replaceStream('watch', new EventStream(kind, path, {
    state: badgeFor('view-state'),
    event: onWatchFrame,
    signedOut: endSession,
  }));
}

function closeWatch() {
  const stream = room.streams.get('watch');
  if (stream) stream.stop();
  room.streams.delete('watch');
  currentWatch.target = null;
  clearWatchView();
  $('view').hidden = true;
  for (const tr of $('attacker-results').tBodies[0].rows) tr.classList.remove('current');
  updateOverall();
}

function clearWatchView() {
  Object.assign(currentWatch, {pending: [], skipped: 0, events: 0, names: new Set()});
  setEventsPaused(false);
  $('observations').tBodies[0].replaceChildren();
  $('mutations').tBodies[0].replaceChildren();
  $('topology-status').textContent = '';
  $('feed').replaceChildren();
  $('event-count').textContent = '';
  $('position').textContent = '';
  $('event-filter').replaceChildren(new Option('all types', ''));
}

function upsertRow(tbody, key, values) {
  const fresh = el('tr', 'fresh');
  fresh.dataset.key = key;
  values.forEach((v) => fresh.append(cell(v)));
  const row = [...tbody.rows].find((r) => r.dataset.key === key);
  if (row) tbody.replaceChild(fresh, row); else tbody.append(fresh);
  return fresh;
}

function upsertObservation(obs, ts) {
  const primitive = String(obs.primitive ?? '');
  if (!primitive) return;
  const row = upsertRow($('observations').tBodies[0], primitive,
    [primitive, obs.value, obs.confidence, obs.source, isoTime(obs.ts ?? ts)]);
  row.dataset.primitive = primitive;
}

function upsertMutation(m, state) {
  const tbody = $('mutations').tBodies[0];
  const id = String(m.id ?? m.mutation_id ?? '');
  if (!id) return;
  if (['applied', 'failed', 'rejected', 'cancelled'].includes(state)) {  // no longer in flight
    const row = [...tbody.rows].find((r) => r.dataset.key === id);
    if (row) row.remove();
    return;
  }
  upsertRow(tbody, id, [id, m.op, state, isoTime(m.requested_at)]);
}

function onWatchFrame(name, data, id) {
  if (id !== null) $('position').textContent = `#${id}`;
  if (name === null || !currentWatch.target) return;
  const kind = currentWatch.target.kind;
  if (name === 'snapshot') {  // the current state: rebuild the tables from it
    if (kind === 'attacker') {
      $('observations').tBodies[0].replaceChildren();
      (data.observations || []).forEach((o) => upsertObservation(o));
    } else {
      $('topology-status').textContent = data.status ?? '';
      $('mutations').tBodies[0].replaceChildren();
      (data.in_flight || []).forEach((m) => upsertMutation(m, m.state));
    }
    const what = kind === 'attacker' ? `${(data.observations || []).length} primitives`
      : `${(data.in_flight || []).length} mutations in flight`;
    addEvent('snapshot', null, data.resumed === false ? `state rebuilt (events were missed): ${what}` : `initial state: ${what}`);
    return;
  }
  if (name === 'resumed') {
    addEvent('resumed', null, `${data.replayed} missed events replayed`);
    return;
  }
  const payload = data && typeof data.payload === 'object' && data.payload !== null ? data.payload : {};
  if (kind === 'attacker' && name === 'observation') {
    const primitive = payload.primitive ?? String(data.topic || '').replace(/^attacker\.observation\./, '');
    upsertObservation({...payload, primitive}, data.ts);
  } else if (kind === 'topology' && name === 'status') {
    $('topology-status').textContent = payload.status ?? '';
  } else if (kind === 'topology' && name.startsWith('mutation.')) {
    upsertMutation(payload, payload.state ?? name.slice('mutation.'.length));
  }
  addEvent(name, data.ts, describeEvent(name, data), data);
}

// One row of the event list: time, name, what it says in words, and the whole event a click away.
function eventRow(name, ts, text, raw) {
  const li = el('li', 'fresh');
  li.dataset.name = name;
  const line = [el('time', '', isoTime(ts ?? new Date())), el('span', 'name', name), el('span', 'summary', text)];
  if (raw === undefined) {
    const row = el('div', 'row');
    row.append(...line);
    li.append(row);
  } else {  // a click on the row shows the whole event
    const details = el('details');
    const head = el('summary', 'row');
    head.append(...line);
    details.append(head, el('pre', '', pretty(raw)));
    li.append(details);
  }
  const filter = $('event-filter').value;
  li.hidden = Boolean(filter) && filter !== name;
  return li;
}

function addEvent(name, ts, text, raw) {
  currentWatch.events += 1;
  if (!currentWatch.names.has(name) && currentWatch.names.size < MAX_EVENT_NAMES) {
    // the type filter offers every name seen, in order (the first MAX_EVENT_NAMES of them)
    currentWatch.names.add(name);
    const select = $('event-filter');
    const options = [...select.options].slice(1);
    const before = options.find((o) => o.value > name) || null;
    select.add(new Option(name, name), before);
  }
  const row = eventRow(name, ts, text, raw);
  if (currentWatch.paused) {
    currentWatch.pending.push(row);
    if (currentWatch.pending.length > MAX_EVENTS) currentWatch.skipped += currentWatch.pending.splice(0, 1).length;
  } else {
    showEvents([row]);
  }
  updateEventCount();
}

function showEvents(rows) {
  const feed = $('feed');
  for (const row of rows) feed.prepend(row);
  while (feed.children.length > MAX_EVENTS) feed.lastElementChild.remove();
}

function updateEventCount() {
  const paused = currentWatch.paused ? ` · paused: ${currentWatch.pending.length + currentWatch.skipped} new` : '';
  $('event-count').textContent = `${count(currentWatch.events)} received${paused}`;
}

function setEventsPaused(paused) {
  currentWatch.paused = paused;
  $('events-pause').setAttribute('aria-pressed', String(paused));
  $('events-pause').textContent = paused ? 'Resume' : 'Pause';
  if (!paused && currentWatch.pending.length) {
    showEvents(currentWatch.pending);
    currentWatch.pending = [];
    currentWatch.skipped = 0;
  }
  updateEventCount();
}

function applyEventFilter() {
  const filter = $('event-filter').value;
  for (const li of $('feed').children) li.hidden = Boolean(filter) && filter !== li.dataset.name;
  for (const li of currentWatch.pending) li.hidden = Boolean(filter) && filter !== li.dataset.name;
}

// -- entering and leaving the room -----------------------------------------------------------------------
function fillTopologies(items) {
  const select = $('topology-select');
  select.replaceChildren(...items.map((t) => new Option(`${t.id}${t.status ? ` [${t.status}]` : ''}`, t.id)));
}

// Everything that was on screen goes: numbers, chart, rows, panels, the watched view, the picker.
function clearRoom() {
  showStats(null);
  histogram.clear();
  logs.search = '';
  logs.position = null;
  $('log-search').value = '';
  setLogsPaused(false);
  clearLogTable();
  for (const kind of Object.keys(FIREHOSES)) $(`${kind}-feed`).replaceChildren();
  for (const id of ['logs-state', 'identities-state', 'campaigns-state', 'orchestrator-state', 'view-state']) showBadge($(id), 'idle');
  currentWatch.target = null;
  clearWatchView();
  $('view').hidden = true;
  $('attacker-search').value = '';
  $('attacker-note').textContent = '';
  $('attacker-results').tBodies[0].replaceChildren();
  $('topology-select').replaceChildren();
  $('room').classList.remove('stale');
}

function showSignIn() {
  $('signin').hidden = false;
  $('signout').hidden = true;
}

// The session is over (`end`, a 401 or 403 on a reconnect): everything stops, and the page says why. What
// was on screen stays, greyed out, so the last picture is not mistaken for a live one.
function endSession(why) {
  if (!room.signedIn) return;
  room.signedIn = false;
  clearInterval(picker.refresh);
  stopStreams();
  $('room').classList.add('stale');
  showSignIn();
  showBadge($('state'), 'signed out');
  notify(END_REASONS[why] || `signed out: ${why}`);
}

// Opens the room on the session cookie: true when it works, false when there is none.
async function enterRoom(justSignedIn) {
  let topologies;
  try {
    topologies = await api('/api/v1/topologies?limit=200');
  } catch (error) {
    if (error.status === 401 && justSignedIn) {
      // the server set the cookie but the browser did not keep it: a Secure cookie over plain HTTP
      showSignIn();
      showBadge($('state'), 'signed out');
      notify(window.isSecureContext
        ? 'the browser refused the session cookie'
        : 'the browser refused the session cookie: open the dashboard over HTTPS '
          + '(or run the server with LURESTREAM_COOKIE_SECURE=false for plain-HTTP development)');
    } else if (error.status === 401) {
      showSignIn();
      showBadge($('state'), 'idle', 'signed out');
    } else if (error.status === 403) {
      showSignIn();
      showBadge($('state'), 'signed out');
      notify(END_REASONS.forbidden);
    } else {
      showSignIn();
      notify(error.message);
    }
    return false;
  }
  clearRoom();
  room.signedIn = true;
  notify('');
  $('signin').hidden = true;
  $('signout').hidden = false;
  $('room').hidden = false;
  fillTopologies(topologies.items);
  showBadge($('state'), 'connecting');
  openLogFeed(null);
  for (const kind of Object.keys(FIREHOSES)) openFirehose(kind);
  searchAttackers('');
  // the picker is sorted by last activity: keep it current while nobody is typing in it
  picker.refresh = setInterval(() => {
    if (!document.hidden && $('attacker-search').value.trim() === picker.query) searchAttackers(picker.query);
  }, PICKER_REFRESH_MS);
  return true;
}

async function signIn(token) {
  notify('');
  showBadge($('state'), 'connecting', 'signing in');
  try {
    await api('/api/v1/auth/sse-session', {method: 'POST', headers: {Authorization: `Bearer ${token}`}});
  } catch (error) {
    const why = {401: 'the token was refused', 403: 'this account may not watch streams', 429: 'too many sign-ins, wait a minute'};
    showSignIn();
    showBadge($('state'), 'signed out');
    notify(`sign-in failed: ${why[error.status] || error.message}`);
    return;
  }
  await enterRoom(true);
}

// The user signs out: every stream closes, the screen is cleared, the session is deleted on the server.
async function signOut() {
  room.signedIn = false;
  clearInterval(picker.refresh);
  if (picker.controller) picker.controller.abort();
  stopStreams();
  clearRoom();
  $('room').hidden = true;
  showSignIn();
  try {
    await api('/api/v1/auth/sse-session', {method: 'DELETE'});
    showBadge($('state'), 'idle', 'signed out');
    notify('');
  } catch (error) {
    notify(`sign-out failed: ${error.message}`);
  }
}

// A browser opens at most six HTTP/1.1 connections to one host, for all its tabs together, and this page
// holds five open. So a tab that stays hidden lets its streams go, and takes them up again where they
// left off (Last-Event-ID) when it shows: a second tab — or the sign-in of another — is not starved.
function onVisibility() {
  clearTimeout(room.hiddenTimer);
  if (document.hidden) {
    room.hiddenTimer = setTimeout(() => {
      if (!room.signedIn) return;
      room.suspended = [...room.streams.values()].filter((s) => s.running);
      room.suspended.forEach((s) => s.suspend());
    }, HIDDEN_RELEASE_MS);
  } else if (room.suspended.length) {
    const streams = room.suspended;
    room.suspended = [];
    if (room.signedIn) streams.forEach((s) => s.start());
  }
}

function tick() {
  $('clock').textContent = `${isoTime(new Date())}`;
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
  $('signout').addEventListener('click', signOut);
  $('log-search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    setLogSearch($('log-search').value);
  });
  $('logs-pause').addEventListener('click', () => setLogsPaused(!logs.paused));
  $('events-pause').addEventListener('click', () => setEventsPaused(!currentWatch.paused));
  $('event-filter').addEventListener('change', applyEventFilter);
  $('close-view').addEventListener('click', closeWatch);
  $('watch-topology').addEventListener('click', () => watch('topology', $('topology-select').value));
  $('attacker-search').addEventListener('input', () => {
    clearTimeout(picker.timer);  // search as the user types, once they pause
    picker.timer = setTimeout(() => searchAttackers($('attacker-search').value.trim()), 250);
  });
  $('attacker-results').addEventListener('click', (e) => {
    const tr = e.target.closest('tr[data-uuid]');
    if (tr) watch('attacker', tr.dataset.uuid, tr.querySelector('button')?.textContent || tr.dataset.uuid);
  });
  // an attacker's ip anywhere in the overview (a log row, an orchestrator event) opens its stream
  for (const id of ['logs', 'firehoses']) {
    $(id).addEventListener('click', (e) => {
      const button = e.target.closest('button.attacker');
      if (button) openAttackerByIp(button.dataset.ip);
    });
  }
  document.addEventListener('visibilitychange', onVisibility);
  tick();
  setInterval(tick, 1000);
  if (fromHash) signIn(fromHash);
  else enterRoom(false);  // a session from before (the cookie outlives a reload) signs in by itself
}

start();
