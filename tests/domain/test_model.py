"""The shop's rules, each tested directly, and under random sequences of commands."""

import datetime as dt
from decimal import Decimal

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from domain.errors import IllegalTransition, InsufficientStock, RuleViolation
from domain.events import OrderLine
from domain.model import Category, Customer, Order, OrderStatus, Product, Stock, money

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def line(product: str = "p1", quantity: int = 1, price: str = "2.50") -> OrderLine:
    return OrderLine(product_id=product, product_name=product.upper(), category_id="c", quantity=quantity,
                     unit_price=Decimal(price))


@pytest.mark.parametrize("amount", ["0", "-1", "1.001", "NaN", "Infinity"])
def test_money_refuses_what_is_not_a_price(amount: str) -> None:
    with pytest.raises(RuleViolation):
        money(amount)


def test_money_keeps_cents() -> None:
    assert money("3.5") == Decimal("3.50")
    assert str(money(2)) == "2.00"


def test_a_product_changes_price_with_a_reason_and_not_once_discontinued() -> None:
    product, created = Product.create("p1", "c1", " Lamp ", "a lamp", "10")
    assert (created.name, created.price, product.version) == ("Lamp", Decimal("10.00"), 1)
    changed = product.change_price("12.50", "supplier raised prices")
    assert (changed.old_price, changed.new_price, product.version) == (Decimal("10.00"), Decimal("12.50"), 2)
    with pytest.raises(RuleViolation, match="already costs"):
        product.change_price("12.5", "again")
    with pytest.raises(RuleViolation, match="reason"):
        product.change_price("13", "  ")
    product.discontinue()
    with pytest.raises(RuleViolation, match="discontinued"):
        product.change_price("9", "sale")
    with pytest.raises(RuleViolation, match="already discontinued"):
        product.discontinue()


def test_stock_never_goes_negative_nor_below_what_is_reserved() -> None:
    stock = Stock("p1")
    stock.adjust(5, "received")
    stock.reserve("o1", 3)
    with pytest.raises(InsufficientStock) as info:
        stock.reserve("o2", 3)
    assert (info.value.wanted, info.value.available) == (3, 2)
    with pytest.raises(InsufficientStock):
        stock.adjust(-3, "broken")
    stock.ship("o1", 3)
    assert (stock.on_hand, stock.reserved, stock.available) == (2, 0, 2)
    with pytest.raises(RuleViolation, match="only 0 reserved"):
        stock.release("o1", 1)


def test_a_stock_adjustment_changes_something_and_gives_a_reason() -> None:
    stock = Stock("p1", on_hand=4, version=1)
    with pytest.raises(RuleViolation, match="0 changes nothing"):
        stock.adjust(0, "recount")
    for blank in ("", "   ", "\t\n"):
        with pytest.raises(RuleViolation, match="reason"):
            stock.adjust(2, blank)
    with pytest.raises(RuleViolation, match="reason"):
        stock.adjust(2, "x" * 201)
    assert (stock.on_hand, stock.version) == (4, 1)  # a refused adjustment changes nothing
    adjusted = stock.adjust(-4, "  written off  ")
    assert (adjusted.reason, adjusted.on_hand, stock.version) == ("written off", 0, 2)


@pytest.mark.parametrize("move", ["reserve", "release", "ship"])
@pytest.mark.parametrize("quantity", [0, -1, -50])
def test_stock_moves_for_an_order_need_a_positive_quantity(move: str, quantity: int) -> None:
    stock = Stock("p1", on_hand=10, reserved=5, version=3)
    with pytest.raises(RuleViolation, match="must be positive"):
        getattr(stock, move)("o1", quantity)
    assert (stock.on_hand, stock.reserved, stock.version) == (10, 5, 3)


@pytest.mark.parametrize("move", ["release", "ship"])
def test_no_more_can_be_shipped_or_released_than_is_reserved(move: str) -> None:
    stock = Stock("p1", on_hand=10, reserved=2, version=3)
    with pytest.raises(RuleViolation, match="only 2 reserved, not 3"):
        getattr(stock, move)("o1", 3)
    assert (stock.on_hand, stock.reserved, stock.version) == (10, 2, 3)
    getattr(stock, move)("o1", 2)
    assert stock.reserved == 0


def test_an_order_has_at_most_100_lines_of_at_most_1000_each() -> None:
    hundred = [line(f"p{n}") for n in range(100)]
    assert len(Order.place("o1", "c1", hundred, NOW)[0].lines) == 100
    with pytest.raises(RuleViolation, match="at most 100 different items"):
        Order.place("o2", "c1", [*hundred, line("p100")], NOW)
    assert Order.place("o3", "c1", [line("a", 1000)], NOW)[0].total == Decimal("2500.00")
    with pytest.raises(RuleViolation, match="At most 1000 of one product"):
        Order.place("o4", "c1", [line("a", 1001)], NOW)


def test_an_order_keeps_its_shipping_address_out_of_its_event_and_repr() -> None:
    order, placed = Order.place("o1", "c1", [line()], NOW, shipping_address=" 1 Main St, Springfield ")
    assert order.shipping_address == "1 Main St, Springfield"
    assert "Main St" not in repr(order)
    assert "Main St" not in repr(placed)
    assert "shipping_address" not in attrs.fields_dict(type(placed))
    with pytest.raises(RuleViolation, match="at most 500"):
        Order.place("o2", "c1", [line()], NOW, shipping_address="x" * 501)


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_a_product_needs_a_name_of_1_to_200_characters(name: str) -> None:
    with pytest.raises(RuleViolation, match="product name needs 1 to 200"):
        Product.create("p1", "c1", name, "", "10")


