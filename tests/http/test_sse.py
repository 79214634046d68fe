"""A subscription served as Server-Sent Events through uvicorn: each answer an event with its token as the id,
resumed from ``Last-Event-ID``, ended when the client goes away or the service shuts down, leaving nothing."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from mediator import Registry
from mediator.fastapi import Mediated, MediatorMiddleware, event_stream, install_error_handlers
from mediator.readmodels import ReadModels
from mediator.readmodels.sqlite import SqliteStorage
from tests.readmodels.bank import Balances, Deposit, GetBalance, deposit, event_types, get_balance

from .servers import serving

WAIT = 10.0


class Body(BaseModel):
    amount: int


class Closed(LookupError):
    """The account is closed: its balance is not shown (answers 404)."""


CLOSED = {"closed"}
"""The accounts whose balance is refused; a test closes one while its stream runs."""


def guarded_balance(query: GetBalance, engine: ReadModels) -> int:
    if query.account in CLOSED:
        raise Closed(query.account)
    return get_balance(query, engine)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[httpx.Client, ReadModels]]:
    engine = ReadModels(SqliteStorage(tmp_path / "bank.db"), event_types())
    engine.add(Balances())
    registry = Registry()
    engine.install(registry)
    registry.handle(Deposit).by(deposit)
    registry.handle(GetBalance).by(guarded_balance)
    mediator = registry.build_async()
    app = FastAPI()
    install_error_handlers(app, {Closed: (404, "not_found")})

    @app.post("/accounts/{account}/deposits", status_code=204)
    async def pay_in(account: str, body: Body, mediator: Mediated) -> None:
        await mediator.send(Deposit(account=account, amount=body.amount))

    @app.get("/accounts/{account}/balance/live")
    async def live(account: str, mediator: Mediated, request: Request) -> StreamingResponse:
        return await event_stream(mediator, GetBalance(account=account), request, event="balance", keepalive=0.2)

    engine.start()
    try:
        with serving(MediatorMiddleware(app, mediator, lambda headers: "user", engine=engine)) as client:
            yield client, engine
    finally:
        engine.live.close()
        engine.stop()
        engine.storage.close()


class Events:
    """An event stream read on a thread of its own: each event (or keep-alive comment) as it comes."""

    def __init__(self, client: httpx.Client, path: str, headers: Mapping[str, str | bytes] | None = None) -> None:
        self.items: queue.Queue[dict[str, str] | None] = queue.Queue()
        self.response: httpx.Response | None = None
        self.status: int | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(client, path, headers or {}), daemon=True)
        self.thread.start()
        assert self.started.wait(WAIT)

    def _read(self, client: httpx.Client, path: str, headers: Mapping[str, str | bytes]) -> None:
        try:
            raw = [(name.encode(), value if isinstance(value, bytes) else value.encode())
                   for name, value in headers.items()]
            with client.stream("GET", path, headers=raw, timeout=httpx.Timeout(WAIT, read=None)) as response:
                self.response, self.status = response, response.status_code
                self.content_type = response.headers.get("content-type", "")
                self.started.set()
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if not line:
                        if fields:
                            self.items.put(fields)
                        fields = {}
                    elif line.startswith(":"):
                        self.items.put({"comment": line[1:].strip()})
                    else:
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
        except httpx.HTTPError:
            pass
        finally:
            self.started.set()
            self.items.put(None)  # the stream ended

    def next_event(self, timeout: float = WAIT) -> dict[str, str] | None:
        """The next event with data (skipping ``retry`` and keep-alives); ``None`` if the stream ended."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.items.get(timeout=max(deadline - time.monotonic(), 0.001))
            if item is None or "data" in item:
                return item

    def quiet_for(self, seconds: float) -> list[dict[str, str]]:
        """What came in ``seconds``: keep-alives only, if nothing changed."""
        found = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self.items.get(timeout=left)
            except queue.Empty:
                break
            assert item is not None, "the stream ended"
            found.append(item)
        return found

    def close(self) -> None:
        """Hang up, as a browser tab closing does: the reading thread is woken at once, whatever the stream's
        keep-alive interval."""
        if self.response is not None:
            stream = self.response.extensions.get("network_stream")
            connection = stream.get_extra_info("socket") if stream is not None else None
            if connection is not None:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self.response.close()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the stream's reader did not end"


def test_each_answer_is_an_event_with_its_token_as_the_id(service: tuple[httpx.Client, ReadModels]) -> None:
    client, engine = service
    events = Events(client, "/accounts/a/balance/live")
    try:
        assert events.status == 200
        assert events.content_type.startswith("text/event-stream")
        first = events.next_event()
        assert first is not None
        assert first["event"] == "balance"
        assert first["data"] == "0"
        paid = client.post("/accounts/a/deposits", json={"amount": 5})
        token = int(paid.headers["X-Consistency-Token"])
        second = events.next_event()
        assert second is not None
        assert second["data"] == "5"
        assert int(second["id"]) >= token
        quiet = events.quiet_for(0.5)
        assert quiet
        assert all(item == {"comment": "keep-alive"} for item in quiet)
    finally:
        events.close()
    _until(lambda: engine.live.watching == 0 and not engine.live.running)  # the client went: nothing left


