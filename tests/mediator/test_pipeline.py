"""Pipeline behaviours: order, targeting, short-circuits, failures, both twins."""

import asyncio
from typing import Any

import pytest

from mediator import Command, Kind, Lifetime, Message, Query, Registry, Scope, current_context
from mediator._context import _current

from .sample import Add, Count, Fail, GetName, Happened, Tag, Trace, UnitOfWork, add, count, fail


def traced(*tags: tuple[str, Any]) -> tuple[Registry, Trace]:
    trace = Trace()
    reg = Registry()
    reg.handle(Add).by(add)
    reg.handle(GetName).by(lambda query: "n")
    reg.handle(Count).by(count)
    reg.handle(Happened).by(lambda event: None)
    for name, applies_to in tags:
        reg.behaviour(Tag(name, trace), applies_to=applies_to)
    return reg, trace


def test_behaviours_run_in_registration_order_outermost_first() -> None:
    reg, trace = traced(("a", None), ("b", None))
    assert reg.build().send(Add(value=1)) == 2
    assert trace.events == ["a>", "b>", "<b", "<a"]


def test_an_innermost_behaviour_stays_inside_those_registered_after_it() -> None:
    reg, trace = traced(("a", None))
    reg.behaviour(Tag("inner", trace), innermost=True)
    reg.behaviour(Tag("b", trace))
    reg.behaviour(Tag("first", trace), outermost=True)
    reg.build().send(Add(value=1))
    assert trace.events == ["first>", "a>", "b>", "inner>", "<inner", "<b", "<a", "<first"]


def test_a_behaviour_cannot_be_outermost_and_innermost() -> None:
    from mediator import WiringError

    with pytest.raises(WiringError, match="both outermost and innermost"):
        Registry().behaviour(Tag("x", Trace()), outermost=True, innermost=True)


def test_behaviour_targeted_at_a_kind_skips_other_kinds() -> None:
    reg, trace = traced(("cmd", Kind.COMMAND), ("qry", Kind.QUERY))
    mediator = reg.build()
    mediator.send(Add(value=1))
    assert trace.events == ["cmd>", "<cmd"]
    trace.events.clear()
    mediator.ask(GetName(id=1))
    assert trace.events == ["qry>", "<qry"]


def test_behaviour_targeted_at_a_class_or_base_class() -> None:
    reg, trace = traced(("add", Add), ("base", Command), ("mixed", (Kind.EVENT, GetName)))
    mediator = reg.build()
    mediator.send(Add(value=1))
    mediator.ask(GetName(id=1))
    mediator.publish(Happened(what="x"))
    assert trace.events == ["add>", "base>", "<base", "<add", "mixed>", "<mixed", "mixed>", "<mixed"]


def test_behaviour_can_short_circuit_the_handler() -> None:
    class Cache:
        def handle(self, message: Any, next: Any) -> Any:
            return "cached"

    called: list[int] = []

    def handler(query: GetName) -> str:
        called.append(1)
        return "fresh"

    reg = Registry()
    reg.handle(GetName).by(handler)
    reg.behaviour(Cache(), applies_to=Query)
    assert reg.build().ask(GetName(id=1)) == "cached"
    assert called == []


def test_behaviour_can_replace_the_message_passed_along() -> None:
    class Double:
        def handle(self, message: Add, next: Any) -> Any:
            return next(Add(value=message.value * 2))

    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(Double(), applies_to=Add)
    assert reg.build().send(Add(value=5)) == 11


def test_a_raising_behaviour_stops_the_chain_and_closes_the_scope() -> None:
    UnitOfWork.instances.clear()
    scopes: list[Scope] = []

    class Guard:
        def __init__(self, uow: UnitOfWork) -> None:
            self.uow = uow

        def handle(self, message: Any, next: Any) -> Any:
            scopes.append(current_context().scope)
            raise PermissionError("denied")

    def handler(command: Add, uow: UnitOfWork) -> int:
        raise AssertionError("must not run")

    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Add).by(handler)
    reg.behaviour(Guard, lifetime=Lifetime.TRANSIENT)
    with pytest.raises(PermissionError, match="denied") as info:
        reg.build().send(Add(value=1))
    (scope,) = scopes
    assert scope.closed
    assert _current.get() is None
    (uow,) = UnitOfWork.instances
    assert (uow.outcome, uow.error) == ("rollback", info.value)


