"""The ports the shop's handlers need; ``adapters`` implements them (SQLite by default).

``WriteModel`` loads and saves aggregates inside the command's transaction
(the unit of work's handle), with optimistic concurrency on versions. The read
side needs no port: its projections and queries use the engine's typed tables,
the same on every backend.
"""

from __future__ import annotations

import abc
from typing import Any

from domain.model import Order, Product, Stock


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
