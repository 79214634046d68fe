"""Build checks every handler's annotated result: events' handlers return None, however they were registered."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import attrs
import pytest

from mediator import Command, Event, Lifetime, Query, Registry, WiringError, handles

EVENT = "tests.mediator.test_handler_results.Placed"


@attrs.frozen(kw_only=True)
class Placed(Event):
    order: int


@attrs.frozen(kw_only=True)
class PlaceOrder(Command[int]):
    customer: str


@attrs.frozen(kw_only=True)
class Find(Query[int | None | str]):
    key: str


def problems(reg: Registry, *, is_async: bool = False) -> tuple[str, ...]:
    with pytest.raises(WiringError) as info:
        reg.build_async() if is_async else reg.build()
    return info.value.problems


def counts(event: Placed) -> int:
    return 1


async def counts_async(event: Placed) -> int:
    return 1


def returns_awaitable(event: Placed) -> Awaitable[None]:
    return asyncio.sleep(0)


class CountsPlaced:
    def handle(self, event: Placed) -> str:
        return ""


def test_event_handler_annotated_with_a_result_is_a_wiring_error() -> None:
    reg = Registry()
    reg.handle(Placed).by(counts)  # type: ignore[arg-type]
    (problem,) = problems(reg)
    assert problem == (
        f"tests.mediator.test_handler_results.counts returns int but is registered for the event {EVENT}, whose "
        "handlers return None (async ones: when awaited); fix the annotation or the registration."
    )


def test_async_event_handler_is_checked_by_its_awaited_result() -> None:
    reg = Registry()
    reg.handle(Placed).by(counts_async)  # type: ignore[arg-type]
    (problem,) = problems(reg, is_async=True)
    assert f"counts_async returns int but is registered for the event {EVENT}" in problem


def test_event_handler_class_is_checked_through_its_handle_method() -> None:
    reg = Registry()
    reg.handle(Placed).by(CountsPlaced)  # type: ignore[arg-type]
    (problem,) = problems(reg)
    assert f"test_handler_results.CountsPlaced.handle returns str but is registered for the event {EVENT}" in problem


def test_sync_event_handler_returning_an_awaitable_is_a_wiring_error() -> None:
    # mypy cannot tell this from an async handler; nothing would await what it returns.
    reg = Registry()
    reg.handle(Placed).by(returns_awaitable)
    (problem,) = problems(reg)
    assert "returns_awaitable returns collections.abc.Awaitable[None] but is registered for the event" in problem


def test_event_handlers_returning_none_or_unannotated_are_accepted() -> None:
    seen: list[str] = []

    def annotated(event: Placed) -> None:
        seen.append("annotated")

    def unannotated(event):  # type: ignore[no-untyped-def]
        seen.append("unannotated")

    def declared_any(event: Placed) -> Any:
        seen.append("any")

    def always_raises(event: Placed) -> NoReturn:
        raise LookupError(event)

    reg = Registry()
    reg.handle(Placed).by(annotated)
    reg.handle(Placed).by(unannotated)
    reg.handle(Placed).by(declared_any)
    reg.handle(Placed).by(lambda event: seen.append("lambda"))
    reg.build().publish(Placed(order=1))
    assert seen == ["annotated", "unannotated", "any", "lambda"]

    raising = Registry()
    raising.handle(Placed).by(always_raises)
    with pytest.raises(LookupError):
        raising.build().publish(Placed(order=1))


def test_async_event_handlers_returning_none_are_accepted() -> None:
    seen: list[int] = []

    async def on_placed(event: Placed) -> None:
        seen.append(event.order)

    reg = Registry()
    reg.handle(Placed).by(on_placed)
    asyncio.run(reg.build_async().publish(Placed(order=3)))
    assert seen == [3]


def test_event_result_problems_are_listed_with_every_other_problem() -> None:
    def wrong_command_result(command: PlaceOrder) -> str:
        return ""

    reg = Registry()
    reg.handle(Placed).by(counts)  # type: ignore[arg-type]
    reg.handle(Placed).by(CountsPlaced)  # type: ignore[arg-type]
    reg.handle(PlaceOrder).by(wrong_command_result)  # type: ignore[arg-type]
    reg.expect(Find)
    found = problems(reg)
    assert len(found) == 4, found
    joined = "\n".join(found)
    assert f"counts returns int but is registered for the event {EVENT}" in joined
    assert f"CountsPlaced.handle returns str but is registered for the event {EVENT}" in joined
    assert "wrong_command_result returns str but tests.mediator.test_handler_results.PlaceOrder declares int" in joined
    assert "test_handler_results.Find has no handler" in joined


def test_a_handler_that_always_raises_fits_any_declared_result() -> None:
    def refuse(command: PlaceOrder) -> NoReturn:
        raise PermissionError(command.customer)

    reg = Registry()
    reg.handle(PlaceOrder).by(refuse)
    with pytest.raises(PermissionError):
        reg.build().send(PlaceOrder(customer="c"))


def test_a_union_result_fits_when_each_member_fits() -> None:
    def narrower(query: Find) -> int | None:
        return None

    def wider(query: Find) -> int | bytes:
        return 1

    reg = Registry()
    reg.handle(Find).by(narrower)
    assert reg.build().ask(Find(key="k")) is None

    reg = Registry()
    reg.handle(Find).by(wider)  # type: ignore[arg-type]
    (problem,) = problems(reg)
    assert "wider returns int | bytes but tests.mediator.test_handler_results.Find declares" in problem


# -- handlers marked with @handles and found by scan() -------------------------------------------------------------

MESSAGES = """
    import attrs
    from mediator import Command, Event

    @attrs.frozen
    class Ping(Command[str]):
        pass

    @attrs.frozen
    class Rename(Command[str]):
        pass

    @attrs.frozen
    class Placed(Event):
        pass
