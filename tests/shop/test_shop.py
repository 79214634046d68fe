"""The reference shop end to end on every backend: commands, events, read models, rules."""

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.shop_app import Shop, build_shop
from domain.errors import ConcurrencyConflict, InsufficientStock, NotFound, RuleViolation
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
    SalesDashboard,
    SearchProducts,
    ShipOrder,
    UpdateProductStock,
)
from mediator import ValidationError
from mediator.testing import assert_settled, settle

from .backends import shop_on

DAY = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
def shop(backend: str, tmp_path: Path) -> Iterator[Shop]:
    with shop_on(backend, tmp_path, clock=lambda: DAY, logging=False, retire_after=0) as built:
        yield built


def stocked(shop: Shop) -> tuple[str, str, str, str]:
    send = shop.mediator.send
    customer = send(RegisterCustomer(name="Ada", email="ada@example.com"))
    lamps = send(CreateCategory(name="Lamps"))
    desk = send(CreateProduct(category_id=lamps, name="Desk lamp", description="brass, adjustable",
                              price=Decimal("25.00")))
    floor = send(CreateProduct(category_id=lamps, name="Floor lamp", description="tall paper shade",
                               price=Decimal("80.00")))
    send(UpdateProductStock(product_id=desk, delta=10, reason="delivery"))
    send(UpdateProductStock(product_id=floor, delta=2, reason="delivery"))
    return customer, lamps, desk, floor


def test_placing_an_order_reserves_stock_and_every_read_model_follows(shop: Shop) -> None:
    customer, lamps, desk, floor = stocked(shop)
    order = shop.mediator.send(PlaceOrder(customer_id=customer, items=(
        OrderItem(product_id=desk, quantity=3), OrderItem(product_id=floor, quantity=1))))
    settle(shop.engine)
    assert_settled(shop.engine)
    ask = shop.mediator.ask

    details = ask(GetOrderDetails(order_id=order))
    assert details is not None
    assert (details.customer_name, details.status, details.total) == ("Ada", "placed", Decimal("155.00"))
    assert [(ln.product_name, ln.quantity) for ln in details.lines] == [("Desk lamp", 3), ("Floor lamp", 1)]

    (summary,) = ask(GetCustomerOrders(customer_id=customer))
    assert (summary.item_count, summary.product_names) == (4, ("Desk lamp", "Floor lamp"))

    inventory = ask(GetProductInventory(product_id=desk))
    assert inventory is not None
    assert (inventory.on_hand, inventory.reserved, inventory.available) == (10, 3, 7)

    page = ask(ListProductsByCategory(category_id=lamps, page=1, page_size=1))
    assert (page.total, [p.name for p in page.items], page.items[0].available) == (2, ["Desk lamp"], 7)
    assert [p.name for p in ask(ListProductsByCategory(category_id=lamps, page=2, page_size=1)).items] == [
        "Floor lamp"]

    assert [p.name for p in ask(SearchProducts(text="brass"))] == ["Desk lamp"]
    assert sorted(p.name for p in ask(SearchProducts(text="lam"))) == ["Desk lamp", "Floor lamp"]

    board = ask(GetSalesDashboard())
    assert (board.since, board.orders, board.units, board.revenue) == (None, 1, 4, Decimal("155.00"))
    assert [(d.day, d.orders, d.units, d.revenue) for d in board.days] == [(DAY.date(), 1, 4, Decimal("155.00"))]
    assert [(c.category_id, c.category_name, c.orders, c.units, c.revenue) for c in board.categories] == [
        (lamps, "Lamps", 1, 4, Decimal("155.00"))]
    (row,) = ask(GetDailySales())
    assert (row.day, row.category_id, row.category_name, row.orders, row.units, row.revenue) == (
        DAY.date(), lamps, "Lamps", 1, 4, Decimal("155.00"))


