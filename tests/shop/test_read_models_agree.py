"""Property: after any sequence of valid and invalid commands, every read model equals a fresh rebuild
of it from the log, and agrees with the write model."""

import contextlib
import datetime as dt
import tempfile
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.shop_app import Shop, build_shop
from domain.errors import DomainError
from domain.messages import (
    CancelOrder,
    ChangePrice,
    ConfirmOrder,
    GetCustomerOrders,
    GetOrderDetails,
    GetProductInventory,
    GetSalesDashboard,
    ListProductsByCategory,
    OrderItem,
    PlaceOrder,
    SearchProducts,
    ShipOrder,
    UpdateProductStock,
)
from domain.model import Order, Stock
from handlers.ports import WriteModel
from mediator import ValidationError
from mediator.testing import settle

from .test_shop import stocked

DAY = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)

step = st.one_of(
    st.tuples(st.just("stock"), st.sampled_from([0, 1]), st.integers(-6, 6)),
    st.tuples(st.just("order"), st.lists(st.tuples(st.sampled_from([0, 1]), st.integers(-1, 6)), max_size=3)),
    st.tuples(st.just("move"), st.sampled_from(["confirm", "ship", "cancel"]), st.integers(0, 5)),
    st.tuples(st.just("price"), st.sampled_from([0, 1]), st.sampled_from(["0", "9.99", "12.5", "1.001"])),
)


def stock_of(model: WriteModel, tx: Any, product: str) -> Stock:
    return model.stock(tx, product)


def order_of(model: WriteModel, tx: Any, order_id: str) -> Order | None:
    return model.order(tx, order_id)


def snapshot(shop: Shop, customer: str, lamps: str, products: list[str], orders: list[str]) -> object:
    ask = shop.mediator.ask
    return (
        [ask(GetOrderDetails(order_id=o)) for o in orders],
        ask(GetCustomerOrders(customer_id=customer)),
        ask(ListProductsByCategory(category_id=lamps)),
        [ask(GetProductInventory(product_id=p)) for p in products],
        ask(GetSalesDashboard()),
        ask(SearchProducts(text="lamp")),
    )


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(step, max_size=25))
def test_read_models_equal_a_rebuild_and_agree_with_the_write_model(backend: str, steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shop.db" if backend == "sqlite" else None
        shop = build_shop(path, clock=lambda: DAY, logging=False, retire_after=0)
        try:
            customer, lamps, desk, floor = stocked(shop)
            products, orders = [desk, floor], []
            for kind, *args in steps:
                with contextlib.suppress(DomainError, ValidationError):
                    if kind == "stock":
                        shop.mediator.send(UpdateProductStock(product_id=products[args[0]], delta=args[1],
                                                              reason="count"))
                    elif kind == "order":
                        items = tuple(OrderItem(product_id=products[p], quantity=q) for p, q in args[0])
                        orders.append(shop.mediator.send(PlaceOrder(customer_id=customer, items=items)))
                    elif kind == "move" and orders:
                        order = orders[args[1] % len(orders)]
                        message = {"confirm": ConfirmOrder(order_id=order), "ship": ShipOrder(order_id=order),
                                   "cancel": CancelOrder(order_id=order, reason="changed")}[args[0]]
                        shop.mediator.send(message)
                    elif kind == "price":
                        shop.mediator.send(ChangePrice(product_id=products[args[0]], new_price=Decimal(args[1]),
                                                       reason="market"))
            settle(shop.engine)
            before = snapshot(shop, customer, lamps, products, orders)

            # the write model agrees with the read models
            for product in products:
                stock = shop.inspect(partial(stock_of, product=product))
                on_hand, reserved = stock.on_hand, stock.reserved
                inventory = shop.mediator.ask(GetProductInventory(product_id=product))
                assert inventory is not None
                assert (inventory.on_hand, inventory.reserved) == (on_hand, reserved)
                assert on_hand >= 0
            for order in orders:
                loaded = shop.inspect(partial(order_of, order_id=order))
                assert loaded is not None
                status = loaded.status.value
                details = shop.mediator.ask(GetOrderDetails(order_id=order))
                assert details is not None
                assert details.status == status

            # and a fresh rebuild of every read model gives the same answers
            for name in shop.engine.projections:
                shop.engine.rebuild(name)
            shop.engine.finish_rebuilds()
            assert snapshot(shop, customer, lamps, products, orders) == before
        finally:
            shop.close()
