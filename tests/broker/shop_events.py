"""Shop events for the broker tests: appended straight to a source storage's log, and what they add up to."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterable
from decimal import Decimal

from adapters.shop_app import event_types
from domain.events import CustomerRegistered, OrderCancelled, OrderLine, OrderPlaced, StockReserved
from mediator import Event
from mediator.readmodels import NewEvent, Storage, StoredEvent

from .consumer_app import Counts

TYPES = event_types()
PLACED = TYPES.entry(OrderPlaced).name
CANCELLED = TYPES.entry(OrderCancelled).name
SELECTED = frozenset({PLACED, CANCELLED})
"""What the relays of these tests publish: orders placed and cancelled, not stock or customers."""
DAY = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)


def append(storage: Storage, events: Iterable[tuple[Event, str | None]]) -> int:
    """Append ``(event, key)`` pairs in one transaction; return the last position."""
    batch = []
    for event, key in events:
        name, version, data = TYPES.encode(event)
        batch.append(NewEvent(uuid.uuid4().hex, name, version, data, key, time.time()))
    session = storage.begin()
    try:
        position = session.append(batch)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return position


def orders(first: int, count: int) -> list[tuple[Event, str | None]]:
    """``count`` orders (numbered from ``first``) by three customers, with unselected events between them.

    Every fourth order is cancelled; each order reserves stock; a customer registers now and then.
    """
    events: list[tuple[Event, str | None]] = []
    for number in range(first, first + count):
        order_id, customer_id = f"o-{number}", f"c-{number % 3}"
        if number % 5 == 0:
            events.append((CustomerRegistered(customer_id=customer_id, name="Ada", email="ada@example.com"), None))
        line = OrderLine(product_id="p-1", product_name="Lamp", category_id="k-1", quantity=1 + number % 2,
                         unit_price=Decimal("12.50"))
        events.append((StockReserved(product_id="p-1", order_id=order_id, quantity=line.quantity, on_hand=100,
                                     reserved=line.quantity), "p-1"))
        events.append((OrderPlaced(order_id=order_id, customer_id=customer_id, lines=(line,), total=line.total,
                                   placed_at=DAY), order_id))
        if number % 4 == 0:
            events.append((OrderCancelled(order_id=order_id, customer_id=customer_id, reason="changed mind",
                                          version=2), order_id))
    return events


def expected(events: Iterable[StoredEvent]) -> Counts:
    """What the downstream ``customer_orders`` projection must hold after exactly these events, once each."""
    counts: Counts = {}
    for stored in events:
        event = TYPES.decode(stored.type_name, stored.version, stored.data)
        if isinstance(event, OrderPlaced):
            placed, cancelled, revenue = counts.get(event.customer_id, (0, 0, Decimal(0)))
            counts[event.customer_id] = (placed + 1, cancelled, revenue + event.total)
        elif isinstance(event, OrderCancelled):
            placed, cancelled, revenue = counts.get(event.customer_id, (0, 0, Decimal(0)))
            counts[event.customer_id] = (placed, cancelled + 1, revenue)
    return counts
