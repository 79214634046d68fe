"""Property: after any sequence of valid and invalid commands, every read model agrees with the write model
and equals a fresh rebuild of it from the log."""

import contextlib
import datetime as dt
import re
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.shop_app import Shop
from domain.errors import DomainError
from domain.messages import (
    CancelOrder,
    ChangePrice,
    ConfirmOrder,
    CreateCategory,
    CreateProduct,
    DiscontinueProduct,
    GetCustomerOrders,
    GetDailySales,
    GetOrderDetails,
    GetProductInventory,
    GetSalesDashboard,
    ListProductsByCategory,
    OrderItem,
    PlaceOrder,
    RegisterCustomer,
    SearchProducts,
    ShipOrder,
    UpdateProductStock,
)
from domain.model import Order, OrderStatus, Product, Stock
from mediator import Command, ValidationError
from mediator.testing import settle

from .backends import shop_on
from .test_shop import stocked

DAY = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
SEARCHED = ("lamp", "shade", "brass")

index = st.integers(0, 7)
version = st.sampled_from([None, "right", "stale"])  # no expected_version, the one stored, one that moved on
step = st.one_of(
    # who orders, the first product, and a quantity for it and each next one (more than there are: a repeat)
    st.tuples(st.just("order"), index, index, st.lists(st.sampled_from([1, 2, 3, 0]), min_size=1, max_size=3)),
    st.tuples(st.just("move"), st.sampled_from(["confirm", "ship", "cancel"]), index, version),
    st.tuples(st.just("stock"), index, st.integers(-4, 8), version),
    st.tuples(st.just("price"), index, st.sampled_from(["0", "9.99", "12.5", "1.001"]), version),
    st.tuples(st.just("customer"), st.sampled_from(["Bo", "Cy", "  "]), st.sampled_from(["x@y.z", "no-at"])),
    st.tuples(st.just("product"), index, st.sampled_from(["Reading lamp", "Paper shade", " "]),
              st.sampled_from(["5", "12.50", "0"])),
    st.tuples(st.just("discontinue"), index),
)


@attrs.define
class World:
    """The ids the commands made, so that the write model can be read back for each."""

    shop: Shop
    customers: list[str]
    categories: list[str]
    products: list[str]
    orders: list[str] = attrs.Factory(list)

    def product(self, product_id: str) -> Product:
        found = self.shop.inspect(lambda model, tx: model.product(tx, product_id))
        assert found is not None
        return found

    def stock(self, product_id: str) -> Stock:
        return self.shop.inspect(lambda model, tx: model.stock(tx, product_id))

    def order(self, order_id: str) -> Order:
        found = self.shop.inspect(lambda model, tx: model.order(tx, order_id))
        assert found is not None
        return found


def expected(mode: str | None, current: int) -> int | None:
    return None if mode is None else current if mode == "right" else current + 1


def pick(items: list[str], i: int) -> str:
    return items[i % len(items)]


def command(world: World, kind: str, args: list[Any]) -> Command[Any] | None:
    if kind == "customer":
        return RegisterCustomer(name=args[0], email=args[1])
    if kind == "product":
        return CreateProduct(category_id=pick(world.categories, args[0]), name=args[1], description="made here",
                             price=Decimal(args[2]))
    if kind == "discontinue":  # only products made during the run, so that there is always some to order
        return DiscontinueProduct(product_id=pick(world.products[2:] or ["no-such-product"], args[0]))
    if kind == "stock":
        product = pick(world.products, args[0])
        return UpdateProductStock(product_id=product, delta=args[1], reason="count",
                                  expected_version=expected(args[2], world.stock(product).version))
    if kind == "order":
        items = tuple(OrderItem(product_id=pick(world.products, args[1] + n), quantity=q)
                      for n, q in enumerate(args[2]))
        return PlaceOrder(customer_id=pick(world.customers, args[0]), items=items)
    if kind == "move" and world.orders:
        order = pick(world.orders, args[1])
        at = expected(args[2], world.order(order).version)
        return {"confirm": ConfirmOrder(order_id=order, expected_version=at),
                "ship": ShipOrder(order_id=order, expected_version=at),
                "cancel": CancelOrder(order_id=order, reason="changed", expected_version=at)}[args[0]]
    if kind == "price":
        product = pick(world.products, args[0])
        return ChangePrice(product_id=product, new_price=Decimal(args[1]), reason="market",
                           expected_version=expected(args[2], world.product(product).version))
    return None


