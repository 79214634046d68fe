"""The outbox relay and the inbox, broker-neutral (the in-memory publisher), on every storage."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from domain.events import OrderPlaced
from mediator.readmodels import NewEvent, Projection, ProjectionSession, ReadModels, Storage, StoredEvent, on
from mediator.readmodels.memory import MemoryStorage
from mediator.readmodels.sqlite import SqliteStorage
from mediator.relay import Inbox, MemoryPublisher, PublishError, Relay
from mediator.testing import settle
from tests import postgres

from .shop_events import CANCELLED, PLACED, SELECTED, TYPES, append, orders


def selected_in(storage: Storage) -> list[StoredEvent]:
    return [event for event in storage.events() if event.type_name in SELECTED]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class CrashAfterPublish:
    """Publishes, then dies before the relay can move its checkpoint (the process crashing right there)."""

    def __init__(self, inner: MemoryPublisher) -> None:
        self.inner = inner

    def publish(self, events: Sequence[StoredEvent]) -> None:
        self.inner.publish(events)
        raise RuntimeError("crash")

    def close(self) -> None:
        pass


def test_the_checkpoint_is_a_tracking_row_that_a_new_relay_resumes_from(any_storage: Storage) -> None:
    append(any_storage, orders(0, 4))
    broker = MemoryPublisher()
    assert Relay(any_storage, broker, name="billing", select=SELECTED).catch_up() == 5
    head = any_storage.head()
    assert any_storage.checkpoint("relay:billing", 1) == head
    append(any_storage, orders(4, 2))
    resumed = Relay(any_storage, broker, name="billing", select=SELECTED)
    assert resumed.position == head
    assert resumed.catch_up() == len(selected_in(any_storage)) - 5
    assert [e.event_id for e in broker.published] == [e.event_id for e in selected_in(any_storage)]


class Seen(Projection):
    """Remembers the orders it saw, in memory: a projection that runs on any storage."""

    name = "seen"

    def __init__(self) -> None:
        super().__init__()
        self.orders: list[str] = []

    @on(OrderPlaced)
    def placed(self, event: OrderPlaced, session: ProjectionSession) -> None:
        self.orders.append(event.order_id)


def test_the_relay_checkpoint_and_projections_share_the_tracking_table_apart(any_storage: Storage) -> None:
    engine = ReadModels(any_storage, TYPES)
    seen = Seen()
    engine.add(seen)
    append(any_storage, orders(0, 3))
    relay = Relay(any_storage, MemoryPublisher(), select=SELECTED)
    relay.catch_up()
    settle(engine)
    head = any_storage.head()
    assert (relay.position, any_storage.checkpoint("seen", 1)) == (head, head)
    assert [(lag.projection, lag.positions_behind) for lag in engine.lag()] == [("seen", 0)]
    assert seen.orders == ["o-0", "o-1", "o-2"]
    assert any_storage.all_dead_letters() == []


def test_only_selected_events_are_published_in_log_order(any_storage: Storage) -> None:
    append(any_storage, orders(0, 6))
    by_name, by_predicate = MemoryPublisher(), MemoryPublisher()
    Relay(any_storage, by_name, name="names", select=SELECTED, batch=3).catch_up()
    Relay(any_storage, by_predicate, name="predicate", select=lambda e: e.type_name == PLACED, batch=3).catch_up()
    wanted = selected_in(any_storage)
    assert by_name.published == wanted
    assert by_predicate.published == [e for e in wanted if e.type_name == PLACED]
    assert {e.type_name for e in by_name.published} == {PLACED, CANCELLED}


def test_a_relay_of_all_events_and_one_of_names_both_reach_the_head(any_storage: Storage) -> None:
    append(any_storage, orders(0, 3))
    everything = MemoryPublisher()
    Relay(any_storage, everything, name="all").catch_up()
    names = Relay(any_storage, MemoryPublisher(), name="names", select={PLACED})
    names.catch_up()
    assert everything.published == list(any_storage.events())
    assert names.position == any_storage.head()  # unselected events after the last selected one are passed too
    assert names.behind() == 0


def test_a_crash_between_publish_and_checkpoint_publishes_again(any_storage: Storage) -> None:
    append(any_storage, orders(0, 3))
    broker = MemoryPublisher()
    with pytest.raises(RuntimeError, match="crash"):
        Relay(any_storage, CrashAfterPublish(broker), select=SELECTED).run_once()
    first = [e.event_id for e in broker.published]
    restarted = Relay(any_storage, broker, select=SELECTED)
    assert restarted.position == 0
    restarted.catch_up()
    assert [e.event_id for e in broker.published] == first + first  # at least once: the same events again
    assert restarted.position == any_storage.head()


def test_a_broker_down_keeps_the_events_in_the_log_until_it_is_back(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "app.db")
    broker = MemoryPublisher()
    broker.down = True
    relay = Relay(storage, broker, select=SELECTED, backoff=0.005, max_backoff=0.02, watch_interval=0.005)
    with capture_logs() as logs:
        relay.start()
        try:
            append(storage, orders(0, 5))
            wait_until(lambda: broker.attempts >= 5)
            assert relay.position == 0
            assert relay.failures >= 5
            broker.down = False
            wait_until(lambda: relay.position == storage.head())
        finally:
            relay.stop()
            storage.close()
    assert broker.published == selected_in(SqliteStorage(tmp_path / "app.db"))
    failed = [line for line in logs if line["event"] == "relay failed, will retry"]
    assert failed[0]["error_type"] == "mediator.PublishError"
    assert max(line["retry_in"] for line in failed) == 0.02  # the backoff is capped
    assert any(line["event"] == "relay recovered" for line in logs)


def test_events_a_broker_acknowledged_before_failing_are_not_published_again() -> None:
    storage = MemoryStorage()
    append(storage, orders(0, 4))

    class TakesTwo(MemoryPublisher):
        def publish(self, events: Sequence[StoredEvent]) -> None:
            self.published.extend(events[:2])
            raise PublishError("gone", acked=2)

    relay = Relay(storage, TakesTwo(), select=SELECTED)
    with pytest.raises(PublishError):
        relay.run_once()
    assert relay.position == selected_in(storage)[1].position


def test_select_must_be_a_collection_of_names_not_one_string() -> None:
    with pytest.raises(TypeError, match="one string"):
        Relay(MemoryStorage(), MemoryPublisher(), select=PLACED)


def received(event_id: str) -> NewEvent:
    name, version, data = TYPES.encode(orders(1, 1)[1][0])
    return NewEvent(event_id, name, version, data, "o-1", 1.0)


def downstream(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    storage: Storage
    if backend == "sqlite":
        storage = SqliteStorage(tmp_path / "downstream.db")
    else:
        from tests import postgres

        postgres.require()
        from mediator.readmodels.postgres import PostgresStorage

        pg = PostgresStorage(postgres.DSN, schema=postgres.new_schema())
        request.addfinalizer(pg.drop_schema)
        storage = pg
    request.addfinalizer(storage.close)
    return storage


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_inbox_appends_each_event_id_once(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    storage = downstream(backend, tmp_path, request)
    inbox = Inbox(storage)
    assert inbox.receive([received("a"), received("b"), received("a")]) == 2
    assert inbox.receive([received("b"), received("c")]) == 1  # a repeat among new ones
    assert inbox.receive([received("c")]) == 0
    assert [e.event_id for e in storage.events()] == ["a", "b", "c"]
    assert (inbox.received, inbox.duplicates) == (3, 3)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_one_event_the_storage_refuses_is_quarantined_and_the_rest_of_the_batch_appends(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    storage = downstream(backend, tmp_path, request)
    inbox = Inbox(storage, name="orders-in")
    nul = received("nul")._replace(data='{"order_id": "o-\u0000"}'.replace("\\u0000", "\0"))
    surrogate = received("surrogate")._replace(type_name="shop.OrderPlaced\udc80")
    refused = [nul, surrogate] if backend == "postgres" else [surrogate]  # SQLite stores a NUL, not a surrogate
    batch = [received("a"), *refused, received("b")]
    assert inbox.receive(batch) == len(batch) - len(refused)  # the good ones, on the first delivery
    assert [e.event_id for e in storage.events()] == [e.event_id for e in batch if e not in refused]
    kept = storage.quarantined("orders-in")
    assert [q.event_id for q in kept] == [e.event_id for e in refused]
    assert all("refused" in q.reason or "failed to append" in q.reason for q in kept)
    assert all(json.loads(q.event)["event_id"] == q.event_id for q in kept)  # kept whole, escaped
    assert inbox.quarantined == len(refused)
    assert inbox.receive(batch) == 0  # delivered again: the good ones are duplicates, the bad ones kept once
    assert len(storage.quarantined("orders-in")) == len(refused)
    assert storage.quarantined("elsewhere") == []


def test_the_inbox_refuses_a_storage_without_unique_event_ids() -> None:
    with pytest.raises(TypeError, match="duplicate event ids"):
        Inbox(MemoryStorage())


def test_of_two_relays_of_one_name_on_postgresql_one_publishes_until_it_stops(pg_schema: str) -> None:
    from mediator.readmodels.postgres import PostgresStorage

    first_storage = PostgresStorage(postgres.DSN, schema=pg_schema)
    second_storage = PostgresStorage(postgres.DSN, schema=pg_schema)  # a session of its own, as another process
    first_broker, second_broker = MemoryPublisher(), MemoryPublisher()
    first = Relay(first_storage, first_broker, select=SELECTED, poll_interval=0.05)
    second = Relay(second_storage, second_broker, select=SELECTED, poll_interval=0.05)
    try:
        append(first_storage, orders(1, 10))
        first.start()
        wait_until(lambda: first_broker.published == selected_in(first_storage))
        second.start()
        append(first_storage, orders(11, 10))
        wait_until(lambda: first_broker.published == selected_in(first_storage))
        assert second_broker.published == []  # the first holds the relay's lease
        first.stop()  # gives the lease up: the second takes over where the checkpoint is
        append(first_storage, orders(21, 10))
        wait_until(lambda: first_broker.published + second_broker.published == selected_in(first_storage))
        assert second_broker.published
    finally:
        first.stop()
        second.stop()
        first_storage.close()
        second_storage.close()