def test_a_customer_needs_a_name_and_an_email_address() -> None:
    customer, registered = Customer.register("c1", "  Ada  ", " ada@example.com ")
    assert (customer.name, customer.email) == ("Ada", "ada@example.com")
    assert (registered.customer_id, registered.name, registered.email) == ("c1", "Ada", "ada@example.com")
    assert "ada@example.com" not in repr(customer)
    for name in ("", "  ", "x" * 201):
        with pytest.raises(RuleViolation, match="customer's name needs 1 to 200"):
            Customer.register("c1", name, "ada@example.com")
    for email in ("", "ada.example.com", "  ", "a@" + "b" * 253):
        with pytest.raises(RuleViolation, match="e-mail address needs an @"):
            Customer.register("c1", "Ada", email)
    assert Customer.register("c1", "Ada", "a@" + "b" * 252)[0].email.endswith("b")


def test_a_category_needs_a_name_of_1_to_200_characters() -> None:
    category, created = Category.create("k1", " Lamps ")
    assert (category.name, created.category_id, created.name) == ("Lamps", "k1", "Lamps")
    for name in ("", " \t ", "x" * 201):
        with pytest.raises(RuleViolation, match="category's name needs 1 to 200"):
            Category.create("k1", name)


def test_orders_total_their_lines_and_refuse_bad_items() -> None:
    order, placed = Order.place("o1", "c1", [line("a", 2, "2.50"), line("b", 1, "0.99")], NOW)
    assert placed.total == order.total == Decimal("5.99")
    with pytest.raises(RuleViolation, match="at least one item"):
        Order.place("o2", "c1", [], NOW)
    with pytest.raises(RuleViolation, match="appears twice"):
        Order.place("o2", "c1", [line("a"), line("a")], NOW)
    with pytest.raises(RuleViolation, match="positive"):
        Order.place("o2", "c1", [line("a", 0)], NOW)


@pytest.mark.parametrize(
    ("path", "then", "allowed"),
    [
        ([], "confirm", True), ([], "ship", False), ([], "cancel", True),
        (["confirm"], "ship", True), (["confirm"], "cancel", True), (["confirm"], "confirm", False),
        (["confirm", "ship"], "cancel", False), (["confirm", "ship"], "ship", False),
        (["cancel"], "confirm", False), (["cancel"], "cancel", False),
    ],
)
def test_only_legal_status_transitions(path: list[str], then: str, allowed: bool) -> None:
    order, _ = Order.place("o1", "c1", [line()], NOW)
    for step in path:
        getattr(order, step)(*(["changed my mind"] if step == "cancel" else []))
    action = getattr(order, then)
    args = ["changed my mind"] if then == "cancel" else []
    if allowed:
        action(*args)
    else:
        with pytest.raises(IllegalTransition):
            action(*args)


class StockMachine(RuleBasedStateMachine):
    """Random receipts, write-offs, reservations, releases and shipments: the invariants always hold."""

    def __init__(self) -> None:
        super().__init__()
        self.stock = Stock("p1")
        self.received = 0
        self.written_off = 0
        self.shipped = 0
        self.reservations: dict[str, int] = {}

    @rule(quantity=st.integers(1, 50))
    def receive(self, quantity: int) -> None:
        self.stock.adjust(quantity, "received")
        self.received += quantity

    @rule(quantity=st.integers(1, 50))
    def write_off(self, quantity: int) -> None:
        try:
            self.stock.adjust(-quantity, "damaged")
            self.written_off += quantity
        except InsufficientStock:
            assert quantity > self.stock.available

    @rule(order=st.sampled_from(["o1", "o2", "o3"]), quantity=st.integers(1, 30))
    def reserve(self, order: str, quantity: int) -> None:
        try:
            self.stock.reserve(order, quantity)
            self.reservations[order] = self.reservations.get(order, 0) + quantity
        except InsufficientStock:
            assert quantity > self.stock.available

    @precondition(lambda self: any(self.reservations.values()))
    @rule(data=st.data())
    def release_or_ship(self, data: st.DataObject) -> None:
        order = data.draw(st.sampled_from(sorted(o for o, q in self.reservations.items() if q)))
        quantity = data.draw(st.integers(1, self.reservations[order]))
        if data.draw(st.booleans()):
            self.stock.release(order, quantity)
        else:
            self.stock.ship(order, quantity)
            self.shipped += quantity
        self.reservations[order] -= quantity

    @invariant()
    def never_negative_and_balanced(self) -> None:
        assert self.stock.on_hand >= 0
        assert 0 <= self.stock.reserved <= self.stock.on_hand
        assert self.stock.on_hand == self.received - self.written_off - self.shipped
        assert self.stock.reserved == sum(self.reservations.values())


TestStockMachine = StockMachine.TestCase


@given(st.lists(st.sampled_from(["confirm", "ship", "cancel"]), max_size=6))
def test_random_transitions_follow_the_table(actions: list[str]) -> None:
    order, _ = Order.place("o1", "c1", [line()], NOW)
    legal = {OrderStatus.PLACED: {"confirm", "cancel"}, OrderStatus.CONFIRMED: {"ship", "cancel"}}
    for action in actions:
        before = order.status
        args = ["reason"] if action == "cancel" else []
        if action in legal.get(before, set()):
            getattr(order, action)(*args)
        else:
            with pytest.raises(IllegalTransition):
                getattr(order, action)(*args)
            assert order.status is before
