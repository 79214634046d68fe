"""Streams start when first iterated; scopes and behaviours follow them to their end."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from mediator import AsyncMediator, ExceptionHooks, Handled, Logging, Registry, Validation, ValidationError

from .sample import Count, UnitOfWork, count, count_async


class Tracked:
    """A scoped resource that records its life."""

    log: list[str] = []

    def __enter__(self) -> "Tracked":
        Tracked.log.append("enter")
        return self

    def __exit__(self, *exc: object) -> None:
        Tracked.log.append("exit")


class AsyncTracked:
    log: list[str] = []

    def __init__(self) -> None:
        AsyncTracked.log.append("made")

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0)
        AsyncTracked.log.append("aexit")


class Broken:
    def __init__(self) -> None:
        raise OSError("dependency failed")


@pytest.fixture(autouse=True)
def _fresh_logs() -> None:
    Tracked.log.clear()
    AsyncTracked.log.clear()
    UnitOfWork.instances.clear()


async def collect(mediator: AsyncMediator, query: Count) -> list[int]:
    return [i async for i in mediator.stream(query)]


def tracked_count(query: Count, resource: Tracked) -> Iterator[int]:
    yield from range(query.up_to)


def test_a_stream_never_iterated_opens_nothing() -> None:
    reg = Registry()
    reg.scoped(Tracked)
    reg.handle(Count).by(tracked_count)
    reg.build().stream(Count(up_to=3))
    assert Tracked.log == []


def test_a_stream_opens_its_scope_on_first_item_and_closes_at_the_end() -> None:
    reg = Registry()
    reg.scoped(Tracked)
    reg.handle(Count).by(tracked_count)
    items = reg.build().stream(Count(up_to=2))
    assert next(items) == 0
    assert Tracked.log == ["enter"]
    assert list(items) == [1]
    assert Tracked.log == ["enter", "exit"]


def test_async_stream_whose_dependency_fails_raises_it_and_closes_the_async_scope() -> None:
    class Handler:
        def __init__(self, resource: AsyncTracked, broken: Broken) -> None:
            pass

        async def handle(self, query: Count) -> AsyncIterator[int]:
            yield 1

    reg = Registry()
    reg.scoped(AsyncTracked)
    reg.transient(Broken)
    reg.handle(Count).by(Handler)
    mediator = reg.build_async()

    async def main() -> None:
        async for _ in mediator.stream(Count(up_to=1)):
            pass

    with pytest.raises(OSError, match="dependency failed"):
        asyncio.run(main())
    assert AsyncTracked.log == ["made", "aexit"]


def test_async_stream_abandoned_with_aclosing_closes_its_scope_at_once() -> None:
    async def handler(query: Count, resource: AsyncTracked) -> AsyncIterator[int]:
        for i in range(query.up_to):
            yield i

    reg = Registry()
    reg.scoped(AsyncTracked)
    reg.handle(Count).by(handler)
    mediator = reg.build_async()

    async def main() -> None:
        async with contextlib.aclosing(mediator.stream(Count(up_to=10))) as items:  # type: ignore[type-var]
            async for item in items:
                if item == 1:
                    break
        assert AsyncTracked.log == ["made", "aexit"]

    asyncio.run(main())


def test_validation_runs_before_the_first_item_of_a_stream() -> None:
    ran: list[int] = []

    def handler(query: Count) -> Iterator[int]:
        ran.append(query.up_to)
        yield 1

    def positive(query: Count) -> list[tuple[str, str]]:
        return [] if query.up_to > 0 else [("up_to", "must be positive")]

    for build in ("sync", "async"):
        reg = Registry()
        reg.behaviour(Validation())
        reg.validate(Count, positive)
        reg.handle(Count).by(handler)
        if build == "sync":
            items = reg.build().stream(Count(up_to=0))
            with pytest.raises(ValidationError, match="must be positive"):
                next(items)
        else:
            with pytest.raises(ValidationError):
                asyncio.run(collect(reg.build_async(), Count(up_to=0)))
    assert ran == []


def test_logging_logs_a_stream_when_it_ends_with_its_item_count() -> None:
    for handler, is_async in ((count, False), (count_async, True)):
        reg = Registry()
        reg.behaviour(Logging())
        reg.handle(Count).by(handler)
        with capture_logs() as logs:
            if is_async:
                assert asyncio.run(collect(reg.build_async(), Count(up_to=3))) == [0, 1, 2]
            else:
                assert list(reg.build().stream(Count(up_to=3))) == [0, 1, 2]
        (entry,) = logs
        assert entry["kind"] == "stream"
        assert entry["items"] == 3
        assert entry["outcome"] == "ok"


def test_exception_hooks_can_replace_the_rest_of_a_failing_stream() -> None:
    def flaky(query: Count) -> Iterator[int]:
        yield 1
        raise ConnectionError("lost")

    def fallback(message: Any, exc: Exception) -> Handled:
        return Handled([98, 99])

    reg = Registry()
    reg.behaviour(ExceptionHooks())
    reg.on_exception(ConnectionError, fallback)
    reg.handle(Count).by(flaky)
    assert list(reg.build().stream(Count(up_to=1))) == [1, 98, 99]
