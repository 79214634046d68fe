"""Lifetimes, dispatch scopes and the dispatch context.

No ``from __future__ import annotations`` here: several handlers depend on
classes local to a test, which only eagerly evaluated annotations can name.
"""

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from mediator import (
    AsyncMediator,
    DispatchContext,
    Lifetime,
    Mediator,
    Registry,
    ScopeError,
    current_context,
)

from .sample import Add, Count, Fail, GetName, Happened, UnitOfWork


@pytest.fixture(autouse=True)
def _forget_units_of_work() -> Iterator[None]:
    UnitOfWork.instances.clear()
    yield
    UnitOfWork.instances.clear()


def uow_handler(command: Add, uow: UnitOfWork) -> int:
    assert uow.entered
    return command.value


def uow_failing(command: Fail, uow: UnitOfWork) -> None:
    raise RuntimeError(command.reason)


def test_scoped_service_is_entered_and_committed_when_the_dispatch_succeeds() -> None:
    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Add).by(uow_handler)
    reg.build().send(Add(value=1))
    (uow,) = UnitOfWork.instances
    assert uow.outcome == "commit"


def test_scoped_service_rolls_back_when_the_handler_raises() -> None:
    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Fail).by(uow_failing)
    with pytest.raises(RuntimeError):
        reg.build().send(Fail())
    (uow,) = UnitOfWork.instances
    assert uow.outcome == "rollback"


def test_each_root_dispatch_gets_its_own_scope() -> None:
    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Add).by(uow_handler)
    mediator = reg.build()
    mediator.send(Add(value=1))
    mediator.send(Add(value=2))
    assert len(UnitOfWork.instances) == 2


class Outer:
    """A handler that dispatches a nested command in the same scope."""

    def __init__(self, mediator: Mediator, uow: UnitOfWork) -> None:
        self.mediator = mediator
        self.uow = uow

    def handle(self, query: GetName) -> str:
        inner = self.mediator.send(Add(value=query.id))
        return f"{inner}:{id(self.uow)}"


def test_nested_dispatch_shares_the_scope_and_the_correlation_id() -> None:
    seen: list[tuple[str, str | None, int]] = []

    def inner(command: Add, uow: UnitOfWork, ctx: DispatchContext) -> int:
        seen.append((ctx.correlation_id, ctx.causation_id, id(uow)))
        return ctx.depth

    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Add).by(inner)
    reg.handle(GetName).by(Outer)
    mediator = reg.build()

    def outer_ids(query: GetName) -> Any:
        return None

    answer = mediator.ask(GetName(id=1))
    depth, uow_id = answer.split(":")
    assert depth == "1"
    assert len(UnitOfWork.instances) == 1
    assert seen[0][2] == int(uow_id)
    assert seen[0][1] is not None  # caused by the outer query's message id
    assert UnitOfWork.instances[0].outcome == "commit"


def test_a_handler_that_dispatches_opens_a_scope_its_nested_dispatches_share() -> None:
    class TwoSteps:
        """Depends on nothing scoped itself, only on the mediator."""

        def __init__(self, mediator: Mediator) -> None:
            self.mediator = mediator

        def handle(self, query: GetName) -> str:
            self.mediator.send(Add(value=1))
            self.mediator.send(Add(value=2))
            return "ok"

    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Add).by(uow_handler)
    reg.handle(GetName).by(TwoSteps)
    mediator = reg.build()
    assert mediator.explain(GetName).opens_scope
    mediator.ask(GetName(id=1))
    (uow,) = UnitOfWork.instances
    assert uow.outcome == "commit"


def test_nested_failure_caught_by_the_outer_handler_does_not_close_the_scope_early() -> None:
    class Tolerant:
        def __init__(self, mediator: Mediator, uow: UnitOfWork) -> None:
            self.mediator = mediator
            self.uow = uow

        def handle(self, command: Add) -> int:
            with contextlib.suppress(RuntimeError):
                self.mediator.send(Fail())
            assert self.uow.outcome is None
            return 0

    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Fail).by(uow_failing)
    reg.handle(Add).by(Tolerant)
    reg.build().send(Add(value=1))
    (uow,) = UnitOfWork.instances
    assert uow.outcome == "commit"


def test_explicit_scope_is_joined_by_every_dispatch_inside_it() -> None:
    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Add).by(uow_handler)
    mediator = reg.build()
    with mediator.scope(correlation_id="req-1", principal="alice") as ctx:
        mediator.send(Add(value=1))
        mediator.send(Add(value=2))
        assert ctx.correlation_id == "req-1"
        assert ctx.principal == "alice"
        assert UnitOfWork.instances[0].outcome is None
    (uow,) = UnitOfWork.instances
    assert uow.outcome == "commit"


