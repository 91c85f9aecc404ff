"""Configuration (protocol §9): env and flags, defaults, and start-up refusals that name the setting."""

from __future__ import annotations

import subprocess
import sys

import pytest
from processes import lurestream_env

from lurestream.config import ConfigError, load_config

GOOD = {"LURESTREAM_JWT_SECRET": "s" * 32}


def test_defaults():
    c = load_config(env=GOOD)
    assert (c.host, c.port, c.processes) == ("127.0.0.1", 8700, 1)
    assert c.nats_url == "nats://127.0.0.1:4222"
    assert (c.mongo_uri, c.mongo_db, c.mongo_driver) == ("mongodb://127.0.0.1:27017", "decnet", "pymongo")
    assert c.jwt_algorithms == ("HS256",)
    assert (c.jwt_issuer, c.jwt_audience, c.jwt_type) == ("decnet", "decnet-dashboard", "access")
    assert c.stream_roles == ("viewer", "admin")
    assert (c.sse_max_per_user, c.keepalive_seconds, c.queue_max, c.ticket_ttl_seconds) == (5, 15.0, 256, 60)
    assert c.allow_query_token is True and c.cors_origins == ()
    assert (c.log_level, c.log_format) == ("info", "text")


def test_flags_win_over_env():
    c = load_config(env={**GOOD, "LURESTREAM_PORT": "9000", "LURESTREAM_STREAM_ROLES": "admin"}, flags={"port": "9100"})
    assert c.port == 9100
    assert c.stream_roles == ("admin",)


def test_empty_nats_url_disables_bus():
    assert load_config(env={**GOOD, "LURESTREAM_NATS_URL": ""}).nats_url == ""


@pytest.mark.parametrize(
    "setting,value,fragment",
    [
        ("LURESTREAM_PORT", "eighty", "whole number"),
        ("LURESTREAM_PORT", "70000", "between 0 and 65535"),
        ("LURESTREAM_PROCESSES", "-1", "between 0"),
        ("LURESTREAM_SSE_MAX_PER_USER", "0", "at least 1"),
        ("LURESTREAM_QUEUE_MAX", "lots", "whole number"),
        ("LURESTREAM_KEEPALIVE_SECONDS", "0", "greater than 0"),
        ("LURESTREAM_KEEPALIVE_SECONDS", "soon", "number"),
        ("LURESTREAM_ALLOW_QUERY_TOKEN", "maybe", "true or false"),
        ("LURESTREAM_MONGO_DRIVER", "mongoengine", "pymongo, motor"),
        ("LURESTREAM_MONGO_URI", "postgres://x", "mongodb://"),
        ("LURESTREAM_NATS_URL", "http://x:4222", "nats://"),
        ("LURESTREAM_JWT_ALGORITHMS", "none", "unsupported algorithm"),
        ("LURESTREAM_JWT_ALGORITHMS", "RS256", "LURESTREAM_JWT_PUBLIC_KEY_FILE"),
        ("LURESTREAM_LOG_FORMAT", "xml", "text, json"),
        ("LURESTREAM_TICKET_TTL_SECONDS", "0", "between 1"),
        ("LURESTREAM_JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem", "cannot read"),
    ],
)
def test_bad_values_name_the_setting(setting, value, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(env={**GOOD, setting: value})
    message = str(err.value)
    expected_setting = "LURESTREAM_JWT_PUBLIC_KEY_FILE" if "PUBLIC_KEY" in fragment else setting
    assert message.startswith(expected_setting + ":"), message
    assert fragment in message


def test_missing_and_weak_secret_refused_unless_dev():
    with pytest.raises(ConfigError, match="^LURESTREAM_JWT_SECRET: is required"):
        load_config(env={})
    with pytest.raises(ConfigError, match="^LURESTREAM_JWT_SECRET: is too weak"):
        load_config(env={"LURESTREAM_JWT_SECRET": "short"})
    assert load_config(env={"LURESTREAM_JWT_SECRET": "short", "LURESTREAM_DEV_INSECURE": "true"}).jwt_secret == "short"
    ephemeral = load_config(env={"LURESTREAM_DEV_INSECURE": "true"})
    assert ephemeral.jwt_secret_ephemeral and len(ephemeral.jwt_secret) >= 32
    assert load_config(env={"LURESTREAM_DEV_INSECURE": "true"}).jwt_secret != ephemeral.jwt_secret


def test_secret_not_in_repr():
    c = load_config(env={"LURESTREAM_JWT_SECRET": "super-secret-value-0123456789abcdef"})
    assert "super-secret" not in repr(c)


@pytest.mark.parametrize(
    "args,env,fragment",
    [
        (["--port", "abc"], GOOD, "LURESTREAM_PORT: expected a whole number"),
        ([], {}, "LURESTREAM_JWT_SECRET: is required"),
        (["--keepalive-seconds", "-3"], GOOD, "LURESTREAM_KEEPALIVE_SECONDS"),
    ],
)
def test_serve_refuses_to_start_with_a_clear_message(args, env, fragment):
    result = subprocess.run(
        [sys.executable, "-m", "lurestream", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=lurestream_env(**{k.removeprefix("LURESTREAM_").lower(): v for k, v in env.items()}),
    )
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_setting():
    from lurestream.config import SETTINGS

    result = subprocess.run(
        [sys.executable, "-m", "lurestream", "serve", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for s in SETTINGS:
        assert s.flag in result.stdout and s.env in result.stdout