def test_the_dashboard_counts_each_order_once_a_day_and_in_every_category_it_bought_from(
        backend: str, tmp_path: Path) -> None:
    now = [DAY]
    with shop_on(backend, tmp_path, clock=lambda: now[0], logging=False, retire_after=0) as shop:
        customer, lamps, desk, floor = stocked(shop)
        send = shop.mediator.send
        rugs = send(CreateCategory(name="Rugs"))
        rug = send(CreateProduct(category_id=rugs, name="Wool rug", price=Decimal("40.00")))
        send(UpdateProductStock(product_id=rug, delta=10, reason="delivery"))
        first, second, third = (DAY + dt.timedelta(days=n) for n in range(3))
        send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=2),  # 50 lamps + 40 rugs
                                                     OrderItem(product_id=rug, quantity=1))))
        now[0] = second
        send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=floor, quantity=1),)))  # 80 lamps
        dropped = send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=rug, quantity=5),)))
        now[0] = third
        send(CancelOrder(order_id=dropped, reason="too many"))  # leaves the second day, which it was placed on
        send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=rug, quantity=3),)))  # 120 rugs
        settle(shop.engine)
        ask = shop.mediator.ask

        def figures(board: SalesDashboard) -> object:
            return ((board.orders, board.units, board.revenue),
                    [(d.day, d.orders, d.units, d.revenue) for d in board.days],
                    [(c.category_name, c.orders, c.units, c.revenue) for c in board.categories])

        assert figures(ask(GetSalesDashboard())) == (
            (3, 7, Decimal("290.00")),
            [(first.date(), 1, 3, Decimal("90.00")), (second.date(), 1, 1, Decimal("80.00")),
             (third.date(), 1, 3, Decimal("120.00"))],
            [("Rugs", 2, 4, Decimal("160.00")), ("Lamps", 2, 3, Decimal("130.00"))],  # highest revenue first
        )
        board = ask(GetSalesDashboard(since=second.date()))  # the categories added up over the period only
        assert board.since == second.date()
        assert figures(board) == (
            (2, 4, Decimal("200.00")),
            [(second.date(), 1, 1, Decimal("80.00")), (third.date(), 1, 3, Decimal("120.00"))],
            [("Rugs", 1, 3, Decimal("120.00")), ("Lamps", 1, 1, Decimal("80.00"))],
        )
        assert figures(ask(GetSalesDashboard(since=(third + dt.timedelta(days=1)).date()))) == (
            (0, 0, Decimal("0.00")), [], [])
        assert [(d.day, d.category_name, d.orders, d.units, d.revenue) for d in ask(GetDailySales())] == sorted(
            [(first.date(), "Lamps", 1, 2, Decimal("50.00")), (first.date(), "Rugs", 1, 1, Decimal("40.00")),
             (second.date(), "Lamps", 1, 1, Decimal("80.00")), (third.date(), "Rugs", 1, 3, Decimal("120.00"))],
            key=lambda row: (row[0], {"Lamps": lamps, "Rugs": rugs}[row[1]]))
        assert [d.day for d in ask(GetDailySales(since=third.date()))] == [third.date()]


def test_an_order_that_cannot_be_reserved_is_rejected_whole(shop: Shop) -> None:
    customer, _lamps, desk, floor = stocked(shop)
    head = shop.storage.head()
    with pytest.raises(InsufficientStock):
        shop.mediator.send(PlaceOrder(customer_id=customer, items=(
            OrderItem(product_id=desk, quantity=1), OrderItem(product_id=floor, quantity=5))))
    assert shop.storage.head() == head  # no order, no reservation, no event
    settle(shop.engine)
    inventory = shop.mediator.ask(GetProductInventory(product_id=desk))
    assert inventory is not None
    assert inventory.reserved == 0
    assert shop.mediator.ask(GetCustomerOrders(customer_id=customer)) == ()


