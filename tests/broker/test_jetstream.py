"""The relay through the real NATS JetStream to consumers that de-duplicate: in order, once each, across crashes,
another process, and the broker going down."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from adapters.shop_app import build_shop
from domain.messages import (
    CancelOrder,
    CreateCategory,
    CreateProduct,
    OrderItem,
    PlaceOrder,
    RegisterCustomer,
    UpdateProductStock,
)
from mediator import nats as jetstream
from mediator.nats import JetStreamConsumer, JetStreamPublisher
from mediator.readmodels import NewEvent, Storage, StoredEvent
from mediator.readmodels.sqlite import SqliteStorage
from mediator.relay import Relay
from mediator.testing import settle

from . import consumer_app
from .conftest import NatsServer, Stream, stream_messages
from .shop_events import SELECTED, append, expected, orders

ROOT = Path(__file__).resolve().parents[2]


def selected_in(storage: Storage) -> list[StoredEvent]:
    return [event for event in storage.events() if event.type_name in SELECTED]


def wait_until(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def downstream(tmp_path: Path) -> Iterator[consumer_app.Downstream]:
    service = consumer_app.build(tmp_path / "downstream.db")
    yield service
    service.close()


def publisher(url: str, stream: Stream, *, duplicate_window: float = 120.0, timeout: float = 5.0,
              connect_timeout: float = 2.0) -> JetStreamPublisher:
    return JetStreamPublisher(url, stream.name, stream.prefix, duplicate_window=duplicate_window, timeout=timeout,
                              connect_timeout=connect_timeout)


def consume_all(consumer: JetStreamConsumer, count: int, timeout: float = 10.0) -> None:
    """Run the consumer in this thread until it has handled ``count`` messages."""
    deadline = time.monotonic() + timeout
    while consumer.handled < count:
        assert time.monotonic() < deadline, f"handled {consumer.handled} of {count}"
        consumer.run_once(timeout=0.5)


class CrashAfterPublish:
    """Publishes through the real broker, then dies before the relay moves its checkpoint."""

    def __init__(self, inner: JetStreamPublisher) -> None:
        self.inner = inner

    def publish(self, events: Sequence[StoredEvent]) -> None:
        self.inner.publish(events)
        raise RuntimeError("crash after publishing")

    def close(self) -> None:
        pass


def test_the_relay_publishes_selected_events_only_in_log_order(source: Storage, stream: Stream,
                                                               nats_url: str) -> None:
    append(source, orders(0, 8))
    broker = publisher(nats_url, stream)
    try:
        relay = Relay(source, broker, select=SELECTED, batch=4)
        assert relay.catch_up() == len(selected_in(source))
    finally:
        broker.close()
    assert relay.position == source.head()
    published = asyncio.run(stream_messages(nats_url, stream.name))
    wanted = selected_in(source)
    assert [headers[jetstream.MSG_ID] for _s, headers, _d in published] == [e.event_id for e in wanted]
    for (subject, headers, data), event in zip(published, wanted, strict=True):
        assert subject == jetstream.subject(stream.prefix, event.type_name)
        assert data.decode() == event.data
        assert headers[jetstream.TYPE] == event.type_name
        assert int(headers[jetstream.VERSION]) == event.version
        assert headers[jetstream.KEY] == event.key
        assert float(headers[jetstream.RECORDED_AT]) == event.recorded_at
        assert json.loads(headers[jetstream.META]) == json.loads(event.meta)
        assert int(headers[jetstream.POSITION]) == event.position


def test_a_republish_after_a_crash_is_dropped_by_jetstream_within_its_window(
        source: Storage, stream: Stream, nats_url: str, downstream: consumer_app.Downstream) -> None:
    append(source, orders(0, 6))
    broker = publisher(nats_url, stream)
    try:
        with pytest.raises(RuntimeError, match="crash"):
            Relay(source, CrashAfterPublish(broker), select=SELECTED).run_once()
        restarted = Relay(source, broker, select=SELECTED)
        assert restarted.position == 0  # the checkpoint did not move: everything is published again
        restarted.catch_up()
    finally:
        broker.close()
    wanted = selected_in(source)
    assert len(asyncio.run(stream_messages(nats_url, stream.name))) == len(wanted)  # Nats-Msg-Id: stored once
    with JetStreamConsumer(nats_url, stream.name, "billing", downstream.inbox.receive, fetch_timeout=0.2) as consumer:
        wait_until(lambda: consumer.handled == len(wanted), what="the consumer")
    settle(downstream.engine)
    assert consumer_app.read_counts(downstream.storage.write_path) == expected(wanted)


def test_a_republish_after_the_window_is_dropped_by_the_consumer(
        source: Storage, stream: Stream, nats_url: str, downstream: consumer_app.Downstream) -> None:
    append(source, orders(0, 6))
    broker = publisher(nats_url, stream, duplicate_window=0.1)
    try:
        with pytest.raises(RuntimeError, match="crash"):
            Relay(source, CrashAfterPublish(broker), select=SELECTED).run_once()
        time.sleep(0.5)  # past JetStream's duplicate window: the broker stores the republish again
        Relay(source, broker, select=SELECTED).catch_up()
    finally:
        broker.close()
    wanted = selected_in(source)
    assert len(asyncio.run(stream_messages(nats_url, stream.name))) == 2 * len(wanted)
    consumer = JetStreamConsumer(nats_url, stream.name, "billing", downstream.inbox.receive, batch=4)
    try:
        consume_all(consumer, 2 * len(wanted))
    finally:
        consumer.close()
    assert (downstream.inbox.received, downstream.inbox.duplicates) == (len(wanted), len(wanted))
    assert [e.event_id for e in downstream.storage.events()] == [e.event_id for e in wanted]
    settle(downstream.engine)
    assert consumer_app.read_counts(downstream.storage.write_path) == expected(wanted)  # each counted once


def relayed(tmp_path: Path, url: str, stream: Stream, count: int) -> list[StoredEvent]:
    """Append ``count`` orders to a source log, relay them to ``stream``; return the selected events."""
    source = SqliteStorage(tmp_path / "source.db")
    broker = publisher(url, stream)
    try:
        append(source, orders(0, count))
        Relay(source, broker, select=SELECTED).catch_up()
        return selected_in(source)
    finally:
        broker.close()
        source.close()


def test_a_message_redelivered_after_its_local_commit_is_applied_once(
        tmp_path: Path, stream: Stream, nats_url: str, downstream: consumer_app.Downstream) -> None:
    wanted = relayed(tmp_path, nats_url, stream, 5)
    committed: list[int] = []

    def commit_then_die(events: Sequence[NewEvent]) -> None:
        committed.append(downstream.inbox.receive(events))
        raise RuntimeError("died before the ack")

    dying = JetStreamConsumer(nats_url, stream.name, "billing", commit_then_die, ack_wait=0.5, fetch_timeout=0.2)
    try:
        with pytest.raises(RuntimeError, match="before the ack"):
            dying.run_once()
    finally:
        dying.close()  # never acknowledged: JetStream redelivers after ack_wait, to the consumer started next
    assert committed == [len(wanted)]
    restarted = JetStreamConsumer(nats_url, stream.name, "billing", downstream.inbox.receive, fetch_timeout=0.2)
    try:
        consume_all(restarted, len(wanted))
    finally:
        restarted.close()
    assert downstream.inbox.duplicates == len(wanted)
    assert [e.event_id for e in downstream.storage.events()] == [e.event_id for e in wanted]
    settle(downstream.engine)
    assert consumer_app.read_counts(downstream.storage.write_path) == expected(wanted)


def test_a_batch_the_local_database_refused_is_delivered_again_before_later_messages(
        tmp_path: Path, stream: Stream, nats_url: str, downstream: consumer_app.Downstream) -> None:
    wanted = relayed(tmp_path, nats_url, stream, 8)
    calls: list[list[str]] = []

    def refuse_the_first(events: Sequence[NewEvent]) -> None:
        calls.append([event.event_id for event in events])
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        downstream.inbox.receive(events)

    consumer = JetStreamConsumer(nats_url, stream.name, "billing", refuse_the_first, batch=3, fetch_timeout=0.2)
    try:
        with pytest.raises(RuntimeError, match="locked"):
            consumer.run_once()
        consume_all(consumer, len(wanted))
    finally:
        consumer.close()
    assert calls[1] == calls[0]  # the same batch again, not later messages first
    assert [e.event_id for e in downstream.storage.events()] == [e.event_id for e in wanted]  # in source order
    assert downstream.inbox.duplicates == 0


def test_a_consumer_in_another_process_feeds_its_own_projection(tmp_path: Path, stream: Stream,
                                                                nats_url: str) -> None:
    shop = build_shop(tmp_path / "shop.db", logging=False)
    broker = publisher(nats_url, stream)
    relay = Relay(shop.storage, broker, select=SELECTED, watch_interval=0.005)
    broker.ensure_stream()
    db = tmp_path / "billing.db"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.broker.consumer_app", "--url", nats_url, "--stream", stream.name,
         "--durable", "billing", "--db", str(db), "--subject", f"{stream.prefix}.>"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        relay.start()
        send = shop.mediator.send
        customers = [send(RegisterCustomer(name=name, email=f"{name}@example.com")) for name in ("ada", "bo")]
        lamps = send(CreateCategory(name="Lamps"))
        desk = send(CreateProduct(category_id=lamps, name="Desk lamp", price=Decimal("25.00")))
        send(UpdateProductStock(product_id=desk, delta=100, reason="delivery"))
        placed = [send(PlaceOrder(customer_id=customers[n % 2], items=(OrderItem(product_id=desk, quantity=1 + n),)))
                  for n in range(6)]
        send(CancelOrder(order_id=placed[3], reason="changed my mind"))
        wanted = selected_in(shop.storage)
        assert len(wanted) == 7
        wait_until(lambda: consumer_app.read_counts(db) == expected(wanted), what="the other process")
    finally:
        relay.stop()
        broker.close()
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=20)
        shop.close()
    assert child.returncode == 0, err
    assert out.splitlines()[0] == "ready"
    assert out.splitlines()[-1] == "handled 7 new 7 duplicates 0"
    assert expected(wanted) == {customers[0]: (3, 0, Decimal("225.00")), customers[1]: (3, 1, Decimal("300.00"))}


def test_a_broker_down_keeps_events_in_the_outbox_and_delivers_them_after_recovery(
        source: Storage, own_nats: NatsServer, downstream: consumer_app.Downstream) -> None:
    stream = Stream("SHOP", "shop.events")
    broker = publisher(own_nats.url, stream, timeout=1.0, connect_timeout=1.0)
    relay = Relay(source, broker, select=SELECTED, backoff=0.05, max_backoff=0.2, watch_interval=0.005)
    consumer = JetStreamConsumer(own_nats.url, stream.name, "billing", downstream.inbox.receive,
                                 fetch_timeout=0.2, backoff=0.05, max_backoff=0.2, timeout=1.0, connect_timeout=1.0)
    with capture_logs() as logs:
        relay.start()
        consumer.start()
        downstream.engine.start()
        try:
            append(source, orders(0, 4))
            before, first = source.head(), len(selected_in(source))
            wait_until(lambda: downstream.inbox.received == first, what="the first orders")

            own_nats.stop()
            append(source, orders(4, 6))
            wait_until(lambda: relay.failures >= 3, what="the relay to fail")
            assert relay.position == before  # nothing acknowledged, nothing passed
            assert len(selected_in(source)) > first  # the events wait in the outbox
            assert downstream.inbox.received == first

            own_nats.start()
            wanted = selected_in(source)
            wait_until(lambda: relay.position == source.head(), what="the relay to deliver")
            wait_until(lambda: downstream.inbox.received == len(wanted), what="the consumer to catch up")
            downstream.engine.wait(downstream.storage.head(), timeout=10)
        finally:
            relay.stop()
            consumer.close()
            broker.close()
    assert [e.event_id for e in downstream.storage.events()] == [e.event_id for e in wanted]  # each exactly once
    assert consumer_app.read_counts(downstream.storage.write_path) == expected(wanted)
    events = [line["event"] for line in logs]
    assert "relay failed, will retry" in events
    assert "relay recovered" in events
    assert "consumer failed, will retry" in events
