"""Embedding an ``AsyncMediator`` in a FastAPI (or any ASGI) service; needs the ``fastapi`` extra.

``MediatorMiddleware`` opens one dispatch scope per request (its principal from the principal resolver, its
correlation id from the request), hands its mediator to the routes that ask for it with :data:`Mediated`, returns
the consistency token of the request's last command in the ``X-Consistency-Token`` header, makes queries of a
request that sends ``X-Consistent-With: <token>`` wait for their read models to reach it, so a client reads its own
writes across requests (given the read-model ``engine``, a token beyond its last write is refused with 400),
refuses a body over ``max_body`` with 413, and logs each failure on one line. ``install_error_handlers`` maps the
framework's and the application's errors to HTTP (see :mod:`mediator.http` for the protocol, which the WSGI
embedding shares).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Annotated, Any, TypeVar

import attrs
import structlog

from . import Answer, AsyncMediator, AuthenticationError, MediatorError, Query, ValidationError, current_context
from ._errors import MissingExtraError, RequestTooLargeError
from .http import (
    CONSISTENT_HEADER,
    CORRELATION_HEADER,
    IDEMPOTENCY_HEADER,
    MAX_BODY,
    TOKEN_HEADER,
    EmbeddingConfigError,
    PrincipalResolver,
    Problem,
    ReadModelEngine,
    StatusMap,
    asgi_headers,
    check_length,
    check_principal,
    check_token,
    correlation_id_of,
    head_of,
    idempotency_key_of,
    log_failure,
    parse_token,
    problem_for,
    resolve_principal,
    too_large,
)
from .readmodels import ConsistencyTimeoutError, ReadModels, StorageError, consistent, fresh_token, last_token
from .readmodels._serialization import to_data

try:
    from fastapi import Depends, FastAPI, Header, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised by the wheel test
    raise MissingExtraError(__name__, "fastapi", _missing.name) from _missing

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TOKEN = TOKEN_HEADER.lower().encode()
_CONSISTENT = CONSISTENT_HEADER.lower()
_CORRELATION = CORRELATION_HEADER.lower()

log = structlog.get_logger("mediator.http")

_logged: ContextVar[list[BaseException] | None] = ContextVar("mediator_http_logged", default=None)
"""The failures of the request in hand that its error handlers have logged: the middleware logs the others."""


class MediatorMiddleware:
    """Pure ASGI middleware: a dispatch scope per request, read-your-writes across requests, a body limit, one
    log line per failure.

    Wrap the FastAPI (or Starlette) application in it and serve what it returns: ``MediatorMiddleware(app, ...)``
    is built at once, so a wrong argument fails at start-up (``app.add_middleware`` works too, but builds it at
    the first request). Each request's ``request.state.mediator`` is ``mediator``, which routes receive through
    :data:`Mediated`.

    An exception the application lets out is answered here if the application has not answered it (with
    :func:`mediator.http.problem_for`, else 500), logged once (:func:`mediator.http.log_failure`: no traceback,
    no local variables), and not passed on to the server, which would log it again with its traceback.

    Args:
        app: the ASGI application to wrap.
        mediator: the async mediator the routes dispatch through.
        principal: the principal resolver (:data:`mediator.http.PrincipalResolver`): turns the request's headers
            (lower-case names, each its first value) into the principal of its dispatch scope, which behaviours
            and handlers read as ``current_context().principal``, or raises :class:`~mediator.AuthenticationError`
            (answered 401). Required, and never answering ``None``, so that an unauthenticated request is an
            anonymous principal, never the trusted "no principal" of in-process code.
        consistency_timeout: how long a query waits for a requested token before answering 503.
        head: the position of the last write in the log (``storage.head``); given it, a token beyond that
            position, which this service never issued and no read model can reach, is refused with 400
            instead of waiting for the timeout.
        engine: the read-model engine (:class:`~mediator.readmodels.ReadModels`) the mediator was built with:
            ``head`` is then its storage's. Give one of the two: without either, a token beyond the last write
            waits for the timeout and answers 503.
        max_body: the most bytes of a request body the application may read; a larger ``Content-Length`` is
            answered 413 before any of it is read, and a body streamed without one is cut off with 413 once it
            passes the limit. ``None`` lifts the limit.
        status_of: the application's errors and the status and error code each answers with, for those it
            lets out of the application unanswered (a bare ASGI app, or the principal resolver); errors a route
            raises are answered by the handlers of :func:`install_error_handlers`.

    Raises:
        EmbeddingConfigError: at construction, when ``principal`` is not a function, or ``head``/``engine`` give
            no position of the log.
    """

    def __init__(self, app: ASGIApp, mediator: AsyncMediator, principal: PrincipalResolver,
                 consistency_timeout: float = 5.0, head: Callable[[], int] | None = None, *,
                 engine: ReadModelEngine | None = None, max_body: int | None = MAX_BODY,
                 status_of: StatusMap | None = None) -> None:
        self.app = app
        self.mediator = mediator
        self.principal = check_principal(principal, "MediatorMiddleware")
        self.consistency_timeout = consistency_timeout
        self.head = head_of(head, engine, "MediatorMiddleware")
        self.max_body = max_body
        self.status_of: StatusMap = dict(status_of or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with fresh_token():  # the token header is this request's own command's, never one the caller's context held
            await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = asgi_headers(scope.get("headers", ()))
        correlation_id = correlation_id_of(headers.get(_CORRELATION))
        answer = _Answer(send, correlation_id, scope.get("http_version", "1.1") in ("1.0", "1.1"))
        refused = check_length(headers.get("content-length"), self.max_body)
        if refused is not None:
            await answer.problem(refused)
            return
        try:
            principal = resolve_principal(self.principal, headers)
        except Exception as exc:  # AuthenticationError: 401; anything else is the resolver's failure
            await self._failed(exc, answer)
            return
        try:
            wanted = parse_token(headers.get(_CONSISTENT))
        except ValueError as exc:
            await answer.problem(Problem(400, "bad_request", str(exc)))
            return
        if wanted is not None and self.head is not None:
            try:  # off the event loop: it reads the storage
                refused = await asyncio.to_thread(check_token, wanted, self.head)
            except Exception as exc:  # the storage is down: 503
                await self._failed(exc, answer)
                return
            if refused is not None:
                await answer.problem(refused)
                return
        # The request's own state (Starlette's ``request.state``), so lifespan state shared by requests is untouched.
        scope = {**scope, "state": {**scope.get("state", {}), "mediator": self.mediator}}
        body = _Body(receive, self.max_body)
        waiting = consistent(wanted, timeout=self.consistency_timeout) if wanted else contextlib.nullcontext()
        logged = _logged.set([])
        try:
            async with self.mediator.scope(correlation_id=correlation_id, principal=principal):
                with waiting, _incoming_trace(headers):
                    await self.app(scope, body, answer.unless(body))
        except Exception as exc:
            if body.exceeded is None:
                await self._failed(exc, answer)
                return
        finally:
            _logged.reset(logged)
        if body.exceeded is not None and not answer.started:  # whatever the application made of it
            await answer.problem(too_large(body.exceeded))

    async def _failed(self, exc: Exception, answer: _Answer) -> None:
        """Log ``exc`` once (unless the application's error handler did, before answering it), and answer it
        unless the application did (Starlette answers, then re-raises)."""
        found = problem_for(exc, self.status_of)
        if not any(exc is seen for seen in _logged.get() or ()):
            _log(exc, found, answer.correlation_id)
        if not answer.started:
            await answer.problem(found or _internal(answer.correlation_id))
        # else the answer is on its way; one cut short ends the connection when this returns


def _log(exc: BaseException, found: Problem | None, correlation_id: str) -> None:
    """Log ``exc`` as its problem says (an unknown error as "request failed"), and note it as logged."""
    if found is None:
        log_failure(log, "request failed", exc, correlation_id=correlation_id)
    elif found.log is not None:
        log_failure(log, found.log, exc, level=found.level, correlation_id=correlation_id)
    seen = _logged.get()
    if seen is not None:
        seen.append(exc)


def _internal(correlation_id: str) -> Problem:
    return Problem(500, "internal", "Something went wrong; it has been logged.",
                   extra={"correlation_id": correlation_id})


@attrs.define
class _Body:
    """The request's ``receive``, cut off with :class:`~mediator.http.RequestTooLargeError` past ``limit``."""

    receive: Receive
    limit: int | None
    seen: int = 0
    exceeded: int | None = None
    """The limit, once the body has passed it."""

    async def __call__(self) -> Message:
        if self.exceeded is not None:
            raise RequestTooLargeError(self.exceeded)
        message = await self.receive()
        if self.limit is not None and message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.exceeded = self.limit
                raise RequestTooLargeError(self.limit)
        return message


@attrs.define
class _Answer:
    """The response on its way: the correlation id and consistency token added, and whether it has started."""

    send: Send
    correlation_id: str
    http1: bool
    """HTTP/1 (where a 413 asks to close the connection, so the rest of the body is not read: HTTP/2 has no such
    header, and resets the stream instead)."""
    started: bool = False

    async def forward(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            extra = [(_CORRELATION.encode(), self.correlation_id.encode("ascii"))]
            token = last_token()  # inside fresh_token(): a command of this request's
            if token is not None:
                extra.append((_TOKEN, str(token).encode()))
            message["headers"] = [*message.get("headers", []), *extra]
        await self.send(message)

    def unless(self, body: _Body) -> Send:
        """``forward``, dropping what the application answers once ``body`` has passed its limit (a 413 goes
        instead, whatever it made of the error: FastAPI answers a body it cannot read with 400)."""
        async def send(message: Message) -> None:
            if body.exceeded is None or self.started:
                await self.forward(message)
        return send

    async def problem(self, found: Problem) -> None:
        payload = json.dumps(found.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                   *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in found.headers)]
        if found.status == 413 and self.http1:
            headers.append((b"connection", b"close"))
        await self.forward({"type": "http.response.start", "status": found.status, "headers": headers})
        await self.send({"type": "http.response.body", "body": payload})


@contextlib.contextmanager
def _incoming_trace(headers: dict[str, str]) -> Any:
    """Join the caller's trace (W3C ``traceparent``) when OpenTelemetry is installed; do nothing otherwise."""
    try:
        from opentelemetry import context, propagate
    except ImportError:
        yield
        return
    token = context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        context.detach(token)


def current_mediator(request: Request) -> AsyncMediator:
    """The FastAPI dependency that hands a route the mediator of :class:`MediatorMiddleware` (which puts it in
    ``request.state``), else ``app.state.mediator``.

    Raises:
        EmbeddingConfigError: when there is neither: the application is served without the middleware.
    """
    mediator: AsyncMediator | None = getattr(request.state, "mediator", None)
    if mediator is None:
        mediator = getattr(request.app.state, "mediator", None)
    if mediator is None:
        raise EmbeddingConfigError(
            "No mediator for this request: serve the application wrapped in "
            "MediatorMiddleware(app, mediator, principal=...), which hands its mediator to routes, or set "
            "app.state.mediator.")
    return mediator


Mediated = Annotated[AsyncMediator, Depends(current_mediator)]
"""Annotate a route parameter with this to receive the mediator: ``async def route(mediator: Mediated)``."""


def _idempotency_key(key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None) -> str | None:
    return idempotency_key_of(key)


IdempotencyKey = Annotated[str | None, Depends(_idempotency_key)]
"""Annotate a route parameter with this to receive the request's ``Idempotency-Key`` (``None`` without one), to
give to an :class:`~mediator.IdempotentCommand`: ``PlaceOrder(..., idempotency_key=key)``. A repeat answers the
first request's result and consistency token; a key reused for another payload answers 422, one whose first
request is still running 409 (see :func:`mediator.http.problem_for`)."""


R = TypeVar("R")

LAST_EVENT_ID = "last-event-id"
"""The header a browser's ``EventSource`` sends when it reconnects: the ``id`` of the last event it got, here the
consistency token of the last answer."""


def _last_event_id(value: str | None) -> int | None:
    """The token to resume after; ``None`` (start afresh) for none, or for one this service cannot have sent."""
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 19):  # ("²".isdigit(), but int("²") fails)
        return None
    return int(text)


