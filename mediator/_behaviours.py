"""Built-in behaviours: validation, structured logging and exception hooks.

Each is registered as one instance; at build its ``for_message`` hook returns a
copy specialised to one message type (its validators, its hooks, its log
fields), or ``None`` where it has nothing to do, so a message type pays only
for what applies to it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from ._context import _current
from ._errors import HookError, UnresolvedAnnotationsError, ValidationError, ValidatorError
from ._fields import FieldChecker, field_checker
from ._messages import field_names, fields_reader, kind_of, qualname, sensitive_fields

if TYPE_CHECKING:
    from ._compile import Build, Invoker
    from ._records import HookRegistration


def _collect(errors: dict[str, list[str]], found: Iterable[tuple[str, str]]) -> None:
    for field, problem in found:
        errors.setdefault(field, []).append(problem)


def _watch_sync(
    items: Iterable[Any], done: Callable[[int], None], failed: Callable[[BaseException], Any]
) -> Iterator[Any]:
    """Yield ``items``, then report how many; on an error, let ``failed`` decide (re-raise or substitute)."""
    count = 0
    try:
        for item in items:
            count += 1
            yield item
    except GeneratorExit:
        done(count)
        raise
    except Exception as exc:
        substitute = failed(exc)
        if substitute is None:
            raise
        yield from substitute
        return
    done(count)


async def _watch_async(
    items: AsyncIterable[Any], done: Callable[[int], None], failed: Callable[[BaseException], Any]
) -> AsyncIterator[Any]:
    """The async twin of :func:`_watch_sync`."""
    count = 0
    try:
        async for item in items:
            count += 1
            yield item
    except GeneratorExit:
        done(count)
        raise
    except Exception as exc:
        substitute = failed(exc)
        if inspect.isawaitable(substitute):
            substitute = await substitute
        if substitute is None:
            raise
        for item in substitute:
            yield item
        return
    done(count)


def _milliseconds(started: int) -> float:
    """Milliseconds since ``started`` (``perf_counter_ns``), to the microsecond: truncated, as ``round(..., 3)``
    would round it but at a tenth of the cost (rounding a float to digits goes through a decimal conversion)."""
    return (time.perf_counter_ns() - started) // 1000 / 1000


class Validation:
    """Run the validators registered for a message; raise one ``ValidationError`` with all failures.

    The handler never runs on invalid input (for a stream: before its first
    item). A validator that raises (say, its database is down) surfaces as a
    ``ValidatorError``, never as "invalid".

    With ``check_types=True``, the fields of an attrs message are first checked
    against their annotations, by a checker generated once per message type at
    build: ``int`` is a whole number (not ``bool``) within 64 bits, ``float`` and
    ``Decimal`` are finite, text has no NUL character nor lone surrogate, and
    collections and nested attrs classes are checked item by item (problems at
    ``items[0].quantity``). A message with wrongly typed fields is refused with
    those problems before any validator runs, so validators only see values of
    the declared types.
    """

    needs_scope = False

    def __init__(self, *, check_types: bool = False) -> None:
        self.check_types = check_types

    def for_message(self, message_type: type, build: Build) -> Validation | None:
        validators = build.validators(message_type)
        check_fields = None
        if self.check_types:
            try:
                check_fields = field_checker(message_type)
            except UnresolvedAnnotationsError as exc:
                build.problem(f"{exc} (Validation(check_types=True) checks the fields by their annotations.)")
        if not validators and check_fields is None:
            return None
        if not build.is_async:
            for validator in validators:
                if validator.is_async:
                    build.problem(f"Validator {validator.description} is async; use build_async().")
        return _BoundValidation(validators, build.is_async, check_fields)


def _refuse(message: Any, problems: Iterable[tuple[str, str]]) -> ValidationError:
    errors: dict[str, list[str]] = {}
    _collect(errors, problems)
    return ValidationError(message, errors)


class _BoundValidation(Validation):
    def __init__(self, validators: tuple[Invoker, ...], is_async: bool, check_fields: FieldChecker | None) -> None:
        self.validators = validators
        self.is_async = is_async
        self.check_fields = check_fields
        self.needs_scope = any(v.needs_scope for v in validators)

    def _check(self, message: Any) -> None:
        if self.check_fields is not None and (wrong := self.check_fields(message)):
            raise _refuse(message, wrong)
        errors: dict[str, list[str]] = {}
        for validator in self.validators:
            try:
                _collect(errors, validator.call(message))
            except Exception as exc:
                raise ValidatorError(message, validator.description, exc) from exc
        if errors:
            raise ValidationError(message, errors)

    async def _check_async(self, message: Any) -> None:
        if self.check_fields is not None and (wrong := self.check_fields(message)):
            raise _refuse(message, wrong)
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

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        self._check(message)
        return next(message)

    async def handle_async(self, message: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        await self._check_async(message)
        return await next(message)

    def handle_stream(self, message: Any, next: Callable[[Any], Any]) -> Any:
        if not self.is_async:
            self._check(message)
            return next(message)
        return self._checked_async_stream(message, next)

    async def _checked_async_stream(self, message: Any, next: Callable[[Any], Any]) -> AsyncIterator[Any]:
        await self._check_async(message)
        async for item in next(message):
            yield item


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _enabled_check(logger: Any) -> Callable[[int], bool]:
    check = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
    return check if check is not None else (lambda _level: True)


class Logging:
    """Log every dispatch through structlog: type, kind, ids, duration, outcome, error type.

    Fields marked :func:`~mediator.sensitive` are masked. The logger is bound
    when the mediator is built (configure structlog first, as with structlog's
    ``cache_logger_on_first_use``); if neither level is enabled then, the
    behaviour leaves the chain entirely and costs nothing. A stream is logged
    once it ends, with the number of items it yielded.

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

    def for_message(self, message_type: type, build: Build) -> _BoundLogging | None:
        logger = self.logger if self.logger is not None else structlog.get_logger("mediator")
        bound = logger.bind()
        enabled = _enabled_check(bound)
        level, error_level = _LEVELS[self.level], _LEVELS[self.error_level]
        if not (enabled(level) or enabled(error_level)):
            return None
        kind = kind_of(message_type)
        return _BoundLogging(
            enabled=enabled,
            level=level,
            error_level=error_level,
            log_ok=getattr(bound, self.level),
            log_error=getattr(bound, self.error_level),
            type_name=qualname(message_type),
            kind=kind.value if kind else "?",
            hidden=sensitive_fields(message_type),
            names=field_names(message_type),
            read_fields=fields_reader(field_names(message_type), sensitive_fields(message_type)),
            include_fields=self.include_fields,
            is_async=build.is_async,
        )


