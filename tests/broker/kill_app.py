"""A relay and a consumer on any of the brokers, run as processes to be SIGKILLed by tests/broker/test_kills.py.

``python -m tests.broker.kill_app relay BROKER TOPIC SOURCE_DB`` relays the bank's deposits from the SQLite file
``SOURCE_DB`` to ``BROKER`` (``nats``, ``rabbitmq``, ``redis``) until killed; ``python -m tests.broker.kill_app
consume BROKER TOPIC CONSUMER_DB`` takes them into ``CONSUMER_DB`` through an inbox and projects the balances there,
until killed. Each prints ``ready`` once running.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence

from mediator.readmodels import NewEvent
from mediator.readmodels.sqlite import SqliteStorage
from mediator.relay import Consumer, Inbox, Publisher, Relay
from tests import redis_server
from tests.readmodels.bank import make_bank

from .conftest import NATS_URL

RABBITMQ_URL = os.environ.get("MEDIATOR_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDELIVERY = 1.0
"""Seconds before a killed consumer's unacknowledged messages come again (ack_wait, claim_after)."""


def publisher(broker: str, topic: str) -> Publisher:
    if broker == "nats":
        from mediator.nats import JetStreamPublisher

        return JetStreamPublisher(NATS_URL, topic, f"{topic}.events")
    if broker == "rabbitmq":
        from mediator.rabbitmq import RabbitPublisher

        return RabbitPublisher(RABBITMQ_URL, topic)
    from mediator.redis_streams import StreamPublisher

    return StreamPublisher(redis_server.URL, topic)


def consumer(broker: str, topic: str, deliver: Callable[[Sequence[NewEvent]], object]) -> Consumer:
    if broker == "nats":
        from mediator.nats import JetStreamConsumer

        made = publisher(broker, topic)
        made.ensure_stream()  # type: ignore[attr-defined]
        made.close()
        return JetStreamConsumer(NATS_URL, topic, "downstream", deliver, ack_wait=REDELIVERY, fetch_timeout=0.2)
    if broker == "rabbitmq":
        from mediator.rabbitmq import RabbitConsumer

        rabbit = RabbitConsumer(RABBITMQ_URL, topic, f"{topic}.downstream", deliver, wait=0.2)
        rabbit.declare()
        return rabbit
    from mediator.redis_streams import StreamConsumer

    return StreamConsumer(redis_server.URL, topic, "downstream", deliver, block=0.2, claim_after=REDELIVERY)


def relay(broker: str, topic: str, source: str) -> None:
    storage = SqliteStorage(source)
    running = Relay(storage, publisher(broker, topic), batch=20, watch_interval=0.005, backoff=0.05, max_backoff=0.5)
    running.start()
    print("ready", flush=True)
    while True:
        time.sleep(1)


def consume(broker: str, topic: str, db: str) -> None:
    bank = make_bank(SqliteStorage(db), poll_interval=0.05)
    taking = consumer(broker, topic, Inbox(bank.storage).receive)
    bank.engine.start()
    taking.start()
    print("ready", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says only "ready"
    command, broker_name, topic_name, path = sys.argv[1:5]
    (relay if command == "relay" else consume)(broker_name, topic_name, path)
