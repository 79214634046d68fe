"""Events to other services through NATS JetStream: a publisher for the outbox relay, a de-duplicating consumer.

Needs the ``nats`` extra (nats-py). :class:`JetStreamPublisher` is the
:class:`mediator.relay.Publisher` the :class:`~mediator.relay.Relay` publishes
through; :class:`JetStreamConsumer` is the other service's end.

**Why JetStream, not Redis Streams.** Both keep messages after they are sent;
what decides it is what the broker does for at-least-once delivery by itself.
JetStream has durable consumers with explicit acknowledgement and redelivery
(a message not acknowledged within ``ack_wait``, or refused with a nak, comes
again, with no claim-and-trim housekeeping of pending lists as with Redis's
``XAUTOCLAIM``); a server-side duplicate window keyed by the ``Nats-Msg-Id``
header, so a relay's republish after a crash is dropped by the broker itself
(Redis Streams have no publish-side de-duplication); ordering per subject and
across the stream, by stream sequence; and a stream stored on disk that survives
a broker restart. It also already runs here (port 4222).

**Messages.** One message per event, on the subject
``<subject_prefix>.<type name>`` (e.g. ``shop.events.shop.OrderPlaced``, so a
consumer filters by type). The payload is the event's stored JSON; headers
carry the rest: ``Nats-Msg-Id`` (the event id), ``Mediator-Type``,
``Mediator-Version``, ``Mediator-Key`` (percent-encoded, absent for none),
``Mediator-Recorded-At``, ``Mediator-Meta`` and ``Mediator-Position`` (the
position in the publishing service's log, for diagnosis only). Messages are
published pipelined and each is awaited for its acknowledgement (a PubAck)
before the relay moves its checkpoint.

**De-duplication on the consumer.** The broker's window drops repeats it sees
within ``duplicate_window``; a republish later than that (a relay down longer,
a checkpoint restored from a backup), or a redelivery of a message whose ack was
lost, still arrives twice. So the consumer de-duplicates too, by event id, in
its own database. Of the two ways (a processed-ids table written in the same
transaction as the read-model change, or appending the received events to the
consumer's own event log, whose ``event_id`` is UNIQUE, and projecting them from
there with its own ``ReadModels``) this takes the second, through
:class:`mediator.relay.Inbox`: the consumer's read models then have everything the
engine gives local ones (each checkpoint committed with its read-model change,
retries and dead letters, rebuilds by replaying the local log, lag), and the
de-duplication is the log's unique index rather than one more table and one
more query per message. A message is acknowledged to NATS only after the inbox
has committed it; if the process dies in between, it is redelivered and
refused by the unique index as a repeat.

Each client runs its own asyncio loop in a daemon thread, so the relay and the
consumer stay synchronous like the rest of the engine. A failed connection is
dropped and a new one made at the next call: callers retry with their own backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import structlog

from ._errors import ConsumeError, MissingExtraError, PublishError
from ._messages import qualname
from .readmodels import NewEvent, StoredEvent
from .relay import (
    KEY,
    META,
    MSG_ID,
    POSITION,
    RECORDED_AT,
    TYPE,
    VERSION,
    RunningConsumer,
    event_from,
    message_headers,
)

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised by the wheel test
    raise MissingExtraError(__name__, "nats", _missing.name) from _missing

T = TypeVar("T")

log = structlog.get_logger("mediator.nats")

_NOT_IN_SUBJECT = re.compile(r"[^A-Za-z0-9_\-.]")


def subject(prefix: str, type_name: str) -> str:
    """The subject events of ``type_name`` are published on: ``<prefix>.<type name>``, made subject-safe.

    >>> subject("shop.events", "shop.OrderPlaced")
    'shop.events.shop.OrderPlaced'
    >>> subject("shop.events", "odd name>*")
    'shop.events.odd_name__'
    """
    tokens = _NOT_IN_SUBJECT.sub("_", type_name).split(".")
    return ".".join([prefix, *(token or "_" for token in tokens)])


def headers(event: StoredEvent) -> dict[str, str]:
    """The headers a stored event is published with (its data is the payload): see
    :func:`mediator.relay.message_headers`."""
    return message_headers(event)


def to_event(message: Msg) -> NewEvent | None:
    """The event a relayed message carries, or ``None`` if it was not published by a relay."""
    return event_from(message.headers, message.data)


async def _connect(url: str, connect_timeout: float, what: str) -> Client:
    async def on_error(error: Exception) -> None:  # connection attempts and drops; callers log their failures
        log.debug("nats connection error", client=what, error_type=qualname(type(error)), error=str(error))

    # No reconnecting inside the client: a dropped connection fails the call in flight at once, and the
    # next call connects again. Publishes buffered by a reconnecting client would be acknowledged late,
    # after the caller had given up on them.
    return await nats.connect(servers=[url], name=what, allow_reconnect=False, max_reconnect_attempts=1,
                              reconnect_time_wait=0, connect_timeout=max(1, round(connect_timeout)),
                              error_cb=on_error)


class _LoopThread:
    """An asyncio loop in a daemon thread, for synchronous callers."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()
        self.closed = False

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` on the loop and wait for it; ``TimeoutError`` (cancelling it) after ``timeout`` s."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self, last: Coroutine[Any, Any, None]) -> None:
        """Run ``last`` (closing connections), cancel what is left, stop the loop and join its thread."""
        if self.closed:
            last.close()
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.call(last, 5.0)
        with contextlib.suppress(Exception):
            self.call(self._cancel_the_rest(), 5.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
        if not self.thread.is_alive():
            self.loop.close()

    @staticmethod
    async def _cancel_the_rest() -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class JetStreamPublisher:
    """Publish stored events to the JetStream stream ``stream`` on ``<subject_prefix>.<type name>``.

    The stream is created if missing (subjects ``<subject_prefix>.>``, on disk, with
    ``duplicate_window`` seconds of de-duplication by ``Nats-Msg-Id``), or given that
    subject if it exists without it. :meth:`publish` returns once every message is
    acknowledged; any failure drops the connection and raises :class:`PublishError`,
    saying how many leading events were acknowledged.

    Args:
        url: the NATS server, ``nats://127.0.0.1:4222``.
        timeout: seconds to wait for a batch's acknowledgements (and for stream requests).
        max_in_flight: messages sent before their acknowledgements are awaited. Pipelining keeps the stream in
            publish order over one connection; should the server refuse one message and store a later one of
            the same window, the refused one is stored after it on the retry. 1 rules that out, at a round trip
            per event.
    """

    messaging_system = "nats"
    """``messaging.system`` in OpenTelemetry (see :class:`mediator.otel.TracedPublisher`)."""

    def __init__(self, url: str, stream: str, subject_prefix: str, *, duplicate_window: float = 120.0,
                 timeout: float = 5.0, connect_timeout: float = 2.0, max_in_flight: int = 256) -> None:
        if not subject_prefix or _NOT_IN_SUBJECT.search(subject_prefix) or ".." in subject_prefix:
            raise ValueError(f"subject_prefix={subject_prefix!r} is not a subject; use tokens like 'shop.events'.")
        self.url = url
        self.stream = self.destination = stream
        self.subject_prefix = subject_prefix
        self.duplicate_window = duplicate_window
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_in_flight = max(1, max_in_flight)
        self._loop = _LoopThread(f"nats-publisher-{stream}")
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._js: JetStreamContext | None = None

    def subject_for(self, type_name: str) -> str:
        """The subject events of ``type_name`` go to (for a consumer's ``filter_subject``)."""
        return subject(self.subject_prefix, type_name)

    def publish(self, events: Sequence[StoredEvent]) -> None:
        """Publish ``events`` in order and wait until JetStream has acknowledged each one.

        Raises:
            PublishError: not connected, or some were not acknowledged within ``timeout``.
        """
        if not events:
            return
        with self._lock:
            if self._loop.closed:
                raise PublishError("This JetStreamPublisher is closed.")
            chunks = -(-len(events) // self.max_in_flight)
            budget = 2 * self.connect_timeout + self.timeout * (chunks + 2)
            try:
                self._loop.call(self._publish(events), budget)
            except TimeoutError as exc:  # the loop itself stalled: start afresh next time
                with contextlib.suppress(Exception):
                    self._loop.call(self._drop(), 5.0)
                raise PublishError(f"JetStream at {self.url} did not answer within {budget:g} s.") from exc

    def ensure_stream(self) -> None:
        """Connect and create (or extend) the stream now rather than at the first publish."""
        with self._lock:
            try:
                self._loop.call(self._jetstream(), 2 * self.connect_timeout + 2 * self.timeout)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    self._loop.call(self._drop(), 5.0)
                raise PublishError(f"Cannot set up stream {self.stream!r} at {self.url}: {exc}") from exc

    async def _jetstream(self) -> JetStreamContext:
        if self._client is not None and self._js is not None and self._client.is_connected:
            return self._js
        await self._drop()
        client = await _connect(self.url, self.connect_timeout, f"publisher:{self.stream}")
        try:
            js = client.jetstream(timeout=self.timeout)
            await self._ensure_stream(js)
        except BaseException:
            await client.close()
            raise
        self._client, self._js = client, js
        return js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        wildcard = f"{self.subject_prefix}.>"
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(name=self.stream, subjects=[wildcard], storage=StorageType.FILE,
                                             duplicate_window=self.duplicate_window))
            log.info("jetstream stream created", stream=self.stream, subjects=wildcard,
                     duplicate_window=self.duplicate_window)
            return
        subjects = list(info.config.subjects or [])
        if wildcard not in subjects:
            await js.update_stream(info.config.evolve(subjects=[*subjects, wildcard]))

    async def _publish(self, events: Sequence[StoredEvent]) -> None:
        acked = 0
        try:
            js = await self._jetstream()
            for start in range(0, len(events), self.max_in_flight):
                chunk = events[start:start + self.max_in_flight]
                # Sent one after the other on one connection (so stored in this order), then awaited together.
                pending = [await js.publish_async(self.subject_for(event.type_name), event.data.encode(),
                                                  stream=self.stream, headers=headers(event)) for event in chunk]
                answers = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), self.timeout)
                for event, answer in zip(chunk, answers, strict=True):
                    if isinstance(answer, BaseException):
                        raise PublishError(
                            f"JetStream refused event {event.event_id} at position {event.position}: "
                            f"{qualname(type(answer))}: {answer}", acked=acked) from answer
                    acked += 1
        except PublishError:
            await self._drop()
            raise
        except Exception as exc:
            await self._drop()
            raise PublishError(f"Cannot publish to JetStream at {self.url}: {qualname(type(exc))}: {exc}",
                               acked=acked) from exc

    async def _drop(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await client.close()

    def close(self) -> None:
        """Close the connection and stop the loop thread."""
        with self._lock:
            self._loop.close(self._drop())


class JetStreamConsumer(RunningConsumer):
    """Pull ``stream`` through the durable consumer ``durable``; hand each batch of events to ``deliver``.

    ``deliver`` (typically :meth:`mediator.relay.Inbox.receive`) runs in the calling
    thread and must commit the events locally before it returns; only then are the
    messages acknowledged. If it raises, the error is re-raised and the batch is
    held: the next :meth:`run_once` delivers the same batch again (telling JetStream
    it is still in progress, so it is not redelivered meanwhile) before fetching
    anything new. A nak would let later messages overtake it.

    The durable consumer (created if missing: every message of ``filter_subject``,
    explicit acks, redelivered after ``ack_wait`` s without one, never given up on;
    an existing one keeps its configuration) keeps the position across restarts.
    Messages in flight when a consumer dies come again after ``ack_wait``, possibly
    after later ones that another consumer of the durable, or this one restarted,
    fetched meanwhile; the inbox drops them if they were committed. A message
    without a relay's headers is logged and terminated.
    """

    def __init__(self, url: str, stream: str, durable: str, deliver: Callable[[Sequence[NewEvent]], object], *,
                 filter_subject: str | None = None, batch: int = 100, fetch_timeout: float = 1.0,
                 ack_wait: float = 30.0, backoff: float = 0.1, max_backoff: float = 5.0, timeout: float = 5.0,
                 connect_timeout: float = 2.0) -> None:
        self.url = url
        self.stream = stream
        self.durable = durable
        self.deliver = deliver
        self.filter_subject = filter_subject
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.ack_wait = ack_wait
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.handled = 0
        """Messages delivered and acknowledged since this consumer was made."""
        self.failures = 0
        """Failed attempts in a row."""
        self._loop = _LoopThread(f"nats-consumer-{durable}")
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._held: list[Msg] = []
        self._running(f"nats-consume-{durable}")

    def run_once(self, timeout: float | None = None) -> int:
        """Fetch a batch (waiting up to ``timeout`` s, ``fetch_timeout`` by default), deliver it, ack it.

        Returns how many messages were handled (0 if none came).

        Raises:
            ConsumeError: JetStream could not be reached.
            Exception: whatever ``deliver`` raised (the batch is held, and delivered again first).
        """
        wait = self.fetch_timeout if timeout is None else timeout
        with self._lock:
            if self._loop.closed:
                raise ConsumeError("This JetStreamConsumer is closed.")
            if self._held:
                messages = self._call(self._keep(self._held), 2 * self.timeout)
            else:
                messages = self._call(self._fetch(wait), wait + 2 * self.connect_timeout + 2 * self.timeout)
            if not messages:
                return 0
            carried = [to_event(message) for message in messages]
            events = [event for event in carried if event is not None]
            self._held = messages
            if events:
                self.deliver(events)
            self._held = []
            self._call(self._ack(messages, [event is None for event in carried]), 2 * self.timeout)
            self.handled += len(messages)
            return len(messages)

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        try:
            return self._loop.call(coroutine, timeout)
        except TimeoutError as exc:
            with contextlib.suppress(Exception):
                self._loop.call(self._drop(), 5.0)
            raise ConsumeError(f"JetStream at {self.url} did not answer within {timeout:g} s.") from exc

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        if self._client is not None and self._subscription is not None and self._client.is_connected:
            return self._subscription
        await self._drop()
        client = await _connect(self.url, self.connect_timeout, f"consumer:{self.durable}")
        try:
            js = client.jetstream(timeout=self.timeout)
            try:
                await js.consumer_info(self.stream, self.durable)
            except nats.js.errors.NotFoundError:
                await js.add_consumer(self.stream, ConsumerConfig(
                    durable_name=self.durable, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait, max_deliver=-1, filter_subject=self.filter_subject))
            subscription = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        except BaseException:
            await client.close()
            raise
        self._client, self._subscription = client, subscription
        return subscription

    async def _fetch(self, wait: float) -> list[Msg]:
        try:
            subscription = await self._subscribe()
            try:
                return await subscription.fetch(self.batch, timeout=max(wait, 0.01))
            except TimeoutError:  # nothing to fetch (nats.errors.TimeoutError is a TimeoutError)
                if self._client is None or not self._client.is_connected:
                    raise ConsumeError(f"Lost the connection to JetStream at {self.url}.") from None
                return []
        except ConsumeError:
            await self._drop()
            raise
        except Exception as exc:
            await self._drop()
            raise ConsumeError(f"Cannot fetch from JetStream at {self.url}: {qualname(type(exc))}: {exc}") from exc

    async def _ack(self, messages: Sequence[Msg], foreign: Sequence[bool]) -> None:
        try:
            for message, not_ours in zip(messages, foreign, strict=True):
                if not_ours:
                    log.error("message without relay headers terminated", stream=self.stream,
                              subject=message.subject, headers=message.headers)
                    await message.term()
                else:
                    await message.ack()
            if self._client is not None:
                await self._client.flush(timeout=max(1, round(self.timeout)))
        except Exception as exc:  # committed locally already: a redelivery is refused as a repeat
            await self._drop()
            log.warning("acknowledgement failed; the messages will be redelivered and dropped as repeats",
                        stream=self.stream, error_type=qualname(type(exc)), error=str(exc))

    async def _keep(self, messages: list[Msg]) -> list[Msg]:
        """The held batch, its ack deadline reset; none if the connection it came on is gone (it comes again)."""
        try:
            if self._client is None or not self._client.is_connected:
                raise ConsumeError("the connection the held messages came on is gone")
            for message in messages:
                await message.in_progress()
        except Exception as exc:
            await self._drop()
            log.warning("held messages released for redelivery", stream=self.stream, consumer=self.durable,
                        messages=len(messages), error=str(exc))
            return []
        return messages

    async def _drop(self) -> None:
        client, self._client, self._subscription = self._client, None, None
        self._held = []  # acks and progress go on the connection a message came on: these come again
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await client.close()

    def _where(self) -> dict[str, str]:
        return {"consumer": self.durable, "stream": self.stream}

    def close(self) -> None:
        """Stop, close the connection and stop the loop thread (the durable consumer stays on the server)."""
        self.stop()
        with self._lock:
            self._loop.close(self._drop())


__all__ = ["KEY", "META", "MSG_ID", "POSITION", "RECORDED_AT", "TYPE", "VERSION", "ConsumeError",
           "JetStreamConsumer", "JetStreamPublisher", "PublishError", "headers", "subject", "to_event"]
