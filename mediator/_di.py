"""Dependencies compiled into plain factories at build, from the registry's own records.

The registry records every service it is given (a :class:`Service`: what provides it and for how long) and
also registers it in its punq container, so code that resolves from that container keeps working. At build,
each service a handler or behaviour needs becomes a :class:`Provider` whose factory is generated source that
calls the builders directly: a dispatch never inspects a signature or asks punq for anything.

Services registered directly on a punq container passed to ``Registry(container)``, not through the registry,
are punq's: they are resolved once at build (to report one that cannot be) and through ``container.resolve``
on each use, with punq's own lifetimes.
"""

from __future__ import annotations

import enum
import inspect
import sys
import threading
import types
import typing
from collections.abc import Callable
from typing import Any

import attrs
import punq

from . import _codegen, _context
from ._context import _MISSING, DispatchContext, Scope, _current
from ._errors import ScopeError, UnresolvedAnnotationsError
from ._messages import qualname


class Lifetime(enum.Enum):
    """How long an instance made by the container lives."""

    SINGLETON = "singleton"
    """One instance for the built mediator, made at build."""
    TRANSIENT = "transient"
    """A new instance every time one is needed, e.g. per dispatch."""
    SCOPED = "scoped"
    """One instance per dispatch scope, shared by nested dispatches, closed when the scope ends."""

    def __repr__(self) -> str:
        return f"Lifetime.{self.name}"


@attrs.frozen
class Service:
    """One service as registered: made by ``builder`` (a class or a factory) with ``lifetime``, or given."""

    key: Any
    lifetime: Lifetime
    builder: Callable[..., Any] | None = None
    instance: Any = None
    """The instance itself, for a service registered with one (``builder`` is then ``None``)."""
    given: dict[str, Any] = attrs.field(factory=dict)
    """Arguments fixed at registration (punq's ``**kwargs``, for services registered on punq directly)."""


@attrs.frozen
class Provider:
    """How to get one service during a dispatch, decided at build.

    Exactly one of the three shapes holds: ``value`` for singletons (``make`` is
    ``None``); ``make()`` when ``needs_scope`` is false; ``make(scope)`` when it is true.
    """

    service: Any
    lifetime: Lifetime
    make: Callable[..., Any] | None
    value: Any = None
    needs_scope: bool = False
    dep_names: dict[str, Provider] = attrs.field(factory=dict)
    """The builder's dependencies by parameter name, in order."""
    dispatches: bool = False
    """Whether the service is, or depends on, the mediator: whoever uses it may dispatch nested
    messages, which must join the caller's scope, so the caller's chain opens one."""
    builder: Callable[..., Any] | None = None
    given: dict[str, Any] = attrs.field(factory=dict)

    @property
    def deps(self) -> tuple[Provider, ...]:
        return tuple(self.dep_names.values())

    def get(self, scope: Scope | None) -> Any:
        """Produce the instance (slow path, for build-time use and rare calls)."""
        if self.make is None:
            return self.value
        return self.make(scope) if self.needs_scope else self.make()

    def describe(self) -> str:
        """Name the service with its lifetime, e.g. ``app.OrderRepo (scoped)``."""
        return f"{qualname(self.service)} ({self.lifetime.value})"


def _context_from_scope(scope: Scope) -> DispatchContext:
    ctx = _current.get()
    if ctx is None or ctx.scope is not scope:
        raise ScopeError(
            "DispatchContext was requested outside the dispatch that owns this scope; it exists only while "
            "a dispatch runs, so resolve it inside a handler or behaviour."
        )
    return ctx


def _scope_itself(scope: Scope) -> Scope:
    return scope


_CONTEXT_PROVIDER = Provider(DispatchContext, Lifetime.SCOPED, _context_from_scope, needs_scope=True)
_SCOPE_PROVIDER = Provider(Scope, Lifetime.SCOPED, _scope_itself, needs_scope=True)


def type_hints(func: Any, localns: dict[str, Any] | None = None) -> dict[str, Any]:
    """Resolve ``func``'s annotations, raising :class:`UnresolvedAnnotationsError` with a readable reason."""
    try:
        return typing.get_type_hints(func, localns=localns)
    except Exception as exc:
        raise UnresolvedAnnotationsError(func, exc) from exc


def _stub() -> None:
    pass


