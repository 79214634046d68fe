"""The scenario suite's baseline: the same shop as one normalised SQLite database, read with joins at query time.

This is what a competent engineer builds without CQRS: one WAL database serving
writes and reads, money in integer cents, the line's price kept with the order
item, names and categories joined in from the catalogue, and the indexes those
reads need (orders by customer and time, orders by time, items by order, items
by product, products by category and name). Every read answers with the same
types as the shop's queries (``domain.messages``), so the two can be compared
field for field, and both pay for building the same answer objects.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from domain.messages import (
    CategorySales,
    CustomerOrderSummary,
    DailySales,
    DaySales,
    OrderDetails,
    OrderLineView,
    Page,
    ProductListing,
    SalesDashboard,
)
from handlers.commands import new_id
from handlers.queries import money
from mediator.readmodels.sqlite import connect

from ._shopdata import OPENING_STOCK, Block, Catalog

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS categories (category_id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    product_id TEXT PRIMARY KEY, category_id TEXT NOT NULL REFERENCES categories, name TEXT NOT NULL,
    description TEXT NOT NULL, price_cents INTEGER NOT NULL, discontinued INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS stock (
    product_id TEXT PRIMARY KEY REFERENCES products, on_hand INTEGER NOT NULL,
    reserved INTEGER NOT NULL, CHECK (reserved >= 0 AND reserved <= on_hand));
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers, status TEXT NOT NULL,
    total_cents INTEGER NOT NULL, placed_at TEXT NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS order_items (
    order_id TEXT NOT NULL REFERENCES orders, line INTEGER NOT NULL, product_id TEXT NOT NULL REFERENCES products,
    quantity INTEGER NOT NULL CHECK (quantity > 0), unit_price_cents INTEGER NOT NULL, PRIMARY KEY (order_id, line));
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id, placed_at);
CREATE INDEX IF NOT EXISTS orders_by_time ON orders (placed_at);
CREATE INDEX IF NOT EXISTS items_by_product ON order_items (product_id);
CREATE INDEX IF NOT EXISTS products_by_category ON products (category_id, name);
"""

ORDER = ("SELECT o.customer_id, c.name, o.status, o.total_cents, o.placed_at, o.version FROM orders o "
         "JOIN customers c ON c.customer_id = o.customer_id WHERE o.order_id = ?")
ORDER_LINES = ("SELECT i.product_id, p.name, i.quantity, i.unit_price_cents FROM order_items i "
               "JOIN products p ON p.product_id = i.product_id WHERE i.order_id = ? ORDER BY i.line")
CUSTOMER_ORDERS = (
    "SELECT o.order_id, o.status, o.total_cents, o.placed_at, i.quantity, p.name FROM orders o "
    "JOIN order_items i ON i.order_id = o.order_id JOIN products p ON p.product_id = i.product_id "
    "WHERE o.customer_id = ? ORDER BY o.placed_at DESC, o.order_id, i.line")
PRODUCTS = (
    "SELECT p.product_id, p.name, p.price_cents, c.name, s.on_hand - s.reserved, p.version, COUNT(*) OVER () "
    "FROM products p JOIN categories c ON c.category_id = p.category_id JOIN stock s ON s.product_id = p.product_id "
    "WHERE p.category_id = ? AND p.discontinued = 0 ORDER BY p.name, p.product_id LIMIT ? OFFSET ?")
COUNT_PRODUCTS = "SELECT COUNT(*) FROM products WHERE category_id = ? AND discontinued = 0"
DASHBOARD = (
    "SELECT substr(o.placed_at, 1, 10) AS day, p.category_id, c.name, COUNT(DISTINCT o.order_id), "
    "SUM(i.quantity), SUM(i.quantity * i.unit_price_cents) FROM orders o "
    "JOIN order_items i ON i.order_id = o.order_id JOIN products p ON p.product_id = i.product_id "
    "JOIN categories c ON c.category_id = p.category_id "
    "WHERE o.status != 'cancelled' AND o.placed_at >= ? GROUP BY day, p.category_id ORDER BY day, p.category_id")

