"""A small bank for the read-model tests: accounts, deposits, a balances read model on every backend.

The read model is a typed table, so one projection runs unchanged on memory, SQLite, PostgreSQL and Redis.
"""

from __future__ import annotations

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
    Table,
    UnitOfWork,
    on,
)


@attrs.frozen(kw_only=True)
class Deposit(Command[None]):
    account: str
    amount: int


@attrs.frozen(kw_only=True)
class GetBalance(Query[int]):
    reads = ("balances",)
    account: str

    def depends_on(self) -> tuple[str, ...]:
        """A subscription to one account's balance is asked again for that account's deposits only."""
        return (self.account,)


@attrs.frozen(kw_only=True)
class Deposited(Event):
    account: str
    amount: int


@attrs.frozen
class Balance:
    """One account's balance: the read model's row, the same on every backend."""

    account: str
    amount: int


class Balances(Projection):
    """One projection module for every backend: a typed table, written with ``put(..., add=...)``."""

    name = "balances"
    balance = Table(Balance, key="account")

    def __init__(self) -> None:
        super().__init__()
        self.poison: set[str] = set()
        self.down = False  # the store the projection writes to fails for every event (an outage, not a bad event)
        self.attempts: list[str] = []  # the account of every event the projection was asked to apply
        self.side_effects: list[tuple[str, bool]] = []
        self.applied: list[int] = []  # amounts, in the order this projection applied them (any generation)
        self.pause = 0.0  # seconds to sleep per event: a slow projection, to be killed mid-batch

    def add(self, session: ProjectionSession, account: str, amount: int) -> None:
        session.put(self.balance, Balance(account, amount), add=("amount",))

    @on(Deposited)
    def deposited(self, event: Deposited, session: ProjectionSession) -> None:
        self.attempts.append(event.account)
        if self.down:
            raise ConnectionError("the balances store is unreachable")
        if event.account in self.poison:
            raise ValueError(f"cannot project account {event.account}")
        if self.pause:
            time.sleep(self.pause)
        self.add(session, event.account, event.amount)
        self.applied.append(event.amount)
        if not session.replaying:
            self.side_effects.append((event.account, session.replaying))


class PartitionedBalances(Balances):
    """The same projection in four partitions by account: up to four runners apply it at once."""

    partitions = 4
    verify_rebuilds = True


class BalancesInCents(Balances):
    """Version 2 of the balances projection: it keeps cents (a change that needs every event applied again)."""

    version = 2

    @on(Deposited)
    def deposited(self, event: Deposited, session: ProjectionSession) -> None:
        self.add(session, event.account, event.amount * 100)
        self.applied.append(event.amount * 100)
        if not session.replaying:
            self.side_effects.append((event.account, session.replaying))


class CheckedBalances(Balances):
    verify_rebuilds = True


class CheckedCents(BalancesInCents):
    """Version 2, which says what it changes: every amount."""

    verify_rebuilds = True
    expected_changes = {"balance": ("amount",)}


class PartitionedCents(BalancesInCents):
    """Version 2 in four partitions, verified, saying what it changes."""

    partitions = 4
    verify_rebuilds = True
    expected_changes = {"balance": ("amount",)}


class BrokenCents(BalancesInCents):
    """A version 2 with a bug it does not declare: it loses the accounts whose name starts with b."""

    verify_rebuilds = True
    expected_changes = {"balance": ("amount",)}

    @on(Deposited)
    def deposited(self, event: Deposited, session: ProjectionSession) -> None:
        if not event.account.startswith("b"):
            self.add(session, event.account, event.amount * 100)


def deposit(command: Deposit, uow: UnitOfWork) -> None:
    # Recorded first, refused after: a refused deposit's event is in the unit of work and must be rolled back.
    uow.record(Deposited(account=command.account, amount=command.amount), key=command.account)
    if command.amount <= 0:
        raise ValueError("deposits must be positive")


@attrs.define
class Bank:
    """Everything a test needs: the engine, the projection, the built mediator."""

    storage: Storage
    engine: ReadModels
    projection: Balances
    registry: Registry
    mediator: Any = None

    def build(self) -> Bank:
        self.mediator = self.registry.build()
        return self

    def balances(self) -> dict[str, int]:
        return balances(self.engine)


def event_types() -> EventTypes:
    types = EventTypes()
    types.register(Deposited, name="bank.deposited")
    return types


def balances(engine: ReadModels) -> dict[str, int]:
    """Every account's balance, as queries read them."""
    return {row.account: row.amount for row in engine.find(Balances.balance)}


def get_balance(query: GetBalance, engine: ReadModels) -> int:
    row = engine.get(Balances.balance, query.account)
    return row.amount if row else 0


def make_bank(storage: Storage, delivery: Delivery = Delivery.BACKGROUND, types: EventTypes | None = None,
              projection_class: type[Balances] = Balances, **engine_options: Any) -> Bank:
    engine = ReadModels(storage, types or event_types(), **engine_options)
    projection = projection_class()
    engine.add(projection, delivery=delivery)
    registry = Registry()
    engine.install(registry)
    registry.handle(Deposit).by(deposit)
    registry.handle(GetBalance).by(get_balance)
    return Bank(storage, engine, projection, registry).build()