def _globals_of(func: Any) -> dict[str, Any]:
    """The namespace ``func``'s annotations are written in: its module's, for a class its constructor's module
    (a public class may name its package as ``__module__``, not the private module that defines it)."""
    target = getattr(func, "__func__", func)
    if isinstance(target, type):
        init = getattr(target, "__init__", None)
        defined_in = getattr(init, "__globals__", {}).get("__name__") if isinstance(init, types.FunctionType) else None
        module = sys.modules.get(defined_in or target.__module__)
        return dict(vars(module)) if module is not None else {}
    return dict(getattr(target, "__globals__", {}))


def parameters_needed(func: Callable[..., Any], skip: int) -> list[tuple[str, Any, bool]]:
    """List ``(name, annotation, has_default)`` of ``func``'s parameters after the first ``skip``.

    ``func`` may be a class, for its constructor's parameters. Only these parameters' annotations are
    resolved, so a handler whose message or return annotation names a class local to a function still works.
    """
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # a builtin with no signature: it takes nothing we could give
        return []
    params = [
        p for i, p in enumerate(signature.parameters.values())
        if i >= skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    wanted = {p.name: p.annotation for p in params if p.annotation is not p.empty}
    hints: dict[str, Any] = {}
    if wanted:
        namespace = _globals_of(func)
        view = types.FunctionType(_stub.__code__, namespace)
        view.__annotations__ = wanted
        try:
            hints = typing.get_type_hints(view)
        except Exception as exc:
            raise UnresolvedAnnotationsError(func, exc) from exc
    return [(p.name, hints.get(p.name, p.annotation), p.default is not p.empty) for p in params]


class Compiler:
    """Turns the registry's services into providers, once, reporting problems instead of raising."""

    def __init__(self, services: dict[Any, Service], container: punq.Container) -> None:
        self.services = services
        self.container = container
        self.problems: list[str] = []
        self._providers: dict[Any, Provider] = {DispatchContext: _CONTEXT_PROVIDER, Scope: _SCOPE_PROVIDER}
        self._foreign: dict[Any, Service | None] = {}
        self._building: list[Any] = []

    def check_annotations(self) -> None:
        """Report every registered service whose builder's annotations do not resolve, used or not."""
        for record in list(self.services.values()):
            if record.builder is not None:
                try:
                    parameters_needed(record.builder, 0)
                except UnresolvedAnnotationsError as exc:
                    self.problems.append(str(exc))

    def add_mediator(self, service: Any, value: Any) -> None:
        """Provide the mediator being built to whoever depends on ``service``."""
        self._providers[service] = Provider(service, Lifetime.SINGLETON, None, value, dispatches=True)

    def is_registered(self, service: Any) -> bool:
        return service in self._providers or self._record(service) is not None

    def register_concrete(self, cls: type, lifetime: Lifetime) -> None:
        """Record ``cls`` as built by itself with ``lifetime``, unless something provides it already."""
        if not self.is_registered(cls):
            self.services[cls] = Service(cls, lifetime, cls)

    def provider(self, service: Any, needed_by: Any) -> Provider | None:
        """Compile the provider of a registered service, or record a problem and return ``None``."""
        if service in self._providers:
            return self._providers[service]
        record = self._record(service)
        if record is None:
            self.problems.append(
                f"{qualname(needed_by)} needs {qualname(service)}, which is not registered; "
                f"register it with registry.singleton/transient/scoped({_short(service)}, ...)."
            )
            return None
        if service in self._building:
            cycle = " -> ".join(qualname(s) for s in [*self._building, service])
            self.problems.append(f"Dependency cycle: {cycle}; break it with a factory or a lazy lookup.")
            return None
        self._building.append(service)
        try:
            provider = self._compile(record)
        finally:
            self._building.pop()
        if provider is not None:
            self._providers[service] = provider
        return provider

    def _record(self, service: Any) -> Service | None:
        """The registry's record of ``service``, or one made from the punq container's own registration of it."""
        record = self.services.get(service)
        if record is None and service not in self._foreign:
            self._foreign[service] = punq_registration(self.container, service)
        return record if record is not None else self._foreign[service]

    def _compile(self, record: Service) -> Provider | None:
        service, lifetime, builder = record.key, record.lifetime, record.builder
        if builder is None:
            return Provider(service, Lifetime.SINGLETON, None, record.instance)
        deps = self.dependencies(builder, service, record.given)
        if deps is None:
            return None
        dispatches = any(d.dispatches for d in deps.values())
        common: dict[str, Any] = {"dep_names": deps, "dispatches": dispatches, "builder": builder,
                                  "given": record.given}
        if lifetime is Lifetime.SINGLETON:
            bad = [d for d in deps.values() if d.lifetime is Lifetime.SCOPED or d.needs_scope]
            if bad:
                self.problems.append(
                    f"Singleton {qualname(service)} depends on {bad[0].describe()}, which is or needs a scoped "
                    "service that would outlive its scope; make the singleton scoped or transient."
                )
                return None
            try:
                value = builder(**record.given, **{n: p.get(None) for n, p in deps.items()})
            except Exception as exc:
                self.problems.append(f"Building singleton {qualname(service)} failed: {exc!r}.")
                return None
            return Provider(service, lifetime, None, value, **common)
        make, needs_scope = factory(builder, deps, record.given)
        if lifetime is Lifetime.SCOPED:
            return Provider(service, lifetime, _scoped(service, builder, make, needs_scope), needs_scope=True, **common)
        return Provider(service, lifetime, make, needs_scope=needs_scope, **common)

    def dependencies(self, builder: Callable[..., Any], needed_by: Any,
                     given: dict[str, Any] | None = None) -> dict[str, Provider] | None:
        """Compile providers for a service builder's parameters (a class's constructor's, or a factory's),
        but those ``given`` at registration."""
        return self._needs(builder, 0, needed_by, given or {})

    def callable_dependencies(self, func: Callable[..., Any], skip: int) -> dict[str, Provider] | None:
        """Compile providers for a handler function's parameters after the message."""
        return self._needs(func, skip, func, {})

    def _needs(self, func: Callable[..., Any], skip: int, needed_by: Any,
               given: dict[str, Any]) -> dict[str, Provider] | None:
        deps: dict[str, Provider] = {}
        ok = True
        try:
            needed = parameters_needed(func, skip)
        except UnresolvedAnnotationsError as exc:
            self.problems.append(str(exc))
            return None
        for name, annotation, has_default in needed:
            if name in given:
                continue
            if annotation is inspect.Parameter.empty:
                if has_default:
                    continue
                self.problems.append(
                    f"{qualname(func)} parameter {name!r} has no type annotation, so its dependency "
                    "cannot be found; annotate it with the service type."
                )
                ok = False
                continue
            if has_default and not self.is_registered(annotation):
                continue
            provider = self.provider(annotation, needed_by)
            if provider is None:
                ok = False
            else:
                deps[name] = provider
        return deps if ok else None


def _short(service: Any) -> str:
    return getattr(service, "__name__", repr(service))


def positional_names(func: Any, skip: int) -> list[str]:
    """The names of ``func``'s leading parameters that can be passed by position, after ``skip``."""
    try:
        params = list(inspect.signature(func).parameters.values())[skip:]
    except (TypeError, ValueError):
        return []
    names = []
    for param in params:
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            break
        names.append(param.name)
    return names


def fresh_builder(provider: Provider) -> type | None:
    """The class to make ``provider``'s instance with, when a new scope can make it inline: ``None`` if not.

    That is a scoped context-manager class with no dependencies: made, entered and registered for its exit, with
    nothing to look up or resolve first.
    """
    builder = provider.builder
    if (provider.lifetime is Lifetime.SCOPED and isinstance(builder, type) and not provider.dep_names
            and not provider.given and _context.exit_of(builder) is _context._EXIT):
        return builder
    return None


def arguments(deps: dict[str, Provider], namespace: _codegen.Namespace, order: list[str] | None = None,
              given: dict[str, Any] | None = None,
              fresh: dict[Any, tuple[str, type]] | None = None) -> tuple[str, bool]:
    """Render the call arguments for ``deps``; say whether any needs the ``scope`` variable.

    Each dependency is named in ``namespace`` after its parameter (its value for a singleton, ``make_<name>``
    for a factory). When the names are exactly the leading parameters in ``order``, they are passed by
    position (cheaper to call); otherwise by keyword.

    With ``fresh`` (for code that runs first thing in a scope it has just opened), a dependency that
    :func:`fresh_builder` can make is rendered as a local variable instead (``_fresh_<n>``: a name
    :class:`~mediator._codegen.Namespace` never hands out), recorded in ``fresh`` as its service key -> (local,
    class); the caller makes it.
    """
    expressions: dict[str, str] = {name: namespace.add(name, value) for name, value in (given or {}).items()}
    needs_scope = False
    for name, dep in deps.items():
        if fresh is not None and (builder := fresh_builder(dep)) is not None:
            expressions[name] = fresh.setdefault(dep.service, (f"_fresh_{len(fresh) + 1}", builder))[0]
            needs_scope = True
        elif dep.make is None:
            expressions[name] = namespace.add(name, dep.value)
        else:
            maker = namespace.add(f"make_{name}", dep.make)
            expressions[name] = f"{maker}(scope)" if dep.needs_scope else f"{maker}()"
            needs_scope = needs_scope or dep.needs_scope
    if order is not None and sorted(expressions) == sorted(order[: len(expressions)]):
        return ", ".join(expressions[name] for name in order[: len(expressions)]), needs_scope
    return ", ".join(f"{name}={expr}" for name, expr in expressions.items()), needs_scope


SCOPE_LINE = "scope = current.get().scope"
"""The generated line that gets the dispatch's scope (``current`` must be in the namespace)."""


def factory(builder: Callable[..., Any], deps: dict[str, Provider],
            given: dict[str, Any] | None = None) -> tuple[Callable[..., Any], bool]:
    """Compile ``builder(**given, **deps)`` into ``make()`` or, if a dep needs one, ``make(scope)``."""
    namespace = _codegen.Namespace()
    args, needs_scope = arguments(deps, namespace, positional_names(builder, 0), given)
    if not args:
        return builder, False
    build = namespace.add(_short(builder), builder)
    make = _codegen.function("make", ["scope"] if needs_scope else [], [f"return {build}({args})"], namespace,
                             about=qualname(builder))
    return make, needs_scope


def _scoped(service: Any, builder: Any, make: Callable[..., Any], needs_scope: bool) -> Callable[[Scope], Any]:
    """Compile ``get(scope)``: the scope's instance of ``service``, made on first use.

    A class that is a context manager (the common scoped service: a session, a unit of work) is made, entered and
    registered for its exit right here; anything else, and any thread that finds another making the same
    instance, goes through ``Scope._make``.
    """
    namespace = _codegen.Namespace(key=service, make=make, missing=_MISSING)
    lines = ["instances = scope._instances", "instance = instances.get(key, missing)"]
    if not (isinstance(builder, type) and _context.exit_of(builder) is _context._EXIT):
        lines.append(f"return scope._make(key, make, {needs_scope}) if instance is missing else instance")
        return typing.cast(Callable[[Scope], Any],
                           _codegen.function("get", ["scope"], lines, namespace, about=qualname(service)))
    namespace.update(claims=_context._CLAIMS, get_ident=threading.get_ident, waiting=_context._waiting,
                     wake=_context.wake_waiters, EXIT=_context._EXIT)
    lines += [
        "if instance is not missing:",
        "    return instance",
        "claim = (id(scope), key)",
        "me = get_ident()",
        "if scope._closed or claims.setdefault(claim, me) != me:",
        f"    return scope._make(key, make, {needs_scope})  # closed (it raises), or another thread is making it",
        "try:",
        f"    made = make({'scope' if needs_scope else ''})",
        "    instance = made.__enter__()",
        "    if instance is None:",
        "        instance = made",
        "    scope._exits.append((EXIT, made.__exit__))",
        "    instances[key] = instance",
        "    return instance",
        "finally:",
        "    del claims[claim]",
        "    if waiting[0]:",
        "        wake()",
    ]
    return typing.cast(Callable[[Scope], Any],
                       _codegen.function("get", ["scope"], lines, namespace, about=qualname(service)))


def punq_registration(container: punq.Container, service: Any) -> Service | None:
    """The newest registration of ``service`` made on ``container`` directly, as a :class:`Service` record.

    punq offers no public accessor for its registrations; this one reads them from the name-mangled table of
    the punq versions the project pins (``punq>=0.7,<0.10``), once, at build, and a test fails on a punq that
    changed it. Such a service is compiled like the registry's own: its dependencies come from the same
    providers (so a singleton is shared and a scoped service is the scope's), never from punq at dispatch.
    """
    table: Any = getattr(container.registrations, "_Registry__registrations", None)
    found = [] if table is None else list(table.get(service))
    if not found:
        return None
    newest = found[-1]  # an instance registered on punq is a singleton whose builder returns it
    lifetime = Lifetime.SINGLETON if newest.scope == punq.Scope.singleton else Lifetime.TRANSIENT
    return Service(service, lifetime, newest.builder, given=dict(newest.args))
