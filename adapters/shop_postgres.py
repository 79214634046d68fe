"""The reference shop's write model on PostgreSQL: the same as :mod:`adapters.shop_sqlite`'s (its read models are
typed tables: see :mod:`handlers.projections`).

Needs the ``postgres`` extra (psycopg 3) and runs on :class:`mediator.readmodels.postgres.PostgresStorage`: the write
tables, the event log and the read models share one database and schema.

Where SQLite's single writer lock runs one command at a time, here two commands' transactions really run
at once (only their event appends take turns), under READ COMMITTED. The optimistic checks are therefore
made by the writing statement itself, never by an earlier read: a create is ``INSERT ... ON CONFLICT DO
NOTHING`` and an update ``UPDATE ... WHERE version = expected``; a row count of 0 is a
:class:`~domain.errors.ConcurrencyConflict`. Both statements wait for a concurrent writer of the same row
to finish and then judge by what it committed, so of two racing commands exactly one wins. Two commands
that lock rows in opposite orders (orders of the same products listed differently) can deadlock;
PostgreSQL then aborts one of them, and that too is a conflict, which ``RetryOnConflict`` can rerun.

Differences from SQLite that do not change behaviour: money is ``NUMERIC`` and ``placed_at`` is
``TIMESTAMPTZ`` (loaded back in UTC), line order is a column instead of ``rowid``. The foreign keys that
the SQLite schema declares are not declared here: SQLite does not enforce them (its ``foreign_keys``
pragma is off), and enforcing them here would make the two backends disagree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

import psycopg
from psycopg import errors

from adapters.shop_storage import refused_or_down, translating
from domain.errors import ConcurrencyConflict
from domain.events import OrderLine
from domain.model import Order, OrderStatus, Product, Stock
from handlers.ports import WriteModel

WRITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS categories (category_id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    product_id TEXT PRIMARY KEY, category_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
    price NUMERIC NOT NULL, discontinued BOOLEAN NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stock (
    product_id TEXT PRIMARY KEY, on_hand INTEGER NOT NULL CHECK (on_hand >= 0),
    reserved INTEGER NOT NULL CHECK (reserved >= 0 AND reserved <= on_hand), version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, status TEXT NOT NULL, total NUMERIC NOT NULL,
    placed_at TIMESTAMPTZ NOT NULL, version INTEGER NOT NULL, stock_reserved BOOLEAN NOT NULL,
    shipping_address TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS order_items (
    order_id TEXT NOT NULL, line INTEGER NOT NULL, product_id TEXT NOT NULL, product_name TEXT NOT NULL,
    category_id TEXT NOT NULL, quantity INTEGER NOT NULL, unit_price NUMERIC NOT NULL,
    PRIMARY KEY (order_id, product_id));
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id);
"""

_PRODUCT_COLUMNS = "product_id, category_id, name, description, price, discontinued, version"
_ORDER_COLUMNS = "order_id, customer_id, status, total, placed_at, version, stock_reserved, shipping_address"
_CURRENT_VERSION = {
    "products": "SELECT version FROM products WHERE product_id = %s",
    "stock": "SELECT version FROM stock WHERE product_id = %s",
    "orders": "SELECT version FROM orders WHERE order_id = %s",
}
T = TypeVar("T")
_LOST_RACE = (errors.DeadlockDetected, errors.SerializationFailure)
"""What PostgreSQL raises on the statement it aborts when two transactions each wait for the other."""


_ERRORS = refused_or_down(refused=(psycopg.DataError, psycopg.IntegrityError, UnicodeEncodeError),
                          down=(psycopg.OperationalError, psycopg.errors.InFailedSqlTransaction),
                          passed=_LOST_RACE)
"""A lost race passes unchanged: the caller's conflict handling decides."""


