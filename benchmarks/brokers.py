"""The brokers suite: the outbox relay and the consumer on NATS JetStream, RabbitMQ and Redis Streams, each beside
the broker's own client doing the same work directly, in one run.

Run by ``python -m benchmarks brokers`` (not part of the default run: it needs the servers, at the URLs of
``MEDIATOR_TEST_NATS``, ``MEDIATOR_TEST_RABBITMQ`` and ``MEDIATOR_TEST_REDIS``, else the machine's own). Per broker:

- ``relay`` (family ``publish``): ``Relay.catch_up()`` publishing ``events`` events from a SQLite log in batches
  of 100 (reading the log, publishing, waiting for every acknowledgement, committing the checkpoint). Reference
  ``raw``: the broker's client publishing the same messages (same bodies and headers, the same acknowledgement:
  JetStream PubAcks awaited, RabbitMQ publisher confirms, Redis pipelined ``XADD``), in the same batches.
  ``median_ns`` is the time per event; ``ratio`` is relay / raw.
- ``end_to_end_p50`` / ``_p99`` (family ``commit to read model``): a deposit command committed in the publishing
  service, then relayed (a running relay), consumed (a running consumer into an inbox) and projected by the
  consuming service's running engine; the time from the command's return to the balance showing in the
  consumer's read model, one command at a time. Reference ``raw``: the broker's client publishing one message and
  its own consumer receiving it (the broker's round trip, the floor of any delivery). ``ratio`` is this / raw.

Each figure is the median of ``rounds`` rounds; the brokers take turns within each round.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mediator.readmodels import NewEvent, StoredEvent, new_event_id
from mediator.readmodels.sqlite import SqliteStorage
from mediator.relay import Inbox, Relay, message_headers

from ._harness import FULL, QUICK, TINY, Result, Settings, percentile
from .sync import quiet_logging

NATS_URL = os.environ.get("MEDIATOR_TEST_NATS", "nats://127.0.0.1:4222")
RABBITMQ_URL = os.environ.get("MEDIATOR_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("MEDIATOR_TEST_REDIS", "redis://127.0.0.1:6379/0")
BROKERS = ("nats", "rabbitmq", "redis")
SIZES = {TINY: (200, 20, 1), QUICK: (3_000, 200, 3), FULL: (20_000, 1_000, 5)}
"""Events published, commands timed end to end, and rounds, per setting."""
BATCH = 100


def publisher(broker: str, topic: str) -> Any:
    """The framework's publisher to ``topic`` on ``broker`` (``nats``, ``rabbitmq``, ``redis``)."""
    if broker == "nats":
        from mediator.nats import JetStreamPublisher

        return JetStreamPublisher(NATS_URL, topic, f"{topic}.events")
    if broker == "rabbitmq":
        from mediator.rabbitmq import RabbitPublisher

        return RabbitPublisher(RABBITMQ_URL, topic)
    from mediator.redis_streams import StreamPublisher

    return StreamPublisher(REDIS_URL, topic)


def consumer(broker: str, topic: str, group: str, deliver: Callable[[Sequence[NewEvent]], object], *,
             wait: float = 0.05, redelivery: float = 30.0) -> Any:
    """The framework's consumer of ``topic`` in ``group`` on ``broker``, ready before anything is published:
    waiting ``wait`` s per fetch, a dead consumer's messages coming again after ``redelivery`` s (NATS's
    ``ack_wait``, Redis's ``claim_after``; RabbitMQ requeues them at once)."""
    if broker == "nats":
        from mediator.nats import JetStreamConsumer

        made = publisher(broker, topic)
        made.ensure_stream()  # a consumer binds to a stream that exists
        made.close()
        return JetStreamConsumer(NATS_URL, topic, group, deliver, fetch_timeout=wait, ack_wait=redelivery)
    if broker == "rabbitmq":
        from mediator.rabbitmq import RabbitConsumer

        rabbit = RabbitConsumer(RABBITMQ_URL, topic, f"{topic}.{group}", deliver, wait=wait)
        rabbit.declare()  # bound before anything is published to it
        return rabbit
    from mediator.redis_streams import StreamConsumer

    return StreamConsumer(REDIS_URL, topic, group, deliver, block=wait, claim_after=redelivery)


def clean(broker: str, topic: str, groups: Sequence[str] = ()) -> None:
    """Delete what ``topic`` and its ``groups`` left on ``broker``."""
    if broker == "nats":
        import nats
        import nats.js.errors

        async def drop() -> None:
            client = await nats.connect(NATS_URL)
            try:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await client.jetstream().delete_stream(topic)
            finally:
                await client.close()

        asyncio.run(drop())
    elif broker == "rabbitmq":
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        channel = connection.channel()
        for group in groups:
            channel.queue_delete(f"{topic}.{group}")
            channel.queue_delete(f"{topic}.{group}.dead")
        for exchange in (topic, f"{topic}.dead"):
            channel.exchange_delete(exchange)
        connection.close()
    else:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.delete(topic, f"{topic}.dead")
        client.close()


