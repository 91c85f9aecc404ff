// One npm `eventsource` client (it follows the WHATWG spec, as a browser's EventSource does) for
// tests/test_proxies.py. It prints one JSON line per event it delivers and per state change:
//   {"type": "<event name>", "id": "<lastEventId>", "data": "<data>"}
//   {"type": "open", "readyState": 1}   {"type": "error", "readyState": 0|2, "code": <status or null>, "message": ...}
// Its reconnects are its own (retry:, Last-Event-ID). The JWT goes in an Authorization header on every
// (re)connect, through the `fetch` option; the connection leaves from the local address given, so a proxy
// sees each client at an address of its own. It stops when its standard input closes.
//
// usage: node sse-client.mjs <url> <local address> <bearer JWT> <CA certificate file> <event name>...
import { readFileSync } from 'node:fs';
import { EventSource } from 'eventsource';
import { Agent, fetch } from 'undici';

const [url, localAddress, token, caFile, ...names] = process.argv.slice(2);
const dispatcher = new Agent({ localAddress, connect: { ca: readFileSync(caFile) } });
const emit = (record) => process.stdout.write(`${JSON.stringify(record)}\n`);

const es = new EventSource(url, {
  fetch: (input, init) =>
    fetch(input, { ...init, dispatcher, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
});
for (const name of names) es.addEventListener(name, (e) => emit({ type: name, id: e.lastEventId, data: e.data }));
es.addEventListener('open', () => emit({ type: 'open', readyState: es.readyState }));
es.addEventListener('error', (e) =>
  emit({ type: 'error', readyState: es.readyState, code: e.code ?? null, message: e.message ?? null }),
);

process.stdin.resume();
process.stdin.on('end', () => {
  es.close();
  process.exit(0);
});
