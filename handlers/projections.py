"""The shop's read models, each kept by one projection fed only by events.

Every read model is a typed table (:class:`~mediator.readmodels.Table`) of attrs rows, declared on its projection
with the key and the lookups its queries need; the same projection code runs on memory, SQLite, PostgreSQL and
Redis, and the queries (:mod:`handlers.queries`) read the same tables through the engine. Where a query answers
with a row as it is stored, the row class is the answer's own (``OrderDetails``, ``ProductInventory``).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from decimal import Decimal

import attrs

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
from domain.messages import OrderDetails, OrderLineView, ProductInventory
from mediator.readmodels import Projection, ProjectionSession, Table, on

StockEvent = StockAdjusted | StockReserved | StockReleased | StockShipped
STOCK_EVENTS = (StockAdjusted, StockReserved, StockReleased, StockShipped)


# -- rows ---------------------------------------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class Named:
    """A name by id: the customers and categories that other rows copy their names from."""

    id: str
    name: str


@attrs.frozen(kw_only=True)
class CustomerOrder:
    """One order in a customer's list (``GetCustomerOrders``, the seeds' CustomerOrderSummary)."""

    customer_id: str
    order_id: str
    status: str
    total: Decimal
    placed_at: dt.datetime
    item_count: int
    product_names: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Listing:
    """A product as the catalogue lists it (``ListProductsByCategory``, ``SearchProducts``)."""

    product_id: str
    category_id: str
    category_name: str
    name: str
    description: str
    price: Decimal
    available: int
    discontinued: bool
    version: int


@attrs.frozen(kw_only=True)
class Word:
    """A word of a product's name or description, for the search (found by prefix: ``lam`` finds ``lamp``)."""

    word: str
    product_id: str
    name: str
    """The product's name, to order what a search finds without reading every product."""


@attrs.frozen(kw_only=True)
class Sale:
    """What one line of an order sold, for taking it off the counts if the order is cancelled."""

    category_id: str
    quantity: int
    total: Decimal


@attrs.frozen(kw_only=True)
class OrderSales:
    order_id: str
    day: dt.date
    lines: tuple[Sale, ...]


@attrs.frozen(kw_only=True)
class DayCategoryCounts:
    """Orders, units and revenue (whole cents) of one day and category."""

    day: dt.date
    category_id: str
    category_name: str
    orders: int
    units: int
    revenue: int


@attrs.frozen(kw_only=True)
class DayCounts:
    day: dt.date
    orders: int
    units: int
    revenue: int


@attrs.frozen(kw_only=True)
class CategoryCounts:
    category_id: str
    category_name: str
    orders: int
    units: int
    revenue: int


# -- projections ------------------------------------------------------------------------------------------

class OrderDetailsProjection(Projection):
    """``GetOrderDetails``: one row per order with its customer's name and its lines."""

    name = "order_details"
    version = 2  # 2: typed tables
    customers = Table(Named, key="id")
    orders = Table(OrderDetails, key="order_id")

    @on(CustomerRegistered)
    def registered(self, event: CustomerRegistered, session: ProjectionSession) -> None:
        session.put(self.customers, Named(id=event.customer_id, name=event.name))

    @on(OrderPlaced)
    def placed(self, event: OrderPlaced, session: ProjectionSession) -> None:
        customer = session.get(self.customers, event.customer_id)
        session.put(self.orders, OrderDetails(
            order_id=event.order_id, customer_id=event.customer_id, customer_name=customer.name if customer else "",
            status="placed", total=event.total, placed_at=event.placed_at, version=1,
            lines=tuple(OrderLineView(product_id=line.product_id, product_name=line.product_name,
                                      quantity=line.quantity, unit_price=line.unit_price) for line in event.lines),
        ))

    @on(OrderConfirmed, OrderShipped, OrderCancelled)
    def moved(self, event: OrderConfirmed | OrderShipped | OrderCancelled, session: ProjectionSession) -> None:
        session.patch(self.orders, event.order_id, status=_status(event), version=event.version)


