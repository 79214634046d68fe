"""A small checkout with a process manager, for the process-manager tests: an order is opened, stock reserved,
payment awaited for 15 minutes (a scheduled timeout cancels the order), then the order shipped.

``python -m tests.readmodels.checkout_process crash-loop`` runs it on the database ``BANK_DB`` /
``BANK_POSTGRES`` + ``BANK_SCHEMA`` names (as ``bank_app``), opening and paying orders and running the process
manager and due timeouts, until killed.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import sys
import time
from typing import Any

import attrs

from mediator import Command, Event, Mediator, Registry
from mediator.readmodels import EventTypes, ProcessManager, ReadModels, Step, Storage, UnitOfWork, on

TIMEOUT = dt.timedelta(minutes=15)


@attrs.frozen(kw_only=True)
class OpenOrder(Command[None]):
    order_id: str
    amount: int


@attrs.frozen(kw_only=True)
class Reserve(Command[None]):
    order_id: str


@attrs.frozen(kw_only=True)
class Pay(Command[None]):
    order_id: str


@attrs.frozen(kw_only=True)
class Ship(Command[None]):
    order_id: str


@attrs.frozen(kw_only=True)
class Cancel(Command[None]):
    order_id: str
    reason: str


@attrs.frozen(kw_only=True)
class Opened(Event):
    order_id: str
    amount: int


@attrs.frozen(kw_only=True)
class Reserved(Event):
    order_id: str


@attrs.frozen(kw_only=True)
class Paid(Event):
    order_id: str


@attrs.frozen(kw_only=True)
class Shipped(Event):
    order_id: str


@attrs.frozen(kw_only=True)
class Cancelled(Event):
    order_id: str
    reason: str


EVENTS = (Opened, Reserved, Paid, Shipped, Cancelled)


@attrs.frozen(kw_only=True)
class Progress:
    """A checkout instance's state."""

    stage: str
    amount: int
    timeout: str


class Checkout(ProcessManager[Progress]):
    name = "checkout"
    state = Progress

    def __init__(self) -> None:
        super().__init__()
        self.compensations: list[str] = []

    @on(Opened)
    def opened(self, event: Opened, state: Progress | None, step: Step) -> Progress | None:
        step.send(Reserve(order_id=event.order_id))
        timeout = step.schedule(Cancel(order_id=event.order_id, reason="not paid in time"), after=TIMEOUT,
                                schedule_id=f"payment-timeout:{event.order_id}")
        return Progress(stage="awaiting payment", amount=event.amount, timeout=timeout)

    @on(Paid)
    def paid(self, event: Paid, state: Progress | None, step: Step) -> Progress | None:
        if state is None or state.stage != "awaiting payment" or not step.cancel(state.timeout):
            return state  # paid after the timeout fired: the order is cancelled, nothing to ship
        step.send(Ship(order_id=event.order_id))
        return attrs.evolve(state, stage="shipping")

    @on(Shipped, Cancelled)
    def ended(self, event: Shipped | Cancelled, state: Progress | None, step: Step) -> Progress | None:
        return None

    def compensate(self, event: Any, state: Progress | None, error: Exception, step: Step) -> Progress | None:
        self.compensations.append(event.order_id)
        step.cancel(f"payment-timeout:{event.order_id}")
        step.send(Cancel(order_id=event.order_id, reason=f"could not go on: {error}"))
        return None


class Shop:
    """The handlers, with switches a test turns (a warehouse that fails to ship)."""

    def __init__(self) -> None:
        self.ship_failures = 0
        self.shipping_down = False

    def open_order(self, command: OpenOrder, uow: UnitOfWork) -> None:
        uow.record(Opened(order_id=command.order_id, amount=command.amount), key=command.order_id)

    def reserve(self, command: Reserve, uow: UnitOfWork) -> None:
        uow.record(Reserved(order_id=command.order_id), key=command.order_id)

    def pay(self, command: Pay, uow: UnitOfWork) -> None:
        uow.record(Paid(order_id=command.order_id), key=command.order_id)

    def ship(self, command: Ship, uow: UnitOfWork) -> None:
        uow.record(Shipped(order_id=command.order_id), key=command.order_id)
        if self.shipping_down:
            raise ConnectionError("the warehouse is unreachable")
        if self.ship_failures:
            self.ship_failures -= 1
            raise ConnectionError("the warehouse did not answer")

    def cancel(self, command: Cancel, uow: UnitOfWork) -> None:
        uow.record(Cancelled(order_id=command.order_id, reason=command.reason), key=command.order_id)


def event_types() -> EventTypes:
    types = EventTypes()
    for event_type in EVENTS:
        types.register(event_type, name=f"checkout.{event_type.__name__.lower()}")
    return types


def wire(storage: Storage, checkout: Checkout | None = None,
         **engine_options: Any) -> tuple[ReadModels, Mediator, Shop, Checkout]:
    shop, checkout = Shop(), checkout or Checkout()
    engine = ReadModels(storage, event_types(), **engine_options)
    engine.add_process(checkout).schedulable(Cancel, name="checkout.cancel")
    registry = Registry()
    engine.install(registry)
    registry.handle(OpenOrder).by(shop.open_order)
    registry.handle(Reserve).by(shop.reserve)
    registry.handle(Pay).by(shop.pay)
    registry.handle(Ship).by(shop.ship)
    registry.handle(Cancel).by(shop.cancel)
    mediator = registry.build()
    engine.dispatch_with(mediator)
    return engine, mediator, shop, checkout


def history(storage: Storage) -> dict[str, list[str]]:
    """Each order's events, in log order, by name."""
    found: dict[str, list[str]] = {}
    for stored in storage.events():
        if stored.key is not None:
            found.setdefault(stored.key, []).append(stored.type_name.removeprefix("checkout."))
    return found


SPEED = 600.0
"""How much faster than the wall's the crash loop's clock runs: a 15-minute timeout falls due in 1.5 s."""


def fast_clock(epoch: float) -> float:
    """The crash loop's clock: from ``epoch`` (shared by every process of a test) on, ``SPEED`` times faster."""
    return epoch + (time.time() - epoch) * SPEED


def crash_loop(ack: str) -> None:
    """Open and pay orders (some paid, some left to time out) and run the process manager and the due timeouts,
    until killed. The clock runs ``SPEED`` times faster than the wall's, from ``CHECKOUT_EPOCH``, so timeouts fall
    due within the loop, and alike in every process."""
    from .bank_app import storage

    epoch = float(os.environ["CHECKOUT_EPOCH"])
    engine, mediator, _shop, _checkout = wire(storage(), clock=lambda: fast_clock(epoch))
    engine.start()
    rng = random.Random()
    number = 0
    with open(ack, "a") as acks:
        while True:
            order_id = f"o-{os.getpid()}-{number}"
            mediator.send(OpenOrder(order_id=order_id, amount=rng.randint(1, 100)))
            acks.write(f"opened {order_id}\n")
            acks.flush()
            if rng.random() < 0.7:
                time.sleep(rng.random() * 0.01)
                mediator.send(Pay(order_id=order_id))
                acks.write(f"paid {order_id}\n")
                acks.flush()
            number += 1


if __name__ == "__main__":
    crash_loop(sys.argv[2])
