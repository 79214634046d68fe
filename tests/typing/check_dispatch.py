"""send / ask / publish / stream are typed by the message, on both twins."""

from collections.abc import AsyncIterator, Iterator
from typing import NewType, assert_type

import attrs

from mediator import Answer, AsyncMediator, Command, Event, Mediator, Query, Registry, StreamQuery

OrderId = NewType("OrderId", int)


@attrs.frozen(kw_only=True)
class PlaceOrder(Command[OrderId]):
    customer: str


@attrs.frozen(kw_only=True)
class GetTotal(Query[float | None]):
    order: OrderId


@attrs.frozen(kw_only=True)
class ListOrders(StreamQuery[OrderId]):
    customer: str


@attrs.frozen(kw_only=True)
class OrderPlaced(Event):
    order: OrderId


@attrs.frozen(kw_only=True)
class Subclassed(PlaceOrder):
    """A message inheriting its result type through an intermediate class."""


def sync_dispatch(mediator: Mediator) -> None:
    assert_type(mediator.send(PlaceOrder(customer="c")), OrderId)
    assert_type(mediator.send(Subclassed(customer="c")), OrderId)
    assert_type(mediator.ask(GetTotal(order=OrderId(1))), float | None)
    assert_type(mediator.stream(ListOrders(customer="c")), Iterator[OrderId])
    assert_type(mediator.publish(OrderPlaced(order=OrderId(1))), None)
    with mediator.subscribe(GetTotal(order=OrderId(1))) as live:
        for answer in live:
            assert_type(answer, Answer[float | None])
            assert_type(answer.value, float | None)
            assert_type(answer.token, int)


async def async_dispatch(mediator: AsyncMediator) -> None:
    assert_type(await mediator.send(PlaceOrder(customer="c")), OrderId)
    assert_type(await mediator.send(Subclassed(customer="c")), OrderId)
    assert_type(await mediator.ask(GetTotal(order=OrderId(1))), float | None)
    assert_type(mediator.stream(ListOrders(customer="c")), AsyncIterator[OrderId])
    assert_type(await mediator.publish(OrderPlaced(order=OrderId(1))), None)
    async for order in mediator.stream(ListOrders(customer="c")):
        assert_type(order, OrderId)
    async with mediator.subscribe(GetTotal(order=OrderId(1))) as live:
        async for answer in live:
            assert_type(answer.value, float | None)


def wrong_verbs(mediator: Mediator) -> None:
    mediator.send(GetTotal(order=OrderId(1)))  # type: ignore[arg-type]
    mediator.ask(PlaceOrder(customer="c"))  # type: ignore[arg-type]
    mediator.publish(PlaceOrder(customer="c"))  # type: ignore[arg-type]
    mediator.send("not a message")  # type: ignore[arg-type]
    mediator.subscribe(PlaceOrder(customer="c"))  # type: ignore[arg-type]


def registry_typing() -> None:
    registry = Registry()
    assert_type(registry.build(), Mediator)
    assert_type(registry.build_async(), AsyncMediator)
