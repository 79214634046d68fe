"""``@handles`` is checked as ``registry.handle(X).by(handler)`` is, and leaves the handler usable as itself."""

from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, assert_type

import attrs

from mediator import Command, Event, Lifetime, Query, Registry, StreamQuery, handles


@attrs.frozen(kw_only=True)
class PlaceOrder(Command[int]):
    customer: str


@attrs.frozen(kw_only=True)
class PlaceRushOrder(Command[int]):
    customer: str


@attrs.frozen(kw_only=True)
class Rename(Command[str]):
    name: str


@attrs.frozen(kw_only=True)
class FindTotal(Query[float | None]):
    order: int


@attrs.frozen(kw_only=True)
class Count(StreamQuery[int]):
    up_to: int


@attrs.frozen(kw_only=True)
class Placed(Event):
    order: int


@attrs.frozen(kw_only=True)
class Cancelled(Event):
    order: int


@attrs.frozen(kw_only=True)
class Shipped(Event):
    order: int


@attrs.frozen(kw_only=True)
class Paid(Event):
    order: int


@attrs.frozen(kw_only=True)
class Refunded(Event):
    order: int


class Clock:
    def now(self) -> float:
        return 0.0


# -- accepted, and still typed as themselves ---------------------------------------------------------------------


@handles(PlaceOrder)
def place(command: PlaceOrder) -> int:
    return 1


@handles(PlaceOrder)
def place_with_dependency(command: PlaceOrder, clock: Clock) -> int:
    return 1


@handles(PlaceOrder)
async def place_async(command: PlaceOrder) -> int:
    return 1


@handles(PlaceOrder, lifetime=Lifetime.SCOPED)
class PlaceHandler:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def handle(self, command: PlaceOrder) -> int:
        return 1


@handles(PlaceOrder)
class AsyncPlaceHandler:
    async def handle(self, command: PlaceOrder) -> int:
        return 1


@handles(FindTotal)
def find_total(query: FindTotal) -> float | None:
    return None


@handles(FindTotal)
def find_total_always(query: FindTotal) -> float:
    return 1.0


@handles(Count)
def count(query: Count) -> Iterator[int]:
    yield 1


@handles(Count)
async def count_async(query: Count) -> AsyncIterator[int]:
    yield 1


@handles(Count)
class CountHandler:
    def handle(self, query: Count) -> Iterator[int]:
        yield 1


@handles(Placed)
def on_placed(event: Placed) -> None:
    pass


@handles(Placed)
async def on_placed_async(event: Placed) -> None:
    pass


@handles(Placed)
def on_any_event(event: Event) -> None:
    pass


@handles(Placed)
class OnPlaced:
    async def handle(self, event: Placed) -> None:
        pass


@handles(Placed, Cancelled)
def on_placed_or_cancelled(event: Placed | Cancelled) -> None:
    pass


@handles(Placed, Cancelled, Shipped)
def on_three(event: Placed | Cancelled | Shipped) -> None:
    pass


@handles(Placed, Cancelled, Shipped, Paid)
class OnFour:
    def handle(self, event: Event) -> None:
        pass


@handles(PlaceOrder, PlaceRushOrder)
def place_either(command: PlaceOrder | PlaceRushOrder) -> int:
    return 1


async def usable_as_themselves(clock: Clock) -> None:
    assert_type(place(PlaceOrder(customer="c")), int)
    assert_type(place_with_dependency(PlaceOrder(customer="c"), clock=clock), int)
    assert_type(await place_async(PlaceOrder(customer="c")), int)
    assert_type(PlaceHandler, type[PlaceHandler])
    assert_type(PlaceHandler(clock).clock, Clock)
    assert_type(AsyncPlaceHandler, type[AsyncPlaceHandler])
    assert_type(find_total_always(FindTotal(order=1)), float | None)
    assert_type(count(Count(up_to=1)), Iterator[int])
    assert_type(count_async(Count(up_to=1)), AsyncIterator[int])
    assert_type(CountHandler, type[CountHandler])
    assert_type(on_placed, Callable[[Placed], None])
    assert_type(on_placed_async, Callable[[Placed], Coroutine[Any, Any, None]])
    assert_type(OnPlaced, type[OnPlaced])
    assert_type(on_placed_or_cancelled, Callable[[Placed | Cancelled], None])
    assert_type(OnFour, type[OnFour])


