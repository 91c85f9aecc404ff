"""Fixtures: real nats-server and MongoDB-wire processes for the session (protocol §10), a fresh database
and a real lurestream app per test, and the leak guard that checks every stream test gives back its
hub registrations and connection slots.

Set ``LURESTREAM_TEST_NATS_URL`` / ``LURESTREAM_TEST_MONGO_URI`` to use running services instead.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import nats
import nats.js.errors
import pytest
from pymongo import MongoClient

sys.path.insert(0, os.path.dirname(__file__))

from browser import CHROMEDRIVER, CHROMIUM, console, new_driver  # noqa: E402
from harness import ATTACKER_A, ATTACKER_B, SECRET, TOPOLOGY_1, TOPOLOGY_2, USERS, VIEWER, Harness, bus_up  # noqa: E402
from processes import ServerProcess  # noqa: E402

from lurestream.config import Config, config_from  # noqa: E402
from lurestream.localservices import LocalService, mongo_wire_server, nats_server  # noqa: E402
from lurestream.server import Services, make_app, make_server  # noqa: E402

# a failed test's report stays readable on CPython 3.11 (see report_guard's docstring)
pytest_plugins = ("report_guard",)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lurestream(**settings): config overrides for the app under test")
    config.addinivalue_line("markers", "app_settings(**settings): Tornado Application settings overrides")
    config.addinivalue_line("markers", "no_bus_wait: do not wait for the hub to connect to NATS")
    config.addinivalue_line("markers", "server_settings(**settings): settings of a server subprocess")


class External:
    """A service someone else runs (LURESTREAM_TEST_*): nothing to start or stop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.extra_ports: dict[str, int] = {}


def _session_service(
    env_var: str, make: Callable[[str], LocalService], workdir: str
) -> Iterator[LocalService | External]:
    """The service named by ``env_var`` if set, else one started here for the whole session."""
    if os.environ.get(env_var):
        yield External(os.environ[env_var])
        return
    svc = make(workdir).start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def nats_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService | External]:
    yield from _session_service("LURESTREAM_TEST_NATS_URL", nats_server, str(tmp_path_factory.mktemp("nats")))


@pytest.fixture(scope="session")
def mongo_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService | External]:
    yield from _session_service("LURESTREAM_TEST_MONGO_URI", mongo_wire_server, str(tmp_path_factory.mktemp("mongo")))


@pytest.fixture
def private_mongo(tmp_path: Any) -> Iterator[LocalService]:
    """A MongoDB-wire server of the test's own (database ``d``: the viewer and attacker A), for tests
    that stop it mid-way."""
    svc = mongo_wire_server(str(tmp_path)).start()
    client: MongoClient[dict[str, Any]] = MongoClient(svc.url, serverSelectionTimeoutMS=5000)
    with client:
        client.d.users.insert_one(dict(USERS[VIEWER]))
        client.d.attackers.insert_one(dict(ATTACKER_A))
    yield svc
    svc.stop()


@pytest.fixture
def db_name() -> str:
    return "t" + uuid.uuid4().hex[:16]


