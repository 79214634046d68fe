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

import importlib
import pkgutil
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Protocol, TypeVar, overload

import attrs
import punq

from ._di import Lifetime, UnresolvedAnnotations
from ._errors import NotAMessageError, RegistryFrozenError
from ._messages import Command, Event, Kind, Message, Query, StreamQuery, kind_of, qualname
from ._notify import PublishStrategy

if TYPE_CHECKING:
    from ._mediator import AsyncMediator, Mediator

M = TypeVar("M")
R = TypeVar("R")
T = TypeVar("T")
S = TypeVar("S")
M_co = TypeVar("M_co", covariant=True, bound=Message)
M_contra = TypeVar("M_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)

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

AppliesTo = Kind | type | tuple[Kind | type, ...] | None
"""Which messages a behaviour or hook applies to: all (``None``), a kind, classes, or a mix."""


@attrs.frozen
class HandlerRegistration:
    """One handler bound to one message type."""

    message_type: type[Message]
    kind: Kind
    handler: Any
    lifetime: Lifetime


@attrs.frozen
class BehaviourRegistration:
    """One behaviour, its position (registration order) and what it applies to."""

    behaviour: Any
    applies_to: AppliesTo
    lifetime: Lifetime


@attrs.frozen
class ValidatorRegistration:
    message_type: type[Message]
    validator: Any
    lifetime: Lifetime


@attrs.frozen
class HookRegistration:
    exception_type: type[Exception]
    hook: Callable[[Any, Any], Any]
    applies_to: AppliesTo


def applies(applies_to: AppliesTo, message_type: type) -> bool:
    """Whether a behaviour or hook registered with ``applies_to`` covers ``message_type``."""
    if applies_to is None:
        return True
    targets = applies_to if isinstance(applies_to, tuple) else (applies_to,)
    kind = kind_of(message_type)
    return any(t is kind if isinstance(t, Kind) else issubclass(message_type, t) for t in targets)


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
        container: an existing punq container whose registrations handlers may
            depend on; a new one by default.
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
        self.publish_strategy = publish
        self.include_base_event_handlers = include_base_event_handlers
        self.handlers: list[HandlerRegistration] = []
        self.behaviours: list[BehaviourRegistration] = []
        self.validators: list[ValidatorRegistration] = []
        self.hooks: list[HookRegistration] = []
        self.lifetimes: dict[Any, Lifetime] = {}
        self.expected: list[type[Message]] = []
        self.problems: list[str] = []
        self.built_sync: Mediator | None = None
        """The last sync mediator built, given to sync handlers that dispatch inside the async twin."""
        self._frozen = False

    # -- services -----------------------------------------------------------------

    def singleton(self, service: type[S] | Any, implementation: Any = None, *, instance: Any = None) -> Registry:
        """Register one shared instance of ``service``, made at build (or given as ``instance``)."""
        self._check_open(f"service {qualname(service)}")
        if instance is not None:
            self.container.register(service, instance=instance)
        else:
            self._register(service, implementation, punq.Scope.singleton)
        self.lifetimes[service] = Lifetime.SINGLETON
        return self

    def transient(self, service: type[S] | Any, implementation: Any = None) -> Registry:
        """Register ``service`` to be made anew wherever it is needed."""
        self._check_open(f"service {qualname(service)}")
        self._register(service, implementation, punq.Scope.transient)
        self.lifetimes[service] = Lifetime.TRANSIENT
        return self

    def scoped(self, service: type[S] | Any, implementation: Any = None) -> Registry:
        """Register ``service`` to be made once per dispatch scope and closed when the scope ends.

        An instance that is a context manager is entered when made and exited at
        the end of the scope with the exception that ended it, so a unit of work
        commits on success and rolls back on error; one with ``close()`` is closed.
        """
        self._check_open(f"service {qualname(service)}")
        self._register(service, implementation, punq.Scope.transient)
        self.lifetimes[service] = Lifetime.SCOPED
        return self

    def override(self, service: type[S] | Any, instance: Any) -> Registry:
        """Replace whatever provides ``service`` with ``instance`` (for tests: fakes, stubs)."""
        self._check_open(f"override of {qualname(service)}")
        self.container.register(service, instance=instance)
        self.lifetimes[service] = Lifetime.SINGLETON
        return self

    def _register(self, service: Any, implementation: Any, scope: punq.Scope) -> None:
        try:
            if implementation is None:
                self.container.register(service, scope=scope)
            else:
                self.container.register(service, implementation, scope=scope)
        except punq.InvalidForwardReferenceError as exc:
            # Reported with everything else at build, where the user sees all problems at once.
            self.problems.append(str(UnresolvedAnnotations(implementation or service, exc)))

    # -- handlers -----------------------------------------------------------------

    def handle(self, message_type: type[M_co]) -> HandlerBinder[M_co]:
        """Start binding a handler to ``message_type``: ``registry.handle(X).by(handler)``."""
        return HandlerBinder(self, message_type)

    def _add_handler(self, message_type: type[Message], handler: Any, lifetime: Lifetime) -> None:
        self._check_open(f"a handler for {qualname(message_type)}")
        kind = kind_of(message_type)
        if kind is None:
            raise NotAMessageError(message_type, "Command, Query, StreamQuery or Event")
        self.handlers.append(HandlerRegistration(message_type, kind, handler, lifetime))

    def expect(self, *message_types: type[Message]) -> Registry:
        """Declare message types that must have a handler; ``build`` reports any that lack one."""
        self._check_open("expected message types")
        self.expected.extend(message_types)
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
                    self.expected.append(obj)
        return self

    # -- behaviours, validators, hooks -----------------------------------------------

    def behaviour(
        self, behaviour: Any, *, applies_to: AppliesTo = None, lifetime: Lifetime = Lifetime.SINGLETON
    ) -> Registry:
        """Add a pipeline behaviour; the first registered is the outermost.

        ``behaviour`` is an instance, or a class the container builds with
        ``lifetime``. ``applies_to`` narrows it to a kind, to classes (a message
        class or a base class), or a tuple mixing both.
        """
        self._check_open(f"behaviour {qualname(behaviour)}")
        self.behaviours.append(BehaviourRegistration(behaviour, applies_to, lifetime))
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
        self.validators.append(ValidatorRegistration(typing.cast(type[Message], message_type), validator, lifetime))
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
        self.hooks.append(HookRegistration(exception_type, hook, applies_to))
        return self

    # -- build --------------------------------------------------------------------

    def build(self) -> Mediator:
        """Check the whole wiring, compile every chain, and return a sync mediator.

        Raises:
            WiringError: listing every problem found.
        """
        from ._build import build

        mediator = build(self, is_async=False)
        self._frozen = True
        self.built_sync = mediator  # type: ignore[assignment]
        return mediator  # type: ignore[return-value]

    def build_async(self) -> AsyncMediator:
        """Like :meth:`build`, for an :class:`~mediator.AsyncMediator`."""
        from ._build import build

        mediator = build(self, is_async=True)
        self._frozen = True
        return mediator  # type: ignore[return-value]

    def _check_open(self, what: str) -> None:
        if self._frozen:
            raise RegistryFrozenError(what)


def handles(*message_types: type[Message], lifetime: Lifetime = Lifetime.TRANSIENT) -> Callable[[T], T]:
    """Mark a handler class or function for :meth:`Registry.scan`; it registers nothing by itself."""

    def mark(obj: T) -> T:
        marks = (*getattr(obj, HANDLES_ATTRIBUTE, ()), *((m, lifetime) for m in message_types))
        setattr(obj, HANDLES_ATTRIBUTE, marks)
        return obj

    return mark
