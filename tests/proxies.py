"""Reverse proxies in front of ``lurestream serve`` processes, and the clients that reach them, for
tests/test_proxies.py.

Every configuration docs/operations.md shows ("Behind a reverse proxy": nginx, HAProxy, Caddy) is a
template here: ``@NAME@`` placeholders rendered with the docs' example values give the docs' block
exactly (the test compares them), rendered with a test's addresses, ports and files give the
configuration the test runs. The tests wrap it only in what a distribution's main file holds (nginx's
``events``/``http``, HAProxy's ``global``, Caddy's global options): see ``Proxy.write_config``.

The clients: npm ``eventsource`` (``tests/node``, installed by :func:`node_clients_dir` into a cache
outside the repository) and a native ``EventSource`` in headless Chromium (``CHROMIUM_CLIENTS``).
Both treat any answer but a 200 ``text/event-stream`` as final; the recipes exist so that none comes.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lurestream import eventids
from lurestream.localservices import wait_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"
NODE_SOURCES = pathlib.Path(__file__).resolve().parent / "node"
NODE_CACHE = pathlib.Path(os.environ.get("LURESTREAM_TEST_NODE_CACHE", "~/.cache/lurestream-tests/node")).expanduser()

# Every stream path (protocol §1, §14, §15): the recipes answer these, and only these, with "reconnect later"
# when no server can take them. One regular expression, the same in every recipe.
STREAMS = (
    r"^/api/v1/((attackers|topologies)/[^/]+/events|identities/events|campaigns/events"
    r"|orchestrator/events/stream|stream)$"
)
STREAM_PATHS = (
    "/api/v1/attackers/a-1/events",
    "/api/v1/topologies/topo-1/events",
    "/api/v1/identities/events",
    "/api/v1/campaigns/events",
    "/api/v1/orchestrator/events/stream",
    "/api/v1/stream",
)
# What a client of a stream path gets when no server can answer: 200, an SSE body asking it to reconnect.
RETRY_MS = 2000
UNAVAILABLE = {"status": 503, "detail": "No server available"}
UNAVAILABLE_BODY = (
    f"retry: {RETRY_MS}\n\nevent: unavailable\ndata: {json.dumps(UNAVAILABLE, separators=(',', ':'))}\n\n"
)

NGINX = r"""upstream lurestream {
    least_conn;                          # streams are long: balance on open connections
    server @SERVER_1@ max_fails=0;   # never marked failed: a refused connect goes on to the
    server @SERVER_2@ max_fails=0;   # next server, and a restarted server is used at once
}

server {
    listen @LISTEN@ ssl http2;             # HTTP/2 to browsers (6 HTTP/1.1 connections per origin)
    server_name events.example.org;
    ssl_certificate @CERTIFICATE@;
    ssl_certificate_key @KEY@;
    access_log @ACCESS_LOG@;   # mind ?token= in URLs: prefer sessions or tickets

    proxy_http_version 1.1;                                        # HTTP/1.1 to lurestream
    proxy_set_header Host $host;
    proxy_set_header X-Real-IP $remote_addr;                       # replaces what the client sent
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;   # appends: the last hop is ours
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_connect_timeout 2s;
    proxy_next_upstream error timeout http_502 http_503;   # the next server, while no byte was sent

    # the event streams: unbuffered, long-lived, and never an error an EventSource gives up on
    location ~ @STREAMS@ {
        proxy_pass http://lurestream;
        proxy_buffering off;          # deliver each frame at once
        proxy_cache off;
        proxy_read_timeout 1h;        # keepalives flow every LURESTREAM_KEEPALIVE_SECONDS (15)
        proxy_send_timeout 1h;
        proxy_intercept_errors on;
        error_page 502 503 504 = @stream_unavailable;
    }
    location @stream_unavailable {    # no server could take it: "reconnect in 2 s", as a 200 stream
        default_type text/event-stream;
        add_header Cache-Control no-store always;
        return 200 'retry: 2000\n\nevent: unavailable\ndata: {"status":503,"detail":"No server available"}\n\n';
    }
    location = /metrics { deny all; }   # scrape the servers directly, not through the edge
    location / {                        # the rest of the API and the dashboard page: errors as they are
        proxy_pass http://lurestream;
    }
}
"""

HAPROXY = r"""defaults
    mode http                 # HTTP, not TCP: TLS and h2 end here, lurestream gets HTTP/1.1
    log global
    option httplog
    timeout connect 2s
    timeout client 1h         # streams are long-lived; keepalives flow every 15 s
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 10s
    timeout http-keep-alive 60s
    option http-server-close  # a connection to lurestream carries one request (see below)

