"""The shop's order fulfilment: a process manager over each order's events.

placed (its stock reserved in the same transaction) -> awaiting payment -> paid (the payment confirms the order)
-> shipped. Placing an order schedules its payment timeout; the payment cancels that timeout and ships the order
in one step; an order still unpaid when the timeout falls due is cancelled by it and its stock released
(``ExpireUnpaidOrder``). Each step commits with the commands it sends and the timeout it schedules or cancels, so
none happens twice or is lost, whatever crashes.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import attrs

from domain.events import OrderCancelled, OrderPaid, OrderPlaced, OrderShipped
from domain.messages import ExpireUnpaidOrder, ShipOrder
from mediator.readmodels import ProcessManager, Step, on

PAYMENT_TIMEOUT = dt.timedelta(minutes=15)
AWAITING_PAYMENT = "awaiting payment"
PAID = "paid"


@attrs.frozen(kw_only=True)
class Fulfilment:
    """One order's fulfilment, as the process manager keeps it."""

    stage: str
    total: Decimal
    timeout: str
    """The id of the scheduled payment timeout."""


def timeout_id(order_id: str) -> str:
    return f"payment-timeout:{order_id}"


class OrderFulfilment(ProcessManager[Fulfilment]):
    name = "fulfilment"
    state = Fulfilment

    def __init__(self, payment_timeout: dt.timedelta = PAYMENT_TIMEOUT) -> None:
        super().__init__()
        self.payment_timeout = payment_timeout

    @on(OrderPlaced)
    def placed(self, event: OrderPlaced, state: Fulfilment | None, step: Step) -> Fulfilment | None:
        timeout = step.schedule(ExpireUnpaidOrder(order_id=event.order_id), after=self.payment_timeout,
                                schedule_id=timeout_id(event.order_id))
        return Fulfilment(stage=AWAITING_PAYMENT, total=event.total, timeout=timeout)

    @on(OrderPaid)
    def paid(self, event: OrderPaid, state: Fulfilment | None, step: Step) -> Fulfilment | None:
        if state is None or state.stage != AWAITING_PAYMENT:
            return state
        step.cancel(state.timeout)
        step.send(ShipOrder(order_id=event.order_id))  # the warehouse stand-in ships at once
        return attrs.evolve(state, stage=PAID)

    @on(OrderShipped, OrderCancelled)
    def ended(self, event: OrderShipped | OrderCancelled, state: Fulfilment | None, step: Step) -> Fulfilment | None:
        if state is not None:
            step.cancel(state.timeout)  # cancelled by the customer or staff before the timeout: it is not needed
        return None
