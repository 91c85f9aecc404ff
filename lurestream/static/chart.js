// The log feed's histogram as an SVG bar chart, drawn with DOM calls (no library, no inline style: the
// Content-Security-Policy allows neither, and the colours live in dashboard.css). It shows the server's
// histograms as they come (at open, then every LOG_STATS_SECONDS while rows arrive): counting rows here
// too would count a resume's replayed rows twice, since the histogram sent at open already has them.
'use strict';

import {count, isoTime} from './format.js';

const SVG = 'http://www.w3.org/2000/svg';
const HEIGHT = 150;
const MARGIN = {top: 10, right: 8, bottom: 22, left: 44};
const MAX_BARS = 72;             // the newest buckets shown; older ones scroll off the left
const MIN_BARS = 12;             // a short history still gets a readable width per bar
const DEFAULT_WIDTH_MS = 15 * 60000;  // LOG_HISTOGRAM_MINUTES' default, until two buckets tell the width

function node(name, attributes = {}, text = null) {
  const el = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, String(value));
  if (text !== null) el.textContent = text;
  return el;
}

function hhmm(ms) {
  return isoTime(new Date(ms)).slice(11, 16);
}

export class Histogram {
  constructor(svg, caption) {
    this.svg = svg;
    this.caption = caption;
    this.buckets = new Map();  // bucket start (ms since the epoch) → count
    this.widthMs = null;       // the buckets' width, read off the server's data
    this.truncated = false;
    this.pending = false;
    // Redraw at the new width when the layout changes (window resized, panel reflowed).
    new ResizeObserver(() => this.redraw()).observe(svg);
  }

  // The server's histogram replaces what was counted locally (it counts the same rows, exactly).
  set(data, truncated = false) {
    this.truncated = Boolean(truncated);
    this.buckets = new Map();
    const starts = [];
    for (const bucket of Array.isArray(data) ? data : []) {
      const start = Date.parse(bucket.time);
      if (Number.isFinite(start) && Number.isFinite(bucket.count)) {
        this.buckets.set(start, bucket.count);
        starts.push(start);
      }
    }
    starts.sort((a, b) => a - b);
    for (let i = 1; i < starts.length; i++) {
      const gap = starts[i] - starts[i - 1];
      if (gap > 0 && (this.widthMs === null || gap < this.widthMs)) this.widthMs = gap;
    }
    this.redraw();
  }

  clear() {
    this.buckets = new Map();
    this.truncated = false;
    this.svg.replaceChildren();
    this.caption.textContent = '';
  }

  // At most one drawing per animation frame, however many rows a burst brings.
  redraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  draw() {
    const width = Math.max(this.svg.clientWidth || 0, 200);
    this.svg.setAttribute('viewBox', `0 0 ${width} ${HEIGHT}`);
    this.svg.setAttribute('height', HEIGHT);
    this.svg.replaceChildren();
    if (this.truncated) {
      this.caption.textContent = 'not kept for this search (too many distinct searches on this server)';
      return;
    }
    if (!this.buckets.size) {
      this.caption.textContent = 'no matching lines yet';
      return;
    }
    const step = this.widthMs || DEFAULT_WIDTH_MS;
    const starts = [...this.buckets.keys()].sort((a, b) => a - b);
    const end = Math.max(starts[starts.length - 1], Math.floor(Date.now() / step) * step);
    const first = Math.max(end - (MAX_BARS - 1) * step, Math.min(starts[0], end - (MIN_BARS - 1) * step));
    const slots = Math.round((end - first) / step) + 1;
    let peak = 0;
    let shown = 0;
    for (let t = first; t <= end; t += step) {
      const n = this.buckets.get(t) || 0;
      peak = Math.max(peak, n);
      shown += n;
    }
    const plotW = width - MARGIN.left - MARGIN.right;
    const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    const barW = plotW / slots;
    const y = (n) => MARGIN.top + plotH - (peak ? (n / peak) * plotH : 0);

    // y axis: the peak and zero, with a faint line at each
    for (const n of [peak, 0]) {
      this.svg.append(
        node('line', {class: 'grid', x1: MARGIN.left, x2: width - MARGIN.right, y1: y(n), y2: y(n)}),
        node('text', {class: 'axis', x: MARGIN.left - 6, y: y(n) + 4, 'text-anchor': 'end'}, count(n)),
      );
    }
    // bars, each with its exact bucket and count on hover
    for (let i = 0, t = first; t <= end; i++, t += step) {
      const n = this.buckets.get(t) || 0;
      if (!n) continue;
      const bar = node('rect', {
        class: 'bar', x: MARGIN.left + i * barW + 0.5, y: y(n), width: Math.max(barW - 1, 1), height: y(0) - y(n),
      });
      bar.append(node('title', {}, `${isoTime(new Date(t))} + ${step / 60000} min: ${count(n)} lines`));
      this.svg.append(bar);
    }
    // x axis: about six times, the first with its date
    const every = Math.max(1, Math.ceil(slots / 6));
    for (let i = 0; i < slots; i += every) {
      const t = first + i * step;
      const label = i === 0 ? `${isoTime(new Date(t)).slice(0, 10)} ${hhmm(t)}` : hhmm(t);
      this.svg.append(node('text', {class: 'axis', x: MARGIN.left + i * barW, y: HEIGHT - 6}, label));
    }
    const hours = (slots * step) / 3600000;
    const span = hours >= 1 ? `${Number(hours.toFixed(1))} h` : `${Math.round(hours * 60)} min`;
    this.caption.textContent = `last ${span} · ${step / 60000}-min buckets (UTC) · ${count(shown)} lines`;
  }
}
