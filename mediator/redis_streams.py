"""Events to other services through Redis Streams: a publisher for the outbox relay, a consumer-group consumer.

Needs the ``redis`` extra (redis-py). :class:`StreamPublisher` is the :class:`mediator.relay.Publisher` a
:class:`~mediator.relay.Relay` publishes through; :class:`StreamConsumer` is a :class:`mediator.relay.Consumer`,
the receiving service's end, handing batches to an :class:`~mediator.relay.Inbox`.

**Messages.** One stream entry per event, on one stream (``stream``): the fields are the headers of
:func:`mediator.relay.message_headers` and ``data``, the event's stored JSON. A batch is written in one pipeline
(``XADD`` each, in order, sent together) and is acknowledged when Redis has answered every ``XADD``. Redis does not
drop a repeated publish (a relay that crashed after publishing publishes again): the consumer's inbox does, by
event id, in its own database.

**Order and delivery.** One stream keeps the order the relay published in, which is the publishing service's log
order, so every key's events come in order, to every group. Within a group, entries are handed out to its
consumers in order; each is delivered at least once: an entry a consumer took and did not ``XACK`` (it died)
stays pending, and another consumer of the group claims it (``XAUTOCLAIM``) once it has been idle ``claim_after``
seconds. A claimed entry may come after later ones; the inbox drops it if it was committed already. An entry a
relay did not write (a field missing) is moved to ``<stream>.dead`` with ``XACK`` in one transaction.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from ._errors import ConsumeError, MissingExtraError, PublishError
from ._messages import qualname
from .readmodels import NewEvent, StoredEvent
from .relay import RunningConsumer, event_from, message_headers

try:
    import redis
    import redis.exceptions
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised by the wheel test
    raise MissingExtraError(__name__, "redis", _missing.name) from _missing

log = structlog.get_logger("mediator.redis_streams")

DATA = "data"
"""The field holding the event's stored JSON."""


def _client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


