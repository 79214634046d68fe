"""Relay selected events from the outbox (the event log) to a message broker, at least once; and take them in.

A command's events are appended to the log in the command's own transaction
(the outbox). The :class:`Relay` reads the log after its own checkpoint,
publishes the events it selects through a :class:`Publisher`, waits for the
broker to acknowledge every one, and only then moves its checkpoint. The
checkpoint is an ordinary projection checkpoint (``storage.session(f"relay:{name}", 1)``),
kept in the same tracking table as the projections', on every backend.

**At least once.** A crash (or a broker failure) after publishing and before
the checkpoint commits publishes those events again when the relay resumes;
nothing is ever skipped or parked. A broker that is down is retried with a
capped exponential backoff, logged with structlog; the events wait in the log.
Each message carries the event's id, so consumers drop the repeats: the
:class:`Inbox` appends received events to the consuming service's own log,
whose ``event_id`` is unique, and its read models project them from there.

Broker-neutral: the port is :class:`Publisher` (the relay's end) and :class:`Consumer` (the receiving service's,
handing batches to an :class:`Inbox`), with the message layout of :func:`message_headers` and :func:`event_from`.
``mediator.nats`` implements it on NATS JetStream, ``mediator.rabbitmq`` on RabbitMQ and
``mediator.redis_streams`` on Redis Streams, each passing :mod:`mediator.broker_contract` against a real server;
:class:`MemoryPublisher` is the in-memory double for tests.

>>> from mediator.readmodels.memory import MemoryStorage
>>> from mediator.readmodels import NewEvent
>>> storage = MemoryStorage()
>>> session = storage.begin()
>>> _ = session.append([NewEvent("e1", "shop.OrderPlaced", 1, "{}", "o-1", 0.0),
...                     NewEvent("e2", "shop.CustomerRegistered", 1, "{}", None, 0.0)])
>>> session.commit()
>>> broker = MemoryPublisher()
>>> relay = Relay(storage, broker, select={"shop.OrderPlaced"})
>>> relay.catch_up()
1
>>> [event.event_id for event in broker.published], relay.position
(['e1'], 2)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol, Self
from urllib.parse import quote, unquote

import structlog

from ._errors import PublishError
from ._messages import qualname
from .readmodels import NewEvent, Storage, StorageDataError, StorageError, StoredEvent
from .readmodels._runner import Runner

log = structlog.get_logger("mediator.relay")

Selection = Collection[str] | Callable[[StoredEvent], bool] | None
"""Which events a relay publishes: type names, a predicate on the stored event, or ``None`` for all."""


class Publisher(Protocol):
    """Where a relay sends events: a broker's client."""

    def publish(self, events: Sequence[StoredEvent]) -> None:
        """Publish ``events`` in order; return once the broker has acknowledged all of them.

        Raises:
            PublishError: some were not acknowledged (``acked`` says how many leading ones were).
        """

    def close(self) -> None:
        """Release the connection."""


class Consumer(Protocol):
    """The receiving end of a broker: fetches batches, hands each to ``deliver`` (an :meth:`Inbox.receive`, which
    commits them locally), and acknowledges them only once it returned.

    If ``deliver`` raises, the batch is held and delivered again first by the next :meth:`run_once`. Messages a
    consumer took and did not acknowledge (it died) come again, to it or to another consumer of its group, after
    the broker's redelivery time. A message no relay published (its headers missing) is put aside (dead-lettered
    or terminated, per broker), never delivered.
    """

    def run_once(self, timeout: float | None = None) -> int:
        """Fetch a batch (waiting up to ``timeout`` s), deliver it, acknowledge it; return how many messages.

        Raises:
            ConsumeError: the broker could not be reached.
            Exception: whatever ``deliver`` raised (the batch is held, and delivered again first).
        """

    def start(self) -> None:
        """Consume in a background thread, retrying failures forever with a capped backoff."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread after its current batch."""

    def close(self) -> None:
        """Stop and close the connection (the group's position stays on the server)."""


