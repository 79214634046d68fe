"""Turning a registry's records into a mediator's routes: check everything, compile every chain, once.

The same code builds both twins; ``is_async`` picks only the leaf adapters
(which behaviour method to call, how a sync handler joins an async chain, which
scope wrapper closes the scope).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs

from . import _codegen, _pipeline
from ._behaviours import ExceptionHooks, Validation
from ._compile import Build, compile_call, type_name
from ._di import Compiler, Lifetime
from ._errors import HandlerNotFoundError, WiringError
from ._live import ChangeFeed
from ._messages import BASES, Kind, declared_result, kind_of, qualname
from ._notify import ASYNC_RUNNERS, SYNC_RUNNERS, PublishStrategy
from ._records import AppliesTo, BehaviourRegistration, HandlerRegistration, Registrations, applies


class Routed(Protocol):
    """What a mediator is to the build: something to install the compiled routes into."""

    def _install(self, routes: Routes, /) -> None: ...


@attrs.frozen
class Step:
    """One behaviour as compiled into one message type's chain."""

    name: str
    lifetime: Lifetime
    needs_scope: bool
    compose: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]


@attrs.frozen
class Explanation:
    """A readable account of what one message type's dispatch runs, in order."""

    message_type: type
    kind: Kind
    result: Any
    behaviours: tuple[str, ...]
    handlers: tuple[str, ...]
    opens_scope: bool

    def __str__(self) -> str:
        result = "" if self.kind is Kind.EVENT else f" -> {type_name(self.result)}"
        lines = [f"{qualname(self.message_type)} ({self.kind.value}){result}"]
        lines += [f"  {i}. {b}" for i, b in enumerate(self.behaviours, 1)]
        label = "handler" if self.kind is not Kind.EVENT else "handlers"
        lines += [f"  {label}: {h}" for h in self.handlers] or [f"  {label}: none"]
        lines.append("  scope: " + ("opened per dispatch (or joined)" if self.opens_scope else "none needed"))
        return "\n".join(lines)


def _behaviour_method(obj: Any, kind: Kind, is_async: bool) -> tuple[str | None, str | None]:
    """Pick the method a behaviour runs for this kind and flavour, or explain why none fits."""
    if kind is Kind.STREAM:
        return ("handle_stream", None) if callable(getattr(obj, "handle_stream", None)) else (None, None)
    if is_async:
        if callable(getattr(obj, "handle_async", None)):
            return "handle_async", None
        if inspect.iscoroutinefunction(getattr(obj, "handle", None)):
            return "handle", None
        return None, "has no async handle_async() (nor an async handle()) for the async mediator"
    handle = getattr(obj, "handle", None)
    if not callable(handle):
        return None, "has no handle(message, next) method"
    if inspect.iscoroutinefunction(handle):
        return None, "has an async handle(); the sync mediator needs a sync one (use build_async())"
    return "handle", None


def _takes_message_and_next(method: Callable[..., Any], extra: int = 0) -> bool:
    """Whether ``method`` can be called with (message, next), after ``extra`` leading arguments (self)."""
    try:
        inspect.signature(method).bind(*[object()] * (2 + extra))
    except TypeError:
        return False
    except ValueError:
        return True
    return True


def compile_steps(registrations: list[BehaviourRegistration], message_type: type, kind: Kind,
                  build: Build) -> list[Step]:
    """Select, specialise and compile the behaviours that apply to ``message_type``."""
    steps = []
    for reg in registrations:
        if applies(reg.applies_to, message_type):
            step = _compile_step(reg, message_type, kind, build)
            if step is not None:
                steps.append(step)
    return steps


def _reach(applies_to: AppliesTo) -> list[tuple[Kind, type]]:
    """Each kind a behaviour registered with ``applies_to`` can run for, with a message class to specialise it to."""
    targets = applies_to if isinstance(applies_to, tuple) else (applies_to,)
    reach: list[tuple[Kind, type]] = []
    for target in targets:
        kind = target if isinstance(target, Kind) else kind_of(target)
        if kind is None:  # everything, Message itself, or a mixin that messages of any kind may share
            reach += BASES.items()
        else:
            reach.append((kind, target if isinstance(target, type) else BASES[kind]))
    return list(dict.fromkeys(reach))


