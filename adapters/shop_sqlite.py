"""The reference shop on SQLite: its normalised write model and its denormalised read models."""

from __future__ import annotations

import abc
import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, ClassVar

from adapters.shop_storage import refused_or_down, translating
from domain.errors import ConcurrencyConflict
from domain.events import OrderLine
from domain.messages import (
    CategorySales,
    CustomerOrderSummary,
    DailySales,
    DaySales,
    OrderDetails,
    OrderLineView,
    Page,
    ProductInventory,
    ProductListing,
    SalesDashboard,
)
from domain.model import Order, OrderStatus, Product, Stock
from handlers.ports import ReadViews, WriteModel
from mediator.readmodels import ProjectionSession, ReadModels
from mediator.readmodels.sqlite import SqliteStorage

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


# -- read models ------------------------------------------------------------------------------------------

TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    # name: (columns DDL, key columns)
    "customers": ("customer_id TEXT PRIMARY KEY, name TEXT", ("customer_id",)),
    "orders": ("order_id TEXT PRIMARY KEY, customer_id TEXT, customer_name TEXT, status TEXT, total TEXT, "
               "placed_at TEXT, lines TEXT, version INTEGER", ("order_id",)),
    "summaries": ("customer_id TEXT, order_id TEXT, status TEXT, total TEXT, placed_at TEXT, item_count INTEGER, "
                  "product_names TEXT, PRIMARY KEY (customer_id, order_id)", ("customer_id", "order_id")),
    "categories": ("category_id TEXT PRIMARY KEY, name TEXT", ("category_id",)),
    "products": ("product_id TEXT PRIMARY KEY, category_id TEXT, category_name TEXT, name TEXT, "
                 "description TEXT, price TEXT, available INTEGER, discontinued INTEGER, version INTEGER",
                 ("product_id",)),
    "inventory": ("product_id TEXT PRIMARY KEY, name TEXT, on_hand INTEGER, reserved INTEGER, available INTEGER, "
                  "version INTEGER", ("product_id",)),
    "order_lines": ("order_id TEXT PRIMARY KEY, day TEXT, lines TEXT", ("order_id",)),
    # Money in the dashboard's tables is in whole cents, so that SQL can add it up.
    "daily": ("day TEXT, category_id TEXT, category_name TEXT, orders INTEGER, units INTEGER, revenue BIGINT, "
              "PRIMARY KEY (day, category_id)", ("day", "category_id")),
    "day_totals": ("day TEXT PRIMARY KEY, orders INTEGER, units INTEGER, revenue BIGINT", ("day",)),
    "category_totals": ("category_id TEXT PRIMARY KEY, category_name TEXT, orders INTEGER, units INTEGER, "
                        "revenue BIGINT", ("category_id",)),
}
CLUSTERED = frozenset({"daily", "day_totals", "category_totals"})
"""Tables SQLite keeps in key order (``WITHOUT ROWID``): the dashboard reads them in ranges of the key."""
INDEXES = {
    "summaries": ["customer_id, placed_at"],
    "products": ["category_id, name"],
}


