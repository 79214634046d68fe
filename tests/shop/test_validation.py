"""Nothing accepted that cannot be read back: the shop refuses wrongly typed or out-of-range messages before any
write, naming the field, on every backend."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.shop_app import Shop
from domain.messages import (
    CancelOrder,
    ChangePrice,
    ConfirmOrder,
    CreateCategory,
    CreateProduct,
    DiscontinueProduct,
    GetSalesDashboard,
    ListProductsByCategory,
    OrderItem,
    PlaceOrder,
    RegisterCustomer,
    SearchProducts,
    ShipOrder,
    UpdateProductStock,
)
from mediator import Message, ValidationError

from .backends import shop_on
from .test_shop import stocked


def bad(value: object) -> Any:
    """``value``, of the wrong type on purpose (mypy would refuse it, as the shop does)."""
    return value


def deep_list(depth: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


@pytest.fixture
def shop(backend: str, tmp_path: Path) -> Iterator[Shop]:
    with shop_on(backend, tmp_path) as built:  # logging on, as the shop runs: a refused message is logged too
        yield built


class Ids:
    """What ``stocked`` made, and an order placed for the customer."""

    def __init__(self, shop: Shop) -> None:
        self.customer, self.lamps, self.desk, self.floor = stocked(shop)
        self.order = shop.mediator.send(PlaceOrder(customer_id=self.customer,
                                                   items=(OrderItem(product_id=self.desk, quantity=1),)))


def written(shop: Shop, ids: Ids) -> tuple[Any, ...]:
    """The log's head and the write model's state of everything ``Ids`` names."""
    def look(model: Any, tx: Any) -> tuple[Any, ...]:
        return (model.customer_name(tx, ids.customer), model.category_exists(tx, ids.lamps),
                model.product(tx, ids.desk), model.product(tx, ids.floor), model.stock(tx, ids.desk),
                model.stock(tx, ids.floor), model.order(tx, ids.order))

    return shop.storage.head(), shop.inspect(look)


Case = Callable[[Ids], Message]

WRONG_TYPES: dict[str, tuple[Case, str]] = {
    "fractional stock delta": (lambda i: UpdateProductStock(product_id=i.desk, delta=bad(1.5), reason="x"), "delta"),
    "infinite stock delta": (lambda i: UpdateProductStock(product_id=i.desk, delta=bad(math.inf), reason="x"), "delta"),
    "bool quantity": (lambda i: PlaceOrder(customer_id=i.customer, items=(
        OrderItem(product_id=i.desk, quantity=bad(True)),)), "items[0].quantity"),
    "text price": (lambda i: CreateProduct(category_id=i.lamps, name="Lamp", price=bad("abc")), "price"),
    "lone surrogate in a name": (lambda i: RegisterCustomer(name="\ud800", email="bo@example.com"), "name"),
    "NUL in a name": (lambda i: CreateCategory(name="Sha\x00des"), "name"),
    "int beyond 64 bits as an id": (lambda i: DiscontinueProduct(product_id=bad(2**63)), "product_id"),
    "text as a day": (lambda i: GetSalesDashboard(since=bad("x")), "since"),
    "fractional page size": (lambda i: ListProductsByCategory(category_id=i.lamps, page_size=bad(1.5)), "page_size"),
    "3000-deep list as a version": (lambda i: ChangePrice(product_id=i.desk, new_price=Decimal("30"), reason="r",
                                                          expected_version=bad(deep_list(3000))), "expected_version"),
    "3000-deep list as a stock version": (lambda i: UpdateProductStock(
        product_id=i.desk, delta=1, reason="x", expected_version=bad(deep_list(3000))), "expected_version"),
}

OUT_OF_RANGE: dict[str, tuple[Case, str]] = {
    "blank name": (lambda i: CreateCategory(name="   "), "name"),
    "name too long": (lambda i: RegisterCustomer(name="A" * 201, email="a@b.c"), "name"),
    "no e-mail address": (lambda i: RegisterCustomer(name="Bo", email="no-at-sign"), "email"),
    "e-mail address too long": (lambda i: RegisterCustomer(name="Bo", email="a@" + "b" * 253), "email"),
    "description too long": (lambda i: CreateProduct(category_id=i.lamps, name="Lamp", description="d" * 2001,
                                                     price=Decimal("1")), "description"),
    "negative price": (lambda i: CreateProduct(category_id=i.lamps, name="Lamp", price=Decimal("-1")), "price"),
    "price in tenths of cents": (lambda i: ChangePrice(product_id=i.desk, new_price=Decimal("9.999"), reason="r"),
                                 "new_price"),
    "huge price": (lambda i: CreateProduct(category_id=i.lamps, name="Lamp", price=Decimal("1e30")), "price"),
    "version 0 of a product": (lambda i: ChangePrice(product_id=i.desk, new_price=Decimal("9"), reason="r",
                                                     expected_version=0), "expected_version"),
    "zero stock delta": (lambda i: UpdateProductStock(product_id=i.desk, delta=0, reason="x"), "delta"),
    "stock delta too large": (lambda i: UpdateProductStock(product_id=i.desk, delta=1_000_001, reason="x"), "delta"),
    "negative stock version": (lambda i: UpdateProductStock(product_id=i.desk, delta=1, reason="x",
                                                            expected_version=-1), "expected_version"),
    "blank reason": (lambda i: UpdateProductStock(product_id=i.desk, delta=1, reason=" "), "reason"),
    "no order lines": (lambda i: PlaceOrder(customer_id=i.customer, items=()), "items"),
    "101 order lines": (lambda i: PlaceOrder(customer_id=i.customer, items=tuple(
        OrderItem(product_id=f"p{n}", quantity=1) for n in range(101))), "items"),
    "quantity 0": (lambda i: PlaceOrder(customer_id=i.customer, items=(
        OrderItem(product_id=i.desk, quantity=0),)), "items[0].quantity"),
    "quantity 1001": (lambda i: PlaceOrder(customer_id=i.customer, items=(
        OrderItem(product_id=i.floor, quantity=1), OrderItem(product_id=i.desk, quantity=1001))),
        "items[1].quantity"),
    "address too long": (lambda i: PlaceOrder(customer_id=i.customer, shipping_address="x" * 501, items=(
        OrderItem(product_id=i.desk, quantity=1),)), "shipping_address"),
    "order version 0": (lambda i: ConfirmOrder(order_id=i.order, expected_version=0), "expected_version"),
    "ship at version 0": (lambda i: ShipOrder(order_id=i.order, expected_version=0), "expected_version"),
    "cancel for no reason": (lambda i: CancelOrder(order_id=i.order, reason=""), "reason"),
    "page 0": (lambda i: ListProductsByCategory(category_id=i.lamps, page=0), "page"),
    "page 10001": (lambda i: ListProductsByCategory(category_id=i.lamps, page=10_001), "page"),
    "page size 101": (lambda i: ListProductsByCategory(category_id=i.lamps, page_size=101), "page_size"),
    "empty search": (lambda i: SearchProducts(text=""), "text"),
    "search text too long": (lambda i: SearchProducts(text="l" * 201), "text"),
    "search limit 0": (lambda i: SearchProducts(text="lamp", limit=0), "limit"),
    "search limit 101": (lambda i: SearchProducts(text="lamp", limit=101), "limit"),
}


def dispatch(shop: Shop, message: Message) -> Any:
    from mediator import Command

    return shop.mediator.send(message) if isinstance(message, Command) else shop.mediator.ask(message)  # type: ignore[arg-type]


REFUSED = {**{f"type: {case}": made for case, made in WRONG_TYPES.items()},
           **{f"limit: {case}": made for case, made in OUT_OF_RANGE.items()}}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_a_message_of_a_wrong_type_or_beyond_the_shops_limits_is_refused_naming_the_field_and_writes_nothing(
        shop: Shop, case: str) -> None:
    make, field = REFUSED[case]
    ids = Ids(shop)
    before = written(shop, ids)
    with pytest.raises(ValidationError) as info:
        dispatch(shop, make(ids))
    assert list(info.value.errors) == [field]
    assert written(shop, ids) == before


def test_messages_at_the_limits_are_accepted(shop: Shop) -> None:
    ids = Ids(shop)
    send = shop.mediator.send
    send(RegisterCustomer(name="A" * 200, email="a@" + "b" * 252))
    send(UpdateProductStock(product_id=ids.desk, delta=1_000_000, reason="r" * 200,
                            expected_version=2))  # stock received, then reserved
    send(ChangePrice(product_id=ids.desk, new_price=Decimal("9999999999.99"), reason="r", expected_version=1))
    send(PlaceOrder(customer_id=ids.customer, shipping_address="x" * 500, items=(
        OrderItem(product_id=ids.desk, quantity=1000),)))
    assert shop.mediator.ask(ListProductsByCategory(category_id=ids.lamps, page=10_000, page_size=100)).items == ()
    shop.mediator.ask(SearchProducts(text="l" * 200, limit=100))