def _sse(answer: Answer[R], event: str, encode: Callable[[R], Any]) -> bytes:
    payload = json.dumps(encode(answer.value), separators=(",", ":"), ensure_ascii=False)
    return f"id: {answer.token}\nevent: {event}\ndata: {payload}\n\n".encode()


def _failed_event(exc: Exception, status_of: StatusMap) -> bytes:
    """An ``error`` event for a query that failed mid-stream (logged once here); the stream ends after it, and a
    browser that reconnects is answered the error's status, since a resumed stream asks the query first."""
    found = problem_for(exc, status_of)
    if found is None:
        log_failure(log, "stream failed", exc)
        body: dict[str, Any] = {"error": "internal", "detail": "Something went wrong; it has been logged."}
    else:
        if found.log is not None:
            log_failure(log, found.log, exc, level=found.level)
        body = found.body()
    return f"event: error\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


async def event_stream(mediator: AsyncMediator, query: Query[R], request: Request, *, event: str = "answer",
                       encode: Callable[[R], Any] = to_data, keepalive: float = 15.0,
                       retry: float = 2.0) -> StreamingResponse:
    """A route's answer as Server-Sent Events: ``query``'s answer now, then each new one
    (``mediator.subscribe``), as events named ``event``, each with its consistency token as its ``id`` and
    ``encode(value)`` as JSON in its ``data``.

    A browser's ``EventSource`` that reconnects sends the last token as ``Last-Event-ID``: the stream resumes after
    it, its first event coming once something that can change the answer was committed since. A comment goes out
    every ``keepalive`` seconds without one (proxies close idle connections); ``retry`` is the reconnection delay
    the browser is told. The subscription ends when the client goes away, or at shutdown
    (``engine.live.close()``), which ends the stream.

    The query is asked before the response starts (resuming too), so one that fails answers its error's status,
    not a stream; one that fails later ends the stream with an ``error`` event (its problem as JSON).

    >>> # @app.get("/dashboard/live")
    >>> # async def live(mediator: Mediated, request: Request) -> StreamingResponse:
    >>> #     return await event_stream(mediator, GetSalesDashboard(), request, event="dashboard")

    Raises:
        mediator.SubscriptionError: if ``query`` cannot be subscribed to.
    """
    after = _last_event_id(request.headers.get(LAST_EVENT_ID))
    subscription = mediator.subscribe(query, after=after)
    status_of: StatusMap = getattr(request.app.state, "mediator_status_of", {})  # (install_error_handlers')
    first: Answer[R] | None = None
    try:
        if after is None:
            first = await subscription.__anext__()
        else:  # resuming: asked all the same, so a query that fails now answers its status, not a stream
            await mediator.ask(query)
    except StopAsyncIteration:  # the feed closed meanwhile: an empty stream
        pass
    except BaseException:
        subscription.close()
        raise

    async def events() -> AsyncIterator[bytes]:
        waiting: asyncio.Future[Answer[R]] | None = None
        try:
            yield f"retry: {round(retry * 1000)}\n\n".encode()
            if first is not None:
                yield _sse(first, event, encode)
            while True:
                if waiting is None:
                    waiting = asyncio.ensure_future(subscription.__anext__())
                done, _ = await asyncio.wait({waiting}, timeout=keepalive)
                if not done:
                    yield b": keep-alive\n\n"
                    continue
                finished, waiting = waiting, None
                try:
                    answer = finished.result()
                except StopAsyncIteration:
                    return
                except Exception as exc:  # the query failed after the stream began: say so, then end it
                    yield _failed_event(exc, status_of)
                    return
                yield _sse(answer, event, encode)
        finally:
            if waiting is not None:
                waiting.cancel()
            subscription.close()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def health_routes(app: FastAPI, engine: ReadModels, *, prefix: str = "/health") -> None:
    """Add a liveness and a readiness endpoint to ``app``, for container probes (left out of the OpenAPI schema):

    - ``GET {prefix}/live``: 200 while the process serves requests;
    - ``GET {prefix}/ready``: 200 while every projection meets its readiness rule
      (``engine.health.ready_when(Readiness(max_lag=..., max_parked=...), projection=...)``), else 503; the body
      says, per projection, its lag, its oldest parked event, its rule and why it is not ready.

    The check reads the storage off the event loop. A storage that cannot be read answers 503 too.
    """

    @app.get(f"{prefix}/live", include_in_schema=False)
    async def live() -> JSONResponse:
        return JSONResponse({"status": "live"})

    @app.get(f"{prefix}/ready", include_in_schema=False)
    async def ready() -> JSONResponse:
        try:
            report = await asyncio.to_thread(engine.health.check)
        except StorageError as exc:
            return JSONResponse({"status": "not ready", "storage": f"{type(exc).__name__}: {exc}"},
                                status_code=503, headers={"Cache-Control": "no-store"})
        return JSONResponse(report.body(), status_code=200 if report.ready else 503,
                            headers={"Cache-Control": "no-store"})


