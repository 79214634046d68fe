"""A small bank for the read-model tests: accounts, deposits, a balances read model on either backend.

The read model sits behind a port (``BalancesView``) with one implementation per
backend, the way an application keeps its projections backend-neutral.
"""

from __future__ import annotations

import abc
import sqlite3
import time
from typing import Any

import attrs

from mediator import Command, Event, Query, Registry
from mediator.readmodels import (
    Delivery,
    EventTypes,
    Projection,
    ProjectionSession,
    ReadModels,
    Storage,
    UnitOfWork,
    on,
)
from mediator.readmodels.memory import MemoryStorage
from mediator.readmodels.sqlite import SqliteStorage


@attrs.frozen(kw_only=True)
class Deposit(Command[None]):
    account: str
    amount: int


@attrs.frozen(kw_only=True)
class GetBalance(Query[int]):
    reads = ("balances",)
    account: str


@attrs.frozen(kw_only=True)
class Deposited(Event):
    account: str
    amount: int


class BalancesView(abc.ABC):
    """The balances read model's port."""

    @abc.abstractmethod
    def create(self, session: ProjectionSession) -> None: ...

    @abc.abstractmethod
    def drop(self, session: ProjectionSession) -> None: ...

    @abc.abstractmethod
    def add(self, session: ProjectionSession, account: str, amount: int) -> None: ...

    @abc.abstractmethod
    def balance(self, engine: ReadModels, account: str) -> int: ...

    @abc.abstractmethod
    def all(self, engine: ReadModels) -> dict[str, int]: ...


class MemoryBalances(BalancesView):
    def __init__(self, storage: MemoryStorage) -> None:
        self.storage = storage

    def create(self, session: ProjectionSession) -> None:
        session.handle.setdefault(session.table("balance"), {})

    def drop(self, session: ProjectionSession) -> None:
        session.handle.pop(session.table("balance"), None)

    def add(self, session: ProjectionSession, account: str, amount: int) -> None:
        table = session.handle[session.table("balance")]
        table[account] = table.get(account, 0) + amount

    def all(self, engine: ReadModels) -> dict[str, int]:
        engine.check_available("balances")  # what engine.table() checks for the SQL backends
        return dict(self.storage.read_table("balances", "balance") or {})

    def balance(self, engine: ReadModels, account: str) -> int:
        return self.all(engine).get(account, 0)


class SqliteBalances(BalancesView):
    def __init__(self, storage: SqliteStorage) -> None:
        self.storage = storage

    def create(self, session: ProjectionSession) -> None:
        session.handle.execute(
            f"CREATE TABLE IF NOT EXISTS {session.table('balance')} (account TEXT PRIMARY KEY, amount INTEGER)"
        )

    def drop(self, session: ProjectionSession) -> None:
        session.handle.execute(f"DROP TABLE IF EXISTS {session.table('balance')}")

    def add(self, session: ProjectionSession, account: str, amount: int) -> None:
        session.handle.execute(
            f"INSERT INTO {session.table('balance')} (account, amount) VALUES (?, ?) "
            "ON CONFLICT (account) DO UPDATE SET amount = amount + excluded.amount",
            (account, amount),
        )

    def all(self, engine: ReadModels) -> dict[str, int]:
        connection: sqlite3.Connection = self.storage.read_connection()
        try:
            rows = connection.execute(f"SELECT account, amount FROM {engine.table('balances', 'balance')}")
            return dict(rows.fetchall())
        except sqlite3.OperationalError:  # no table yet: nothing projected
            return {}

    def balance(self, engine: ReadModels, account: str) -> int:
        return self.all(engine).get(account, 0)