def check_behaviours(registrations: list[BehaviourRegistration], build: Build) -> None:
    """Compile every behaviour for every kind it applies to, whether or not a message of that kind is handled.

    Chains are compiled only for handled message types, and an event class the
    build did not see only on its first publish; this check makes the build, not
    that publish, report a behaviour of the wrong shape.
    """
    for reg in registrations:
        for kind, message_type in _reach(reg.applies_to):
            _compile_step(reg, message_type, kind, build)


def _compile_step(reg: BehaviourRegistration, message_type: type, kind: Kind, build: Build) -> Step | None:
    behaviour = reg.behaviour
    name = qualname(behaviour if isinstance(behaviour, type) else type(behaviour))
    # A behaviour that matches "everything" simply sits out the kinds it has no method for.
    strict = reg.applies_to is not None
    if isinstance(behaviour, type) and reg.lifetime is not Lifetime.SINGLETON:
        return _per_dispatch_step(reg, name, kind, build, strict)
    if isinstance(behaviour, type):
        build.compiler.register_concrete(behaviour, Lifetime.SINGLETON)
        behaviour = build.resolve(behaviour, behaviour)
        if behaviour is None:
            return None
    specialise = getattr(behaviour, "for_message", None)
    if specialise is not None:
        behaviour = specialise(message_type, build)
        if behaviour is None:
            return None
    method, why = _behaviour_method(behaviour, kind, build.is_async)
    if method is None:
        if why and (strict or kind is not Kind.STREAM):
            build.problem(f"Behaviour {name} {why}.")
        return None
    bound = getattr(behaviour, method)
    if not _takes_message_and_next(bound):
        build.problem(f"Behaviour {name}.{method} must accept (message, next); fix its signature.")
        return None
    return Step(name, Lifetime.SINGLETON, bool(getattr(behaviour, "needs_scope", False)),
                functools.partial(_pipeline.link, bound))


def _per_dispatch_step(reg: BehaviourRegistration, name: str, kind: Kind, build: Build, strict: bool) -> Step | None:
    behaviour = reg.behaviour
    method, why = _behaviour_method(behaviour, kind, build.is_async)
    if method is None:
        if why and (strict or kind is not Kind.STREAM):
            build.problem(f"Behaviour {name} {why}.")
        return None
    func = getattr(behaviour, method)
    if not _takes_message_and_next(func, extra=1):
        build.problem(f"Behaviour {name}.{method} must accept (message, next); fix its signature.")
        return None
    build.compiler.register_concrete(behaviour, reg.lifetime)
    provider = build.compiler.provider(behaviour, behaviour)
    if provider is None or provider.make is None:
        return None
    return Step(name, provider.lifetime, provider.needs_scope or provider.dispatches,
                functools.partial(_pipeline.link_per_dispatch, provider.make, provider.needs_scope, func))


def _chain(terminal: Callable[[Any], Any], steps: Iterable[Step]) -> Callable[[Any], Any]:
    rest = terminal
    for step in reversed(list(steps)):
        rest = step.compose(rest)
    return rest


@attrs.frozen
class _EventHandler:
    call: Callable[[Any], Any]
    needs_scope: bool
    description: str