def problem(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    """A JSON error body: ``{"error": ..., "detail": ..., ...}``."""
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)


def _response(found: Problem) -> JSONResponse:
    answer = JSONResponse(found.body(), status_code=found.status)
    answer.headers.update(dict(found.headers))
    return answer


def install_error_handlers(app: FastAPI, status_of: StatusMap | None = None) -> None:
    """Map errors to HTTP as :func:`mediator.http.problem_for` does: a missing or invalid credential 401 (with
    ``WWW-Authenticate``), a body too large 413, validation 422 with field errors (FastAPI's request validation
    and the mediator's :class:`~mediator.ValidationError` alike), ``status_of`` for the application's, a value the
    database refused 422, a conflicting write 409, a read model not caught up in time, being rebuilt, or the
    storage unavailable 503 (with ``Retry-After``), anything else 500.

    The application's own errors (a thing not found, a conflicting change) answer only as ``status_of`` maps
    them, the most specific class first; one it does not map is a 500. The framework's other errors (a message
    with no handler, a scope misused, a wiring problem) are bugs of the service: they stay 500s even where
    ``status_of`` maps a built-in they derive from (a :class:`~mediator.HandlerNotFoundError` is a
    ``LookupError``), so a missing handler never passes for a missing thing.

    A 500 carries the correlation id and no detail from the exception, so nothing internal leaks; the failure is
    logged on one line, without a traceback (and :class:`MediatorMiddleware`, to which Starlette passes it on
    after answering, does not log it again).

    >>> class NoteNotFound(LookupError): ...
    >>> class NoteExists(ValueError): ...
    >>> app = FastAPI()
    >>> install_error_handlers(app, {NoteNotFound: (404, "not_found"), NoteExists: (409, "conflict")})
    """
    status_of = dict(status_of or {})
    app.state.mediator_status_of = status_of  # for errors answered after a response began (event_stream)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields: dict[str, list[str]] = {}
        for error in exc.errors():
            location = ".".join(str(p) for p in error.get("loc", ())[1:]) or str(error.get("loc", ("",))[0])
            fields.setdefault(location, []).append(str(error.get("msg", "invalid")))
        return problem(422, "validation", "The request is invalid.", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        names = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        return problem(exc.status_code, names.get(exc.status_code, "http_error"), str(exc.detail))

    async def answer(request: Request, exc: Exception) -> JSONResponse:
        found = problem_for(exc, status_of)  # also a database driver's error, by what it means
        correlation_id = _correlation_id(request)
        _log(exc, found, correlation_id)  # before the answer goes, so the line is there when the client has it
        return _response(found or _internal(correlation_id))

    # One handler per mapped type, so Starlette answers them where they are raised; only what is left reaches
    # the catch-all (which Starlette passes on to the middleware after answering, as a 500 should be).
    for error_type in (AuthenticationError, RequestTooLargeError, ValidationError, StorageError,
                       ConsistencyTimeoutError, *status_of, Exception):
        app.add_exception_handler(error_type, answer)


def _correlation_id(request: Request) -> str:
    try:
        return current_context().correlation_id
    except MediatorError:  # not under MediatorMiddleware
        return correlation_id_of(request.headers.get(CORRELATION_HEADER))


__all__ = ["LAST_EVENT_ID", "IdempotencyKey", "Mediated", "MediatorMiddleware", "current_mediator", "event_stream",
           "health_routes", "install_error_handlers", "problem"]
