"""The nats-server configurations of docs/operations.md ("NATS: credentials and permissions"), run for
tests/test_nats_permissions.py: the blocks are read from the docs and rendered with a test's port, store
directory and files, so the configuration the tests run is the one the docs show.

Also: the server under such a configuration (its log says which permissions it refused), connections
as each of its users, a CA with server and client certificates, and NKeys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import ipaddress
import json
import os
import pathlib
import re
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client

from lurestream.localservices import LocalService, free_port, nats_server_binary

ROOT = pathlib.Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"
SECTION = "NATS: credentials and permissions"

# The docs' example values, which a test replaces with its own.
DOCS_LISTEN = "listen: 0.0.0.0:4222"
DOCS_STORE = "store_dir: /var/lib/nats/jetstream"
DOCS_TLS_FILES = {
    "/etc/nats/tls/server-cert.pem": "server_cert",
    "/etc/nats/tls/server-key.pem": "server_key",
    "/etc/nats/tls/ca.pem": "ca",
}
STREAM = "decnet"  # the docs' LURESTREAM_JETSTREAM
BUCKET = "lurestream_caps"  # the default LURESTREAM_CAP_BUCKET

# The passwords the docs' configuration reads from nats-server's environment.
PASSWORDS = {
    "lurestream": ("NATS_LURESTREAM_PASSWORD", "lurestream-password-0123456789"),
    "decnet": ("NATS_DECNET_PASSWORD", "decnet-password-0123456789"),
    "decky-web-01": ("NATS_DECKY_WEB_01_PASSWORD", "web-01-password-0123456789"),
    "decky-db-02": ("NATS_DECKY_DB_02_PASSWORD", "db-02-password-0123456789"),
}
TOKEN_VARIABLE = "NATS_TOKEN"


# -- the docs ----------------------------------------------------------------------------------------


def section_blocks(path: pathlib.Path | None = None) -> list[str]:
    """The fenced blocks of ``### NATS: credentials and permissions`` (under ``## Cluster``)."""
    path = path or OPERATIONS
    text = path.read_text()
    cluster = re.search(r"^## Cluster\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert cluster, f"{path.name} has no '## Cluster' section"
    sub = re.search(rf"^### {re.escape(SECTION)}\n(.*?)(?=^### |\Z)", cluster.group(1), re.S | re.M)
    assert sub, f"'## Cluster' has no '### {SECTION}' subsection"
    return re.findall(r"^```[\w-]*\n(.*?)^```$", sub.group(1), re.S | re.M)


def docs_block(first_line: str) -> str:
    """The one block of the section whose first line starts with ``first_line``."""
    found = [b for b in section_blocks() if b.startswith(first_line)]
    assert len(found) == 1, f"expected one block starting {first_line!r} in '{SECTION}', found {len(found)}"
    return found[0]


def render(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each docs example value replaced; every one must be there (or the docs drifted)."""
    for docs_value, value in values.items():
        assert docs_value in text, f"the docs' block no longer holds {docs_value!r}"
        text = text.replace(docs_value, value)
    return text


def permission_block(config: str, name: str) -> str:
    """The text of ``NAME = { ... }`` in a configuration (braces balanced)."""
    start = re.search(rf"^{re.escape(name)} = \{{", config, re.M)
    assert start, f"no {name} = {{...}} in the configuration"
    depth = 0
    for i in range(start.end() - 1, len(config)):
        depth += {"{": 1, "}": -1}.get(config[i], 0)
        if depth == 0:
            return config[start.start() : i + 1]
    raise AssertionError(f"{name}'s braces are not balanced")


def quoted_subjects(text: str) -> set[str]:
    """Every quoted subject in ``text`` (comments removed)."""
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return set(re.findall(r'"([^"\s]+)"', code))


# -- the server ---------------------------------------------------------------------------------------


@dataclass
class NatsServer:
    """nats-server started with ``nats-server -c <file>`` on a free port of 127.0.0.1."""

    service: LocalService
    config_path: pathlib.Path
    scheme: str = "nats"

    @classmethod
    def start(cls, workdir: pathlib.Path, config: str, scheme: str = "nats") -> NatsServer:
        """Render ``config`` (a docs block, or several joined) with this server's port and store and start it,
        with its monitoring port (``-m``, as the cluster tests start their nodes: it needs no user)."""
        port, monitor = free_port(), free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        text = render(config, {DOCS_LISTEN: f"listen: 127.0.0.1:{port}", DOCS_STORE: f"store_dir: {workdir / 'js'}"})
        path = workdir / "nats.conf"
        path.write_text(text)
        argv = [nats_server_binary(), "-c", str(path), "-m", str(monitor)]
        service = LocalService("nats-server", scheme, argv, port, str(workdir), {"monitor": monitor})
        return cls(service.start(), path, scheme)

    def streams(self) -> dict[str, int]:
        """Every JetStream stream of the server and its message count, as its monitoring endpoint says."""
        url = f"http://127.0.0.1:{self.service.extra_ports['monitor']}/jsz?streams=true"
        with urllib.request.urlopen(url, timeout=5) as response:
            jsz = json.loads(response.read())
        return {
            stream["name"]: int(stream["state"]["messages"])
            for account in jsz.get("account_details") or []
            for stream in account.get("stream_detail") or []
        }

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.service.port}"

    def log(self) -> str:
        return pathlib.Path(self.service.log_path).read_text(errors="replace")

    def violations(self) -> list[str]:
        """The permission violations the server logged (``"$G/user:decnet" - Publish Violation - Subject "x"``)."""
        return [line for line in self.log().splitlines() if "Violation" in line]

    async def wait_violation(self, user: str, kind: str, subject: str, timeout: float = 5.0) -> None:
        """Until the server has logged refusing ``user`` a ``kind`` (Publish, Subscription) on ``subject``."""

        def refused(line: str) -> bool:  # 2.14: "$G/user:decnet" - Publish Violation - Subject "x";
            # 2.9: Publish Violation - User "decnet", Subject "x"
            by_user = f'"$G/user:{user}"' in line or f'User "{user}"' in line
            return by_user and f"{kind} Violation" in line and f'Subject "{subject}"' in line

        deadline = asyncio.get_running_loop().time() + timeout
        while not any(refused(line) for line in self.violations()):
            assert asyncio.get_running_loop().time() < deadline, (
                f"{user}: no {kind} Violation of {subject!r} in the server's log:\n{self.log()}"
            )
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self.service.stop()


def server_environment(token: str = "") -> dict[str, str]:
    """The variables the docs' configurations read from nats-server's environment."""
    env = {variable: password for variable, password in PASSWORDS.values()}
    if token:
        env[TOKEN_VARIABLE] = token
    return env


# -- clients ------------------------------------------------------------------------------------------


@dataclass
class Connection:
    """A NATS connection as one user, with what the server refused it (nats.py's error callback)."""

    nc: Client
    user: str
    errors: list[Exception]

    def refusals(self) -> list[str]:
        return [str(e) for e in self.errors if "permissions violation" in str(e).lower()]

    async def wait_refused(self, kind: str, subject: str, timeout: float = 5.0) -> None:
        """Until nats.py has reported the server refusing ``kind`` ("publish", "subscription") to ``subject``
        (nats.py lowercases the server's message)."""
        wanted = f'permissions violation for {kind} to "{subject}"'.lower()
        deadline = asyncio.get_running_loop().time() + timeout
        while not any(wanted in r.lower() for r in self.refusals()):
            assert asyncio.get_running_loop().time() < deadline, f"{self.user}: no {wanted!r} in {self.errors}"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.nc.close()


def inbox_prefix(user: str) -> str:
    """The inbox prefix the docs give each publisher: its replies (the stream's acks) come to it alone."""
    return f"_INBOX_{user}"


async def connect_as(url: str, user: str, **options: Any) -> Connection:
    """Connected as one of the docs' users (its password; a publisher with its own inbox prefix)."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    if user != "lurestream":
        options.setdefault("inbox_prefix", inbox_prefix(user))
    nc = await nats.connect(
        url,
        user=user,
        password=PASSWORDS[user][1],
        name=f"test-{user}",
        error_cb=on_error,
        allow_reconnect=False,
        **options,
    )
    return Connection(nc, user, errors)


# -- TLS ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and a client
    certificate of another CA (which the server must refuse)."""

    ca: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path
    client_cert: pathlib.Path
    client_key: pathlib.Path
    other_ca: pathlib.Path
    other_client_cert: pathlib.Path
    other_client_key: pathlib.Path


def make_pki(directory: pathlib.Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[pathlib.Path, pathlib.Path]:
        cert_path, key_path = directory / f"{stem}-cert.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path

    def authority(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # keyCertSign, cRLSign
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def leaf(
        common_name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], server: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(issuer[0].subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(issuer[1], hashes.SHA256()), key

    ca = authority("lurestream test CA")
    other = authority("another CA")
    ca_path, _ = write("ca", *ca)
    other_ca_path, _ = write("other-ca", *other)
    server_cert, server_key = write("server", *leaf("127.0.0.1", ca, server=True))
    client_cert, client_key = write("client", *leaf("lurestream", ca, server=False))
    other_cert, other_key = write("other-client", *leaf("lurestream", other, server=False))
    return Pki(ca_path, server_cert, server_key, client_cert, client_key, other_ca_path, other_cert, other_key)


# -- NKeys (nats.py needs the ``nkeys`` package to sign with one) ---------------------------------------

_NKEY_USER = 20 << 3  # the prefix byte of a user's public key: "U..."
_NKEY_SEED = 18 << 3  # of a seed: "S..."


def _nkey_encode(raw: bytes) -> str:
    checksum = binascii.crc_hqx(raw, 0).to_bytes(2, "little")  # CRC-16/XMODEM, as nkeys computes it
    return base64.b32encode(raw + checksum).decode().rstrip("=")


def make_nkey() -> tuple[str, str]:
    """A new user NKey: (public key ``U...`` for the server's configuration, seed ``SU...`` for the client)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    seed_prefix = bytes([_NKEY_SEED | (_NKEY_USER >> 5), (_NKEY_USER & 31) << 3])
    return _nkey_encode(bytes([_NKEY_USER]) + public), _nkey_encode(seed_prefix + seed)


def environment_with(values: Mapping[str, str]) -> dict[str, str]:
    """``os.environ`` with ``values`` (for a child process)."""
    return {**os.environ, **values}
