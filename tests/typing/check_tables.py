"""Typed read models: a table's row class types what a projection writes and what a query reads back.

The same projection runs on every backend (tests/readmodels/contract.py runs it); here mypy --strict checks the
types its callers see: ``get`` answers the row or ``None``, ``find`` a list of rows, and a row of another class
is an error where it is written.
"""

from typing import assert_type

import attrs

from mediator.readmodels import Projection, ProjectionSession, Range, ReadModels, Table


@attrs.frozen(kw_only=True)
class Stock:
    sku: str
    shelf: str
    units: int


@attrs.frozen(kw_only=True)
class Price:
    sku: str
    cents: int


class Inventory(Projection):
    name = "inventory"
    stock = Table(Stock, key="sku", lookups=["shelf"])
    prices = Table(Price, key="sku")


def writes(session: ProjectionSession) -> None:
    assert_type(Inventory.stock, Table[Stock])
    session.put(Inventory.stock, Stock(sku="a", shelf="s1", units=3))
    session.put(Inventory.stock, Stock(sku="a", shelf="s1", units=1), add=["units"])
    assert_type(session.get(Inventory.stock, "a"), Stock | None)
    assert_type(session.update(Inventory.stock, "a", units=2), Stock | None)
    assert_type(session.find(Inventory.stock, {"shelf": "s1"}, order_by="-units", limit=10), list[Stock])
    assert_type(session.count(Inventory.stock, {"sku": Range(low="a", high="m")}), int)
    session.delete(Inventory.stock, "a")


def reads(engine: ReadModels) -> None:
    assert_type(engine.get(Inventory.stock, "a"), Stock | None)
    assert_type(engine.get(Inventory.prices, "a"), Price | None)
    assert_type(engine.find(Inventory.stock, {"shelf": "s1"}), list[Stock])
    assert_type(engine.count(Inventory.prices), int)
    with engine.snapshot():
        stock, price = engine.get(Inventory.stock, "a"), engine.get(Inventory.prices, "a")
        if stock is not None and price is not None:
            assert_type(stock.units * price.cents, int)


def rejected(session: ProjectionSession, engine: ReadModels) -> None:
    # mypy says it cannot infer the row type (the table's and the row's disagree), an error all the same.
    session.put(Inventory.stock, Price(sku="a", cents=1))  # type: ignore[misc]
    session.put(Inventory.prices, Stock(sku="a", shelf="s", units=1))  # type: ignore[misc]
    wrong: Price | None = engine.get(Inventory.stock, "a")  # type: ignore[assignment]
    rows: list[Price] = session.find(Inventory.stock)  # type: ignore[arg-type]
    del wrong, rows
