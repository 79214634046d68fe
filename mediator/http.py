"""What every HTTP embedding of a mediator shares, with no web framework: headers, tokens and error statuses.

:mod:`mediator.fastapi` (ASGI) and :mod:`mediator.wsgi` speak the same protocol:

- ``X-Correlation-Id`` on a request becomes the correlation id of its dispatch scope, and is echoed back;
- ``X-Consistency-Token`` on a response carries the commit position of the request's last command;
- ``X-Consistent-With: <token>`` on a request makes its queries wait until their read models have reached that
  token (read-your-writes across requests); a token that is not one is answered 400;
- errors of the framework answer as JSON problems, ``{"error": ..., "detail": ...}``, with the status
  :func:`problem_for` gives them, and the application's own errors with the statuses it maps them to.

>>> parse_token("42")
42
>>> parse_token("forty-two")
Traceback (most recent call last):
...
ValueError: X-Consistent-With must be a token from X-Consistency-Token (digits), not 'forty-two'.
>>> problem_for(ValueError("boom"), {ValueError: (400, "bad_request")}).status
400
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._errors import ValidationError
from .readmodels import ConsistencyTimeoutError, ReadModelUnavailableError, StorageError

TOKEN_HEADER = "X-Consistency-Token"
"""The response header with the commit position of the request's last command."""
CONSISTENT_HEADER = "X-Consistent-With"
"""The request header asking its queries to read at least what the given token wrote."""
CORRELATION_HEADER = "X-Correlation-Id"
"""The request header whose value becomes the dispatch scope's correlation id (echoed on the response)."""

_TOKEN = re.compile(r"[0-9]{1,18}")

StatusMap = Mapping[type[BaseException], tuple[int, str]]
"""The application's errors and the HTTP status and error code each answers with: ``{NotFound: (404, "not_found")}``."""


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
    if head is not None and token > (last := head()):
        raise ValueError(f"{CONSISTENT_HEADER} {token} is beyond the last write ({last}); send back a token from "
                         f"{TOKEN_HEADER}.")
    return token


@attrs.frozen
class Problem:
    """How an error answers over HTTP: a status, a JSON body, and headers (``Retry-After`` for a 503)."""

    status: int
    error: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    log: str | None = None
    """The event to log at error level, with the exception's text, when the error is the service's trouble."""

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": ..., "detail": ..., **extra}``."""
        return {"error": self.error, "detail": self.detail, **self.extra}


def problem_for(exc: BaseException, status_of: StatusMap = {}) -> Problem | None:  # noqa: B006  # read only
    """The answer to ``exc``: the framework's errors by their meaning, the application's by ``status_of``.

    ``None`` for an error neither knows: the embedding answers 500 without detail and logs it.
    Validation answers 422 with the problems per field; a read model that has not caught up, or is being
    rebuilt, and a storage that is down answer 503 with ``Retry-After``: the same request succeeds later.
    """
    if isinstance(exc, ValidationError):
        fields = {field or "request": list(problems) for field, problems in exc.errors.items()}
        return Problem(422, "validation", "The request is invalid.", extra={"fields": fields})
    if isinstance(exc, ConsistencyTimeoutError):
        return Problem(503, "not_yet_consistent", "The read model has not caught up yet; retry shortly.",
                       (("Retry-After", "1"),))
    if isinstance(exc, ReadModelUnavailableError):
        # Deploying a new version of a projection: its read model answers again once rebuilt.
        return Problem(503, "read_model_unavailable", "This read model is being rebuilt; retry shortly.",
                       (("Retry-After", "5"),))
    if isinstance(exc, StorageError):
        # The database is unreachable or restarting: the request may succeed if sent again shortly.
        return Problem(503, "storage_unavailable", "The service's database is unavailable; retry shortly.",
                       (("Retry-After", "1"),), log="storage unavailable")
    for error_type in type(exc).__mro__:  # the most specific mapping wins, whatever the order of status_of
        if error_type in status_of:
            status, error = status_of[error_type]
            return Problem(status, error, str(exc) or error)
    return None


__all__ = ["CONSISTENT_HEADER", "CORRELATION_HEADER", "TOKEN_HEADER", "Problem", "StatusMap", "parse_token",
           "problem_for"]
