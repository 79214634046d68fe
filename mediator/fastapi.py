"""Embedding an ``AsyncMediator`` in a FastAPI (or any ASGI) service; needs the ``fastapi`` extra.

``MediatorMiddleware`` opens one dispatch scope per request (its principal
and correlation id taken from the request), returns the consistency token of
the request's last command in the ``X-Consistency-Token`` header, and makes
queries of a request that sends ``X-Consistent-With: <token>`` wait for their
read models to reach it, so a client reads its own writes across requests.
``install_error_handlers`` maps the framework's and the application's errors to HTTP
(see :mod:`mediator.http` for the protocol, which the WSGI embedding shares).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Annotated, Any

import structlog

from . import AsyncMediator, MediatorError, ValidationError, current_context
from ._errors import MissingExtraError
from .http import CONSISTENT_HEADER, CORRELATION_HEADER, TOKEN_HEADER, StatusMap, parse_token, problem_for
from .readmodels import ConsistencyTimeoutError, StorageError, consistent, last_token

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
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


class MediatorMiddleware:
    """Pure ASGI middleware: a dispatch scope per request, and read-your-writes across requests.

    Args:
        app: the ASGI application to wrap.
        mediator: the async mediator the routes dispatch through.
        principal: turns the request's headers into the principal of its dispatch scope; required, so that
            an unauthenticated request is an anonymous principal, never the trusted "no principal".
        consistency_timeout: how long a query waits for a requested token before answering 503.
        head: the position of the last write in the log (``storage.head``); given it, a token beyond that
            position, which this service never issued and no read model can reach, is refused with 400
            instead of waiting for the timeout.
    """

    def __init__(self, app: ASGIApp, mediator: AsyncMediator, principal: Callable[[Mapping[str, str]], Any],
                 consistency_timeout: float = 5.0, head: Callable[[], int] | None = None) -> None:
        self.app = app
        self.mediator = mediator
        self.principal = principal
        self.consistency_timeout = consistency_timeout
        self.head = head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        correlation_id = headers.get(_CORRELATION) or uuid.uuid4().hex
        try:
            wanted = parse_token(headers.get(_CONSISTENT), self.head)
        except ValueError as exc:
            await _respond(send, 400, {"error": "bad_request", "detail": str(exc)})
            return
        before = last_token()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(_CORRELATION.encode(), correlation_id.encode())]
                token = last_token()
                if token is not None and token != before:
                    extra.append((_TOKEN, str(token).encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        waiting = consistent(wanted, timeout=self.consistency_timeout) if wanted else contextlib.nullcontext()
        async with self.mediator.scope(correlation_id=correlation_id, principal=self.principal(headers)):
            with waiting, _incoming_trace(headers):
                await self.app(scope, receive, send_with_headers)


@contextlib.contextmanager
def _incoming_trace(headers: Mapping[str, str]) -> Any:
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


async def _respond(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def current_mediator(request: Request) -> AsyncMediator:
    """The FastAPI dependency that hands a route the application's mediator (``app.state.mediator``)."""
    mediator: AsyncMediator = request.app.state.mediator
    return mediator


Mediated = Annotated[AsyncMediator, Depends(current_mediator)]
"""Annotate a route parameter with this to receive the mediator: ``async def route(mediator: Mediated)``."""


def problem(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    """A JSON error body: ``{"error": ..., "detail": ..., ...}``."""
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status)


def install_error_handlers(app: FastAPI, status_of: StatusMap) -> None:
    """Map errors to HTTP as :func:`mediator.http.problem_for` does: validation 422 with field errors,
    ``status_of`` for the application's, a read model not caught up in time, being rebuilt, or the storage
    unavailable 503 (with ``Retry-After``), anything else 500.

    A 500 carries the correlation id and no detail from the exception, so nothing internal leaks.
    """

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields: dict[str, list[str]] = {}
        for error in exc.errors():
            location = ".".join(str(p) for p in error.get("loc", ())[1:]) or str(error.get("loc", ("",))[0])
            fields.setdefault(location, []).append(str(error.get("msg", "invalid")))
        return problem(422, "validation", "The request is invalid.", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        names = {404: "not_found", 405: "method_not_allowed"}
        return problem(exc.status_code, names.get(exc.status_code, "http_error"), str(exc.detail))

    async def mapped(request: Request, exc: Exception) -> JSONResponse:
        found = problem_for(exc, status_of)
        if found is None:  # pragma: no cover - registered only for the types problem_for maps
            raise exc
        if found.log is not None:
            log.error(found.log, error_type=type(exc).__name__, error=str(exc))
        answer = JSONResponse(found.body(), status_code=found.status)
        answer.headers.update(dict(found.headers))
        return answer

    # One handler per mapped type, so Starlette answers them where they are raised; only what is left reaches
    # the catch-all below (which Starlette re-raises to the server after answering, as a 500 should be).
    for error_type in (ValidationError, StorageError, ConsistencyTimeoutError, *status_of):
        app.add_exception_handler(error_type, mapped)

    @app.exception_handler(Exception)
    async def anything(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, MediatorError):
            log.error("request failed", error_type=type(exc).__name__)
        else:
            log.exception("request failed")
        try:
            correlation_id = current_context().correlation_id
        except MediatorError:
            correlation_id = request.headers.get(CORRELATION_HEADER, "")
        return problem(500, "internal", "Something went wrong; it has been logged.", correlation_id=correlation_id)


__all__ = ["Mediated", "MediatorMiddleware", "current_mediator", "install_error_handlers", "problem"]