def run(world: World, kind: str, args: list[Any]) -> None:
    message = command(world, kind, args)
    if message is None:
        return
    with contextlib.suppress(DomainError, ValidationError):
        made = world.shop.mediator.send(message)
        {"customer": world.customers, "product": world.products, "order": world.orders}.get(kind, []).append(made)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def assert_agrees_with_the_write_model(world: World) -> None:
    ask = world.shop.mediator.ask
    products = {p: world.product(p) for p in world.products}
    stocks = {p: world.stock(p) for p in world.products}
    orders = {o: world.order(o) for o in world.orders}
    on_sale = {p: product for p, product in products.items() if not product.discontinued}

    for product_id, stock in stocks.items():
        assert stock.on_hand >= stock.reserved >= 0
        inventory = ask(GetProductInventory(product_id=product_id))
        assert inventory is not None
        assert (inventory.name, inventory.on_hand, inventory.reserved, inventory.available, inventory.version) == (
            products[product_id].name, stock.on_hand, stock.reserved, stock.available, stock.version)

    for category in world.categories:
        page = ask(ListProductsByCategory(category_id=category, page_size=100))
        assert page.total == len(page.items)
        assert {p.product_id: (p.name, p.price, p.available, p.version) for p in page.items} == {
            p: (product.name, product.price, stocks[p].available, product.version)
            for p, product in on_sale.items() if product.category_id == category}

    for text in SEARCHED:
        found = ask(SearchProducts(text=text, limit=100))
        assert {(p.product_id, p.price, p.available) for p in found} == {
            (p, product.price, stocks[p].available) for p, product in on_sale.items()
            if any(w.startswith(text) for w in words(f"{product.name} {product.description}"))}

    for order_id, order in orders.items():
        details = ask(GetOrderDetails(order_id=order_id))
        assert details is not None
        assert (details.customer_id, details.status, details.total, details.version) == (
            order.customer_id, order.status.value, order.total, order.version)
        assert [(ln.product_id, ln.quantity, ln.unit_price) for ln in details.lines] == [
            (ln.product_id, ln.quantity, ln.unit_price) for ln in order.lines]

    for customer in world.customers:
        summaries = ask(GetCustomerOrders(customer_id=customer))
        assert {(s.order_id, s.status, s.total, s.item_count) for s in summaries} == {
            (o, order.status.value, order.total, sum(ln.quantity for ln in order.lines))
            for o, order in orders.items() if order.customer_id == customer}

    sold: dict[tuple[dt.date, str], tuple[int, int, Decimal]] = {}  # per day and category, cancelled left out
    for order in orders.values():
        if order.status is OrderStatus.CANCELLED:
            continue
        for category in {ln.category_id for ln in order.lines}:
            lines = [ln for ln in order.lines if ln.category_id == category]
            key = (order.placed_at.date(), category)
            count, units, revenue = sold.get(key, (0, 0, Decimal("0.00")))
            sold[key] = (count + 1, units + sum(ln.quantity for ln in lines),
                         revenue + sum((ln.total for ln in lines), Decimal("0.00")))
    assert {(d.day, d.category_id): (d.orders, d.units, d.revenue) for d in ask(GetDailySales())} == sold

    kept = [order for order in orders.values() if order.status is not OrderStatus.CANCELLED]
    for since in [None, *sorted({day for day, _category in sold})]:
        board = ask(GetSalesDashboard(since=since))
        counted = [order for order in kept if since is None or order.placed_at.date() >= since]
        assert (board.since, board.orders, board.units, board.revenue) == (
            since, len(counted), sum(ln.quantity for o in counted for ln in o.lines),
            sum((o.total for o in counted), Decimal("0.00")))
        per_day: dict[dt.date, tuple[int, int, Decimal]] = {}
        for order in counted:
            count, units, revenue = per_day.get(order.placed_at.date(), (0, 0, Decimal("0.00")))
            per_day[order.placed_at.date()] = (count + 1, units + sum(ln.quantity for ln in order.lines),
                                               revenue + order.total)
        assert [(d.day, d.orders, d.units, d.revenue) for d in board.days] == sorted(
            (day, *figures) for day, figures in per_day.items())
        per_category: dict[str, tuple[int, int, Decimal]] = {}
        for (day, category), (count, units, revenue) in sold.items():
            if since is None or day >= since:
                was = per_category.get(category, (0, 0, Decimal("0.00")))
                per_category[category] = (was[0] + count, was[1] + units, was[2] + revenue)
        assert [(c.category_id, c.orders, c.units, c.revenue) for c in board.categories] == sorted(
            ((category, *figures) for category, figures in per_category.items()), key=lambda c: (-c[3], c[0]))


def snapshot(world: World) -> object:
    ask = world.shop.mediator.ask
    return (
        [ask(GetOrderDetails(order_id=o)) for o in world.orders],
        [ask(GetCustomerOrders(customer_id=c)) for c in world.customers],
        [ask(ListProductsByCategory(category_id=c, page_size=100)) for c in world.categories],
        [ask(GetProductInventory(product_id=p)) for p in world.products],
        ask(GetSalesDashboard()),
        ask(GetDailySales()),
        [ask(SearchProducts(text=text, limit=100)) for text in SEARCHED],
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(step, max_size=30))
def test_read_models_agree_with_the_write_model_and_equal_a_rebuild(backend: str, steps: list[tuple[Any, ...]]) -> None:
    with (tempfile.TemporaryDirectory() as folder,
          shop_on(backend, Path(folder), clock=lambda: DAY, logging=False, retire_after=0) as shop):
        customer, lamps, desk, floor = stocked(shop)
        shades = shop.mediator.send(CreateCategory(name="Shades"))
        world = World(shop, [customer], [lamps, shades], [desk, floor])
        for kind, *args in steps:
            run(world, kind, args)
        settle(shop.engine)
        assert_agrees_with_the_write_model(world)

        before = snapshot(world)
        for name in shop.engine.projections:
            shop.engine.rebuild(name)
        shop.engine.finish_rebuilds()
        assert snapshot(world) == before