def test_explicit_scope_rolls_back_on_error() -> None:
    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Add).by(uow_handler)
    mediator = reg.build()
    with pytest.raises(ValueError, match="request failed"), mediator.scope():  # noqa: PT012
        mediator.send(Add(value=1))
        raise ValueError("request failed")
    assert UnitOfWork.instances[0].outcome == "rollback"


def test_context_carries_principal_and_ids_into_handlers() -> None:
    def handler(command: Add, ctx: DispatchContext) -> int:
        assert ctx.principal == "bob"
        assert ctx.correlation_id == "corr"
        assert ctx.causation_id == "cause"
        assert ctx.message is command
        assert current_context() is ctx
        return 1

    reg = Registry()
    reg.handle(Add).by(handler)
    mediator = reg.build()
    with mediator.scope(correlation_id="corr", causation_id="cause", principal="bob"):
        assert mediator.send(Add(value=1)) == 1


def test_current_context_outside_a_dispatch_is_a_scope_error() -> None:
    with pytest.raises(ScopeError, match="No dispatch scope is open"):
        current_context()


def test_scope_closes_resources_newest_first_and_reports_a_failing_close() -> None:
    closed: list[str] = []

    class First:
        def close(self) -> None:
            closed.append("first")
            raise OSError("first close failed")

    class Second:
        def close(self) -> None:
            closed.append("second")

    def handler(command: Add, first: First, second: Second) -> int:
        return 1

    reg = Registry()
    reg.scoped(First)
    reg.scoped(Second)
    reg.handle(Add).by(handler)
    with pytest.raises(OSError, match="first close failed"):
        reg.build().send(Add(value=1))
    assert closed == ["second", "first"]


def test_transient_dependency_is_new_per_dispatch_scoped_shared_within() -> None:
    class Clock:
        pass

    class Service:
        def __init__(self, uow: UnitOfWork, clock: Clock) -> None:
            self.uow = uow
            self.clock = clock

    made: list[Service] = []

    def handler(command: Add, a: Service, b: Service) -> int:
        made.extend((a, b))
        return 0

    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.transient(Clock)
    reg.transient(Service)
    reg.handle(Add).by(handler)
    reg.build().send(Add(value=1))
    a, b = made
    assert a is not b
    assert a.uow is b.uow
    assert a.clock is not b.clock


def test_scope_is_closed_when_the_validator_dependency_fails() -> None:
    class Lookup:
        def __init__(self, uow: UnitOfWork) -> None:
            self.uow = uow

        def validate(self, command: Add) -> list[tuple[str, str]]:
            raise ConnectionError("database down")

    from mediator import Validation, ValidatorError

    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.behaviour(Validation())
    reg.validate(Add, Lookup)
    reg.handle(Add).by(uow_handler)
    with pytest.raises(ValidatorError, match="database down") as info:
        reg.build().send(Add(value=1))
    assert isinstance(info.value.__cause__, ConnectionError)
    (uow,) = UnitOfWork.instances
    assert uow.outcome == "rollback"


def test_stream_scope_stays_open_while_iterating_and_closes_at_the_end() -> None:
    def handler(query: Count, uow: UnitOfWork) -> Iterator[int]:
        for i in range(query.up_to):
            assert uow.outcome is None
            assert current_context().message is query
            yield i

    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Count).by(handler)
    items = reg.build().stream(Count(up_to=3))
    assert next(items) == 0
    assert UnitOfWork.instances[0].outcome is None
    assert list(items) == [1, 2]
    assert UnitOfWork.instances[0].outcome == "commit"


def test_stream_scope_closes_when_the_consumer_stops_early() -> None:
    def handler(query: Count, uow: UnitOfWork) -> Iterator[int]:
        yield from range(query.up_to)

    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.handle(Count).by(handler)
    items = reg.build().stream(Count(up_to=10))
    next(items)
    items.close()  # type: ignore[attr-defined]
    assert UnitOfWork.instances[0].outcome == "commit"


class AsyncUnitOfWork:
    instances: "list[AsyncUnitOfWork]" = []

    def __init__(self) -> None:
        self.outcome: str | None = None
        AsyncUnitOfWork.instances.append(self)

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await asyncio.sleep(0)
        self.outcome = "rollback" if exc_type else "commit"


