"""Compiling calls at build: handlers and validators, with the checks that their signatures fit their messages.

A compiled call (an :class:`Invoker`) is ``call(message)``: the handler made or looked up, its dependencies
passed, all written out once as generated source, so a dispatch inspects nothing.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

import attrs

from . import _codegen, _context
from ._di import (
    SCOPE_LINE,
    Compiler,
    Lifetime,
    Provider,
    arguments,
    fresh_builder,
    positional_names,
    type_hints,
)
from ._errors import UnresolvedAnnotationsError
from ._messages import Kind, declared_result, qualname
from ._pipeline import InlineCall
from ._records import HookRegistration, Registrations, applies


@attrs.frozen
class Invoker:
    """A compiled call of a handler or validator: ``call(message)`` does everything."""

    call: Callable[[Any], Any]
    needs_scope: bool
    is_async: bool
    description: str
    inline: InlineCall | None = None
    """The same call as source, for an entry that opens the dispatch's scope itself (``None``: call ``call``)."""


def type_name(tp: Any) -> str:
    if tp is Any:
        return "Any"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "")


class Build:
    """What a behaviour's ``for_message(message_type, build)`` hook may use at build time."""

    def __init__(self, records: Registrations, compiler: Compiler, is_async: bool) -> None:
        self.records = records
        self.compiler = compiler
        self.is_async = is_async
        self._validators: dict[type, tuple[Invoker, ...]] = {}

    def problem(self, text: str) -> None:
        """Report a wiring problem; ``build`` raises them all together."""
        self.compiler.problems.append(text)

    def validators(self, message_type: type) -> tuple[Invoker, ...]:
        """The compiled validators registered for ``message_type`` or its base classes."""
        if message_type not in self._validators:
            found = []
            for reg in self.records.validators:
                if issubclass(message_type, reg.message_type):
                    invoker = compile_call(reg.validator, "validate", reg.lifetime, self, reg.message_type, None)
                    if invoker is not None:
                        found.append(invoker)
            self._validators[message_type] = tuple(found)
        return self._validators[message_type]

    def hooks(self, message_type: type) -> tuple[HookRegistration, ...]:
        """The exception hooks that apply to ``message_type``, in registration order."""
        return tuple(h for h in self.records.hooks if applies(h.applies_to, message_type))

    def resolve(self, service: Any, needed_by: Any) -> Any:
        """Get a singleton service at build (for behaviours that need one); ``None`` if unavailable."""
        provider = self.compiler.provider(service, needed_by)
        return None if provider is None else provider.get(None)


def _check_signature(func: Callable[..., Any], skip: int, message_type: type, kind: Kind, build: Build,
                     label: str) -> None:
    """Report a handler whose annotated message or result type does not fit ``message_type``."""
    try:
        hints = type_hints(func, {message_type.__name__: message_type})
    except UnresolvedAnnotationsError:
        return  # cannot tell; dependencies, which must resolve, are reported where they are compiled
    params = list(inspect.signature(func).parameters.values())[skip:]
    if not params:
        build.problem(f"{label} takes no message parameter; it must accept a {qualname(message_type)}.")
        return
    annotation = hints.get(params[0].name)
    if isinstance(annotation, type) and not issubclass(message_type, annotation):
        build.problem(
            f"{label} is registered for {qualname(message_type)} but its message parameter is annotated "
            f"{qualname(annotation)}; fix the annotation or the registration."
        )
    if "return" not in hints:
        return  # unannotated: nothing to compare
    returned = hints["return"]
    if kind is Kind.EVENT:
        # publish() drops what a handler returns: an annotation promising a value (or, on a sync function, an
        # awaitable that nobody would await) says the handler was written for something else.
        if not _compatible(returned, None):
            build.problem(
                f"{label} returns {type_name(returned)} but is registered for the event {qualname(message_type)}, "
                "whose handlers return None (async ones: when awaited); fix the annotation or the registration."
            )
        return
    declared = declared_result(message_type)
    if kind is Kind.STREAM:
        args = typing.get_args(returned)
        returned = args[0] if args else Any
    if not _compatible(returned, declared):
        build.problem(
            f"{label} returns {type_name(returned)} but {qualname(message_type)} declares "
            f"{type_name(declared)}; make them agree."
        )


_NEVER = (typing.NoReturn, typing.Never)
"""Return annotations of a handler that always raises: they fit any result, as they do for mypy."""


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union or isinstance(tp, types.UnionType)


def _compatible(returned: Any, declared: Any) -> bool:
    """Whether a handler annotated to return ``returned`` answers ``declared``; unsure cases are compatible."""
    if declared is Any or returned is Any or returned == declared or returned in _NEVER:
        return True
    if declared is None:
        declared = type(None)
    if returned is None:
        returned = type(None)
    if isinstance(returned, type) and isinstance(declared, type):
        return issubclass(returned, declared)
    if _is_union(returned):
        return all(_compatible(r, declared) for r in typing.get_args(returned))
    origin = typing.get_origin(declared)
    if _is_union(declared):
        return any(_compatible(returned, d) for d in typing.get_args(declared))
    if typing.get_origin(returned) is not None and origin is not None:
        return _compatible(typing.get_origin(returned), origin)
    return False