class Routes:
    """Everything compiled for one mediator: entry tables, event composition and explanations.

    Event entries wrap the behaviours once around the strategy that runs the
    handlers, so a validator or a log line runs once per publish. Entries for
    every registered event type and strategy are compiled at build; an event
    class the build did not see (one with no handlers, or a subclass) is
    compiled on its first publish, from the same frozen registrations, whose
    behaviours :func:`check_behaviours` has already checked for every kind.
    """

    def __init__(self, info: Build, publish_strategy: PublishStrategy, include_bases: bool) -> None:
        self.info = info
        self.is_async = info.is_async
        self.publish_strategy = publish_strategy
        self.include_bases = include_bases
        self.entries: dict[Kind, dict[type, Callable[[Any], Any]]] = {k: {} for k in Kind}
        self.event_entries: dict[tuple[type, PublishStrategy], Callable[[Any], Any]] = {}
        self.event_handlers: dict[type, list[_EventHandler]] = {}
        self.explanations: dict[type, Explanation] = {}
        self.strategies = (*(ASYNC_RUNNERS if self.is_async else SYNC_RUNNERS), PublishStrategy.STOP_ON_FIRST_ERROR)
        self.live: ChangeFeed | None = info.records.live
        """What tells subscriptions their answers may have changed (``Registry.change_feed``)."""

    def explain(self, message_type: type) -> Explanation:
        if message_type not in self.explanations and kind_of(message_type) is Kind.EVENT:
            self.event_entry(message_type, self.publish_strategy)
        if message_type in self.explanations:
            return self.explanations[message_type]
        raise HandlerNotFoundError(message_type)

    def _handlers_for(self, event_type: type) -> list[_EventHandler]:
        if not self.include_bases:
            return list(self.event_handlers.get(event_type, ()))
        found: list[_EventHandler] = []
        for klass in event_type.__mro__:
            found += self.event_handlers.get(klass, ())
        return found

    def event_entry(self, event_type: type, strategy: PublishStrategy) -> Callable[[Any], Any]:
        """The publish entry for an event type and strategy: compiled once, then looked up."""
        key = (event_type, strategy)
        entry = self.event_entries.get(key)
        if entry is not None:
            return entry
        if strategy is PublishStrategy.CONCURRENT and not self.is_async:
            raise WiringError([f"{strategy!r} needs the async mediator; build it with build_async()."])
        handlers = self._handlers_for(event_type)
        calls = tuple(h.call for h in handlers)
        if strategy is PublishStrategy.STOP_ON_FIRST_ERROR:
            run = _unrolled(calls, self.is_async, event_type)
        else:
            runners = ASYNC_RUNNERS if self.is_async else SYNC_RUNNERS
            run = functools.partial(runners[strategy], calls)
        problems_before = len(self.info.compiler.problems)
        steps = compile_steps(self.info.records.behaviours, event_type, Kind.EVENT, self.info)
        if len(self.info.compiler.problems) > problems_before:
            raise WiringError(self.info.compiler.problems[problems_before:])
        needs_scope = any(h.needs_scope for h in handlers) or any(s.needs_scope for s in steps)
        entry = _chain(run, steps)
        if needs_scope:
            entry = _scope_wrapper(self.is_async)(entry)
        self.event_entries[key] = entry
        if event_type not in self.explanations:
            self.explanations[event_type] = Explanation(
                event_type, Kind.EVENT, None, _step_names(steps), tuple(h.description for h in handlers), needs_scope
            )
        return entry


def _step_names(steps: list[Step]) -> tuple[str, ...]:
    return tuple(f"{s.name} ({s.lifetime.value})" for s in steps)


def _unrolled(chains: tuple[Callable[[Any], Any], ...], is_async: bool, event_type: type) -> Callable[[Any], Any]:
    """Compile "call each handler in turn" with the calls written out: no loop, no runner frame."""
    namespace = {f"_h{i}": chain for i, chain in enumerate(chains)}
    call = "await _h{}(event)" if is_async else "_h{}(event)"
    lines = [call.format(i) for i in range(len(chains))] or ["return None"]
    return typing.cast(Callable[[Any], Any], _codegen.function(
        "publish", ["event"], lines, namespace, about=qualname(event_type), is_async=is_async))


def build(records: Registrations, mediator: Routed, *, is_async: bool, sync_twin: Routed | None) -> None:
    """Compile ``records`` into ``mediator``'s routes; raise one WiringError listing every problem.

    ``sync_twin``, the sync mediator last built from the same records, is what sync handlers that depend on
    ``Mediator`` get inside the async twin: their nested dispatches run inline, in the same scope.
    """
    compiler = Compiler(records.services, records.container)
    compiler.check_annotations()
    compiler.add_mediator(type(mediator), mediator)
    if is_async and sync_twin is not None:
        compiler.add_mediator(type(sync_twin), sync_twin)
    info = Build(records, compiler, is_async)
    routes = Routes(info, records.publish_strategy, records.include_base_event_handlers)
    if records.publish_strategy is PublishStrategy.CONCURRENT and not is_async:
        info.problem("PublishStrategy.CONCURRENT needs the async mediator; build it with build_async().")

    by_type: dict[type, list[HandlerRegistration]] = {}
    for reg in records.handlers:
        by_type.setdefault(reg.message_type, []).append(reg)
    for message_type, regs in by_type.items():
        _compile_route(message_type, regs, records, info, routes)
    check_behaviours(records.behaviours, info)
    if not compiler.problems:
        for message_type in routes.event_handlers:
            for strategy in routes.strategies:
                routes.event_entry(message_type, strategy)
        routes.entries[Kind.EVENT] = {
            t: e for (t, strategy), e in routes.event_entries.items() if strategy is records.publish_strategy
        }
    for message_type in records.expected:
        if message_type not in by_type and kind_of(message_type) is not Kind.EVENT:
            info.problem(
                f"{qualname(message_type)} has no handler; register one with "
                f"registry.handle({message_type.__name__}).by(...)."
            )
    _check_orphans(records, by_type, info)
    if compiler.problems:
        raise WiringError(list(dict.fromkeys(compiler.problems)))
    mediator._install(routes)