class SqlReadQueries(ReadViews):
    """The shop's queries in SQL that SQLite and PostgreSQL share; a backend gives :meth:`_query`.

    Each statement names its table ``{t}`` and each parameter ``{p}``, filled in by ``_query`` with the
    table's name in the current generation and the driver's parameter marker.
    """

    engine: ReadModels
    marker: ClassVar[str]
    """The driver's parameter marker."""
    _selects: dict[tuple[str, tuple[str, ...]], str]
    _columns: dict[str, list[str]]

    def read(self, session: ProjectionSession, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        name = session.table(table)
        shape = (name, tuple(key))
        sql = self._selects.get(shape)
        if sql is None:
            where = " AND ".join(f"{k} = {self.marker}" for k in key)
            sql = self._selects[shape] = f"SELECT * FROM {name} WHERE {where}"
        cursor = session.handle.execute(sql, tuple(key.values()))
        row = cursor.fetchone()
        if row is None:
            return None
        columns = self._columns.get(name)
        if columns is None:
            columns = self._columns[name] = [c[0] for c in cursor.description or ()]
        return dict(zip(columns, row, strict=True))

    @abc.abstractmethod
    def _query(self, projection: str, table: str | tuple[str, ...], sql: str,
               params: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        """The rows of ``sql`` on ``projection``'s ``table``; none while that table does not exist yet.

        Given several tables, ``sql`` names each by its name in braces (``{day_totals}``): one
        statement reads them all from one snapshot, where two would see a batch committed in between.
        """

    def _tables(self, projection: str, table: str | tuple[str, ...]) -> dict[str, str]:
        """The names to fill into a statement: ``t``, or each of several tables by its name."""
        if isinstance(table, str):
            return {"t": self.engine.table(projection, table)}
        return {name: self.engine.table(projection, name) for name in table}

    def order_details(self, order_id: str) -> OrderDetails | None:
        rows = self._query("order_details", "orders", "SELECT * FROM {t} WHERE order_id = {p}", (order_id,))
        if not rows:
            return None
        _id, customer_id, customer_name, status, total, placed_at, lines, version = rows[0]
        return OrderDetails(
            order_id=order_id, customer_id=customer_id, customer_name=customer_name, status=status,
            total=Decimal(total), placed_at=dt.datetime.fromisoformat(placed_at),
            lines=tuple(OrderLineView(product_id=p, product_name=n, quantity=q, unit_price=Decimal(u))
                        for p, n, q, u in json.loads(lines)),
            version=version,
        )

    def customer_orders(self, customer_id: str) -> tuple[CustomerOrderSummary, ...]:
        rows = self._query("customer_orders", "summaries",
                           "SELECT * FROM {t} WHERE customer_id = {p} ORDER BY placed_at DESC, order_id",
                           (customer_id,))
        return tuple(
            CustomerOrderSummary(order_id=r[1], status=r[2], total=Decimal(r[3]),
                                 placed_at=dt.datetime.fromisoformat(r[4]), item_count=r[5],
                                 product_names=tuple(json.loads(r[6])))
            for r in rows
        )

    def products_by_category(self, category_id: str, page: int, page_size: int) -> Page:
        page, page_size = max(page, 1), min(max(page_size, 1), 100)
        rows = self._query(
            "catalog", "products",
            "SELECT product_id, name, price, category_name, available, version, COUNT(*) OVER () FROM {t} "
            "WHERE category_id = {p} AND discontinued = 0 ORDER BY name, product_id LIMIT {p} OFFSET {p}",
            (category_id, page_size, (page - 1) * page_size),
        )
        items = listings(rows)
        total = rows[0][6] if rows else self._count(category_id)
        return Page(items=items, page=page, page_size=page_size, total=total)

    def _count(self, category_id: str) -> int:
        rows = self._query("catalog", "products",
                           "SELECT COUNT(*) FROM {t} WHERE category_id = {p} AND discontinued = 0", (category_id,))
        return int(rows[0][0]) if rows else 0

    def product_inventory(self, product_id: str) -> ProductInventory | None:
        rows = self._query("inventory", "inventory", "SELECT * FROM {t} WHERE product_id = {p}", (product_id,))
        if not rows:
            return None
        r = rows[0]
        return ProductInventory(product_id=r[0], name=r[1], on_hand=r[2], reserved=r[3], available=r[4],
                                version=r[5])

    def sales_dashboard(self, since: dt.date | None) -> SalesDashboard:
        if since is None:  # the categories' totals are kept whole: twenty rows, whatever the history
            rows = self._query("dashboard", ("day_totals", "category_totals"), _DASHBOARD, ())
        else:  # over a period they are added up from its days
            day = since.isoformat()
            rows = self._query("dashboard", ("day_totals", "daily"), _DASHBOARD_SINCE, (day, day))
        return dashboard(since, rows)

    def daily_sales(self, since: dt.date | None) -> tuple[DailySales, ...]:
        rows = self._query("dashboard", "daily", "SELECT * FROM {t} WHERE day >= {p} ORDER BY day, category_id",
                           ((since or dt.date.min).isoformat(),))
        return tuple(DailySales(day=dt.date.fromisoformat(r[0]), category_id=r[1], category_name=r[2], orders=r[3],
                                units=r[4], revenue=money(r[5])) for r in rows if r[3] or r[4])


_DASHBOARD = ("SELECT 'day', day, '', orders, units, revenue FROM {day_totals} UNION ALL "
              "SELECT 'category', category_id, category_name, orders, units, revenue FROM {category_totals}")
_DASHBOARD_SINCE = (
    "SELECT 'day', day, '', orders, units, revenue FROM {day_totals} WHERE day >= {p} UNION ALL "
    "SELECT 'category', category_id, MIN(category_name), SUM(orders), SUM(units), SUM(revenue) FROM {daily} "
    "WHERE day >= {p} GROUP BY category_id"
)


def money(cents: int | Decimal) -> Decimal:
    """Whole cents as an amount with two places."""
    return Decimal(cents).scaleb(-2) if cents else ZERO


ZERO = Decimal("0.00")


def dashboard(since: dt.date | None, rows: Iterable[Sequence[Any]]) -> SalesDashboard:
    """The dashboard from rows of ``(kind, day or category id, category name, orders, units, cents)``.

    Shared by every backend so they agree on order and on what is left out; ``kind`` is ``'day'`` or
    ``'category'``.
    """
    days: list[DaySales] = []
    categories: list[CategorySales] = []
    orders = units = cents = 0
    for kind, key, name, count, sold, revenue in rows:
        if not (count or sold):
            continue  # every order of it was cancelled
        if kind == "day":
            days.append(DaySales(day=dt.date.fromisoformat(key), orders=count, units=sold, revenue=money(revenue)))
            orders, units, cents = orders + count, units + sold, cents + revenue
        else:
            categories.append(CategorySales(category_id=key, category_name=name, orders=count, units=sold,
                                            revenue=money(revenue)))
    days.sort(key=_by_day)
    categories.sort(key=_by_revenue)
    return SalesDashboard(since=since, orders=orders, units=units, revenue=money(cents), days=tuple(days),
                          categories=tuple(categories))


def _by_day(row: DaySales) -> dt.date:
    return row.day


def _by_revenue(row: CategorySales) -> tuple[Decimal, str]:
    return -row.revenue, row.category_id


def listings(rows: Iterable[Sequence[Any]]) -> tuple[ProductListing, ...]:
    """Rows of (product_id, name, price, category_name, available, version) as listings."""
    return tuple(ProductListing(product_id=r[0], name=r[1], price=Decimal(r[2]), category_name=r[3],
                                available=r[4], version=r[5]) for r in rows)


@translating("SQLite", _ERRORS)
class SqliteReadViews(SqlReadQueries):
    """Read models as tables of the read database; the search read model is an FTS5 table."""

    marker = "?"

    def __init__(self, storage: SqliteStorage, engine: ReadModels) -> None:
        self.storage = storage
        self.engine = engine
        # SQL text and column names, made once per table and shape: projections write thousands of rows a second.
        self._upserts: dict[tuple[str, tuple[str, ...]], str] = {}
        self._selects: dict[tuple[str, tuple[str, ...]], str] = {}
        self._columns: dict[str, list[str]] = {}

    def create(self, session: ProjectionSession) -> None:
        for name in _tables_of(session.name):
            columns, _key = TABLES[name]
            table = session.table(name)
            clustered = " WITHOUT ROWID" if name in CLUSTERED else ""
            session.handle.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns}){clustered}")
            for index, cols in enumerate(INDEXES.get(name, ())):
                session.handle.execute(f"CREATE INDEX IF NOT EXISTS {table}_i{index} ON {table} ({cols})")
        if session.name == "search":
            session.handle.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {session.table('text')} USING fts5("
                "product_id UNINDEXED, name, description, tokenize='unicode61')"
            )

    def drop(self, session: ProjectionSession) -> None:
        for name in [*_tables_of(session.name), *(["text"] if session.name == "search" else [])]:
            session.handle.execute(f"DROP TABLE IF EXISTS {session.table(name)}")

    def write(self, session: ProjectionSession, table: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        row = {**key, **values}
        name = session.table(table)
        if table == "text":
            session.handle.execute(f"DELETE FROM {name} WHERE product_id = ?", (key["product_id"],))
        shape = (name, tuple(row))
        sql = self._upserts.get(shape)
        if sql is None:
            sql = self._upserts[shape] = (f"INSERT OR REPLACE INTO {name} ({', '.join(row)}) "
                                          f"VALUES ({', '.join('?' * len(row))})")
        session.handle.execute(sql, [v if type(v) in _PLAIN else _db(v) for v in row.values()])

    def delete(self, session: ProjectionSession, table: str, key: dict[str, Any]) -> None:
        where = " AND ".join(f"{k} = ?" for k in key)
        session.handle.execute(f"DELETE FROM {session.table(table)} WHERE {where}", list(key.values()))

    # -- queries ------------------------------------------------------------------------------------------

    def _query(self, projection: str, table: str | tuple[str, ...], sql: str,
               params: tuple[Any, ...]) -> list[sqlite3.Row]:
        connection = self.storage.read_connection()
        try:
            return connection.execute(sql.format(p=self.marker, **self._tables(projection, table)), params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # nothing projected yet
            raise

    def search_products(self, text: str, limit: int) -> tuple[ProductListing, ...]:
        clean = "".join(c if c.isprintable() else " " for c in text).replace('"', " ")
        terms = " ".join(f'"{word}"*' for word in clean.split() if word)
        if not terms:
            return ()
        connection = self.storage.read_connection()
        found = self.engine.table("search", "text")
        products = self.engine.table("search", "products")
        try:
            rows = connection.execute(
                f"SELECT p.product_id, p.name, p.price, p.category_name, p.available, p.version FROM {found} f "
                f"JOIN {products} p ON p.product_id = f.product_id WHERE {found} MATCH ? AND p.discontinued = 0 "
                "ORDER BY rank LIMIT ?", (terms, min(max(limit, 1), 100)),
            ).fetchall()
        except sqlite3.OperationalError:  # no index yet, or text FTS5 cannot parse: nothing matches
            return ()
        return listings(rows)


_PLAIN = frozenset({str, int, float, bool, type(None)})
"""Types SQLite stores as they are: the common case of a column value, checked by one set lookup."""


def _db(value: Any) -> Any:
    if isinstance(value, Decimal | dt.date):
        return str(value) if isinstance(value, Decimal) else value.isoformat()
    if isinstance(value, list | tuple):
        return json.dumps([[_db(x) for x in v] if isinstance(v, list | tuple) else _db(v) for v in value])
    return value


PROJECTION_TABLES = {
    "order_details": ("customers", "orders"),
    "customer_orders": ("summaries",),
    "catalog": ("categories", "products"),
    "inventory": ("inventory",),
    "search": ("categories", "products"),
    "dashboard": ("categories", "order_lines", "daily", "day_totals", "category_totals"),
}


def _tables_of(projection: str) -> tuple[str, ...]:
    return PROJECTION_TABLES[projection]
