"""The shop's aggregates and their rules. Pure: no storage, no clock, no framework but the event classes.

Each method checks its rule, changes the aggregate, bumps its version and
returns the event that records the change; a broken rule raises a typed
:mod:`domain.errors` error and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from decimal import Decimal

import attrs

from .errors import IllegalTransition, InsufficientStock, RuleViolation
from .events import (
    CategoryCreated,
    CustomerRegistered,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPaid,
    OrderPlaced,
    OrderShipped,
    PriceChanged,
    ProductCreated,
    ProductDiscontinued,
    StockAdjusted,
    StockReleased,
    StockReserved,
    StockShipped,
)

CENT = Decimal("0.01")


def money(amount: Decimal | int | str) -> Decimal:
    """A positive amount with at most two decimal places, as a ``Decimal``."""
    value = Decimal(amount)
    if not value.is_finite() or value <= 0:
        raise RuleViolation(f"A price must be a positive amount, not {amount!r}.")
    if value != value.quantize(CENT):
        raise RuleViolation(f"A price has at most two decimal places, not {amount!r}.")
    return value.quantize(CENT)


def _name(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > 200:
        raise RuleViolation(f"A {what} needs 1 to 200 characters.")
    return value


@attrs.frozen
class Customer:
    """Someone who buys: a name, and an e-mail address that is personal data (kept out of ``repr``)."""

    customer_id: str
    name: str
    email: str = attrs.field(repr=False)

    @classmethod
    def register(cls, customer_id: str, name: str, email: str) -> tuple[Customer, CustomerRegistered]:
        name, email = name.strip(), email.strip()
        if not name or len(name) > 200:
            raise RuleViolation("A customer's name needs 1 to 200 characters.")
        if "@" not in email or len(email) > 254:
            raise RuleViolation("A customer's e-mail address needs an @ and at most 254 characters.")
        customer = cls(customer_id, name, email)
        return customer, CustomerRegistered(customer_id=customer_id, name=name, email=email)


@attrs.frozen
class Category:
    """A named group of products in the catalogue."""

    category_id: str
    name: str

    @classmethod
    def create(cls, category_id: str, name: str) -> tuple[Category, CategoryCreated]:
        category = cls(category_id, _name(name, "category's name"))
        return category, CategoryCreated(category_id=category_id, name=category.name)


@attrs.define
class Product:
    product_id: str
    category_id: str
    name: str
    description: str
    price: Decimal
    discontinued: bool = False
    version: int = 0

    @classmethod
    def create(cls, product_id: str, category_id: str, name: str, description: str,
               price: Decimal | int | str) -> tuple[Product, ProductCreated]:
        product = cls(product_id, category_id, _name(name, "product name"), description.strip(), money(price))
        product.version = 1
        return product, ProductCreated(product_id=product_id, category_id=category_id, name=product.name,
                                       description=product.description, price=product.price)

    def change_price(self, new_price: Decimal | int | str, reason: str) -> PriceChanged:
        if self.discontinued:
            raise RuleViolation(f"Product {self.product_id!r} is discontinued; its price cannot change.")
        price = money(new_price)
        if price == self.price:
            raise RuleViolation(f"Product {self.product_id!r} already costs {price}.")
        reason = _name(reason, "reason for a price change")
        self.version += 1
        event = PriceChanged(product_id=self.product_id, old_price=self.price, new_price=price, reason=reason,
                             version=self.version)
        self.price = price
        return event

    def discontinue(self) -> ProductDiscontinued:
        if self.discontinued:
            raise RuleViolation(f"Product {self.product_id!r} is already discontinued.")
        self.discontinued = True
        self.version += 1
        return ProductDiscontinued(product_id=self.product_id, version=self.version)


@attrs.define
class Stock:
    """Stock of one product: what is on hand, and how much of it orders have reserved."""

    product_id: str
    on_hand: int = 0
    reserved: int = 0
    version: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def adjust(self, delta: int, reason: str) -> StockAdjusted:
        """Receive stock (positive) or write it off (negative); never below what is reserved."""
        if delta == 0:
            raise RuleViolation("A stock adjustment changes the quantity; 0 changes nothing.")
        reason = _name(reason, "reason")
        if delta < 0 and -delta > self.available:
            raise InsufficientStock(self.product_id, -delta, self.available)
        self.on_hand += delta
        self.version += 1
        return StockAdjusted(product_id=self.product_id, delta=delta, reason=reason,
                             on_hand=self.on_hand, reserved=self.reserved, version=self.version)

    def reserve(self, order_id: str, quantity: int) -> StockReserved:
        _positive(quantity)
        if quantity > self.available:
            raise InsufficientStock(self.product_id, quantity, self.available)
        self.reserved += quantity
        self.version += 1
        return StockReserved(product_id=self.product_id, order_id=order_id, quantity=quantity,
                             on_hand=self.on_hand, reserved=self.reserved, version=self.version)

    def release(self, order_id: str, quantity: int) -> StockReleased:
        _positive(quantity)
        if quantity > self.reserved:
            raise RuleViolation(f"Product {self.product_id!r} has only {self.reserved} reserved, not {quantity}.")
        self.reserved -= quantity
        self.version += 1
        return StockReleased(product_id=self.product_id, order_id=order_id, quantity=quantity,
                             on_hand=self.on_hand, reserved=self.reserved, version=self.version)

    def ship(self, order_id: str, quantity: int) -> StockShipped:
        _positive(quantity)
        if quantity > self.reserved:
            raise RuleViolation(f"Product {self.product_id!r} has only {self.reserved} reserved, not {quantity}.")
        self.reserved -= quantity
        self.on_hand -= quantity
        self.version += 1
        return StockShipped(product_id=self.product_id, order_id=order_id, quantity=quantity,
                            on_hand=self.on_hand, reserved=self.reserved, version=self.version)


def _positive(quantity: int) -> None:
    if quantity <= 0:
        raise RuleViolation(f"A quantity must be positive, not {quantity}.")


class OrderStatus(enum.Enum):
    PLACED = "placed"
    CONFIRMED = "confirmed"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


_ALLOWED = {
    "confirmed": {OrderStatus.PLACED},
    "shipped": {OrderStatus.CONFIRMED},
    "cancelled": {OrderStatus.PLACED, OrderStatus.CONFIRMED},
}


@attrs.define
class Order:
    order_id: str
    customer_id: str
    lines: tuple[OrderLine, ...]
    total: Decimal
    placed_at: dt.datetime
    status: OrderStatus = OrderStatus.PLACED
    version: int = 0
    stock_reserved: bool = False
    shipping_address: str = attrs.field(default="", repr=False)
    """Personal data: kept with the order for shipping, never put in an event (so never in a read model)."""

    @classmethod
    def place(cls, order_id: str, customer_id: str, lines: Sequence[OrderLine],
              placed_at: dt.datetime, shipping_address: str = "") -> tuple[Order, OrderPlaced]:
        shipping_address = shipping_address.strip()
        if len(shipping_address) > 500:
            raise RuleViolation("A shipping address has at most 500 characters.")
        if not lines:
            raise RuleViolation("An order needs at least one item.")
        if len(lines) > 100:
            raise RuleViolation("An order has at most 100 different items.")
        seen: set[str] = set()
        for line in lines:
            _positive(line.quantity)
            if line.quantity > 1000:
                raise RuleViolation(f"At most 1000 of one product per order, not {line.quantity}.")
            if line.product_id in seen:
                raise RuleViolation(f"Product {line.product_id!r} appears twice; give it once with its quantity.")
            seen.add(line.product_id)
        total = sum((line.total for line in lines), Decimal("0.00")).quantize(CENT)
        order = cls(order_id, customer_id, tuple(lines), total, placed_at, version=1,
                    shipping_address=shipping_address)
        return order, OrderPlaced(order_id=order_id, customer_id=customer_id, lines=order.lines, total=total,
                                  placed_at=placed_at)

    def _move(self, to: OrderStatus, action: str) -> None:
        if self.status not in _ALLOWED[to.value]:
            raise IllegalTransition(self.order_id, self.status.value, action)
        self.status = to
        self.version += 1

    def confirm(self) -> OrderConfirmed:
        self._move(OrderStatus.CONFIRMED, "confirmed")
        return OrderConfirmed(order_id=self.order_id, customer_id=self.customer_id, version=self.version)

    def pay(self, amount: Decimal | int | str) -> tuple[OrderPaid, OrderConfirmed]:
        """Take payment of the whole total: a placed order is confirmed by it."""
        paid = money(amount)
        if self.status is not OrderStatus.PLACED:
            raise IllegalTransition(self.order_id, self.status.value, "paid")
        if paid != self.total:
            raise RuleViolation(f"Order {self.order_id!r} totals {self.total}; a payment of {paid} does not settle it.")
        return (OrderPaid(order_id=self.order_id, customer_id=self.customer_id, amount=paid), self.confirm())

    def ship(self) -> OrderShipped:
        self._move(OrderStatus.SHIPPED, "shipped")
        return OrderShipped(order_id=self.order_id, customer_id=self.customer_id, version=self.version)

    def cancel(self, reason: str) -> OrderCancelled:
        reason = _name(reason, "reason for cancelling")
        self._move(OrderStatus.CANCELLED, "cancelled")
        return OrderCancelled(order_id=self.order_id, customer_id=self.customer_id, reason=reason, version=self.version)

    def mark_reserved(self) -> None:
        """Record that the order's stock is reserved; it is reserved once, and only while placed."""
        if self.status is not OrderStatus.PLACED:
            raise IllegalTransition(self.order_id, self.status.value, "reserved")
        if self.stock_reserved:
            raise RuleViolation(f"Order {self.order_id!r} already has its stock reserved.")
        self.stock_reserved = True  # bookkeeping, not a change a client sees: the version stays