# -- the brokers' own clients, doing the relay's work directly ----------------------------------------------------


class _Raw:
    """The broker's own client: publish the same messages in batches, or one and receive it."""

    def __init__(self, broker: str, topic: str) -> None:
        self.broker, self.topic = broker, topic

    def publish_batches(self, events: list[StoredEvent]) -> None:
        if self.broker == "nats":
            asyncio.run(self._nats_publish(events))
        elif self.broker == "rabbitmq":
            import pika

            connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
            channel = connection.channel()
            channel.confirm_delivery()
            for event in events:
                channel.basic_publish(self.topic, event.type_name, event.data.encode(), pika.BasicProperties(
                    message_id=event.event_id, delivery_mode=2, headers=message_headers(event)), mandatory=True)
            connection.close()
        else:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for start in range(0, len(events), BATCH):
                pipe = client.pipeline(transaction=False)
                for event in events[start:start + BATCH]:
                    fields: dict[Any, Any] = {**message_headers(event), "data": event.data}
                    pipe.xadd(self.topic, fields)
                pipe.execute()
            client.close()

    async def _nats_publish(self, events: list[StoredEvent]) -> None:
        import nats

        client = await nats.connect(NATS_URL)
        js = client.jetstream()
        for start in range(0, len(events), BATCH):
            acks = [await js.publish_async(f"{self.topic}.events.{event.type_name}", event.data.encode(),
                                           headers=message_headers(event))
                    for event in events[start:start + BATCH]]
            await asyncio.gather(*acks)
        await client.close()

    def round_trips(self, count: int) -> list[float]:
        """Seconds from publishing one message to receiving it, ``count`` times, with the broker's own client."""
        if self.broker == "nats":
            return asyncio.run(self._nats_round_trips(count))
        if self.broker == "rabbitmq":
            import pika

            connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
            channel = connection.channel()
            queue = str(channel.queue_declare("", exclusive=True).method.queue)
            channel.queue_bind(queue, self.topic, routing_key="raw.#")
            spent = []
            for _ in range(count):
                started = time.perf_counter()
                channel.basic_publish(self.topic, "raw.ping", b"{}")
                for method, _props, _body in channel.consume(queue, inactivity_timeout=5):
                    assert method is not None
                    assert method.delivery_tag is not None
                    channel.basic_ack(method.delivery_tag)
                    break
                spent.append(time.perf_counter() - started)
            channel.cancel()
            connection.close()
            return spent
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        stream = f"{self.topic}.raw"
        client.xgroup_create(stream, "raw", id="$", mkstream=True)
        spent = []
        for _ in range(count):
            started = time.perf_counter()
            client.xadd(stream, {"data": "{}"})
            answer: Any = client.xreadgroup("raw", "me", {stream: ">"}, count=1, block=5_000)
            client.xack(stream, "raw", answer[0][1][0][0])
            spent.append(time.perf_counter() - started)
        client.delete(stream)
        client.close()
        return spent

    async def _nats_round_trips(self, count: int) -> list[float]:
        import nats

        client = await nats.connect(NATS_URL)
        js = client.jetstream()
        subscription = await js.pull_subscribe(f"{self.topic}.events.raw", durable="raw", stream=self.topic)
        spent = []
        for _ in range(count):
            started = time.perf_counter()
            await js.publish(f"{self.topic}.events.raw", b"{}")
            (message,) = await subscription.fetch(1, timeout=5)
            await message.ack()
            spent.append(time.perf_counter() - started)
        await client.close()
        return spent


# -- the framework's side -------------------------------------------------------------------------------------------


def _log(path: Path, events: int) -> tuple[SqliteStorage, list[StoredEvent]]:
    storage = SqliteStorage(path)
    now = time.time()
    session = storage.begin()
    session.append([NewEvent(new_event_id(), "bench.deposited", 1, f'{{"account": "a{n % 50}", "amount": 1}}',
                             f"a{n % 50}", now, "{}") for n in range(events)])
    session.commit()
    return storage, list(storage.events())


def _publish(broker: str, events: int, folder: Path) -> tuple[float, float]:
    """Seconds for the relay, and for the raw client, to publish ``events`` (each to a topic of its own)."""
    mine, theirs = f"bench-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}"
    storage, stored = _log(folder / f"{mine}.db", events)
    try:
        for topic in (mine, theirs):  # a queue bound for the messages (RabbitMQ's mandatory publish needs one)
            consumer(broker, topic, "bench", lambda batch: None).close()
        relay = Relay(storage, publisher(broker, mine), batch=BATCH, leased=False)
        started = time.perf_counter()
        if relay.catch_up() != events:
            raise RuntimeError(f"{broker}: the relay did not publish every event")
        ours = time.perf_counter() - started
        relay.publisher.close()
        raw = _Raw(broker, theirs)
        started = time.perf_counter()
        raw.publish_batches(stored)
        return ours, time.perf_counter() - started
    finally:
        storage.close()
        clean(broker, mine, ["bench"])
        clean(broker, theirs, ["bench"])