class PostgresBalances(BalancesView):
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def create(self, session: ProjectionSession) -> None:
        session.handle.execute(
            f"CREATE TABLE IF NOT EXISTS {session.table('balance')} (account TEXT PRIMARY KEY, amount BIGINT)"
        )

    def drop(self, session: ProjectionSession) -> None:
        session.handle.execute(f"DROP TABLE IF EXISTS {session.table('balance')}")

    def add(self, session: ProjectionSession, account: str, amount: int) -> None:
        table = session.table("balance")
        session.handle.execute(
            f"INSERT INTO {table} (account, amount) VALUES (%s, %s) "
            f"ON CONFLICT (account) DO UPDATE SET amount = {table}.amount + excluded.amount",
            (account, amount),
        )

    def all(self, engine: ReadModels) -> dict[str, int]:
        import psycopg

        try:
            return dict(self.storage.query(  # type: ignore[attr-defined]
                f"SELECT account, amount FROM {engine.table('balances', 'balance')}"))
        except psycopg.errors.UndefinedTable:  # no table yet: nothing projected
            return {}


    def balance(self, engine: ReadModels, account: str) -> int:
        return self.all(engine).get(account, 0)


def view_for(storage: Storage) -> BalancesView:
    """The balances view for ``storage``'s backend."""
    if isinstance(storage, MemoryStorage):
        return MemoryBalances(storage)
    if isinstance(storage, SqliteStorage):
        return SqliteBalances(storage)
    return PostgresBalances(storage)


class Balances(Projection):
    name = "balances"

    def __init__(self, view: BalancesView) -> None:
        super().__init__()
        self.view = view
        self.poison: set[str] = set()
        self.down = False  # the store the projection writes to fails for every event (an outage, not a bad event)
        self.attempts: list[str] = []  # the account of every event the projection was asked to apply
        self.side_effects: list[tuple[str, bool]] = []
        self.applied: list[int] = []  # amounts, in the order this projection applied them (any generation)
        self.pause = 0.0  # seconds to sleep per event: a slow projection, to be killed mid-batch

    def setup(self, session: ProjectionSession) -> None:
        self.view.create(session)

    def teardown(self, session: ProjectionSession) -> None:
        self.view.drop(session)

    @on(Deposited)
    def deposited(self, event: Deposited, session: ProjectionSession) -> None:
        self.attempts.append(event.account)
        if self.down:
            raise ConnectionError("the balances store is unreachable")
        if event.account in self.poison:
            raise ValueError(f"cannot project account {event.account}")
        if self.pause:
            time.sleep(self.pause)
        self.view.add(session, event.account, event.amount)
        self.applied.append(event.amount)
        if not session.replaying:
            self.side_effects.append((event.account, session.replaying))


class BalancesInCents(Balances):
    """Version 2 of the balances projection: it keeps cents (a change that needs every event applied again)."""

    version = 2

    @on(Deposited)
    def deposited(self, event: Deposited, session: ProjectionSession) -> None:
        self.view.add(session, event.account, event.amount * 100)
        self.applied.append(event.amount * 100)
        if not session.replaying:
            self.side_effects.append((event.account, session.replaying))


def deposit(command: Deposit, uow: UnitOfWork) -> None:
    # Recorded first, refused after: a refused deposit's event is in the unit of work and must be rolled back.
    uow.record(Deposited(account=command.account, amount=command.amount), key=command.account)
    if command.amount <= 0:
        raise ValueError("deposits must be positive")


@attrs.define
class Bank:
    """Everything a test needs: the engine, the projection, its view, the built mediator."""

    storage: Storage
    engine: ReadModels
    projection: Balances
    view: BalancesView
    registry: Registry
    mediator: Any = None

    def build(self) -> Bank:
        self.mediator = self.registry.build()
        return self

    def balances(self) -> dict[str, int]:
        return self.view.all(self.engine)


def event_types() -> EventTypes:
    types = EventTypes()
    types.register(Deposited, name="bank.deposited")
    return types


def make_bank(storage: Storage, delivery: Delivery = Delivery.BACKGROUND, types: EventTypes | None = None,
              projection_class: type[Balances] = Balances, **engine_options: Any) -> Bank:
    view = view_for(storage)
    engine = ReadModels(storage, types or event_types(), **engine_options)
    projection = projection_class(view)
    engine.add(projection, delivery=delivery)
    registry = Registry()
    engine.install(registry)
    registry.handle(Deposit).by(deposit)

    def get_balance(query: GetBalance, engine: ReadModels) -> int:
        return view.balance(engine, query.account)

    registry.handle(GetBalance).by(get_balance)
    return Bank(storage, engine, projection, view, registry).build()
