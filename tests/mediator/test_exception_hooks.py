"""ExceptionHooks: translate or handle per exception type; never swallow silently."""

import asyncio

import pytest
from structlog.testing import capture_logs

from mediator import ExceptionHooks, Handled, HookError, Kind, Registry

from .sample import Add, Fail, GetName, fail


class NotFound(LookupError):
    pass


class HttpNotFound(Exception):
    pass


def build(*hooks: tuple[type[BaseException], object], **kw: object) -> Registry:
    reg = Registry()
    reg.behaviour(ExceptionHooks())
    for exc_type, hook in hooks:
        reg.on_exception(exc_type, hook, **kw)  # type: ignore[arg-type]
    reg.handle(Fail).by(fail)
    reg.handle(GetName).by(lambda query: (_ for _ in ()).throw(NotFound(query.id)))
    reg.handle(Add).by(lambda command: command.value)
    return reg


def test_hook_translates_by_raising_chained_to_the_original() -> None:
    def translate(message: object, exc: NotFound) -> None:
        raise HttpNotFound(f"no such thing: {exc}")

    mediator = build((NotFound, translate)).build()
    with pytest.raises(HttpNotFound, match="no such thing: 7") as info:
        mediator.ask(GetName(id=7))
    assert isinstance(info.value.__cause__, NotFound)


def test_hook_handles_by_returning_handled_and_it_is_logged() -> None:
    mediator = build((NotFound, lambda message, exc: Handled("fallback"))).build()
    with capture_logs() as logs:
        assert mediator.ask(GetName(id=1)) == "fallback"
    (entry,) = logs
    assert entry["event"] == "exception handled by hook"
    assert entry["log_level"] == "warning"
    assert entry["error_type"].endswith("NotFound")


def test_hook_returning_none_lets_the_exception_through() -> None:
    seen: list[BaseException] = []

    def observe(message: object, exc: BaseException) -> None:
        seen.append(exc)

    mediator = build((RuntimeError, observe)).build()
    with pytest.raises(RuntimeError, match="boom"):
        mediator.send(Fail())
    assert len(seen) == 1


def test_hook_returning_anything_else_is_an_error_not_a_silent_swallow() -> None:
    mediator = build((RuntimeError, lambda message, exc: "oops")).build()
    with pytest.raises(HookError, match="return Handled\\(value\\) to handle") as info:
        mediator.send(Fail())
    assert isinstance(info.value.__cause__, RuntimeError)


def test_only_hooks_for_a_matching_type_run_first_deciding_wins() -> None:
    calls: list[str] = []

    def unrelated(message: object, exc: BaseException) -> None:
        calls.append("unrelated")

    def first(message: object, exc: BaseException) -> Handled:
        calls.append("first")
        return Handled(1)

    def second(message: object, exc: BaseException) -> Handled:
        calls.append("second")
        return Handled(2)

    mediator = build((KeyError, unrelated), (RuntimeError, first), (Exception, second)).build()
    assert mediator.send(Fail()) == 1
    assert calls == ["first"]


def test_hooks_can_be_targeted() -> None:
    mediator = build((Exception, lambda m, e: Handled("q")), applies_to=Kind.QUERY).build()
    assert mediator.ask(GetName(id=1)) == "q"
    with pytest.raises(RuntimeError):
        mediator.send(Fail())


def test_async_twin_translates_too() -> None:
    def translate(message: object, exc: NotFound) -> None:
        raise HttpNotFound("x")

    mediator = build((NotFound, translate)).build_async()
    with pytest.raises(HttpNotFound):
        asyncio.run(mediator.ask(GetName(id=1)))


def test_success_passes_untouched() -> None:
    mediator = build((Exception, lambda m, e: Handled(0))).build()
    assert mediator.send(Add(value=5)) == 5


def test_async_hooks_are_awaited_on_the_async_mediator() -> None:
    async def fallback(message: object, exc: NotFound) -> Handled:
        await asyncio.sleep(0)
        return Handled("async fallback")

    mediator = build((NotFound, fallback)).build_async()
    assert asyncio.run(mediator.ask(GetName(id=1))) == "async fallback"
