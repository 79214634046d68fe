"""Events to other services through RabbitMQ: a publisher for the outbox relay, a queue consumer.

Needs the ``rabbitmq`` extra (pika). :class:`RabbitPublisher` is the :class:`mediator.relay.Publisher` a
:class:`~mediator.relay.Relay` publishes through; :class:`RabbitConsumer` is a :class:`mediator.relay.Consumer`,
the receiving service's end, handing batches to an :class:`~mediator.relay.Inbox`.

**Messages.** One persistent message per event (``delivery_mode`` 2, ``message_id`` the event id), published to
the durable *topic* exchange ``exchange`` with the event's type name as its routing key, so a consumer binds its
queue to the types it wants (``shop.#``, ``shop.OrderPlaced``). The body is the event's stored JSON; the headers
are those of :func:`mediator.relay.message_headers`. The channel is in confirm mode: a batch is acknowledged
when the broker has confirmed every message (published ``mandatory``, so a message no queue is bound for is
returned and counts as not published).

**Order and delivery.** One queue keeps the order messages were published in, which is the publishing service's
log order, so every key's events come in order to a single consumer of a queue. Each message is delivered at
least once: messages a consumer took and did not acknowledge (its channel closed, its process died) are put back
at once, marked redelivered, for it or another consumer of the queue; they may then come after later ones, and
the inbox drops any it committed already. RabbitMQ does not drop a repeated publish (a relay that crashed after
publishing publishes again): the inbox does, by event id. A message no relay published (a header missing) is
rejected without requeueing, and the queue's dead-letter exchange (``<exchange>.dead``, a fanout) routes it to
the queue ``<queue>.dead``.

Each client holds one blocking connection, used by one thread at a time (a lock), so the relay and the consumer
stay synchronous like the rest of the engine. A failed connection is dropped and a new one made at the next call:
callers retry with their own backoff.
"""

from __future__ import annotations

import contextlib
import threading
import typing
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from ._errors import ConsumeError, MissingExtraError, PublishError
from ._messages import qualname
from .readmodels import NewEvent, StoredEvent
from .relay import RunningConsumer, event_from, message_headers

try:
    import pika
    import pika.exceptions
    from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
    from pika.exchange_type import ExchangeType
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised by the wheel test
    raise MissingExtraError(__name__, "rabbitmq", _missing.name) from _missing

log = structlog.get_logger("mediator.rabbitmq")

# types-pika declares the members of pika's ExchangeType enum as strings: cast them back to the enum it asks for.
_TOPIC = typing.cast(ExchangeType, ExchangeType.topic)
_FANOUT = typing.cast(ExchangeType, ExchangeType.fanout)


def _connect(url: str, timeout: float) -> BlockingConnection:
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = timeout
    parameters.blocked_connection_timeout = timeout
    parameters.connection_attempts = 1
    return BlockingConnection(parameters)


def _declare_exchange(channel: BlockingChannel, exchange: str) -> None:
    channel.exchange_declare(exchange, exchange_type=_TOPIC, durable=True)


