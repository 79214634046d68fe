"""The broker contract (:mod:`mediator.broker_contract`) against the real servers on the machine: NATS JetStream,
RabbitMQ and Redis Streams. Each skips where its server is absent (fails in CI)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from benchmarks.brokers import clean, consumer, publisher
from mediator.broker_contract import BrokerContract
from mediator.readmodels import NewEvent
from mediator.relay import Consumer, Publisher

from .test_kills import require


class _OnBroker(BrokerContract):
    broker: str

    def setup_method(self, method: object = None) -> None:
        require(self.broker)
        super().setup_method(method)
        self.groups: list[str] = []

    def teardown_method(self, method: object = None) -> None:
        super().teardown_method(method)
        clean(self.broker, self.topic, self.groups)

    def create_publisher(self, topic: str) -> Publisher:
        return cast(Publisher, publisher(self.broker, topic))

    def create_consumer(self, topic: str, group: str, deliver: Callable[[Sequence[NewEvent]], object]) -> Consumer:
        self.groups.append(group)
        return cast(Consumer, consumer(self.broker, topic, group, deliver, wait=1.0,
                                       redelivery=self.redelivery_after or 30.0))


class TestJetStream(_OnBroker):
    broker = "nats"
    redelivery_after = 1.0  # the durable consumer's ack_wait, set short here


class TestRabbitMQ(_OnBroker):
    broker = "rabbitmq"
    redelivery_after = 0.0  # a closed channel's unacknowledged messages are requeued at once


class TestRedisStreams(_OnBroker):
    broker = "redis"
    redelivery_after = 0.5  # claim_after, set short here
