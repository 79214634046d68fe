"""One error tree for the framework; each leaf also subclasses the matching built-in.

Every error keeps the objects it is about as attributes, and its message says
what went wrong and what to do, naming types by their qualified name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._messages import qualname


class MediatorError(Exception):
    """Root of every error the framework raises itself."""


class NotAMessageError(MediatorError, TypeError):
    """Something that is not a Command, Query, StreamQuery or Event was dispatched."""

    def __init__(self, obj: object, expected: str) -> None:
        self.obj = obj
        self.expected = expected
        super().__init__(
            f"{qualname(type(obj))} is not a {expected}; "
            f"derive the class from mediator.{expected} to dispatch it this way."
        )


class HandlerNotFoundError(MediatorError, LookupError):
    """A message was dispatched whose type has no registered handler."""

    def __init__(self, message_type: type, text: str | None = None) -> None:
        self.message_type = message_type
        super().__init__(text or (
            f"No handler is registered for {qualname(message_type)}; "
            f"register one with registry.handle({message_type.__name__}).by(...) before build()."
        ))


class WiringError(MediatorError, ValueError):
    """The registrations do not form a valid mediator; ``problems`` lists every one."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"The mediator cannot be built, {len(self.problems)} problem(s):\n{lines}")


class RegistryFrozenError(MediatorError, RuntimeError):
    """A registration was attempted after the registry was built."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"Cannot register {what}: the registry was already built and its wiring is frozen; "
            "register everything before calling build()."
        )


class ScopeError(MediatorError, RuntimeError):
    """A scoped service or the dispatch context was used where no scope is open."""


class MissingExtraError(MediatorError, ModuleNotFoundError):
    """A module of the framework needs an optional package that is not installed; ``extra`` brings it."""

    def __init__(self, module: str, extra: str, missing: str | None) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"{module} needs {missing or 'a package'} that is not installed; install the framework with that "
            f"extra: pip install 'mediator-cqrs[{extra}]'.",
            name=missing,
        )


class ValidationError(MediatorError, ValueError):
    """A message failed validation; ``errors`` maps each field to its messages.

    Errors that concern the whole message rather than a field are under ``""``.
    """

    def __init__(self, message: object, errors: Mapping[str, Sequence[str]]) -> None:
        self.message = message
        self.errors: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in errors.items()}
        detail = "; ".join(f"{k or '<message>'}: {', '.join(v)}" for k, v in self.errors.items())
        super().__init__(f"{qualname(type(message))} is invalid: {detail}")


class ValidatorError(MediatorError, RuntimeError):
    """A validator itself failed (its dependency raised), so the message could not be checked."""

    def __init__(self, message: object, validator: str, error: BaseException) -> None:
        self.message = message
        self.validator = validator
        self.error = error
        super().__init__(
            f"Validator {validator} failed on {qualname(type(message))} with {type(error).__name__}: {error}; "
            "the handler did not run. Fix the validator or what it depends on."
        )


class HookError(MediatorError, TypeError):
    """An exception hook returned something other than ``Handled`` or ``None``."""

    def __init__(self, hook: Any, outcome: Any) -> None:
        self.hook = hook
        self.outcome = outcome
        super().__init__(
            f"Exception hook {qualname(hook)} returned {outcome!r}; return Handled(value) to handle, None to "
            "pass, or raise to translate."
        )


class UnresolvedAnnotationsError(MediatorError, NameError):
    """The annotations of a handler or builder name something that cannot be imported; reported as a wiring problem."""

    def __init__(self, func: Any, error: Exception) -> None:
        self.func = func
        self.error = error
        super().__init__(
            f"The annotations of {qualname(func)} cannot be resolved ({type(error).__name__}: {error}); "
            "define or import the names they use at module level."
        )


class PublishError(MediatorError, ConnectionError):
    """The broker did not acknowledge a batch; the first ``acked`` events of it were acknowledged."""

    def __init__(self, message: str, *, acked: int = 0) -> None:
        super().__init__(message)
        self.acked = acked


class ConsumeError(MediatorError, ConnectionError):
    """The broker could not be reached, or refused a consumer request; the driver's error is the ``__cause__``."""


class AuthenticationError(MediatorError, PermissionError):
    """A request's credential is missing where one is needed, or is not valid (forged, expired, malformed).

    A principal resolver raises it; the HTTP embeddings answer 401 with a ``WWW-Authenticate`` challenge of
    ``scheme``. ``reason`` says what is wrong with the credential, never what it holds; it is safe to show the
    client. ``missing`` is true when no credential was sent at all (the challenge then carries no error code).
    """

    def __init__(self, reason: str, *, missing: bool = False, scheme: str = "Bearer") -> None:
        self.reason = reason
        self.missing = missing
        self.scheme = scheme
        super().__init__(f"{reason}; send a valid credential: Authorization: {scheme} <credential>.")


class RequestTooLargeError(MediatorError, ValueError):
    """A request's body is larger than the embedding's ``max_body``; the HTTP embeddings answer 413.

    Raised by the request body the embeddings hand the application (ASGI ``receive``, WSGI ``wsgi.input``) once
    more than ``limit`` bytes have come, so no more than that is ever held.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"The request body is larger than {limit} bytes; send at most {limit} bytes, or raise "
                         "the embedding's max_body.")


class IdempotencyKeyError(MediatorError, ValueError):
    """An idempotency key that cannot be one: empty, too long, not text or not printable."""

    def __init__(self, key: object, longest: int) -> None:
        self.key = key
        super().__init__(f"idempotency_key={key!r}: give a non-empty printable string of at most {longest} "
                         "characters (a UUID the client made for this request), or None.")


class IdempotencyKeyMismatchError(MediatorError, ValueError):
    """A command came with an idempotency key already used for a different command or payload.

    The HTTP embeddings answer 422, as the IETF Idempotency-Key draft asks: a client reused a key for another
    request, and must make a new one.
    """

    def __init__(self, key: str, command: type, stored_command: str) -> None:
        self.key = key
        self.command = command
        self.stored_command = stored_command
        used = (f"a {stored_command} with another payload" if stored_command == qualname(command)
                else f"a {stored_command}, not a {qualname(command)}")
        super().__init__(f"Idempotency key {key!r} was used for {used}; a key names one request: make a new key "
                         "for a new request.")


class IdempotencyKeyInUseError(MediatorError, RuntimeError):
    """A command came with an idempotency key whose first command is still running (in this process or another).

    Nothing ran; the HTTP embeddings answer 409. Send it again once the first has finished: the repeat then
    answers the first's result.
    """

    def __init__(self, key: str, command: type | None = None) -> None:
        self.key = key
        self.command = command
        by = f"a {qualname(command)}" if command is not None else "a command"
        super().__init__(f"Idempotency key {key!r} is in use by {by} still running; send the command again once "
                         "it has finished, and it answers that one's result.")


class SubscriptionError(MediatorError, TypeError):
    """A query was subscribed to that cannot be: it names no read models (``reads``) whose changes would answer
    it again, or the mediator was built with no change feed (a read-model engine installed in its registry)."""

    def __init__(self, query_type: type, reason: str) -> None:
        self.query_type = query_type
        super().__init__(f"Cannot subscribe to {qualname(query_type)}: {reason}")
