// One server-sent-events stream, read with fetch() — the reconnect policy of protocol §12 and §16, kept here
// once for every stream the page opens (the log feed, three firehoses, one attacker or topology).
//
// Why fetch() and not EventSource: EventSource only delivers the event names it listens for, and topology
// tails are open-ended; fetch() sees every frame. The session cookie goes along (same origin), the URL is
// the bare path, and the resume point travels in the Last-Event-ID header, never in the URL.
'use strict';

const MAX_DELAY_MS = 30000;  // the back-off's ceiling
const STALL_MS = 45000;      // no byte for three keepalive periods (15 s each): the connection is dead
const FLASH_MS = 3000;       // "resumed · N replayed" / "snapshot rebuilt" show this long, then "live"

// Frame names that are the stream's own (protocol §2); everything else is an event for the page.
const OPENINGS = new Set(['snapshot', 'resumed']);

class HttpError extends Error {
  constructor(status, detail, retryAfterMs) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
    this.retryAfterMs = retryAfterMs;
  }
}

// One frame's fields. lurestream ends lines with \n; a comment line (": keepalive") has no field.
export function parseFrame(block) {
  const frame = {event: null, data: null, id: null, retry: null};
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') frame.event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') frame.id = value;
    else if (field === 'retry' && /^\d+$/.test(value)) frame.retry = Number(value);
  }
  if (data.length) frame.data = data.join('\n');
  return frame;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, {once: true});
  });
}

// A stream that reconnects until stopped.
//   label     names it in the console and on its badge
//   path      the bare path (plus a search), no credential
//   on.event(name, data, id)   every frame with data that is not the stream's own
//   on.state(state, detail)    connecting | live | resumed | snapshot rebuilt | reconnecting | waiting |
//                              error | paused | stopped — what its badge shows
//   on.opening(name, data)     the stream is open: a snapshot, a resume, or (the log feed) its first frame
//   on.signedOut(why)          `event: end`, or a 401/403: the session is over, the page stops everything
//   openOn                     the frame names that mean "open" (snapshot/resumed; the log feed: any)
export class EventStream {
  constructor(label, path, on, {openOn = null} = {}) {
    this.label = label;
    this.path = path;
    this.on = on;
    this.openOn = openOn;
    this.lastId = null;    // the last id seen: sent back as Last-Event-ID on every reconnect
    this.retryMs = 3000;   // the server's retry: hint (EventSource's default until one arrives)
    this.failures = 0;     // connects in a row that got no stream; 0 again once one opens
    this.opened = false;   // it has been open once: a connect after that is a reconnect
    this.state = 'idle';
    this.controller = null;
    this.flashTimer = null;
  }

  // Connects (again), from lastId when there is one.
  start() {
    this.halt();
    const controller = new AbortController();
    this.controller = controller;
    this.loop(controller.signal);
  }

  // Closes the connection for good (sign-out, another attacker picked).
  stop() {
    this.halt();
    this.setState('stopped');
  }

  // Closes the connection but keeps the resume point: start() picks up where it left off.
  suspend() {
    this.halt();
    this.setState('paused', 'tab hidden');
  }

  halt() {
    clearTimeout(this.flashTimer);
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  get running() {
    return this.controller !== null;
  }

  setState(state, detail) {
    clearTimeout(this.flashTimer);
    this.state = state;
    this.on.state(state, detail);
  }

  // Shows `state · detail` for a moment, then `live` (unless something else happened meanwhile).
  flash(state, detail) {
    this.setState(state, detail);
    this.flashTimer = setTimeout(() => this.setState('live'), FLASH_MS);
  }

  async loop(signal) {
    while (!signal.aborted) {
      let outcome;
      try {
        outcome = await this.once(signal);
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof HttpError) outcome = this.refused(error);
        else outcome = {};  // the network, a server restarting or draining: try again
      }
      if (signal.aborted) return;
      if (outcome.signedOut) {
        this.halt();
        this.setState('stopped');
        this.on.signedOut(outcome.signedOut);
        return;
      }
      if (outcome.fatal) {  // 404, or a 400 (a search the server refuses): retrying cannot help
        this.halt();
        this.setState('error', outcome.fatal);
        return;
      }
      let delay;
      if (outcome.waitMs !== undefined) {  // the server said how long: wait that, no more
        delay = outcome.waitMs;
        this.failures += 1;
      } else {
        delay = this.backoff(outcome.atLeastMs || 0);
      }
      const seconds = `${(delay / 1000).toFixed(1)} s`;
      if (outcome.waiting) this.setState('waiting', `${outcome.why} · retry in ${seconds}`);
      else this.setState('reconnecting', `in ${seconds}`);
      const why = outcome.waiting ? ` (${outcome.unavailable ? 'the server asks to wait' : 'refused'}: ${outcome.why})` : '';
      console.info(`lurestream: reconnecting in ${delay} ms (attempt ${this.failures}) [${this.label}]${why}`);
      await sleep(delay, signal);
    }
  }

