"""The broker contract: the cases every broker adapter passes against a real server, shipped for third parties.

Subclass :class:`BrokerContract` once per broker, name the subclass ``Test...`` so pytest collects it, and make a
publisher and a consumer on a topic of the case's own (a fresh stream, exchange or queue name each case)::

    from mediator.broker_contract import BrokerContract

    class TestMyBroker(BrokerContract):
        redelivery_after = 1.0   # how long an unacknowledged message of a dead consumer takes to come again

        def create_publisher(self, topic):
            return MyPublisher(URL, topic)

        def create_consumer(self, topic, group, deliver):
            return MyConsumer(URL, topic, group, deliver)

NATS JetStream, RabbitMQ and Redis Streams run exactly these cases. Plain classes with ``assert``; nothing here
needs pytest.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .readmodels import NewEvent, StoredEvent
from .readmodels.sqlite import SqliteStorage
from .relay import Consumer, Inbox, Publisher


def stored(n: int, key: str | None = "k", type_name: str = "contract.happened") -> StoredEvent:
    """Event ``n`` as a relay reads it from the log: id ``e<n>``, key ``key``, data ``{"n": n}``."""
    return StoredEvent(n, f"e{n}-{uuid.uuid4().hex[:8]}", type_name, 2, f'{{"n": {n}}}', key, 1_000.0 + n,
                       '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}')


def as_new(event: StoredEvent) -> NewEvent:
    """What a consumer should hand its inbox for ``event``: everything but the position."""
    return NewEvent(event.event_id, event.type_name, event.version, event.data, event.key, event.recorded_at,
                    event.meta)


class _Collector:
    """A ``deliver`` that keeps every batch; ``fail`` makes the next calls raise (a storage outage)."""

    def __init__(self) -> None:
        self.batches: list[list[NewEvent]] = []
        self.fail = False

    def __call__(self, events: Sequence[NewEvent]) -> None:
        if self.fail:
            raise ConnectionError("the consumer's database is down")
        self.batches.append(list(events))

    @property
    def events(self) -> list[NewEvent]:
        return [event for batch in self.batches for event in batch]


class BrokerContract:
    """The cases every broker adapter passes: publishing a batch with each event's id, consuming with explicit
    acknowledgement, redelivery after a consumer dies, de-duplication by the consumer's inbox, and per-key order."""

    redelivery_after: float = 0.0
    """Seconds before messages a dead consumer took come to another consumer of its group (0: at once)."""
    _opened: list[Any]

    def create_publisher(self, topic: str) -> Publisher:
        """A publisher to ``topic`` (a stream, exchange or subject prefix of this case alone)."""
        raise NotImplementedError("Subclass BrokerContract and make your publisher in create_publisher().")

    def create_consumer(self, topic: str, group: str, deliver: Callable[[Sequence[NewEvent]], object]) -> Consumer:
        """A consumer of ``topic`` in ``group`` (a durable consumer, queue or consumer group), ready to receive
        what is published after this returns and everything published before it since the group was made."""
        raise NotImplementedError("Subclass BrokerContract and make your consumer in create_consumer().")

    def setup_method(self, method: object = None) -> None:
        self._opened = []
        self.topic = f"contract-{uuid.uuid4().hex[:10]}"

    def teardown_method(self, method: object = None) -> None:
        for opened in reversed(self._opened):
            opened.close()

    def publisher(self) -> Publisher:
        made = self.create_publisher(self.topic)
        self._opened.append(made)
        return made

    def consumer(self, group: str, deliver: Callable[[Sequence[NewEvent]], object]) -> Consumer:
        made = self.create_consumer(self.topic, group, deliver)
        self._opened.append(made)
        return made

    def drain(self, consumer: Consumer, collector: _Collector, count: int, timeout: float = 10.0) -> None:
        """Run ``consumer`` until ``collector`` holds ``count`` events (or fail after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while len(collector.events) < count:
            assert time.monotonic() < deadline, f"only {len(collector.events)} of {count} events came"
            consumer.run_once(0.2)

    # -- the cases -------------------------------------------------------------------------------------------

    def test_a_published_batch_arrives_in_order_with_everything_its_events_carry(self) -> None:
        collector = _Collector()
        consumer = self.consumer("g", collector)
        events = [stored(1), stored(2, key=None), stored(3, key="a key/with ü"), stored(4, type_name="contract.other")]
        self.publisher().publish(events)
        self.drain(consumer, collector, 4)
        assert collector.events == [as_new(event) for event in events]

    def test_a_batch_the_consumer_fails_to_deliver_comes_again_first(self) -> None:
        collector = _Collector()
        consumer = self.consumer("g", collector)
        publisher = self.publisher()
        first = [stored(n) for n in range(1, 4)]
        publisher.publish(first)
        collector.fail = True
        deadline = time.monotonic() + 10
        while True:
            try:
                consumer.run_once(0.2)
            except ConnectionError:
                break
            assert time.monotonic() < deadline, "nothing came"
        publisher.publish([stored(9)])
        collector.fail = False
        self.drain(consumer, collector, 4)
        assert [event.event_id for event in collector.events] == [e.event_id for e in first] + [
            collector.events[3].event_id]
        assert collector.events[:3] == [as_new(event) for event in first]

    def test_messages_a_dead_consumer_took_come_to_another_of_its_group(self) -> None:
        publisher = self.publisher()
        dying, survivor = _Collector(), _Collector()
        first = self.consumer("g", dying)
        events = [stored(n, key=f"k{n % 2}") for n in range(1, 6)]
        publisher.publish(events)
        dying.fail = True
        deadline = time.monotonic() + 10
        while True:  # it takes the batch and fails to deliver it: it holds it, unacknowledged
            try:
                first.run_once(0.2)
            except ConnectionError:
                break
            assert time.monotonic() < deadline, "nothing came"
        first.close()  # dies holding them
        second = self.consumer("g", survivor)
        time.sleep(self.redelivery_after)
        self.drain(second, survivor, 5, timeout=10 + self.redelivery_after)
        assert sorted(event.event_id for event in survivor.events) == sorted(event.event_id for event in events)

    def test_a_group_resumes_after_what_it_acknowledged(self) -> None:
        publisher = self.publisher()
        collector = _Collector()
        consumer = self.consumer("g", collector)
        publisher.publish([stored(1), stored(2)])
        self.drain(consumer, collector, 2)
        consumer.close()
        later = _Collector()
        again = self.consumer("g", later)
        publisher.publish([stored(3)])
        self.drain(again, later, 1)
        time.sleep(max(self.redelivery_after, 0.2))
        again.run_once(0.2)
        assert [event.data for event in later.events] == ['{"n": 3}']

    def test_each_group_gets_every_event(self) -> None:
        one, two = _Collector(), _Collector()
        first, second = self.consumer("one", one), self.consumer("two", two)
        events = [stored(n) for n in range(1, 4)]
        self.publisher().publish(events)
        self.drain(first, one, 3)
        self.drain(second, two, 3)
        assert one.events == two.events == [as_new(event) for event in events]

    def test_events_of_a_key_keep_their_order_across_batches(self) -> None:
        collector = _Collector()
        consumer = self.consumer("g", collector)
        publisher = self.publisher()
        events = [stored(n, key=f"k{n % 3}") for n in range(1, 61)]
        for start in range(0, 60, 7):
            publisher.publish(events[start:start + 7])
        self.drain(consumer, collector, 60)
        for key in ("k0", "k1", "k2"):
            got = [event.event_id for event in collector.events if event.key == key]
            assert got == [event.event_id for event in events if event.key == key]

    def test_an_event_published_twice_is_appended_once_by_the_inbox(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            storage = SqliteStorage(Path(folder) / "consumer.db")
            try:
                inbox = Inbox(storage)
                consumer = self.consumer("g", inbox.receive)
                publisher = self.publisher()
                events = [stored(1), stored(2)]
                publisher.publish(events)
                publisher.publish(events[1:])  # a relay that crashed before its checkpoint publishes it again
                deadline = time.monotonic() + 10
                while inbox.received < 2:
                    assert time.monotonic() < deadline, "not everything came"
                    consumer.run_once(0.2)
                for _ in range(3):  # the repeat, unless the broker dropped it itself (JetStream's window does)
                    consumer.run_once(0.2)
                assert inbox.received == 2
                assert inbox.duplicates <= 1
                assert [event.event_id for event in storage.events()] == [event.event_id for event in events]
            finally:
                storage.close()
