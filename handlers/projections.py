"""The shop's read models, each kept by one projection fed only by events.

Every projection writes rows through the :class:`~handlers.ports.ReadViews`
port, so the same projection code runs on any backend that implements it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from domain.events import (
    CategoryCreated,
    CustomerRegistered,
    OrderCancelled,
    OrderConfirmed,
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
from mediator.readmodels import Projection, ProjectionSession, on

from .ports import ReadViews

StockEvent = StockAdjusted | StockReserved | StockReleased | StockShipped
STOCK_EVENTS = (StockAdjusted, StockReserved, StockReleased, StockShipped)


class ShopProjection(Projection):
    """A projection writing through the read views port."""

    def __init__(self, views: ReadViews) -> None:
        super().__init__()
        self.views = views

    def setup(self, session: ProjectionSession) -> None:
        self.views.create(session)

    def teardown(self, session: ProjectionSession) -> None:
        self.views.drop(session)

    def _update(self, session: ProjectionSession, table: str, key: dict[str, Any], **changes: Any) -> None:
        row = self.views.read(session, table, key)
        if row is not None:
            self.views.write(session, table, key, {**row, **changes})


class OrderDetailsProjection(ShopProjection):
    """``GetOrderDetails``: one row per order with its customer's name and its lines."""

    name = "order_details"

    @on(CustomerRegistered)
    def registered(self, event: CustomerRegistered, session: ProjectionSession) -> None:
        self.views.write(session, "customers", {"customer_id": event.customer_id}, {"name": event.name})

    @on(OrderPlaced)
    def placed(self, event: OrderPlaced, session: ProjectionSession) -> None:
        customer = self.views.read(session, "customers", {"customer_id": event.customer_id})
        self.views.write(session, "orders", {"order_id": event.order_id}, {
            "customer_id": event.customer_id, "customer_name": customer["name"] if customer else "",
            "status": "placed", "total": event.total, "placed_at": event.placed_at.isoformat(),
            "lines": [(ln.product_id, ln.product_name, ln.quantity, ln.unit_price) for ln in event.lines],
            "version": 1,
        })

    @on(OrderConfirmed, OrderShipped, OrderCancelled)
    def moved(self, event: OrderConfirmed | OrderShipped | OrderCancelled, session: ProjectionSession) -> None:
        self._update(session, "orders", {"order_id": event.order_id}, status=_status(event), version=event.version)


class CustomerOrdersProjection(ShopProjection):
    """``GetCustomerOrders`` (the seeds' CustomerOrderSummary): a customer's orders with names and counts."""

    name = "customer_orders"

    @on(OrderPlaced)
    def placed(self, event: OrderPlaced, session: ProjectionSession) -> None:
        self.views.write(session, "summaries", {"customer_id": event.customer_id, "order_id": event.order_id}, {
            "status": "placed", "total": event.total, "placed_at": event.placed_at.isoformat(),
            "item_count": sum(line.quantity for line in event.lines),
            "product_names": [line.product_name for line in event.lines],
        })

    @on(OrderConfirmed, OrderShipped, OrderCancelled)
    def moved(self, event: OrderConfirmed | OrderShipped | OrderCancelled, session: ProjectionSession) -> None:
        self._update(session, "summaries", {"customer_id": event.customer_id, "order_id": event.order_id},
                     status=_status(event))


class CatalogProjection(ShopProjection):
    """``ListProductsByCategory``: products with their category's name, price and what is available."""

    name = "catalog"

    @on(CategoryCreated)
    def category(self, event: CategoryCreated, session: ProjectionSession) -> None:
        self.views.write(session, "categories", {"category_id": event.category_id}, {"name": event.name})

    @on(ProductCreated)
    def product(self, event: ProductCreated, session: ProjectionSession) -> None:
        category = self.views.read(session, "categories", {"category_id": event.category_id})
        self.views.write(session, "products", {"product_id": event.product_id}, {
            "category_id": event.category_id, "category_name": category["name"] if category else "",
            "name": event.name, "description": event.description, "price": event.price, "available": 0,
            "discontinued": 0, "version": 1,
        })

    @on(PriceChanged)
    def price(self, event: PriceChanged, session: ProjectionSession) -> None:
        self._update(session, "products", {"product_id": event.product_id}, price=str(event.new_price),
                     version=event.version)

    @on(ProductDiscontinued)
    def discontinued(self, event: ProductDiscontinued, session: ProjectionSession) -> None:
        self._update(session, "products", {"product_id": event.product_id}, discontinued=1, version=event.version)

    @on(*STOCK_EVENTS)
    def stock(self, event: StockEvent, session: ProjectionSession) -> None:
        self._update(session, "products", {"product_id": event.product_id},
                     available=event.on_hand - event.reserved)