def still_registrable(registry: Registry) -> None:
    registry.handle(PlaceOrder).by(place)
    registry.handle(PlaceOrder).by(PlaceHandler)
    registry.handle(Placed).by(on_placed_or_cancelled)
    registry.scan(__name__)


# -- rejected -----------------------------------------------------------------------------------------------------


def wrong_result(command: PlaceOrder) -> str:
    return ""


async def wrong_result_async(command: PlaceOrder) -> str:
    return ""


def wrong_message(command: Rename) -> int:
    return 1


class WrongResultHandler:
    def handle(self, command: PlaceOrder) -> bytes:
        return b""


class WrongMessageHandler:
    def handle(self, command: Rename) -> int:
        return 1


def wrong_items(query: Count) -> Iterator[str]:
    yield ""


def total_as_text(query: FindTotal) -> str:
    return ""


def counts_placed(event: Placed) -> int:
    return 1


async def counts_placed_async(event: Placed) -> int:
    return 1


class CountsPlaced:
    def handle(self, event: Placed) -> int:
        return 1


def on_placed_only(event: Placed) -> None:
    pass


def placed_or_order(message: PlaceOrder | Placed) -> None:
    pass


def rejected() -> None:
    handles(PlaceOrder)(wrong_result)  # type: ignore[arg-type]
    handles(PlaceOrder)(wrong_result_async)  # type: ignore[arg-type]
    handles(PlaceOrder)(wrong_message)  # type: ignore[arg-type]
    handles(PlaceOrder)(WrongResultHandler)  # type: ignore[arg-type]
    handles(PlaceOrder)(WrongMessageHandler)  # type: ignore[arg-type]
    handles(Count)(wrong_items)  # type: ignore[arg-type]
    handles(FindTotal)(total_as_text)  # type: ignore[arg-type]
    handles(Placed)(counts_placed)  # type: ignore[arg-type]
    handles(Placed)(counts_placed_async)  # type: ignore[arg-type]
    handles(Placed)(CountsPlaced)  # type: ignore[arg-type]
    handles(Placed, Cancelled)(on_placed_only)  # type: ignore[arg-type]
    handles(PlaceOrder, Placed)(placed_or_order)  # type: ignore[misc]
    handles(int)  # type: ignore[type-var]
    handles()  # type: ignore[call-overload]


@handles(PlaceOrder)  # type: ignore[arg-type]
def decorated_wrong_result(command: PlaceOrder) -> str:
    return ""


@handles(Placed)  # type: ignore[arg-type]
class DecoratedCountsPlaced:
    def handle(self, event: Placed) -> int:
        return 1


# -- where mypy stops: build() checks each declared result; stacked marks are refused --------------------------


# A mark gives a function back taking its message type only, so a second mark on top is rejected: list every
# message type in one mark instead, as on_placed_or_cancelled does.
@handles(Placed)  # type: ignore[arg-type]
@handles(Cancelled)
def stacked(event: Placed | Cancelled) -> None:
    pass


@handles(PlaceOrder, Rename)
def answers_one_of_two(command: PlaceOrder | Rename) -> int:
    """mypy checks the result against what the two declared results share (object); build() rejects it."""
    return 1


@handles(Placed, Cancelled, Shipped, Paid, Refunded)
def five_marks_are_unchecked(event: Placed) -> int:
    """Five or more message types give back the handler as it is, unchecked."""
    return 1


def unchecked_keep_their_type() -> None:
    assert_type(five_marks_are_unchecked(Placed(order=1)), int)
