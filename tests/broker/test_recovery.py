"""Consumers that lose what the broker held for them recover by themselves: a Redis group that vanished (a flush,
a restart without persistence) is made again; a RabbitMQ batch held while its channel closed is fetched again
rather than acknowledged on another channel (which the broker refuses)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest

from benchmarks.brokers import REDIS_URL, clean, consumer, publisher
from mediator.broker_contract import stored
from mediator.readmodels import NewEvent

from .test_kills import require


def test_a_redis_group_that_vanished_is_made_again() -> None:
    require("redis")
    import redis

    topic = f"recover-{uuid.uuid4().hex[:10]}"
    received: list[NewEvent] = []

    def deliver(events: Sequence[NewEvent]) -> None:
        received.extend(events)

    taking = consumer("redis", topic, "g", deliver, wait=0.2)
    sending = publisher("redis", topic)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        sending.publish([stored(1)])
        assert taking.run_once(0.2) == 1
        client.delete(topic)  # the stream and its group are gone
        sending.publish([stored(2)])  # a new stream, without the group
        with pytest.raises(ConnectionError, match="NOGROUP"):
            taking.run_once(0.2)
        for _ in range(10):
            if taking.run_once(0.2):
                break
        assert [event.data for event in received] == ['{"n": 1}', '{"n": 2}']
    finally:
        client.close()
        taking.close()
        sending.close()
        clean("redis", topic, ["g"])


def test_a_rabbitmq_batch_held_while_its_channel_closed_comes_again_whole() -> None:
    require("rabbitmq")
    topic = f"recover-{uuid.uuid4().hex[:10]}"
    received: list[list[NewEvent]] = []
    failing = [True]

    def deliver(events: Sequence[NewEvent]) -> None:
        if failing[0]:
            raise ConnectionError("the consumer's database is down")
        received.append(list(events))

    taking = consumer("rabbitmq", topic, "g", deliver, wait=0.2)
    sending = publisher("rabbitmq", topic)
    try:
        events = [stored(1), stored(2)]
        sending.publish(events)
        for _ in range(10):  # it takes the batch and fails to deliver it: it holds it, unacknowledged
            try:
                taking.run_once(0.2)
            except ConnectionError:
                break
        else:
            pytest.fail("the batch never came")
        taking._connection.close()  # the connection drops while the batch is held
        failing[0] = False
        handled = 0
        for _ in range(20):
            handled += taking.run_once(0.2)
            if handled >= 2:
                break
        assert [event.event_id for batch in received for event in batch] == [e.event_id for e in events]
        for _ in range(3):
            assert taking.run_once(0.2) == 0  # acknowledged: nothing comes a second time
    finally:
        taking.close()
        sending.close()
        clean("rabbitmq", topic, ["g"])
