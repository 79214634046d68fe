"""The shop's order fulfilment process: an order unpaid after its payment timeout is cancelled and its stock
released; one paid in time is shipped and its timeout cancelled; payments are idempotent and authorized."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.shop_app import Shop
from domain.errors import IllegalTransition, RuleViolation
from domain.messages import (
    CancelOrder,
    GetOrderDetails,
    GetProductInventory,
    OrderItem,
    PayForOrder,
    PlaceOrder,
)
from handlers.authorization import Forbidden, Principal
from handlers.processes import AWAITING_PAYMENT, Fulfilment
from mediator.testing import Clock, assert_settled, settle

from .backends import shop_on
from .test_shop import DAY, stocked


@pytest.fixture
def clock() -> Clock:
    return Clock(DAY.timestamp())


@pytest.fixture
def shop(backend: str, tmp_path: Path, clock: Clock) -> Iterator[Shop]:
    with shop_on(backend, tmp_path, clock=lambda: DAY, logging=False, engine_clock=clock,
                 payment_timeout=dt.timedelta(minutes=15)) as built:
        yield built


def place(shop: Shop, customer: str, product: str, quantity: int = 2) -> str:
    return shop.mediator.send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=product,
                                                                                quantity=quantity),)))


def inventory(shop: Shop, product: str) -> tuple[int, int, int]:
    settle(shop.engine)
    found = shop.mediator.ask(GetProductInventory(product_id=product))
    assert found is not None
    return found.on_hand, found.reserved, found.available


def status(shop: Shop, order: str) -> str:
    settle(shop.engine)
    details = shop.mediator.ask(GetOrderDetails(order_id=order))
    assert details is not None
    return details.status


def test_an_order_paid_in_time_is_shipped_and_its_timeout_cancelled(shop: Shop, clock: Clock) -> None:
    customer, _lamps, desk, _floor = stocked(shop)
    order = place(shop, customer, desk)
    settle(shop.engine)
    assert shop.engine.processes.instance("fulfilment", order) == Fulfilment(
        stage=AWAITING_PAYMENT, total=Decimal("50.00"), timeout=f"payment-timeout:{order}")
    clock.advance(minutes=14)
    shop.mediator.send(PayForOrder(order_id=order, amount=Decimal("50.00")))
    assert status(shop, order) == "shipped"
    clock.advance(hours=1)
    assert status(shop, order) == "shipped"  # the timeout was cancelled: nothing expired it
    assert inventory(shop, desk) == (8, 0, 8)
    assert shop.engine.processes.instance("fulfilment", order) is None
    assert shop.storage.scheduled() == []
    assert_settled(shop.engine)


def test_an_order_unpaid_at_its_timeout_is_cancelled_and_its_stock_released(shop: Shop, clock: Clock) -> None:
    customer, _lamps, desk, _floor = stocked(shop)
    order = place(shop, customer, desk)
    assert inventory(shop, desk) == (10, 2, 8)
    clock.advance(minutes=15)
    assert status(shop, order) == "cancelled"
    assert inventory(shop, desk) == (10, 0, 10)
    assert shop.engine.processes.instance("fulfilment", order) is None
    with pytest.raises(IllegalTransition):  # too late
        shop.mediator.send(PayForOrder(order_id=order, amount=Decimal("50.00")))


def test_a_payment_must_settle_the_total(shop: Shop) -> None:
    customer, _lamps, desk, _floor = stocked(shop)
    order = place(shop, customer, desk)
    with pytest.raises(RuleViolation, match="does not settle it"):
        shop.mediator.send(PayForOrder(order_id=order, amount=Decimal("49.99")))
    assert status(shop, order) == "placed"


def test_an_order_cancelled_before_its_timeout_takes_the_timeout_with_it(shop: Shop, clock: Clock) -> None:
    customer, _lamps, desk, _floor = stocked(shop)
    order = place(shop, customer, desk)
    settle(shop.engine)
    shop.mediator.send(CancelOrder(order_id=order, reason="changed my mind"))
    settle(shop.engine)
    assert shop.storage.scheduled() == []
    clock.advance(hours=1)
    assert status(shop, order) == "cancelled"
    assert inventory(shop, desk) == (10, 0, 10)


def test_a_repeated_payment_pays_once(shop: Shop) -> None:
    customer, _lamps, desk, _floor = stocked(shop)
    order = place(shop, customer, desk)
    payment = PayForOrder(order_id=order, amount=Decimal("50.00"), idempotency_key="gateway-callback-1")
    shop.mediator.send(payment)
    settle(shop.engine)
    shop.mediator.send(payment)  # the gateway calls back again
    assert status(shop, order) == "shipped"
    paid = [stored for stored in shop.storage.events() if stored.type_name == "shop.OrderPaid"]
    assert len(paid) == 1


def test_only_the_customer_or_staff_pays_and_a_replay_is_authorized_first(shop: Shop) -> None:
    customer, _lamps, desk, _floor = stocked(shop)
    order = place(shop, customer, desk)
    payment = PayForOrder(order_id=order, amount=Decimal("50.00"), idempotency_key="k")
    with shop.mediator.scope(principal=Principal(customer_id="someone-else")), pytest.raises(Forbidden):
        shop.mediator.send(payment)
    with shop.mediator.scope(principal=Principal(customer_id=customer)):
        shop.mediator.send(payment)
    with shop.mediator.scope(principal=Principal(customer_id="someone-else")), pytest.raises(Forbidden):
        shop.mediator.send(payment)  # the repeat would answer from the record: it is authorized before that
    assert status(shop, order) == "shipped"
    assert shop.engine.processes.instance("fulfilment", order) is None


def test_over_http_each_request_sees_everything_the_last_one_led_to(tmp_path: Path, clock: Clock) -> None:
    import asyncio

    import httpx

    from adapters.shop_http import asgi
    from mediator.testing import asettle_after

    from .tokens import KEY, as_customer

    async def scenario(shop: Shop) -> None:
        customer, _lamps, desk, _floor = stocked(shop)
        transport = httpx.ASGITransport(app=asgi(shop, jwt_key=KEY))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop", headers=as_customer(customer),
                                     event_hooks={"response": [asettle_after(shop.engine)]}) as client:
            placed = await client.post("/orders", json={"customer_id": customer,
                                                         "items": [{"product_id": desk, "quantity": 2}]})
            order = placed.json()["order_id"]
            # No X-Consistent-With: the hook settled the read models and the fulfilment's step after the POST.
            assert (await client.get(f"/orders/{order}")).json()["status"] == "placed"
            inventory = (await client.get(f"/products/{desk}/inventory")).json()
            assert inventory["reserved"] == 2
            clock.advance(minutes=15)
            await client.get("/search", params={"q": "lamp"})  # any request: its hook fires the timeout now due
            assert (await client.get(f"/orders/{order}")).json()["status"] == "cancelled"
            assert (await client.get(f"/products/{desk}/inventory")).json()["reserved"] == 0

    with shop_on("sqlite", tmp_path, clock=lambda: DAY, logging=False, engine_clock=clock) as shop:
        asyncio.run(scenario(shop))
