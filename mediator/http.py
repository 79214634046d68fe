"""What every HTTP embedding of a mediator shares, with no web framework: headers, limits, identity, error statuses
and how a failure is logged.

:mod:`mediator.fastapi` (ASGI) and :mod:`mediator.wsgi` speak the same protocol:

- ``X-Correlation-Id`` on a request becomes the correlation id of its dispatch scope when it is one (up to 128 of
  ``A-Z a-z 0-9 . _ : -``); otherwise the request gets a new one. The response carries the id used;
- ``X-Consistency-Token`` on a response carries the commit position of the request's last command;
- ``X-Consistent-With: <token>`` on a request makes its queries wait until their read models have reached that
  token (read-your-writes across requests); a token that is not one is answered 400;
- a header sent more than once counts with its first value, as Starlette reads it (a WSGI server joins the values
  with commas: the text before the first comma);
- a body larger than ``max_body`` (:data:`MAX_BODY` by default) is answered 413, and no more of it is read;
- the principal resolver turns the headers into the dispatch scope's principal, or raises
  :class:`~mediator.AuthenticationError`, answered 401 with a ``WWW-Authenticate`` challenge. It is required, and
  may not answer ``None``: that is the principal of trusted in-process code, so a request would run as one;
- given the read-model engine (``engine=``) or the head of its log (``head=``), a token beyond the last write,
  which no read model can ever reach, is answered 400 at once; without either it waits out the timeout (503);
- errors of the framework answer as JSON problems, ``{"error": ..., "detail": ...}``, with the status
  :func:`problem_for` gives them, the application's own errors with the statuses it maps them to, and a database
  driver's errors by what they mean: a value the database refused 422, a conflicting write 409, anything else
  503 with ``Retry-After``. Anything else is a 500 that says nothing of the failure;
- a failure is logged on one line (:func:`log_failure`): its type, the first line of its message and where it
  was raised, never a traceback nor the local variables in it.

>>> parse_token("42")
42
>>> parse_token("forty-two")
Traceback (most recent call last):
...
ValueError: X-Consistent-With must be a token from X-Consistency-Token (digits), not 'forty-two'.
>>> problem_for(ValueError("boom"), {ValueError: (400, "bad_request")}).status
400
>>> correlation_id_of("req-42"), len(correlation_id_of("caf\\xe9"))
('req-42', 32)
"""

from __future__ import annotations

import os
import re
import sys
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import attrs

from ._errors import (
    AuthenticationError,
    IdempotencyKeyError,
    IdempotencyKeyInUseError,
    IdempotencyKeyMismatchError,
    MediatorError,
    RequestTooLargeError,
    ValidationError,
)
from ._messages import qualname
from .readmodels import ConsistencyTimeoutError, ReadModelUnavailableError, StorageError, TokenBeyondHeadError

# The one use of the engine's private token variable outside it, until mediator.readmodels offers this itself.

TOKEN_HEADER = "X-Consistency-Token"
"""The response header with the commit position of the request's last command."""
CONSISTENT_HEADER = "X-Consistent-With"
"""The request header asking its queries to read at least what the given token wrote."""
CORRELATION_HEADER = "X-Correlation-Id"
"""The request header whose value becomes the dispatch scope's correlation id (the id used is on the response)."""
IDEMPOTENCY_HEADER = "Idempotency-Key"
"""The request header naming a request a client may send again (the IETF Idempotency-Key draft): a route gives it
to an :class:`~mediator.IdempotentCommand` as its ``idempotency_key``."""
MAX_BODY = 1024 * 1024
"""The embeddings' default limit on a request's body, in bytes (1 MiB); ``max_body=None`` lifts it."""

_TOKEN = re.compile(r"[0-9]{1,18}")
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_LENGTH = re.compile(r"[0-9]{1,18}")

StatusMap = Mapping[type[BaseException], tuple[int, str]]
"""The application's errors and the HTTP status and error code each answers with: ``{NotFound: (404, "not_found")}``.
A 401 carries a ``WWW-Authenticate: Bearer`` challenge."""

PrincipalResolver = Callable[[Mapping[str, str]], Any]
"""A principal resolver: the request's headers (lower-case names, each its first value) to the principal of its
dispatch scope. It returns an anonymous principal for a request without a credential, and raises
:class:`~mediator.AuthenticationError` for a credential that is not valid (or missing where it must be sent).

The principal is what behaviours and handlers see as ``current_context().principal`` (an authorization behaviour
decides with it, a handler records who acted). It is never ``None``: a scope with no principal is trusted
in-process code (a test, a script), which an HTTP request must not pass for."""