class CustomerOrdersProjection(Projection):
    """``GetCustomerOrders`` (the seeds' CustomerOrderSummary): a customer's orders with names and counts."""

    name = "customer_orders"
    version = 2  # 2: typed tables
    orders = Table(CustomerOrder, key=("customer_id", "order_id"), lookups=[("customer_id", "placed_at")])

    @on(OrderPlaced)
    def placed(self, event: OrderPlaced, session: ProjectionSession) -> None:
        session.put(self.orders, CustomerOrder(
            customer_id=event.customer_id, order_id=event.order_id, status="placed", total=event.total,
            placed_at=event.placed_at, item_count=sum(line.quantity for line in event.lines),
            product_names=tuple(line.product_name for line in event.lines),
        ))

    @on(OrderConfirmed, OrderShipped, OrderCancelled)
    def moved(self, event: OrderConfirmed | OrderShipped | OrderCancelled, session: ProjectionSession) -> None:
        session.patch(self.orders, (event.customer_id, event.order_id), status=_status(event))


class CatalogProjection(Projection):
    """``ListProductsByCategory``: products with their category's name, price and what is available."""

    name = "catalog"
    version = 2  # 2: typed tables
    categories = Table(Named, key="id")
    products = Table(Listing, key="product_id", lookups=[("category_id", "discontinued", "name")])

    @on(CategoryCreated)
    def category(self, event: CategoryCreated, session: ProjectionSession) -> None:
        session.put(self.categories, Named(id=event.category_id, name=event.name))

    @on(ProductCreated)
    def product(self, event: ProductCreated, session: ProjectionSession) -> None:
        category = session.get(self.categories, event.category_id)
        session.put(self.products, Listing(
            product_id=event.product_id, category_id=event.category_id,
            category_name=category.name if category else "", name=event.name, description=event.description,
            price=event.price, available=0, discontinued=False, version=1,
        ))

    @on(PriceChanged)
    def price(self, event: PriceChanged, session: ProjectionSession) -> None:
        session.patch(self.products, event.product_id, price=event.new_price, version=event.version)

    @on(ProductDiscontinued)
    def discontinued(self, event: ProductDiscontinued, session: ProjectionSession) -> None:
        session.patch(self.products, event.product_id, discontinued=True, version=event.version)

    @on(*STOCK_EVENTS)
    def stock(self, event: StockEvent, session: ProjectionSession) -> None:
        session.patch(self.products, event.product_id, available=event.on_hand - event.reserved)


class SearchProjection(CatalogProjection):
    """``SearchProducts``: the catalogue plus each word of the products on sale, found by prefix."""

    name = "search"
    words = Table(Word, key=("word", "product_id"))

    @on(ProductCreated)
    def product(self, event: ProductCreated, session: ProjectionSession) -> None:
        super().product(event, session)
        for word in words_of(f"{event.name} {event.description}"):
            session.put(self.words, Word(word=word, product_id=event.product_id, name=event.name))

    @on(ProductDiscontinued)
    def discontinued(self, event: ProductDiscontinued, session: ProjectionSession) -> None:
        product = session.get(self.products, event.product_id)
        super().discontinued(event, session)
        if product is not None:  # a discontinued product is found no more
            for word in words_of(f"{product.name} {product.description}"):
                session.delete(self.words, (word, event.product_id))


class InventoryProjection(Projection):
    """``GetProductInventory`` (the seeds' ProductInventory): on hand, reserved, available."""

    name = "inventory"
    version = 2  # 2: typed tables
    inventory = Table(ProductInventory, key="product_id")

    @on(ProductCreated)
    def product(self, event: ProductCreated, session: ProjectionSession) -> None:
        session.put(self.inventory, ProductInventory(product_id=event.product_id, name=event.name, on_hand=0,
                                                     reserved=0, available=0, version=0))

    @on(*STOCK_EVENTS)
    def stock(self, event: StockEvent, session: ProjectionSession) -> None:
        session.patch(self.inventory, event.product_id, on_hand=event.on_hand, reserved=event.reserved,
                       available=event.on_hand - event.reserved, version=event.version)