def _compile_route(
    message_type: type, regs: list[HandlerRegistration], records: Registrations, info: Build, routes: Routes
) -> None:
    """Compile one message type's handler (or, for an event, its handlers) and behaviours."""
    kind, is_async = regs[0].kind, info.is_async
    if kind is not Kind.EVENT and len(regs) > 1:
        listed = ", ".join(qualname(r.handler) for r in regs)
        info.problem(
            f"{qualname(message_type)} has {len(regs)} handlers ({listed}); a {kind.value} needs exactly "
            "one: remove all but one registration."
        )
        return
    invokers = []
    for reg in regs:
        invoker = compile_call(reg.handler, "handle", reg.lifetime, info, message_type, kind)
        if invoker is not None and invoker.is_async and not is_async:
            info.problem(
                f"{invoker.description} is async but this is the sync mediator; use build_async() "
                "or make the handler sync."
            )
        elif invoker is not None:
            invokers.append(invoker)
    if kind is Kind.EVENT:
        # Behaviours wrap the whole publish; they are composed with the strategy in Routes.event_entry.
        routes.event_handlers[message_type] = [
            _EventHandler(_pipeline.as_coroutine(i.call) if is_async and not i.is_async else i.call,
                          i.needs_scope, i.description)
            for i in invokers
        ]
        return
    steps = compile_steps(records.behaviours, message_type, kind, info)
    if len(invokers) != 1:
        return
    (invoker,) = invokers
    needs_scope = any(s.needs_scope for s in steps) or invoker.needs_scope
    terminal = invoker.call
    if is_async and not invoker.is_async:
        terminal = (_pipeline.stream_to_async if kind is Kind.STREAM else _pipeline.as_coroutine)(terminal)
    chain = _chain(terminal, steps)
    if kind is Kind.STREAM:
        entry = (_pipeline.stream_async if is_async else _pipeline.stream_sync)(chain, needs_scope)
    elif needs_scope and not steps and invoker.inline is not None:
        entry = _pipeline.scoped_inline(invoker.inline, chain, is_async, invoker.is_async)
    else:
        entry = _scope_wrapper(is_async)(chain) if needs_scope else chain
    routes.entries[kind][message_type] = entry
    routes.explanations[message_type] = Explanation(
        message_type, kind, declared_result(message_type), _step_names(steps), (invoker.description,), needs_scope
    )


def _scope_wrapper(is_async: bool) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    return _pipeline.scoped_async if is_async else _pipeline.scoped_sync


def _check_orphans(records: Registrations, by_type: dict[type, list[HandlerRegistration]], build: Build) -> None:
    placed = {type(r.behaviour) if not isinstance(r.behaviour, type) else r.behaviour for r in records.behaviours}
    if records.validators and not any(issubclass(p, Validation) for p in placed):
        build.problem("Validators are registered but no Validation behaviour is in the pipeline; "
                      "add registry.behaviour(Validation()).")
    if records.hooks and not any(issubclass(p, ExceptionHooks) for p in placed):
        build.problem("Exception hooks are registered but no ExceptionHooks behaviour is in the pipeline; "
                      "add registry.behaviour(ExceptionHooks()).")
    for reg in records.validators:
        if not any(issubclass(t, reg.message_type) for t in by_type):
            build.problem(f"A validator is registered for {qualname(reg.message_type)}, which has no handler.")