ORDERS_PER_DAY = ("SELECT substr(placed_at, 1, 10) AS day, COUNT(*) FROM orders "
                  "WHERE status != 'cancelled' AND placed_at >= ? GROUP BY day")


cents = money
"""Whole cents as an amount with two places: the same conversion as the shop's read models."""


class OutOfStock(Exception):
    """A checkout asked for more of a product than is available; nothing was written."""


class CrudShop:
    """The baseline shop on one connection (one per process: it is handed to a reader by its path)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = connect(path)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- loading ------------------------------------------------------------------------------------------

    def load_catalog(self, data: Catalog) -> None:
        with _transaction(self.db):
            self.db.executemany("INSERT INTO categories VALUES (?, ?)",
                                [(c.category_id, c.name) for c in data.categories])
            self.db.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?, 0, 1)", [
                (p.product_id, p.category_id, p.name, p.description, p.price_cents) for p in data.products])
            self.db.executemany("INSERT INTO stock VALUES (?, ?, 0)",
                                [(p.product_id, OPENING_STOCK) for p in data.products])

    def load(self, data: Catalog, part: Block) -> None:
        """Bulk-insert a block's customers, orders and items, and reserve the stock they hold."""
        orders, items, held = [], [], dict.fromkeys((p.product_id for p in data.products), 0)
        for order in part.orders:
            total = 0
            for line, (product_id, quantity) in enumerate(order.items):
                price = data.product(product_id).price_cents
                items.append((order.order_id, line, product_id, quantity, price))
                held[product_id] += quantity
                total += price * quantity
            orders.append((order.order_id, order.customer_id, "placed", total, order.placed_at.isoformat(), 1))
        with _transaction(self.db):
            self.db.executemany("INSERT INTO customers VALUES (?, ?, ?)",
                                [(c.customer_id, c.name, c.email) for c in part.customers])
            self.db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", orders)
            self.db.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?, ?)", items)
            self.db.executemany("UPDATE stock SET reserved = reserved + ? WHERE product_id = ?",
                                [(quantity, product_id) for product_id, quantity in held.items() if quantity])

    # -- the checkout -------------------------------------------------------------------------------------

    def checkout(self, customer_id: str, items: Sequence[tuple[str, int]]) -> str:
        """Place an order in one transaction: its row, its items, and each line's stock reserved if available."""
        order_id = new_id()  # made as the cqrs shop makes them
        with _transaction(self.db):
            if self.db.execute("SELECT 1 FROM customers WHERE customer_id = ?", (customer_id,)).fetchone() is None:
                raise LookupError(f"No customer {customer_id!r}.")
            rows, total = [], 0
            for line, (product_id, quantity) in enumerate(items):
                price = self.db.execute("SELECT price_cents FROM products WHERE product_id = ? AND discontinued = 0",
                                        (product_id,)).fetchone()
                if price is None:
                    raise LookupError(f"No product {product_id!r} on sale.")
                reserved = self.db.execute(
                    "UPDATE stock SET reserved = reserved + ? WHERE product_id = ? AND on_hand - reserved >= ?",
                    (quantity, product_id, quantity))
                if reserved.rowcount != 1:
                    raise OutOfStock(product_id)
                rows.append((order_id, line, product_id, quantity, price[0]))
                total += price[0] * quantity
            self.db.execute("INSERT INTO orders VALUES (?, ?, 'placed', ?, ?, 1)",
                            (order_id, customer_id, total, dt.datetime.now(dt.UTC).isoformat()))
            self.db.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?, ?)", rows)
        return order_id

    # -- the reads, computed at query time ----------------------------------------------------------------

    def order_details(self, order_id: str) -> OrderDetails | None:
        row = self.db.execute(ORDER, (order_id,)).fetchone()
        if row is None:
            return None
        customer_id, customer_name, status, total, placed_at, version = row
        lines = tuple(OrderLineView(product_id=p, product_name=n, quantity=q, unit_price=cents(u))
                      for p, n, q, u in self.db.execute(ORDER_LINES, (order_id,)))
        return OrderDetails(order_id=order_id, customer_id=customer_id, customer_name=customer_name, status=status,
                            total=cents(total), placed_at=dt.datetime.fromisoformat(placed_at), lines=lines,
                            version=version)

    def customer_orders(self, customer_id: str) -> tuple[CustomerOrderSummary, ...]:
        rows = self.db.execute(CUSTOMER_ORDERS, (customer_id,)).fetchall()
        summaries = []
        for (order_id, status, total, placed_at), lines in itertools.groupby(rows, key=lambda r: r[:4]):
            quantities_and_names = [(r[4], r[5]) for r in lines]
            summaries.append(CustomerOrderSummary(
                order_id=order_id, status=status, total=cents(total), placed_at=dt.datetime.fromisoformat(placed_at),
                item_count=sum(q for q, _n in quantities_and_names),
                product_names=tuple(n for _q, n in quantities_and_names)))
        return tuple(summaries)

    def products_by_category(self, category_id: str, page: int = 1, page_size: int = 20) -> Page:
        page, page_size = max(page, 1), min(max(page_size, 1), 100)
        rows = self.db.execute(PRODUCTS, (category_id, page_size, (page - 1) * page_size)).fetchall()
        items = tuple(ProductListing(product_id=r[0], name=r[1], price=cents(r[2]), category_name=r[3],
                                     available=r[4], version=r[5]) for r in rows)
        total = rows[0][6] if rows else int(self.db.execute(COUNT_PRODUCTS, (category_id,)).fetchone()[0])
        return Page(items=items, page=page, page_size=page_size, total=total)

    def sales_dashboard(self, since: dt.date | None = None) -> SalesDashboard:
        """The dashboard from the same aggregate as the report, folded per day and per category.

        That is one pass over the orders and their items, plus a count of each day's orders (an order
        that bought from two categories counts once a day): cheaper than a second aggregate over the items.
        """
        start = (since or dt.date.min).isoformat()
        with _snapshot(self.db):
            rows = self.db.execute(DASHBOARD, (start,)).fetchall()
            per_day = dict(self.db.execute(ORDERS_PER_DAY, (start,)).fetchall())
        days: dict[str, list[int]] = {}
        categories: dict[str, list[Any]] = {}
        for day, category_id, name, orders, units, revenue in rows:
            figures = days.setdefault(day, [per_day[day], 0, 0])
            figures[1] += units
            figures[2] += revenue
            figures = categories.setdefault(category_id, [name, 0, 0, 0])
            figures[1] += orders
            figures[2] += units
            figures[3] += revenue
        by_revenue = sorted(categories.items(), key=lambda item: (-item[1][3], item[0]))
        return SalesDashboard(
            since=since, orders=sum(f[0] for f in days.values()), units=sum(f[1] for f in days.values()),
            revenue=cents(sum(f[2] for f in days.values())),
            days=tuple(DaySales(day=dt.date.fromisoformat(day), orders=orders, units=units, revenue=cents(revenue))
                       for day, (orders, units, revenue) in days.items()),
            categories=tuple(CategorySales(category_id=category_id, category_name=name, orders=orders, units=units,
                                           revenue=cents(revenue))
                             for category_id, (name, orders, units, revenue) in by_revenue),
        )

    def daily_sales(self, since: dt.date | None = None) -> tuple[DailySales, ...]:
        rows = self.db.execute(DASHBOARD, ((since or dt.date.min).isoformat(),)).fetchall()
        return tuple(DailySales(day=dt.date.fromisoformat(day), category_id=category_id, category_name=name,
                                orders=orders, units=units, revenue=cents(revenue))
                     for day, category_id, name, orders, units, revenue in rows)


@contextlib.contextmanager
def _snapshot(db: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: the statements inside see one snapshot, though checkouts commit meanwhile."""
    db.execute("BEGIN")
    try:
        yield
    finally:
        db.execute("COMMIT")


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` if the block raises (the connection autocommits)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
