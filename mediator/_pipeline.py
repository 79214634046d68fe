"""Pipeline composition, done once per message type when the mediator is built.

A behaviour is an object with ``handle(message, next)`` (and, for the async
mediator, ``async handle_async(message, next)`` or an ``async def handle``).
``next`` is the rest of the chain, composed at build: calling a dispatch is a
table lookup and a call, with no per-call closures, signature checks or
container lookups.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import attrs

from . import _codegen, _context
from ._context import DispatchContext, Scope

M = TypeVar("M")
R = TypeVar("R")


class Behaviour(Protocol[M, R]):
    """A step around a handler: run code before and after ``next``, or short-circuit it."""

    def handle(self, message: M, next: Callable[[M], R], /) -> R:
        """Handle ``message``, normally by returning ``next(message)``."""
        ...


class AsyncBehaviour(Protocol[M, R]):
    """The async twin of :class:`Behaviour`."""

    async def handle_async(self, message: M, next: Callable[[M], Awaitable[R]], /) -> R:
        """Handle ``message``, normally by returning ``await next(message)``."""
        ...


@attrs.frozen
class InlineCall:
    """An invoker's call written out, for the generated entry that opens a new scope and runs it at once.

    ``expression`` reads the locals ``message`` and ``scope`` and the globals in ``namespace``; it also reads a
    local for each service in ``fresh`` (service key -> (local name, class)), which the entry makes in its new
    scope first: scoped context managers with no dependencies (``_di.fresh_builder``).
    """

    namespace: dict[str, Any]
    expression: str
    fresh: dict[Any, tuple[str, type]]


def link(step: Callable[[Any, Any], Any], rest: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Compose one singleton behaviour step in front of ``rest`` (build time).

    When ``step`` is a plain method ``handle(self, message, next)``, the result
    is a copy of that method whose ``next`` defaults to ``rest``, bound to the
    behaviour: calling it runs the behaviour directly, with no linking frame in
    between. Anything else is wrapped in a small closure.
    """
    func = getattr(step, "__func__", None)
    owner = getattr(step, "__self__", None)
    if (
        isinstance(func, types.FunctionType)
        and owner is not None
        and _plain_three_args(func.__code__)
        and func.__defaults__ is None
    ):
        fast = types.FunctionType(func.__code__, func.__globals__, func.__name__, (rest,), func.__closure__)
        fast.__qualname__ = func.__qualname__
        fast.__kwdefaults__ = func.__kwdefaults__
        fast.__dict__.update(func.__dict__)
        return types.MethodType(fast, owner)

    def linked(message: Any) -> Any:
        return step(message, rest)

    return linked


def _plain_three_args(code: types.CodeType) -> bool:
    # self, message, next; nothing keyword-only, no *args/**kwargs.
    return (
        code.co_argcount == 3
        and code.co_kwonlyargcount == 0
        and not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)
    )


