"""The PostgreSQL suite's bank, wired from environment variables, for writer and worker processes.

``BENCH_PG_DSN`` is the libpq connection string, ``BENCH_PG_SCHEMA`` the schema;
``BENCH_PG_POLL`` the engine's ``poll_interval`` (the engine's default when unset);
``BENCH_PG_LAG_LOG``, if set, a file a worker appends one line to per applied event,
``position recorded_at committed_at``, flushed after each committed batch.

``python -m mediator.readmodels --app benchmarks._pgapp:worker_engine worker`` runs
the ``balances`` projection (``Delivery.WORKER``) in a process of its own; writers
build :func:`bank` and send :class:`Deposit`, which appends one event and runs no
projection.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import IO, Any

import attrs

from mediator import Command, Event, Registry
from mediator.readmodels import (
    Delivery,
    EventTypes,
    Projection,
    ProjectionSession,
    ReadModels,
    StoredEvent,
    UnitOfWork,
    on,
)
from mediator.readmodels.postgres import PostgresStorage

PROJECTION = "balances"


@attrs.frozen(kw_only=True)
class Deposit(Command[None]):
    account: str
    amount: int


@attrs.frozen(kw_only=True)
class Deposited(Event):
    account: str
    amount: int


class Balances(Projection):
    """One row per account with its balance."""

    name = PROJECTION

    def setup(self, session: ProjectionSession) -> None:
        session.handle.execute(
            f"CREATE TABLE IF NOT EXISTS {session.table('balance')} (account TEXT PRIMARY KEY, amount BIGINT)"
        )

    def teardown(self, session: ProjectionSession) -> None:
        session.handle.execute(f"DROP TABLE IF EXISTS {session.table('balance')}")

    @on(Deposited)
    def deposited(self, event: Deposited, session: ProjectionSession) -> None:
        table = session.table("balance")
        session.handle.execute(
            f"INSERT INTO {table} (account, amount) VALUES (%s, %s) "
            f"ON CONFLICT (account) DO UPDATE SET amount = {table}.amount + excluded.amount",
            (event.account, event.amount),
        )


def deposit(command: Deposit, uow: UnitOfWork) -> None:
    uow.record(Deposited(account=command.account, amount=command.amount), key=command.account)


def event_types() -> EventTypes:
    types = EventTypes()
    types.register(Deposited, name="bench.deposited")
    return types


@attrs.define
class Bank:
    storage: PostgresStorage
    engine: ReadModels
    mediator: Any


def bank(dsn: str | None = None, schema: str | None = None) -> Bank:
    """The bank on PostgreSQL, its ``balances`` projection delivered by worker processes."""
    storage = PostgresStorage(dsn or os.environ["BENCH_PG_DSN"], schema=schema or os.environ["BENCH_PG_SCHEMA"])
    options: dict[str, Any] = {}
    if os.environ.get("BENCH_PG_POLL"):
        options["poll_interval"] = float(os.environ["BENCH_PG_POLL"])
    engine = ReadModels(storage, event_types(), **options)
    engine.add(Balances(), delivery=Delivery.WORKER)
    registry = Registry()
    engine.install(registry)
    registry.handle(Deposit).by(deposit)
    return Bank(storage, engine, registry.build())


class LagLog:
    """An ``on_batch`` listener: one line per event of each committed batch, flushed at once."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, _name: str, events: list[StoredEvent]) -> None:
        now = time.time()  # on_batch runs once the batch has committed
        self.stream.write("".join(f"{e.position} {e.recorded_at!r} {now!r}\n" for e in events))
        self.stream.flush()


def worker_engine() -> ReadModels:
    """The engine for ``python -m mediator.readmodels ... worker``, logging lags if ``BENCH_PG_LAG_LOG`` is set."""
    engine = bank().engine
    path = os.environ.get("BENCH_PG_LAG_LOG")
    if path:
        engine.on_batch.append(LagLog(open(path, "a", encoding="utf-8")))  # noqa: SIM115 (open until exit)
    return engine


def sender() -> Callable[[], None]:
    """For a writer process: a call that sends one deposit to one of eight accounts of this process."""
    send = bank().mediator.send
    accounts = [f"w{os.getpid()}-{i}" for i in range(8)]
    count = 0

    def once() -> None:
        nonlocal count
        send(Deposit(account=accounts[count % 8], amount=1))
        count += 1

    return once
