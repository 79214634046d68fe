"""Property: after any sequence of valid and invalid commands, every read model equals a fresh rebuild
of it from the log, and agrees with the write model."""

import contextlib
import datetime as dt
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

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
    ShipOrder,
    UpdateProductStock,
)
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


def snapshot(shop: Shop, customer: str, lamps: str, products: list[str], orders: list[str]) -> object:
    ask = shop.mediator.ask
    return (
        [ask(GetOrderDetails(order_id=o)) for o in orders],
        ask(GetCustomerOrders(customer_id=customer)),
        ask(ListProductsByCategory(category_id=lamps)),
        [ask(GetProductInventory(product_id=p)) for p in products],
        ask(GetSalesDashboard()),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=25))
def test_read_models_equal_a_rebuild_and_agree_with_the_write_model(steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        shop = build_shop(Path(folder) / "shop.db", clock=lambda: DAY, logging=False, retire_after=0)
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
            write = shop.storage._write()
            for product in products:
                on_hand, reserved = write.execute("SELECT on_hand, reserved FROM stock WHERE product_id = ?",
                                                  (product,)).fetchone()
                inventory = shop.mediator.ask(GetProductInventory(product_id=product))
                assert inventory is not None
                assert (inventory.on_hand, inventory.reserved) == (on_hand, reserved)
                assert on_hand >= 0
            for order in orders:
                status = write.execute("SELECT status FROM orders WHERE order_id = ?", (order,)).fetchone()[0]
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
