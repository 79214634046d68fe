"""Adapter for ``eventsourcing`` (pyeventsourcing): the read-model suite's write, catch-up and read-your-writes work.

Configuration, as the library documents it for SQLite:

- Persistence: ``PERSISTENCE_MODULE=eventsourcing.sqlite`` with ``SQLITE_DBNAME`` per application, given
  through the environment mapping with the library's name-prefixed keys (``ACCOUNTS_SQLITE_DBNAME``,
  ``BALANCES_SQLITE_DBNAME``). The library's SQLite recorder puts WAL mode on file databases itself.
- Write side: an ``Application`` (``Accounts``) with an ``Aggregate`` (``Account``) whose ``@event``
  methods are ``Opened`` (``__init__``) and ``Deposited`` (``deposit``). A command gets the account from
  ``app.repository`` (or creates it), calls ``deposit`` and does one ``app.save(...)``: exactly one new
  event. Accounts rotate over ``ACCOUNTS`` ids; ``AGGREGATE_CACHE_MAXSIZE`` (a documented application
  setting) keeps ``repository.get`` from replaying each account's whole history on every command.
- Read side: the ``eventsourcing.projection`` runners (``ProjectionRunner``, ``EventSourcedProjectionRunner``)
  need ``ApplicationRecorder.subscribe``, which the docs say the SQLite recorder does not implement (it
  raises ``NotImplementedError``). So the read model uses the ``eventsourcing.system`` machinery that works
  with SQLite: ``Balances`` is a ``ProcessApplication`` following ``Accounts`` in a ``System``; its
  ``policy`` credits a ``Balance`` aggregate per account and collects the new events with
  ``processing_event.collect_events``, which the library records atomically with the tracking record, in
  the read model's own SQLite file (``<path>.balances``: both applications name their table
  ``stored_events``, so they cannot share a file).
- ``catch_up``: a ``SingleThreadedRunner`` is started and the follower's ``pull_and_process`` (the
  documented catch-up) reads the leader's notification log in sections of ``pull_section_size`` (10) and
  processes each event in its own write transaction (Balance event + tracking record).
- ``read_your_writes``: a ``MultiThreadedRunner`` (the leader prompts the follower's thread after each
  save); the wait is the library's ``TrackingRecorder.wait`` on the follower's process recorder with the
  notification id returned by ``save``. That wait polls ``max_tracking_id`` with exponential backoff
  starting at 100 ms, so any event not yet processed when the wait starts costs ~100 ms.
"""

import contextlib
import itertools
import os
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import eventsourcing
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.system import MultiThreadedRunner, ProcessApplication, SingleThreadedRunner, System

NAME = "eventsourcing"
VERSION = version(eventsourcing.__name__)

ACCOUNTS = 8
"""How many account aggregates the commands rotate over."""

WAIT_TIMEOUT = 10.0


class Account(Aggregate):
    @staticmethod
    def create_id(name: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"/accounts/{name}")

    @event("Opened")
    def __init__(self, name: str) -> None:
        self.name = name
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount


class Accounts(Application[UUID]):
    """The write model."""

    def deposit(self, name: str, amount: int) -> int:
        """One command: exactly one new event (``Opened`` the first time, ``Deposited`` after); its notification id."""
        try:
            account: Account = self.repository.get(Account.create_id(name))
        except AggregateNotFoundError:
            account = Account(name)
        else:
            account.deposit(amount)
        recordings = self.save(account)
        return recordings[-1].notification.id


class Balance(Aggregate):
    @staticmethod
    def create_id(account_id: UUID) -> UUID:
        return uuid5(NAMESPACE_URL, f"/balances/{account_id}")

    @event("Started")
    def __init__(self, account_id: UUID) -> None:
        self.account_id = account_id
        self.balance = 0
        self.applied = 0

    @event("Credited")
    def credit(self, amount: int) -> None:
        self.balance += amount
        self.applied += 1


class Balances(ProcessApplication[UUID]):
    """The read model: one ``Balance`` per account, event-sourced with tracking records."""

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """Ignore other events."""

    @policy.register(Account.Opened)  # type: ignore[attr-defined]
    def _(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        self._credit(domain_event.originator_id, 0, processing_event)

    @policy.register(Account.Deposited)  # type: ignore[attr-defined]
    def _(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        self._credit(domain_event.originator_id, domain_event.amount, processing_event)

    def _credit(self, account_id: UUID, amount: int, processing_event: ProcessingEvent[UUID]) -> None:
        try:
            balance: Balance = self.repository.get(Balance.create_id(account_id))
        except AggregateNotFoundError:
            balance = Balance(account_id)
        balance.credit(amount)
        processing_event.collect_events(balance)

    def applied(self, names: list[str]) -> int:
        """Query: how many account events the read model has applied, over the given accounts."""
        total = 0
        for name in names:
            try:
                balance: Balance = self.repository.get(Balance.create_id(Account.create_id(name)))
            except AggregateNotFoundError:
                continue
            total += balance.applied
        return total


SYSTEM = System(pipes=[[Accounts, Balances]])

_NAMES = [f"acct-{i}" for i in range(ACCOUNTS)]


def _read_model_path(path: str) -> str:
    return f"{path}.balances"


def _remove(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def _env(path: str) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "ACCOUNTS_SQLITE_DBNAME": path,
        "BALANCES_SQLITE_DBNAME": _read_model_path(path),
        "AGGREGATE_CACHE_MAXSIZE": "1000",
    }


def _commands(app: Accounts) -> Callable[[], int]:
    ticks = itertools.count()

    def command() -> int:
        return app.deposit(_NAMES[next(ticks) % ACCOUNTS], 1)

    return command


def writer(path: str) -> Callable[[], None]:
    """Each call: one command on the ``Accounts`` application, one ``save`` of one event."""
    app = Accounts(env=_env(path))
    command = _commands(app)

    def write() -> None:
        command()

    write.close = app.close  # type: ignore[attr-defined]
    return write


def catch_up(path: str, n: int) -> Callable[[], int]:
    """Setup saves ``n`` events; the call projects them all from scratch and returns how many were applied."""
    _remove(path)
    _remove(_read_model_path(path))
    env = _env(path)
    app = Accounts(env=env)
    command = _commands(app)
    for _ in range(n):
        command()
    app.close()

    def run() -> int:
        runner: SingleThreadedRunner[UUID] = SingleThreadedRunner(SYSTEM, env=env)
        runner.start()
        try:
            balances = runner.get(Balances)
            balances.pull_and_process(Accounts.name)
            return balances.applied(_NAMES)
        finally:
            runner.stop()

    return run


def read_your_writes(path: str) -> Callable[[], float]:
    """Each call: one command, then the library's wait until the read model has tracked its event."""
    _remove(_read_model_path(path))
    runner: MultiThreadedRunner[UUID] = MultiThreadedRunner(SYSTEM, env=_env(path))
    runner.start()
    accounts = runner.get(Accounts)
    view = runner.get(Balances).recorder
    command = _commands(accounts)

    def once() -> float:
        notification_id = command()
        start = time.perf_counter()
        view.wait(Accounts.name, notification_id, timeout=WAIT_TIMEOUT)
        return time.perf_counter() - start

    once()  # warm up: connections, caches, and any backlog already in the file
    once.close = runner.stop  # type: ignore[attr-defined]
    return once
