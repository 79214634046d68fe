"""publish: every handler, base-class handlers on request, three strategies."""

import asyncio
from collections.abc import Set

import pytest

from mediator import PublishStrategy, Registry

from .sample import Happened, SpecialHappened


def build(strategy: PublishStrategy = PublishStrategy.STOP_ON_FIRST_ERROR, *, fail_at: Set[int] = frozenset(),
          include_bases: bool = False) -> tuple[Registry, list[str]]:
    ran: list[str] = []
    reg = Registry(publish=strategy, include_base_event_handlers=include_bases)
    for index in range(3):
        def handler(event: Happened, index: int = index) -> None:
            ran.append(f"{index}:{event.what}")
            if index in fail_at:
                raise ValueError(f"handler {index} failed")

        reg.handle(Happened).by(handler)
    return reg, ran


def test_publish_runs_every_handler_in_registration_order() -> None:
    reg, ran = build()
    reg.build().publish(Happened(what="x"))
    assert ran == ["0:x", "1:x", "2:x"]


def test_publish_with_no_handlers_is_fine() -> None:
    Registry().build().publish(Happened(what="nobody listens"))


def test_stop_on_first_error_skips_later_handlers() -> None:
    reg, ran = build(fail_at={1})
    with pytest.raises(ValueError, match="handler 1 failed"):
        reg.build().publish(Happened(what="x"))
    assert ran == ["0:x", "1:x"]


def test_run_all_runs_everyone_and_raises_every_failure_together() -> None:
    reg, ran = build(PublishStrategy.RUN_ALL, fail_at={0, 2})
    with pytest.raises(ExceptionGroup) as info:
        reg.build().publish(Happened(what="x"))
    assert ran == ["0:x", "1:x", "2:x"]
    assert [str(e) for e in info.value.exceptions] == ["handler 0 failed", "handler 2 failed"]
    assert "2 of 3 handlers of tests.mediator.sample.Happened failed" in str(info.value)


def test_strategy_can_be_chosen_per_publish() -> None:
    reg, ran = build(fail_at={0})
    mediator = reg.build()
    with pytest.raises(ExceptionGroup):
        mediator.publish(Happened(what="x"), strategy=PublishStrategy.RUN_ALL)
    assert ran == ["0:x", "1:x", "2:x"]


def test_concurrent_runs_handlers_at_once_and_isolates_failures() -> None:
    ran: list[str] = []
    reg = Registry(publish=PublishStrategy.CONCURRENT)
    gate = asyncio.Event()

    async def waits(event: Happened) -> None:
        await gate.wait()
        ran.append("waited")

    async def opens(event: Happened) -> None:
        gate.set()
        ran.append("opened")

    async def fails(event: Happened) -> None:
        raise ValueError("bad")

    for handler in (waits, opens, fails):
        reg.handle(Happened).by(handler)
    mediator = reg.build_async()

    async def main() -> None:
        gate.clear()
        await mediator.publish(Happened(what="x"))

    with pytest.raises(ExceptionGroup) as info:
        asyncio.run(main())
    assert ran == ["opened", "waited"]  # waits could only finish because opens ran concurrently
    assert [str(e) for e in info.value.exceptions] == ["bad"]


def test_async_sequential_strategies_behave_like_the_sync_ones() -> None:
    reg, ran = build(PublishStrategy.RUN_ALL, fail_at={1})
    with pytest.raises(ExceptionGroup):
        asyncio.run(reg.build_async().publish(Happened(what="y")))
    assert ran == ["0:y", "1:y", "2:y"]


def test_subclass_event_runs_base_handlers_only_when_asked() -> None:
    reg, ran = build()
    reg.handle(SpecialHappened).by(lambda event: ran.append("special"))
    reg.build().publish(SpecialHappened(what="s"))
    assert ran == ["special"]

    reg, ran = build(include_bases=True)
    reg.handle(SpecialHappened).by(lambda event: ran.append("special"))
    reg.build().publish(SpecialHappened(what="s"))
    assert ran == ["special", "0:s", "1:s", "2:s"]


def test_subclass_without_own_handlers_reaches_base_handlers_when_asked() -> None:
    reg, ran = build(include_bases=True)
    mediator = reg.build()
    mediator.publish(SpecialHappened(what="s"))
    mediator.publish(SpecialHappened(what="t"))
    assert ran == ["0:s", "1:s", "2:s", "0:t", "1:t", "2:t"]


def test_publishing_a_command_is_refused() -> None:
    from mediator import NotAMessageError

    from .sample import Add

    with pytest.raises(NotAMessageError, match="use send"):
        Registry().build().publish(Add(value=1))  # type: ignore[arg-type]


def test_concurrent_per_publish_on_the_sync_mediator_is_refused() -> None:
    from mediator import WiringError

    reg, _ = build()
    with pytest.raises(WiringError, match="CONCURRENT needs the async mediator"):
        reg.build().publish(Happened(what="x"), strategy=PublishStrategy.CONCURRENT)