frontend events
    bind @BIND@ ssl crt @PEM@ alpn h2,http/1.1
    option forwardfor                         # appends the client's address to X-Forwarded-For
    http-request set-header X-Real-IP %[src]  # replaces what the client sent
    http-request deny if { path /metrics }    # scrape the servers directly, not through the edge
    use_backend streams if { path_reg @STREAMS@ }
    default_backend lurestream

backend lurestream            # the rest of the API and the dashboard page: errors as they are
    balance leastconn
    option httpchk GET /readyz                    # a draining server turns 503 at once
    http-check expect status 200
    default-server check inter 1s fall 2 rise 2   # fall 2: ride out a NATS reconnect
    retries 3
    option redispatch 1                           # each retry goes to another server
    retry-on conn-failure empty-response 503
    server s1 @SERVER_1@
    server s2 @SERVER_2@

backend streams               # the event streams: never an error an EventSource gives up on
    balance leastconn         # streams are long: balance on open connections
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response 503
    errorfile 502 @ERRORFILE@
    errorfile 503 @ERRORFILE@
    errorfile 504 @ERRORFILE@
    http-response return errorfile @ERRORFILE@ if { status 502:504 }
    server s1 @SERVER_1@ track lurestream/s1
    server s2 @SERVER_2@ track lurestream/s2
"""

HAPROXY_ERRORFILE = """HTTP/1.1 200 OK
Content-Type: text/event-stream
Cache-Control: no-store

retry: 2000

event: unavailable
data: {"status":503,"detail":"No server available"}

"""

CADDY = """(lurestream) {
	lb_policy least_conn               # streams are long: balance on open connections
	lb_try_duration 5s                 # no server took it: try again, for up to 5 s
	lb_try_interval 250ms
	health_uri /readyz                 # a draining server turns 503 at once
	health_interval 1s
	health_timeout 2s
	header_up X-Real-IP {remote_host}  # replaces what the client sent
	transport http {
		dial_timeout 2s
		keepalive off                  # a connection to lurestream carries one request (see below)
	}
}

(stream_unavailable) {
	header Content-Type text/event-stream
	header Cache-Control no-store
	respond `retry: 2000

event: unavailable
data: {"status":503,"detail":"No server available"}

` 200
}

@SITE@ {
	tls @CERTIFICATE@ @KEY@   # or leave it out: Caddy gets a certificate itself
	log {
		output file @ACCESS_LOG@
	}
	@metrics path /metrics
	respond @metrics 403               # scrape the servers directly, not through the edge

	@streams path_regexp @STREAMS@
	handle @streams {                  # the event streams: never an error an EventSource gives up on
		reverse_proxy @SERVER_1@ @SERVER_2@ {
			import lurestream
			@unavailable status 502 503 504
			handle_response @unavailable {
				import stream_unavailable
			}
		}
	}
	handle {                           # the rest of the API and the dashboard page: errors as they are
		reverse_proxy @SERVER_1@ @SERVER_2@ {
			import lurestream
		}
	}
	handle_errors {                    # Caddy's own 502/503: no server answered within lb_try_duration
		@stream_errors path_regexp @STREAMS@
		handle @stream_errors {
			import stream_unavailable
		}
	}
}
"""


@dataclass(frozen=True)
class Block:
    """One fenced block of the docs' "Behind a reverse proxy" subsection ``heading``."""

    fence: str  # the code fence's language
    template: str


@dataclass(frozen=True)
class Recipe:
    """One proxy's configuration as docs/operations.md shows it, and how a test runs it."""

    name: str  # the test id
    binary: str
    heading: str  # "### <heading>" in the docs
    blocks: tuple[Block, ...]  # the configuration first, then the files it names, in the docs' order
    docs_values: Mapping[str, str]

    def docs_text(self) -> list[tuple[str, str]]:
        """(fence, text) of each block as the docs must show it."""
        return [(b.fence, render(b.template, self.docs_values)) for b in self.blocks]


