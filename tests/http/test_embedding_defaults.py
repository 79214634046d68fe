"""What both embeddings do without being told: the principal resolver checked when they are built, the head of the
log taken from the read-model engine, the mediator handed to routes, the token header a request's own, and the
framework's bugs never answered through a status the application maps."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import httpx
import pytest
from fastapi import FastAPI
from structlog.testing import capture_logs

from mediator import (
    AsyncMediator,
    Command,
    Event,
    HandlerNotFoundError,
    Mediator,
    Query,
    Registry,
    WiringError,
)
from mediator.fastapi import Mediated, MediatorMiddleware, install_error_handlers
from mediator.http import EmbeddingConfigError, StatusMap, problem_for
from mediator.readmodels import (
    EventTypes,
    Projection,
    ProjectionSession,
    ReadModels,
    StorageError,
    UnitOfWork,
    last_token,
    on,
)
from mediator.readmodels.memory import MemoryStorage
from mediator.wsgi import MediatorWSGI, StartResponse

EMBEDDINGS = ["asgi", "wsgi"]


@attrs.frozen(kw_only=True)
class Write(Command[None]):
    text: str


@attrs.frozen(kw_only=True)
class Written(Event):
    text: str


@attrs.frozen(kw_only=True)
class CountWrites(Query[int]):
    reads = ("writes",)


@attrs.frozen(kw_only=True)
class Unhandled(Query[int]):
    """A query no handler is registered for: asking it is a bug of the service."""


class Writes(Projection):
    name = "writes"

    @on(Written)
    def written(self, event: Written, session: ProjectionSession) -> None:
        counts = session.handle.setdefault(session.table("count"), {})
        counts["all"] = counts.get("all", 0) + 1


def write(command: Write, uow: UnitOfWork) -> None:
    uow.record(Written(text=command.text))


def engine_and_registry() -> tuple[ReadModels, Registry]:
    types = EventTypes()
    types.register(Written, name="tests.written", version=1)
    storage = MemoryStorage()
    engine = ReadModels(storage, types).add(Writes())
    registry = Registry()
    engine.install(registry)
    registry.handle(Write).by(write)
    registry.handle(CountWrites).by(lambda query: (storage.read_table("writes", "count") or {}).get("all", 0))
    return engine, registry


def anyone(headers: Mapping[str, str]) -> str:
    return "anonymous"


def asgi_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/write")
    async def write_route(mediator: Mediated) -> None:
        await mediator.send(Write(text="x"))

    @app.get("/count")
    async def count_route(mediator: Mediated) -> int:
        return await mediator.ask(CountWrites())

    return app


def wsgi_app(mediator: Mediator) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/write":
            mediator.send(Write(text="x"))
            answer = b"null"
        else:
            answer = str(mediator.ask(CountWrites())).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [answer]
    return app


def embedded(kind: str, registry: Registry, **options: Any) -> Callable[..., httpx.Response]:
    """The service on the ``kind`` embedding, and a function making one request of it in process."""
    options.setdefault("principal", anyone)
    if kind == "asgi":
        async_mediator: AsyncMediator = registry.build_async()
        asgi = MediatorMiddleware(asgi_app(), async_mediator, **options)

        def asgi_request(method: str, url: str, **sent: Any) -> httpx.Response:
            async def send() -> httpx.Response:
                transport = httpx.ASGITransport(app=asgi, raise_app_exceptions=False)
                async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
                    return await client.request(method, url, **sent)
            return asyncio.run(send())
        return asgi_request
    mediator: Mediator = registry.build()
    wsgi = MediatorWSGI(wsgi_app(mediator), mediator, **options)

    def wsgi_request(method: str, url: str, **sent: Any) -> httpx.Response:
        with httpx.Client(transport=httpx.WSGITransport(app=wsgi), base_url="http://service") as client:
            return client.request(method, url, **sent)
    return wsgi_request


def test_the_embeddings_hand_routes_their_mediator_and_answer_a_write_with_its_token() -> None:
    for kind in EMBEDDINGS:
        engine, registry = engine_and_registry()
        request = embedded(kind, registry, engine=engine)
        written = request("POST", "/write")
        assert (written.status_code, written.headers["X-Consistency-Token"]) == (200, "1"), kind
        engine.catch_up()
        counted = request("GET", "/count", headers={"X-Consistent-With": "1"})
        assert (counted.status_code, counted.json()) == (200, 1), kind


# -- the principal resolver ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("embedding", [MediatorMiddleware, MediatorWSGI])
@pytest.mark.parametrize("principal", [None, "x-user", 42])
def test_a_principal_resolver_that_is_missing_or_not_a_function_is_refused_when_built(
        embedding: Callable[..., Any], principal: object) -> None:
    with pytest.raises(EmbeddingConfigError, match=r"principal=") as refused:
        embedding(asgi_app(), Registry().build_async(), principal)
    assert isinstance(refused.value, TypeError)
    assert embedding.__name__ in str(refused.value)


@pytest.mark.parametrize("kind", EMBEDDINGS)
def test_a_resolver_that_answers_none_is_a_500_and_the_application_never_runs(kind: str) -> None:
    engine, registry = engine_and_registry()
    request = embedded(kind, registry, principal=lambda headers: headers.get("x-user"))
    with capture_logs() as logs:
        answer = request("POST", "/write")
    assert (answer.status_code, answer.json()["error"]) == (500, "internal")
    assert engine.storage.head() == 0  # the command never ran: None would have run it as trusted code
    [line] = logs
    assert line["error_type"] == "mediator.http.EmbeddingConfigError"
    assert "return an anonymous principal" in line["error"]
    assert request("POST", "/write", headers={"X-User": "ada"}).status_code == 200


# -- the head of the log ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", EMBEDDINGS)
def test_given_the_engine_a_token_beyond_the_last_write_is_a_400_at_once(kind: str) -> None:
    engine, registry = engine_and_registry()
    request = embedded(kind, registry, engine=engine, consistency_timeout=30)
    assert request("POST", "/write").status_code == 200
    started = time.monotonic()
    beyond = request("GET", "/count", headers={"X-Consistent-With": "2"})
    assert (beyond.status_code, beyond.json()["error"]) == (400, "bad_request")
    assert beyond.json()["detail"] == ("X-Consistent-With 2 is beyond the last write (1); send back a token from "
                                       "X-Consistency-Token.")
    assert time.monotonic() - started < 5  # not the 30 s timeout


@pytest.mark.parametrize("kind", EMBEDDINGS)
def test_without_engine_or_head_the_query_itself_refuses_a_token_beyond_the_last_write(kind: str) -> None:
    _engine, registry = engine_and_registry()
    request = embedded(kind, registry, consistency_timeout=30)
    started = time.monotonic()
    beyond = request("GET", "/count", headers={"X-Consistent-With": "2"})
    assert (beyond.status_code, beyond.json()["error"]) == (400, "bad_request")
    assert beyond.json()["detail"].startswith("Consistency token 2 is beyond the last write (0)")
    assert time.monotonic() - started < 5  # the engine's wait says so at once, not after the 30 s timeout


@pytest.mark.parametrize("kind", EMBEDDINGS)
def test_a_storage_that_is_down_when_the_head_is_read_is_a_503(kind: str) -> None:
    def head() -> int:
        raise StorageError("the database is restarting")

    _engine, registry = engine_and_registry()
    request = embedded(kind, registry, head=head)
    with capture_logs() as logs:
        answer = request("GET", "/count", headers={"X-Consistent-With": "1"})
    assert (answer.status_code, answer.json()["error"]) == (503, "storage_unavailable")
    assert answer.headers["Retry-After"] == "1"
    assert [line["event"] for line in logs] == ["storage unavailable"]
    assert request("GET", "/count").status_code == 200  # a request without a token does not read the head


class NoStorage:
    storage = None


@pytest.mark.parametrize("embedding", [MediatorMiddleware, MediatorWSGI])
@pytest.mark.parametrize(("options", "fix"), [
    ({"head": lambda: 1, "engine": "engine"}, "give engine= alone"),
    ({"engine": NoStorage()}, "has no storage.head()"),
    ({"head": 7}, r"not storage.head\(\)"),
])
def test_a_head_or_engine_that_gives_no_position_is_refused_when_built(
        embedding: Callable[..., Any], options: dict[str, Any], fix: str) -> None:
    engine, _registry = engine_and_registry()
    options = {key: engine if value == "engine" else value for key, value in options.items()}
    with pytest.raises(EmbeddingConfigError, match=fix):
        embedding(asgi_app(), Registry().build_async(), anyone, **options)


# -- the request's own token ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", EMBEDDINGS)
def test_the_token_header_is_the_requests_own_never_one_the_callers_context_holds(kind: str) -> None:
    def caller() -> None:
        _elsewhere, other = engine_and_registry()
        other.build().send(Write(text="in the caller"))  # an in-process caller holds token 1 of another log
        assert last_token() == 1
        _engine, registry = engine_and_registry()
        request = embedded(kind, registry)
        written = request("POST", "/write")
        assert written.headers["X-Consistency-Token"] == "1"  # its own, equal to the caller's by chance
        assert "X-Consistency-Token" not in request("GET", "/count").headers  # wrote nothing: no token
        assert last_token() == 1  # the caller's, untouched

    contextvars.Context().run(caller)  # the caller's token stays out of the other tests


# -- Mediated -------------------------------------------------------------------------------------------------------


def test_the_lifespan_state_a_server_hands_each_request_is_left_as_it_was() -> None:
    _engine, registry = engine_and_registry()
    mediator: AsyncMediator = registry.build_async()
    shared = {"pool": "the app's"}
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["state"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def sent(message: Any) -> None:
        pass

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "state": shared}
    asyncio.run(MediatorMiddleware(app, mediator, anyone)(scope, receive, sent))
    assert seen == [{"pool": "the app's", "mediator": mediator}]
    assert shared == {"pool": "the app's"}


def test_a_route_asking_for_the_mediator_outside_the_middleware_is_a_500_saying_how_to_fix_it() -> None:
    _engine, registry = engine_and_registry()
    app = asgi_app()

    async def count() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            return await client.get("/count")

    with capture_logs() as logs:
        answer = asyncio.run(count())
    assert (answer.status_code, answer.json()["error"]) == (500, "internal")
    assert logs[0]["error_type"] == "mediator.http.EmbeddingConfigError"
    assert "MediatorMiddleware(app, mediator, principal=...)" in logs[0]["error"]
    app.state.mediator = registry.build_async()  # as before the middleware handed it over: still served
    assert asyncio.run(count()).json() == 0


# -- the framework's own errors -------------------------------------------------------------------------------------


class NotThere(LookupError):
    """The application's own error."""


