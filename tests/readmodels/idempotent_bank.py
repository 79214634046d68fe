"""The bank's idempotent pay-in, for the idempotency tests; ``python -m tests.readmodels.idempotent_bank KEY
AMOUNT`` sends one pay-in (on the database ``bank_app`` names) and prints its receipt, or the error's name.

``BANK_PAUSE`` makes the handler sleep that many seconds after recording its event, so two processes overlap.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import attrs

from mediator import Command, IdempotencyKeyInUseError, IdempotentCommand, Mediator, Registry
from mediator.readmodels import Delivery, ReadModels, Storage, UnitOfWork

from .bank import Balances, Deposited, event_types


@attrs.frozen
class Receipt:
    account: str
    amount: int
    number: int


@attrs.frozen(kw_only=True)
class PayIn(IdempotentCommand[Receipt]):
    account: str
    amount: int


@attrs.frozen(kw_only=True)
class Withdraw(IdempotentCommand[None]):
    account: str
    amount: int


@attrs.frozen(kw_only=True)
class PayInTwice(Command[list[Receipt]]):
    """Two pay-ins sent from one command's handler: they join its transaction."""

    first: PayIn
    second: PayIn
    fail_after: bool = False


class Teller:
    """The handlers, counting how often each ran (the point of idempotency is that repeats do not)."""

    def __init__(self, pause: float = 0.0) -> None:
        self.runs = 0
        self.pause = pause
        self.fail_next = False
        self.before: Callable[[], None] | None = None
        """Called as a pay-in starts (a test holds one there)."""

    def pay_in(self, command: PayIn, uow: UnitOfWork) -> Receipt:
        self.runs += 1
        if self.before is not None:
            self.before()
        uow.record(Deposited(account=command.account, amount=command.amount), key=command.account)
        if self.pause:
            time.sleep(self.pause)
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the payment gateway did not answer")
        return Receipt(command.account, command.amount, self.runs)

    def withdraw(self, command: Withdraw, uow: UnitOfWork) -> None:
        self.runs += 1
        uow.record(Deposited(account=command.account, amount=-command.amount), key=command.account)


def wire(storage: Storage, teller: Teller, *, nested: bool = True,
         **engine_options: Any) -> tuple[ReadModels, Registry]:
    """The engine and registry; ``nested=False`` leaves out ``PayInTwice`` (its handler needs the sync mediator)."""
    engine = ReadModels(storage, event_types(), **engine_options)
    engine.add(Balances(), delivery=Delivery.BACKGROUND)
    registry = Registry()
    engine.install(registry)
    registry.handle(PayIn).by(teller.pay_in)
    registry.handle(Withdraw).by(teller.withdraw)

    if nested:
        registry.handle(PayInTwice).by(pay_in_twice)
    return engine, registry


def pay_in_twice(command: PayInTwice, mediator: Mediator) -> list[Receipt]:
    receipts = [mediator.send(command.first), mediator.send(command.second)]
    if command.fail_after:
        raise ValueError("refused after both pay-ins")
    return receipts


def main(key: str, amount: int) -> None:
    from .bank_app import storage

    teller = Teller(pause=float(os.environ.get("BANK_PAUSE", "0")))
    engine, registry = wire(storage(), teller)
    mediator = registry.build()
    try:
        receipt = mediator.send(PayIn(account="a", amount=amount, idempotency_key=key))
    except IdempotencyKeyInUseError:
        print("in-use", flush=True)
    else:
        print(f"receipt {receipt.number} runs {teller.runs}", flush=True)
    finally:
        engine.storage.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
