"""Build-time compilation of punq registrations into plain factories.

punq's ``Container.resolve`` inspects signatures on every call. Here it is used
only as the registry of what implements what and, once, to make singletons;
everything a dispatch needs is compiled at build into a ``Provider`` whose
factory is a ``functools.partial`` or a small closure over other providers.
"""

from __future__ import annotations

import enum
import inspect
import itertools
import linecache
import types
import typing
from collections.abc import Callable
from typing import Any

import attrs
import punq

from ._context import _MISSING, DispatchContext, Scope, _current
from ._errors import ScopeError
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
    """Arguments fixed at registration (punq's ``**kwargs``)."""

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


_CONTEXT_PROVIDER = Provider(DispatchContext, Lifetime.SCOPED, _context_from_scope, needs_scope=True)


class UnresolvedAnnotations(Exception):
    """The annotations of a handler or builder name something that cannot be imported."""

    def __init__(self, func: Any, error: Exception) -> None:
        self.func = func
        self.error = error
        super().__init__(
            f"The annotations of {qualname(func)} cannot be resolved ({type(error).__name__}: {error}); "
            "define or import the names they use at module level."
        )


def type_hints(func: Any, localns: dict[str, Any] | None = None) -> dict[str, Any]:
    """Resolve ``func``'s annotations, raising :class:`UnresolvedAnnotations` with a readable reason."""
    try:
        return typing.get_type_hints(func, localns=localns)
    except Exception as exc:
        raise UnresolvedAnnotations(func, exc) from exc


def _stub() -> None:
    pass


def parameters_needed(func: Callable[..., Any], skip: int) -> list[tuple[str, Any, bool]]:
    """List ``(name, annotation, has_default)`` of ``func``'s parameters after the first ``skip``.

    Only these parameters' annotations are resolved, so a handler whose message
    or return annotation names a class local to a function still works.
    """
    params = [
        p for i, p in enumerate(inspect.signature(func).parameters.values())
        if i >= skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    wanted = {p.name: p.annotation for p in params if p.annotation is not p.empty}
    hints: dict[str, Any] = {}
    if wanted:
        target = getattr(func, "__func__", func)
        view = types.FunctionType(_stub.__code__, getattr(target, "__globals__", {}))
        view.__annotations__ = wanted
        try:
            hints = typing.get_type_hints(view)
        except Exception as exc:
            raise UnresolvedAnnotations(func, exc) from exc
    return [(p.name, hints.get(p.name, p.annotation), p.default is not p.empty) for p in params]


class Compiler:
    """Turns the container's registrations into providers, once, reporting problems."""

    def __init__(self, container: punq.Container, lifetimes: dict[Any, Lifetime]) -> None:
        self.container = container
        self.lifetimes = lifetimes
        self.problems: list[str] = []
        self._providers: dict[Any, Provider] = {DispatchContext: _CONTEXT_PROVIDER}
        self._building: list[Any] = []

    def add_mediator(self, service: Any, value: Any) -> None:
        """Provide the mediator being built to whoever depends on ``service``."""
        self._providers[service] = Provider(service, Lifetime.SINGLETON, None, value, dispatches=True)

    def is_registered(self, service: Any) -> bool:
        return service in self._providers or bool(registrations_of(self.container, service))

    def register_concrete(self, cls: type, lifetime: Lifetime) -> bool:
        """Let the container build ``cls`` itself, unless it already knows how; ``False`` on a problem."""
        if self.is_registered(cls):
            return True
        scope = punq.Scope.singleton if lifetime is Lifetime.SINGLETON else punq.Scope.transient
        try:
            self.container.register(cls, scope=scope)
        except punq.InvalidForwardReferenceError as exc:
            self.problems.append(str(UnresolvedAnnotations(cls, exc)))
            return False
        self.lifetimes[cls] = lifetime
        return True

    def provider(self, service: Any, needed_by: Any) -> Provider | None:
        """Compile the provider of a registered service, or record a problem and return ``None``."""
        if service in self._providers:
            return self._providers[service]
        registrations = registrations_of(self.container, service)
        if not registrations:
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
            provider = self._compile(service, registrations[-1])
        finally:
            self._building.pop()
        if provider is not None:
            self._providers[service] = provider
        return provider

    def _compile(self, service: Any, registration: Any) -> Provider | None:
        lifetime = self.lifetimes.get(service)
        if lifetime is None:
            lifetime = Lifetime.SINGLETON if registration.scope == punq.Scope.singleton else Lifetime.TRANSIENT
        builder = registration.builder
        deps = self.dependencies(builder, registration.needs, registration.args, service)
        if deps is None:
            return None
        dispatches = any(d.dispatches for d in deps.values())
        common = {"dep_names": deps, "dispatches": dispatches, "builder": builder, "given": registration.args}
        if lifetime is Lifetime.SINGLETON:
            bad = [d for d in deps.values() if d.lifetime is Lifetime.SCOPED or d.needs_scope]
            if bad:
                self.problems.append(
                    f"Singleton {qualname(service)} depends on {bad[0].describe()}, which is or needs a scoped "
                    "service that would outlive its scope; make the singleton scoped or transient."
                )
                return None
            try:
                value = builder(**registration.args, **{n: p.get(None) for n, p in deps.items()})
            except Exception as exc:
                self.problems.append(f"Building singleton {qualname(service)} failed: {exc!r}.")
                return None
            return Provider(service, lifetime, None, value, **common)
        make, needs_scope = factory(builder, registration.args, deps)
        if lifetime is Lifetime.SCOPED:
            return Provider(service, lifetime, _scoped(service, make, needs_scope), needs_scope=True, **common)
        return Provider(service, lifetime, make, needs_scope=needs_scope, **common)

    def dependencies(
        self, builder: Any, needs: dict[str, Any], given: dict[str, Any], needed_by: Any
    ) -> dict[str, Provider] | None:
        """Compile providers for a builder's needs; ``None`` if any is missing."""
        defaults = _defaults(builder)
        deps: dict[str, Provider] = {}
        ok = True
        for name, service in needs.items():
            if name == "return" or name in given:
                continue
            if name in defaults and not self.is_registered(service):
                continue
            provider = self.provider(service, needed_by)
            if provider is None:
                ok = False
            else:
                deps[name] = provider
        return deps if ok else None

    def callable_dependencies(self, func: Callable[..., Any], skip: int) -> dict[str, Provider] | None:
        """Compile providers for a handler function's parameters after the message."""
        deps: dict[str, Provider] = {}
        ok = True
        try:
            needed = parameters_needed(func, skip)
        except UnresolvedAnnotations as exc:
            self.problems.append(str(exc))
            return None
        for name, annotation, has_default in needed:
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
            provider = self.provider(annotation, func)
            if provider is None:
                ok = False
            else:
                deps[name] = provider
        return deps if ok else None


def registrations_of(container: punq.Container, service: Any) -> list[Any]:
    """Return punq's registrations for ``service``, newest last (punq resolves the newest).

    punq keeps them in a name-mangled attribute and offers no public accessor;
    reading them once at build is what lets dispatch skip ``resolve`` entirely.
    """
    scope: Any = getattr(container.registrations, "_Registry__registrations")  # noqa: B009
    return list(scope.get(service))


def _defaults(builder: Any) -> set[str]:
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.default is not p.empty}