def test_a_framework_error_is_never_answered_through_a_builtin_the_application_maps() -> None:
    status_of: StatusMap = {LookupError: (404, "not_found"), ValueError: (400, "bad_request")}
    assert problem_for(HandlerNotFoundError(Unhandled), status_of) is None  # a bug: 500
    assert problem_for(WiringError(["a problem"]), status_of) is None
    found = problem_for(NotThere("no such thing"), status_of)
    assert found is not None
    assert (found.status, found.error, found.detail) == (404, "not_found", "no such thing")
    mapped = problem_for(HandlerNotFoundError(Unhandled), {HandlerNotFoundError: (501, "not_implemented")})
    assert mapped is not None  # named by its own class, it maps
    assert mapped.status == 501


def test_a_route_asking_a_query_with_no_handler_is_a_500_though_lookup_errors_map_to_404() -> None:
    _engine, registry = engine_and_registry()
    app = FastAPI()
    install_error_handlers(app, {LookupError: (404, "not_found")})

    @app.get("/missing")
    async def missing() -> None:
        raise NotThere("no such thing")

    @app.get("/unhandled")
    async def unhandled(mediator: Mediated) -> int:
        return await mediator.ask(Unhandled())

    service = MediatorMiddleware(app, registry.build_async(), anyone)

    async def get(url: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=service, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            return await client.get(url)

    assert asyncio.run(get("/missing")).status_code == 404
    with capture_logs() as logs:
        answer = asyncio.run(get("/unhandled"))
    assert (answer.status_code, answer.json()["error"]) == (500, "internal")
    assert "Unhandled" not in answer.text  # nothing of the bug reaches the client
    assert [line["error_type"] for line in logs] == ["mediator.HandlerNotFoundError"]  # logged once