class RunningConsumer:
    """What every broker consumer does alike: run :meth:`run_once` in a background thread (it waits for messages
    itself), and retry a failure forever with a capped exponential backoff, logged. A subclass sets ``backoff``,
    ``max_backoff`` and ``failures`` (0), calls :meth:`_running` with its thread's name, and implements ``run_once``
    and ``close`` (which calls :meth:`stop` first)."""

    backoff: float
    max_backoff: float
    failures: int
    """Failed attempts in a row (0 while the broker is healthy)."""
    _runner: Runner

    def run_once(self, timeout: float | None = None) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _running(self, name: str) -> None:
        self._runner = Runner(name, self._work, lambda: None, self._failed)

    def _where(self) -> dict[str, str]:
        """Fields naming this consumer in its log lines."""
        return {"consumer": type(self).__name__}

    def _work(self) -> bool:
        self.run_once()  # waits for messages itself: no idle wait needed
        if self.failures:
            log.info("consumer recovered", failed_attempts=self.failures, **self._where())
            self.failures = 0
        return True

    def _failed(self, exc: Exception) -> float:
        self.failures += 1
        delay: float = min(self.backoff * 2.0 ** (self.failures - 1), self.max_backoff)
        log.error("consumer failed, will retry", attempt=self.failures, retry_in=delay,
                  error_type=qualname(type(exc)), error=str(exc), **self._where())
        return delay

    def start(self) -> None:
        """Consume in a background thread, retrying failures forever with a capped backoff."""
        self._runner.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread after its current batch (at most one wait for messages)."""
        self._runner.stop(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the message layout every broker adapter uses --------------------------------------------------------------

MSG_ID = "Nats-Msg-Id"
"""The event's id (the header JetStream's duplicate window reads; the other brokers carry it too)."""
TYPE = "Mediator-Type"
VERSION = "Mediator-Version"
KEY = "Mediator-Key"
"""The event's ordering key, percent-encoded (absent for none)."""
RECORDED_AT = "Mediator-Recorded-At"
META = "Mediator-Meta"
"""The event's metadata as JSON: the trace context of the command that recorded it, among others."""
POSITION = "Mediator-Position"
"""The event's position in the publishing service's log (for diagnosis only)."""


def message_headers(event: StoredEvent) -> dict[str, str]:
    """The headers a stored event is published with (its data, the stored JSON, is the body)."""
    found = {MSG_ID: event.event_id, TYPE: event.type_name, VERSION: str(event.version),
             RECORDED_AT: repr(event.recorded_at), META: event.meta, POSITION: str(event.position)}
    if event.key is not None:
        found[KEY] = quote(event.key, safe="")
    return found


def event_from(headers: Mapping[str, object] | None, body: bytes | str) -> NewEvent | None:
    """The event a relayed message carries, or ``None`` if a relay did not publish it (a header missing or bad)."""
    found = headers or {}
    try:
        key = found.get(KEY)
        return NewEvent(str(found[MSG_ID]), str(found[TYPE]), int(str(found[VERSION])),
                        body.decode() if isinstance(body, bytes) else body,
                        None if key is None else unquote(str(key)), float(str(found[RECORDED_AT])),
                        str(found.get(META, "{}")))
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


class MemoryPublisher:
    """An in-memory broker for tests: keeps what was published; ``down = True`` makes it fail."""

    messaging_system = destination = "memory"

    def __init__(self) -> None:
        self.published: list[StoredEvent] = []
        self.down = False
        self.attempts = 0

    def publish(self, events: Sequence[StoredEvent]) -> None:
        self.attempts += 1
        if self.down:
            raise PublishError("The memory broker is down; set down = False to bring it back.")
        self.published.extend(events)

    def close(self) -> None:
        """Nothing to release."""