class StreamPublisher:
    """Publish events to the Redis stream ``stream`` at ``url`` (``redis://host:port/db``)."""

    messaging_system = "redis"
    """``messaging.system`` in OpenTelemetry (see :class:`mediator.otel.TracedPublisher`)."""

    def __init__(self, url: str, stream: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.stream = self.destination = stream
        self.timeout = timeout
        self._client = _client(url, timeout)

    def publish(self, events: Sequence[StoredEvent]) -> None:
        """``XADD`` each event, in order, in one ``MULTI``/``EXEC``; return once Redis has stored them all.

        Raises:
            PublishError: Redis could not be reached, or refused an entry (``acked``: how many leading ones it
                took; none is known when the connection failed).
        """
        pipe = self._client.pipeline(transaction=True)  # all or none: a refused entry never lets later ones ahead
        for event in events:
            fields: dict[Any, Any] = {**message_headers(event), DATA: event.data}
            pipe.xadd(self.stream, fields)
        try:
            answers = pipe.execute(raise_on_error=False)
        except redis.exceptions.RedisError as exc:
            raise PublishError(f"Redis at {self.url} did not take the batch: {qualname(type(exc))}: {exc}") from exc
        for index, answer in enumerate(answers):
            if isinstance(answer, Exception):
                raise PublishError(f"Redis refused an entry of stream {self.stream!r}: {answer}", acked=index)

    def close(self) -> None:
        """Close the connections."""
        self._client.close()


class StreamConsumer(RunningConsumer):
    """Read ``stream`` in consumer group ``group``; hand each batch of events to ``deliver``, then ``XACK`` it.

    The group is created at the stream's start if missing (``MKSTREAM``): a new group gets every entry. Each
    consumer has a name of its own in the group (``<group>-<random>``, or ``name``). Before reading new entries
    it claims the entries other consumers left pending for ``claim_after`` seconds (they died, or hung). ``deliver``
    runs in the calling thread and must commit the events before it returns; if it raises, the batch is held and
    delivered again first by the next :meth:`run_once`.
    """

    def __init__(self, url: str, stream: str, group: str, deliver: Callable[[Sequence[NewEvent]], object], *,
                 name: str | None = None, batch: int = 100, block: float = 1.0, claim_after: float = 30.0,
                 backoff: float = 0.1, max_backoff: float = 5.0, timeout: float = 5.0) -> None:
        self.url = url
        self.stream = stream
        self.group = group
        self.deliver = deliver
        self.name = name or f"{group}-{uuid.uuid4().hex[:12]}"
        self.batch = batch
        self.block = block
        self.claim_after = claim_after
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.dead_stream = f"{stream}.dead"
        self.handled = 0
        """Entries delivered and acknowledged since this consumer was made."""
        self.failures = 0
        """Failed attempts in a row."""
        self._client = _client(url, timeout + block)
        self._lock = threading.Lock()
        self._grouped = False
        self._held: list[tuple[str, dict[Any, Any]]] = []
        self._closed = False
        self._next_claim = 0.0
        self._running(f"redis-consume-{self.name}")

    def run_once(self, timeout: float | None = None) -> int:
        """Claim or read a batch (waiting up to ``timeout`` s, at most ``block``), deliver it, ``XACK`` it.

        Returns how many entries were handled (0 if none came).

        Raises:
            ConsumeError: Redis could not be reached.
            Exception: whatever ``deliver`` raised (the batch is held, and delivered again first).
        """
        wait = self.block if timeout is None else min(timeout, self.block)  # the socket waits block + timeout
        with self._lock:
            if self._closed:
                raise ConsumeError("This StreamConsumer is closed.")
            entries = self._held or self._claim() or self._read(wait)
            if not entries:
                return 0
            carried = [(entry_id, _event(fields)) for entry_id, fields in entries]
            events = [event for _id, event in carried if event is not None]
            self._held = entries
            if events:
                self.deliver(events)
            self._held = []
            self._acknowledge(entries, [entry_id for entry_id, event in carried if event is None])
            self.handled += len(entries)
            return len(entries)

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except redis.exceptions.RedisError as exc:
            if str(exc).startswith("NOGROUP"):  # the stream or its group is gone (a flush, a restart): made again
                self._grouped = False
            raise ConsumeError(f"Redis at {self.url} failed to {what}: {qualname(type(exc))}: {exc}") from exc

    def _ensure_group(self) -> None:
        if self._grouped:
            return
        try:
            self._call("create the group", lambda: self._client.xgroup_create(self.stream, self.group, id="0",
                                                                                mkstream=True))
        except ConsumeError as exc:
            if "BUSYGROUP" not in str(exc.__cause__):  # it exists already: keep its position
                raise
        self._grouped = True

    def _claim(self) -> list[tuple[str, dict[Any, Any]]]:
        """Entries of dead consumers, pending longer than ``claim_after``, taken over by this one (looked for every
        quarter of ``claim_after``, not at every batch)."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + self.claim_after / 4
        self._ensure_group()
        claimed: list[tuple[str, dict[Any, Any]]] = []
        cursor: Any = "0-0"
        while len(claimed) < self.batch:  # through the whole pending list, a page at a time
            cursor, page = self._claim_page(cursor, self.batch - len(claimed))
            claimed += page
            if _text(cursor) == "0-0":
                break
        if claimed:
            log.warning("pending entries of another consumer claimed", stream=self.stream, group=self.group,
                        consumer=self.name, entries=len(claimed))
        return claimed

    def _claim_page(self, start: Any, count: int) -> tuple[Any, list[tuple[str, dict[Any, Any]]]]:
        """One ``XAUTOCLAIM`` from ``start``: the cursor to go on from, and the entries claimed (those deleted from
        the stream meanwhile left out)."""
        answer = self._call("claim pending entries", lambda: self._client.xautoclaim(
            self.stream, self.group, self.name, min_idle_time=int(self.claim_after * 1000), start_id=start,
            count=count))
        return answer[0], [(_text(entry_id), fields) for entry_id, fields in answer[1] if fields is not None]

    def _read(self, wait: float) -> list[tuple[str, dict[Any, Any]]]:
        self._ensure_group()
        answer = self._call("read the stream", lambda: self._client.xreadgroup(
            self.group, self.name, {self.stream: ">"}, count=self.batch, block=max(1, int(wait * 1000))))
        if not answer:
            return []
        return [(_text(entry_id), fields) for entry_id, fields in answer[0][1]]

    def _acknowledge(self, entries: Sequence[tuple[str, dict[Any, Any]]], foreign: Sequence[str]) -> None:
        pipe = self._client.pipeline(transaction=True)
        for entry_id in foreign:
            fields = dict(entries)[entry_id]
            log.error("entry without relay fields dead-lettered", stream=self.stream, entry=entry_id,
                      fields=sorted(_text(name, errors="replace") for name in fields))
            dead: dict[Any, Any] = {**fields, "dead-from": entry_id}
            pipe.xadd(self.dead_stream, dead)
        pipe.xack(self.stream, self.group, *[entry_id for entry_id, _fields in entries])
        try:
            pipe.execute()
        except redis.exceptions.RedisError as exc:  # committed locally already: a redelivery is a repeat
            log.warning("acknowledgement failed; the entries will be claimed again and dropped as repeats",
                        stream=self.stream, error_type=qualname(type(exc)), error=str(exc))

    def _where(self) -> dict[str, str]:
        return {"consumer": self.name, "stream": self.stream}

    def close(self) -> None:
        """Stop and close the connections; entries taken and not acknowledged stay pending, for others to claim."""
        self.stop()
        with self._lock:
            self._closed = True
            self._held = []
            with contextlib.suppress(Exception):
                self._client.close()


def _text(value: bytes | str, errors: str = "strict") -> str:
    return value.decode(errors=errors) if isinstance(value, bytes) else value


def _event(fields: dict[Any, Any]) -> NewEvent | None:
    """The event an entry carries; ``None`` if a relay did not write it (a field missing, or not UTF-8)."""
    try:
        decoded = {_text(key): _text(value) for key, value in fields.items()}
    except UnicodeDecodeError:
        return None
    return event_from(decoded, decoded.get(DATA, ""))


__all__ = ["DATA", "StreamConsumer", "StreamPublisher"]
