"""Scheduled commands: kept with the scheduling transaction, fired once when due by the engine's clock,
cancellable, retried and parked when they fail."""

from __future__ import annotations

import datetime as dt

import attrs
import pytest

from mediator import Command, Mediator, Registry
from mediator.readmodels import (
    PARKED,
    ReadModels,
    ScheduleNotFoundError,
    ScheduleTimeError,
    Storage,
    UnitOfWork,
    UnschedulableCommandError,
)
from mediator.testing import Clock, settle

from .bank import Balances, Deposited, event_types


@attrs.frozen(kw_only=True)
class OpenAccount(Command[str]):
    """Open an account, with a welcome bonus paid a day later unless the account is closed first."""

    account: str
    bonus: int = 5


@attrs.frozen(kw_only=True)
class PayBonus(Command[None]):
    account: str
    amount: int


@attrs.frozen(kw_only=True)
class CloseAccount(Command[bool]):
    account: str


@attrs.frozen(kw_only=True)
class NotSchedulable(Command[None]):
    pass


class Bank:
    def __init__(self, storage: Storage, clock: Clock) -> None:
        self.clock = clock
        self.paid: list[str] = []
        self.failures = 0
        self.engine = ReadModels(storage, event_types(), clock=clock, backoff=10.0, max_backoff=60.0,
                                 max_attempts=3, heal_attempts=1, heal_interval=600.0)
        self.engine.add(Balances()).schedulable(PayBonus, name="bank.pay-bonus")
        registry = Registry()
        self.engine.install(registry)
        registry.handle(OpenAccount).by(self.open_account)
        registry.handle(PayBonus).by(self.pay_bonus)
        registry.handle(CloseAccount).by(self.close_account)
        registry.handle(NotSchedulable).by(self.not_schedulable)
        self.mediator: Mediator = registry.build()
        self.engine.dispatch_with(self.mediator)

    def open_account(self, command: OpenAccount, uow: UnitOfWork) -> str:
        uow.record(Deposited(account=command.account, amount=0), key=command.account)
        return uow.schedule(PayBonus(account=command.account, amount=command.bonus), after=dt.timedelta(days=1),
                            schedule_id=f"bonus:{command.account}")

    def pay_bonus(self, command: PayBonus, uow: UnitOfWork) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the bonus ledger did not answer")
        self.paid.append(command.account)
        uow.record(Deposited(account=command.account, amount=command.amount), key=command.account)

    def close_account(self, command: CloseAccount, uow: UnitOfWork) -> bool:
        return uow.cancel(f"bonus:{command.account}")

    def not_schedulable(self, command: NotSchedulable, uow: UnitOfWork) -> None:
        uow.schedule(NotSchedulable(), after=1)

    def balance(self, account: str) -> int:
        settle(self.engine)
        row = self.engine.get(Balances.balance, account)
        return row.amount if row else 0


@pytest.fixture
def bank(storage: Storage) -> Bank:
    return Bank(storage, Clock())


def test_a_scheduled_command_fires_once_when_due_and_not_before(bank: Bank) -> None:
    schedule_id = bank.mediator.send(OpenAccount(account="a"))
    assert schedule_id == "bonus:a"
    (row,) = bank.engine.storage.scheduled()
    assert (row.command, row.due_at - bank.clock(), row.status) == ("bank.pay-bonus", 86_400.0, "pending")
    bank.clock.advance(hours=23, minutes=59)
    assert bank.balance("a") == 0
    bank.clock.advance(minutes=1)
    assert bank.balance("a") == 5
    assert bank.balance("a") == 5  # settling again fires nothing more
    assert bank.paid == ["a"]
    assert bank.engine.storage.scheduled() == []
    assert bank.engine.schedules.fired == {"bank.pay-bonus": 1}


def test_a_cancelled_command_never_fires(bank: Bank) -> None:
    bank.mediator.send(OpenAccount(account="a"))
    assert bank.mediator.send(CloseAccount(account="a")) is True
    assert bank.mediator.send(CloseAccount(account="a")) is False  # cancelled already
    bank.clock.advance(days=2)
    assert bank.balance("a") == 0
    assert bank.paid == []