DOCS_SERVERS = {"SERVER_1": "10.0.0.11:8700", "SERVER_2": "10.0.0.12:8700", "STREAMS": STREAMS}

RECIPES = {
    "nginx": Recipe(
        "nginx",
        "nginx",
        "nginx",
        (Block("nginx", NGINX),),
        {
            **DOCS_SERVERS,
            "LISTEN": "443",
            "CERTIFICATE": "/etc/nginx/certs/events.example.org.crt",
            "KEY": "/etc/nginx/certs/events.example.org.key",
            "ACCESS_LOG": "/var/log/nginx/lurestream.log",
        },
    ),
    "haproxy": Recipe(
        "haproxy",
        "haproxy",
        "HAProxy",
        (Block("haproxy", HAPROXY), Block("http", HAPROXY_ERRORFILE)),
        {
            **DOCS_SERVERS,
            "BIND": ":443",
            "PEM": "/etc/haproxy/certs/events.example.org.pem",
            "ERRORFILE": "/etc/haproxy/errors/stream-unavailable.http",
        },
    ),
    "caddy": Recipe(
        "caddy",
        "caddy",
        "Caddy",
        (Block("caddyfile", CADDY),),
        {
            **DOCS_SERVERS,
            "SITE": "events.example.org",
            "CERTIFICATE": "/etc/caddy/certs/events.example.org.crt",
            "KEY": "/etc/caddy/certs/events.example.org.key",
            "ACCESS_LOG": "/var/log/caddy/lurestream.log",
        },
    ),
}


