"""What happened in the shop: the events that feed every read model."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import attrs

from mediator import Event

# Events about a versioned aggregate carry its version after the change (0 in events stored before they did),
# so read models can show it and clients can send it back as ``expected_version``.


@attrs.frozen(kw_only=True)
class CustomerRegistered(Event):
    customer_id: str
    name: str
    email: str


@attrs.frozen(kw_only=True)
class CategoryCreated(Event):
    category_id: str
    name: str


@attrs.frozen(kw_only=True)
class ProductCreated(Event):
    product_id: str
    category_id: str
    name: str
    description: str
    price: Decimal


@attrs.frozen(kw_only=True)
class PriceChanged(Event):
    product_id: str
    old_price: Decimal
    new_price: Decimal
    reason: str
    version: int = 0


@attrs.frozen(kw_only=True)
class ProductDiscontinued(Event):
    product_id: str
    version: int = 0


@attrs.frozen(kw_only=True)
class StockAdjusted(Event):
    """Stock received (positive) or written off (negative)."""

    product_id: str
    delta: int
    reason: str
    on_hand: int
    reserved: int
    version: int = 0


@attrs.frozen(kw_only=True)
class StockMovedForOrder(Event):
    """Stock of one product moved for one order's line; the subclasses say which way."""

    product_id: str
    order_id: str
    quantity: int
    on_hand: int
    reserved: int
    version: int = 0


@attrs.frozen(kw_only=True)
class StockReserved(StockMovedForOrder):
    """Set aside for an order placed."""


@attrs.frozen(kw_only=True)
class StockReleased(StockMovedForOrder):
    """Put back on sale when an order was cancelled."""


@attrs.frozen(kw_only=True)
class StockShipped(StockMovedForOrder):
    """Gone out with an order shipped."""


@attrs.frozen(kw_only=True)
class OrderLine:
    product_id: str
    product_name: str
    category_id: str
    quantity: int
    unit_price: Decimal

    @property
    def total(self) -> Decimal:
        return self.unit_price * self.quantity


@attrs.frozen(kw_only=True)
class OrderPlaced(Event):
    order_id: str
    customer_id: str
    lines: tuple[OrderLine, ...]
    total: Decimal
    placed_at: dt.datetime


@attrs.frozen(kw_only=True)
class OrderConfirmed(Event):
    order_id: str
    customer_id: str
    version: int = 0


@attrs.frozen(kw_only=True)
class OrderPaid(Event):
    order_id: str
    customer_id: str
    amount: Decimal


@attrs.frozen(kw_only=True)
class OrderShipped(Event):
    order_id: str
    customer_id: str
    version: int = 0


@attrs.frozen(kw_only=True)
class OrderCancelled(Event):
    order_id: str
    customer_id: str
    reason: str
    version: int = 0


ALL_EVENTS: tuple[type[Event], ...] = (
    CustomerRegistered, CategoryCreated, ProductCreated, PriceChanged, ProductDiscontinued, StockAdjusted,
    StockReserved, StockReleased, StockShipped, OrderPlaced, OrderConfirmed, OrderPaid, OrderShipped,
    OrderCancelled,
)
