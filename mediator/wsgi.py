"""Embedding the sync ``Mediator`` in a WSGI service (Flask, Django, Bottle or a bare WSGI app); no extra needed.

``MediatorWSGI`` wraps the application: each request runs in one dispatch scope (its principal from the principal
resolver, its correlation id from the request), the response carries the consistency token of the request's last
command, ``X-Consistent-With`` makes its queries read their own writes, a body over ``max_body`` is refused with
413, each failure is logged on one line, and the framework's errors (and those the application maps) answer as
JSON problems: the protocol of :mod:`mediator.http`, which the ASGI embedding speaks too.

>>> import io, json
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
>>> def who(headers):  # the principal resolver: who is acting, "anonymous" without a credential
...     return headers.get("x-user", "anonymous")
>>> service = MediatorWSGI(app, mediator, principal=who, max_body=10)
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
>>> environ.update(REQUEST_METHOD="POST", CONTENT_LENGTH="11", **{"wsgi.input": io.BytesIO(b"x" * 11)})
>>> json.loads(b"".join(service(environ, start_response)))["error"]  # doctest: +ELLIPSIS
413 ...
'too_large'
"""

from __future__ import annotations

import contextlib
import http
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import structlog

from . import Mediator
from ._errors import RequestTooLargeError
from .http import (
    CONSISTENT_HEADER,
    CORRELATION_HEADER,
    MAX_BODY,
    TOKEN_HEADER,
    PrincipalResolver,
    Problem,
    ReadModelEngine,
    StatusMap,
    check_length,
    check_principal,
    check_token,
    correlation_id_of,
    head_of,
    log_failure,
    parse_token,
    problem_for,
    resolve_principal,
    too_large,
    wsgi_headers,
)
from .readmodels import consistent, fresh_token, last_token

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_CONSISTENT = CONSISTENT_HEADER.lower()
_CORRELATION = CORRELATION_HEADER.lower()

log = structlog.get_logger("mediator.http")


def _status_line(status: int) -> str:
    return f"{status} {http.HTTPStatus(status).phrase}"


