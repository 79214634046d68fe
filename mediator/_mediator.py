"""The built mediators: ``Mediator`` and its async twin ``AsyncMediator``.

Both share their dispatch bodies, which are plain functions assigned to each
class; only the annotations differ (``R`` for the sync twin, an awaitable of
``R`` for the async one). A dispatch is a dictionary lookup by the message's
exact type and a call of the chain compiled for it at build.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ._context import DispatchContext, Scope, _current
from ._errors import HandlerNotFoundError, NotAMessageError
from ._live import AsyncSubscription, ChangeFeed, Subscription, _watch
from ._messages import BASES, Command, Event, Kind, Query, StreamQuery, kind_of, qualname
from ._notify import PublishStrategy

if TYPE_CHECKING:
    from ._build import Explanation, Routes

R = TypeVar("R")
T = TypeVar("T")

_VERB = {Kind.COMMAND: "send", Kind.QUERY: "ask", Kind.STREAM: "stream", Kind.EVENT: "publish"}


def _miss(message: object, expected: Kind) -> Exception:
    if isinstance(message, type) and kind_of(message) is not None:
        error = NotAMessageError(message, BASES[expected].__name__)
        error.args = (f"{qualname(message)} was passed as a class; pass an instance: {message.__name__}(...).",)
        return error
    kind = kind_of(type(message))
    if kind is None:
        return NotAMessageError(message, BASES[expected].__name__)
    if kind is not expected:
        error = NotAMessageError(message, BASES[expected].__name__)
        error.args = (f"{error.args[0][:-1]} (it is a {BASES[kind].__name__}: use {_VERB[kind]}() for it).",)
        return error
    return HandlerNotFoundError(type(message))


def _send(self: _Dispatcher, command: Any) -> Any:
    try:
        entry = self._commands[type(command)]
    except KeyError:
        raise _miss(command, Kind.COMMAND) from None
    return entry(command)


def _ask(self: _Dispatcher, query: Any) -> Any:
    try:
        entry = self._queries[type(query)]
    except KeyError:
        raise _miss(query, Kind.QUERY) from None
    return entry(query)


def _stream(self: _Dispatcher, query: Any) -> Any:
    try:
        entry = self._streams[type(query)]
    except KeyError:
        raise _miss(query, Kind.STREAM) from None
    return entry(query)


def _publish(self: _Dispatcher, event: Any, *, strategy: PublishStrategy | None = None) -> Any:
    if strategy is None:
        try:
            entry = self._events[type(event)]
        except KeyError:
            entry = self._event_entry(event, self._routes.publish_strategy)
    else:
        entry = self._event_entry(event, strategy)
    return entry(event)


class _Dispatcher:
    __slots__ = ("_commands", "_event_entries", "_events", "_live", "_queries", "_routes", "_streams")

    _commands: dict[type, Callable[[Any], Any]]
    _queries: dict[type, Callable[[Any], Any]]
    _streams: dict[type, Callable[[Any], Any]]
    _events: dict[type, Callable[[Any], Any]]
    _event_entries: dict[tuple[type, PublishStrategy], Callable[[Any], Any]]
    _routes: Routes
    _live: ChangeFeed | None

    def _install(self, routes: Routes) -> None:
        self._routes = routes
        self._live = routes.live
        self._commands = routes.entries[Kind.COMMAND]
        self._queries = routes.entries[Kind.QUERY]
        self._streams = routes.entries[Kind.STREAM]
        self._events = routes.entries[Kind.EVENT]
        self._event_entries = routes.event_entries

    def _event_entry(self, event: Any, strategy: PublishStrategy) -> Callable[[Any], Any]:
        entry = self._event_entries.get((type(event), strategy))
        if entry is not None:
            return entry
        # An event class the build did not see: check it, compile it once, remember it.
        if kind_of(type(event)) is not Kind.EVENT:
            raise _miss(event, Kind.EVENT)
        entry = self._routes.event_entry(type(event), strategy)
        if strategy is self._routes.publish_strategy:
            self._events[type(event)] = entry
        return entry

    def explain(self, message_type: type) -> Explanation:
        """Describe the compiled chain for ``message_type``: behaviours in order, handler, lifetimes."""
        return self._routes.explain(message_type)

    @property
    def message_types(self) -> frozenset[type]:
        """Every message type this mediator has a route for."""
        return frozenset(self._routes.explanations)


def _open_scope(
    correlation_id: str | None, causation_id: str | None, principal: Any, is_async: bool
) -> DispatchContext:
    parent = _current.get()
    if parent is not None:
        correlation_id = correlation_id or parent.correlation_id
        principal = principal if principal is not None else parent.principal
    scope = Scope(correlation_id=correlation_id, causation_id=causation_id, principal=principal, is_async=is_async)
    return DispatchContext(scope, None, parent)


class Mediator(_Dispatcher):
    """Dispatches messages to the handlers wired at build; made by ``Registry.build()``."""

    __slots__ = ()

    if TYPE_CHECKING:

        def send(self, command: Command[R], /) -> R:
            """Run ``command`` through its chain and return its handler's result."""
            ...

        def ask(self, query: Query[R], /) -> R:
            """Run ``query`` through its chain and return its handler's answer."""
            ...

        def stream(self, query: StreamQuery[T], /) -> Iterator[T]:
            """Return the items of a streaming query; the scope closes when iteration ends."""
            ...

        def publish(self, event: Event, /, *, strategy: PublishStrategy | None = None) -> None:
            """Run every handler of ``event`` with the given or the registry's strategy."""
            ...

    else:
        send, ask, stream, publish = _send, _ask, _stream, _publish

    def subscribe(self, query: Query[R], /, *, after: int | None = None) -> Subscription[R]:
        """Answer ``query`` now, then again each time the read models it ``reads`` commit a change that can
        affect it (see :mod:`mediator._live`): an iterator of :class:`~mediator.Answer`, each with its token.

        ``after``, the token of an answer the caller has, resumes: the first answer comes only once something
        that can affect it was committed after that token.

        Raises:
            SubscriptionError: if the query names no read models, or the mediator has no change feed.
        """
        if type(query) not in self._queries:
            raise _miss(query, Kind.QUERY)
        return Subscription(self, query, _watch(self._live, query, after))

    @contextlib.contextmanager
    def scope(
        self, *, correlation_id: str | None = None, causation_id: str | None = None, principal: Any = None
    ) -> Iterator[DispatchContext]:
        """Open a dispatch scope that every dispatch inside the block joins.

        Use it per request: scoped services (a session, a unit of work) are shared
        by all dispatches in the block and closed at its end, with the exception
        that ended it, if any.
        """
        ctx = _open_scope(correlation_id, causation_id, principal, is_async=False)
        token = _current.set(ctx)
        try:
            yield ctx
        except BaseException as exc:
            _current.reset(token)
            ctx.scope.close(exc)
            raise
        _current.reset(token)
        ctx.scope.close(None)


