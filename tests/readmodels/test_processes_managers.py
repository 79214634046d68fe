"""Process managers: typed state per key, steps exactly once with the commands they send, timeouts, parked and
retried steps in per-key order, compensation."""

from __future__ import annotations

import pytest

from mediator import Mediator
from mediator.readmodels import PARKED, ProcessManager, ReadModels, Storage
from mediator.testing import Clock, settle

from .checkout_process import Cancel, Checkout, OpenOrder, Pay, Progress, Shop, history, wire


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Uncompensated(Checkout):
    compensate = ProcessManager.compensate  # the default: parked for an operator


def checkout(storage: Storage, clock: Clock, manager: Checkout | None = None
             ) -> tuple[ReadModels, Mediator, Shop, Checkout]:
    return wire(storage, manager, clock=clock, backoff=10.0, max_backoff=60.0, max_attempts=3, heal_attempts=1,
                heal_interval=600.0)


def test_an_order_paid_in_time_is_reserved_then_shipped_and_its_instance_ends(storage: Storage,
                                                                              clock: Clock) -> None:
    engine, mediator, _shop, _checkout = checkout(storage, clock)
    mediator.send(OpenOrder(order_id="o-1", amount=30))
    settle(engine)
    assert engine.processes.instance("checkout", "o-1") == Progress(stage="awaiting payment", amount=30,
                                                                    timeout="payment-timeout:o-1")
    assert [row.schedule_id for row in storage.scheduled()] == ["payment-timeout:o-1"]
    clock.advance(minutes=10)
    mediator.send(Pay(order_id="o-1"))
    settle(engine)
    clock.advance(hours=1)
    settle(engine)
    assert history(storage) == {"o-1": ["opened", "reserved", "paid", "shipped"]}
    assert engine.processes.instance("checkout", "o-1") is None
    assert storage.scheduled() == []  # the timeout was cancelled with the step that saw the payment


def test_an_order_not_paid_in_time_is_cancelled_by_its_timeout(storage: Storage, clock: Clock) -> None:
    engine, mediator, _shop, _checkout = checkout(storage, clock)
    mediator.send(OpenOrder(order_id="o-1", amount=30))
    settle(engine)
    clock.advance(minutes=14, seconds=59)
    settle(engine)
    assert history(storage)["o-1"] == ["opened", "reserved"]
    clock.advance(seconds=1)
    settle(engine)
    mediator.send(Pay(order_id="o-1"))  # too late
    settle(engine)
    assert history(storage) == {"o-1": ["opened", "reserved", "cancelled", "paid"]}
    assert engine.processes.instance("checkout", "o-1") is None


def test_each_step_runs_once_however_many_runners_take_it(storage: Storage, clock: Clock) -> None:
    first = checkout(storage, clock)
    second = checkout(storage, clock)
    for number in range(5):
        first[1].send(OpenOrder(order_id=f"o-{number}", amount=number))
    for engine in (first[0], second[0], first[0]):
        settle(engine)
    assert all(events == ["opened", "reserved"] for events in history(storage).values())
    assert len(storage.scheduled()) == 5


def test_a_failing_step_waits_with_its_key_while_other_keys_go_on(storage: Storage, clock: Clock) -> None:
    engine, mediator, shop, _checkout = checkout(storage, clock)
    for order_id in ("o-1", "o-2"):
        mediator.send(OpenOrder(order_id=order_id, amount=1))
    settle(engine)
    shop.ship_failures = 1
    mediator.send(Pay(order_id="o-1"))
    mediator.send(Cancel(order_id="o-1", reason="the customer changed their mind"))  # waits behind the payment
    mediator.send(Pay(order_id="o-2"))
    settle(engine)
    assert history(storage)["o-2"][-1] == "shipped"
    (status,) = engine.processes.status()
    assert (status.parked, status.blocked, status.instances) == (1, 1, 1)
    (parked,) = [letter for letter in status.letters if letter.status == PARKED]
    assert parked.reason.startswith("ConnectionError: the warehouse did not answer")
    assert engine.processes.instance("checkout", "o-1") == Progress(stage="awaiting payment", amount=1,
                                                                    timeout="payment-timeout:o-1")
    clock.advance(seconds=10)  # the first retry
    settle(engine)
    assert history(storage)["o-1"] == ["opened", "reserved", "paid", "cancelled", "shipped"]
    (status,) = engine.processes.status()
    assert (status.parked, status.blocked, status.instances, status.behind) == (0, 0, 0, 0)


def test_a_step_that_fails_every_try_is_compensated(storage: Storage, clock: Clock) -> None:
    engine, mediator, shop, manager = checkout(storage, clock)
    mediator.send(OpenOrder(order_id="o-1", amount=1))
    settle(engine)
    shop.shipping_down = True
    mediator.send(Pay(order_id="o-1"))
    settle(engine)
    for delay in (10, 20, 600):  # the tries, all before the payment timeout would fall due
        assert manager.compensations == []
        clock.advance(seconds=delay)
        settle(engine)
    assert manager.compensations == ["o-1"]
    assert history(storage)["o-1"] == ["opened", "reserved", "paid", "cancelled"]
    (status,) = engine.processes.status()
    assert (status.parked, status.blocked, status.instances) == (0, 0, 0)
    assert storage.scheduled() == []


def test_without_compensation_a_step_that_fails_every_try_waits_for_an_operator(storage: Storage,
                                                                                clock: Clock) -> None:
    engine, mediator, shop, _manager = checkout(storage, clock, manager=Uncompensated())
    mediator.send(OpenOrder(order_id="o-1", amount=1))
    settle(engine)
    shop.shipping_down = True
    mediator.send(Pay(order_id="o-1"))
    settle(engine)
    for delay in (10, 20, 600):
        clock.advance(seconds=delay)
        settle(engine)
    (status,) = engine.processes.status()
    (letter,) = status.letters
    assert (letter.status, letter.retry_at) == (PARKED, None)
    shop.shipping_down = False
    assert engine.processes.retry("checkout", letter.position) == 1
    assert history(storage)["o-1"][-1] == "shipped"