class DashboardProjection(Projection):
    """``GetSalesDashboard`` and ``GetDailySales``: orders, units and revenue kept as orders come and go.

    Three tables of counts, each added to by every order without reading it (``put(..., add=...)``): per day
    and category (the report, and any period's categories), per day (the chart: an order counts once a day,
    whatever it bought), and per category over everything (the whole dashboard's breakdown, read without adding
    up days). Revenue is kept in whole cents.
    """

    name = "dashboard"
    version = 3  # 2: counts per day and per category beside the per-day-and-category ones; 3: typed tables
    categories = Table(Named, key="id")
    sales = Table(OrderSales, key="order_id")
    daily = Table(DayCategoryCounts, key=("day", "category_id"))
    days = Table(DayCounts, key="day")
    totals = Table(CategoryCounts, key="category_id")

    @on(CategoryCreated)
    def category(self, event: CategoryCreated, session: ProjectionSession) -> None:
        session.put(self.categories, Named(id=event.category_id, name=event.name))

    @on(OrderPlaced)
    def placed(self, event: OrderPlaced, session: ProjectionSession) -> None:
        sales = OrderSales(order_id=event.order_id, day=event.placed_at.date(), lines=tuple(
            Sale(category_id=line.category_id, quantity=line.quantity, total=line.total) for line in event.lines))
        session.put(self.sales, sales)
        self._count(session, sales, +1)

    @on(OrderCancelled)
    def cancelled(self, event: OrderCancelled, session: ProjectionSession) -> None:
        sales = session.get(self.sales, event.order_id)
        if sales is not None:
            self._count(session, sales, -1)

    def _count(self, session: ProjectionSession, sales: OrderSales, sign: int) -> None:
        """Add one order's sales (``sign`` +1) to the counts, or take them away (-1)."""
        per_category: dict[str, tuple[int, int]] = {}
        for line in sales.lines:
            units, cents = per_category.get(line.category_id, (0, 0))
            per_category[line.category_id] = (units + line.quantity, cents + int(line.total.scaleb(2)))
        day = sales.day
        session.put(self.days, DayCounts(day=day, orders=sign, units=sign * sum(u for u, _ in per_category.values()),
                                         revenue=sign * sum(c for _, c in per_category.values())), add=_COUNTS)
        for category_id, (units, cents) in per_category.items():
            category = session.get(self.categories, category_id)
            name = category.name if category else ""
            session.put(self.daily, DayCategoryCounts(day=day, category_id=category_id, category_name=name,
                                                      orders=sign, units=sign * units, revenue=sign * cents),
                        add=_COUNTS)
            session.put(self.totals, CategoryCounts(category_id=category_id, category_name=name, orders=sign,
                                                    units=sign * units, revenue=sign * cents), add=_COUNTS)


_COUNTS = ("orders", "units", "revenue")


def _status(event: OrderConfirmed | OrderShipped | OrderCancelled) -> str:
    return {OrderConfirmed: "confirmed", OrderShipped: "shipped", OrderCancelled: "cancelled"}[type(event)]


_WORD = re.compile(r"\w+")
LONGEST_WORD = 100
"""Characters of a word the search keeps: a key every backend indexes (PostgreSQL's index entries stop at
2,704 bytes); a longer word is found by its first hundred characters."""


def words_of(text: str) -> list[str]:
    """The distinct words of ``text`` as the search compares them: case and accents folded (``Café`` is
    ``cafe``), split at anything that is not a letter or a digit, cut at :data:`LONGEST_WORD` characters."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()
    return list(dict.fromkeys(word[:LONGEST_WORD] for word in _WORD.findall(folded)))


def all_projections() -> list[Projection]:
    return [cls() for cls in (OrderDetailsProjection, CustomerOrdersProjection, CatalogProjection,
                              SearchProjection, InventoryProjection, DashboardProjection)]