class EmbeddingConfigError(MediatorError, TypeError):
    """An HTTP embedding was given something it cannot work with: no principal resolver, or one that answered
    ``None``; a ``head`` or an ``engine`` that gives no log position; a route asking for the mediator outside the
    middleware. The message names the fix."""


class _Log(Protocol):
    def head(self) -> int: ...


class ReadModelEngine(Protocol):
    """What an embedding reads of a read-model engine (:class:`mediator.readmodels.ReadModels` is one): the head
    of its storage's log, the position of the last write."""

    @property
    def storage(self) -> _Log: ...


def check_principal(principal: object, embedding: str) -> PrincipalResolver:
    """``principal`` if it is a principal resolver; raise :class:`EmbeddingConfigError` naming the fix if not
    (``embedding`` names the class being built)."""
    if principal is None:
        raise EmbeddingConfigError(
            f"{embedding} needs principal=, a function of the request's headers that returns who is acting (an "
            "anonymous principal for a request without a credential) or raises mediator.AuthenticationError; "
            "see mediator.http.PrincipalResolver.")
    if not callable(principal):
        raise EmbeddingConfigError(
            f"{embedding}'s principal= is a {qualname(type(principal))}, not a function; pass a function of the "
            "request's headers that returns who is acting (see mediator.http.PrincipalResolver).")
    return principal


def resolve_principal(resolver: PrincipalResolver, headers: Mapping[str, str]) -> Any:
    """The principal ``resolver`` gives the request with ``headers``.

    Raises:
        AuthenticationError: from the resolver, for a credential that is not valid.
        EmbeddingConfigError: when the resolver answers ``None``, which would run the request as trusted code.
    """
    found = resolver(headers)
    if found is None:
        raise EmbeddingConfigError(
            f"The principal resolver {_name_of(resolver)} returned None; return an anonymous principal for a "
            "request without a credential (None is the principal of trusted in-process code).")
    return found


def _name_of(function: object) -> str:
    """A function's qualified name, or its class's for a callable object (whose repr may hold a secret key)."""
    return qualname(function if hasattr(function, "__qualname__") else type(function))


def head_of(head: object, engine: object, embedding: str) -> Callable[[], int] | None:
    """The function giving the head of the log (``engine.storage.head``, else ``head``); ``None`` with neither.

    Raises:
        EmbeddingConfigError: naming the fix, when both are given, or either gives no log position.
    """
    if head is not None and engine is not None:
        raise EmbeddingConfigError(f"{embedding} was given both head= and engine=; give engine= alone (the "
                                   "ReadModels the mediator was built with).")
    if engine is not None:
        found = getattr(getattr(engine, "storage", None), "head", None)
        if not callable(found):
            raise EmbeddingConfigError(
                f"{embedding}'s engine= is a {qualname(type(engine))}, which has no storage.head(); pass the "
                "mediator.readmodels.ReadModels the mediator was built with.")
        return typing.cast(Callable[[], int], found)
    if head is not None and not callable(head):
        raise EmbeddingConfigError(
            f"{embedding}'s head= is a {qualname(type(head))}, not a function; pass storage.head itself (not "
            "storage.head()), or engine= with the ReadModels the mediator was built with.")
    return typing.cast(Callable[[], int] | None, head)


def parse_token(value: str | None, head: Callable[[], int] | None = None) -> int | None:
    """The token of an ``X-Consistent-With`` header (``None`` without one).

    Raises:
        ValueError: naming the fix, when ``value`` is not a token; with ``head`` (the log's last position,
            ``storage.head``), also when it is beyond the last write, where no read model could ever reach.
    """
    if value is None:
        return None
    if not _TOKEN.fullmatch(value.strip()):
        raise ValueError(f"{CONSISTENT_HEADER} must be a token from {TOKEN_HEADER} (digits), not {value[:40]!r}.")
    token = int(value)
    if head is not None:
        refused = check_token(token, head)
        if refused is not None:
            raise ValueError(refused.detail)
    return token


def check_token(token: int, head: Callable[[], int]) -> Problem | None:
    """The answer to a request whose ``X-Consistent-With`` token is beyond the head of the log (``head()``, the
    position of the last write), which no read model can ever reach: 400. ``None`` when the token is within it.

    Whatever ``head`` raises (the storage is down) goes to the caller, to answer as :func:`problem_for` says.
    """
    last = head()
    if token <= last:
        return None
    return Problem(400, "bad_request", f"{CONSISTENT_HEADER} {token} is beyond the last write ({last}); send back "
                   f"a token from {TOKEN_HEADER}.")