  // The wait before the next connect: the server's hint doubling with each failed connect in a row (reset
  // once a stream opens), at most MAX_DELAY_MS, jittered ±25% so many tabs do not come back at once.
  backoff(atLeastMs) {
    const base = Math.min(Math.max(this.retryMs, atLeastMs) * 2 ** this.failures, MAX_DELAY_MS);
    this.failures += 1;
    return Math.round(base * (0.75 + Math.random() / 2));
  }

  // What a refused connect means (protocol §12): 401/403 end the session, 404/400 end this stream,
  // anything else (429 too many streams, 503 the store) is waited out.
  refused(error) {
    if (error.status === 401) return {signedOut: 'unauthorized'};
    if (error.status === 403) return {signedOut: 'forbidden'};
    if (error.status === 404) return {fatal: 'not found'};
    if (error.status === 400) return {fatal: error.detail};
    const why = error.status === 429 ? error.detail : `${error.status} ${error.detail}`;
    return {waiting: true, why, atLeastMs: error.retryAfterMs};
  }

  // Reads one response to its end: {} to reconnect, or why not to.
  async once(signal) {
    this.setState(this.opened ? 'reconnecting' : 'connecting');
    const headers = {Accept: 'text/event-stream'};
    if (this.lastId !== null) headers['Last-Event-ID'] = this.lastId;
    // This connection's own abort: the stream's stop(), or the stall watchdog below.
    const connection = new AbortController();
    const abort = () => connection.abort();
    signal.addEventListener('abort', abort, {once: true});
    let watchdog = setTimeout(abort, STALL_MS);
    try {
      const response = await fetch(this.path, {
        headers, credentials: 'same-origin', cache: 'no-store', signal: connection.signal,
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        const after = Number(response.headers.get('Retry-After'));
        throw new HttpError(response.status, body.detail || response.statusText, after > 0 ? after * 1000 : 0);
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return {};  // the server closed it (drain, restart, lagging): reconnect
        clearTimeout(watchdog);
        watchdog = setTimeout(abort, STALL_MS);
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const frame = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          const outcome = this.frame(frame);
          if (outcome) {
            reader.cancel().catch(() => {});
            return outcome;
          }
        }
      }
    } finally {
      clearTimeout(watchdog);
      signal.removeEventListener('abort', abort);
    }
  }

  // One frame: null to read on, or an outcome that ends this response.
  frame(frame) {
    if (frame.id !== null) this.lastId = frame.id;
    if (frame.retry !== null) this.retryMs = frame.retry;
    if (frame.data === null) {  // a keepalive, perhaps with the stream's position
      if (frame.id !== null) this.on.event(null, null, frame.id);
      return null;
    }
    const name = frame.event || 'message';
    let data;
    try {
      data = JSON.parse(frame.data);
    } catch {
      return null;  // lurestream never sends one; a proxy's page would not be JSON: ignore it
    }
    if (name === 'end') return {signedOut: String(data.reason ?? 'ended')};
    if (name === 'unavailable') {  // "retry later" (protocol §16): the response ends; wait as told
      return {waiting: true, unavailable: true, why: String(data.detail), waitMs: Number(data.retry_ms) || this.retryMs};
    }
    if (name === 'error') {  // the server interrupted the stream; it closes it, and we reconnect
      this.setState('error', data.message);
      return null;
    }
    if (this.openOn ? this.openOn(name, data) : OPENINGS.has(name)) {
      this.failures = 0;
      this.opened = true;
      if (name === 'resumed') this.flash('resumed', `${data.replayed} replayed`);
      else if (name === 'snapshot' && data.resumed === false) this.flash('snapshot rebuilt');
      else if (this.state !== 'live') this.setState('live');
    }
    this.on.event(name, data, frame.id);
    return null;
  }
}
