"""Explicit registration on an object; nothing is global, nothing happens at import time.

>>> import attrs
>>> from mediator import Command, Registry
>>> @attrs.frozen(kw_only=True)
... class Double(Command[int]):
...     value: int
>>> def double(command: Double) -> int:
...     return command.value * 2
>>> registry = Registry()
>>> registry.handle(Double).by(double)
>>> registry.build().send(Double(value=21))
42
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from types import ModuleType
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

import punq

from ._build import build
from ._di import Lifetime, Service
from ._errors import NotAMessageError, RegistryFrozenError, WiringError
from ._live import ChangeFeed
from ._mediator import AsyncMediator, Mediator
from ._messages import Command, Event, Kind, Message, Query, StreamQuery, kind_of, qualname
from ._notify import PublishStrategy
from ._records import (
    AppliesTo,
    BehaviourRegistration,
    HandlerRegistration,
    HookRegistration,
    Registrations,
    ValidatorRegistration,
)

M = TypeVar("M")
R = TypeVar("R")
T = TypeVar("T")
S = TypeVar("S")
M_co = TypeVar("M_co", covariant=True, bound=Message)
M_contra = TypeVar("M_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)
C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)
P = ParamSpec("P")
M1 = TypeVar("M1", bound=Message)
M2 = TypeVar("M2", bound=Message)
M3 = TypeVar("M3", bound=Message)
M4 = TypeVar("M4", bound=Message)

HANDLES_ATTRIBUTE = "__mediator_handles__"
_BASES = (Command, Query, StreamQuery)


class Handles(Protocol[M_contra, R_co]):
    """A handler class: built by the container, called through ``handle``."""

    def handle(self, message: M_contra, /) -> R_co:
        """Handle one message."""
        ...


class Validates(Protocol[M_contra]):
    """A validator class: ``validate`` yields ``(field, problem)`` pairs for an invalid message."""

    def validate(self, message: M_contra, /) -> Iterable[tuple[str, str]] | Awaitable[Iterable[tuple[str, str]]]:
        """Yield what is wrong with ``message``; yield nothing when it is valid."""
        ...


HandlerFor = Callable[[M], R] | Callable[Concatenate[M, ...], R] | type[Handles[M, R]]
"""A handler of ``M`` answering ``R``: a function of the message (with dependencies after it, looked
up by annotation) or a class whose ``handle`` takes the message. The plain one-argument form comes
first so that mypy can infer a lambda's parameter type."""

ValidatorFor = (
    Callable[[M], Iterable[tuple[str, str]] | Awaitable[Iterable[tuple[str, str]]]]
    | Callable[Concatenate[M, ...], Iterable[tuple[str, str]] | Awaitable[Iterable[tuple[str, str]]]]
    | type[Validates[M]]
)
"""A validator of ``M``: a function or a class with ``validate``, yielding ``(field, problem)`` pairs."""

class HandlerBinder(Generic[M_co]):
    """Binds handlers to one message type: ``registry.handle(PlaceOrder).by(handler)``.

    The overloads tie the handler's message and result types to the message's
    declared result, so mypy rejects a handler that answers the wrong type.
    """

    __slots__ = ("_message_type", "_registry")

    def __init__(self, registry: Registry, message_type: type[M_co]) -> None:
        self._registry = registry
        self._message_type = message_type

    @overload
    def by(self: HandlerBinder[Command[R]], handler: HandlerFor[M_co, R | Awaitable[R]], *,
           lifetime: Lifetime = ...) -> None: ...

    @overload
    def by(self: HandlerBinder[Query[R]], handler: HandlerFor[M_co, R | Awaitable[R]], *,
           lifetime: Lifetime = ...) -> None: ...

    @overload
    def by(self: HandlerBinder[StreamQuery[T]], handler: HandlerFor[M_co, Iterator[T] | AsyncIterator[T]], *,
           lifetime: Lifetime = ...) -> None: ...

    @overload
    def by(self: HandlerBinder[Event], handler: HandlerFor[M_co, Awaitable[None] | None], *,
           lifetime: Lifetime = ...) -> None: ...

    def by(self, handler: Any, *, lifetime: Lifetime = Lifetime.TRANSIENT) -> None:
        """Register ``handler`` (a class with ``handle`` or a function) for this message type.

        A class is built by the container with the given lifetime (transient by
        default: a new instance per dispatch). A function's parameters after the
        message are dependencies, looked up by their annotations.
        """
        self._registry._add_handler(self._message_type, handler, lifetime)


