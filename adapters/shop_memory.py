"""The reference shop in memory, for tests: the same ports as :mod:`adapters.shop_sqlite`, on dicts.

Rows are stored as the SQLite adapter stores them (decimals and dates as text,
lists as JSON), so the projections behave the same on both.
"""

from __future__ import annotations

from typing import Any

import attrs

from domain.errors import ConcurrencyConflict
from domain.model import Order, Product, Stock
from handlers.ports import WriteModel


class MemoryWriteModel(WriteModel):
    """Aggregates kept as copies in the write session's tables (``tx`` is its dict of tables)."""

    def _table(self, tx: dict[str, Any], name: str) -> dict[str, Any]:
        table: dict[str, Any] = tx.setdefault(f"write.{name}", {})
        return table

    def add_customer(self, tx: dict[str, Any], customer_id: str, name: str, email: str) -> None:
        self._table(tx, "customers")[customer_id] = (name, email)

    def customer_name(self, tx: dict[str, Any], customer_id: str) -> str | None:
        row = self._table(tx, "customers").get(customer_id)
        return row[0] if row else None

    def add_category(self, tx: dict[str, Any], category_id: str, name: str) -> None:
        self._table(tx, "categories")[category_id] = name

    def category_exists(self, tx: dict[str, Any], category_id: str) -> bool:
        return category_id in self._table(tx, "categories")

    def _load(self, tx: dict[str, Any], table: str, key: str) -> Any:
        found = self._table(tx, table).get(key)
        return attrs.evolve(found) if found is not None else None

    def _save(self, tx: dict[str, Any], table: str, kind: str, key: str, value: Any, expected: int) -> None:
        current = self._table(tx, table).get(key)
        actual = current.version if current is not None else 0
        if actual != expected:
            raise ConcurrencyConflict(kind, key, expected, actual)
        self._table(tx, table)[key] = attrs.evolve(value)

    def product(self, tx: dict[str, Any], product_id: str) -> Product | None:
        product: Product | None = self._load(tx, "products", product_id)
        return product

    def save_product(self, tx: dict[str, Any], product: Product, expected_version: int) -> None:
        self._save(tx, "products", "product", product.product_id, product, expected_version)

    def stock(self, tx: dict[str, Any], product_id: str) -> Stock:
        stock: Stock | None = self._load(tx, "stock", product_id)
        return stock if stock is not None else Stock(product_id)

    def save_stock(self, tx: dict[str, Any], stock: Stock, expected_version: int) -> None:
        self._save(tx, "stock", "stock", stock.product_id, stock, expected_version)

    def order(self, tx: dict[str, Any], order_id: str) -> Order | None:
        order: Order | None = self._load(tx, "orders", order_id)
        return order

    def save_order(self, tx: dict[str, Any], order: Order, expected_version: int) -> None:
        self._save(tx, "orders", "order", order.order_id, order, expected_version)
