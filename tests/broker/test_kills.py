"""Per broker, the relay and the consumer are SIGKILLed at random while deposits flow, and every deposit still
reaches the consumer's read model exactly once (``MEDIATOR_BROKER_KILLS`` kills per broker; CI runs more)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.brokers import RABBITMQ_URL, clean
from mediator.readmodels.sqlite import SqliteStorage
from tests import redis_server
from tests.conftest import skip_or_fail
from tests.readmodels.bank import Deposit, make_bank

from .conftest import NATS_URL, reachable
from .kill_app import REDELIVERY

KILLS = int(os.environ.get("MEDIATOR_BROKER_KILLS", "4"))
ROOT = Path(__file__).resolve().parents[2]


def require(broker: str) -> None:
    if broker == "nats" and not reachable(NATS_URL):
        skip_or_fail(f"NATS is not reachable at {NATS_URL!r}")
    if broker == "rabbitmq" and not reachable(RABBITMQ_URL.replace("amqp://guest:guest@", "amqp://")):
        skip_or_fail(f"RabbitMQ is not reachable at {RABBITMQ_URL!r}")
    if broker == "redis":
        redis_server.require()


def spawn(*args: str) -> subprocess.Popen[str]:
    """Start ``kill_app`` with ``args`` (its log appended to ``kills.log`` beside the database it is given)."""
    with open(Path(args[-1]).with_name("kills.log"), "a") as log:
        process = subprocess.Popen([sys.executable, "-m", "tests.broker.kill_app", *args], cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.stdout is not None
    process.stdout.close()


@pytest.mark.parametrize("broker", ["nats", "rabbitmq", "redis"])
def test_relay_and_consumer_killed_at_random_deliver_each_event_exactly_once(broker: str, tmp_path: Path) -> None:
    require(broker)
    topic = f"kills-{uuid.uuid4().hex[:10]}"
    source_db, consumer_db = tmp_path / "source.db", tmp_path / "consumer.db"
    source = make_bank(SqliteStorage(source_db))
    pick = random.Random(os.environ.get("MEDIATOR_KILL_SEED", topic))
    expected: Counter[str] = Counter()
    consumer = spawn("consume", broker, topic, str(consumer_db))  # declares its queue before anything is relayed
    relay = spawn("relay", broker, topic, str(source_db))
    try:
        for _round in range(KILLS):
            for _ in range(pick.randrange(20, 60)):
                account = f"acct-{pick.randrange(7)}"
                source.mediator.send(Deposit(account=account, amount=1))
                expected[account] += 1
            time.sleep(pick.uniform(0.0, 0.3))  # somewhere mid-flight
            if pick.random() < 0.5:
                kill(relay)
                relay = spawn("relay", broker, topic, str(source_db))
            else:
                kill(consumer)
                consumer = spawn("consume", broker, topic, str(consumer_db))
        downstream = make_bank(SqliteStorage(consumer_db))
        deadline = time.monotonic() + 30 + 2 * REDELIVERY
        while downstream.balances() != dict(expected):
            assert time.monotonic() < deadline, f"{downstream.balances()} != {dict(expected)}"
            time.sleep(0.1)
        # Exactly once: each event once in the consumer's log, and nothing more comes.
        time.sleep(2 * REDELIVERY)
        assert downstream.balances() == dict(expected)
        ids = [event.event_id for event in downstream.storage.events()]
        assert len(ids) == len(set(ids)) == sum(expected.values())
        downstream.storage.close()
    finally:
        kill(relay)
        kill(consumer)
        source.storage.close()
        clean(broker, topic, ["downstream"])