class Registry:
    """Collects handlers, behaviours, validators, hooks and services, then builds mediators.

    Args:
        container: an existing punq container; services registered here are registered in it too, and
            services registered on it directly can be dependencies (resolved through punq). A new one by default.
        publish: the default strategy for running an event's handlers.
        include_base_event_handlers: when true, ``publish(event)`` also runs the
            handlers registered for the event's base classes.
    """

    def __init__(
        self,
        container: punq.Container | None = None,
        *,
        publish: PublishStrategy = PublishStrategy.STOP_ON_FIRST_ERROR,
        include_base_event_handlers: bool = False,
    ) -> None:
        self.container = container if container is not None else punq.Container()
        self._records = Registrations(self.container, publish, include_base_event_handlers)
        self._built_sync: Mediator | None = None
        """The last sync mediator built, given to sync handlers that dispatch inside the async twin."""
        self._frozen = False

    def change_feed(self, feed: ChangeFeed) -> Registry:
        """Have ``subscribe(query)`` on the mediators built from here wait on ``feed`` (the read-model engine's
        ``install`` gives its own)."""
        self._check_open("change_feed")
        self._records.live = feed
        return self

    # -- services -----------------------------------------------------------------

    def singleton(self, service: type[S] | Any, implementation: Any = None, *, instance: Any = None) -> Registry:
        """Register one shared instance of ``service``, made at build (or given as ``instance``)."""
        if instance is not None:
            return self._service(Service(service, Lifetime.SINGLETON, None, instance))
        return self._service(Service(service, Lifetime.SINGLETON, implementation or service))

    def transient(self, service: type[S] | Any, implementation: Any = None) -> Registry:
        """Register ``service`` to be made anew wherever it is needed."""
        return self._service(Service(service, Lifetime.TRANSIENT, implementation or service))

    def scoped(self, service: type[S] | Any, implementation: Any = None) -> Registry:
        """Register ``service`` to be made once per dispatch scope and closed when the scope ends.

        An instance that is a context manager is entered when made and exited at
        the end of the scope with the exception that ended it, so a unit of work
        commits on success and rolls back on error; one with ``close()`` is closed.
        """
        return self._service(Service(service, Lifetime.SCOPED, implementation or service))

    def override(self, service: type[S] | Any, instance: Any) -> Registry:
        """Replace whatever provides ``service`` with ``instance`` (for tests: fakes, stubs)."""
        return self._service(Service(service, Lifetime.SINGLETON, None, instance), what="override")

    def _service(self, record: Service, what: str = "service") -> Registry:
        self._check_open(f"{what} {qualname(record.key)}")
        self._records.services[record.key] = record
        # Also in the punq container, for code that resolves from it; its problems (an annotation that does not
        # resolve) are the build's to report, with everything else.
        with contextlib.suppress(punq.InvalidForwardReferenceError, punq.InvalidRegistrationError):
            if record.builder is None:
                self.container.register(record.key, instance=record.instance)
            else:
                scope = punq.Scope.singleton if record.lifetime is Lifetime.SINGLETON else punq.Scope.transient
                self.container.register(record.key, record.builder, scope=scope)
        return self

    # -- handlers -----------------------------------------------------------------

    def handle(self, message_type: type[M_co]) -> HandlerBinder[M_co]:
        """Start binding a handler to ``message_type``: ``registry.handle(X).by(handler)``."""
        return HandlerBinder(self, message_type)

    def _add_handler(self, message_type: type[Message], handler: Any, lifetime: Lifetime) -> None:
        self._check_open(f"a handler for {qualname(message_type)}")
        kind = kind_of(message_type)
        if kind is None:
            raise NotAMessageError(message_type, "Command, Query, StreamQuery or Event")
        self._records.handlers.append(HandlerRegistration(message_type, kind, handler, lifetime))

    def expect(self, *message_types: type[Message]) -> Registry:
        """Declare message types that must have a handler; ``build`` reports any that lack one."""
        self._check_open("expected message types")
        self._records.expected.extend(message_types)
        return self

    def scan(self, package: ModuleType | str) -> Registry:
        """Register every handler marked with :func:`handles` in ``package`` and its submodules.

        Every Command, Query and StreamQuery class defined there is also expected
        to have a handler, so ``build`` reports the ones that have none.
        """
        self._check_open("scanned handlers")
        module = importlib.import_module(package) if isinstance(package, str) else package
        modules = [module]
        if hasattr(module, "__path__"):
            prefix = module.__name__ + "."
            modules += [importlib.import_module(info.name) for info in pkgutil.walk_packages(module.__path__, prefix)]
        seen: set[int] = set()
        for mod in modules:
            for obj in list(vars(mod).values()):
                if getattr(obj, "__module__", None) != mod.__name__ or id(obj) in seen:
                    continue
                seen.add(id(obj))
                for message_type, lifetime in getattr(obj, HANDLES_ATTRIBUTE, ()):
                    self._add_handler(message_type, obj, lifetime)
                if kind_of(obj) in (Kind.COMMAND, Kind.QUERY, Kind.STREAM) and obj not in _BASES:
                    self._records.expected.append(obj)
        return self

    # -- behaviours, validators, hooks -----------------------------------------------

    def behaviour(
        self, behaviour: Any, *, applies_to: AppliesTo = None, lifetime: Lifetime = Lifetime.SINGLETON,
        outermost: bool = False, innermost: bool = False,
    ) -> Registry:
        """Add a pipeline behaviour; the first registered is the outermost.

        ``behaviour`` is an instance, or a class the container builds with
        ``lifetime``. ``applies_to`` narrows it to a kind, to classes (a message
        class or a base class), or a tuple mixing both. ``outermost`` puts it outside
        every behaviour registered so far (as the testing kit's recorder does);
        ``innermost`` keeps it inside every behaviour, those registered later included
        (as the read-model engine's idempotency check, which must come after authorization).
        """
        self._check_open(f"behaviour {qualname(behaviour)}")
        if outermost and innermost:
            raise WiringError([f"Behaviour {qualname(behaviour)} cannot be both outermost and innermost."])
        registration = BehaviourRegistration(behaviour, applies_to, lifetime, innermost)
        behaviours = self._records.behaviours
        if outermost:
            at = 0
        elif innermost:
            at = len(behaviours)
        else:  # before the innermost ones
            at = next((i for i, r in enumerate(behaviours) if r.innermost), len(behaviours))
        behaviours.insert(at, registration)
        return self

    def validate(
        self,
        message_type: type[M],
        validator: ValidatorFor[M],
        *,
        lifetime: Lifetime = Lifetime.TRANSIENT,
    ) -> Registry:
        """Add a validator for ``message_type``, run by the :class:`~mediator.Validation` behaviour.

        A validator yields ``(field, problem)`` pairs (``""`` as the field for the
        whole message). It may be a function whose parameters after the message
        are dependencies, or a class built by the container.
        """
        self._check_open(f"a validator for {qualname(message_type)}")
        if kind_of(message_type) is None:
            raise NotAMessageError(message_type, "Command, Query, StreamQuery or Event")
        self._records.validators.append(
            ValidatorRegistration(typing.cast(type[Message], message_type), validator, lifetime))
        return self

    def on_exception(
        self,
        exception_type: type[Exception],
        hook: Callable[[Any, Any], Any],
        *,
        applies_to: AppliesTo = None,
    ) -> Registry:
        """Add a hook run by the :class:`~mediator.ExceptionHooks` behaviour.

        ``hook(message, exc)`` translates by raising another exception (chained
        to ``exc``), handles by returning :class:`~mediator.Handled`, or lets
        ``exc`` propagate by returning ``None``. A handled exception is logged.
        """
        self._check_open(f"a hook for {qualname(exception_type)}")
        self._records.hooks.append(HookRegistration(exception_type, hook, applies_to))
        return self

    # -- build --------------------------------------------------------------------

    def build(self) -> Mediator:
        """Check the whole wiring, compile every chain, and return a sync mediator.

        Raises:
            WiringError: listing every problem found.
        """
        mediator = Mediator()
        build(self._records, mediator, is_async=False, sync_twin=None)
        self._frozen = True
        self._built_sync = mediator
        return mediator

    def build_async(self) -> AsyncMediator:
        """Like :meth:`build`, for an :class:`~mediator.AsyncMediator`."""
        mediator = AsyncMediator()
        build(self._records, mediator, is_async=True, sync_twin=self._built_sync)
        self._frozen = True
        return mediator

    def _check_open(self, what: str) -> None:
        if self._frozen:
            raise RegistryFrozenError(what)