class AsyncMediator(_Dispatcher):
    """The async twin of :class:`Mediator`; made by ``Registry.build_async()``.

    ``await mediator.send(command)`` is typed as the command's result. Sync
    handlers run inline on the event loop, with no thread hop.
    """

    __slots__ = ()

    if TYPE_CHECKING:

        def send(self, command: Command[R], /) -> Coroutine[Any, Any, R]:
            """Run ``command`` through its chain; awaiting gives its handler's result."""
            ...

        def ask(self, query: Query[R], /) -> Coroutine[Any, Any, R]:
            """Run ``query`` through its chain; awaiting gives its handler's answer."""
            ...

        def stream(self, query: StreamQuery[T], /) -> AsyncIterator[T]:
            """Return the items of a streaming query as an async iterator."""
            ...

        def publish(
            self, event: Event, /, *, strategy: PublishStrategy | None = None
        ) -> Coroutine[Any, Any, None]:
            """Run every handler of ``event``; awaiting finishes when they have run."""
            ...

    else:
        send, ask, stream, publish = _send, _ask, _stream, _publish

    def subscribe(self, query: Query[R], /, *, after: int | None = None) -> AsyncSubscription[R]:
        """The async twin of :meth:`Mediator.subscribe`: ``async for answer in mediator.subscribe(query)``."""
        if type(query) not in self._queries:
            raise _miss(query, Kind.QUERY)
        return AsyncSubscription(self, query, _watch(self._live, query, after))

    @contextlib.asynccontextmanager
    async def scope(
        self, *, correlation_id: str | None = None, causation_id: str | None = None, principal: Any = None
    ) -> AsyncIterator[DispatchContext]:
        """The async twin of :meth:`Mediator.scope`."""
        ctx = _open_scope(correlation_id, causation_id, principal, is_async=True)
        token = _current.set(ctx)
        try:
            yield ctx
        except BaseException as exc:
            _current.reset(token)
            await ctx.scope.aclose(exc)
            raise
        _current.reset(token)
        await ctx.scope.aclose(None)