def test_async_scope_awaits_async_exit_and_shares_across_nested_dispatches() -> None:
    AsyncUnitOfWork.instances.clear()

    class Outer:
        def __init__(self, mediator: AsyncMediator, uow: AsyncUnitOfWork) -> None:
            self.mediator = mediator
            self.uow = uow

        async def handle(self, query: GetName) -> str:
            await self.mediator.send(Add(value=1))
            return "ok"

    async def inner(command: Add, uow: AsyncUnitOfWork) -> int:
        return 1

    async def failing(command: Fail, uow: AsyncUnitOfWork) -> None:
        raise RuntimeError("no")

    reg = Registry()
    reg.scoped(AsyncUnitOfWork)
    reg.handle(Add).by(inner)
    reg.handle(GetName).by(Outer)
    reg.handle(Fail).by(failing)
    mediator = reg.build_async()
    assert asyncio.run(mediator.ask(GetName(id=1))) == "ok"
    assert [u.outcome for u in AsyncUnitOfWork.instances] == ["commit"]
    with pytest.raises(RuntimeError):
        asyncio.run(mediator.send(Fail()))
    assert [u.outcome for u in AsyncUnitOfWork.instances] == ["commit", "rollback"]


def test_async_explicit_scope_is_shared_by_concurrent_tasks() -> None:
    AsyncUnitOfWork.instances.clear()

    async def handler(command: Add, uow: AsyncUnitOfWork) -> int:
        await asyncio.sleep(0)
        return id(uow)

    reg = Registry()
    reg.scoped(AsyncUnitOfWork)
    reg.handle(Add).by(handler)
    mediator = reg.build_async()

    async def main() -> set[int]:
        async with mediator.scope(principal="p"):
            ids = await asyncio.gather(*(mediator.send(Add(value=i)) for i in range(5)))
        return set(ids)

    assert len(asyncio.run(main())) == 1
    assert [u.outcome for u in AsyncUnitOfWork.instances] == ["commit"]


def test_scoped_handler_class_is_one_instance_per_scope() -> None:
    made: list[object] = []

    class Handler:
        def __init__(self) -> None:
            made.append(self)

        def handle(self, event: Happened) -> None:
            pass

    reg = Registry()
    reg.handle(Happened).by(Handler, lifetime=Lifetime.SCOPED)
    mediator = reg.build()
    with mediator.scope():
        mediator.publish(Happened(what="a"))
        mediator.publish(Happened(what="b"))
    mediator.publish(Happened(what="c"))
    assert len(made) == 2


@pytest.mark.parametrize("context_manager", [False, True], ids=["plain", "context manager"])
def test_threads_sharing_one_scope_get_one_scoped_instance(context_manager: bool) -> None:
    # A class that is a context manager is made by the compiled getter itself, anything else by Scope._make: both
    # must let one thread make the instance while the others wait for it, and exit it once.
    import contextvars
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    made: list[object] = []
    exited: list[object] = []
    lock = threading.Lock()

    class Session:
        def __init__(self) -> None:
            time.sleep(0.02)  # widen the window in which two threads could both create one
            with lock:
                made.append(self)

    class ManagedSession(Session):
        def __enter__(self) -> "ManagedSession":
            return self

        def __exit__(self, *exc: object) -> None:
            exited.append(self)

    def handler(query: GetName, session: Session) -> str:
        return str(id(session))

    reg = Registry()
    reg.scoped(Session, ManagedSession if context_manager else Session)
    reg.handle(GetName).by(handler)
    mediator = reg.build()
    with mediator.scope():
        ctx = contextvars.copy_context()
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda _: ctx.copy().run(mediator.ask, GetName(id=1)), range(8)))
        assert exited == []
    assert len(made) == 1
    assert len(set(ids)) == 1
    assert exited == (made if context_manager else [])


def test_what_a_scoped_resource_dispatches_on_exit_joins_the_dispatch() -> None:
    seen: list[tuple[str, str | None]] = []

    class Publishing:
        """A unit of work that publishes an event when it commits."""

        def __init__(self, mediator: Mediator) -> None:
            self.mediator = mediator

        def __enter__(self) -> "Publishing":
            return self

        def __exit__(self, *exc: object) -> None:
            self.mediator.publish(Happened(what="committed"))

    def on_committed(event: Happened, ctx: DispatchContext) -> None:
        seen.append((ctx.correlation_id, ctx.causation_id))

    def handler(command: Add, uow: Publishing, ctx: DispatchContext) -> int:
        seen.append((ctx.correlation_id, ctx.message_id))
        return 1

    reg = Registry()
    reg.scoped(Publishing)
    reg.handle(Add).by(handler)
    reg.handle(Happened).by(on_committed)
    reg.build().send(Add(value=1))
    (correlation, message_id), (event_correlation, cause) = seen
    assert event_correlation == correlation
    assert cause == message_id


