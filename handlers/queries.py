"""Query handlers: each reads one denormalised read model through the views port, never the write tables."""

from __future__ import annotations

from domain.messages import (
    CustomerOrderSummary,
    DailySales,
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

from .ports import ReadViews


class ShopQueries:
    def __init__(self, views: ReadViews) -> None:
        self.views = views

    def order_details(self, query: GetOrderDetails) -> OrderDetails | None:
        return self.views.order_details(query.order_id)

    def customer_orders(self, query: GetCustomerOrders) -> tuple[CustomerOrderSummary, ...]:
        return self.views.customer_orders(query.customer_id)

    def products_by_category(self, query: ListProductsByCategory) -> Page:
        return self.views.products_by_category(query.category_id, query.page, query.page_size)

    def product_inventory(self, query: GetProductInventory) -> ProductInventory | None:
        return self.views.product_inventory(query.product_id)

    def search(self, query: SearchProducts) -> tuple[ProductListing, ...]:
        return self.views.search_products(query.text, query.limit)

    def dashboard(self, query: GetSalesDashboard) -> SalesDashboard:
        return self.views.sales_dashboard(query.since)

    def daily_sales(self, query: GetDailySales) -> tuple[DailySales, ...]:
        return self.views.daily_sales(query.since)


def register(registry: Registry, queries: ShopQueries) -> None:
    registry.handle(GetOrderDetails).by(queries.order_details)
    registry.handle(GetCustomerOrders).by(queries.customer_orders)
    registry.handle(ListProductsByCategory).by(queries.products_by_category)
    registry.handle(GetProductInventory).by(queries.product_inventory)
    registry.handle(SearchProducts).by(queries.search)
    registry.handle(GetSalesDashboard).by(queries.dashboard)
    registry.handle(GetDailySales).by(queries.daily_sales)