class _HandlerClass(Protocol[C_contra, M_contra, R_co]):
    """A handler class seen as the class object: its ``handle``, unbound, takes an instance and the message.

    Matching the class object lets the ``@handles`` overloads check ``handle`` and still give the class back as
    ``type[C]``, ``C`` read from the type of ``handle``'s ``self``.
    """

    def handle(self, instance: C_contra, message: M_contra, /) -> R_co: ...


class HandlerMark(Generic[M_co]):
    """What ``@handles(...)`` returns: marks a handler for :meth:`Registry.scan` and gives it back unchanged.

    As for :meth:`HandlerBinder.by`, the overloads tie the handler's message and result to the message types
    marked (see :func:`handles` for what they check and what they do not).
    """

    __slots__ = ("_marks",)

    def __init__(self, marks: tuple[tuple[type[Message], Lifetime], ...]) -> None:
        self._marks = marks

    # Per kind: a sync function, an async one, a class. A class object is callable too, so a class whose
    # constructor took the message first and made an instance that fits the result (a result of Any, say) would
    # meet a function form first and come back typed as that function; the class form is last for that reason.
    @overload
    def __call__(self: HandlerMark[Command[R] | Query[R]],
                 handler: Callable[Concatenate[M_co, P], R], /) -> Callable[Concatenate[M_co, P], R]: ...

    @overload
    def __call__(self: HandlerMark[Command[R] | Query[R]],
                 handler: Callable[Concatenate[M_co, P], Coroutine[Any, Any, R]],
                 /) -> Callable[Concatenate[M_co, P], Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self: HandlerMark[Command[R] | Query[R]], handler: _HandlerClass[C, M_co, R | Awaitable[R]],
                 /) -> type[C]: ...

    @overload
    def __call__(self: HandlerMark[StreamQuery[T]],
                 handler: Callable[Concatenate[M_co, P], Iterator[T]],
                 /) -> Callable[Concatenate[M_co, P], Iterator[T]]: ...

    @overload
    def __call__(self: HandlerMark[StreamQuery[T]],
                 handler: Callable[Concatenate[M_co, P], AsyncIterator[T]],
                 /) -> Callable[Concatenate[M_co, P], AsyncIterator[T]]: ...

    @overload
    def __call__(self: HandlerMark[StreamQuery[T]],
                 handler: _HandlerClass[C, M_co, Iterator[T] | AsyncIterator[T]], /) -> type[C]: ...

    @overload
    def __call__(self: HandlerMark[Event],
                 handler: Callable[Concatenate[M_co, P], None], /) -> Callable[Concatenate[M_co, P], None]: ...

    @overload
    def __call__(self: HandlerMark[Event],
                 handler: Callable[Concatenate[M_co, P], Coroutine[Any, Any, None]],
                 /) -> Callable[Concatenate[M_co, P], Coroutine[Any, Any, None]]: ...

    @overload
    def __call__(self: HandlerMark[Event], handler: _HandlerClass[C, M_co, Awaitable[None] | None],
                 /) -> type[C]: ...

    def __call__(self, handler: Any, /) -> Any:
        """Record the marks on ``handler`` (a function or a class) and return it."""
        setattr(handler, HANDLES_ATTRIBUTE, (*getattr(handler, HANDLES_ATTRIBUTE, ()), *self._marks))
        return handler


