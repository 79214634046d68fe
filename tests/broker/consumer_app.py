"""A downstream service for the broker tests and demo: shop order events from NATS into its own SQLite projection.

It keeps its own database file: received events are appended to its own event
log by an :class:`~mediator.relay.Inbox` (once each, by event id), and its own
``ReadModels`` project them into ``customer_orders``: per customer, orders placed,
orders cancelled and revenue placed.

``python -m tests.broker.consumer_app --url nats://127.0.0.1:4222 --stream SHOP --durable billing --db billing.db
--subject 'shop.events.>'`` consumes until SIGTERM or SIGINT, then prints ``handled <messages> new <events>
duplicates <events>``.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path
from types import FrameType

import attrs

from adapters.shop_app import event_types
from domain.events import OrderCancelled, OrderPlaced
from mediator.readmodels import Delivery, Projection, ProjectionSession, ReadModels, on, table_name
from mediator.readmodels.sqlite import SqliteStorage
from mediator.relay import Inbox

Counts = dict[str, tuple[int, int, Decimal]]
"""Per customer: (orders placed, orders cancelled, revenue placed)."""


class CustomerOrders(Projection):
    """Orders placed and cancelled, and revenue placed, per customer."""

    name = "customer_orders"

    def setup(self, session: ProjectionSession) -> None:
        session.handle.execute(
            f"CREATE TABLE IF NOT EXISTS {session.table('customers')} (customer_id TEXT PRIMARY KEY, placed "
            "INTEGER NOT NULL DEFAULT 0, cancelled INTEGER NOT NULL DEFAULT 0, revenue TEXT NOT NULL DEFAULT '0')"
        )

    def teardown(self, session: ProjectionSession) -> None:
        session.handle.execute(f"DROP TABLE IF EXISTS {session.table('customers')}")

    def _row(self, session: ProjectionSession, customer_id: str) -> tuple[int, int, Decimal]:
        table = session.table("customers")
        session.handle.execute(f"INSERT OR IGNORE INTO {table} (customer_id) VALUES (?)", (customer_id,))
        placed, cancelled, revenue = session.handle.execute(
            f"SELECT placed, cancelled, revenue FROM {table} WHERE customer_id = ?", (customer_id,)).fetchone()
        return placed, cancelled, Decimal(revenue)

    def _write(self, session: ProjectionSession, customer_id: str, row: tuple[int, int, Decimal]) -> None:
        session.handle.execute(
            f"UPDATE {session.table('customers')} SET placed = ?, cancelled = ?, revenue = ? WHERE customer_id = ?",
            (row[0], row[1], str(row[2]), customer_id))

    @on(OrderPlaced)
    def placed(self, event: OrderPlaced, session: ProjectionSession) -> None:
        placed, cancelled, revenue = self._row(session, event.customer_id)
        self._write(session, event.customer_id, (placed + 1, cancelled, revenue + event.total))

    @on(OrderCancelled)
    def cancelled(self, event: OrderCancelled, session: ProjectionSession) -> None:
        placed, cancelled, revenue = self._row(session, event.customer_id)
        self._write(session, event.customer_id, (placed, cancelled + 1, revenue))


@attrs.define
class Downstream:
    """The consuming service: its storage (own file), its inbox and its read-model engine."""

    storage: SqliteStorage
    inbox: Inbox
    engine: ReadModels

    def close(self) -> None:
        self.engine.stop()
        self.storage.close()


def build(db: str | Path, *, poll_interval: float = 0.2) -> Downstream:
    storage = SqliteStorage(db)
    engine = ReadModels(storage, event_types(), poll_interval=poll_interval, watch_interval=0.005)
    engine.add(CustomerOrders(), delivery=Delivery.BACKGROUND)
    return Downstream(storage, Inbox(storage), engine)


def read_counts(db: str | Path) -> Counts:
    """The projection's rows as queries see them (the current generation), read from the database file."""
    if not Path(db).exists():
        return {}
    connection = sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        row = connection.execute("SELECT generation FROM projection_generations WHERE projection = ?",
                                 (CustomerOrders.name,)).fetchone()
        table = table_name(CustomerOrders.name, "customers", row[0] if row else 1)
        rows = connection.execute(f"SELECT customer_id, placed, cancelled, revenue FROM {table}").fetchall()
    except sqlite3.OperationalError:  # the service has not set its database up yet: nothing projected
        return {}
    finally:
        connection.close()
    return {customer: (placed, cancelled, Decimal(revenue)) for customer, placed, cancelled, revenue in rows}


def main(argv: list[str] | None = None) -> None:
    from mediator.nats import JetStreamConsumer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", required=True)
    parser.add_argument("--durable", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--subject", default=None, help="the consumer's filter subject (default: the whole stream)")
    args = parser.parse_args(argv)
    service = build(args.db)
    stop = threading.Event()

    def stopping(_signal: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    consumer = JetStreamConsumer(args.url, args.stream, args.durable, service.inbox.receive,
                                 filter_subject=args.subject, fetch_timeout=0.2)
    service.engine.start()
    consumer.start()
    print("ready", flush=True)
    while not stop.wait(0.1):
        pass
    consumer.close()
    service.close()
    print(f"handled {consumer.handled} new {service.inbox.received} duplicates {service.inbox.duplicates}",
          flush=True)


if __name__ == "__main__":
    main()