class MediatorWSGI:
    """WSGI middleware: a dispatch scope per request, read-your-writes across requests, a body limit, errors as
    JSON, one log line per failure.

    The application's response (its status, headers and body, built lazily or not) is collected inside the
    request's scope and sent once it is whole, so a failure at any point of it is answered as an error instead.
    An exception the application lets out is answered with :func:`mediator.http.problem_for` (else 500) and
    logged once (:func:`mediator.http.log_failure`: no traceback, no local variables).

    Args:
        app: the WSGI application to wrap.
        mediator: the sync mediator the application dispatches through.
        principal: the principal resolver (:data:`mediator.http.PrincipalResolver`): turns the request's headers
            (lower-case names, each its first value) into the principal of its dispatch scope, which behaviours
            and handlers read as ``current_context().principal``, or raises :class:`~mediator.AuthenticationError`
            (answered 401). Required, and never answering ``None``, so that an unauthenticated request is an
            anonymous principal, never the trusted "no principal" of in-process code.
        consistency_timeout: how long a query waits for a requested token before answering 503.
        head: the position of the last write in the log (``storage.head``); given it, a token beyond that
            position is refused with 400 instead of waiting for the timeout.
        engine: the read-model engine (:class:`~mediator.readmodels.ReadModels`) the mediator was built with:
            ``head`` is then its storage's. Give one of the two: without either, a token beyond the last write
            waits for the timeout and answers 503.
        status_of: the application's errors and the status and error code each answers with.
        max_body: the most bytes of a request body the application may read from ``wsgi.input``; a larger
            ``CONTENT_LENGTH`` is answered 413 before any of it is read, and a body sent without one (which a
            server marks with ``wsgi.input_terminated``) is cut off with 413 once it passes the limit. ``None``
            lifts the limit.

    Raises:
        EmbeddingConfigError: at construction, when ``principal`` is not a function, or ``head``/``engine`` give
            no position of the log.
    """

    def __init__(self, app: WSGIApp, mediator: Mediator, principal: PrincipalResolver, *,
                 consistency_timeout: float = 5.0, head: Callable[[], int] | None = None,
                 engine: ReadModelEngine | None = None, status_of: StatusMap | None = None,
                 max_body: int | None = MAX_BODY) -> None:
        self.app = app
        self.mediator = mediator
        self.principal = check_principal(principal, "MediatorWSGI")
        self.consistency_timeout = consistency_timeout
        self.head = head_of(head, engine, "MediatorWSGI")
        self.status_of: StatusMap = dict(status_of or {})
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        with fresh_token():  # the token header is this request's own command's, never one the caller's context held
            return self._serve(environ, start_response)

    def _serve(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        headers = wsgi_headers(environ)
        correlation_id = correlation_id_of(headers.get(_CORRELATION))
        echoed = [(CORRELATION_HEADER, correlation_id)]
        refused = check_length(environ.get("CONTENT_LENGTH"), self.max_body)
        if refused is not None:
            return _json(start_response, refused, echoed)
        try:
            principal = resolve_principal(self.principal, headers)
        except Exception as exc:  # AuthenticationError: 401; anything else is the resolver's failure
            return self._failed(exc, start_response, echoed)
        try:
            wanted = parse_token(headers.get(_CONSISTENT))
        except ValueError as exc:
            return _json(start_response, Problem(400, "bad_request", str(exc)), echoed)
        if wanted is not None and self.head is not None:
            try:
                refused = check_token(wanted, self.head)
            except Exception as exc:  # the storage is down: 503
                return self._failed(exc, start_response, echoed)
            if refused is not None:
                return _json(start_response, refused, echoed)
        body = _Body.of(environ, self.max_body)
        response = _Response()
        waiting = consistent(wanted, timeout=self.consistency_timeout) if wanted else contextlib.nullcontext()
        try:
            with self.mediator.scope(correlation_id=correlation_id, principal=principal), waiting:
                result = self.app({**environ, "wsgi.input": body}, response.start)
                try:
                    response.chunks.extend(result)
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                token = last_token()
        except Exception as exc:
            if body.exceeded is None:
                return self._failed(exc, start_response, echoed)
        if body.exceeded is not None:  # whatever the application made of it
            return _json(start_response, too_large(body.exceeded), echoed)
        extra = [(TOKEN_HEADER, str(token))] if token is not None else []
        start_response(response.status, [*response.headers, *echoed, *extra])
        return [b"".join(response.chunks)]

    def _failed(self, exc: Exception, start_response: StartResponse,
                echoed: list[tuple[str, str]]) -> list[bytes]:
        correlation_id = echoed[0][1]
        found = problem_for(exc, self.status_of)
        if found is None:
            log_failure(log, "request failed", exc, correlation_id=correlation_id)
            found = Problem(500, "internal", "Something went wrong; it has been logged.",
                            extra={"correlation_id": correlation_id})
        elif found.log is not None:
            log_failure(log, found.log, exc, level=found.level, correlation_id=correlation_id)
        return _json(start_response, found, echoed)


@attrs.define
class _Response:
    """The application's response, collected: what it passed to ``start_response`` and what it wrote."""

    status: str = "500 Internal Server Error"
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    chunks: list[bytes] = attrs.field(factory=list)

    def start(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        # Nothing is sent before the application is done, so a second call (with exc_info) simply replaces it.
        self.status, self.headers = status, list(headers)
        self.chunks.clear()
        return self.chunks.append  # the legacy write()


@attrs.define
class _Body:
    """``wsgi.input`` for the application: at most ``budget`` bytes of it, and an error past the limit.

    With a ``CONTENT_LENGTH`` (already checked against the limit) the body is that many bytes; without one, a body
    the server marks as terminated (``wsgi.input_terminated``: chunked) is read up to one byte past the limit,
    then refused; any other is empty, as PEP 3333 has it.
    """

    stream: Any
    budget: int | None
    """How many bytes may still be read from ``stream``; ``None``: up to its end."""
    limit: int | None
    seen: int = 0
    exceeded: int | None = None
    """The limit, once the body has passed it."""

    @classmethod
    def of(cls, environ: dict[str, Any], limit: int | None) -> _Body:
        length = (environ.get("CONTENT_LENGTH") or "").strip()
        if length:
            budget: int | None = int(length)  # check_length has seen it is a number within the limit
        elif environ.get("wsgi.input_terminated"):
            budget = None if limit is None else limit + 1
        else:
            budget = 0
        return cls(environ["wsgi.input"], budget, limit)

    def _size(self, size: int | None) -> int | None:
        if self.budget is None:
            return None if size is None or size < 0 else size
        left = max(self.budget - self.seen, 0)
        return left if size is None or size < 0 else min(size, left)

    def _count(self, data: bytes) -> bytes:
        self.seen += len(data)
        if self.limit is not None and self.seen > self.limit:
            self.exceeded = self.limit
            raise RequestTooLargeError(self.limit)
        return data

    def read(self, size: int | None = -1) -> bytes:
        if self.exceeded is not None:
            raise RequestTooLargeError(self.exceeded)
        wanted = self._size(size)
        if wanted == 0:
            return b""
        return self._count(self.stream.read() if wanted is None else self.stream.read(wanted))

    def readline(self, size: int | None = -1) -> bytes:
        if self.exceeded is not None:
            raise RequestTooLargeError(self.exceeded)
        wanted = self._size(size)
        if wanted == 0:
            return b""
        return self._count(self.stream.readline() if wanted is None else self.stream.readline(wanted))

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def _json(start_response: StartResponse, found: Problem, headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    payload = json.dumps(found.body()).encode()
    start_response(_status_line(found.status), [("Content-Type", "application/json"),
                                                ("Content-Length", str(len(payload))), *found.headers, *headers])
    return [payload]


__all__ = ["MediatorWSGI"]
