"""Lag, throughput and parked counts as OpenTelemetry metrics, read with the SDK's in-memory reader."""

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from mediator.otel import instrument
from mediator.readmodels import Storage

from .bank import Deposit, make_bank


def collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


def test_metrics_follow_the_engine(storage: Storage) -> None:
    bank = make_bank(storage)
    reader = InMemoryMetricReader()
    instrument(bank.engine, MeterProvider(metric_readers=[reader]))
    bank.projection.poison.add("bad")
    for account in ("a", "bad", "b"):
        bank.mediator.send(Deposit(account=account, amount=1))

    before = collect(reader)
    (lag,) = before["mediator.projection.lag.positions"]
    assert (lag.value, dict(lag.attributes)) == (3, {"projection": "balances", "generation": 1, "rebuilding": False})
    assert before["mediator.projection.lag.seconds"][0].value >= 0

    bank.engine.catch_up()
    after = collect(reader)
    # the parked event at position 2 is not applied: the projection is still 2 behind, not current
    assert after["mediator.projection.lag.positions"][0].value == 2
    assert after["mediator.projection.parked"][0].value == 1
    assert after["mediator.projection.blocked"][0].value == 0
    assert after["mediator.projection.parked.age"][0].value >= 0
    assert after["mediator.projection.stalled"][0].value == 0
    (applied,) = after["mediator.projection.events_applied"]
    assert applied.value == 3
    assert dict(applied.attributes) == {"projection": "balances"}

    bank.projection.down = True  # its store fails: every event alike
    for account in ("c", "d"):
        bank.mediator.send(Deposit(account=account, amount=1))
    bank.engine.catch_up()
    assert collect(reader)["mediator.projection.stalled"][0].value == 1


def test_lag_is_logged_through_structlog(storage: Storage) -> None:
    from structlog.testing import capture_logs

    bank = make_bank(storage)
    bank.mediator.send(Deposit(account="a", amount=1))
    with capture_logs() as logs:
        bank.engine.log_lag()
    (entry,) = logs
    assert entry["event"] == "projection lag"
    assert entry["positions_behind"] == 1


def test_repeats_of_idempotent_commands_are_counted_as_absorbed(storage: Storage) -> None:
    from .idempotent_bank import PayIn, Teller, wire

    engine, registry = wire(storage, Teller())
    mediator = registry.build()
    reader = InMemoryMetricReader()
    instrument(engine, MeterProvider(metric_readers=[reader]))
    assert collect(reader).get("mediator.command.duplicates_absorbed", []) == []
    for _ in range(3):
        mediator.send(PayIn(account="a", amount=1, idempotency_key="k"))
    (absorbed,) = collect(reader)["mediator.command.duplicates_absorbed"]
    assert (absorbed.value, dict(absorbed.attributes)) == (2, {"command": "tests.readmodels.idempotent_bank.PayIn"})


def test_process_steps_and_fired_timeouts_are_counted(storage: Storage) -> None:
    from mediator.testing import Clock, settle

    from .checkout_process import OpenOrder, wire

    clock = Clock()
    engine, mediator, _shop, _checkout = wire(storage, clock=clock)
    reader = InMemoryMetricReader()
    instrument(engine, MeterProvider(metric_readers=[reader]))
    mediator.send(OpenOrder(order_id="o-1", amount=1))
    settle(engine)
    clock.advance(hours=1)
    settle(engine)  # the timeout fires; its cancellation is a step too
    found = collect(reader)
    (steps,) = found["mediator.process.steps"]
    assert (steps.value, dict(steps.attributes)) == (2, {"process": "checkout"})
    (fired,) = found["mediator.schedule.fired"]
    assert (fired.value, dict(fired.attributes)) == (1, {"command": "checkout.cancel"})
    (compensations,) = found["mediator.process.compensations"]
    assert compensations.value == 0
