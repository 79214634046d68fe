"""The reference shop in memory, for tests: the same ports as :mod:`adapters.shop_sqlite`, on dicts.

Rows are stored as the SQLite adapter stores them (decimals and dates as text,
lists as JSON), so the projections behave the same on both.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import attrs

from adapters.shop_sqlite import _db, dashboard, money
from domain.errors import ConcurrencyConflict
from domain.messages import (
    CustomerOrderSummary,
    DailySales,
    OrderDetails,
    OrderLineView,
    Page,
    ProductInventory,
    ProductListing,
    SalesDashboard,
)
from domain.model import Order, Product, Stock
from handlers.ports import ReadViews, WriteModel
from mediator.readmodels import ProjectionSession
from mediator.readmodels.memory import MemoryStorage


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


class MemoryReadViews(ReadViews):
    """Read models as dicts of rows, keyed by their key columns."""

    def __init__(self, storage: MemoryStorage) -> None:
        self.storage = storage

    def create(self, session: ProjectionSession) -> None:
        """Nothing to create: tables appear on first write."""

    def drop(self, session: ProjectionSession) -> None:
        prefix, suffix = f"{session.name}__", f"__g{session.generation}"
        for name in [n for n in session.handle if n.startswith(prefix) and n.endswith(suffix)]:
            del session.handle[name]

    def write(self, session: ProjectionSession, table: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        rows = session.handle.setdefault(session.table(table), {})
        rows[tuple(key.values())] = {name: _db(value) for name, value in {**key, **values}.items()}

    def read(self, session: ProjectionSession, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        row = session.handle.get(session.table(table), {}).get(tuple(key.values()))
        return dict(row) if row is not None else None

    def delete(self, session: ProjectionSession, table: str, key: dict[str, Any]) -> None:
        session.handle.get(session.table(table), {}).pop(tuple(key.values()), None)

    def _rows(self, projection: str, table: str) -> list[dict[str, Any]]:
        return list((self.storage.read_table(projection, table) or {}).values())

    def order_details(self, order_id: str) -> OrderDetails | None:
        row = next((r for r in self._rows("order_details", "orders") if r["order_id"] == order_id), None)
        if row is None:
            return None
        return OrderDetails(
            order_id=order_id, customer_id=row["customer_id"], customer_name=row["customer_name"],
            status=row["status"], total=Decimal(row["total"]), placed_at=dt.datetime.fromisoformat(row["placed_at"]),
            lines=tuple(OrderLineView(product_id=p, product_name=n, quantity=q, unit_price=Decimal(u))
                        for p, n, q, u in json.loads(row["lines"])),
            version=row["version"],
        )

    def customer_orders(self, customer_id: str) -> tuple[CustomerOrderSummary, ...]:
        rows = sorted((r for r in self._rows("customer_orders", "summaries") if r["customer_id"] == customer_id),
                      key=lambda r: (r["placed_at"], r["order_id"]))
        rows.sort(key=lambda r: r["placed_at"], reverse=True)
        return tuple(
            CustomerOrderSummary(order_id=r["order_id"], status=r["status"], total=Decimal(r["total"]),
                                 placed_at=dt.datetime.fromisoformat(r["placed_at"]), item_count=r["item_count"],
                                 product_names=tuple(json.loads(r["product_names"])))
            for r in rows
        )

    def _listing(self, row: dict[str, Any]) -> ProductListing:
        return ProductListing(product_id=row["product_id"], name=row["name"], price=Decimal(row["price"]),
                              category_name=row["category_name"], available=row["available"], version=row["version"])

    def products_by_category(self, category_id: str, page: int, page_size: int) -> Page:
        page, page_size = max(page, 1), min(max(page_size, 1), 100)
        rows = sorted((r for r in self._rows("catalog", "products")
                       if r["category_id"] == category_id and not r["discontinued"]),
                      key=lambda r: (r["name"], r["product_id"]))
        chosen = rows[(page - 1) * page_size: page * page_size]
        return Page(items=tuple(self._listing(r) for r in chosen), page=page, page_size=page_size, total=len(rows))

    def product_inventory(self, product_id: str) -> ProductInventory | None:
        row = next((r for r in self._rows("inventory", "inventory") if r["product_id"] == product_id), None)
        if row is None:
            return None
        return ProductInventory(product_id=product_id, name=row["name"], on_hand=row["on_hand"],
                                reserved=row["reserved"], available=row["available"], version=row["version"])

    def search_products(self, text: str, limit: int) -> tuple[ProductListing, ...]:
        words = [w.lower() for w in text.replace('"', " ").split() if w]
        if not words:
            return ()
        texts = {r["product_id"]: f"{r['name']} {r['description']}".lower().split()
                 for r in self._rows("search", "text")}
        found = [r for r in self._rows("search", "products") if not r["discontinued"] and all(
            any(token.startswith(word) for token in texts.get(r["product_id"], [])) for word in words)]
        return tuple(self._listing(r) for r in sorted(found, key=lambda r: r["name"])[:min(max(limit, 1), 100)])

    def sales_dashboard(self, since: dt.date | None) -> SalesDashboard:
        start = (since or dt.date.min).isoformat()
        rows: list[tuple[str, str, str, int, int, int]] = [
            ("day", r["day"], "", r["orders"], r["units"], r["revenue"])
            for r in self._rows("dashboard", "day_totals") if r["day"] >= start
        ]
        if since is None:
            rows += [("category", r["category_id"], r["category_name"], r["orders"], r["units"], r["revenue"])
                     for r in self._rows("dashboard", "category_totals")]
        else:
            summed: dict[str, tuple[str, int, int, int]] = {}
            for r in self._rows("dashboard", "daily"):
                if r["day"] >= start:
                    _name, orders, units, revenue = summed.get(r["category_id"], ("", 0, 0, 0))
                    summed[r["category_id"]] = (r["category_name"], orders + r["orders"], units + r["units"],
                                                revenue + r["revenue"])
            rows += [("category", key, *figures) for key, figures in summed.items()]
        return dashboard(since, rows)

    def daily_sales(self, since: dt.date | None) -> tuple[DailySales, ...]:
        start = (since or dt.date.min).isoformat()
        rows = [r for r in self._rows("dashboard", "daily") if r["day"] >= start and (r["orders"] or r["units"])]
        rows.sort(key=lambda r: (r["day"], r["category_id"]))
        return tuple(DailySales(day=dt.date.fromisoformat(r["day"]), category_id=r["category_id"],
                                category_name=r["category_name"], orders=r["orders"], units=r["units"],
                                revenue=money(r["revenue"])) for r in rows)