def link_per_dispatch(
    make: Callable[..., Any], needs_scope: bool, method: Callable[..., Any], rest: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    """Compose a behaviour made anew per dispatch (transient or scoped) in front of ``rest``.

    ``method`` is the behaviour class's plain function, looked up once at build.
    """
    current = _context._current

    if needs_scope:

        def linked_scoped(message: Any) -> Any:
            ctx = current.get()
            assert ctx is not None
            return method(make(ctx.scope), message, rest)

        return linked_scoped

    def linked(message: Any) -> Any:
        return method(make(), message, rest)

    return linked


def as_coroutine(func: Callable[[Any], Any]) -> Callable[[Any], Awaitable[Any]]:
    """Adapt a sync callable to the async chain; it runs inline, with no thread hop."""

    async def inline(message: Any) -> Any:
        return func(message)

    return inline


def scoped_sync(chain: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Run ``chain`` inside a dispatch context; close the scope if this dispatch opened it.

    The scope closes while the context is still current, so whatever a resource
    does on exit (a unit of work publishing its events) joins this dispatch.
    """
    current, context_class, root = _context._current, DispatchContext, _context.root_context

    def run(message: Any) -> Any:
        parent = current.get()
        if parent is not None:
            token = current.set(context_class(parent.scope, message, parent))
            try:
                return chain(message)
            finally:
                current.reset(token)
        ctx = root(message, False)
        owned = ctx.scope
        token = current.set(ctx)
        try:
            try:
                result = chain(message)
            except BaseException as exc:
                owned.close(exc)
                raise
            owned.close(None)
            return result
        finally:
            current.reset(token)

    return run


def scoped_inline(inline: InlineCall, chain: Callable[[Any], Any], is_async: bool,
                  awaits: bool) -> Callable[[Any], Any]:
    """:func:`scoped_sync` (or ``scoped_async``) with the handler's call written into it: one generated function.

    For a chain that is only its handler (no behaviour) and a handler with a scoped context-manager
    dependency, such as a session: a root dispatch opens its scope, makes and enters those dependencies inline
    (the scope is new, so nobody else can have made them), calls the handler and closes the scope. A nested
    dispatch joins its parent's scope and calls ``chain``, as ``scoped_sync`` does. ``awaits`` says whether the
    handler's call is awaited (an async handler on the async mediator).

    A lone such dependency (the usual case: one session) is exited inline as well, and joins the scope's exits
    only if the scope has others to close: it is the oldest, so it goes first in the list, and is exited last.
    """
    namespace = _codegen.Namespace(inline.namespace)
    names = {hint: namespace.add(hint, value) for hint, value in (
        ("current", _context._current), ("chain", chain), ("context_class", DispatchContext),
        ("new_scope", _context.RootAsyncScope if is_async else _context.RootScope),
        ("new_context", _context.RootContext), ("exit_how", _context._EXIT))}
    current, chain_, context_class, how = names["current"], names["chain"], names["context_class"], names["exit_how"]
    wait, close = ("await ", "await scope.aclose") if is_async else ("", "scope.close")
    made = [(local, namespace.add(builder.__name__, builder), namespace.add(f"key_{builder.__name__}", key))
            for key, (local, builder) in inline.fresh.items()]
    lines = [
        f"_parent = {current}.get()",
        "if _parent is not None:",
        f"    _token = {current}.set({context_class}(_parent.scope, message, _parent))",
        "    try:",
        f"        return {wait}{chain_}(message)",
        "    finally:",
        f"        {current}.reset(_token)",
        f"scope = {names['new_scope']}()",
        "scope._instances = _instances = {}",
        "scope._exits = _exits = []",
        f"_ctx = {names['new_context']}()",
        "_ctx.scope = scope",
        "_ctx.message = message",
        f"_token = {current}.set(_ctx)",
        "try:",
    ]
    call = f"_result = {'await ' if awaits else ''}{inline.expression}"
    if len(made) == 1:
        ((local, builder, key),) = made
        lines += [
            "    try:",
            f"        _made = {builder}()",
            f"        {local} = _made.__enter__()",
            "    except BaseException as _exc:",
            f"        {close}(_exc)",
            "        raise",
            f"    if {local} is None:",
            f"        {local} = _made",
            f"    _instances[{key}] = {local}",
            "    try:",
            f"        {call}",
            "    except BaseException as _exc:",
            f"        _exits.insert(0, ({how}, _made.__exit__))",
            f"        {close}(_exc)",
            "        raise",
            "    if _exits:",
            f"        _exits.insert(0, ({how}, _made.__exit__))",
            f"        {close}(None)",
            "    else:",
            "        scope._closed = True",
            "        _made.__exit__(None, None, None)",
        ]
    else:
        lines.append("    try:")
        for local, builder, key in made:
            lines += [
                f"        {local}_made = {builder}()",
                f"        {local} = {local}_made.__enter__()",
                f"        if {local} is None:",
                f"            {local} = {local}_made",
                f"        _exits.append(({how}, {local}_made.__exit__))",
                f"        _instances[{key}] = {local}",
            ]
        lines += [f"        {call}", "    except BaseException as _exc:", f"        {close}(_exc)", "        raise",
                  f"    {close}(None)"]
    lines += ["    return _result", "finally:", f"    {current}.reset(_token)"]
    return _codegen.function("run", ["message"], lines, namespace, about="a scoped dispatch", is_async=is_async)


def scoped_async(chain: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    """The async twin of :func:`scoped_sync`."""
    current, context_class, root = _context._current, DispatchContext, _context.root_context

    async def run(message: Any) -> Any:
        parent = current.get()
        if parent is not None:
            token = current.set(context_class(parent.scope, message, parent))
            try:
                return await chain(message)
            finally:
                current.reset(token)
        ctx = root(message, True)
        owned = ctx.scope
        token = current.set(ctx)
        try:
            try:
                result = await chain(message)
            except BaseException as exc:
                await owned.aclose(exc)
                raise
            await owned.aclose(None)
            return result
        finally:
            current.reset(token)

    return run


def _stream_outcome(exc: BaseException) -> BaseException | None:
    # A consumer that stops early is not a failure of the stream.
    return None if isinstance(exc, GeneratorExit) else exc


def stream_sync(chain: Callable[[Any], Iterable[Any]], needs_scope: bool) -> Callable[[Any], Iterator[Any]]:
    """Make a stream entry that starts when first iterated.

    Behaviours, the handler and any scope start with the first ``next()``; the
    scope stays current for every item and closes when the stream is exhausted,
    fails or is closed. A stream that is never iterated opens nothing.
    """
    current, context_class, scope_class = _context._current, DispatchContext, Scope

    def iterate(message: Any) -> Iterator[Any]:
        if not needs_scope:
            yield from chain(message)
            return
        parent = current.get()
        owned = scope_class() if parent is None else None
        ctx = context_class(owned or parent.scope, message, parent)  # type: ignore[union-attr]
        failure: BaseException | None = None
        items: Iterator[Any] | None = None
        try:
            while True:
                token = current.set(ctx)
                try:
                    if items is None:
                        items = iter(chain(message))
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    current.reset(token)
                yield item
        except BaseException as exc:
            failure = _stream_outcome(exc)
            raise
        finally:
            try:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
            finally:
                if owned is not None:
                    token = current.set(ctx)
                    try:
                        owned.close(failure)
                    finally:
                        current.reset(token)

    return iterate


def stream_async(chain: Callable[[Any], AsyncIterator[Any]], needs_scope: bool) -> Callable[[Any], AsyncIterator[Any]]:
    """The async twin of :func:`stream_sync`: iterate it with ``async for`` (or ``contextlib.aclosing``)."""
    current, context_class, scope_class = _context._current, DispatchContext, Scope

    async def iterate(message: Any) -> AsyncIterator[Any]:
        if not needs_scope:
            async for item in chain(message):
                yield item
            return
        parent = current.get()
        owned = scope_class(True) if parent is None else None
        ctx = context_class(owned or parent.scope, message, parent)  # type: ignore[union-attr]
        failure: BaseException | None = None
        items: AsyncIterator[Any] | None = None
        try:
            while True:
                token = current.set(ctx)
                try:
                    if items is None:
                        items = aiter(chain(message))
                    item = await anext(items)
                except StopAsyncIteration:
                    return
                finally:
                    current.reset(token)
                yield item
        except BaseException as exc:
            failure = _stream_outcome(exc)
            raise
        finally:
            try:
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                if owned is not None:
                    token = current.set(ctx)
                    try:
                        await owned.aclose(failure)
                    finally:
                        current.reset(token)

    return iterate


def stream_to_async(func: Callable[[Any], Any]) -> Callable[[Any], AsyncIterator[Any]]:
    """Adapt a handler that returns a sync iterator to the async stream API (inline, no thread)."""

    async def items(iterable: Iterable[Any]) -> AsyncIterator[Any]:
        for item in iterable:
            yield item

    def run(message: Any) -> AsyncIterator[Any]:
        result = func(message)
        if hasattr(result, "__aiter__"):
            return result  # type: ignore[no-any-return]
        return items(result)

    return run
