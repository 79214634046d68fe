"""The broker contract (:mod:`mediator.broker_contract`) against the real servers on the machine: NATS JetStream,
RabbitMQ and Redis Streams. Each skips where its server is absent (fails in CI)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence

from mediator.broker_contract import BrokerContract
from mediator.readmodels import NewEvent
from mediator.relay import Consumer, Publisher
from tests import redis_server
from tests.conftest import skip_or_fail

from .conftest import NATS_URL, delete_stream, reachable

RABBITMQ_URL = os.environ.get("MEDIATOR_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")


class TestJetStream(BrokerContract):
    redelivery_after = 1.0  # the durable consumer's ack_wait, set short here

    def setup_method(self, method: object = None) -> None:
        if not reachable(NATS_URL):
            skip_or_fail(f"NATS is not reachable at {NATS_URL!r}")
        super().setup_method(method)

    def teardown_method(self, method: object = None) -> None:
        super().teardown_method(method)
        asyncio.run(delete_stream(NATS_URL, self.topic))

    def create_publisher(self, topic: str) -> Publisher:
        from mediator.nats import JetStreamPublisher

        return JetStreamPublisher(NATS_URL, topic, f"{topic}.events")

    def create_consumer(self, topic: str, group: str, deliver: Callable[[Sequence[NewEvent]], object]) -> Consumer:
        from mediator.nats import JetStreamConsumer, JetStreamPublisher

        stream = JetStreamPublisher(NATS_URL, topic, f"{topic}.events")
        stream.ensure_stream()  # a consumer binds to a stream that exists
        stream.close()
        return JetStreamConsumer(NATS_URL, topic, group, deliver, ack_wait=self.redelivery_after)


class TestRabbitMQ(BrokerContract):
    redelivery_after = 0.0  # a closed channel's unacknowledged messages are requeued at once

    def setup_method(self, method: object = None) -> None:
        if not reachable(RABBITMQ_URL.replace("amqp://guest:guest@", "amqp://")):
            skip_or_fail(f"RabbitMQ is not reachable at {RABBITMQ_URL!r}")
        super().setup_method(method)
        self.queues: list[str] = []

    def teardown_method(self, method: object = None) -> None:
        super().teardown_method(method)
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        channel = connection.channel()
        for queue in self.queues:
            channel.queue_delete(queue)
            channel.queue_delete(f"{queue}.dead")
        channel.exchange_delete(self.topic)
        channel.exchange_delete(f"{self.topic}.dead")
        connection.close()

    def create_publisher(self, topic: str) -> Publisher:
        from mediator.rabbitmq import RabbitPublisher

        return RabbitPublisher(RABBITMQ_URL, topic)

    def create_consumer(self, topic: str, group: str, deliver: Callable[[Sequence[NewEvent]], object]) -> Consumer:
        from mediator.rabbitmq import RabbitConsumer

        queue = f"{topic}.{group}"
        self.queues.append(queue)
        consumer = RabbitConsumer(RABBITMQ_URL, topic, queue, deliver)
        consumer.declare()  # bound before anything is published to it
        return consumer


class TestRedisStreams(BrokerContract):
    redelivery_after = 0.5  # claim_after, set short here

    def setup_method(self, method: object = None) -> None:
        redis_server.require()
        super().setup_method(method)

    def teardown_method(self, method: object = None) -> None:
        super().teardown_method(method)
        import redis

        client = redis.Redis.from_url(redis_server.URL)
        client.delete(self.topic, f"{self.topic}.dead")
        client.close()

    def create_publisher(self, topic: str) -> Publisher:
        from mediator.redis_streams import StreamPublisher

        return StreamPublisher(redis_server.URL, topic)

    def create_consumer(self, topic: str, group: str, deliver: Callable[[Sequence[NewEvent]], object]) -> Consumer:
        from mediator.redis_streams import StreamConsumer

        return StreamConsumer(redis_server.URL, topic, group, deliver, claim_after=self.redelivery_after)