def test_shipping_and_cancelling_move_stock_and_statuses(shop: Shop) -> None:
    customer, _lamps, desk, _floor = stocked(shop)
    send = shop.mediator.send
    first = send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=2),)))
    second = send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=3),)))
    send(ConfirmOrder(order_id=first))
    send(ShipOrder(order_id=first))
    send(CancelOrder(order_id=second, reason="changed my mind"))
    settle(shop.engine)
    inventory = shop.mediator.ask(GetProductInventory(product_id=desk))
    assert inventory is not None
    assert (inventory.on_hand, inventory.reserved) == (8, 0)
    statuses = {s.order_id: s.status for s in shop.mediator.ask(GetCustomerOrders(customer_id=customer))}
    assert statuses == {first: "shipped", second: "cancelled"}
    board = shop.mediator.ask(GetSalesDashboard())  # the cancelled order left every count
    assert (board.orders, board.units, board.revenue) == (1, 2, Decimal("50.00"))
    assert [(d.orders, d.units, d.revenue) for d in board.days] == [(1, 2, Decimal("50.00"))]
    assert [(c.orders, c.units, c.revenue) for c in board.categories] == [(1, 2, Decimal("50.00"))]
    assert [(d.orders, d.units, d.revenue) for d in shop.mediator.ask(GetDailySales())] == [(1, 2, Decimal("50.00"))]
    with pytest.raises(RuleViolation):
        send(ShipOrder(order_id=second))


def test_rules_and_missing_things_are_typed_errors(shop: Shop) -> None:
    customer, lamps, desk, _floor = stocked(shop)
    send = shop.mediator.send
    with pytest.raises(NotFound, match="No category 'nope'"):
        send(CreateProduct(category_id="nope", name="x", price=Decimal("1")))
    with pytest.raises(NotFound, match="No customer"):
        send(PlaceOrder(customer_id="ghost", items=(OrderItem(product_id=desk, quantity=1),)))
    with pytest.raises(ValidationError, match="items: must have 1 to 100 lines"):  # refused before the handler
        send(PlaceOrder(customer_id=customer, items=()))
    with pytest.raises(InsufficientStock):
        send(UpdateProductStock(product_id=desk, delta=-11, reason="lost"))
    send(DiscontinueProduct(product_id=desk))
    with pytest.raises(RuleViolation, match="discontinued"):
        send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=1),)))
    settle(shop.engine)
    assert [p.name for p in shop.mediator.ask(ListProductsByCategory(category_id=lamps)).items] == ["Floor lamp"]


def test_a_stale_version_is_a_concurrency_conflict(shop: Shop) -> None:
    _customer, _lamps, desk, _floor = stocked(shop)
    shop.mediator.send(ChangePrice(product_id=desk, new_price=Decimal("30"), reason="costs", expected_version=1))
    with pytest.raises(ConcurrencyConflict, match="at version 2, not 1"):
        shop.mediator.send(ChangePrice(product_id=desk, new_price=Decimal("31"), reason="again", expected_version=1))
    with pytest.raises(ConcurrencyConflict):
        shop.mediator.send(UpdateProductStock(product_id=desk, delta=1, reason="x", expected_version=5))


def test_customers_act_only_on_their_own_orders_and_staff_on_everything(shop: Shop) -> None:
    from structlog.testing import capture_logs

    from handlers.authorization import Forbidden, Principal

    customer, _lamps, desk, _floor = stocked(shop)  # no principal in scope: trusted setup code
    other = shop.mediator.send(RegisterCustomer(name="Bo", email="bo@example.com"))
    mediator = shop.mediator
    with mediator.scope(principal=Principal(customer_id=customer)):
        order = mediator.send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=1),)))
        with pytest.raises(Forbidden, match="may not send PlaceOrder"):
            mediator.send(PlaceOrder(customer_id=other, items=(OrderItem(product_id=desk, quantity=1),)))
        with pytest.raises(Forbidden), capture_logs() as logs:
            mediator.send(UpdateProductStock(product_id=desk, delta=5, reason="mine now"))
    assert logs[0]["event"] == "command denied"
    assert "mine now" not in repr(logs)
    with mediator.scope(principal=Principal(customer_id=other)), pytest.raises(Forbidden):
        mediator.send(CancelOrder(order_id=order, reason="not mine"))
    with mediator.scope(principal=Principal(admin=True)):
        mediator.send(ConfirmOrder(order_id=order))
    with mediator.scope(principal=Principal(customer_id=customer)):
        mediator.send(CancelOrder(order_id=order, reason="changed my mind"))