class RabbitPublisher:
    """Publish events to the topic exchange ``exchange`` at ``url`` (``amqp://guest:guest@host:5672/%2F``)."""

    messaging_system = "rabbitmq"
    """``messaging.system`` in OpenTelemetry (see :class:`mediator.otel.TracedPublisher`)."""

    def __init__(self, url: str, exchange: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.exchange = self.destination = exchange
        self.timeout = timeout
        self._lock = threading.Lock()
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def _open(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open and self._connection is not None:
            try:
                # pika serves heartbeats only inside its calls: after an idle spell the broker may have closed
                # the connection while the channel still says open. Ask now, not in the middle of a batch.
                self._connection.process_data_events(0)
            except (pika.exceptions.AMQPError, OSError):
                self._drop()
            else:
                if self._channel is not None and self._channel.is_open:
                    return self._channel
        self._drop()
        self._connection = _connect(self.url, self.timeout)
        channel = self._connection.channel()
        channel.confirm_delivery()
        _declare_exchange(channel, self.exchange)
        self._channel = channel
        return channel

    def publish(self, events: Sequence[StoredEvent]) -> None:
        """Publish each event, in order, each confirmed by the broker before the next is sent.

        Raises:
            PublishError: the broker could not be reached, refused a message, or had no queue for one
                (``acked``: how many leading ones it confirmed).
        """
        with self._lock:
            acked = 0
            try:
                channel = self._open()
                for event in events:
                    properties = pika.BasicProperties(
                        message_id=event.event_id, delivery_mode=2, content_type="application/json",
                        headers=message_headers(event))
                    channel.basic_publish(self.exchange, event.type_name, event.data.encode(), properties,
                                          mandatory=True)
                    acked += 1
            except pika.exceptions.UnroutableError as exc:
                raise PublishError(f"RabbitMQ exchange {self.exchange!r} has no queue bound for "
                                   f"{events[acked].type_name!r}; bind the consumer's queue first.",
                                   acked=acked) from exc
            except pika.exceptions.NackError as exc:
                raise PublishError(f"RabbitMQ refused a message of exchange {self.exchange!r}.", acked=acked) from exc
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._drop()
                raise PublishError(f"RabbitMQ at {self.url} did not take the batch: {qualname(type(exc))}: {exc}",
                                   acked=acked) from exc

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._drop()


class RabbitConsumer(RunningConsumer):
    """Consume the durable queue ``queue``, bound to ``exchange`` for ``bindings`` (routing-key patterns: every
    event by default); hand each batch of events to ``deliver``, then acknowledge it.

    The queue, its binding and its dead-letter exchange and queue are declared if missing. ``deliver`` runs in the
    calling thread and must commit the events before it returns; if it raises, the batch is held (not
    acknowledged, still this consumer's) and delivered again first by the next :meth:`run_once`.
    """

    def __init__(self, url: str, exchange: str, queue: str, deliver: Callable[[Sequence[NewEvent]], object], *,
                 bindings: Sequence[str] = ("#",), batch: int = 100, wait: float = 1.0, backoff: float = 0.1,
                 max_backoff: float = 5.0, timeout: float = 5.0) -> None:
        self.url = url
        self.exchange = exchange
        self.queue = queue
        self.deliver = deliver
        self.bindings = tuple(bindings)
        self.batch = batch
        self.wait = wait
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.dead_exchange = f"{exchange}.dead"
        self.dead_queue = f"{queue}.dead"
        self.handled = 0
        """Messages delivered and acknowledged since this consumer was made."""
        self.failures = 0
        """Failed attempts in a row."""
        self._lock = threading.Lock()
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._held: list[tuple[Any, Any, bytes]] = []
        self._closed = False
        self._running(f"rabbitmq-consume-{queue}")

    def declare(self) -> None:
        """Declare the exchange, the queue and its bindings, and the dead letters' exchange and queue, now (a
        publisher's messages reach the queue only once it is bound)."""
        with self._lock:
            self._call("declare the queue", self._open)

    def _open(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._drop()
        self._connection = _connect(self.url, self.timeout)
        channel = self._connection.channel()
        _declare_exchange(channel, self.exchange)
        channel.exchange_declare(self.dead_exchange, exchange_type=_FANOUT, durable=True)
        channel.queue_declare(self.dead_queue, durable=True)
        channel.queue_bind(self.dead_queue, self.dead_exchange)
        channel.queue_declare(self.queue, durable=True, arguments={"x-dead-letter-exchange": self.dead_exchange})
        for pattern in self.bindings:
            channel.queue_bind(self.queue, self.exchange, routing_key=pattern)
        channel.basic_qos(prefetch_count=self.batch)
        self._channel = channel
        return channel

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._drop()
            raise ConsumeError(f"RabbitMQ at {self.url} failed to {what}: {qualname(type(exc))}: {exc}") from exc

    def run_once(self, timeout: float | None = None) -> int:
        """Take a batch (waiting up to ``timeout`` s, ``wait`` by default, for its first message), deliver it,
        acknowledge it; return how many messages were handled (0 if none came).

        Raises:
            ConsumeError: RabbitMQ could not be reached.
            Exception: whatever ``deliver`` raised (the batch is held, and delivered again first).
        """
        wait = self.wait if timeout is None else timeout
        with self._lock:
            if self._closed:
                raise ConsumeError("This RabbitConsumer is closed.")
            if self._held and (self._channel is None or not self._channel.is_open):
                self._held = []  # the channel they came on closed: the broker put them back, they come again
            messages = self._held or self._call("fetch messages", lambda: self._take(wait))
            if not messages:
                return 0
            carried = [event_from(properties.headers, body) for _method, properties, body in messages]
            events = [event for event in carried if event is not None]
            self._held = messages
            if events:
                self.deliver(events)
            self._held = []
            self._acknowledge(messages, carried)
            self.handled += len(messages)
            return len(messages)

    def _take(self, wait: float) -> list[tuple[Any, Any, bytes]]:
        channel = self._open()
        taken: list[tuple[Any, Any, bytes]] = []
        # The first message waits up to `wait`; the rest are those the broker already sent (the prefetch).
        for method, properties, body in channel.consume(self.queue, inactivity_timeout=max(wait, 0.001)):
            if method is None:
                break
            taken.append((method, properties, body or b""))
            if len(taken) >= self.batch:
                break
            if not taken or channel.get_waiting_message_count() == 0:
                break
        channel.cancel()  # messages prefetched and not taken go back to the queue, in order
        return taken

    def _acknowledge(self, messages: Sequence[tuple[Any, Any, bytes]], carried: Sequence[NewEvent | None]) -> None:
        channel = self._channel
        if channel is None or not channel.is_open:  # acks go on the channel the messages came on, or none
            self._drop()
            log.warning("the channel closed before the acknowledgement; the messages will be redelivered and dropped "
                        "as repeats", queue=self.queue)
            return
        try:
            for (method, properties, _body), event in zip(messages, carried, strict=True):
                if event is None:
                    log.error("message without relay headers dead-lettered", queue=self.queue,
                              routing_key=method.routing_key, headers=sorted(properties.headers or {}))
                    channel.basic_reject(method.delivery_tag, requeue=False)
                else:
                    channel.basic_ack(method.delivery_tag)
        except (pika.exceptions.AMQPError, OSError) as exc:  # committed locally: a redelivery is a repeat
            self._drop()
            log.warning("acknowledgement failed; the messages will be redelivered and dropped as repeats",
                        queue=self.queue, error_type=qualname(type(exc)), error=str(exc))

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._held = []  # unacknowledged messages of a closed channel are requeued: they come again
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()

    def _where(self) -> dict[str, str]:
        return {"queue": self.queue}

    def close(self) -> None:
        """Stop and close the connection; messages taken and not acknowledged go back to the queue."""
        self.stop()
        with self._lock:
            self._closed = True
            self._drop()


__all__ = ["RabbitConsumer", "RabbitPublisher"]