def test_a_command_scheduled_by_a_failed_command_is_never_kept(bank: Bank) -> None:
    with pytest.raises(UnschedulableCommandError, match=r"engine\.schedulable"):
        bank.mediator.send(NotSchedulable())
    assert bank.engine.storage.scheduled() == []


def test_scheduling_again_under_an_id_replaces_the_first(bank: Bank) -> None:
    bank.mediator.send(OpenAccount(account="a", bonus=5))
    bank.clock.advance(hours=1)
    bank.mediator.send(OpenAccount(account="a", bonus=7))  # a retried step schedules under the same id
    (row,) = bank.engine.storage.scheduled()
    assert row.due_at == bank.clock() + 86_400.0
    bank.clock.advance(days=1)
    assert bank.balance("a") == 7


def test_commands_due_while_nothing_ran_fire_in_due_order(bank: Bank) -> None:
    for account in ("late", "early"):
        bank.mediator.send(OpenAccount(account=account))
        bank.clock.advance(hours=1)
    bank.clock.advance(days=30)  # the service was down for a month
    settle(bank.engine)
    assert bank.paid == ["late", "early"]


def test_a_failing_command_is_retried_by_the_clock_then_parked_and_retried_by_an_operator(bank: Bank) -> None:
    bank.mediator.send(OpenAccount(account="a"))
    bank.failures = 10
    bank.clock.advance(days=1)
    assert bank.balance("a") == 0
    (row,) = bank.engine.storage.scheduled()
    assert (row.attempts, row.status, row.due_at - bank.clock()) == (1, "pending", 10.0)
    assert row.reason is not None
    assert "ConnectionError: the bonus ledger did not answer" in row.reason
    for _ in range(3):
        bank.clock.advance(minutes=20)
        settle(bank.engine)
    (row,) = bank.engine.storage.scheduled()
    assert (row.attempts, row.status) == (4, PARKED)
    bank.clock.advance(days=365)
    assert bank.balance("a") == 0  # parked: it waits for an operator
    bank.failures = 0
    bank.engine.schedules.retry(row.schedule_id)
    assert bank.balance("a") == 5
    assert bank.engine.storage.scheduled() == []


def test_an_operator_cancels_a_scheduled_command(bank: Bank) -> None:
    bank.mediator.send(OpenAccount(account="a"))
    bank.engine.schedules.cancel("bonus:a")
    with pytest.raises(ScheduleNotFoundError):
        bank.engine.schedules.cancel("bonus:a")
    bank.clock.advance(days=2)
    assert bank.balance("a") == 0


def test_due_times_are_checked_when_scheduled(bank: Bank) -> None:
    uow = UnitOfWork(bank.engine)
    bonus = PayBonus(account="a", amount=1)
    try:
        for wrong in ({}, {"at": 1.0, "after": 1.0}, {"after": -1}, {"at": dt.datetime(2030, 1, 1)},
                      {"at": float("inf")}):
            with pytest.raises(ScheduleTimeError):
                uow.schedule(bonus, **wrong)
        at = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
        schedule_id = uow.schedule(bonus, at=at)
    finally:
        uow.rollback()
    assert schedule_id
    assert bank.engine.storage.scheduled() == []  # rolled back with the transaction


def test_a_stored_command_that_cannot_be_read_back_is_parked(storage: Storage) -> None:
    clock = Clock()
    first = Bank(storage, clock)
    first.mediator.send(OpenAccount(account="a"))
    renamed = ReadModels(storage, event_types(), clock=clock)  # a release that no longer schedules PayBonus
    registry = Registry()
    renamed.install(registry)
    renamed.dispatch_with(registry.build())
    clock.advance(days=1)
    settle(renamed)
    (row,) = storage.scheduled()
    assert row.status == PARKED
    assert row.reason is not None
    assert "cannot be decoded" in row.reason
