"""The ports the shop's handlers need; ``adapters`` implements them (SQLite by default).

``WriteModel`` loads and saves aggregates inside the command's transaction
(the unit of work's handle), with optimistic concurrency on versions.
``ReadViews`` is the read side: each projection writes through it and each
query reads through it, never touching the write tables.
"""

from __future__ import annotations

import abc
from typing import Any

from domain.messages import (
    CustomerOrderSummary,
    DailySales,
    OrderDetails,
    Page,
    ProductInventory,
    ProductListing,
    SalesDashboard,
)
from domain.model import Order, Product, Stock
from mediator.readmodels import ProjectionSession


class WriteModel(abc.ABC):
    """Normalised tables of customers, categories, products, stock, orders and order items."""

    @abc.abstractmethod
    def add_customer(self, tx: Any, customer_id: str, name: str, email: str) -> None: ...

    @abc.abstractmethod
    def customer_name(self, tx: Any, customer_id: str) -> str | None: ...

    @abc.abstractmethod
    def add_category(self, tx: Any, category_id: str, name: str) -> None: ...

    @abc.abstractmethod
    def category_exists(self, tx: Any, category_id: str) -> bool: ...

    @abc.abstractmethod
    def product(self, tx: Any, product_id: str) -> Product | None: ...

    @abc.abstractmethod
    def save_product(self, tx: Any, product: Product, expected_version: int) -> None:
        """Insert (``expected_version`` 0) or update; raise ``ConcurrencyConflict`` if it moved."""

    @abc.abstractmethod
    def stock(self, tx: Any, product_id: str) -> Stock: ...

    @abc.abstractmethod
    def save_stock(self, tx: Any, stock: Stock, expected_version: int) -> None: ...

    @abc.abstractmethod
    def order(self, tx: Any, order_id: str) -> Order | None: ...

    @abc.abstractmethod
    def save_order(self, tx: Any, order: Order, expected_version: int) -> None: ...


class ReadViews(abc.ABC):
    """The denormalised read models: written by projections, read by queries."""

    # -- written by projections (inside the projection's session) -----------------------------------
    @abc.abstractmethod
    def create(self, session: ProjectionSession) -> None:
        """Create this projection generation's tables."""

    @abc.abstractmethod
    def drop(self, session: ProjectionSession) -> None:
        """Drop this projection generation's tables."""

    @abc.abstractmethod
    def write(self, session: ProjectionSession, table: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        """Insert or replace the row of ``table`` identified by ``key``."""

    @abc.abstractmethod
    def read(self, session: ProjectionSession, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """The row of ``table`` identified by ``key`` in this generation, if any."""

    @abc.abstractmethod
    def delete(self, session: ProjectionSession, table: str, key: dict[str, Any]) -> None: ...

    # -- read by queries (the current generations) -------------------------------------------------------
    @abc.abstractmethod
    def order_details(self, order_id: str) -> OrderDetails | None: ...

    @abc.abstractmethod
    def customer_orders(self, customer_id: str) -> tuple[CustomerOrderSummary, ...]: ...

    @abc.abstractmethod
    def products_by_category(self, category_id: str, page: int, page_size: int) -> Page: ...

    @abc.abstractmethod
    def product_inventory(self, product_id: str) -> ProductInventory | None: ...

    @abc.abstractmethod
    def search_products(self, text: str, limit: int) -> tuple[ProductListing, ...]: ...

    @abc.abstractmethod
    def sales_dashboard(self, since: Any) -> SalesDashboard: ...

    @abc.abstractmethod
    def daily_sales(self, since: Any) -> tuple[DailySales, ...]: ...
