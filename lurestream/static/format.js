// Turning attacker-controlled values into short, readable text. Everything here returns strings for
// textContent: nothing on this page is ever parsed as HTML.
'use strict';

const MAX_VALUE = 96;     // characters of one value in a summary
const MAX_SUMMARY = 240;  // characters of a whole summary line

// A Date from what the server sends: ISO-8601 text (stored dates), or epoch seconds (envelope `ts`).
export function toDate(value) {
  if (value === null || value === undefined || value === '') return null;
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(String(value));
  return Number.isNaN(date.getTime()) ? null : date;
}

// Every time on the page: ISO-8601 in UTC to the second, e.g. 2026-12-05T12:04:07Z — the date and the zone
// always shown, so a screenshot or a copied row means the same thing in any time zone.
export function isoTime(value) {
  const date = value instanceof Date ? value : toDate(value);
  if (!date) return value === null || value === undefined ? '' : String(value);
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

// "12 s ago", "5 min ago", "3 h ago", "4 d ago": for the picker's last-seen column, beside the exact time.
export function ago(value, now = Date.now()) {
  const date = toDate(value);
  if (!date) return '';
  const s = Math.max(0, Math.round((now - date.getTime()) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

const numberFormat = new Intl.NumberFormat('en');

export function count(n) {
  return typeof n === 'number' && Number.isFinite(n) ? numberFormat.format(n) : '–';
}

// One value as short text: arrays by their length, objects as compact JSON, long text cut.
export function short(value, max = MAX_VALUE) {
  let text;
  if (value === null || value === undefined) text = '';
  else if (Array.isArray(value)) text = `${value.length} item${value.length === 1 ? '' : 's'}`;
  else if (typeof value === 'object') text = JSON.stringify(value);
  else text = String(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

// "key: value · key: value" of the keys asked for that the object has (or its first few keys), cut to
// one line. The full object is always one click away (the event's details, or the row's title).
export function summarize(object, keys = null, skip = []) {
  if (object === null || typeof object !== 'object') return short(object, MAX_SUMMARY);
  const names = (keys || Object.keys(object)).filter((k) => k in object && !skip.includes(k));
  const parts = [];
  for (const name of names.slice(0, keys ? names.length : 6)) {
    const value = object[name];
    if (value === null || value === undefined || value === '') continue;
    parts.push(Array.isArray(value) ? `${name}: ${value.length}` : `${name}: ${short(value)}`);
  }
  const text = parts.join(' · ');
  return text.length > MAX_SUMMARY ? `${text.slice(0, MAX_SUMMARY - 1)}…` : text;
}

// The whole object, indented, for a details pane.
export function pretty(value) {
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

// What one attacker or topology event says, in words (the raw payload stays in the row's details).
export function describeEvent(name, event) {
  const p = event && typeof event.payload === 'object' && event.payload !== null ? event.payload : {};
  if (name === 'observation') {
    const primitive = p.primitive ?? String(event.topic || '').replace(/^attacker\.observation\./, '');
    const extra = [p.confidence !== undefined ? `confidence ${short(p.confidence)}` : '', short(p.source)];
    return [`${short(primitive)} = ${short(p.value)}`, ...extra.filter(Boolean)].join(' · ');
  }
  if (name === 'fingerprint.rotated') return `${short(p.primitive ?? '')}: ${short(p.old)} → ${short(p.new)}`;
  if (name === 'attacker.scored') return `score ${short(p.score)}${p.attacker_ip ? ` · ${short(p.attacker_ip)}` : ''}`;
  if (name.startsWith('attribution.')) return summarize(p, ['identity_uuid', 'state', 'reason']);
  if (name.startsWith('mutation.')) {
    const id = p.id ?? p.mutation_id ?? '';
    return `${short(id)} ${short(p.op ?? '')} → ${short(p.state ?? name.slice('mutation.'.length))}`
      + (p.reason ? ` · ${short(p.reason)}` : '');
  }
  if (name === 'status') return `status ${short(p.status)}`;
  return summarize(p);
}
