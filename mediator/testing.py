"""A kit for testing your own handlers and the code that uses a mediator.

``Recording`` is a behaviour that captures every dispatch (nested ones too) with
its result or error; ``recording_mediator`` builds a real mediator with it
outermost and any services replaced by fakes. ``MediatorStub`` stands in for
a mediator in code under test, answering with canned results.

>>> import attrs
>>> from mediator import Command, Registry
>>> @attrs.frozen(kw_only=True)
... class Greet(Command[str]):
...     name: str
>>> registry = Registry()
>>> registry.handle(Greet).by(lambda command: f"hello {command.name}")
>>> mediator, recording = recording_mediator(registry)
>>> mediator.send(Greet(name="ada"))
'hello ada'
>>> recording.commands
[Greet(name='ada')]
>>> recording.result_of(Greet)
'hello ada'
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar

import attrs

from ._errors import HandlerNotFoundError
from ._messages import Command, Event, Kind, Message, Query, StreamQuery, kind_of, qualname
from ._notify import PublishStrategy

if TYPE_CHECKING:
    from ._compile import Build
    from ._mediator import AsyncMediator, Mediator
    from ._registry import Registry
    from .readmodels import ReadModels

R = TypeVar("R")
T = TypeVar("T")
M = TypeVar("M", bound=Message)

_PENDING = object()


@attrs.define
class Dispatched:
    """One recorded dispatch: the message, its kind, and how it ended."""

    message: Any
    kind: Kind
    result: Any = _PENDING
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.result is not _PENDING or self.error is not None


class Recording:
    """A behaviour that records every dispatch it sees, in the order they started."""

    needs_scope = False

    def __init__(self) -> None:
        self.dispatched: list[Dispatched] = []

    def for_message(self, message_type: type, build: Build) -> _BoundRecording:
        kind = kind_of(message_type)
        assert kind is not None
        return _BoundRecording(self, kind)

    def _of(self, kind: Kind) -> list[Any]:
        return [d.message for d in self.dispatched if d.kind is kind]

    @property
    def commands(self) -> list[Any]:
        """Every command sent, nested ones included."""
        return self._of(Kind.COMMAND)

    @property
    def queries(self) -> list[Any]:
        """Every query asked (streams included)."""
        return self._of(Kind.QUERY) + self._of(Kind.STREAM)

    @property
    def events(self) -> list[Any]:
        """Every event published, once per publish, whether or not anything handles it."""
        return self._of(Kind.EVENT)

    def of_type(self, message_type: type[M]) -> list[M]:
        """Every recorded message of exactly ``message_type``."""
        return [d.message for d in self.dispatched if type(d.message) is message_type]

    def result_of(self, message_type: type[Command[R]] | type[Query[R]]) -> R:
        """The result of the last finished dispatch of ``message_type``; raise its error if it failed."""
        for d in reversed(self.dispatched):
            if type(d.message) is message_type and d.finished:
                if d.error is not None:
                    raise d.error
                return d.result  # type: ignore[no-any-return]
        raise LookupError(f"No {qualname(message_type)} was dispatched and finished.")

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.dispatched.clear()


class _BoundRecording:
    needs_scope = False

    def __init__(self, recording: Recording, kind: Kind) -> None:
        self.recording = recording
        self.kind = kind

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        entry = Dispatched(message, self.kind)
        self.recording.dispatched.append(entry)
        try:
            entry.result = next(message)
        except BaseException as exc:
            entry.error = exc
            raise
        return entry.result

    async def handle_async(self, message: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        entry = Dispatched(message, self.kind)
        self.recording.dispatched.append(entry)
        try:
            entry.result = await next(message)
        except BaseException as exc:
            entry.error = exc
            raise
        return entry.result

    def handle_stream(self, message: Any, next: Callable[[Any], Any]) -> Any:
        entry = Dispatched(message, self.kind)
        self.recording.dispatched.append(entry)
        try:
            entry.result = next(message)
        except BaseException as exc:
            entry.error = exc
            raise
        return entry.result


def _prepare(registry: Registry, fakes: Mapping[Any, object] | None) -> Recording:
    for service, fake in (fakes or {}).items():
        registry.override(service, fake)
    recording = Recording()
    registry.behaviour(recording, outermost=True)
    return recording


def recording_mediator(
    registry: Registry, *, fakes: Mapping[Any, object] | None = None
) -> tuple[Mediator, Recording]:
    """Build ``registry`` with a :class:`Recording` outermost and ``fakes`` replacing services."""
    recording = _prepare(registry, fakes)
    return registry.build(), recording


def recording_async_mediator(
    registry: Registry, *, fakes: Mapping[Any, object] | None = None
) -> tuple[AsyncMediator, Recording]:
    """The async twin of :func:`recording_mediator`."""
    recording = _prepare(registry, fakes)
    return registry.build_async(), recording


class MediatorStub:
    """Stands in for a :class:`~mediator.Mediator` in code under test.

    ``stub.on(GetPrice, 10)`` answers every ``GetPrice`` with 10;
    ``stub.on(GetPrice, lambda q: ...)`` computes the answer. Every message is
    recorded in ``stub.dispatched``; an unexpected one raises :class:`~mediator.HandlerNotFoundError`,
    as a mediator with no handler for it would.
    """

    def __init__(self) -> None:
        self.answers: dict[type, Callable[[Any], Any]] = {}
        self.dispatched: list[Any] = []

    def on(self, message_type: type[Message], answer: Any) -> Self:
        """Answer ``message_type`` with ``answer`` (or with ``answer(message)`` if it is callable)."""
        self.answers[message_type] = answer if callable(answer) else (lambda _m: answer)
        return self

    def _answer(self, message: Any) -> Any:
        self.dispatched.append(message)
        if isinstance(message, Event):
            handler = self.answers.get(type(message))
            return None if handler is None else handler(message)
        try:
            handler = self.answers[type(message)]
        except KeyError:
            raise HandlerNotFoundError(type(message), (
                f"MediatorStub has no answer for {qualname(type(message))}; add stub.on({type(message).__name__}, ...)."
            )) from None
        return handler(message)

    def send(self, command: Command[R], /) -> R:
        return self._answer(command)  # type: ignore[no-any-return]

    def ask(self, query: Query[R], /) -> R:
        return self._answer(query)  # type: ignore[no-any-return]

    def stream(self, query: StreamQuery[T], /) -> Iterator[T]:
        return iter(self._answer(query))

    def publish(self, event: Event, /, *, strategy: PublishStrategy | None = None) -> None:
        self._answer(event)


class AsyncMediatorStub(MediatorStub):
    """The async twin of :class:`MediatorStub`."""

    async def _answer_async(self, message: Any) -> Any:
        result = self._answer(message)
        if isinstance(result, Awaitable):
            return await result
        return result

    def send(self, command: Command[R], /) -> Coroutine[Any, Any, R]:  # type: ignore[override]
        return self._answer_async(command)

    def ask(self, query: Query[R], /) -> Coroutine[Any, Any, R]:  # type: ignore[override]
        return self._answer_async(query)

    def stream(self, query: StreamQuery[T], /) -> AsyncIterator[T]:  # type: ignore[override]
        async def items() -> AsyncIterator[T]:
            for item in self._answer(query):
                yield item

        return items()

    def publish(  # type: ignore[override]
        self, event: Event, /, *, strategy: PublishStrategy | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._answer_async(event)


class Clock:
    """A wall clock that moves only when a test moves it: give it to the engine (``ReadModels(..., clock=clock)``)
    and an idempotency record expires, or a scheduled command falls due, without the test sleeping.

    >>> clock = Clock(start=1_000.0)
    >>> clock()
    1000.0
    >>> clock.advance(minutes=15)
    >>> clock()
    1900.0
    """

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0, days: float = 0.0) -> None:
        """Move the clock forward (a negative total moves it back, as a corrected system clock does)."""
        self.now += seconds + 60.0 * minutes + 3_600.0 * hours + 86_400.0 * days

    def __repr__(self) -> str:
        return f"Clock(now={self.now!r})"


def settle(engine: ReadModels) -> int:
    """Run everything the commands so far led to, until there is nothing left to do: every background and worker
    projection, any rebuild, every process manager's steps, and the scheduled commands due by the engine's clock
    (given the mediator to dispatch them, ``engine.dispatch_with(mediator)``), with whatever those lead to in
    turn.

    Deterministic, in the calling thread, with parked events retried at once instead of after their backoff, so a
    failing event is parked by the time it returns. A scheduled command or a process step that fails waits for
    its next try by the clock: move a :class:`Clock` on and settle again. Returns how many events were dealt
    with.
    """
    total = 0
    while True:
        engine.schedules.look_again()
        fired = engine.schedules.fire_due() if engine.schedules.due() else 0
        stepped = engine.processes.run()
        done = engine.catch_up(ignore_backoff=True)
        total += done
        if not done and not fired and not stepped and not engine.rebuilding:
            return total


def settle_after(engine: ReadModels) -> Callable[[Any], None]:
    """An httpx response hook that settles ``engine`` after each request, for tests of an HTTP embedding served
    in the test's process: the next request sees everything the last one led to (projections, process steps,
    scheduled commands due by the engine's clock), with no ``X-Consistent-With`` and no sleeping.

    ``httpx.Client(..., event_hooks={"response": [settle_after(engine)]})``; for an ``httpx.AsyncClient`` use
    :func:`asettle_after`.
    """
    def hook(response: Any) -> None:
        settle(engine)

    return hook


def asettle_after(engine: ReadModels) -> Callable[[Any], Awaitable[None]]:
    """:func:`settle_after` for an ``httpx.AsyncClient`` (the settling runs in a worker thread, off the loop the
    application serves on)."""
    import asyncio

    async def hook(response: Any) -> None:
        await asyncio.to_thread(settle, engine)

    return hook


def assert_settled(engine: ReadModels) -> None:
    """Fail unless every projection has reached the head of the log and nothing is parked."""
    behind = [lag for lag in engine.lag() if lag.positions_behind or lag.rebuilding]
    parked = engine.dead_letters()
    if behind or parked:
        lines = [f"{lag.projection} g{lag.generation} is {lag.positions_behind} behind" for lag in behind]
        lines += [f"{d.projection} parked position {d.position} ({d.status}): {d.reason}" for d in parked]
        raise AssertionError("Read models are not settled:\n  " + "\n  ".join(lines))


__all__ = [
    "AsyncMediatorStub",
    "Clock",
    "Dispatched",
    "MediatorStub",
    "Recording",
    "asettle_after",
    "assert_settled",
    "recording_async_mediator",
    "recording_mediator",
    "settle",
    "settle_after",
]