def test_behaviour_sees_handler_errors_and_may_rethrow() -> None:
    reg, trace = traced(("a", None))
    reg.handle(Fail).by(fail)
    with pytest.raises(RuntimeError, match="boom"):
        reg.build().send(Fail())
    assert trace.events == ["a>"]


class CountingBehaviour:
    """A per-dispatch behaviour with a scoped dependency."""

    made = 0

    def __init__(self, uow: UnitOfWork) -> None:
        CountingBehaviour.made += 1
        self.uow = uow

    def handle(self, message: Any, next: Any) -> Any:
        assert self.uow.entered
        return next(message)


def test_transient_behaviour_is_built_per_dispatch_with_its_dependencies() -> None:
    CountingBehaviour.made = 0
    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Add).by(add)
    reg.behaviour(CountingBehaviour, lifetime=Lifetime.TRANSIENT)
    mediator = reg.build()
    mediator.send(Add(value=1))
    mediator.send(Add(value=1))
    assert CountingBehaviour.made == 2
    assert "tests.mediator.test_pipeline.CountingBehaviour (transient)" in mediator.explain(Add).behaviours


def test_async_behaviours_wrap_async_and_sync_handlers() -> None:
    reg, trace = traced(("a", None), ("b", None))
    mediator = reg.build_async()
    assert asyncio.run(mediator.send(Add(value=1))) == 2
    assert trace.events == ["a>", "b>", "<b", "<a"]


def test_an_async_def_handle_serves_as_the_async_behaviour() -> None:
    class OnlyAsync:
        async def handle(self, message: Any, next: Any) -> Any:
            return (await next(message)) * 10

    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(OnlyAsync())
    assert asyncio.run(reg.build_async().send(Add(value=1))) == 20


def test_stream_behaviours_wrap_the_stream_with_handle_stream() -> None:
    reg, trace = traced(("s", Kind.STREAM))
    assert list(reg.build().stream(Count(up_to=2))) == [0, 1]
    assert trace.events == ["s~"]


def test_behaviours_for_all_kinds_sit_out_streams_they_cannot_wrap() -> None:
    class SendOnly:
        def handle(self, message: Any, next: Any) -> Any:
            return next(message)

    reg = Registry()
    reg.handle(Count).by(count)
    reg.behaviour(SendOnly())
    assert list(reg.build().stream(Count(up_to=2))) == [0, 1]


def test_event_behaviours_wrap_the_whole_publish_once() -> None:
    reg, trace = traced(("e", Kind.EVENT))
    reg.handle(Happened).by(lambda event: trace.events.append("handler"))
    reg.handle(Happened).by(lambda event: trace.events.append("handler"))
    reg.build().publish(Happened(what="x"))
    assert trace.events == ["e>", "handler", "handler", "<e"]


def test_event_behaviours_run_even_for_an_event_nobody_handles() -> None:
    from .sample import SpecialHappened

    reg, trace = traced(("e", Kind.EVENT))
    mediator = reg.build()
    mediator.publish(SpecialHappened(what="x"))
    mediator.publish(SpecialHappened(what="y"))
    assert trace.events == ["e>", "<e", "e>", "<e"]
    assert mediator.explain(SpecialHappened).handlers == ()


def test_behaviour_with_defaults_is_still_composed_correctly() -> None:
    class WithDefault:
        def handle(self, message: Any, next: Any = None) -> Any:
            return next(message) + 100

    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(WithDefault())
    assert reg.build().send(Add(value=1)) == 102


def test_callable_object_without_a_plain_method_still_works() -> None:
    class Wrapper:
        def __init__(self) -> None:
            self.handle = lambda message, next: next(message) * 3

    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(Wrapper())
    assert reg.build().send(Add(value=1)) == 6


def test_message_base_class_targets_every_message() -> None:
    reg, trace = traced(("all", Message))
    mediator = reg.build()
    mediator.send(Add(value=1))
    mediator.publish(Happened(what="x"))
    assert trace.events == ["all>", "<all", "all>", "<all"]