def test_stock_is_reserved_once_per_order_and_never_for_a_cancelled_one(shop: Shop) -> None:
    from domain.messages import ReserveStock

    customer, _lamps, desk, _floor = stocked(shop)
    order = shop.mediator.send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=2),)))
    with pytest.raises(RuleViolation, match="already has its stock reserved"):
        shop.mediator.send(ReserveStock(order_id=order))
    shop.mediator.send(CancelOrder(order_id=order, reason="no"))
    with pytest.raises(RuleViolation, match="cancelled"):
        shop.mediator.send(ReserveStock(order_id=order))
    stock = shop.inspect(lambda model, tx: model.stock(tx, desk))
    assert (stock.on_hand, stock.reserved) == (10, 0)


def test_a_refused_cancel_changes_nothing(shop: Shop) -> None:
    customer, _lamps, desk, _floor = stocked(shop)
    order = shop.mediator.send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=1),)))
    with pytest.raises(ValidationError, match="reason: must not be empty"):
        shop.mediator.send(CancelOrder(order_id=order, reason="   "))
    loaded = shop.inspect(lambda model, tx: model.order(tx, order))
    assert loaded is not None
    assert loaded.status.value == "placed"


def test_a_denied_order_is_logged_without_its_shipping_address(backend: str, tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    from handlers.authorization import Forbidden, Principal

    with shop_on(backend, tmp_path, clock=lambda: DAY, logging=True) as shop:
        customer, _lamps, desk, _floor = stocked(shop)
        other = shop.mediator.send(RegisterCustomer(name="Bo", email="bo@example.com"))
        head, before = shop.storage.head(), write_model(shop, desk)
        address = "221B Baker Street, London NW1 6XE"
        with (capture_logs() as logs, shop.mediator.scope(principal=Principal(customer_id=customer)),
              pytest.raises(Forbidden)):
            shop.mediator.send(PlaceOrder(customer_id=other, items=(OrderItem(product_id=desk, quantity=1),),
                                          shipping_address=address))
        denied = [e for e in logs if e["event"] == "command denied"]
        failed = [e for e in logs if e["event"] == "message failed"]
        assert [(e["message_type"], e["customer_id"]) for e in denied] == [("domain.messages.PlaceOrder", customer)]
        assert [e["fields"]["shipping_address"] for e in failed] == ["***"]  # the Logging behaviour masks it
        assert failed[0]["fields"]["customer_id"] == other
        assert "Baker" not in repr(logs)
        assert (shop.storage.head(), write_model(shop, desk)) == (head, before)


def write_model(shop: Shop, product_id: str, order_id: str | None = None) -> tuple[object, ...]:
    """What the write model holds about a product, its stock, and an order."""
    return shop.inspect(lambda model, tx: (model.product(tx, product_id), model.stock(tx, product_id),
                                           model.order(tx, order_id) if order_id else None))


def test_a_denied_command_writes_nothing(shop: Shop) -> None:
    from domain.messages import ReserveStock
    from handlers.authorization import ANONYMOUS, Forbidden, Principal

    customer, lamps, desk, _floor = stocked(shop)
    other = shop.mediator.send(RegisterCustomer(name="Bo", email="bo@example.com"))
    order = shop.mediator.send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=1),)))
    denied = [
        (Principal(customer_id=other), PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk,
                                                                                          quantity=1),))),
        (Principal(customer_id=other), CancelOrder(order_id=order, reason="not mine")),
        (Principal(customer_id=customer), ConfirmOrder(order_id=order)),
        (Principal(customer_id=customer), ShipOrder(order_id=order)),
        (Principal(customer_id=customer), ReserveStock(order_id=order)),
        (Principal(customer_id=customer), UpdateProductStock(product_id=desk, delta=5, reason="mine now")),
        (Principal(customer_id=customer), ChangePrice(product_id=desk, new_price=Decimal("1"), reason="cheap")),
        (Principal(customer_id=customer), DiscontinueProduct(product_id=desk)),
        (Principal(customer_id=customer), CreateProduct(category_id=lamps, name="Mine", price=Decimal("1"))),
        (ANONYMOUS, CreateCategory(name="Mine")),
        (ANONYMOUS, PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=1),))),
    ]
    for principal, command in denied:
        head, before = shop.storage.head(), write_model(shop, desk, order)
        with shop.mediator.scope(principal=principal), pytest.raises(Forbidden):
            shop.mediator.send(command)
        assert (shop.storage.head(), write_model(shop, desk, order)) == (head, before), command