def test_a_reconnecting_client_resumes_after_its_last_event(service: tuple[httpx.Client, ReadModels]) -> None:
    client, engine = service
    client.post("/accounts/a/deposits", json={"amount": 2})
    events = Events(client, "/accounts/a/balance/live")
    last = events.next_event()
    events.close()
    assert last is not None
    assert last["data"] == "2"
    resumed = Events(client, "/accounts/a/balance/live", headers={"Last-Event-ID": last["id"]})
    try:
        assert all("data" not in item for item in resumed.quiet_for(0.5))  # it has the latest answer already
        client.post("/accounts/a/deposits", json={"amount": 3})
        again = resumed.next_event()
        assert again is not None
        assert again["data"] == "5"
        assert int(again["id"]) > int(last["id"])
    finally:
        resumed.close()
    client.post("/accounts/a/deposits", json={"amount": 1})
    behind = Events(client, "/accounts/a/balance/live", headers={"Last-Event-ID": last["id"]})
    try:
        caught_up = behind.next_event()
        assert caught_up is not None
        assert caught_up["data"] == "6"
    finally:
        behind.close()
    _until(lambda: engine.live.watching == 0)


def test_shutting_down_ends_the_stream(service: tuple[httpx.Client, ReadModels]) -> None:
    client, engine = service
    events = Events(client, "/accounts/a/balance/live")
    assert events.next_event() is not None
    engine.live.close()
    assert events.next_event() is None  # the stream ended by itself
    events.close()


def test_a_query_that_fails_answers_its_status_not_a_stream(service: tuple[httpx.Client, ReadModels]) -> None:
    client, engine = service
    response = client.get("/accounts/closed/balance/live")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert engine.live.watching == 0


def test_a_last_event_id_that_is_no_token_starts_afresh(service: tuple[httpx.Client, ReadModels]) -> None:
    client, _engine = service
    for odd in ("²".encode("latin-1"), b"-3", b"abc", b"9" * 30):  # bytes: "²" is no ASCII, which httpx sends
        events = Events(client, "/accounts/a/balance/live", headers={"Last-Event-ID": odd})
        try:
            assert events.status == 200
            first = events.next_event()
            assert first is not None
            assert first["data"] == "0"
        finally:
            events.close()


def test_a_query_failing_mid_stream_ends_it_with_an_error_event_and_a_reconnection_gets_the_status(
        service: tuple[httpx.Client, ReadModels]) -> None:
    client, engine = service
    events = Events(client, "/accounts/b/balance/live")
    try:
        first = events.next_event()
        assert first is not None
        CLOSED.add("b")
        client.post("/accounts/b/deposits", json={"amount": 1})  # asked again: refused now
        failed = events.next_event()
        assert failed is not None
        assert failed["event"] == "error"
        assert '"error":"not_found"' in failed["data"]
        assert events.next_event() is None  # and the stream ends
        again = client.get("/accounts/b/balance/live", headers={"Last-Event-ID": first["id"]})
        assert again.status_code == 404  # a browser reconnecting is told, and stops
    finally:
        CLOSED.discard("b")
        events.close()
    _until(lambda: engine.live.watching == 0)


def _until(condition: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_server_shutting_down_with_streams_open_ends_them_and_their_subscriptions(tmp_path: Path) -> None:
    """uvicorn waits for open connections before it stops; ``timeout_graceful_shutdown`` cancels the streams still
    open after it, and each stream's subscription closes with it."""
    import uvicorn

    engine = ReadModels(SqliteStorage(tmp_path / "bank.db"), event_types())
    engine.add(Balances())
    registry = Registry()
    engine.install(registry)
    registry.handle(GetBalance).by(get_balance)
    app = FastAPI()

    @app.get("/live")
    async def live(mediator: Mediated, request: Request) -> StreamingResponse:
        return await event_stream(mediator, GetBalance(account="a"), request, keepalive=0.2)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(MediatorMiddleware(app, registry.build_async(), lambda h: "user",
                                                               engine=engine),
                                           host="127.0.0.1", port=port, log_level="critical", lifespan="off",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _until(lambda: server.started)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            events = [Events(client, "/live") for _ in range(3)]
            assert all(e.next_event() is not None for e in events)
            assert engine.live.watching == 3
            started = time.monotonic()
            server.should_exit = True
            thread.join(WAIT)
            assert not thread.is_alive()
            assert time.monotonic() - started < 5
            for e in events:
                e.close()
        _until(lambda: engine.live.watching == 0 and not engine.live.running)
    finally:
        server.should_exit = True
        engine.live.close()
        engine.storage.close()