def _short(service: Any) -> str:
    return getattr(service, "__name__", repr(service))


_generated = itertools.count()


def generate(
    name: str, params: str, lines: list[str], namespace: dict[str, Any], about: Any, prefix: str = ""
) -> Any:
    """Compile a small function from source, once, at build (as attrs does for ``__init__``).

    The source is registered with ``linecache`` so tracebacks through it stay readable.
    """
    filename = f"<mediator {name} for {qualname(about)} #{next(_generated)}>"
    source = f"{prefix}def {name}({params}):\n" + "".join(f"    {line}\n" for line in lines)
    exec(compile(source, filename, "exec"), namespace)  # build-time code generation
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    return namespace[name]


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


def arguments(
    given: dict[str, Any], deps: dict[str, Provider], namespace: dict[str, Any], order: list[str] | None = None
) -> tuple[str, bool]:
    """Render the call arguments for ``given`` and ``deps``; say whether any needs the scope variable.

    When the names are exactly the leading parameters in ``order``, they are
    passed by position (cheaper to call); otherwise by keyword.
    """
    expressions: dict[str, str] = {}
    needs_scope = False
    for name, value in given.items():
        key = f"_given_{len(namespace)}"
        namespace[key] = value
        expressions[name] = key
    for name, dep in deps.items():
        key = f"_dep_{len(namespace)}"
        if dep.make is None:
            namespace[key] = dep.value
            expressions[name] = key
        else:
            namespace[key] = dep.make
            expressions[name] = f"{key}(scope)" if dep.needs_scope else f"{key}()"
            needs_scope = needs_scope or dep.needs_scope
    if order is not None and sorted(expressions) == sorted(order[: len(expressions)]):
        return ", ".join(expressions[name] for name in order[: len(expressions)]), needs_scope
    return ", ".join(f"{name}={expr}" for name, expr in expressions.items()), needs_scope


def generate_async(name: str, params: str, lines: list[str], namespace: dict[str, Any], about: Any) -> Any:
    """Like :func:`generate`, for an ``async def``."""
    return generate(name, params, lines, namespace, about, prefix="async ")


SCOPE_LINE = "scope = _current.get().scope"


def factory(
    builder: Callable[..., Any], given: dict[str, Any], deps: dict[str, Provider]
) -> tuple[Callable[..., Any], bool]:
    """Compile ``builder(**given, **deps)`` into ``make()`` or, if a dep needs one, ``make(scope)``."""
    namespace: dict[str, Any] = {"_builder": builder}
    args, needs_scope = arguments(given, deps, namespace, positional_names(builder, 0))
    if not args:
        return builder, False
    make = generate("make", "scope" if needs_scope else "", [f"return _builder({args})"], namespace, builder)
    return make, needs_scope


def _scoped(service: Any, make: Callable[..., Any], needs_scope: bool) -> Callable[[Scope], Any]:
    """Compile ``get(scope)``: the scope's instance of ``service``, made on first use."""

    def create_unscoped(_scope: Scope) -> Any:
        return make()

    namespace = {"_key": service, "_create": make if needs_scope else create_unscoped, "_missing": _MISSING}
    lines = [
        "instance = scope._instances.get(_key, _missing)",
        "return scope.create(_key, _create) if instance is _missing else instance",
    ]
    return typing.cast(Callable[[Scope], Any], generate("get", "scope", lines, namespace, service))