@overload
def handles(message_type: type[M1], /, *, lifetime: Lifetime = ...) -> HandlerMark[M1]: ...


@overload
def handles(first: type[M1], second: type[M2], /, *, lifetime: Lifetime = ...) -> HandlerMark[M1 | M2]: ...


@overload
def handles(first: type[M1], second: type[M2], third: type[M3], /, *,
            lifetime: Lifetime = ...) -> HandlerMark[M1 | M2 | M3]: ...


@overload
def handles(first: type[M1], second: type[M2], third: type[M3], fourth: type[M4], /, *,
            lifetime: Lifetime = ...) -> HandlerMark[M1 | M2 | M3 | M4]: ...


@overload
def handles(first: type[Message], second: type[Message], third: type[Message], fourth: type[Message],
            fifth: type[Message], /, *more: type[Message], lifetime: Lifetime = ...) -> Callable[[T], T]: ...


def handles(*message_types: type[Message], lifetime: Lifetime = Lifetime.TRANSIENT) -> Any:
    """Mark a handler class or function for :meth:`Registry.scan`; it registers nothing by itself.

    A type checker (mypy, pyright) checks a mark as it checks ``registry.handle(X).by(handler)``: a function's
    first parameter must accept the message and its result fit what the message declares (``R``, or a coroutine
    of ``R``, for ``Command[R]`` and ``Query[R]``; an iterator or async iterator of ``T`` for ``StreamQuery[T]``;
    ``None``, or a coroutine of ``None``, for an ``Event``); a class's ``handle`` is checked the same way. The
    class comes back as itself. The function comes back with its other parameters as they were, typed as taking
    the message type (positionally) and returning the declared result.

    With two to four message types, the first parameter must accept every one of them (annotate it with their
    union); the result is checked against what their declared results have in common, so one function marked for
    a ``Command[int]`` and a ``Command[str]`` passes the type checker. Types of different kinds (a command and an
    event) in one mark are rejected, and so is a second mark on a marked function: list every type in one mark.
    Five or more types give the handler back unchecked.

    :meth:`Registry.build` checks every marked handler exactly as it checks one registered explicitly, and
    catches what the type checker cannot: each type's own declared result, dependencies (a function's parameters
    after the message, a class's constructor parameters), and a sync function annotated to return an awaitable.

    >>> import attrs
    >>> from mediator import Command, Registry
    >>> @attrs.frozen
    ... class Ping(Command[str]):
    ...     pass
    >>> @handles(Ping)
    ... def ping(command: Ping) -> str:
    ...     return "pong"
    >>> ping(Ping())
    'pong'
    >>> Registry().build().message_types  # marking registers nothing: scan() does
    frozenset()
    """
    return HandlerMark(tuple((m, lifetime) for m in message_types))
