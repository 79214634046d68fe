"""Fixtures of the broker tests: the real NATS, a stream of one's own, source storages, a NATS server to stop.

``MEDIATOR_TEST_NATS`` is the NATS URL (``nats://127.0.0.1:4222`` by default); without
it reachable the tests that need it skip (fail in CI). Each test gets a stream and
subject prefix of its own, deleted afterwards. The broker-down test starts a
``nats-server`` of its own (``MEDIATOR_NATS_SERVER``, else ``nats-server`` on the
PATH or ``/usr/sbin/nats-server``) on a free port, so it can stop and restart it
without disturbing anything else using the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import attrs
import pytest

from mediator.readmodels import Storage
from tests import storages
from tests.conftest import skip_or_fail

NATS_URL = os.environ.get("MEDIATOR_TEST_NATS", "nats://127.0.0.1:4222")


def reachable(url: str, timeout: float = 1.0) -> bool:
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout).close()
    except OSError:
        return False
    return True


@pytest.fixture
def nats_url() -> str:
    if not reachable(NATS_URL):
        skip_or_fail(f"NATS is not reachable at {NATS_URL!r}")
    return NATS_URL


@attrs.frozen
class Stream:
    """A stream name and subject prefix of one test's own."""

    name: str
    prefix: str


async def delete_stream(url: str, name: str) -> None:
    import nats
    import nats.js.errors

    client = await nats.connect(servers=[url], allow_reconnect=False, max_reconnect_attempts=1,
                                reconnect_time_wait=0, connect_timeout=2)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(name)
    finally:
        await client.close()


async def stream_messages(url: str, name: str) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message in the stream, in stream order: ``(subject, headers, payload)``."""
    import nats

    client = await nats.connect(servers=[url], allow_reconnect=False, max_reconnect_attempts=1,
                                reconnect_time_wait=0, connect_timeout=2)
    try:
        js = client.jetstream()
        info = await js.stream_info(name)
        found: list[tuple[str, dict[str, str], bytes]] = []
        if not info.state.messages:
            return found
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(name, sequence)
            found.append((message.subject or "", dict(message.headers or {}), message.data or b""))
        return found
    finally:
        await client.close()


@pytest.fixture
def stream(nats_url: str) -> Iterator[Stream]:
    token = uuid.uuid4().hex[:10]
    made = Stream(f"T_{token}", f"t{token}.events")
    yield made
    asyncio.run(delete_stream(nats_url, made.name))


@pytest.fixture(params=["sqlite", "postgres"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """The publishing service's storage: SQLite, or PostgreSQL in a fresh schema."""
    with storages.opened(request.param, tmp_path) as backend:
        yield backend


@pytest.fixture(params=storages.KINDS)
def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    with storages.opened(request.param, tmp_path) as backend:
        yield backend


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@attrs.define
class NatsServer:
    """A nats-server of the test's own, with JetStream on disk, that can be stopped and started again."""

    binary: str
    store: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not reachable(self.url, 0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop it (SIGTERM, its own process only) and wait until it is gone."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    binary = os.environ.get("MEDIATOR_NATS_SERVER") or shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).is_file():
        skip_or_fail(f"no nats-server binary to run (looked for {binary!r}; set MEDIATOR_NATS_SERVER)")
    server = NatsServer(binary, tmp_path / "jetstream", free_port())
    server.start()
    yield server
    server.stop()
