"""Whatever fails, no dispatch context stays current and no scope stays open."""

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from mediator import (
    Command,
    HandlerNotFoundError,
    Lifetime,
    MediatorError,
    NotAMessageError,
    Registry,
    Validation,
    ValidationError,
    ValidatorError,
)
from mediator._context import _current

from .sample import Add, Count, Fail, GetName, Happened, UnitOfWork, Unreachable

RAISED: list[BaseException] = []
"""What the failing handlers and behaviours raised themselves, newest last."""


def own(error: BaseException) -> BaseException:
    RAISED.append(error)
    return error


@attrs.frozen(kw_only=True)
class Unhandled(Command[None]):
    pass


@attrs.frozen(kw_only=True)
class Guarded(Command[int]):
    pass


class DenyBefore:
    """Refuses before calling next; it holds the unit of work, so its scope has something to roll back."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    def handle(self, message: Any, next: Any) -> Any:
        raise own(PermissionError("denied before the handler"))

    async def handle_async(self, message: Any, next: Any) -> Any:
        raise own(PermissionError("denied before the handler"))


class FailAfter:
    """Lets the handler run, then fails."""

    def handle(self, message: Any, next: Any) -> Any:
        next(message)
        raise own(OSError("failed after the handler"))

    async def handle_async(self, message: Any, next: Any) -> Any:
        await next(message)
        raise own(OSError("failed after the handler"))


def fail_with_uow(command: Fail, uow: UnitOfWork) -> None:
    raise own(RuntimeError(command.reason))


def add_with_uow(command: Add, uow: UnitOfWork) -> int:
    return command.value


def guarded(command: Guarded, uow: UnitOfWork) -> int:
    raise AssertionError("the behaviour refuses before the handler")


def name_with_uow(query: GetName, uow: UnitOfWork) -> str:
    return "n"


def count_with_uow(query: Count, uow: UnitOfWork) -> Iterator[int]:
    yield 1
    raise own(LookupError("stream failed midway"))


def happened_with_uow(event: Happened, uow: UnitOfWork) -> None:
    pass


def invalid(command: Add, uow: UnitOfWork) -> list[tuple[str, str]]:
    return [("value", "never valid")]


def needs_the_database(query: GetName, uow: UnitOfWork, db: Unreachable) -> list[tuple[str, str]]:
    raise AssertionError("the validator cannot be called without its connection")


def registry() -> Registry:
    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.scoped(Unreachable)
    reg.behaviour(Validation())
    reg.behaviour(DenyBefore, applies_to=Guarded, lifetime=Lifetime.TRANSIENT)
    reg.behaviour(FailAfter(), applies_to=Happened)
    reg.validate(Add, invalid)
    reg.validate(GetName, needs_the_database)
    reg.handle(Fail).by(fail_with_uow)
    reg.handle(Add).by(add_with_uow)
    reg.handle(Guarded).by(guarded)
    reg.handle(GetName).by(name_with_uow)
    reg.handle(Count).by(count_with_uow)
    reg.handle(Happened).by(happened_with_uow)
    return reg


async def _collect(items: Any) -> list[Any]:
    return [item async for item in items]


def _drain(items: Any) -> Any:
    return _collect(items) if hasattr(items, "__aiter__") else list(items)


@attrs.frozen
class Failure:
    name: str
    dispatch: Callable[[Any], Any]
    """Dispatch on either twin; on the async one, it returns what to await."""
    error: type[BaseException]
    framework: bool
    """Whether the framework raises ``error``; if not, the failing code's own exception must arrive unchanged."""
    opens_scope: bool

    def check(self, error: BaseException) -> None:
        if self.framework:
            assert type(error) is self.error
            assert isinstance(error, MediatorError)
        else:
            assert error is RAISED[-1]
        if self.opens_scope:
            assert [(uow.outcome, uow.error) for uow in UnitOfWork.instances] == [("rollback", error)]
        else:
            assert UnitOfWork.instances == []


FAILURES = [
    Failure("not a message", lambda m: m.send(object()), NotAMessageError, True, False),
    Failure("no handler", lambda m: m.send(Unhandled()), HandlerNotFoundError, True, False),
    Failure("handler raises", lambda m: m.send(Fail()), RuntimeError, False, True),
    Failure("behaviour raises before next", lambda m: m.send(Guarded()), PermissionError, False, True),
    Failure("behaviour raises after next", lambda m: m.publish(Happened(what="x")), OSError, False, True),
    Failure("invalid message", lambda m: m.send(Add(value=1)), ValidationError, True, True),
    Failure("validator dependency fails", lambda m: m.ask(GetName(id=1)), ValidatorError, True, True),
    Failure("stream fails midway", lambda m: _drain(m.stream(Count(up_to=1))), LookupError, False, True),
]


@pytest.fixture(autouse=True)
def _fresh() -> None:
    UnitOfWork.instances.clear()
    RAISED.clear()


@pytest.mark.parametrize("case", FAILURES, ids=[f.name for f in FAILURES])
def test_a_failed_dispatch_leaves_nothing_open(case: Failure) -> None:
    mediator = registry().build()
    with pytest.raises(case.error) as info:
        case.dispatch(mediator)
    case.check(info.value)
    assert _current.get() is None


@pytest.mark.parametrize("case", FAILURES, ids=[f.name for f in FAILURES])
def test_a_failed_async_dispatch_leaves_nothing_open(case: Failure) -> None:
    mediator = registry().build_async()

    async def main() -> None:
        with pytest.raises(case.error) as info:
            await case.dispatch(mediator)
        case.check(info.value)
        assert _current.get() is None

    asyncio.run(main())


def test_cancelling_an_async_dispatch_rolls_its_scope_back() -> None:
    started = asyncio.Event()

    async def slow(command: Add, uow: UnitOfWork) -> int:
        started.set()
        await asyncio.sleep(10)
        return 0

    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Add).by(slow)
    mediator = reg.build_async()

    async def main() -> None:
        started.clear()
        task = asyncio.ensure_future(mediator.send(Add(value=1)))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (uow,) = UnitOfWork.instances
    assert uow.outcome == "rollback"
