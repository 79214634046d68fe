"""A relay and a consumer on any of the brokers, run as processes to be SIGKILLed by tests/broker/test_kills.py.

``python -m tests.broker.kill_app relay BROKER TOPIC SOURCE_DB`` relays the bank's deposits from the SQLite file
``SOURCE_DB`` to ``BROKER`` (``nats``, ``rabbitmq``, ``redis``) until killed; ``python -m tests.broker.kill_app
consume BROKER TOPIC CONSUMER_DB`` takes them into ``CONSUMER_DB`` through an inbox and projects the balances there,
until killed. Each prints ``ready`` once running.
"""

from __future__ import annotations

import sys
import time

from benchmarks.brokers import consumer, publisher
from mediator.readmodels.sqlite import SqliteStorage
from mediator.relay import Inbox, Relay
from tests.readmodels.bank import make_bank

REDELIVERY = 1.0
"""Seconds before a killed consumer's unacknowledged messages come again (ack_wait, claim_after)."""


def relay(broker: str, topic: str, source: str) -> None:
    storage = SqliteStorage(source)
    running = Relay(storage, publisher(broker, topic), batch=20, watch_interval=0.005, backoff=0.05, max_backoff=0.5)
    running.start()
    print("ready", flush=True)
    while True:
        time.sleep(1)


def consume(broker: str, topic: str, db: str) -> None:
    bank = make_bank(SqliteStorage(db), poll_interval=0.05)
    taking = consumer(broker, topic, "downstream", Inbox(bank.storage).receive, wait=0.2, redelivery=REDELIVERY)
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