class Relay:
    """Publish the selected events of ``storage``'s log through ``publisher``, in log order, at least once.

    Args:
        storage: the service's storage; its log is the outbox, and the checkpoint ``relay:<name>`` lives in it.
        publisher: the broker's client (:class:`mediator.nats.JetStreamPublisher`, :class:`MemoryPublisher`).
        name: the relay's stable name; a second relay of another name publishes the log independently.
        select: type names to publish, a predicate on the :class:`StoredEvent`, or ``None`` for every event.
        batch: events read (and published, then checkpointed) at a time.
        poll_interval: the longest an idle relay waits before looking at the log again.
        watch_interval: how often an idle relay reads the head of the log (one cheap query) for new events.
        backoff: seconds before the first retry after a failure; doubled per failure, up to ``max_backoff``.
        leased: take the storage's lease on the checkpoint name before each batch (PostgreSQL's advisory lock),
            so of several relay processes of one name one publishes at a time. ``stop`` gives it up.
    """

    def __init__(self, storage: Storage, publisher: Publisher, *, name: str = "relay", select: Selection = None,
                 batch: int = 100, poll_interval: float = 0.5, watch_interval: float = 0.02, backoff: float = 0.1,
                 max_backoff: float = 10.0, leased: bool = True) -> None:
        if isinstance(select, str):
            raise TypeError(f"select={select!r} is one string; pass a collection of type names, e.g. {{{select!r}}}.")
        if batch < 1:
            raise ValueError(f"batch={batch} must be at least 1.")
        self.storage = storage
        self.publisher = publisher
        self.name = name
        self.checkpoint_name = f"relay:{name}"
        self.batch = batch
        self.poll_interval = poll_interval
        self.watch_interval = watch_interval
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.leased = leased
        self._names: frozenset[str] | None = None
        self._predicate: Callable[[StoredEvent], bool] | None = None
        if callable(select):
            self._predicate = select
        elif select is not None:
            self._names = frozenset(select)
        self.published = 0
        """Events this relay has published and checkpointed since it was made."""
        self.failures = 0
        """Failed attempts in a row (0 while the broker is healthy)."""
        self._head = 0
        self._runner = Runner(f"mediator-relay-{name}", self._work, self._idle, self._failed, self._give_up_lease)

    # -- one batch -------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The committed checkpoint: every selected event up to here has been acknowledged by the broker."""
        return self.storage.checkpoint(self.checkpoint_name, 1)

    def behind(self) -> int:
        """Positions of the log after the checkpoint (selected or not)."""
        return self.storage.head() - self.position

    def run_once(self) -> int:
        """Publish the next batch and move the checkpoint past it; return how many events were published.

        Raises:
            PublishError: the broker did not acknowledge them (the checkpoint stays, so they are published again).
            StorageError: the storage failed.
        """
        return self._step()[0]

    def catch_up(self) -> int:
        """Run batches until the checkpoint reaches the head of the log; return how many events were published."""
        total = 0
        while True:
            published, moved = self._step()
            total += published
            if not moved:
                return total

    def _step(self) -> tuple[int, bool]:
        """One batch: ``(events published, whether the checkpoint moved)``."""
        if self.leased and not self.storage.acquire(self.checkpoint_name):
            return 0, False  # another process relays under this name
        start = self.position
        if self._names is not None:
            head = self.storage.head()  # before the read: everything up to it is visible to the read
            selected = self.storage.read(start, self.batch, self._names)
            last = selected[-1].position if selected else start
            # A short batch holds every selected event up to the head read above: the rest of it is not selected.
            end = last if len(selected) == self.batch else max(last, head)
        else:
            events = self.storage.read(start, self.batch)
            predicate = self._predicate
            selected = events if predicate is None else [event for event in events if predicate(event)]
            end = events[-1].position if events else start
        if selected:
            try:
                self.publisher.publish(selected)
            except PublishError as exc:
                if exc.acked > 0:  # keep what the broker did take: fewer events to publish again
                    self._commit(selected[min(exc.acked, len(selected)) - 1].position)
                    self.published += min(exc.acked, len(selected))
                raise
        if end > start:
            self._commit(end)
            self.published += len(selected)
        return len(selected), end > start

    def _commit(self, position: int) -> None:
        with self.storage.session(self.checkpoint_name, 1) as session:
            if position > session.position:  # never backwards, should another relay have moved it meanwhile
                session.advance(position)

    # -- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Relay in a background thread until :meth:`stop`, retrying failures forever.

        A failure (broker down, storage down) is logged and retried after a capped
        exponential backoff; the checkpoint does not move until the broker acknowledges.
        """
        self._runner.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread after its current batch, and give up the lease (another relay takes it)."""
        self._runner.stop(timeout)

    def wake(self) -> None:
        """Look at the log now rather than at the next poll (e.g. after a commit in this process)."""
        self._runner.wake()

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _work(self) -> bool:
        self._head = self.storage.head()  # before the batch: an append after this read ends the idle wait
        _published, moved = self._step()
        if self.failures:
            log.info("relay recovered", relay=self.name, failed_attempts=self.failures)
            self.failures = 0
        return moved

    def _failed(self, exc: Exception) -> float:
        # Broker or storage down: wait and try again; never skip, never die.
        self.failures += 1
        delay: float = min(self.backoff * 2.0 ** (self.failures - 1), self.max_backoff)
        log.error("relay failed, will retry", relay=self.name, attempt=self.failures, retry_in=delay,
                  error_type=qualname(type(exc)), error=str(exc))
        return delay

    def _idle(self) -> None:
        """Wait for a wake-up, a new head of the log, a stop, or ``poll_interval`` s."""
        head = self._head
        self._runner.idle_until(lambda: self.storage.head() != head, self.poll_interval, self.watch_interval)

    def _give_up_lease(self) -> None:
        # The lease goes with the thread, whenever it ends.
        if self.leased:
            with contextlib.suppress(Exception):  # a storage that is down has freed its locks already
                self.storage.release(self.checkpoint_name)