def test_every_query_answers_from_the_read_database_alone(tmp_path: Path) -> None:
    shop = build_shop(tmp_path / "write.db", read_path=tmp_path / "read.db", clock=lambda: DAY, logging=False,
                      retire_after=0)
    try:
        customer, lamps, desk, floor = stocked(shop)
        send = shop.mediator.send
        order = send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=3),
                                                             OrderItem(product_id=floor, quantity=1))))
        dropped = send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=1),)))
        send(CancelOrder(order_id=dropped, reason="changed my mind"))
        send(ChangePrice(product_id=floor, new_price=Decimal("75.00"), reason="sale"))
        settle(shop.engine)
        # Empty every write table behind the shop's back: whatever the queries answer now, they read elsewhere.
        with contextlib.closing(sqlite3.connect(tmp_path / "write.db")) as write:
            for table in ("order_items", "orders", "stock", "products", "categories", "customers"):
                write.execute(f"DELETE FROM {table}")
            write.commit()
        assert shop.inspect(lambda model, tx: (model.product(tx, desk), model.order(tx, order))) == (None, None)

        ask = shop.mediator.ask
        details = ask(GetOrderDetails(order_id=order))
        assert details is not None
        assert (details.customer_name, details.status, details.total, details.version) == (
            "Ada", "placed", Decimal("155.00"), 1)
        assert [(ln.product_name, ln.quantity, ln.unit_price) for ln in details.lines] == [
            ("Desk lamp", 3, Decimal("25.00")), ("Floor lamp", 1, Decimal("80.00"))]
        assert {(s.order_id, s.status, s.item_count) for s in ask(GetCustomerOrders(customer_id=customer))} == {
            (order, "placed", 4), (dropped, "cancelled", 1)}
        page = ask(ListProductsByCategory(category_id=lamps))
        assert [(p.name, p.price, p.available, p.category_name) for p in page.items] == [
            ("Desk lamp", Decimal("25.00"), 7, "Lamps"), ("Floor lamp", Decimal("75.00"), 1, "Lamps")]
        inventory = ask(GetProductInventory(product_id=desk))
        assert inventory is not None
        assert (inventory.on_hand, inventory.reserved, inventory.available) == (10, 3, 7)
        assert [p.name for p in ask(SearchProducts(text="paper shade"))] == ["Floor lamp"]
        board = ask(GetSalesDashboard(since=DAY.date()))
        assert (board.orders, board.units, board.revenue) == (1, 4, Decimal("155.00"))
        assert [(c.category_name, c.orders, c.units, c.revenue) for c in board.categories] == [
            ("Lamps", 1, 4, Decimal("155.00"))]
        (day,) = ask(GetDailySales(since=DAY.date()))
        assert (day.category_name, day.orders, day.units, day.revenue) == ("Lamps", 1, 4, Decimal("155.00"))
    finally:
        shop.close()


def test_new_ids_are_unique_and_grow_with_time() -> None:
    import time

    from handlers.commands import new_id

    made = [new_id() for _ in range(3000)]
    assert len(set(made)) == 3000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in made)
    now_ms = time.time_ns() // 1_000_000
    assert all(abs(int(i[:12], 16) - now_ms) < 60_000 for i in made)  # the first 48 bits are the milliseconds
    time.sleep(0.002)
    assert new_id() > max(made)  # a later millisecond sorts after: appended at one end of each index
    assert len({i[12:] for i in made}) == 3000  # and the rest is random
