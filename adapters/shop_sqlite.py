"""The reference shop's normalised write model on SQLite (its read models are typed tables: see
:mod:`handlers.projections`)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal

from adapters.shop_storage import refused_or_down, translating
from domain.errors import ConcurrencyConflict
from domain.events import OrderLine
from domain.model import Order, OrderStatus, Product, Stock
from handlers.ports import WriteModel

WRITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS categories (category_id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    product_id TEXT PRIMARY KEY, category_id TEXT NOT NULL REFERENCES categories, name TEXT NOT NULL,
    description TEXT NOT NULL, price TEXT NOT NULL, discontinued INTEGER NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stock (
    product_id TEXT PRIMARY KEY REFERENCES products, on_hand INTEGER NOT NULL CHECK (on_hand >= 0),
    reserved INTEGER NOT NULL CHECK (reserved >= 0 AND reserved <= on_hand), version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers, status TEXT NOT NULL,
    total TEXT NOT NULL, placed_at TEXT NOT NULL, version INTEGER NOT NULL, stock_reserved INTEGER NOT NULL,
    shipping_address TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS order_items (
    order_id TEXT NOT NULL REFERENCES orders, product_id TEXT NOT NULL, product_name TEXT NOT NULL,
    category_id TEXT NOT NULL, quantity INTEGER NOT NULL, unit_price TEXT NOT NULL,
    PRIMARY KEY (order_id, product_id));
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id);
"""


_ERRORS = refused_or_down(refused=(sqlite3.IntegrityError, sqlite3.DataError, OverflowError, UnicodeEncodeError),
                          down=(sqlite3.OperationalError, sqlite3.DatabaseError))


@translating("SQLite", _ERRORS)
class SqliteWriteModel(WriteModel):
    """Aggregates to and from the write tables; ``tx`` is the command's ``sqlite3.Connection``."""

    def add_customer(self, tx: sqlite3.Connection, customer_id: str, name: str, email: str) -> None:
        tx.execute("INSERT INTO customers VALUES (?, ?, ?)", (customer_id, name, email))

    def customer_name(self, tx: sqlite3.Connection, customer_id: str) -> str | None:
        row = tx.execute("SELECT name FROM customers WHERE customer_id = ?", (customer_id,)).fetchone()
        return row[0] if row else None

    def add_category(self, tx: sqlite3.Connection, category_id: str, name: str) -> None:
        tx.execute("INSERT INTO categories VALUES (?, ?)", (category_id, name))

    def category_exists(self, tx: sqlite3.Connection, category_id: str) -> bool:
        return tx.execute("SELECT 1 FROM categories WHERE category_id = ?", (category_id,)).fetchone() is not None

    def product(self, tx: sqlite3.Connection, product_id: str) -> Product | None:
        row = tx.execute("SELECT * FROM products WHERE product_id = ?", (product_id,)).fetchone()
        if row is None:
            return None
        return Product(row[0], row[1], row[2], row[3], Decimal(row[4]), bool(row[5]), row[6])

    def save_product(self, tx: sqlite3.Connection, product: Product, expected_version: int) -> None:
        if expected_version == 0:
            _updated(tx.execute(
                "INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (product.product_id, product.category_id, product.name, product.description, str(product.price),
                 int(product.discontinued), product.version),
            ), tx, "products", "product", product.product_id, expected_version)
            return
        _updated(tx.execute(
            "UPDATE products SET price = ?, discontinued = ?, version = ? WHERE product_id = ? AND version = ?",
            (str(product.price), int(product.discontinued), product.version, product.product_id, expected_version),
        ), tx, "products", "product", product.product_id, expected_version)

    def stock(self, tx: sqlite3.Connection, product_id: str) -> Stock:
        row = tx.execute("SELECT on_hand, reserved, version FROM stock WHERE product_id = ?", (product_id,)).fetchone()
        return Stock(product_id, *row) if row else Stock(product_id)

    def save_stock(self, tx: sqlite3.Connection, stock: Stock, expected_version: int) -> None:
        if expected_version == 0:  # someone else may have created the row since it was read: a conflict too
            _updated(tx.execute("INSERT INTO stock VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                                (stock.product_id, stock.on_hand, stock.reserved, stock.version)),
                     tx, "stock", "stock", stock.product_id, expected_version)
            return
        _updated(tx.execute(
            "UPDATE stock SET on_hand = ?, reserved = ?, version = ? WHERE product_id = ? AND version = ?",
            (stock.on_hand, stock.reserved, stock.version, stock.product_id, expected_version),
        ), tx, "stock", "stock", stock.product_id, expected_version)

    def order(self, tx: sqlite3.Connection, order_id: str) -> Order | None:
        row = tx.execute("SELECT order_id, customer_id, status, total, placed_at, version, stock_reserved, "
                         "shipping_address FROM orders WHERE order_id = ?", (order_id,)).fetchone()
        if row is None:
            return None
        lines = tuple(
            OrderLine(product_id=r[1], product_name=r[2], category_id=r[3], quantity=r[4], unit_price=Decimal(r[5]))
            for r in tx.execute("SELECT * FROM order_items WHERE order_id = ? ORDER BY rowid", (order_id,))
        )
        return Order(row[0], row[1], lines, Decimal(row[3]), dt.datetime.fromisoformat(row[4]),
                     OrderStatus(row[2]), row[5], bool(row[6]), row[7])

    def save_order(self, tx: sqlite3.Connection, order: Order, expected_version: int) -> None:
        if expected_version == 0:
            _updated(tx.execute(
                "INSERT INTO orders (order_id, customer_id, status, total, placed_at, version, stock_reserved, "
                "shipping_address) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (order.order_id, order.customer_id, order.status.value, str(order.total), order.placed_at.isoformat(),
                 order.version, int(order.stock_reserved), order.shipping_address),
            ), tx, "orders", "order", order.order_id, expected_version)
            tx.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?, ?, ?)", [
                (order.order_id, line.product_id, line.product_name, line.category_id, line.quantity,
                 str(line.unit_price)) for line in order.lines])
            return
        _updated(tx.execute(
            "UPDATE orders SET status = ?, version = ?, stock_reserved = ? WHERE order_id = ? AND version = ?",
            (order.status.value, order.version, int(order.stock_reserved), order.order_id, expected_version),
        ), tx, "orders", "order", order.order_id, expected_version)


def _updated(cursor: sqlite3.Cursor, tx: sqlite3.Connection, table: str, kind: str, key: str, expected: int) -> None:
    if cursor.rowcount == 1:
        return
    column = {"products": "product_id", "stock": "product_id", "orders": "order_id"}[table]
    row = tx.execute(f"SELECT version FROM {table} WHERE {column} = ?", (key,)).fetchone()
    raise ConcurrencyConflict(kind, key, expected, row[0] if row else 0)
