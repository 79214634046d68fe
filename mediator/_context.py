"""Dispatch scopes and the dispatch context reachable from handlers and behaviours.

A *scope* owns the scoped service instances (a database session, a unit of
work) of one root dispatch and everything dispatched from inside it; it closes
them deterministically, newest first, when that root dispatch ends, passing the
exception (if any) so a unit of work can roll back. A *dispatch context* is one
per dispatch: it knows its message, its parent, and the correlation and
causation ids, which are made lazily so that nobody pays for an id nobody reads.
"""

from __future__ import annotations

import contextvars
import inspect
import os
import threading
import time
import typing
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._errors import ScopeError
from ._messages import qualname

_current: contextvars.ContextVar[DispatchContext | None] = contextvars.ContextVar(
    "mediator_dispatch_context", default=None
)


def new_id(urandom: Callable[[int], bytes] = os.urandom) -> str:
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` but without building a ``UUID``.

    Three are made per command (its event's id, the correlation and message ids), and ``uuid.UUID``'s
    checks cost more than the randomness.
    """
    raw = bytearray(urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return raw.hex()


def new_event_id(urandom: Callable[[int], bytes] = os.urandom, clock: Callable[[], int] = time.time_ns) -> str:
    """A time-ordered (version 7) UUID as 32 hex digits: 48 bits of Unix milliseconds, then random bits (RFC 9562).

    An event's id is unique in the log, so the log keeps an index of them; random ids land anywhere in it and
    every append touches a page of its own, which at millions of events means reads from the disk. Ids that
    grow with time are appended at one end of the index, as the events are at one end of the log.

    Public as ``mediator.readmodels.new_event_id``, for code that appends events itself (a bulk import through
    ``WriteSession.append``) and should make their ids as the unit of work does.
    """
    raw = bytearray((clock() // 1_000_000).to_bytes(6, "big") + urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70  # version 7
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 9562 variant
    return raw.hex()


class Scope:
    """The lifetime of scoped services: one root dispatch, or an explicit ``mediator.scope()``."""

    # No __slots__: what a scope usually keeps (no ids, no principal, sync) are class defaults, so the scope a
    # dispatch opens for itself is made without calling __init__ (root_context). Measured with callgrind, that
    # saves about 700 of a scoped send's 19k instructions against __slots__ and two __init__ calls.
    correlation_id: str | None = None
    causation_id: str | None = None
    principal: Any = None
    _items: dict[str, Any] | None = None
    _closed = False
    _is_async = False
    _instances: dict[Any, Any]
    _exits: list[tuple[str, Callable[..., Any]]]

    def __init__(
        self,
        is_async: bool = False,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        principal: Any = None,
    ) -> None:
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        self.principal = principal
        self._instances = {}
        self._exits = []
        self._is_async = is_async

    @property
    def items(self) -> dict[str, Any]:
        """Free-form values the application keeps for the length of the scope."""
        if self._items is None:
            self._items = {}
        return self._items

    @property
    def closed(self) -> bool:
        """Whether the scope has ended; scoped services can no longer be made in it."""
        return self._closed

    def get(self, key: Any, default: Any = None) -> Any:
        """This scope's instance for ``key``, or ``default`` if none was made or put yet."""
        return self._instances.get(key, default)

    def put(self, key: Any, instance: Any) -> None:
        """Keep ``instance`` as this scope's one for ``key`` (nothing is entered; see :meth:`on_exit`)."""
        if self._closed:
            raise ScopeError(f"Cannot put {qualname(key)} in a dispatch scope that has already closed.")
        self._instances[key] = instance

    def on_exit(self, callback: Callable[[BaseException | None], Any]) -> None:
        """Call ``callback(exc)`` when the scope closes, with the exception that ended it (``None`` if none).

        Callbacks run newest first, with the exits of the scope's own context-manager services; an awaitable
        result is awaited when the scope is closed with :meth:`aclose`.
        """
        if self._closed:
            raise ScopeError("Cannot register an exit on a dispatch scope that has already closed.")
        self._exits.append((_CALL, callback))

    def get_or_create(self, key: Any, create: Callable[[Scope], Any]) -> Any:
        """Return this scope's instance for ``key``, creating and entering it on first use."""
        instance = self._instances.get(key, _MISSING)
        if instance is not _MISSING:
            return instance
        return self._make(key, create, True)

    def create(self, key: Any, create: Callable[[Scope], Any]) -> Any:
        """Make this scope's instance for ``key`` (the caller checked there is none yet).

        Threads sharing one scope (``asyncio.to_thread`` copies the context) still
        get one instance per key: the first claims the key (``dict.setdefault`` is
        atomic), the others wait on its claim and take what it made.
        """
        return self._make(key, create, True)

    def _make(self, key: Any, make: Callable[..., Any], with_scope: bool) -> Any:
        # Called by the compiled getters of scoped services: ``make(self)`` or ``make()``. A claim is the claiming
        # thread's id in _CLAIMS, so making an instance allocates no lock; a thread that finds another's claim
        # waits on one condition shared by all claims (rare: only threads sharing a scope ever meet here).
        claim_key = (id(self), key)
        me = _get_ident()
        if _CLAIMS.setdefault(claim_key, me) != me:
            _wait_for(claim_key)
            instance = self._instances.get(key, _MISSING)
            return self._make(key, make, with_scope) if instance is _MISSING else instance
        try:
            if self._closed:
                raise ScopeError(
                    f"Cannot create scoped {qualname(key)}: its dispatch scope has already closed. Something "
                    "outlived its dispatch (a task or a stream kept after it ended); open mediator.scope() around "
                    "it."
                )
            made = make(self) if with_scope else make()
            how = _EXIT_OF.get(type(made), _MISSING)
            if how is _MISSING:
                how = exit_of(type(made))
            if how is _EXIT:  # a context manager: entered now, exited when the scope closes
                instance = made.__enter__()
                if instance is None:
                    instance = made
                self._exits.append((_EXIT, made.__exit__))
            else:
                instance = made
                if how is _AEXIT and self._is_async:
                    self._exits.append((_AEXIT, made.__aexit__))
                elif self._is_async and hasattr(made, "aclose"):
                    self._exits.append((_ACLOSE, made.aclose))
                elif hasattr(made, "close"):
                    self._exits.append((_CLOSE, made.close))
            self._instances[key] = instance
            return instance
        finally:
            del _CLAIMS[claim_key]
            if _waiting[0]:
                wake_waiters()

    def close(self, exc: BaseException | None = None) -> None:
        """End the scope: exit its resources newest first, handing them ``exc``.

        Every resource is closed even if one fails; the first failure is raised after.
        """
        if self._closed:
            return
        self._closed = True
        if not self._exits:
            return
        error: BaseException | None = None
        info = _NO_EXCEPTION if exc is None else (type(exc), exc, exc.__traceback__)
        for how, exit_ in reversed(self._exits):
            try:
                if how is _EXIT:
                    exit_(*info)
                elif how is _CLOSE:
                    exit_()
                elif how is _CALL:
                    if inspect.isawaitable(outcome := exit_(exc)):
                        outcome.close()  # type: ignore[attr-defined]
                        raise ScopeError(f"{exit_!r} needs awaiting; close this scope with aclose().")
                else:
                    raise ScopeError(f"{exit_!r} needs awaiting; close this scope with aclose().")
            except BaseException as failure:
                error = error or failure
        self._exits.clear()
        if error is not None:
            raise error

    async def aclose(self, exc: BaseException | None = None) -> None:
        """End the scope like :meth:`close`, awaiting async resources' ``__aexit__``/``aclose``."""
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        for how, exit_ in reversed(self._exits):
            try:
                if how is _EXIT:
                    exit_(*_exc_info(exc))
                elif how is _CLOSE:
                    exit_()
                elif how is _AEXIT:
                    await exit_(*_exc_info(exc))
                else:
                    result = exit_(exc) if how is _CALL else exit_()
                    if inspect.isawaitable(result):
                        await result
            except BaseException as failure:
                error = error or failure
        self._exits.clear()
        if error is not None:
            raise error


_MISSING: Any = object()
# Keys being made right now, by (scope id, service), each with the id of the thread making it.
_CLAIMS: dict[tuple[int, Any], int] = {}
_CLAIMED = threading.Condition()
"""Notified when a claim that somebody waits for is released."""
_waiting = [0]
"""How many threads wait in :func:`_wait_for` (changed under ``_CLAIMED``); 0 keeps a release free of the lock."""
_get_ident = threading.get_ident

_EXIT, _CLOSE, _AEXIT, _ACLOSE, _CALL = "exit", "close", "aexit", "aclose", "call"
_NO_EXCEPTION = (None, None, None)

_EXIT_OF: dict[type, str | None] = {}
"""How a scoped service's class is exited when its scope closes, as far as its class says (the ``with`` statement
looks these methods up on the class too): ``_EXIT``, ``_AEXIT`` or ``None``, in which case ``aclose``/``close``
are looked for on the instance."""


def exit_of(cls: type) -> str | None:
    how = _EXIT if hasattr(cls, "__enter__") and hasattr(cls, "__exit__") else (
        _AEXIT if hasattr(cls, "__aexit__") else None)
    _EXIT_OF[cls] = how
    return how


def _wait_for(claim_key: tuple[int, Any]) -> None:
    """Wait until ``claim_key`` is no longer claimed (another thread is making that instance)."""
    with _CLAIMED:
        _waiting[0] += 1  # before looking: a release that missed this count has already removed the claim
        try:
            while claim_key in _CLAIMS:
                _CLAIMED.wait(0.5)
        finally:
            _waiting[0] -= 1


def wake_waiters() -> None:
    """Wake the threads waiting for a claim (call after removing one, when ``_waiting[0]``)."""
    with _CLAIMED:
        _CLAIMED.notify_all()


def _exc_info(
    exc: BaseException | None,
) -> tuple[type[BaseException] | None, BaseException | None, TracebackType | None]:
    if exc is None:
        return None, None, None
    return type(exc), exc, exc.__traceback__


class DispatchContext:
    """What a handler or behaviour can know about the dispatch it runs in.

    Nested dispatches share the scope and the correlation id of their parent;
    their causation id is the parent message's id.
    """

    # No __slots__, for the reason Scope has none: a root dispatch's context is made without __init__.
    _message_id: str | None = None
    parent: DispatchContext | None = None
    scope: Scope
    message: object

    def __init__(self, scope: Scope, message: object, parent: DispatchContext | None) -> None:
        self.scope = scope
        self.message = message
        self.parent = parent

    @property
    def message_id(self) -> str:
        """A unique id for this dispatch's message, made on first read."""
        if self._message_id is None:
            self._message_id = new_id()
        return self._message_id

    @property
    def correlation_id(self) -> str:
        """The id shared by a root dispatch and everything dispatched from it."""
        scope = self.scope
        if scope.correlation_id is None:
            scope.correlation_id = new_id()
        return scope.correlation_id

    @property
    def causation_id(self) -> str | None:
        """The id of the message whose handling caused this one, if any."""
        parent = self.parent
        while parent is not None and parent.message is None:
            parent = parent.parent
        return parent.message_id if parent is not None else self.scope.causation_id

    @property
    def principal(self) -> Any:
        """Who is acting: whatever the caller put in the scope (a user, a service account)."""
        return self.scope.principal

    @property
    def depth(self) -> int:
        """0 for a root dispatch, 1 for a message dispatched from its handler, and so on."""
        depth, parent = 0, self.parent
        while parent is not None:
            if parent.message is not None:
                depth += 1
            parent = parent.parent
        return depth


class RootScope(Scope):
    """A :class:`Scope` made without arguments or ``__init__``: the one a root dispatch opens for itself.

    Whoever makes one sets ``_instances`` and ``_exits``; everything else is the class defaults. Calling a class
    whose ``__init__`` is ``object``'s is the cheapest way CPython makes an instance.
    """

    __init__ = object.__init__


class RootAsyncScope(RootScope):
    """A :class:`RootScope` for the async mediator: its resources may be awaited when it closes."""

    _is_async = True


class RootContext(DispatchContext):
    """A :class:`DispatchContext` made without ``__init__``; whoever makes one sets ``scope`` and ``message``."""

    __init__ = object.__init__


def root_context(message: object, is_async: bool) -> DispatchContext:
    """The context of a root dispatch of ``message`` in a new scope of its own (no ids yet, no principal).

    The same as ``DispatchContext(Scope(is_async), message, None)``, made without calling either ``__init__``:
    every dispatch whose chain needs a scope pays for this.
    """
    scope = RootAsyncScope() if is_async else RootScope()
    scope._instances = {}
    scope._exits = []
    context = RootContext()
    context.scope = scope
    context.message = message
    return typing.cast(DispatchContext, context)


def current_context() -> DispatchContext:
    """Return the context of the dispatch running now.

    Raises:
        ScopeError: when no dispatch with a scope is running. A message's chain opens
            a scope when any part of it needs one (a scoped dependency, a
            ``DispatchContext`` dependency, a behaviour that uses the context) or
            inside ``mediator.scope()``.
    """
    ctx = _current.get()
    if ctx is None:
        raise ScopeError(
            "No dispatch scope is open here; depend on DispatchContext in the handler or run the "
            "dispatch inside `with mediator.scope():` to get one."
        )
    return ctx