def find_binary(name: str) -> str | None:
    """``name`` on PATH, or in /usr/sbin (where Debian puts nginx and haproxy; not on a user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def render(template: str, values: Mapping[str, str]) -> str:
    """``template`` with every ``@NAME@`` replaced by ``values[NAME]`` (a name without a value: KeyError)."""
    return re.sub(r"@([A-Z_0-9]+)@", lambda m: values[m.group(1)], template)


def docs_blocks(heading: str, path: pathlib.Path = OPERATIONS) -> list[tuple[str, str]]:
    """(fence, text) of every fenced block under ``### <heading>`` of "## Behind a reverse proxy"."""
    text = path.read_text()
    section = re.search(r"^## Behind a reverse proxy\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, f"{path.name} has no '## Behind a reverse proxy' section"
    sub = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^### |\Z)", section.group(1), re.S | re.M)
    assert sub, f"'Behind a reverse proxy' has no '### {heading}' subsection"
    return re.findall(r"^```(\w+)\n(.*?)^```$", sub.group(1), re.S | re.M)


# -- TLS ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1: the proxies serve TLS and HTTP/2 as the docs do."""

    cert: pathlib.Path
    key: pathlib.Path
    pem: pathlib.Path  # certificate and key in one file (HAProxy)


def make_certificate(directory: pathlib.Path) -> Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = Certificate(directory / "proxy.crt", directory / "proxy.key", directory / "proxy.pem")
    paths.cert.write_bytes(cert_pem)
    paths.key.write_bytes(key_pem)
    paths.pem.write_bytes(cert_pem + key_pem)
    for path in (paths.key, paths.pem):
        path.chmod(0o600)
    return paths


def https_get(
    url: str,
    cert: Certificate,
    headers: Mapping[str, str] | None = None,
    source: str = "127.0.0.1",
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET over HTTP/1.1 that trusts ``cert``, sent from the local address
    ``source``."""
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=str(cert.cert))
    conn = http.client.HTTPSConnection(
        parts.hostname or "", parts.port, timeout=timeout, context=context, source_address=(source, 0)
    )
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# -- the proxies -------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL us when the test process dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the fixtures' clean-up still stops everything
        pass


class Proxy:
    """``recipe``'s configuration, rendered for ``backends`` (local ports) and run on ``port``."""

    def __init__(
        self, recipe: Recipe, workdir: pathlib.Path, port: int, backends: list[int], cert: Certificate
    ) -> None:
        self.recipe = recipe
        self.binary = find_binary(recipe.binary) or recipe.binary
        self.workdir = workdir
        self.port = port
        self.backends = backends
        self.cert = cert
        self.admin_port = 0  # Caddy's admin API (the test reads its upstreams' health there)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{recipe.name}.log"
        self.access_log = workdir / f"{recipe.name}-access.log"
        self.stats_socket = workdir / "haproxy.sock"
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def values(self) -> dict[str, str]:
        return {
            "SERVER_1": f"127.0.0.1:{self.backends[0]}",
            "SERVER_2": f"127.0.0.1:{self.backends[1]}",
            "STREAMS": STREAMS,
            "LISTEN": f"127.0.0.1:{self.port}",
            "BIND": f"127.0.0.1:{self.port}",
            "SITE": f"https://127.0.0.1:{self.port}",
            "CERTIFICATE": str(self.cert.cert),
            "KEY": str(self.cert.key),
            "PEM": str(self.cert.pem),
            "ACCESS_LOG": str(self.access_log),
            "ERRORFILE": str(self.workdir / "stream-unavailable.http"),
        }

    def write_config(self) -> list[str]:
        """Write the configuration (and the files it names); returns the command that runs it."""
        values = self.values()
        name, work = self.recipe.name, self.workdir
        config = render(self.recipe.blocks[0].template, values)
        if name == "nginx":
            temp = "\n".join(
                f"    {kind}_temp_path {work / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            path = work / "nginx.conf"
            path.write_text(
                f"daemon off;\nworker_processes 1;\npid {work / 'nginx.pid'};\nerror_log {self.log_path} info;\n"
                f"events {{ worker_connections 1024; }}\nhttp {{\n{temp}\n{config}}}\n"
            )
            return [self.binary, "-p", str(work), "-c", str(path), "-e", str(self.log_path)]
        if name == "haproxy":
            (work / "stream-unavailable.http").write_text(render(HAPROXY_ERRORFILE, values))
            path = work / "haproxy.cfg"
            path.write_text(
                f"global\n    stats socket {self.stats_socket} mode 600 level admin\n"
                f"    log stderr format raw local0\n\n{config}"
            )
            return [self.binary, "-db", "-f", str(path)]
        if name == "caddy":
            from lurestream.localservices import free_port

            self.admin_port = free_port()
            path = work / "Caddyfile"
            path.write_text(
                f"{{\n\tadmin 127.0.0.1:{self.admin_port}\n\tauto_https disable_redirects\n"
                f"\tstorage file_system {work / 'caddy-data'}\n}}\n\n{config}"
            )
            return [self.binary, "run", "--config", str(path), "--adapter", "caddyfile"]
        raise ValueError(name)

    def start(self, timeout: float = 20.0) -> Proxy:
        command = self.write_config()
        env = dict(
            os.environ, HOME=str(self.workdir), XDG_CONFIG_HOME=str(self.workdir), XDG_DATA_HOME=str(self.workdir)
        )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
        try:
            wait_port(self.port, timeout, self.proc, self.recipe.name)
        except Exception as exc:
            raise AssertionError(f"{self.recipe.name} did not start: {exc}\n{self.log()}") from None
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # nginx and HAProxy stop at once on SIGTERM (their graceful stop is SIGQUIT / SIGUSR1): streams are cut
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def failed_checks(self, port: int, since: int = 0) -> list[str]:
        """The proxy's log lines, from byte ``since`` on, of health checks of the server on ``port`` that failed
        (HAProxy: the server went DOWN; Caddy: a check failed). nginx has no active checks: none."""
        with open(self.log_path, "rb") as fh:
            fh.seek(since)
            lines = fh.read().decode(errors="replace").splitlines()
        if self.recipe.name == "haproxy":
            name = f"s{self.backends.index(port) + 1}"
            return [x for x in lines if re.search(rf"Server \w+/{name} is DOWN", x)]
        if self.recipe.name == "caddy":
            host = f'"host":"127.0.0.1:{port}"'
            return [x for x in lines if "health_checker" in x and host in x and '"msg":"host is up"' not in x]
        return []

    def backend_states(self) -> dict[int, str]:
        """HAProxy's view of each server (its stats socket): port -> "UP", "DOWN", ..."""
        assert self.recipe.name == "haproxy"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        names = {f"s{i + 1}": port for i, port in enumerate(self.backends)}
        return {names[r["svname"]]: r["status"] for r in rows if r["pxname"] == "lurestream" and r["svname"] in names}


# -- the clients -------------------------------------------------------------------------------------


def sequence(event_id: str) -> int | None:
    """The stream sequence an SSE id names: ``<epoch>-<sequence>`` (``eventids``) or, while that change
    lands, a bare sequence."""
    parsed = eventids.sequence_of(event_id)
    if parsed is None and event_id.isascii() and event_id.isdigit():
        return int(event_id)
    return parsed


@dataclass
class Frame:
    type: str  # the event name, or "open" / "error" for a state change
    id: str = ""
    data: str = ""
    ready_state: int | None = None  # with "open" and "error": the client's readyState after it
    detail: str = ""  # with "error": what the client said
    at: float = field(default_factory=time.monotonic)  # when the test saw it


@dataclass
class Client:
    """One EventSource's life as the test saw it."""

    name: str
    attacker: str
    frames: list[Frame] = field(default_factory=list)

    def of(self, kind: str, since: float = 0.0) -> list[Frame]:
        return [f for f in self.frames if f.type == kind and f.at >= since]

    @property
    def closed(self) -> bool:
        """Whether it ever reached readyState CLOSED (2): a native EventSource never comes back from it."""
        return any(f.ready_state == 2 for f in self.frames)

    def sequences(self, kind: str = "observation") -> list[int]:
        return [s for f in self.of(kind) if (s := sequence(f.id)) is not None]

    def summary(self) -> str:
        tail = [
            {k: v for k, v in vars(f).items() if v not in ("", None) and k != "at"} | {"t": round(f.at % 1000, 2)}
            for f in self.frames
            if f.type != "observation"
        ]
        return f"{self.name} ({self.attacker[:8]}): {len(self.of('observation'))} observations; other frames: {tail}"


def node_clients_dir(timeout: float = 300.0) -> pathlib.Path:
    """A directory with tests/node's client and its npm packages installed (``npm ci`` into a cache outside
    the repository, once per version of package-lock.json)."""
    lock = (NODE_SOURCES / "package-lock.json").read_bytes()
    digest = hashlib.sha256((NODE_SOURCES / "package.json").read_bytes() + lock).hexdigest()[:16]
    target = NODE_CACHE / digest
    marker = target / "node_modules" / ".lurestream-installed"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(NODE_SOURCES / name, target / name)
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(f"npm ci in {target} failed:\n{result.stdout}\n{result.stderr}")
        marker.write_text("")
    script = target / "sse-client.mjs"
    source = (NODE_SOURCES / "sse-client.mjs").read_bytes()
    if not script.exists() or script.read_bytes() != source:
        partial = target / "sse-client.mjs.partial"
        partial.write_bytes(source)
        partial.replace(script)
    return target


class NodeClient:
    """An npm ``eventsource`` client process (tests/node/sse-client.mjs); a thread turns what it prints
    into ``client.frames``."""

    def __init__(
        self,
        client: Client,
        directory: pathlib.Path,
        url: str,
        local_address: str,
        token: str,
        ca: pathlib.Path,
        events: Iterable[str],
    ) -> None:
        self.client = client
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            ["node", str(directory / "sse-client.mjs"), url, local_address, token, str(ca), *events],
            cwd=directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self._threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            record = json.loads(line)
            kind = record.pop("type")
            self.client.frames.append(
                Frame(
                    kind,
                    id=record.get("id") or "",
                    data=record.get("data") or "",
                    ready_state=record.get("readyState"),
                    detail=" ".join(str(record[k]) for k in ("code", "message") if record.get(k) is not None),
                )
            )

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for thread in self._threads:
            thread.join(5)


# Native EventSources in the page: what each one delivers and every state change, never closed or rebuilt
# by the page (its reconnects are the browser's own). arguments: [[path, ...], [event name, ...]]
CHROMIUM_CLIENTS = """
const [paths, names] = arguments;
window.sources = [];
window.records = [];
for (const path of paths) {
  const es = new EventSource(path);
  const records = [];
  const keep = (record) => records.push(record);
  for (const name of names) es.addEventListener(name, (e) => keep({type: name, id: e.lastEventId, data: e.data}));
  es.addEventListener('open', () => keep({type: 'open', readyState: es.readyState}));
  es.addEventListener('error', () => keep({type: 'error', readyState: es.readyState}));
  window.sources.push(es);
  window.records.push(records);
}
"""
# What each EventSource recorded from index ``arguments[0][i]`` on, and its readyState now.
CHROMIUM_TAKE = """
return window.records.map((records, i) => ({
  records: records.slice(arguments[0][i]), readyState: window.sources[i].readyState}));
"""


class ChromiumClients:
    """Native EventSources in one headless Chromium page; :meth:`collect` copies what they recorded into
    their ``Client``s (call it often: each frame's time is when the test saw it)."""

    def __init__(self, driver: Any, clients: list[Client]) -> None:
        self.driver = driver
        self.clients = clients
        self.taken = [0] * len(clients)

    def open(self, paths: list[str], events: Iterable[str]) -> None:
        self.driver.execute_script(CHROMIUM_CLIENTS, paths, list(events))

    def collect(self) -> None:
        states = self.driver.execute_script(CHROMIUM_TAKE, self.taken)
        for i, (client, state) in enumerate(zip(self.clients, states, strict=True)):
            for record in state["records"]:
                client.frames.append(
                    Frame(record["type"], record.get("id") or "", record.get("data") or "", record.get("readyState"))
                )
            self.taken[i] += len(state["records"])
            if state["readyState"] == 2 and not client.closed:
                client.frames.append(Frame("error", ready_state=2, detail="found CLOSED"))


def chromium_driver() -> Any:
    """Headless Chromium that accepts the proxies' self-signed certificate."""
    from browser import new_driver

    return new_driver("--ignore-certificate-errors")


# -- the publisher -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    seq: int
    attacker: str
    n: int


class Publisher:
    """Publishes one observation at a time, alternating over ``attackers``, ``rate`` a second, through
    JetStream: each retried until stored (with ``Nats-Msg-Id``, so a retry is never a second event), as
    docs/operations.md asks of DECNET's publishers. Runs on a thread of its own."""

    def __init__(self, nats_url: str, attackers: list[str], rate: float) -> None:
        self.nats_url = nats_url
        self.attackers = attackers
        self.interval = 1.0 / rate
        self.published: list[Published] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> list[Published]:
        self._stop.set()
        self._thread.join(30)
        return list(self.published)

    def last(self) -> int:
        return self.published[-1].seq if self.published else 0

    def _run(self) -> None:
        asyncio.run(self._publish())

    async def _publish(self) -> None:
        import nats

        nc = await nats.connect(self.nats_url, name="lurestream-test-proxies-publisher")
        js = nc.jetstream()
        n = 0
        try:
            next_at = time.monotonic()
            while not self._stop.is_set():
                attacker = self.attackers[n % len(self.attackers)]
                subject = "attacker.observation.ja3"
                payload = {"attacker_uuid": attacker, "primitive": "ja3", "value": f"v{n}", "n": n}
                body = {
                    "v": 1,
                    "id": f"p-{n}",
                    "topic": subject,
                    "type": "observation",
                    "ts": time.time(),
                    "payload": payload,
                }
                while True:
                    try:
                        ack = await js.publish(subject, json.dumps(body).encode(), headers={"Nats-Msg-Id": f"p-{n}"})
                        break
                    except Exception as exc:  # no leader for a moment: the same message again
                        self.failures.append(repr(exc))
                        await asyncio.sleep(0.1)
                self.published.append(Published(int(ack.seq), attacker, n))
                n += 1
                next_at += self.interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            await nc.close()


def wait_until(
    predicate: Callable[[], Any],
    what: str,
    timeout: float,
    state: Callable[[], str] = str,
    poll: Callable[[], None] | None = None,
    interval: float = 0.1,
) -> float:
    """Poll (``poll()`` first, then ``predicate()``) until true; returns the seconds it took. On timeout an
    AssertionError naming ``what`` with ``state()``."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if poll is not None:
            poll()
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{state()}")
        time.sleep(interval)
