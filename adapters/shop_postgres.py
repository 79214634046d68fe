"""The reference shop on PostgreSQL: the same write model and read models as :mod:`adapters.shop_sqlite`.

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
import functools
import re
import unicodedata
from typing import Any, TypeVar

import psycopg
from psycopg import errors

from adapters.shop_sqlite import INDEXES, PROJECTION_TABLES, TABLES, SqlReadQueries, _db, listings
from adapters.shop_storage import refused_or_down, translating
from domain.errors import ConcurrencyConflict
from domain.events import OrderLine
from domain.messages import (
    ProductListing,
)
from domain.model import Order, OrderStatus, Product, Stock
from handlers.ports import WriteModel
from mediator.readmodels import ProjectionSession, ReadModels
from mediator.readmodels.postgres import PostgresStorage

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


# -- read models ------------------------------------------------------------------------------------------

_KEYS: dict[str, tuple[str, ...]] = {name: key for name, (_ddl, key) in TABLES.items()} | {"text": ("product_id",)}
_COLUMNS: dict[str, tuple[str, ...]] = {
    name: tuple(part.split()[0] for part in re.sub(r",?\s*PRIMARY KEY \([^)]*\)", "", ddl).split(","))
    for name, (ddl, _key) in TABLES.items()
} | {"text": ("product_id", "name", "description", "words")}
"""Every column of each read-model table (the same tables as SQLite's), for replacing whole rows."""

_TEXT_TABLE = "product_id TEXT COLLATE \"C\" PRIMARY KEY, name TEXT, description TEXT, words TSVECTOR NOT NULL"
_LONGEST_WORD = 500
"""Characters of a word that search indexes (PostgreSQL refuses a lexeme of 2 KiB or more)."""


def _ddl(columns: str) -> str:
    # SQLite compares text byte by byte (and the memory backend by code point, the same order for UTF-8): so
    # must PostgreSQL, whatever the database's collation, for ORDER BY name and the ranges on day to agree.
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', columns)


@translating("PostgreSQL", _ERRORS)
class PostgresReadViews(SqlReadQueries):
    """Read models as tables of the shop's schema; search is a ``tsvector`` column with a GIN index."""

    marker = "%s"

    def __init__(self, storage: PostgresStorage, engine: ReadModels) -> None:
        self.storage = storage
        self.engine = engine
        # SQL text and column names, made once per table and shape: projections write thousands of rows a second.
        self._upserts: dict[tuple[str, tuple[str, ...]], str] = {}
        self._selects: dict[tuple[str, tuple[str, ...]], str] = {}
        self._deletes: dict[tuple[str, tuple[str, ...]], str] = {}
        self._columns: dict[str, list[str]] = {}

    def create(self, session: ProjectionSession) -> None:
        for name in PROJECTION_TABLES[session.name]:
            columns, _key = TABLES[name]
            table = session.table(name)
            session.handle.execute(f"CREATE TABLE IF NOT EXISTS {table} ({_ddl(columns)})")
            for index, cols in enumerate(INDEXES.get(name, ())):
                session.handle.execute(f"CREATE INDEX IF NOT EXISTS {table}_i{index} ON {table} ({cols})")
        if session.name == "search":
            text = session.table("text")
            session.handle.execute(f"CREATE TABLE IF NOT EXISTS {text} ({_TEXT_TABLE})")
            session.handle.execute(f"CREATE INDEX IF NOT EXISTS {text}_words ON {text} USING gin (words)")

    def drop(self, session: ProjectionSession) -> None:
        for name in [*PROJECTION_TABLES[session.name], *(["text"] if session.name == "search" else [])]:
            session.handle.execute(f"DROP TABLE IF EXISTS {session.table(name)}")

    def write(self, session: ProjectionSession, table: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        row = {**key, **values}
        if table == "text":
            row["words"] = _indexed(row.get("name") or "", row.get("description") or "")
        name = session.table(table)
        shape = (name, tuple(row))
        sql = self._upserts.get(shape)
        if sql is None:
            sql = self._upserts[shape] = _upsert(name, table, tuple(row))
        session.handle.execute(sql, [v if type(v) in _PLAIN else _pg(v) for v in row.values()])

    def delete(self, session: ProjectionSession, table: str, key: dict[str, Any]) -> None:
        name = session.table(table)
        shape = (name, tuple(key))
        sql = self._deletes.get(shape)
        if sql is None:
            sql = self._deletes[shape] = f"DELETE FROM {name} WHERE {' AND '.join(f'{k} = %s' for k in key)}"
        session.handle.execute(sql, tuple(key.values()))

    # -- queries ------------------------------------------------------------------------------------------

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` on this thread's read connection; none while a table in it does not exist yet."""
        connection = self.storage.read_connection()
        try:
            if connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                return self.storage.query(sql, params)  # autocommit; survives a server restart
            with connection.transaction():  # a savepoint: a missing table must not abort the caller's transaction
                return connection.execute(sql, params).fetchall()
        except errors.UndefinedTable:
            return []  # nothing projected yet

    def _query(self, projection: str, table: str | tuple[str, ...], sql: str,
               params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._rows(sql.format(p=self.marker, **self._tables(projection, table)), params)

    def search_products(self, text: str, limit: int) -> tuple[ProductListing, ...]:
        query = _search_query(text)
        if query is None:
            return ()
        found = self.engine.table("search", "text")
        products = self.engine.table("search", "products")
        rows = self._rows(
            f"SELECT p.product_id, p.name, p.price, p.category_name, p.available, p.version FROM {found} f "
            f"JOIN {products} p ON p.product_id = f.product_id CROSS JOIN CAST(%s AS tsquery) AS q "
            "WHERE f.words @@ q AND p.discontinued = 0 ORDER BY ts_rank(f.words, q) DESC, p.name, p.product_id "
            "LIMIT %s", (query, min(max(limit, 1), 100)),
        )
        return listings(rows)


def _upsert(name: str, table: str, columns: tuple[str, ...]) -> str:
    """SQLite's ``INSERT OR REPLACE``: the new row replaces the old one whole, columns not given become NULL."""
    keys = _KEYS[table]
    replaced = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[table] if c not in keys)
    return (f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT ({', '.join(keys)}) " + (f"DO UPDATE SET {replaced}" if replaced else "DO NOTHING"))


_PLAIN = frozenset({str, int, float, type(None)})
"""Types stored as they are: the common case of a column value, checked by one set lookup."""


def _pg(value: Any) -> Any:
    # The columns are SQLite's, where a flag is an INTEGER: PostgreSQL will not put a boolean there.
    return int(value) if isinstance(value, bool) else _db(value)


# -- search: FTS5's unicode61 tokenizer and its prefix queries, on a tsvector -------------------------------


_WORD = re.compile(r"(?:[^\W_]|[\ue000-\uf8ff\U000f0000-\U0010fffd])+")
"""A word: letters and digits (Unicode's L* and N*) and private-use characters, as unicode61 has it."""
_DIACRITICS = frozenset(map(chr, [*range(0x300, 0x305), *range(0x306, 0x30D), 0x30F, 0x311, 0x31B,
                                  *range(0x323, 0x329), 0x32D, 0x32E, 0x330, 0x331]))
"""The combining accents unicode61 takes as part of a word and removes (``sqlite3Fts5UnicodeIsdiacritic``)."""


def _words(text: str) -> list[str]:
    """The words of ``text`` as FTS5's unicode61 tokenizer finds them: case-folded, without Latin accents.

    The same as SQLite's for every script it knows; characters newer than its Unicode tables may differ.
    """
    folded = text.lower() if text.isascii() else "".join(map(_folded, text))
    return [word[:_LONGEST_WORD] for word in _WORD.findall(folded)]


@functools.lru_cache(maxsize=4096)  # search text comes from users: bounded
def _folded(char: str) -> str:
    # Simple case folding (a final sigma is a sigma, ẞ is ß, never ss), then remove_diacritics=1: an accent is
    # part of its word but dropped (b\u0308c is bc); a letter a-z with one accent loses it (é is e), one with
    # two (ǖ) and all other letters (ώ, ǣ) keep theirs; any other combining mark ends a word.
    if unicodedata.category(char) == "Mn":
        return "" if char in _DIACRITICS else char
    folded = char.casefold()
    if len(folded) != 1:
        folded = char.lower()
    return "".join(map(_unaccented, folded))


def _unaccented(char: str) -> str:
    if char in _DIACRITICS:
        return ""
    decomposed = unicodedata.normalize("NFD", char)
    if len(decomposed) == 2 and decomposed[0].isascii() and decomposed[1] in _DIACRITICS:
        return decomposed[0]
    return char


def _lexeme(word: str) -> str:
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


def _indexed(name: str, description: str) -> str:
    """A ``tsvector`` literal of both columns' words with their positions, for phrase queries.

    The description's positions start two after the name's last, so that no phrase spans the two columns
    (an FTS5 phrase matches within one column).
    """
    positions: dict[str, list[int]] = {}
    named = _words(name)
    for at, word in [*enumerate(named, 1), *enumerate(_words(description), len(named) + 2)]:
        positions.setdefault(word, []).append(min(at, 16383))  # PostgreSQL's highest position
    return " ".join(f"{_lexeme(word)}:{','.join(map(str, at))}" for word, at in positions.items())


def _search_query(text: str) -> str | None:
    """A ``tsquery`` for what SQLite's adapter asks FTS5: every whitespace-separated term, as a prefix.

    A term that holds several words (``adjust-a``) is a phrase whose last word is a prefix, as in FTS5; a
    term with no words is left out; ``None`` if none is left.
    """
    phrases = []
    for term in "".join(c if c.isprintable() else " " for c in text).replace('"', " ").split():
        words = _words(term)
        if words:
            phrases.append("(" + " <-> ".join(map(_lexeme, words)) + ":*)")
    return " & ".join(phrases) or None