def test_ids_are_random_version_4_uuids_in_hex() -> None:
    import uuid

    from mediator._context import new_id

    made = {new_id() for _ in range(2000)}
    assert len(made) == 2000
    for value in made:
        parsed = uuid.UUID(hex=value)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, value)
    # every bit outside the version and variant is random: each hex digit position takes many values
    for position in (0, 5, 13, 20, 31):
        assert len({value[position] for value in made}) == 16


def test_event_ids_are_version_7_uuids_in_hex_ordered_by_time() -> None:
    import uuid

    from mediator._context import new_event_id

    clock = iter(range(1_700_000_000_000_000_000, 1_700_000_000_000_000_000 + 5_000_000_000, 1_000_000))
    made = [new_event_id(clock=lambda: next(clock)) for _ in range(2000)]  # one a millisecond
    assert len(set(made)) == 2000
    assert made == sorted(made)  # later ids sort after earlier ones: appended at one end of the log's index
    for value in made:
        parsed = uuid.UUID(hex=value)
        assert (parsed.version, parsed.variant, parsed.hex) == (7, uuid.RFC_4122, value)
    assert int(made[0][:12], 16) == 1_700_000_000_000  # the first 48 bits are the Unix milliseconds
    same_millisecond = {new_event_id(clock=lambda: 1_700_000_000_000_000_000) for _ in range(500)}
    assert len(same_millisecond) == 500  # and the rest is random
    for position in (13, 20, 31):
        assert len({value[position] for value in same_millisecond}) == 16


# --- a handler whose scoped context managers its entry makes inline (_pipeline.scoped_inline) ---------------------

class Journal:
    """A scoped context manager with no dependencies, recording into a shared log."""

    log: list[tuple[str, Any]] = []

    def __enter__(self) -> "Journal":
        Journal.log.append(("enter", self))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        Journal.log.append(("exit", exc))