def idempotency_key_of(value: str | None) -> str | None:
    """The idempotency key an ``Idempotency-Key`` header gives (``None`` without one): the draft sends it as a
    structured-field string, ``"8e03978e-..."``, and a bare token is taken as it is. A key that cannot be one is
    refused when the command is made (:class:`~mediator.IdempotencyKeyError`, answered 400).

    >>> idempotency_key_of('"8e03978e-40d5-43e8-bc93-6894a57f9324"')
    '8e03978e-40d5-43e8-bc93-6894a57f9324'
    """
    if value is None:
        return None
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    return key


def correlation_id_of(value: str | None) -> str:
    """The correlation id a request runs with: its ``X-Correlation-Id`` when that is one, else a new one.

    An id is up to 128 characters of ``A-Z a-z 0-9 . _ : -``, so it is echoed, logged and passed on as sent;
    anything else (non-ASCII, spaces, control characters, too long) is replaced, never echoed.
    """
    if value is not None and _CORRELATION_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def asgi_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """An ASGI request's headers as the embedding and the principal resolver read them: lower-case names, each
    with its first value (as Starlette's ``request.headers[name]``), decoded as Latin-1."""
    headers: dict[str, str] = {}
    for name, value in raw:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


def wsgi_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """A WSGI request's headers as the embedding and the principal resolver read them: lower-case names, each
    with its first value. WSGI servers join a header sent more than once into one value with commas, so the
    first value is the text before the first comma (a resolver needing a header whose one value holds commas
    reads ``environ`` itself)."""
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str):
            headers[key[5:].replace("_", "-").lower()] = value.split(",", 1)[0].strip()
    return headers


def check_length(value: str | None, limit: int | None) -> Problem | None:
    """The answer to a request whose declared ``Content-Length`` is over ``limit`` (413) or is not a length
    (400), before any of its body is read; ``None`` when the request may go on."""
    if value is None or not value.strip():
        return None
    if not _LENGTH.fullmatch(value.strip()):
        return Problem(400, "bad_request", f"Content-Length must be a number of bytes, not {value[:40]!r}.")
    if limit is not None and int(value) > limit:
        return too_large(limit)
    return None


def too_large(limit: int) -> Problem:
    """The 413 answer to a body over ``limit`` bytes."""
    return Problem(413, "too_large", f"The request body is larger than {limit} bytes; send at most that much.")


@attrs.frozen
class Problem:
    """How an error answers over HTTP: a status, a JSON body, and headers (``Retry-After`` for a 503)."""

    status: int
    error: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    log: str | None = None
    """The event to log (with :func:`log_failure`) when the error is worth a line: the service's trouble, or
    a request that got past validation with a value the database refused."""
    level: str = "error"
    """The level of that line."""

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": ..., "detail": ..., **extra}``."""
        return {"error": self.error, "detail": self.detail, **self.extra}


_UNAVAILABLE = ("The service's database is unavailable; retry shortly.", (("Retry-After", "1"),))


