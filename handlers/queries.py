"""Query handlers: each reads the typed tables of one projection through the engine, never the write tables.

The same code reads every backend; a query declares the projections it reads (``reads`` on the query class),
so inside ``consistent(token)`` it waits for them first.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from domain.messages import (
    CategorySales,
    CustomerOrderSummary,
    DailySales,
    DaySales,
    GetCustomerOrders,
    GetDailySales,
    GetOrderDetails,
    GetProductInventory,
    GetSalesDashboard,
    ListProductsByCategory,
    OrderDetails,
    Page,
    ProductInventory,
    ProductListing,
    SalesDashboard,
    SearchProducts,
)
from mediator import Registry
from mediator.readmodels import Prefix, Range, ReadModels

from .projections import (
    CatalogProjection,
    CustomerOrdersProjection,
    DashboardProjection,
    InventoryProjection,
    Listing,
    OrderDetailsProjection,
    SearchProjection,
    words_of,
)

ZERO = Decimal("0.00")


def money(cents: int) -> Decimal:
    """Whole cents as an amount with two places."""
    return Decimal(cents).scaleb(-2) if cents else ZERO


class ShopQueries:
    def __init__(self, read_models: ReadModels) -> None:
        self.read = read_models

    def order_details(self, query: GetOrderDetails) -> OrderDetails | None:
        return self.read.get(OrderDetailsProjection.orders, query.order_id)

    def customer_orders(self, query: GetCustomerOrders) -> tuple[CustomerOrderSummary, ...]:
        rows = self.read.find(CustomerOrdersProjection.orders, {"customer_id": query.customer_id},
                              order_by=("-placed_at", "order_id"))
        return tuple(CustomerOrderSummary(order_id=r.order_id, status=r.status, total=r.total,
                                          placed_at=r.placed_at, item_count=r.item_count,
                                          product_names=r.product_names) for r in rows)

    def products_by_category(self, query: ListProductsByCategory) -> Page:
        page, page_size = max(query.page, 1), min(max(query.page_size, 1), 100)
        on_sale = {"category_id": query.category_id, "discontinued": False}
        products = CatalogProjection.products
        with self.read.snapshot():  # the page and its total from one commit
            rows = self.read.find(products, on_sale, order_by="name", limit=page_size, offset=(page - 1) * page_size)
            total = self.read.count(products, on_sale)
        return Page(items=tuple(map(_listing, rows)), page=page, page_size=page_size, total=total)

    def product_inventory(self, query: GetProductInventory) -> ProductInventory | None:
        return self.read.get(InventoryProjection.inventory, query.product_id)

    def search(self, query: SearchProducts) -> tuple[ProductListing, ...]:
        """Products on sale having, for each word searched, a word that starts with it; by name."""
        terms = words_of(query.text)
        if not terms:
            return ()
        with self.read.snapshot():
            found: dict[str, str] | None = None  # product id: name
            for term in terms:
                named = {w.product_id: w.name for w in self.read.find(SearchProjection.words, {"word": Prefix(term)})}
                found = named if found is None else {p: n for p, n in found.items() if p in named}
            first = sorted((found or {}).items(), key=lambda item: (item[1], item[0]))[:min(max(query.limit, 1), 100)]
            rows = [self.read.get(SearchProjection.products, product_id) for product_id, _name in first]
        return tuple(_listing(row) for row in rows if row is not None and not row.discontinued)

    def dashboard(self, query: GetSalesDashboard) -> SalesDashboard:
        since = query.since
        after = {"day": Range(since)} if since is not None else None
        with self.read.snapshot():  # days and categories from one commit, so they add up alike
            days = self.read.find(DashboardProjection.days, after)
            if since is None:  # the categories' totals are kept whole: twenty rows, whatever the history
                categories = [(r.category_id, r.category_name, r.orders, r.units, r.revenue)
                              for r in self.read.find(DashboardProjection.totals)]
            else:  # over a period they are added up from its days
                summed: dict[str, tuple[str, int, int, int]] = {}
                for r in self.read.find(DashboardProjection.daily, after):
                    _name, orders, units, revenue = summed.get(r.category_id, ("", 0, 0, 0))
                    summed[r.category_id] = (r.category_name, orders + r.orders, units + r.units, revenue + r.revenue)
                categories = [(category_id, *counts) for category_id, counts in summed.items()]
        kept = [d for d in days if d.orders or d.units]  # days and categories every order of was cancelled go
        by_revenue = sorted((c for c in categories if c[2] or c[3]), key=lambda c: (-c[4], c[0]))
        return SalesDashboard(
            since=since, orders=sum(d.orders for d in kept), units=sum(d.units for d in kept),
            revenue=money(sum(d.revenue for d in kept)),
            days=tuple(DaySales(day=d.day, orders=d.orders, units=d.units, revenue=money(d.revenue)) for d in kept),
            categories=tuple(CategorySales(category_id=c, category_name=name, orders=orders, units=units,
                                           revenue=money(revenue)) for c, name, orders, units, revenue in by_revenue),
        )

    def daily_sales(self, query: GetDailySales) -> tuple[DailySales, ...]:
        rows = self.read.find(DashboardProjection.daily, {"day": Range(query.since or dt.date.min)})
        return tuple(DailySales(day=r.day, category_id=r.category_id, category_name=r.category_name,
                                orders=r.orders, units=r.units, revenue=money(r.revenue))
                     for r in rows if r.orders or r.units)


def _listing(row: Listing) -> ProductListing:
    return ProductListing(product_id=row.product_id, name=row.name, price=row.price,
                          category_name=row.category_name, available=row.available, version=row.version)


def register(registry: Registry, queries: ShopQueries) -> None:
    registry.handle(GetOrderDetails).by(queries.order_details)
    registry.handle(GetCustomerOrders).by(queries.customer_orders)
    registry.handle(ListProductsByCategory).by(queries.products_by_category)
    registry.handle(GetProductInventory).by(queries.product_inventory)
    registry.handle(SearchProducts).by(queries.search)
    registry.handle(GetSalesDashboard).by(queries.dashboard)
    registry.handle(GetDailySales).by(queries.daily_sales)