class Bare:
    """A context manager whose ``__enter__`` returns None: the scope's instance is the object itself."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        pass


class NeedsJournal:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal


@pytest.fixture
def journal_log() -> list[tuple[str, Any]]:
    Journal.log = []
    return Journal.log


def _is_inline(mediator: Any, message_type: type) -> bool:
    entry = mediator._commands[message_type]
    return "scoped dispatch" in entry.__code__.co_filename


def test_inline_scoped_dependency_is_entered_before_and_exited_after_the_handler(journal_log: list[Any]) -> None:
    seen: list[Any] = []

    def handler(command: Add, journal: Journal, bare: Bare) -> int:
        seen.extend((journal, bare, current_context().scope.get(Journal), current_context().scope.get(Bare)))
        assert journal_log[-1] == ("enter", journal)
        return command.value

    reg = Registry()
    reg.scoped(Journal)
    reg.scoped(Bare)
    reg.handle(Add).by(handler)
    mediator = reg.build()
    assert _is_inline(mediator, Add)
    assert mediator.send(Add(value=3)) == 3
    journal, bare, scoped_journal, scoped_bare = seen
    assert scoped_journal is journal
    assert isinstance(bare, Bare)
    assert scoped_bare is bare
    assert journal_log == [("enter", journal), ("exit", None)]
    mediator.send(Add(value=4))
    assert seen[4] is not journal  # a scope, and a journal, per root dispatch


def test_inline_scoped_dependency_is_exited_with_the_handlers_exception(journal_log: list[Any]) -> None:
    def handler(command: Fail, journal: Journal) -> None:
        if command.reason == "with a callback":
            current_context().scope.on_exit(lambda exc: journal_log.append(("callback", exc)))
        raise RuntimeError(command.reason)

    reg = Registry()
    reg.scoped(Journal)
    reg.handle(Fail).by(handler)
    mediator = reg.build()
    assert _is_inline(mediator, Fail)
    with pytest.raises(RuntimeError, match="boom") as raised:
        mediator.send(Fail(reason="boom"))
    assert [what for what, _ in journal_log] == ["enter", "exit"]
    assert journal_log[1][1] is raised.value
    journal_log.clear()
    with pytest.raises(RuntimeError, match="with a callback") as raised:
        mediator.send(Fail(reason="with a callback"))
    assert [what for what, _ in journal_log] == ["enter", "callback", "exit"]  # newest first, the journal last
    assert journal_log[1][1] is raised.value
    assert journal_log[2][1] is raised.value


def test_inline_scope_closes_everything_the_handler_added_newest_first(journal_log: list[Any]) -> None:
    def handler(command: Add, journal: Journal, uow: UnitOfWork) -> int:
        current_context().scope.on_exit(lambda exc: journal_log.append(("callback", exc)))
        return 1

    def make_uow() -> UnitOfWork:  # a factory, not a class: made through the scope's getter, after Journal
        return UnitOfWork()

    reg = Registry()
    reg.scoped(Journal)
    reg.scoped(UnitOfWork, make_uow)
    reg.handle(Add).by(handler)
    mediator = reg.build()
    assert _is_inline(mediator, Add)
    mediator.send(Add(value=1))
    assert [what for what, _ in journal_log] == ["enter", "callback", "exit"]
    (uow,) = UnitOfWork.instances
    assert uow.outcome == "commit"


def test_inline_scope_is_shared_with_dependencies_and_nested_dispatches(journal_log: list[Any]) -> None:
    seen: list[Any] = []

    def inner(query: GetName, journal: Journal) -> str:
        seen.append(journal)
        return "inner"

    def outer(command: Add, journal: Journal, again: Journal, needs: NeedsJournal, mediator: Mediator) -> int:
        seen.extend((journal, again, needs.journal))
        assert mediator.ask(GetName(id=1)) == "inner"
        return 0

    reg = Registry()
    reg.scoped(Journal)
    reg.transient(NeedsJournal)
    reg.handle(Add).by(outer)
    reg.handle(GetName).by(inner)
    mediator = reg.build()
    assert _is_inline(mediator, Add)
    mediator.send(Add(value=1))
    first, *others = seen
    assert all(o is first for o in others)
    assert len(others) == 3
    assert journal_log == [("enter", first), ("exit", None)]


def test_inline_transient_handler_class_gets_its_scoped_dependency(journal_log: list[Any]) -> None:
    class Handler:
        def __init__(self, journal: Journal) -> None:
            self.journal = journal

        def handle(self, command: Add) -> int:
            assert journal_log == [("enter", self.journal)]
            return command.value * 2

    reg = Registry()
    reg.scoped(Journal)
    reg.handle(Add).by(Handler, lifetime=Lifetime.TRANSIENT)
    mediator = reg.build()
    assert _is_inline(mediator, Add)
    assert mediator.send(Add(value=2)) == 4
    assert [what for what, _ in journal_log] == ["enter", "exit"]


def test_inline_scope_exits_what_it_entered_when_a_later_dependency_fails(journal_log: list[Any]) -> None:
    class Broken:
        def __enter__(self) -> "Broken":
            raise ConnectionError("down")

        def __exit__(self, *exc: object) -> None:
            raise AssertionError("never entered, never exited")

    def handler(command: Add, journal: Journal, broken: Broken) -> int:
        raise AssertionError("not reached")

    reg = Registry()
    reg.scoped(Journal)
    reg.scoped(Broken)
    reg.handle(Add).by(handler)
    mediator = reg.build()
    with pytest.raises(ConnectionError):
        mediator.send(Add(value=1))
    assert [what for what, _ in journal_log] == ["enter", "exit"]
    assert isinstance(journal_log[1][1], ConnectionError)


def test_inline_scope_on_the_async_mediator(journal_log: list[Any]) -> None:
    async def handler(command: Add, journal: Journal) -> int:
        await asyncio.sleep(0)
        assert current_context().scope.get(Journal) is journal
        return command.value

    def sync_handler(query: GetName, journal: Journal) -> str:
        return "sync"

    async def failing(command: Fail, journal: Journal) -> None:
        raise RuntimeError(command.reason)

    reg = Registry()
    reg.scoped(Journal)
    reg.handle(Add).by(handler)
    reg.handle(GetName).by(sync_handler)
    reg.handle(Fail).by(failing)
    mediator = reg.build_async()
    assert _is_inline(mediator, Add)

    async def main() -> None:
        assert await mediator.send(Add(value=5)) == 5
        assert await mediator.ask(GetName(id=1)) == "sync"
        with pytest.raises(RuntimeError, match="late"):
            await mediator.send(Fail(reason="late"))
        async with mediator.scope():  # an explicit scope: every dispatch joins it
            await mediator.send(Add(value=1))
            await mediator.ask(GetName(id=1))

    asyncio.run(main())
    assert [what for what, _ in journal_log] == ["enter", "exit"] * 3 + ["enter", "exit"]
    assert isinstance(journal_log[5][1], RuntimeError)