def _end_to_end(broker: str, count: int, folder: Path) -> tuple[list[float], list[float]]:
    """Seconds from a command's return to its effect in the consumer's read model, ``count`` times; and the raw
    client's round trips, as many."""
    from mediator.readmodels import Delivery

    from .live import Counts, Note, wire

    topic = f"bench-{uuid.uuid4().hex[:8]}"
    source, send = wire(folder / f"{topic}-source.db", Delivery.BACKGROUND)
    target, _ = wire(folder / f"{topic}-target.db", Delivery.BACKGROUND)
    taking = consumer(broker, topic, "bench", Inbox(target.storage).receive)
    relay = Relay(source.storage, publisher(broker, topic), batch=BATCH, leased=False, watch_interval=0.0005)
    spent: list[float] = []
    try:
        target.start()
        taking.start()
        relay.start()
        for n in range(1, count + 1):
            send.send(Note(key="k"))
            started = time.perf_counter()
            relay.wake()
            while (row := target.get(Counts.counts, "k")) is None or row.count < n:
                time.sleep(0.0002)
            spent.append(time.perf_counter() - started)
        raw = _Raw(broker, topic).round_trips(count)
    finally:
        relay.stop()
        taking.close()
        relay.publisher.close()
        target.stop()
        source.storage.close()
        target.storage.close()
        clean(broker, topic, ["bench"])
    return spent, raw


def run(settings: Settings, *, with_peers: bool = True, progress: Callable[[str], None] = print) -> list[Result]:
    events, commands, rounds = SIZES.get(settings, SIZES[QUICK])
    publish: dict[str, list[tuple[float, float]]] = {broker: [] for broker in BROKERS}
    latency: dict[str, list[tuple[list[float], list[float]]]] = {broker: [] for broker in BROKERS}
    with quiet_logging(), tempfile.TemporaryDirectory(prefix="mediator-brokers-") as tmp:
        for round_ in range(rounds):
            for broker in BROKERS:
                progress(f"brokers: round {round_ + 1} of {rounds}, {broker}: publishing {events:,} events")
                publish[broker].append(_publish(broker, events, Path(tmp)))
                progress(f"brokers: round {round_ + 1} of {rounds}, {broker}: {commands} commands end to end")
                latency[broker].append(_end_to_end(broker, commands, Path(tmp)))
    results = []
    for broker in BROKERS:
        ours = statistics.median(o for o, _ in publish[broker]) / events * 1e9
        raw = statistics.median(r for _, r in publish[broker]) / events * 1e9
        results += [Result("brokers", "relay", "publish", broker, ours, ours / raw),
                    Result("brokers", "relay", "publish", f"{broker} raw", raw, 1.0)]
        for q, fraction in ((50, 0.5), (99, 0.99)):
            mine = statistics.median(percentile(spent, fraction) for spent, _ in latency[broker]) * 1e9
            floor = statistics.median(percentile(raw_spent, fraction) for _, raw_spent in latency[broker]) * 1e9
            results += [Result("brokers", f"end_to_end_p{q}", "commit to read model", broker, mine, mine / floor),
                        Result("brokers", f"end_to_end_p{q}", "commit to read model", f"{broker} raw", floor, 1.0)]
    return results


def summary(results: list[Result]) -> str:
    by = {(r.scenario, r.implementation): r for r in results}
    lines = ["| broker | relay publish | raw client | relay vs raw | end to end p50 (raw round trip) | "
             "p50 vs raw | end to end p99 (raw) | p99 vs raw |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for broker in BROKERS:
        relay, raw = by[("relay", broker)], by[("relay", f"{broker} raw")]
        p50, p99 = by[("end_to_end_p50", broker)], by[("end_to_end_p99", broker)]
        raw50, raw99 = by[("end_to_end_p50", f"{broker} raw")], by[("end_to_end_p99", f"{broker} raw")]
        lines.append(f"| {broker} | {1e9 / relay.median_ns:,.0f}/s | {1e9 / raw.median_ns:,.0f}/s | "
                     f"{relay.ratio:.2f}x the time | {p50.median_ns / 1e6:.2f} ms ({raw50.median_ns / 1e6:.2f} ms) | "
                     f"{p50.ratio:.1f}x | {p99.median_ns / 1e6:.2f} ms ({raw99.median_ns / 1e6:.2f} ms) | "
                     f"{p99.ratio:.1f}x |")
    return "\n".join(lines)