def problem_for(exc: BaseException, status_of: StatusMap = {}) -> Problem | None:  # noqa: B006  # read only
    """The answer to ``exc``: the framework's errors by their meaning, the application's by ``status_of``, and a
    database driver's by what the driver says went wrong.

    ``None`` for an error none of these knows: the embedding answers 500 without detail and logs it.
    A credential that is missing or not valid answers 401 with a challenge; a body too large 413; validation
    422 with the problems per field; a read model that has not caught up, or is being rebuilt, and a storage
    that is down answer 503 with ``Retry-After``: the same request succeeds later. A storage or driver error
    caused by the request's data answers 422 (a value the database refused) or 409 (a conflicting write).
    An idempotency key reused for another request answers 422, one whose first request is still running 409
    (with ``Retry-After``), as the IETF Idempotency-Key draft has it, and a key that cannot be one 400.
    The framework's other errors (a message with no handler, a wiring problem) are bugs: ``status_of`` maps them
    only by a framework class, never by a built-in one derives from (``LookupError``, ``ValueError``).
    """
    if isinstance(exc, AuthenticationError):
        return Problem(401, "unauthenticated", exc.reason, (("WWW-Authenticate", challenge(exc)),),
                       log="request not authenticated", level="info")
    if isinstance(exc, RequestTooLargeError):
        return too_large(exc.limit)
    if isinstance(exc, ValidationError):
        fields = {field or "request": list(problems) for field, problems in exc.errors.items()}
        return Problem(422, "validation", "The request is invalid.", extra={"fields": fields})
    if isinstance(exc, IdempotencyKeyMismatchError | IdempotencyKeyInUseError | IdempotencyKeyError):
        return _idempotency_problem(exc)
    if isinstance(exc, TokenBeyondHeadError):  # the engine found it so: no wiring of head= needed
        return Problem(400, "bad_request", str(exc))
    if isinstance(exc, ConsistencyTimeoutError):
        if getattr(exc, "parked", None):  # an event it could not apply holds it back: not a matter of a second
            return Problem(503, "read_model_held_back", "A read model this request reads is held back by an event "
                           "it could not apply; it catches up once that event is retried.", (("Retry-After", "30"),),
                           log="read model held back", level="warning")
        return Problem(503, "not_yet_consistent", "The read model has not caught up yet; retry shortly.",
                       (("Retry-After", "1"),))
    if isinstance(exc, ReadModelUnavailableError):
        # Deploying a new version of a projection: its read model answers again once rebuilt.
        return Problem(503, "read_model_unavailable", "This read model is being rebuilt; retry shortly.",
                       (("Retry-After", "5"),))
    if isinstance(exc, StorageError):
        # A value the database refused is the request's fault (the storage says so with a StorageError that is
        # also a ValueError, or by the driver's error it carries); otherwise the database is unreachable or
        # restarting, and the request may succeed if sent again shortly.
        fault = "data" if isinstance(exc, ValueError) else _driver_fault(exc)
        return _storage_problem(fault or "unavailable")
    mapped: Iterable[type] = type(exc).__mro__
    if isinstance(exc, MediatorError):  # a bug of the service (a missing handler is a LookupError): never answered
        mapped = [cls for cls in mapped if issubclass(cls, MediatorError)]  # through a built-in status_of maps
    for error_type in mapped:  # the most specific mapping wins, whatever the order of status_of
        if error_type in status_of:
            status, error = status_of[error_type]
            headers = (("WWW-Authenticate", "Bearer"),) if status == 401 else ()
            return Problem(status, error, str(exc) or error, headers)
    fault = _driver_fault(exc)
    return None if fault is None else _storage_problem(fault)


def _idempotency_problem(exc: MediatorError) -> Problem:
    """The IETF Idempotency-Key draft's answers: a key reused for another request 422, one whose first request
    is still running 409, and a key that cannot be one 400."""
    if isinstance(exc, IdempotencyKeyMismatchError):
        return Problem(422, "idempotency_key_reused", str(exc), log="idempotency key reused", level="info")
    if isinstance(exc, IdempotencyKeyInUseError):
        return Problem(409, "idempotency_key_in_use", str(exc), (("Retry-After", "1"),),
                       log="idempotency key in use", level="info")
    return Problem(400, "bad_request", str(exc))


def challenge(exc: AuthenticationError) -> str:
    """The ``WWW-Authenticate`` value for ``exc`` (RFC 6750: no error code when no credential was sent)."""
    if exc.missing:
        return exc.scheme
    description = re.sub(r'[^ !#-\[\]-~]', "?", exc.reason)[:200]  # a quoted-string: no quote, no backslash
    return f'{exc.scheme} error="invalid_token", error_description="{description}"'


def _storage_problem(fault: str) -> Problem:
    if fault == "data":
        return Problem(422, "unprocessable_value",
                       "The request holds a value the service cannot store or look up (such as a NUL character, "
                       "or a number or text out of range); correct it and send it again.",
                       log="request value refused by the database", level="warning")
    if fault == "conflict":
        return Problem(409, "conflict", "The request conflicts with what is stored; read it again and retry.",
                       log="write refused by the database", level="warning")
    detail, headers = _UNAVAILABLE
    return Problem(503, "storage_unavailable", detail, headers,
                   log="storage unavailable" if fault == "unavailable" else "storage failed")


