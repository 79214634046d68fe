"""An event's handlers return None (an async one: a coroutine of None); mypy rejects any other result."""

from collections.abc import Awaitable

import attrs

from mediator import Event, Registry


@attrs.frozen(kw_only=True)
class Placed(Event):
    order: int


@attrs.frozen(kw_only=True)
class Shipped(Event):
    order: int


@attrs.frozen(kw_only=True)
class ShippedLate(Shipped):
    days: int


class Clock:
    pass


def on_placed(event: Placed) -> None:
    pass


async def on_placed_async(event: Placed) -> None:
    pass


def on_placed_with_dependency(event: Placed, clock: Clock) -> None:
    pass


def on_any_event(event: Event) -> None:
    pass


class OnPlaced:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def handle(self, event: Placed) -> None:
        pass


class OnPlacedAsync:
    async def handle(self, event: Placed) -> None:
        pass


def counts(event: Placed) -> int:
    return 1


async def counts_async(event: Placed) -> int:
    return 1


def counts_with_dependency(event: Placed, clock: Clock) -> int:
    return 1


def maybe_counts(event: Placed) -> int | None:
    return None


def on_shipped(event: Shipped) -> None:
    pass


def on_shipped_late(event: ShippedLate) -> None:
    pass


class Counts:
    def handle(self, event: Placed) -> int:
        return 1


class CountsAsync:
    async def handle(self, event: Placed) -> str:
        return ""


def accepted(registry: Registry) -> None:
    registry.handle(Placed).by(on_placed)
    registry.handle(Placed).by(on_placed_async)
    registry.handle(Placed).by(on_placed_with_dependency)
    registry.handle(Placed).by(on_any_event)
    registry.handle(Placed).by(OnPlaced)
    registry.handle(Placed).by(OnPlacedAsync)
    registry.handle(Placed).by(lambda event: None)
    registry.handle(ShippedLate).by(on_shipped)


def rejected(registry: Registry) -> None:
    registry.handle(Placed).by(counts)  # type: ignore[arg-type]
    registry.handle(Placed).by(counts_async)  # type: ignore[arg-type]
    registry.handle(Placed).by(counts_with_dependency)  # type: ignore[arg-type]
    registry.handle(Placed).by(maybe_counts)  # type: ignore[arg-type]
    registry.handle(Placed).by(Counts)  # type: ignore[arg-type]
    registry.handle(Placed).by(CountsAsync)  # type: ignore[arg-type]
    registry.handle(Placed).by(lambda event: 1)  # type: ignore[arg-type]
    registry.handle(Placed).by(on_shipped)  # type: ignore[arg-type]
    registry.handle(Shipped).by(on_shipped_late)  # type: ignore[arg-type]


def not_caught_by_mypy(registry: Registry) -> None:
    # A sync function annotated to return an awaitable looks to mypy like an async one; build() rejects it.
    def returns_awaitable(event: Placed) -> Awaitable[None] | None:
        return None

    registry.handle(Placed).by(returns_awaitable)
