"""A message no relay published (its headers missing) is put aside by each broker's consumer, never delivered, and
the messages around it are: RabbitMQ dead-letters it to the queue's dead-letter queue, Redis Streams moves it to
``<stream>.dead``, JetStream terminates it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from benchmarks.brokers import NATS_URL, RABBITMQ_URL, REDIS_URL, clean, consumer, publisher
from mediator.broker_contract import stored
from mediator.readmodels import NewEvent

from .test_kills import require


def publish_foreign(broker: str, topic: str) -> None:
    """A message on ``topic`` without the relay's headers, by the broker's own client."""
    if broker == "rabbitmq":
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        connection.channel().basic_publish(topic, "someone.else", b"not an event")
        connection.close()
    elif broker == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.xadd(topic, {"note": b"\xff\xfe not even UTF-8"})
        client.close()
    else:
        import nats

        async def send() -> None:
            client = await nats.connect(NATS_URL)
            await client.jetstream().publish(f"{topic}.events.someone", b"not an event")
            await client.close()

        asyncio.run(send())


def put_aside(broker: str, topic: str) -> int:
    """How many messages the broker holds aside for ``topic``'s group ``g`` (RabbitMQ, Redis); -1 for NATS."""
    if broker == "rabbitmq":
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        count = connection.channel().queue_declare(f"{topic}.g.dead", passive=True).method.message_count
        connection.close()
        return int(count or 0)
    if broker == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        count = client.xlen(f"{topic}.dead")
        client.close()
        return int(count)
    return -1


@pytest.mark.parametrize("broker", ["nats", "rabbitmq", "redis"])
def test_a_message_no_relay_published_is_put_aside_and_the_rest_delivered(broker: str) -> None:
    require(broker)
    topic = f"poison-{uuid.uuid4().hex[:10]}"
    received: list[NewEvent] = []

    def deliver(events: Sequence[NewEvent]) -> None:
        received.extend(events)

    taking = consumer(broker, topic, "g", deliver, wait=0.2)
    sending = publisher(broker, topic)
    try:
        first, last = stored(1), stored(2)
        sending.publish([first])
        publish_foreign(broker, topic)
        sending.publish([last])
        handled = 0
        for _ in range(50):
            handled += taking.run_once(0.2)
            if handled >= 3:
                break
        assert handled == 3  # all three taken and settled
        assert [event.event_id for event in received] == [first.event_id, last.event_id]
        if broker != "nats":
            assert put_aside(broker, topic) == 1
        for _ in range(3):
            assert taking.run_once(0.2) == 0  # nothing comes again
    finally:
        taking.close()
        sending.close()
        clean(broker, topic, ["g"])