# The exception classes of PEP 249 (DB-API 2.0), which sqlite3, psycopg and the other drivers (and SQLAlchemy and
# Django, which wrap them) name alike: the drivers are recognised by these names, so none is imported here.
_DBAPI_FAULTS = {
    "DataError": "data", "IntegrityError": "conflict", "ProgrammingError": "bug", "NotSupportedError": "bug",
    "OperationalError": "unavailable", "InternalError": "unavailable", "InterfaceError": "unavailable",
    "DatabaseError": "unavailable", "Error": "unavailable",
}
# A driver that cannot bind a value (a type it cannot adapt, a lone surrogate, an integer too large) says so with
# one of these, raised while the statement is run: the request's data, not the database, is at fault.
_BINDING = re.compile(r"binding parameter|cannot adapt|cannot dump|unsupported type|too large to convert",
                      re.IGNORECASE)


def _driver_fault(exc: BaseException) -> str | None:
    """What the database driver's error in ``exc``'s chain (``exc`` itself, then its causes) says went wrong:
    ``"data"``, ``"conflict"``, ``"unavailable"`` or ``"bug"``; ``None`` when no driver error is in it."""
    found: str | None = None
    for link in _chain(exc):
        if isinstance(link, UnicodeEncodeError | OverflowError):
            return "data"  # a value the driver could not encode or bind: text it cannot hold, a number too large
        fault = _dbapi_fault(link)
        if fault in ("data", "conflict"):
            return fault
        found = found or fault
    return found


def _dbapi_fault(exc: BaseException) -> str | None:
    names = [cls.__name__ for cls in type(exc).__mro__ if cls.__module__ != "builtins"]
    if "DatabaseError" not in names and "InterfaceError" not in names:
        return None  # not a DB-API error: every one derives from DatabaseError or InterfaceError
    for name in names:
        if name in _DBAPI_FAULTS:
            fault = _DBAPI_FAULTS[name]
            return "data" if fault in ("bug", "unavailable") and _BINDING.search(_first_line(exc)) else fault
    return "unavailable"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from or while handling, nearest first (at most 16)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < 16:
        seen.add(id(link))
        yield link
        link = link.__cause__ if link.__cause__ is not None else (
            None if link.__suppress_context__ else link.__context__)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _first_line(exc: BaseException, limit: int = 200) -> str:
    try:
        text = str(exc)
    except Exception:  # an error whose __str__ fails: its type says enough
        return "<unprintable>"
    line = text.splitlines()[0] if text else ""
    line = _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", line)
    return line if len(line) <= limit else f"{line[:limit]}..."


def failure_fields(exc: BaseException) -> dict[str, str]:
    """What is safe to log of ``exc``: its type, the first line of its message (at most 200 characters: a
    PostgreSQL error's ``DETAIL:`` line, which holds the values, is never included), where it was raised (the
    innermost frame's file, line and function) and the type of the error it was raised from. Never a traceback,
    never a frame's local variables."""
    fields = {"error_type": qualname(type(exc)), "error": _first_line(exc), "raised_at": _raised_at(exc)}
    cause = exc.__cause__ if exc.__cause__ is not None else (
        None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        fields["cause_type"] = qualname(type(cause))
    return fields


def log_failure(logger: Any, event: str, exc: BaseException, *, level: str = "error", **context: Any) -> None:
    """Log ``exc`` on one line at ``level``: :func:`failure_fields` and ``context`` (the correlation id).

    No ``exc_info`` goes to the logger, so no renderer (structlog's ``ConsoleRenderer`` with rich prints every
    frame's local variables) ever sees the traceback: what the ``Logging`` behaviour masks stays masked.
    """
    getattr(logger, level)(event, **failure_fields(exc), **context)


def _raised_at(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is None:
        return "unknown"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{_short_path(code.co_filename)}:{tb.tb_lineno} in {code.co_name}"


def _short_path(path: str) -> str:
    """``path`` relative to the import path entry it is under (``psycopg/cursor.py``), as a module is named."""
    roots = [root for root in (os.path.abspath(entry) for entry in sys.path if entry)
             if path.startswith(root + os.sep)]
    return os.path.relpath(path, max(roots, key=len)) if roots else path


RequestTooLargeError.__module__ = __name__  # public here, defined with the framework's other errors

__all__ = [
    "CONSISTENT_HEADER", "CORRELATION_HEADER", "IDEMPOTENCY_HEADER", "MAX_BODY", "TOKEN_HEADER", "AuthenticationError",
    "EmbeddingConfigError", "PrincipalResolver", "Problem", "ReadModelEngine", "RequestTooLargeError", "StatusMap",
    "asgi_headers", "challenge", "check_length", "check_principal", "check_token", "correlation_id_of",
    "failure_fields", "head_of", "idempotency_key_of", "log_failure", "parse_token", "problem_for", "resolve_principal",
    "too_large", "wsgi_headers",
]
