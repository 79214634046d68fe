"""Embedding the sync ``Mediator`` in a WSGI service (Flask, Django, Bottle or a bare WSGI app); no extra needed.

``MediatorWSGI`` wraps the application: each request runs in one dispatch scope (its principal and
correlation id taken from the request), the response carries the consistency token of the request's last
command, ``X-Consistent-With`` makes its queries read their own writes, and the framework's errors (and those
the application maps) answer as JSON problems: the protocol of :mod:`mediator.http`, which the ASGI
embedding speaks too.

>>> import json
>>> import attrs
>>> from wsgiref.util import setup_testing_defaults
>>> from mediator import Query, Registry
>>> @attrs.frozen(kw_only=True)
... class Greet(Query[str]):
...     name: str
>>> registry = Registry()
>>> registry.handle(Greet).by(lambda query: f"hello {query.name}")
>>> mediator = registry.build()
>>> def app(environ, start_response):
...     start_response("200 OK", [("Content-Type", "text/plain")])
...     return [mediator.ask(Greet(name=environ["PATH_INFO"][1:])).encode()]
>>> service = MediatorWSGI(app, mediator, principal=lambda headers: headers.get("x-user"))
>>> environ = {"PATH_INFO": "/ada", "HTTP_X_CONSISTENT_WITH": "x"}
>>> setup_testing_defaults(environ)
>>> def start_response(status, headers, exc_info=None):
...     print(status)
>>> json.loads(b"".join(service(environ, start_response)))["error"]
400 Bad Request
'bad_request'
>>> del environ["HTTP_X_CONSISTENT_WITH"]
>>> b"".join(service(environ, start_response))
200 OK
b'hello ada'
"""

from __future__ import annotations

import contextlib
import http
import json
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from . import Mediator
from .http import (
    CONSISTENT_HEADER,
    CORRELATION_HEADER,
    TOKEN_HEADER,
    StatusMap,
    parse_token,
    problem_for,
)
from .readmodels import consistent, last_token

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_CONSISTENT = CONSISTENT_HEADER.lower()
_CORRELATION = CORRELATION_HEADER.lower()

log = structlog.get_logger("mediator.http")


def _status_line(status: int) -> str:
    return f"{status} {http.HTTPStatus(status).phrase}"


class MediatorWSGI:
    """WSGI middleware: a dispatch scope per request, read-your-writes across requests, errors as JSON.

    The application's response body is read inside the request's scope (so a body built lazily still runs
    in it), then returned whole.

    Args:
        app: the WSGI application to wrap.
        mediator: the sync mediator the application dispatches through.
        principal: turns the request's headers (lower-case names) into the principal of its dispatch scope;
            required, so that an unauthenticated request is an anonymous principal, never "no principal".
        consistency_timeout: how long a query waits for a requested token before answering 503.
        head: the position of the last write in the log (``storage.head``); given it, a token beyond that
            position is refused with 400 instead of waiting for the timeout.
        status_of: the application's errors and the status and error code each answers with.
    """

    def __init__(self, app: WSGIApp, mediator: Mediator, principal: Callable[[Mapping[str, str]], Any], *,
                 consistency_timeout: float = 5.0, head: Callable[[], int] | None = None,
                 status_of: StatusMap | None = None) -> None:
        self.app = app
        self.mediator = mediator
        self.principal = principal
        self.consistency_timeout = consistency_timeout
        self.head = head
        self.status_of: StatusMap = dict(status_of or {})

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items()
                   if key.startswith("HTTP_")}
        correlation_id = headers.get(_CORRELATION) or uuid.uuid4().hex
        echoed = [(CORRELATION_HEADER, correlation_id)]
        try:
            wanted = parse_token(headers.get(_CONSISTENT), self.head)
        except ValueError as exc:
            return _json(start_response, 400, {"error": "bad_request", "detail": str(exc)}, echoed)
        before = last_token()

        def start_with_headers(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            token = last_token()
            extra = [*echoed, *([(TOKEN_HEADER, str(token))] if token is not None and token != before else [])]
            return start_response(status, [*response_headers, *extra], *(() if exc_info is None else (exc_info,)))

        waiting = consistent(wanted, timeout=self.consistency_timeout) if wanted else contextlib.nullcontext()
        try:
            with self.mediator.scope(correlation_id=correlation_id, principal=self.principal(headers)), waiting:
                result = self.app(environ, start_with_headers)
                try:
                    return [b"".join(result)]
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
        except Exception as exc:
            found = problem_for(exc, self.status_of)
            if found is None:
                log.exception("request failed")
                return _json(start_response, 500, {"error": "internal", "correlation_id": correlation_id,
                                                   "detail": "Something went wrong; it has been logged."}, echoed)
            if found.log is not None:
                log.error(found.log, error_type=type(exc).__name__, error=str(exc))
            return _json(start_response, found.status, found.body(), [*echoed, *found.headers])


def _json(start_response: StartResponse, status: int, body: Mapping[str, Any],
          headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    payload = json.dumps(body).encode()
    # With the exception in hand: the application may have started its own response before it failed.
    start_response(_status_line(status), [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(payload))), *headers], sys.exc_info())
    return [payload]


__all__ = ["MediatorWSGI"]
