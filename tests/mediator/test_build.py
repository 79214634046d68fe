"""Build checks the whole wiring up front and reports every problem in one error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from mediator import (
    Command,
    ExceptionHooks,
    Kind,
    Lifetime,
    Logging,
    PublishStrategy,
    Query,
    Registry,
    Validation,
    WiringError,
    handles,
)

from . import sample
from .sample import Add, AddWithOffset, Count, GetName, Happened, Offset, Tag, Trace, UnitOfWork, add, add_async


class Repo:
    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow


class CycleA:
    def __init__(self, b: CycleB) -> None:
        pass


class CycleB:
    def __init__(self, a: CycleA) -> None:
        pass


class Broken:
    def __init__(self) -> None:
        raise OSError("disk on fire")


def problems(reg: Registry, *, is_async: bool = False) -> tuple[str, ...]:
    with pytest.raises(WiringError) as info:
        reg.build_async() if is_async else reg.build()
    assert isinstance(info.value, ValueError)
    return info.value.problems


def test_two_handlers_for_one_command_is_a_wiring_error() -> None:
    reg = Registry()
    reg.handle(Add).by(add)
    reg.handle(Add).by(AddWithOffset)
    (problem,) = problems(reg)
    assert "Add has 2 handlers" in problem
    assert "exactly one" in problem


def test_every_problem_is_reported_together() -> None:
    @attrs.frozen
    class Unhandled(Command[int]):
        pass

    def wrong_result(command: Add) -> str:
        return ""

    reg = Registry()
    reg.handle(Add).by(wrong_result)  # type: ignore[arg-type]
    reg.handle(GetName).by(AddWithOffset)  # type: ignore[arg-type]
    reg.expect(Unhandled)
    found = problems(reg)
    assert len(found) == 5, found
    joined = "\n".join(found)
    assert "AddWithOffset.handle returns int but tests.mediator.sample.GetName declares str" in joined
    assert "wrong_result returns str but tests.mediator.sample.Add declares int" in joined
    assert "Unhandled has no handler" in joined
    assert "needs tests.mediator.sample.Offset, which is not registered" in joined
    assert "registered for tests.mediator.sample.GetName but its message parameter is annotated" in joined


def test_handler_annotated_for_another_message_is_reported() -> None:
    def handler(query: GetName) -> int:
        return 1

    reg = Registry()
    reg.handle(Add).by(handler)  # type: ignore[arg-type]
    (problem,) = problems(reg)
    assert "message parameter is annotated tests.mediator.sample.GetName" in problem


def test_stream_handler_item_type_is_checked() -> None:
    def handler(query: Count) -> Iterator[str]:
        yield ""

    reg = Registry()
    reg.handle(Count).by(handler)  # type: ignore[arg-type]
    (problem,) = problems(reg)
    assert "returns str but tests.mediator.sample.Count declares int" in problem


def test_subclass_results_and_unannotated_handlers_are_accepted() -> None:
    class Base:
        pass

    class Derived(Base):
        pass

    @attrs.frozen
    class Make(Command[Base]):
        pass

    def make(command: Make) -> Derived:
        return Derived()

    reg = Registry()
    reg.handle(Make).by(make)
    reg.handle(Add).by(lambda command: command.value)
    mediator = reg.build()
    assert isinstance(mediator.send(Make()), Derived)


def test_optional_and_union_results_are_compatible() -> None:
    @attrs.frozen
    class Find(Query[int | None]):
        pass

    def find(query: Find) -> None:
        return None

    reg = Registry()
    reg.handle(Find).by(find)
    assert reg.build().ask(Find()) is None


def test_async_handler_in_the_sync_mediator_is_a_wiring_error() -> None:
    reg = Registry()
    reg.handle(Add).by(add_async)
    (problem,) = problems(reg)
    assert "is async but this is the sync mediator" in problem


def test_behaviour_without_handle_is_a_wiring_error() -> None:
    class NotABehaviour:
        pass

    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(NotABehaviour())
    (problem,) = problems(reg)
    assert "NotABehaviour has no handle(message, next) method" in problem


def test_behaviour_with_the_wrong_signature_is_a_wiring_error() -> None:
    class OneArg:
        def handle(self, message: Any) -> Any:
            return message

    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(OneArg())
    (problem,) = problems(reg)
    assert "OneArg.handle must accept (message, next)" in problem


def test_sync_only_behaviour_in_the_async_mediator_is_a_wiring_error() -> None:
    class SyncOnly:
        def handle(self, message: Any, next: Any) -> Any:
            return next(message)

    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(SyncOnly())
    (problem,) = problems(reg, is_async=True)
    assert "SyncOnly has no async handle_async()" in problem


def test_singleton_depending_on_scoped_is_a_captive_dependency_error() -> None:
    def handler(command: Add, repo: Repo) -> int:
        return 1

    reg2 = Registry()
    reg2.scoped(UnitOfWork)
    reg2.singleton(Repo)
    reg2.handle(Add).by(handler)
    (problem,) = problems(reg2)
    assert "Singleton" in problem
    assert "depends on tests.mediator.sample.UnitOfWork (scoped)" in problem


def test_dependency_cycle_is_reported() -> None:
    def handler(command: Add, a: CycleA) -> int:
        return 1

    reg = Registry()
    reg.transient(CycleA)
    reg.transient(CycleB)
    reg.handle(Add).by(handler)
    (problem,) = problems(reg)
    assert problem.startswith("Dependency cycle: tests.mediator.test_build.CycleA -> tests.mediator.test_build.CycleB")


def test_unresolvable_annotations_are_reported_with_the_fix() -> None:
    class Local:
        def __init__(self, missing: NotDefinedAnywhere) -> None:  # type: ignore[name-defined]  # noqa: F821
            pass

    def handler(command: Add, dep: NotDefinedAnywhere) -> int:  # type: ignore[name-defined]  # noqa: F821
        return 1

    reg = Registry()
    reg.transient(Local)
    reg.handle(Add).by(handler)
    found = problems(reg)
    assert len(found) == 2
    assert all("cannot be resolved (" in p and "NotDefinedAnywhere" in p and "at module level" in p for p in found)


def test_validators_without_the_validation_behaviour_are_reported() -> None:
    reg = Registry()
    reg.handle(Add).by(add)
    reg.validate(Add, lambda command: [])
    (problem,) = problems(reg)
    assert "no Validation behaviour is in the pipeline" in problem


def test_hooks_without_the_exception_hooks_behaviour_are_reported() -> None:
    reg = Registry()
    reg.handle(Add).by(add)
    reg.on_exception(KeyError, lambda message, exc: None)
    (problem,) = problems(reg)
    assert "no ExceptionHooks behaviour" in problem


def test_a_validator_for_an_unhandled_message_is_reported() -> None:
    reg = Registry()
    reg.behaviour(Validation())
    reg.validate(Add, lambda command: [])
    (problem,) = problems(reg)
    assert "validator is registered for tests.mediator.sample.Add, which has no handler" in problem


def test_concurrent_publishing_needs_the_async_mediator() -> None:
    reg = Registry(publish=PublishStrategy.CONCURRENT)
    reg.handle(Happened).by(lambda event: None)
    (problem,) = problems(reg)
    assert "CONCURRENT needs the async mediator" in problem
    assert reg.build_async() is not None


def test_failing_singleton_construction_is_reported_at_build() -> None:
    def handler(command: Add, broken: Broken) -> int:
        return 1

    reg = Registry()
    reg.singleton(Broken)
    reg.handle(Add).by(handler)
    (problem,) = problems(reg)
    assert "Building singleton" in problem
    assert "disk on fire" in problem


def test_explain_lists_behaviours_in_order_handler_and_lifetimes() -> None:
    trace = Trace()
    reg = Registry()
    reg.singleton(Offset)
    reg.scoped(UnitOfWork)
    reg.behaviour(Logging())
    reg.behaviour(Tag("outer", trace), applies_to=Kind.COMMAND)
    reg.behaviour(Tag("queries", trace), applies_to=Kind.QUERY)
    reg.handle(Add).by(AddWithOffset, lifetime=Lifetime.TRANSIENT)
    text = str(reg.build().explain(Add))
    assert text.splitlines() == [
        "tests.mediator.sample.Add (command) -> int",
        "  1. mediator.Logging (singleton)",
        "  2. tests.mediator.sample.Tag (singleton)",
        "  handler: tests.mediator.sample.AddWithOffset (transient) <- tests.mediator.sample.Offset (singleton)",
        "  scope: opened per dispatch (or joined)",
    ]


def test_explain_of_an_event_lists_every_handler() -> None:
    reg = Registry()
    reg.handle(Happened).by(lambda event: None)
    reg.handle(Happened).by(lambda event: None)
    explanation = reg.build().explain(Happened)
    assert explanation.kind is Kind.EVENT
    assert len(explanation.handlers) == 2


def test_scan_registers_marked_handlers_and_expects_their_messages(tmp_path: Any, monkeypatch: Any) -> None:
    package = tmp_path / "scanned_app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "messages.py").write_text(
        "import attrs\nfrom mediator import Command, Query\n"
        "@attrs.frozen\nclass Ping(Command[str]):\n    pass\n"
        "@attrs.frozen\nclass Forgotten(Query[int]):\n    pass\n"
    )
    (package / "handlers.py").write_text(
        "from mediator import handles\nfrom .messages import Ping\n"
        "@handles(Ping)\ndef ping(command: Ping) -> str:\n    return 'pong'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry().scan("scanned_app")
    (problem,) = problems(reg)
    assert "scanned_app.messages.Forgotten has no handler" in problem

    from scanned_app.messages import Forgotten, Ping  # type: ignore[import-not-found]

    reg = Registry().scan("scanned_app")
    reg.handle(Forgotten).by(lambda query: 3)
    mediator = reg.build()
    assert mediator.send(Ping()) == "pong"


def test_handles_marks_without_registering_anything_globally() -> None:
    @handles(Add)
    def handler(command: Add) -> int:
        return 0

    assert Registry().build().message_types == frozenset()
    assert handler.__mediator_handles__ == ((Add, Lifetime.TRANSIENT),)  # type: ignore[attr-defined]


def test_hooks_and_validation_registered_with_nothing_to_do_cost_nothing() -> None:
    reg = Registry()
    reg.behaviour(Validation())
    reg.behaviour(ExceptionHooks())
    reg.handle(Add).by(add)
    assert reg.build().explain(Add).behaviours == ()


def test_sample_module_is_importable() -> None:
    assert sample.Add(value=1).value == 1


def test_building_twice_keeps_the_registered_lifetimes() -> None:
    class Handler:
        def handle(self, command: Add) -> int:
            return id(self)

    reg = Registry()
    reg.handle(Add).by(Handler, lifetime=Lifetime.SCOPED)
    first, second = reg.build(), reg.build()
    assert first.explain(Add).handlers == second.explain(Add).handlers
    assert "(scoped)" in second.explain(Add).handlers[0]
    with second.scope():
        assert second.send(Add(value=1)) == second.send(Add(value=1))


def test_a_behaviour_class_with_the_default_lifetime_is_built_once() -> None:
    made: list[object] = []

    class Plain:
        def __init__(self) -> None:
            made.append(self)

        def handle(self, message: Any, next: Any) -> Any:
            return next(message)

    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(Plain)
    mediator = reg.build()
    mediator.send(Add(value=1))
    mediator.send(Add(value=1))
    assert len(made) == 1


def test_a_per_dispatch_behaviour_of_the_wrong_shape_is_reported() -> None:
    class Wrong:
        def handle(self, message: Any) -> Any:
            return message

    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(Wrong, lifetime=Lifetime.TRANSIENT)
    (problem,) = problems(reg)
    assert "Wrong.handle must accept (message, next)" in problem


class OneArgBehaviour:
    def handle(self, message: Any) -> Any:
        return message


def test_a_behaviour_of_the_wrong_shape_fails_the_build_even_with_nothing_handled() -> None:
    reg = Registry()
    reg.behaviour(OneArgBehaviour())
    (problem,) = problems(reg)
    assert "OneArgBehaviour.handle must accept (message, next)" in problem


@pytest.mark.parametrize("applies_to", [Kind.EVENT, Happened, Kind.QUERY, (Kind.STREAM, Happened)])
def test_a_behaviour_is_checked_for_every_kind_it_applies_to_not_only_the_handled_ones(applies_to: Any) -> None:
    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(OneArgBehaviour(), applies_to=applies_to)
    (problem,) = problems(reg)
    assert "OneArgBehaviour.handle must accept (message, next)" in problem


def test_an_event_behaviour_problem_is_reported_with_every_other_problem() -> None:
    class NeedsOffset:
        def __init__(self, offset: Offset) -> None:
            self.offset = offset

        def handle(self, message: Any, next: Any) -> Any:
            return next(message)

    reg = Registry()
    reg.handle(Add).by(AddWithOffset)
    reg.handle(Happened).by(lambda event: None)
    reg.behaviour(NeedsOffset, applies_to=sample.SpecialHappened, lifetime=Lifetime.TRANSIENT)
    reg.behaviour(OneArgBehaviour(), applies_to=Kind.EVENT)
    found = "\n".join(problems(reg))
    assert "AddWithOffset needs tests.mediator.sample.Offset, which is not registered" in found
    assert "NeedsOffset needs tests.mediator.sample.Offset, which is not registered" in found
    assert "OneArgBehaviour.handle must accept (message, next)" in found


def test_a_sync_only_event_behaviour_fails_the_async_build_with_no_event_handled() -> None:
    class SyncOnly:
        def handle(self, message: Any, next: Any) -> Any:
            return next(message)

    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(SyncOnly(), applies_to=Kind.EVENT)
    (problem,) = problems(reg, is_async=True)
    assert "SyncOnly has no async handle_async()" in problem


def test_publishing_an_event_the_build_did_not_see_runs_behaviours_checked_at_build() -> None:
    trace = Trace()
    reg = Registry()
    reg.handle(Add).by(add)
    reg.behaviour(Tag("any", trace))
    reg.behaviour(Tag("special", trace), applies_to=sample.SpecialHappened)
    mediator = reg.build()
    mediator.publish(Happened(what="x"))
    mediator.publish(sample.SpecialHappened(what="y"))
    assert trace.events == ["any>", "<any", "any>", "special>", "<special", "<any"]


class NeedsUnitOfWork:
    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow


class Cache:
    def __init__(self, dep: NeedsUnitOfWork) -> None:
        self.dep = dep


def test_a_singleton_capturing_a_scoped_service_through_a_transient_is_reported() -> None:
    def handler(command: Add, cache: Cache) -> int:
        return 1

    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.transient(NeedsUnitOfWork)
    reg.singleton(Cache)
    reg.handle(Add).by(handler)
    (problem,) = problems(reg)
    assert "Singleton tests.mediator.test_build.Cache depends on tests.mediator.test_build.NeedsUnitOfWork" in problem
    assert "needs a scoped service" in problem