class Inbox:
    """Append received events to this service's own log, once each: the log's ``event_id`` is unique.

    The service's own :class:`~mediator.readmodels.ReadModels` then project them
    (delivered in the background or by a worker: inline projections run only in
    commands' transactions). ``accept`` keeps only those type names; the rest are
    dropped (a consumer should filter by subject rather than receive them at all).

    One bad message never holds up the others: an event the storage refuses (a value it cannot store, such as a
    NUL character in PostgreSQL text) is *quarantined* with the reason (``storage.quarantined(name)``), and the
    rest of the batch is appended. A storage that is down raises :class:`~mediator.readmodels.StorageError`:
    nothing is acknowledged, and the broker delivers the batch again.

    The storage must refuse a second event with the same id (SQLite and
    PostgreSQL do, with a UNIQUE column); the in-memory storage does not.
    """

    def __init__(self, storage: Storage, *, accept: Collection[str] | None = None, name: str = "inbox") -> None:
        from mediator.readmodels.memory import MemoryStorage

        if isinstance(storage, MemoryStorage):
            raise TypeError("MemoryStorage does not refuse duplicate event ids; give the Inbox a SQLite or "
                            "PostgreSQL storage.")
        self.storage = storage
        self.accept = None if accept is None else frozenset(accept)
        self.name = name
        self.received = 0
        """New events appended since this inbox was made."""
        self.duplicates = 0
        """Events dropped because their id was already in the log."""
        self.quarantined = 0
        """Events the storage refused, kept aside with why, since this inbox was made."""

    def receive(self, events: Sequence[NewEvent]) -> int:
        """Append the events of ``events`` not yet in the log, in order, and commit; return how many were new.

        When this returns, they are committed (or quarantined): the caller may acknowledge them to the broker.
        """
        accepted = [e for e in events if self.accept is None or e.type_name in self.accept]
        unique: dict[str, NewEvent] = {}
        for event in accepted:
            unique.setdefault(event.event_id, event)  # a broker may deliver one message twice in a batch
        self.duplicates += len(accepted) - len(unique)
        batch = list(unique.values())
        if not batch:
            return 0
        if self._append(batch) == _APPENDED:  # the usual case: none seen before, none refused: one transaction
            self.received += len(batch)
            return len(batch)
        new = 0
        for event in batch:  # a repeat or a refused event among them: one at a time
            outcome = self._append([event])
            if outcome == _APPENDED:
                new += 1
            elif outcome == _DUPLICATE:
                self.duplicates += 1
            else:
                self.storage.quarantine(self.name, event, outcome)
                self.quarantined += 1
                log.error("received event quarantined", inbox=self.name, event_id=event.event_id,
                          type_name=event.type_name, reason=outcome)
        self.received += new
        return new

    def _append(self, events: Sequence[NewEvent]) -> str:
        """Append ``events`` in one transaction: ``_APPENDED``, ``_DUPLICATE`` (one of their ids is in the log;
        nothing appended), or the reason the storage refused them (nothing appended)."""
        session = self.storage.begin()
        try:
            session.append(events)
            session.commit()
        except StorageDataError as exc:
            session.rollback()
            return str(exc)
        except StorageError as exc:
            session.rollback()
            if _is_duplicate(exc):
                return _DUPLICATE
            raise
        except BaseException:
            session.rollback()
            raise
        return _APPENDED


_APPENDED, _DUPLICATE = "appended", "duplicate"


def _is_duplicate(error: BaseException) -> bool:
    """Whether a storage error was the driver refusing a repeated event id (DB-API ``IntegrityError``).

    Appending to the log can break no other constraint: positions are handed out under the writer's lock.
    """
    cause = error.__cause__
    while cause is not None:
        if any(klass.__name__ == "IntegrityError" for klass in type(cause).__mro__):
            return True
        cause = cause.__cause__
    return False


__all__ = ["KEY", "META", "MSG_ID", "POSITION", "RECORDED_AT", "TYPE", "VERSION", "Consumer", "Inbox",
           "MemoryPublisher", "PublishError", "Publisher", "Relay", "RunningConsumer", "Selection", "event_from",
           "message_headers"]