def compile_call(
    target: Any, method: str, lifetime: Lifetime, build: Build, message_type: type, kind: Kind | None
) -> Invoker | None:
    """Compile calling ``target`` (a class with ``method`` or a function) for one message."""
    compiler = build.compiler
    if isinstance(target, type):
        func = getattr(target, method, None)
        label = f"{qualname(target)}.{method}"
        if not callable(func):
            build.problem(f"{qualname(target)} has no {method}() method; add one or register a function.")
            return None
        if kind is not None:
            _check_signature(func, 1, message_type, kind, build, label)
        compiler.register_concrete(target, lifetime)
        provider = compiler.provider(target, target)
        if provider is None:
            return None
        return Invoker(_instance_call(func, provider), provider.needs_scope or provider.dispatches,
                       _is_async(func), _describe(target, provider), _inline_instance_call(func, provider))
    if callable(target):
        label = qualname(target)
        if kind is not None:
            _check_signature(target, 0, message_type, kind, build, label)
        deps = compiler.callable_dependencies(target, skip=1)
        if deps is None:
            return None
        call, needs_scope = _function_call(target, deps)
        names = ", ".join(d.describe() for d in deps.values())
        dispatches = any(d.dispatches for d in deps.values())
        return Invoker(call, needs_scope or dispatches, _is_async(target), f"{label}({names})" if names else label,
                       _inline_function_call(target, deps))
    build.problem(f"{target!r} is neither a class with {method}() nor a function.")
    return None


def _describe(target: type, provider: Provider) -> str:
    deps = ", ".join(d.describe() for d in provider.deps)
    return f"{qualname(target)} ({provider.lifetime.value})" + (f" <- {deps}" if deps else "")


def _is_async(func: Any) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)


Fresh = dict[Any, tuple[str, type]]
"""Dependencies an entry opening a new scope makes itself (see :func:`~mediator._di.arguments`)."""


def _instance_call(func: Callable[[Any, Any], Any], provider: Provider) -> Callable[[Any], Any]:
    """Compile calling ``func(instance, message)`` with the instance the provider gives."""
    if provider.make is None:
        return typing.cast(Callable[[Any], Any], func.__get__(provider.value))
    if provider.lifetime is Lifetime.TRANSIENT and provider.builder is not None:
        # Build the handler inline: one generated frame instead of a factory call per dispatch.
        namespace, expression, needs_scope = _transient_source(func, provider)
        lines = [SCOPE_LINE] if needs_scope else []
        lines.append(f"return {expression}")
    else:
        namespace = _codegen.Namespace(handle=func, current=_context._current)
        make = namespace.add("make", provider.make)
        lines = [SCOPE_LINE, f"return handle({make}(scope), message)"] if provider.needs_scope else [
            f"return handle({make}(), message)"]
    return typing.cast(Callable[[Any], Any], _codegen.function(
        "call", ["message"], lines, namespace, about=qualname(provider.service)))


def _transient_source(func: Callable[[Any, Any], Any], provider: Provider,
                      fresh: Fresh | None = None) -> tuple[_codegen.Namespace, str, bool]:
    """``func(builder(deps...), message)`` for a transient handler class, as an expression: with the namespace it
    reads, and whether it reads ``scope``."""
    namespace = _codegen.Namespace(handle=func, current=_context._current)
    build = namespace.add(getattr(provider.builder, "__name__", "builder"), provider.builder)
    args, needs_scope = arguments(provider.dep_names, namespace, positional_names(provider.builder, 0),
                                  provider.given, fresh=fresh)
    return namespace, f"handle({build}({args}), message)", needs_scope


def _function_call(func: Callable[..., Any], deps: dict[str, Provider]) -> tuple[Callable[[Any], Any], bool]:
    """Compile calling a handler function with the message and its dependencies."""
    if not deps:
        return func, False
    namespace, expression, needs_scope = _function_source(func, deps)
    lines = [SCOPE_LINE] if needs_scope else []
    lines.append(f"return {expression}")
    return _codegen.function("call", ["message"], lines, namespace, about=qualname(func)), needs_scope


def _function_source(func: Callable[..., Any], deps: dict[str, Provider],
                     fresh: Fresh | None = None) -> tuple[_codegen.Namespace, str, bool]:
    """``func(message, deps...)`` as an expression: with the namespace it reads, and whether it reads ``scope``."""
    namespace = _codegen.Namespace(current=_context._current)
    handler = namespace.add(getattr(func, "__name__", "handler"), func)
    args, needs_scope = arguments(deps, namespace, positional_names(func, 1), fresh=fresh)
    return namespace, f"{handler}(message, {args})", needs_scope


def _inline_function_call(func: Callable[..., Any], deps: dict[str, Provider]) -> InlineCall | None:
    """:func:`_function_call` as an :class:`InlineCall`, when some dependency is worth making inline."""
    if not any(fresh_builder(d) is not None for d in deps.values()):
        return None
    fresh: Fresh = {}
    namespace, expression, _ = _function_source(func, deps, fresh)
    return InlineCall(namespace, expression, fresh)


def _inline_instance_call(func: Callable[[Any, Any], Any], provider: Provider) -> InlineCall | None:
    """:func:`_instance_call` as an :class:`InlineCall`, for a transient handler class with such dependencies."""
    if not (provider.lifetime is Lifetime.TRANSIENT and provider.builder is not None
            and any(fresh_builder(d) is not None for d in provider.deps)):
        return None
    fresh: Fresh = {}
    namespace, expression, _ = _transient_source(func, provider, fresh)
    return InlineCall(namespace, expression, fresh)
