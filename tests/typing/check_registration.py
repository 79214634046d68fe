"""Registering a handler whose message or result does not fit is rejected by mypy."""

from collections.abc import AsyncIterator, Iterator

import attrs

from mediator import Command, Event, Query, Registry, StreamQuery


@attrs.frozen(kw_only=True)
class PlaceOrder(Command[int]):
    customer: str


@attrs.frozen(kw_only=True)
class GetName(Query[str]):
    id: int


@attrs.frozen(kw_only=True)
class Count(StreamQuery[int]):
    up_to: int


@attrs.frozen(kw_only=True)
class Placed(Event):
    order: int


class Clock:
    pass


def place(command: PlaceOrder) -> int:
    return 1


def place_with_dependency(command: PlaceOrder, clock: Clock) -> int:
    return 1


async def place_async(command: PlaceOrder) -> int:
    return 1


def place_wrong_result(command: PlaceOrder) -> str:
    return ""


def name_for_wrong_message(query: PlaceOrder) -> str:
    return ""


class PlaceHandler:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def handle(self, command: PlaceOrder) -> int:
        return 1


class AsyncPlaceHandler:
    async def handle(self, command: PlaceOrder) -> int:
        return 1


class WrongResultHandler:
    def handle(self, command: PlaceOrder) -> bytes:
        return b""


class WrongMessageHandler:
    def handle(self, query: GetName) -> int:
        return 1


async def place_async_wrong_result(command: PlaceOrder) -> str:
    return ""


def count(query: Count) -> Iterator[int]:
    yield 1


async def count_async(query: Count) -> AsyncIterator[int]:
    yield 1


def count_wrong_items(query: Count) -> Iterator[str]:
    yield ""


def on_placed(event: Placed) -> None:
    pass


def accepted(registry: Registry) -> None:
    registry.handle(PlaceOrder).by(place)
    registry.handle(PlaceOrder).by(place_with_dependency)
    registry.handle(PlaceOrder).by(place_async)
    registry.handle(PlaceOrder).by(PlaceHandler)
    registry.handle(PlaceOrder).by(AsyncPlaceHandler)
    registry.handle(Count).by(count)
    registry.handle(Count).by(count_async)
    registry.handle(Placed).by(on_placed)
    registry.handle(GetName).by(lambda query: str(query.id))


def rejected(registry: Registry) -> None:
    registry.handle(PlaceOrder).by(place_wrong_result)  # type: ignore[arg-type]
    registry.handle(PlaceOrder).by(WrongResultHandler)  # type: ignore[arg-type]
    registry.handle(PlaceOrder).by(WrongMessageHandler)  # type: ignore[arg-type]
    registry.handle(PlaceOrder).by(place_async_wrong_result)  # type: ignore[arg-type]
    registry.handle(PlaceOrder).by(lambda command: "x")  # type: ignore[arg-type]
    registry.handle(GetName).by(name_for_wrong_message)  # type: ignore[arg-type]
    registry.handle(Count).by(count_wrong_items)  # type: ignore[arg-type]
    registry.handle(Placed).by(place)  # type: ignore[arg-type]


def validators(registry: Registry) -> None:
    def good(command: PlaceOrder) -> list[tuple[str, str]]:
        return []

    def bad(command: GetName) -> list[tuple[str, str]]:
        return []

    registry.validate(PlaceOrder, good)
    registry.validate(PlaceOrder, bad)  # type: ignore[arg-type]
