"""The PostgreSQL suite's reference: the same bank on ``eventsourcing``'s PostgreSQL persistence.

Configured as the library documents it, through its environment settings
(:func:`settings`): ``PERSISTENCE_MODULE=eventsourcing.postgres`` and the
``POSTGRES_*`` connection keys, ``POSTGRES_SCHEMA`` for the run's schema (which the
library expects to exist). ``CREATE_TABLE=no`` in the writer and projector
processes: :func:`create_tables` makes the tables once beforehand, since
concurrent ``CREATE OR REPLACE FUNCTION`` statements from processes starting
together can fail.

- Write side: an ``Application`` (``Accounts``) with an ``Aggregate`` (``Account``); a
  command credits one of the process's eight accounts and ``save``s exactly one new
  event. ``AGGREGATE_CACHE_MAXSIZE`` keeps ``repository.get`` from replaying each
  account, and ``AGGREGATE_CACHE_FASTFORWARD=no`` from reading the database at all:
  each account is written by one process only, so the cache is always current, and a
  command is one write transaction, as on our side.
- Read side: an ``eventsourcing.projection.Projection`` run by a ``ProjectionRunner``,
  which follows the application's notification log through the PostgreSQL
  subscription (LISTEN/NOTIFY, then select). Its view is a ``PostgresTrackingRecorder``
  subclass that upserts the balance and inserts the tracking record in one
  transaction per event; the projector logs ``notification_id timestamp committed_at``
  per event after that commit (``timestamp``: the domain event's own, taken when the
  aggregate method ran, just before ``save``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import IO, Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import InfrastructureFactory, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import Projection, ProjectionRunner
from eventsourcing.utils import Environment
from psycopg.conninfo import conninfo_to_dict
from psycopg.sql import SQL, Identifier

VIEW = "bench_balances"
"""The view's balance table (its tracking table is ``balancesprojection_tracking``)."""


class Account(Aggregate):
    @staticmethod
    def create_id(name: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/bench/accounts/{name}")

    @event("Opened")
    def __init__(self, name: str) -> None:
        self.name = name
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount


class Accounts(Application[UUID]):
    def deposit(self, name: str, amount: int) -> None:
        """One command: one new event (``Opened`` the first time, ``Deposited`` after), one ``save``."""
        try:
            account: Account = self.repository.get(Account.create_id(name))
        except AggregateNotFoundError:
            account = Account(name)
        else:
            account.deposit(amount)
        self.save(account)


class BalancesView(PostgresTrackingRecorder):
    """A materialised view: balances by account, with the tracking record in the same transaction."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self._table = Identifier(datastore.schema, VIEW)
        self.sql_create_statements.append(
            SQL("CREATE TABLE IF NOT EXISTS {} (account uuid PRIMARY KEY, amount bigint NOT NULL)").format(
                self._table))
        self._upsert = SQL("INSERT INTO {0} (account, amount) VALUES (%s, %s) ON CONFLICT (account) "
                           "DO UPDATE SET amount = {0}.amount + excluded.amount").format(self._table)

    def credit(self, account: UUID, amount: int, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            self._insert_tracking(cursor, tracking)
            cursor.execute(self._upsert, (account, amount), prepare=True)


class BalancesProjection(Projection[BalancesView]):
    name = "balancesprojection"
    log: Callable[[int, float, float], None] = staticmethod(lambda *_: None)

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        amount = getattr(domain_event, "amount", 0)
        self.view.credit(domain_event.originator_id, amount, tracking)
        self.log(tracking.notification_id, domain_event.timestamp.timestamp(), time.time())


def settings(dsn: str, schema: str, *, create_tables: bool = False) -> dict[str, str]:
    """The library's environment settings for ``dsn`` (a libpq string) and ``schema``."""
    parts = conninfo_to_dict(dsn)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(parts.get("dbname", "postgres")),
        "POSTGRES_HOST": str(parts.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(parts.get("port", "5432")),
        "POSTGRES_USER": str(parts.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(parts.get("password", "")),
        "POSTGRES_SCHEMA": schema,
        "AGGREGATE_CACHE_MAXSIZE": "1000",
        "AGGREGATE_CACHE_FASTFORWARD": "no",
        "CREATE_TABLE": "yes" if create_tables else "no",
    }


def create_tables(dsn: str, schema: str) -> None:
    """Create the application's and the view's tables in ``schema`` (which must exist)."""
    env = settings(dsn, schema, create_tables=True)
    Accounts(env=env).close()
    factory = InfrastructureFactory[BalancesView].construct(env=Environment(BalancesProjection.name, env))
    factory.tracking_recorder(BalancesView)
    factory.close()


def _env() -> dict[str, str]:
    return settings(os.environ["BENCH_PG_DSN"], os.environ["BENCH_PG_SCHEMA"])


def sender() -> Callable[[], None]:
    """For a writer process: a call that sends one deposit to one of eight accounts of this process."""
    app = Accounts(env=_env())
    accounts = [f"w{os.getpid()}-{i}" for i in range(8)]
    count = 0

    def once() -> None:
        nonlocal count
        app.deposit(accounts[count % 8], 1)
        count += 1

    return once


def project(stop: threading.Event, log: IO[str], ready: Callable[[], None]) -> None:
    """Run the projection until ``stop`` is set, logging each event's lag line to ``log``."""

    def record(notification_id: int, timestamp: float, committed: float) -> None:
        log.write(f"{notification_id} {timestamp!r} {committed!r}\n")
        log.flush()

    BalancesProjection.log = staticmethod(record)
    runner: ProjectionRunner[Accounts, BalancesView] = ProjectionRunner(
        application_class=Accounts, projection_class=BalancesProjection, view_class=BalancesView, env=_env())
    with runner:
        ready()
        while not stop.is_set() and not runner.is_interrupted.is_set():
            runner.run_forever(timeout=0.05)
        runner.run_forever(timeout=0)  # re-raises an error of the processing thread, if it stopped on one
