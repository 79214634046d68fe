"""Whatever fails, no dispatch context stays current and no scope stays open."""

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mediator import (
    HandlerNotFoundError,
    MediatorError,
    NotAMessageError,
    Registry,
    Validation,
    ValidationError,
    ValidatorError,
)
from mediator._context import _current

from .sample import Add, Count, Fail, GetName, Happened, UnitOfWork


class Exploding:
    def handle(self, message: Any, next: Any) -> Any:
        raise PermissionError("behaviour raised")

    async def handle_async(self, message: Any, next: Any) -> Any:
        raise PermissionError("behaviour raised")


def fail_with_uow(command: Fail, uow: UnitOfWork) -> None:
    raise RuntimeError(command.reason)


def add_with_uow(command: Add, uow: UnitOfWork) -> int:
    return command.value


def name_with_uow(query: GetName, uow: UnitOfWork) -> str:
    return "n"


def count_with_uow(query: Count, uow: UnitOfWork) -> Iterator[int]:
    yield 1
    raise LookupError("stream failed midway")


def invalid(command: Add) -> list[tuple[str, str]]:
    return [("value", "never valid")]


def crashing_validator(query: GetName, uow: UnitOfWork) -> list[tuple[str, str]]:
    raise ConnectionError("validator's database is down")


def registry() -> Registry:
    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.behaviour(Validation())
    reg.behaviour(Exploding(), applies_to=Happened)
    reg.validate(Add, invalid)
    reg.validate(GetName, crashing_validator)
    reg.handle(Fail).by(fail_with_uow)
    reg.handle(Add).by(add_with_uow)
    reg.handle(GetName).by(name_with_uow)
    reg.handle(Count).by(count_with_uow)
    reg.handle(Happened).by(lambda event: None)
    return reg


FAILURES: list[tuple[str, Callable[[Any], Any], type[BaseException]]] = [
    ("not a message", lambda m: m.send(object()), NotAMessageError),
    ("no handler", lambda m: m.send(Fail.__new__(type("Unknown", (Fail,), {}))), HandlerNotFoundError),
    ("handler raises", lambda m: m.send(Fail()), RuntimeError),
    ("behaviour raises", lambda m: m.publish(Happened(what="x")), PermissionError),
    ("invalid message", lambda m: m.send(Add(value=1)), ValidationError),
    ("validator dependency fails", lambda m: m.ask(GetName(id=1)), ValidatorError),
    ("stream fails midway", lambda m: list(m.stream(Count(up_to=1))), LookupError),
]


@pytest.fixture(autouse=True)
def _fresh() -> None:
    UnitOfWork.instances.clear()


@pytest.mark.parametrize(("case", "dispatch", "error"), FAILURES, ids=[f[0] for f in FAILURES])
def test_sync_failures_leave_nothing_open(case: str, dispatch: Callable[[Any], Any], error: type) -> None:
    mediator = registry().build()
    with pytest.raises(error):
        dispatch(mediator)
    assert _current.get() is None
    assert all(uow.outcome == "rollback" for uow in UnitOfWork.instances), case
    if error in (NotAMessageError, HandlerNotFoundError, ValidationError, ValidatorError):
        assert issubclass(error, MediatorError)


async def _collect(items: Any) -> list[Any]:
    return [item async for item in items]


ASYNC_FAILURES: list[tuple[str, Callable[[Any], Any], type[BaseException]]] = [
    ("handler raises", lambda m: m.send(Fail()), RuntimeError),
    ("behaviour raises", lambda m: m.publish(Happened(what="x")), PermissionError),
    ("invalid message", lambda m: m.send(Add(value=1)), ValidationError),
    ("validator dependency fails", lambda m: m.ask(GetName(id=1)), ValidatorError),
    ("stream fails midway", lambda m: _collect(m.stream(Count(up_to=1))), LookupError),
]


@pytest.mark.parametrize(("case", "dispatch", "error"), ASYNC_FAILURES, ids=[f[0] for f in ASYNC_FAILURES])
def test_async_failures_leave_nothing_open(case: str, dispatch: Callable[[Any], Any], error: type) -> None:
    mediator = registry().build_async()

    async def main() -> None:
        with pytest.raises(error):
            await dispatch(mediator)
        assert _current.get() is None

    asyncio.run(main())
    assert all(uow.outcome == "rollback" for uow in UnitOfWork.instances), case


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