"""

MISTYPED = """
    from mediator import handles
    from .messages import Ping, Placed, Rename

    @handles(Placed)
    def counts(event: Placed) -> int:
        return 1

    @handles(Placed)
    class CountsPlaced:
        def handle(self, event: Placed) -> str:
            return ""

    @handles(Ping)
    def ping(command: Ping) -> int:
        return 1

    @handles(Rename)
    def rename(command: Rename) -> str:
        return ""
"""

EXPLICIT = """
    from mediator import Registry
    from .messages import Ping, Placed, Rename
    from .handlers import CountsPlaced, counts, ping, rename

    def register(registry: Registry) -> None:
        registry.handle(Placed).by(counts)
        registry.handle(Placed).by(CountsPlaced)
        registry.handle(Ping).by(ping)
        registry.handle(Rename).by(rename)
"""


def write_package(root: Path, name: str, **modules: str) -> None:
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module, source in modules.items():
        (package / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def mistyped_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    write_package(tmp_path, "mistyped_app", messages=MESSAGES, handlers=MISTYPED, explicit=EXPLICIT)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mistyped_app"
    for name in [m for m in sys.modules if m == "mistyped_app" or m.startswith("mistyped_app.")]:
        del sys.modules[name]


def test_scanned_handlers_with_mismatched_results_fail_the_build(mistyped_app: str) -> None:
    found = problems(Registry().scan(mistyped_app))
    assert len(found) == 3, found
    joined = "\n".join(found)
    assert "mistyped_app.handlers.counts returns int but is registered for the event mistyped_app.messages.Placed" in (
        joined)
    assert "mistyped_app.handlers.CountsPlaced.handle returns str but is registered for the event" in joined
    assert "mistyped_app.handlers.ping returns int but mistyped_app.messages.Ping declares str" in joined


def test_scanned_handlers_are_checked_as_the_same_handlers_registered_explicitly(mistyped_app: str) -> None:
    explicit = Registry()
    __import__(f"{mistyped_app}.explicit", fromlist=["register"]).register(explicit)
    assert problems(Registry().scan(mistyped_app)) == problems(explicit)


def test_scanned_handlers_are_checked_alike_by_both_builds(mistyped_app: str) -> None:
    assert problems(Registry().scan(mistyped_app), is_async=True) == problems(Registry().scan(mistyped_app))


def test_a_mark_for_several_types_is_checked_against_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # mypy checks such a handler's result only against what the types' results share; build() checks each.
    write_package(tmp_path, "several_app", messages=MESSAGES, handlers="""
        import attrs
        from mediator import Command, handles
        from .messages import Ping, Rename

        @attrs.frozen
        class Count(Command[int]):
            pass

        @handles(Ping, Rename, Count)
        def answer(command: Ping | Rename | Count) -> str:
            return ""
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    (problem,) = problems(Registry().scan("several_app"))
    assert problem == (
        "several_app.handlers.answer returns str but several_app.handlers.Count declares int; make them agree."
    )


def test_handles_returns_the_handler_itself_with_its_marks() -> None:
    def on_placed(event: Placed) -> None:
        pass

    class PlaceHandler:
        def handle(self, command: PlaceOrder) -> int:
            return 1

    assert handles(Placed, lifetime=Lifetime.SCOPED)(on_placed) is on_placed
    assert handles(PlaceOrder)(PlaceHandler) is PlaceHandler
    assert handles(Placed)(on_placed) is on_placed
    assert on_placed.__mediator_handles__ == (  # type: ignore[attr-defined]
        (Placed, Lifetime.SCOPED), (Placed, Lifetime.TRANSIENT))
    assert PlaceHandler.__mediator_handles__ == ((PlaceOrder, Lifetime.TRANSIENT),)  # type: ignore[attr-defined]