@pytest.fixture
def mongo(mongo_service: Any, db_name: str) -> Iterator[Any]:
    """The test's own database (sync PyMongo, for seeding and inspecting), seeded with the standard set."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_service.url, serverSelectionTimeoutMS=5000, tz_aware=True)
    db = client[db_name]
    db.users.insert_many([dict(u) for u in USERS.values()])
    db.attackers.insert_many([dict(ATTACKER_A), dict(ATTACKER_B)])
    db.topologies.insert_many([dict(TOPOLOGY_1), dict(TOPOLOGY_2)])
    yield db
    client.drop_database(db_name)
    client.close()


def _marker_kwargs(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(name))):
        merged.update(marker.kwargs)
    return merged


@pytest.fixture
def js_stream(nats_service: Any, io_loop: Any) -> Iterator[str]:
    """A JetStream stream name of the test's own; the stream (created by the hub or the test) is
    deleted afterwards, since two streams may not capture the same subjects."""
    name = "LS_" + uuid.uuid4().hex[:12]
    yield name

    async def delete() -> list[str]:
        nc = await nats.connect(nats_service.url)
        try:
            js = nc.jetstream()
            for own in (name, f"{name}_probe"):  # the stream, and the one its storage probe writes to
                try:
                    await js.delete_stream(own)
                except nats.js.errors.NotFoundError:
                    pass
            # Any other test stream still there was re-created after its test (a server still running when
            # its stream was deleted): it would capture the same subjects as every later test's stream and
            # fail them all. Delete it, and fail here, where it shows.
            strays = [info.config.name for info in await js.streams_info() if info.config.name.startswith("LS_")]
            for stray in strays:
                await js.delete_stream(stray)
            return strays
        finally:
            await nc.close()

    strays = io_loop.run_sync(delete)
    assert not strays, f"test streams outlived their test: {strays}"


@pytest.fixture
def config(nats_service: Any, mongo_service: Any, db_name: str, request: pytest.FixtureRequest) -> Config:
    """The app's config; ``@pytest.mark.lurestream(jetstream=True)`` gives it the test's own stream."""
    settings: dict[str, Any] = {
        "nats_url": nats_service.url,
        "mongo_uri": mongo_service.url,
        "mongo_db": db_name,
        "jwt_secret": SECRET,
        "keepalive_seconds": 15,
    }
    settings.update(_marker_kwargs(request, "lurestream"))
    if settings.get("jetstream") is True:
        settings["jetstream"] = request.getfixturevalue("js_stream")
    return config_from(settings)


@pytest.fixture
def start_server(tmp_path, nats_service, mongo_service, mongo, db_name, js_stream):
    """Start ``lurestream serve`` on the test's services and database, with extra settings. It depends on
    ``js_stream`` so that its servers stop before the test's stream is deleted: a server still running
    re-creates a deleted stream (as it must in production), and the stray stream's subjects then overlap
    every later test's stream."""
    started = []

    def start(wait_ready=True, **settings):
        base = dict(nats_url=nats_service.url, mongo_uri=mongo_service.url, mongo_db=db_name, jwt_secret=SECRET)
        proc = ServerProcess(str(tmp_path / f"server{len(started)}.log"), **{**base, **settings})
        started.append(proc)
        proc.start()
        if wait_ready:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def span_exporter() -> Any:
    """Spans the app under test records (OpenTelemetry SDK, in memory); requesting it turns tracing on."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    return InMemorySpanExporter()


@pytest.fixture
def services(config: Config, io_loop: Any, mongo: Any, request: pytest.FixtureRequest) -> Iterator[Services]:
    tracer = None
    if "span_exporter" in request.fixturenames:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(request.getfixturevalue("span_exporter")))
        tracer = provider.get_tracer("lurestream-test")
    svc = Services.build(config, tracer=tracer)
    io_loop.run_sync(svc.start)
    if config.nats_url and request.node.get_closest_marker("no_bus_wait") is None:
        assert io_loop.run_sync(lambda: bus_up(svc.hub, 10)), "hub did not connect to NATS"
    yield svc
    io_loop.run_sync(lambda: _close_or_say_why(svc), timeout=60)


async def _close_or_say_why(svc: Services) -> None:
    """Close the test's services; if that takes more than 20 s, fail naming every task still pending (a
    shutdown that hangs must say where, not stall the suite)."""
    closing = asyncio.ensure_future(svc.close())
    done, _ = await asyncio.wait({closing}, timeout=20)
    if done:
        closing.result()
        return
    stacks = []
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            frames = task.get_stack(limit=8)
            stacks.append(f"{task.get_name()}: " + " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames))
    raise AssertionError("Services.close() did not finish in 20 s; pending tasks:\n" + "\n".join(stacks))


@pytest.fixture
def app(services: Services, request: pytest.FixtureRequest) -> Any:
    return make_app(services, **_marker_kwargs(request, "app_settings"))


@pytest.fixture
def http_server(request: pytest.FixtureRequest, io_loop: Any, _unused_port: Any, app: Any, services: Services) -> Any:
    """pytest-tornado's fixture, but the server is the one ``lurestream serve`` runs (with its edge)."""
    server = make_server(app, services)
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=request.config.option.async_test_timeout)


@pytest.fixture
def ls(
    services: Services, http_server: Any, http_port: int, io_loop: Any, mongo: Any, nats_service: Any
) -> Iterator[Harness]:
    """The app under test, with helpers; on teardown, the leak guard."""
    harness = Harness(services, http_port, mongo, nats_service.url)
    yield harness
    harness.close_clients()

    async def settled() -> None:
        deadline = asyncio.get_running_loop().time() + 5
        while asyncio.get_running_loop().time() < deadline:
            if (
                services.hub.subscription_count == 0
                and services.limiter.held() == 0
                and services.logs.stream_count == 0
            ):
                break
            await asyncio.sleep(0.02)
        await harness.aclose()

    io_loop.run_sync(settled)
    assert services.hub.subscription_count == 0, "leak: hub registrations remain after the test"
    assert services.hub.routing_keys == 0, "leak: routing keys remain after the test"
    assert services.limiter.held() == 0, "leak: connection slots remain after the test"
    assert services.logs.stream_count == 0, "leak: live log feed streams remain after the test"


@pytest.fixture
def browser(tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A headless Chromium for the test (skips where Chromium is missing); on failure, a screenshot and
    whatever the console still holds are printed."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no Chromium here: install Debian's chromium and chromium-driver to run the browser tests")
    driver = new_driver()
    try:
        yield driver
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            path = tmp_path / "browser-failure.png"
            driver.save_screenshot(str(path))
            print(f"screenshot of the failing page ({driver.current_url}): {path}\nconsole:\n{console(driver)}")
    finally:
        driver.quit()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item (the browser fixture screenshots a failed test)."""
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report
