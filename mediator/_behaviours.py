"""Built-in behaviours: validation, structured logging and exception hooks.

Each is registered as one instance; at build its ``for_message`` hook returns a
copy specialised to one message type (its validators, its hooks, its log
fields), or ``None`` where it has nothing to do, so a message type pays only
for what applies to it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from ._context import _current
from ._errors import MediatorError, ValidationError
from ._messages import kind_of, loggable_fields, qualname, sensitive_fields

if TYPE_CHECKING:
    from ._build import Build, Invoker
    from ._registry import HookRegistration


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


def _collect(errors: dict[str, list[str]], found: Iterable[tuple[str, str]]) -> None:
    for field, problem in found:
        errors.setdefault(field, []).append(problem)


class Validation:
    """Run the validators registered for a message; raise one ``ValidationError`` with all failures.

    The handler never runs on invalid input. A validator that raises (say, its
    database is down) surfaces as a ``ValidatorError``, never as "invalid".
    """

    needs_scope = False

    def for_message(self, message_type: type, build: Build) -> Validation | None:
        validators = build.validators(message_type)
        if not validators:
            return None
        if not build.is_async:
            for validator in validators:
                if validator.is_async:
                    build.problem(f"Validator {validator.description} is async; use build_async().")
        return _BoundValidation(validators)


class _BoundValidation(Validation):
    def __init__(self, validators: tuple[Invoker, ...]) -> None:
        self.validators = validators
        self.needs_scope = any(v.needs_scope for v in validators)

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        errors: dict[str, list[str]] = {}
        for validator in self.validators:
            try:
                _collect(errors, validator.call(message))
            except Exception as exc:
                raise ValidatorError(message, validator.description, exc) from exc
        if errors:
            raise ValidationError(message, errors)
        return next(message)

    async def handle_async(self, message: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        errors: dict[str, list[str]] = {}
        for validator in self.validators:
            try:
                found = validator.call(message)
                if inspect.isawaitable(found):
                    found = await found
                if hasattr(found, "__aiter__"):
                    found = [item async for item in found]
                _collect(errors, found)
            except Exception as exc:
                raise ValidatorError(message, validator.description, exc) from exc
        if errors:
            raise ValidationError(message, errors)
        return await next(message)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _enabled_check(logger: Any) -> Callable[[int], bool]:
    check = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
    return check if check is not None else (lambda _level: True)


class Logging:
    """Log every dispatch through structlog: type, kind, ids, duration, outcome, error type.

    Fields marked :func:`~mediator.sensitive` are masked. The logger is bound
    when the mediator is built (configure structlog first, as with structlog's
    ``cache_logger_on_first_use``); when neither level is enabled the behaviour
    only checks that and calls on, formatting nothing.

    Args:
        logger: a structlog logger; ``structlog.get_logger("mediator")`` by default.
        level: the level of a successful dispatch's line.
        error_level: the level of a failed dispatch's line.
        include_fields: whether to log the message's (unmasked) fields.
    """

    needs_scope = True

    def __init__(self, logger: Any = None, *, level: str = "info", error_level: str = "error",
                 include_fields: bool = True) -> None:
        self.logger = logger
        self.level = level
        self.error_level = error_level
        self.include_fields = include_fields

    def for_message(self, message_type: type, build: Build) -> _BoundLogging:
        logger = self.logger if self.logger is not None else structlog.get_logger("mediator")
        bound = logger.bind()
        kind = kind_of(message_type)
        return _BoundLogging(
            logger=bound,
            enabled=_enabled_check(bound),
            level=_LEVELS[self.level],
            error_level=_LEVELS[self.error_level],
            log_ok=getattr(bound, self.level),
            log_error=getattr(bound, self.error_level),
            type_name=qualname(message_type),
            kind=kind.value if kind else "?",
            hidden=sensitive_fields(message_type),
            include_fields=self.include_fields,
        )


@attrs.frozen
class _BoundLogging:
    logger: Any
    enabled: Callable[[int], bool]
    level: int
    error_level: int
    log_ok: Callable[..., Any]
    log_error: Callable[..., Any]
    type_name: str
    kind: str
    hidden: frozenset[str]
    include_fields: bool
    needs_scope: bool = True

    def _fields(self, message: Any, started: int) -> dict[str, Any]:
        ctx = _current.get()
        fields: dict[str, Any] = {
            "message_type": self.type_name,
            "kind": self.kind,
            "duration_ms": round((time.perf_counter_ns() - started) / 1e6, 3),
        }
        if ctx is not None:
            fields["correlation_id"] = ctx.correlation_id
            fields["causation_id"] = ctx.causation_id
            fields["message_id"] = ctx.message_id
        if self.include_fields:
            fields["fields"] = loggable_fields(message, self.hidden)
        return fields

    def _ok(self, message: Any, started: int) -> None:
        if self.enabled(self.level):
            self.log_ok("message handled", outcome="ok", **self._fields(message, started))

    def _failed(self, message: Any, started: int, exc: BaseException) -> None:
        if self.enabled(self.error_level):
            self.log_error("message failed", outcome="error", error_type=qualname(type(exc)),
                           **self._fields(message, started))

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        if not (self.enabled(self.level) or self.enabled(self.error_level)):
            return next(message)
        started = time.perf_counter_ns()
        try:
            result = next(message)
        except BaseException as exc:
            self._failed(message, started, exc)
            raise
        self._ok(message, started)
        return result

    async def handle_async(self, message: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        if not (self.enabled(self.level) or self.enabled(self.error_level)):
            return await next(message)
        started = time.perf_counter_ns()
        try:
            result = await next(message)
        except BaseException as exc:
            self._failed(message, started, exc)
            raise
        self._ok(message, started)
        return result


@attrs.frozen
class Handled:
    """Returned by an exception hook to handle the exception: ``value`` becomes the result."""

    value: Any = None


class ExceptionHooks:
    """Run the hooks registered with ``registry.on_exception`` when a dispatch raises.

    A hook translates by raising (the new exception is chained to the original),
    handles by returning :class:`Handled` (logged at warning level, never
    silent), or passes by returning ``None``. The first hook whose exception
    type matches and that does not pass decides.
    """

    needs_scope = False

    def __init__(self, logger: Any = None) -> None:
        self.logger = logger

    def for_message(self, message_type: type, build: Build) -> _BoundHooks | None:
        hooks = build.hooks(message_type)
        if not hooks:
            return None
        logger = self.logger if self.logger is not None else structlog.get_logger("mediator")
        return _BoundHooks(hooks, logger.bind())


class _BoundHooks:
    needs_scope = False

    def __init__(self, hooks: tuple[HookRegistration, ...], logger: Any) -> None:
        self.hooks = hooks
        self.logger = logger

    def _decide(self, message: Any, exc: Exception) -> Any:
        for hook in self.hooks:
            if not isinstance(exc, hook.exception_type):
                continue
            try:
                outcome = hook.hook(message, exc)
            except BaseException as translated:
                if translated is not exc and translated.__cause__ is None:
                    translated.__cause__ = exc
                raise
            if isinstance(outcome, Handled):
                self.logger.warning(
                    "exception handled by hook", message_type=qualname(type(message)),
                    error_type=qualname(type(exc)), error=str(exc), hook=qualname(hook.hook),
                )
                return outcome
            if outcome is not None:
                raise TypeError(
                    f"Exception hook {qualname(hook.hook)} returned {outcome!r}; return Handled(value) to "
                    "handle, None to pass, or raise to translate."
                ) from exc
        return None

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        try:
            return next(message)
        except Exception as exc:
            outcome = self._decide(message, exc)
            if outcome is None:
                raise
            return outcome.value

    async def handle_async(self, message: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        try:
            return await next(message)
        except Exception as exc:
            outcome = self._decide(message, exc)
            if outcome is None:
                raise
            return outcome.value