@translating("PostgreSQL", _ERRORS)
class PostgresWriteModel(WriteModel):
    """Aggregates to and from the write tables; ``tx`` is the command's ``psycopg.Connection``."""

    def add_customer(self, tx: psycopg.Connection[Any], customer_id: str, name: str, email: str) -> None:
        tx.execute("INSERT INTO customers (customer_id, name, email) VALUES (%s, %s, %s)",
                   (customer_id, name, email))

    def customer_name(self, tx: psycopg.Connection[Any], customer_id: str) -> str | None:
        row = tx.execute("SELECT name FROM customers WHERE customer_id = %s", (customer_id,)).fetchone()
        return row[0] if row else None

    def add_category(self, tx: psycopg.Connection[Any], category_id: str, name: str) -> None:
        tx.execute("INSERT INTO categories (category_id, name) VALUES (%s, %s)", (category_id, name))

    def category_exists(self, tx: psycopg.Connection[Any], category_id: str) -> bool:
        return tx.execute("SELECT 1 FROM categories WHERE category_id = %s", (category_id,)).fetchone() is not None

    def product(self, tx: psycopg.Connection[Any], product_id: str) -> Product | None:
        row = tx.execute(f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE product_id = %s", (product_id,)).fetchone()
        return Product(*row) if row else None

    def save_product(self, tx: psycopg.Connection[Any], product: Product, expected_version: int) -> None:
        if expected_version == 0:
            _saved(tx, f"INSERT INTO products ({_PRODUCT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                       "ON CONFLICT (product_id) DO NOTHING",
                   (product.product_id, product.category_id, product.name, product.description, product.price,
                    product.discontinued, product.version), "products", "product", product.product_id, 0)
            return
        _saved(tx, "UPDATE products SET price = %s, discontinued = %s, version = %s "
                   "WHERE product_id = %s AND version = %s",
               (product.price, product.discontinued, product.version, product.product_id, expected_version),
               "products", "product", product.product_id, expected_version)

    def stock(self, tx: psycopg.Connection[Any], product_id: str) -> Stock:
        row = tx.execute("SELECT on_hand, reserved, version FROM stock WHERE product_id = %s",
                         (product_id,)).fetchone()
        return Stock(product_id, *row) if row else Stock(product_id)

    def save_stock(self, tx: psycopg.Connection[Any], stock: Stock, expected_version: int) -> None:
        if expected_version == 0:  # someone else may have created the row since it was read: a conflict too
            _saved(tx, "INSERT INTO stock (product_id, on_hand, reserved, version) VALUES (%s, %s, %s, %s) "
                       "ON CONFLICT (product_id) DO NOTHING",
                   (stock.product_id, stock.on_hand, stock.reserved, stock.version),
                   "stock", "stock", stock.product_id, 0)
            return
        _saved(tx, "UPDATE stock SET on_hand = %s, reserved = %s, version = %s WHERE product_id = %s AND version = %s",
               (stock.on_hand, stock.reserved, stock.version, stock.product_id, expected_version),
               "stock", "stock", stock.product_id, expected_version)

    def order(self, tx: psycopg.Connection[Any], order_id: str) -> Order | None:
        row = tx.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = %s", (order_id,)).fetchone()
        if row is None:
            return None
        lines = tuple(
            OrderLine(product_id=r[0], product_name=r[1], category_id=r[2], quantity=r[3], unit_price=r[4])
            for r in tx.execute("SELECT product_id, product_name, category_id, quantity, unit_price FROM order_items "
                                "WHERE order_id = %s ORDER BY line", (order_id,))
        )
        return Order(row[0], row[1], lines, row[3], row[4].astimezone(dt.UTC), OrderStatus(row[2]), row[5], row[6],
                     row[7])

    def save_order(self, tx: psycopg.Connection[Any], order: Order, expected_version: int) -> None:
        if expected_version == 0:
            _saved(tx, f"INSERT INTO orders ({_ORDER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                       "ON CONFLICT (order_id) DO NOTHING",
                   (order.order_id, order.customer_id, order.status.value, order.total, order.placed_at,
                    order.version, order.stock_reserved, order.shipping_address),
                   "orders", "order", order.order_id, 0)
            with tx.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO order_items (order_id, line, product_id, product_name, category_id, quantity, "
                    "unit_price) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(order.order_id, n, line.product_id, line.product_name, line.category_id, line.quantity,
                      line.unit_price) for n, line in enumerate(order.lines)])
            return
        _saved(tx, "UPDATE orders SET status = %s, version = %s, stock_reserved = %s "
                   "WHERE order_id = %s AND version = %s",
               (order.status.value, order.version, order.stock_reserved, order.order_id, expected_version),
               "orders", "order", order.order_id, expected_version)


def _saved(tx: psycopg.Connection[Any], statement: str, params: tuple[Any, ...], table: str, kind: str, key: str,
           expected: int) -> None:
    """Run the insert or versioned update ``statement``; raise ``ConcurrencyConflict`` unless it wrote one row."""
    try:
        cursor = tx.execute(statement, params)
    except _LOST_RACE as exc:
        # The transaction is aborted, so the version that won cannot be read (``actual`` says ``expected``).
        conflict = ConcurrencyConflict(kind, key, expected, expected)
        conflict.args = (f"{kind} {key!r} was locked by a concurrent command that waited on this one "
                         "(PostgreSQL ended the deadlock): reload and try again.",)
        raise conflict from exc
    if cursor.rowcount == 1:
        return
    # A fresh statement under READ COMMITTED: it sees what the writer that beat us committed.
    row = tx.execute(_CURRENT_VERSION[table], (key,)).fetchone()
    raise ConcurrencyConflict(kind, key, expected, row[0] if row else 0)