class SearchProjection(CatalogProjection):
    """``SearchProducts``: the catalogue plus a full-text index of names and descriptions."""

    name = "search"

    @on(ProductCreated)
    def product(self, event: ProductCreated, session: ProjectionSession) -> None:
        super().product(event, session)
        self.views.write(session, "text", {"product_id": event.product_id},
                         {"name": event.name, "description": event.description})


class InventoryProjection(ShopProjection):
    """``GetProductInventory`` (the seeds' ProductInventory): on hand, reserved, available."""

    name = "inventory"

    @on(ProductCreated)
    def product(self, event: ProductCreated, session: ProjectionSession) -> None:
        self.views.write(session, "inventory", {"product_id": event.product_id},
                         {"name": event.name, "on_hand": 0, "reserved": 0, "available": 0, "version": 0})

    @on(*STOCK_EVENTS)
    def stock(self, event: StockEvent, session: ProjectionSession) -> None:
        self._update(session, "inventory", {"product_id": event.product_id}, on_hand=event.on_hand,
                     reserved=event.reserved, available=event.on_hand - event.reserved, version=event.version)


class DashboardProjection(ShopProjection):
    """``GetSalesDashboard`` and ``GetDailySales``: orders, units and revenue kept as orders come and go.

    Three tables of counts, each updated by every order: per day and category (the report, and any
    period's categories), per day (the chart: an order counts once a day, whatever it bought), and per
    category over everything (the whole dashboard's breakdown, read without adding up days). Revenue is
    kept in whole cents so the read side can add it up in SQL.
    """

    name = "dashboard"
    version = 2  # 2: counts per day and per category beside the per-day-and-category ones, money in cents

    @on(CategoryCreated)
    def category(self, event: CategoryCreated, session: ProjectionSession) -> None:
        self.views.write(session, "categories", {"category_id": event.category_id}, {"name": event.name})

    @on(OrderPlaced)
    def placed(self, event: OrderPlaced, session: ProjectionSession) -> None:
        day = event.placed_at.date().isoformat()
        lines = [(line.category_id, line.quantity, line.total) for line in event.lines]
        self.views.write(session, "order_lines", {"order_id": event.order_id}, {"day": day, "lines": lines})
        self._add(session, day, lines, +1)

    @on(OrderCancelled)
    def cancelled(self, event: OrderCancelled, session: ProjectionSession) -> None:
        import json

        row = self.views.read(session, "order_lines", {"order_id": event.order_id})
        if row is not None:
            lines = [(c, q, Decimal(t)) for c, q, t in json.loads(row["lines"])]
            self._add(session, row["day"], lines, -1)

    def _add(self, session: ProjectionSession, day: str, lines: list[tuple[str, int, Decimal]], sign: int) -> None:
        per_category: dict[str, tuple[int, int]] = {}
        units = cents = 0
        for category_id, quantity, total in lines:
            line_cents = int(total.scaleb(2))
            category_units, category_cents = per_category.get(category_id, (0, 0))
            per_category[category_id] = (category_units + quantity, category_cents + line_cents)
            units, cents = units + quantity, cents + line_cents
        self._count(session, "day_totals", {"day": day}, {}, sign, units, cents)
        for category_id, (units, cents) in per_category.items():
            category = self.views.read(session, "categories", {"category_id": category_id})
            named = {"category_name": category["name"] if category else ""}
            self._count(session, "daily", {"day": day, "category_id": category_id}, named, sign, units, cents)
            self._count(session, "category_totals", {"category_id": category_id}, named, sign, units, cents)

    def _count(self, session: ProjectionSession, table: str, key: dict[str, Any], named: dict[str, str],
               sign: int, units: int, cents: int) -> None:
        """Add one order (``sign`` +1) or take it away (-1) from a row of counts."""
        row = self.views.read(session, table, key)
        self.views.write(session, table, key, {
            **named,
            "orders": (row["orders"] if row else 0) + sign,
            "units": (row["units"] if row else 0) + sign * units,
            "revenue": (row["revenue"] if row else 0) + sign * cents,
        })


def _status(event: OrderConfirmed | OrderShipped | OrderCancelled) -> str:
    return {OrderConfirmed: "confirmed", OrderShipped: "shipped", OrderCancelled: "cancelled"}[type(event)]


def all_projections(views: ReadViews) -> list[ShopProjection]:
    return [cls(views) for cls in (OrderDetailsProjection, CustomerOrdersProjection, CatalogProjection,
                                   SearchProjection, InventoryProjection, DashboardProjection)]
