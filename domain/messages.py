"""What the shop can be asked to do (commands) and asked about (queries), and the answers' shapes.

Queries read only denormalised read models; each names the projections it
``reads``, so that inside ``consistent(token)`` it waits for them.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import attrs

from mediator import Command, IdempotentCommand, Query, sensitive


@attrs.frozen(kw_only=True)
class RegisterCustomer(Command[str]):
    name: str
    email: str = sensitive()


@attrs.frozen(kw_only=True)
class CreateCategory(Command[str]):
    name: str


@attrs.frozen(kw_only=True)
class CreateProduct(Command[str]):
    category_id: str
    name: str
    description: str = ""
    price: Decimal


@attrs.frozen(kw_only=True)
class ChangePrice(Command[None]):
    product_id: str
    new_price: Decimal
    reason: str
    expected_version: int | None = None


@attrs.frozen(kw_only=True)
class DiscontinueProduct(Command[None]):
    product_id: str


@attrs.frozen(kw_only=True)
class UpdateProductStock(Command[None]):
    """Receive stock (positive ``delta``) or write it off (negative)."""

    product_id: str
    delta: int
    reason: str
    expected_version: int | None = None


@attrs.frozen(kw_only=True)
class OrderItem:
    product_id: str
    quantity: int


@attrs.frozen(kw_only=True)
class PlaceOrder(IdempotentCommand[str]):
    """Place an order; a client that retries sends the same ``idempotency_key`` and gets the same order back."""

    customer_id: str
    items: tuple[OrderItem, ...]
    shipping_address: str = sensitive(default="")
    """Where the order goes: personal data, so never logged nor shown in ``repr``."""


@attrs.frozen(kw_only=True)
class ReserveStock(Command[None]):
    """Reserve every line of an order, all or nothing (sent by the inventory when an order is placed)."""

    order_id: str


@attrs.frozen(kw_only=True)
class ConfirmOrder(Command[None]):
    order_id: str
    expected_version: int | None = None


@attrs.frozen(kw_only=True)
class ShipOrder(Command[None]):
    order_id: str
    expected_version: int | None = None


@attrs.frozen(kw_only=True)
class PayForOrder(IdempotentCommand[None]):
    """Pay a placed order's total (a stand-in for a payment gateway's callback): confirms the order. A gateway
    that calls again sends the same ``idempotency_key``."""

    order_id: str
    amount: Decimal


@attrs.frozen(kw_only=True)
class ExpireUnpaidOrder(Command[None]):
    """Cancel an order still unpaid, releasing its stock (scheduled by the fulfilment process when it is placed);
    an order paid, shipped or cancelled meanwhile is left as it is."""

    order_id: str


@attrs.frozen(kw_only=True)
class CancelOrder(Command[None]):
    order_id: str
    reason: str
    expected_version: int | None = None


# -- answers ------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class OrderLineView:
    product_id: str
    product_name: str
    quantity: int
    unit_price: Decimal


@attrs.frozen(kw_only=True)
class OrderDetails:
    order_id: str
    customer_id: str
    customer_name: str
    status: str
    total: Decimal
    placed_at: dt.datetime
    lines: tuple[OrderLineView, ...]
    version: int
    """Send it back as ``expected_version`` to change the order only if nobody else did meanwhile."""


@attrs.frozen(kw_only=True)
class CustomerOrderSummary:
    """The seeds' read model: one row per order of a customer, with product names and item counts."""

    order_id: str
    status: str
    total: Decimal
    placed_at: dt.datetime
    item_count: int
    product_names: tuple[str, ...]


@attrs.frozen(kw_only=True)
class ProductListing:
    product_id: str
    name: str
    price: Decimal
    category_name: str
    available: int
    version: int


@attrs.frozen(kw_only=True)
class Page:
    items: tuple[ProductListing, ...]
    page: int
    page_size: int
    total: int


@attrs.frozen(kw_only=True)
class ProductInventory:
    """The seeds' read model: what can still be sold of a product."""

    product_id: str
    name: str
    on_hand: int
    reserved: int
    available: int
    version: int


@attrs.frozen(kw_only=True)
class DailySales:
    """One day's sales in one category: a row of the sales report."""

    day: dt.date
    category_id: str
    category_name: str
    orders: int
    units: int
    revenue: Decimal


@attrs.frozen(kw_only=True)
class DaySales:
    """One day's sales over every category: a point of the dashboard's chart."""

    day: dt.date
    orders: int
    units: int
    revenue: Decimal


@attrs.frozen(kw_only=True)
class CategorySales:
    """One category's sales over the dashboard's period."""

    category_id: str
    category_name: str
    orders: int
    units: int
    revenue: Decimal


@attrs.frozen(kw_only=True)
class SalesDashboard:
    """The sales dashboard: the period's totals, a point per day, and the categories by revenue.

    Cancelled orders are not counted; days and categories left with no sale are left out.
    ``orders`` counts each order once, though ``categories`` counts it in every category it bought from.
    """

    since: dt.date | None
    orders: int
    units: int
    revenue: Decimal
    days: tuple[DaySales, ...]
    """Oldest first."""
    categories: tuple[CategorySales, ...]
    """Highest revenue first, then by id."""


# -- queries ------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class GetOrderDetails(Query[OrderDetails | None]):
    reads = ("order_details",)
    order_id: str

    def depends_on(self) -> tuple[str, ...]:
        """A subscription is asked again for this order's events only (they are keyed by the order's id)."""
        return (self.order_id,)


@attrs.frozen(kw_only=True)
class GetCustomerOrders(Query[tuple[CustomerOrderSummary, ...]]):
    reads = ("customer_orders",)
    customer_id: str


@attrs.frozen(kw_only=True)
class ListProductsByCategory(Query[Page]):
    reads = ("catalog",)
    category_id: str
    page: int = 1
    page_size: int = 20


@attrs.frozen(kw_only=True)
class GetProductInventory(Query[ProductInventory | None]):
    reads = ("inventory",)
    product_id: str

    def depends_on(self) -> tuple[str, ...]:
        """A subscription is asked again for this product's events only (they are keyed by the product's id)."""
        return (self.product_id,)


@attrs.frozen(kw_only=True)
class SearchProducts(Query[tuple[ProductListing, ...]]):
    reads = ("search",)
    text: str
    limit: int = 20


@attrs.frozen(kw_only=True)
class GetSalesDashboard(Query[SalesDashboard]):
    """The dashboard from ``since`` (a day, inclusive) on, or over everything when it is ``None``."""

    reads = ("dashboard",)
    since: dt.date | None = None


@attrs.frozen(kw_only=True)
class GetDailySales(Query[tuple[DailySales, ...]]):
    """The sales report: a row per day and category from ``since`` on, by day then category id."""

    reads = ("dashboard",)
    since: dt.date | None = None