@attrs.frozen
class _BoundLogging:
    enabled: Callable[[int], bool]
    level: int
    error_level: int
    log_ok: Callable[..., Any]
    log_error: Callable[..., Any]
    type_name: str
    kind: str
    hidden: frozenset[str]
    names: tuple[str, ...]
    read_fields: Callable[[Any], dict[str, Any]]
    include_fields: bool
    is_async: bool
    needs_scope: bool = True

    def _fields(self, message: Any, started: int) -> dict[str, Any]:
        ctx = _current.get()
        fields: dict[str, Any] = {
            "message_type": self.type_name,
            "kind": self.kind,
            "duration_ms": _milliseconds(started),
        }
        if ctx is not None:
            fields["correlation_id"] = ctx.correlation_id
            fields["causation_id"] = ctx.causation_id
            fields["message_id"] = ctx.message_id
        if self.include_fields:
            fields["fields"] = self.read_fields(message)
        return fields

    def _ok(self, message: Any, started: int, **extra: Any) -> None:
        ctx = _current.get()
        if extra or ctx is None or not self.include_fields:
            self.log_ok("message handled", outcome="ok", **extra, **self._fields(message, started))
            return
        # Every successful dispatch comes here: the fields as keywords, not a dict built and then unpacked.
        self.log_ok("message handled", outcome="ok", message_type=self.type_name, kind=self.kind,
                    duration_ms=(time.perf_counter_ns() - started) // 1000 / 1000,  # _milliseconds, inline
                    correlation_id=ctx.correlation_id, causation_id=ctx.causation_id, message_id=ctx.message_id,
                    fields=self.read_fields(message))

    def _failed(self, message: Any, started: int, exc: BaseException) -> None:
        if self.enabled(self.error_level):
            fields = self._fields(message, started)
            try:
                self.log_error("message failed", outcome="error", error_type=qualname(type(exc)), **fields)
            except RecursionError:  # a field nested deeper than the renderer goes (a refused message, likely)
                fields["fields"] = "<nested too deeply to log>"
                self.log_error("message failed", outcome="error", error_type=qualname(type(exc)), **fields)

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        started = time.perf_counter_ns()
        try:
            result = next(message)
        except BaseException as exc:
            self._failed(message, started, exc)
            raise
        if self.enabled(self.level):
            self._ok(message, started)
        return result

    async def handle_async(self, message: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        started = time.perf_counter_ns()
        try:
            result = await next(message)
        except BaseException as exc:
            self._failed(message, started, exc)
            raise
        if self.enabled(self.level):
            self._ok(message, started)
        return result

    def handle_stream(self, message: Any, next: Callable[[Any], Any]) -> Any:
        started = time.perf_counter_ns()

        def done(count: int) -> None:
            if self.enabled(self.level):
                self._ok(message, started, items=count)

        def failed(exc: BaseException) -> None:
            self._failed(message, started, exc)

        try:
            items = next(message)
        except BaseException as exc:
            failed(exc)
            raise
        return (_watch_async if self.is_async else _watch_sync)(items, done, failed)


@attrs.frozen
class Handled:
    """Returned by an exception hook to handle the exception: ``value`` becomes the result.

    For a stream, ``value`` is an iterable whose items replace the rest of the stream.
    """

    value: Any = None


class ExceptionHooks:
    """Run the hooks registered with ``registry.on_exception`` when a dispatch raises.

    A hook translates by raising (the new exception is chained to the original),
    handles by returning :class:`Handled` (logged at warning level, never
    silent), or passes by returning ``None``. The first hook whose exception
    type matches and that does not pass decides. On the async mediator a hook
    may be ``async def``.
    """

    needs_scope = False

    def __init__(self, logger: Any = None) -> None:
        self.logger = logger

    def for_message(self, message_type: type, build: Build) -> _BoundHooks | None:
        hooks = build.hooks(message_type)
        if not hooks:
            return None
        logger = self.logger if self.logger is not None else structlog.get_logger("mediator")
        return _BoundHooks(hooks, logger.bind(), build.is_async)


class _BoundHooks:
    needs_scope = False

    def __init__(self, hooks: tuple[HookRegistration, ...], logger: Any, is_async: bool) -> None:
        self.hooks = hooks
        self.logger = logger
        self.is_async = is_async

    def _matching(self, exc: Exception) -> Iterator[HookRegistration]:
        return (hook for hook in self.hooks if isinstance(exc, hook.exception_type))

    def _judge(self, hook: HookRegistration, message: Any, exc: Exception, outcome: Any) -> Handled | None:
        if isinstance(outcome, Handled):
            self.logger.warning(
                "exception handled by hook", message_type=qualname(type(message)),
                error_type=qualname(type(exc)), error=str(exc), hook=qualname(hook.hook),
            )
            return outcome
        if outcome is not None:
            raise HookError(hook.hook, outcome) from exc
        return None

    def _decide(self, message: Any, exc: Exception) -> Handled | None:
        for hook in self._matching(exc):
            with _chained_to(exc):
                outcome = hook.hook(message, exc)
            decided = self._judge(hook, message, exc, outcome)
            if decided is not None:
                return decided
        return None

    async def _decide_async(self, message: Any, exc: Exception) -> Handled | None:
        for hook in self._matching(exc):
            with _chained_to(exc):
                outcome = hook.hook(message, exc)
                if inspect.isawaitable(outcome):
                    outcome = await outcome
            decided = self._judge(hook, message, exc, outcome)
            if decided is not None:
                return decided
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
            outcome = await self._decide_async(message, exc)
            if outcome is None:
                raise
            return outcome.value

    def handle_stream(self, message: Any, next: Callable[[Any], Any]) -> Any:
        def failed(exc: BaseException) -> Any:
            if not isinstance(exc, Exception):
                return None
            if self.is_async:
                return self._substitute_async(message, exc)
            outcome = self._decide(message, exc)
            return None if outcome is None else outcome.value

        try:
            items = next(message)
        except Exception as exc:
            substitute = failed(exc)
            if substitute is None or inspect.isawaitable(substitute):
                if inspect.iscoroutine(substitute):
                    substitute.close()
                raise
            items = substitute
        return (_watch_async if self.is_async else _watch_sync)(items, lambda _count: None, failed)

    async def _substitute_async(self, message: Any, exc: Exception) -> Any:
        outcome = await self._decide_async(message, exc)
        return None if outcome is None else outcome.value


class _chained_to:
    """Chain whatever a hook raises to the exception it was handling, if the hook did not."""

    def __init__(self, original: BaseException) -> None:
        self.original = original

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and exc is not self.original and exc.__cause__ is None:
            exc.__cause__ = self.original
