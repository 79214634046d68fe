"""The write model port's contract, run on every backend: optimistic concurrency on saved versions."""

import datetime as dt
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest

from adapters.shop_memory import MemoryWriteModel
from adapters.shop_sqlite import WRITE_SCHEMA, SqliteWriteModel
from domain.errors import ConcurrencyConflict
from domain.events import OrderLine
from domain.model import Order, Product, Stock
from handlers.ports import WriteModel
from mediator.readmodels.memory import MemoryStorage
from mediator.readmodels.sqlite import SqliteStorage

from .backends import postgres_write_storage

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def model(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[WriteModel, Any]]:
    """A write model and an open write transaction's handle, rolled back afterwards."""
    if request.param == "sqlite":
        storage: Any = SqliteStorage(tmp_path / "shop.db")
        storage._write().executescript(WRITE_SCHEMA)
        port: WriteModel = SqliteWriteModel()
    elif request.param == "postgres":
        from adapters.shop_postgres import PostgresWriteModel

        storage, port = postgres_write_storage(), PostgresWriteModel()
    else:
        storage, port = MemoryStorage(), MemoryWriteModel()
    session = storage.begin()
    port.add_customer(session.handle, "c1", "Ada", "ada@example.com")
    port.add_category(session.handle, "k1", "Lamps")
    try:
        yield port, session.handle
    finally:
        session.rollback()
        if request.param != "memory":
            storage.close()
        if request.param == "postgres":
            storage.drop_schema()


@attrs.frozen
class Kind:
    """How to make, change, save and load one versioned aggregate through the port."""

    name: str
    key: str
    make: Callable[[], Any]
    change: Callable[[Any], object]
    save: Callable[[WriteModel, Any, Any, int], None]
    load: Callable[[WriteModel, Any], Any]


def _order() -> Order:
    line = OrderLine(product_id="p1", product_name="Lamp", category_id="k1", quantity=2, unit_price=Decimal("3.00"))
    return Order.place("o1", "c1", [line], NOW, shipping_address="1 Main St")[0]


KINDS = [
    Kind("product", "p1", lambda: Product.create("p1", "k1", "Lamp", "", "10")[0],
         lambda p: p.change_price("12", "dearer"),
         lambda m, tx, p, v: m.save_product(tx, p, v), lambda m, tx: m.product(tx, "p1")),
    Kind("stock", "p1", lambda: _adjusted(Stock("p1")), lambda s: s.adjust(3, "delivery"),
         lambda m, tx, s, v: m.save_stock(tx, s, v), lambda m, tx: m.stock(tx, "p1")),
    Kind("order", "o1", _order, lambda o: o.confirm(),
         lambda m, tx, o, v: m.save_order(tx, o, v), lambda m, tx: m.order(tx, "o1")),
]


def _adjusted(stock: Stock) -> Stock:
    stock.adjust(5, "delivery")
    return stock


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_a_saved_aggregate_loads_back_as_it_was_saved(kind: Kind, model: tuple[WriteModel, Any]) -> None:
    port, tx = model
    first = kind.make()
    kind.save(port, tx, first, 0)
    assert kind.load(port, tx) == first
    second = kind.load(port, tx)
    kind.change(second)
    kind.save(port, tx, second, first.version)
    assert kind.load(port, tx) == second
    assert second.version == first.version + 1


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_saving_over_a_version_that_moved_on_is_a_conflict_and_changes_nothing(
        kind: Kind, model: tuple[WriteModel, Any]) -> None:
    port, tx = model
    kind.save(port, tx, kind.make(), 0)
    mine, theirs = kind.load(port, tx), kind.load(port, tx)
    kind.change(theirs)
    kind.save(port, tx, theirs, 1)  # someone else got there first: stored version 2
    kind.change(mine)
    with pytest.raises(ConcurrencyConflict) as info:
        kind.save(port, tx, mine, 1)
    assert (info.value.kind, info.value.key, info.value.expected, info.value.actual) == (kind.name, kind.key, 1, 2)
    assert kind.load(port, tx) == theirs


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_creating_what_someone_else_created_meanwhile_is_a_conflict(kind: Kind, model: tuple[WriteModel, Any]) -> None:
    port, tx = model
    theirs = kind.make()
    kind.save(port, tx, theirs, 0)
    with pytest.raises(ConcurrencyConflict) as info:
        kind.save(port, tx, kind.make(), 0)  # both read "not there yet" (version 0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert kind.load(port, tx) == theirs


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_updating_what_is_not_stored_is_a_conflict(kind: Kind, model: tuple[WriteModel, Any]) -> None:
    port, tx = model
    ghost = kind.make()
    kind.change(ghost)
    with pytest.raises(ConcurrencyConflict) as info:
        kind.save(port, tx, ghost, 1)
    assert (info.value.expected, info.value.actual) == (1, 0)
