"""OpenTelemetry for the mediator, the read-model engine and the brokers (the optional ``otel`` extra), named by the
OpenTelemetry semantic conventions for messaging.

- ``Tracing``, a behaviour: a span per dispatch (``send PlaceOrder``, ``ask GetOrderDetails``, ``publish
  OrderPlaced``; ``messaging.system`` ``mediator``, ``messaging.operation.type`` ``process``,
  ``messaging.destination.name`` the message type) and its time in ``messaging.process.duration``.
- ``trace_projections(engine)``: the trace context of each command stored with its events; a span per projection
  batch (``process <projection>``) linked to the commands' spans, and its time in ``messaging.process.duration``.
- ``TracedPublisher(publisher)`` for a relay (``send <destination>``, ``messaging.client.operation.duration``,
  ``messaging.client.sent.messages``) and ``traced_delivery(deliver, ...)`` for a consumer (``process
  <destination>``, ``messaging.process.duration``, ``messaging.client.consumed.messages``), both linked to the
  producing commands' spans: the trace context travels in each event's metadata, through the outbox and every
  broker, into the consuming service's log and its projections' spans.

``instrument(engine)`` exports, per projection (per partition of a partitioned one): lag in positions and in
seconds (observable gauges read when the exporter collects), the number of parked and blocked events, a counter of
events applied (throughput), a counter of idempotent commands' repeats absorbed (answered from their record without
running the handler), and counters of process managers' steps and compensations and of scheduled commands fired.
These have no convention and keep the ``mediator.`` prefix.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from . import current_context
from ._errors import MissingExtraError
from ._messages import kind_of, qualname
from .readmodels import Lag, NewEvent, ReadModels, StoredEvent
from .relay import Publisher

try:
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised by the wheel test
    raise MissingExtraError(__name__, "otel", _missing.name) from _missing

METER_NAME = "mediator.readmodels"


def instrument(engine: ReadModels, meter_provider: MeterProvider | None = None) -> Meter:
    """Register the engine's metrics with ``meter_provider`` (the global one by default)."""
    meter = (meter_provider or metrics.get_meter_provider()).get_meter(METER_NAME)
    applied = meter.create_counter(
        "mediator.projection.events_applied", unit="{event}", description="Events a projection dealt with"
    )

    def count(name: str, events: int) -> None:
        applied.add(events, {"projection": name})

    engine.on_applied.append(count)

    def lag_positions(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(row.positions_behind, _attributes(row))
                for row in engine.lag()]

    def lag_seconds(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(row.seconds_behind, _attributes(row))
                for row in engine.lag()]

    def current(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(getattr(row, field), _current(row))
                    for row in engine.lag() if not row.rebuilding]
        return observe

    def stalled(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(row.health in ("stalled", "holding")), _current(row))
                for row in engine.lag() if not row.rebuilding]

    meter.create_observable_gauge("mediator.projection.lag.positions", [lag_positions], unit="{event}",
                                  description="Events between the head of the log and the last position up to which "
                                              "the projection applied every event (parked ones are not applied)")
    meter.create_observable_gauge("mediator.projection.lag.seconds", [lag_seconds], unit="s",
                                  description="Age of the oldest event the projection has not applied")
    meter.create_observable_gauge("mediator.projection.parked", [current("parked")], unit="{event}",
                                  description="Events of the projection that failed, parked and retried on a schedule")
    meter.create_observable_gauge("mediator.projection.blocked", [current("blocked")], unit="{event}",
                                  description="Events waiting behind a parked event of their key")
    meter.create_observable_gauge("mediator.projection.parked.age", [current("oldest_parked_seconds")], unit="s",
                                  description="Age of the oldest parked or blocked event")
    def absorbed(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(count, {"command": command})
                for command, count in list(engine.idempotency.absorbed.items())]

    meter.create_observable_counter(
        "mediator.command.duplicates_absorbed", [absorbed], unit="{command}",
        description="Repeats of idempotent commands answered from their record, the handler not run")

    def steps(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(track.steps, {"process": name}) for name, track in engine.processes.tracks.items()]

    def compensated(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(track.compensated, {"process": name})
                for name, track in engine.processes.tracks.items()]

    def fired(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(count, {"command": command}) for command, count in list(engine.schedules.fired.items())]

    meter.create_observable_counter("mediator.process.steps", [steps], unit="{step}",
                                    description="Process manager steps taken (committed) in this process")
    meter.create_observable_counter("mediator.process.compensations", [compensated], unit="{step}",
                                    description="Steps that failed every try and were compensated")
    meter.create_observable_counter("mediator.schedule.fired", [fired], unit="{command}",
                                    description="Scheduled commands (timeouts) dispatched when due")
    meter.create_observable_gauge("mediator.projection.stalled", [stalled], unit="1",
                                  description="1 while the projection's events fail alike (its store is failing)")
    return meter


def _attributes(row: Lag) -> dict[str, str | int | bool]:
    found: dict[str, str | int | bool] = {"projection": row.projection, "generation": row.generation,
                                          "rebuilding": row.rebuilding}
    if row.partition is not None:  # a partitioned projection: a series per partition
        found["partition"] = row.partition
    return found


def _current(row: Lag) -> dict[str, str | int | bool]:
    return {"projection": row.projection} if row.partition is None else {
        "projection": row.projection, "partition": row.partition}


# -- the OpenTelemetry semantic conventions for messaging (https://opentelemetry.io/docs/specs/semconv/messaging/) --

SYSTEM = "messaging.system"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
DESTINATION = "messaging.destination.name"
CONSUMER_GROUP = "messaging.consumer.group.name"
BATCH_COUNT = "messaging.batch.message_count"
MESSAGE_ID = "messaging.message.id"
CONVERSATION_ID = "messaging.message.conversation_id"
ERROR_TYPE = "error.type"
PROCESS_DURATION = "messaging.process.duration"
OPERATION_DURATION = "messaging.client.operation.duration"
SENT = "messaging.client.sent.messages"
CONSUMED = "messaging.client.consumed.messages"
MEDIATOR = "mediator"
"""``messaging.system`` of in-process dispatch and of projections (no well-known value applies)."""
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                     2.5, 5.0, 7.5, 10.0)
"""The boundaries the conventions advise for messaging durations (seconds)."""
_OPERATION = {"command": "send", "query": "ask", "event": "publish"}
"""``messaging.operation.name`` of a dispatch, by the message's kind."""


def _tracer(provider: Any, name: str) -> Any:
    return (provider or trace.get_tracer_provider()).get_tracer(name)


def _meter(provider: Any, name: str) -> Meter:
    return (provider or metrics.get_meter_provider()).get_meter(name)


def _histogram(meter: Meter, name: str, description: str) -> Any:
    return meter.create_histogram(name, unit="s", description=description,
                                  explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS))


def _failed(span: Any, exc: BaseException, duration: Any, started: float, attributes: dict[str, str]) -> None:
    """Mark ``span`` failed (``error.type`` and an error status) and record the operation's duration with it."""
    kind = qualname(type(exc))
    span.set_attribute(ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR, str(exc)))
    duration.record(time.perf_counter() - started, {**attributes, ERROR_TYPE: kind})


def _batch(events: Sequence[StoredEvent | NewEvent]) -> dict[str, str | int]:
    """``messaging.batch.message_count`` for a batch of more than one message; ``messaging.message.id`` for one."""
    if len(events) == 1:
        return {MESSAGE_ID: events[0].event_id}
    return {BATCH_COUNT: len(events)}


def _links(events: Iterable[StoredEvent | NewEvent]) -> list[Link]:
    """Links to the spans of the commands that recorded ``events`` (their trace context is in each event's
    metadata, carried through the outbox and every broker), one per span, at most :data:`MAX_LINKS`."""
    links: list[Link] = []
    seen: set[int] = set()
    for event in events:
        try:
            meta = json.loads(event.meta or "{}")
        except ValueError:
            continue
        parent = trace.get_current_span(propagate.extract(meta)).get_span_context()
        if parent.is_valid and parent.span_id not in seen and len(links) < MAX_LINKS:
            seen.add(parent.span_id)
            links.append(Link(parent))
    return links


class Tracing:
    """A behaviour that opens an OpenTelemetry span per dispatch, by the messaging conventions, and records its
    duration in the ``messaging.process.duration`` histogram.

    The span is named ``<operation> <MessageType>`` (``send PlaceOrder``, ``ask GetOrderDetails``, ``publish
    OrderPlaced``) and carries ``messaging.system`` ``mediator``, ``messaging.operation.type`` ``process``,
    ``messaging.operation.name`` (``send``, ``ask``, ``publish``), ``messaging.destination.name`` (the message
    type's qualified name), ``messaging.message.conversation_id`` (the correlation id) and, on failure,
    ``error.type`` with an error status. Nested dispatches become child spans (the span context travels in the
    same context variables as the dispatch context). Put it outermost, or right after ``Logging``, so the span
    covers the whole chain.
    """

    needs_scope = True

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.tracer = _tracer(tracer_provider, "mediator")
        self.duration = _histogram(_meter(meter_provider, "mediator"), PROCESS_DURATION,
                                   "How long dispatching a message to its handlers took")
        self.name = ""
        self.attributes: dict[str, str] = {}
        self.measured: dict[str, str] = {}

    def for_message(self, message_type: type, build: Any) -> Tracing:
        kind = kind_of(message_type)
        operation = _OPERATION.get(kind.value if kind else "", "dispatch")
        bound = Tracing.__new__(Tracing)
        bound.tracer, bound.duration = self.tracer, self.duration
        bound.name = f"{operation} {message_type.__name__}"
        bound.measured = {SYSTEM: MEDIATOR, OPERATION_TYPE: "process", OPERATION_NAME: operation,
                          DESTINATION: qualname(message_type)}
        bound.attributes = dict(bound.measured)
        return bound

    def _start(self) -> Any:
        # A process span is a CONSUMER span by the conventions, in process or not.
        return self.tracer.start_as_current_span(self.name, kind=SpanKind.CONSUMER, attributes=self.attributes)

    def _finish(self, span: Any, exc: BaseException | None, started: float) -> None:
        span.set_attribute(CONVERSATION_ID, current_context().correlation_id)
        if exc is None:
            self.duration.record(time.perf_counter() - started, self.measured)
        else:
            _failed(span, exc, self.duration, started, self.measured)

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        started = time.perf_counter()
        with self._start() as span:
            try:
                result = next(message)
            except BaseException as exc:
                self._finish(span, exc, started)
                raise
            self._finish(span, None, started)
            return result

    async def handle_async(self, message: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        with self._start() as span:
            try:
                result = await next(message)
            except BaseException as exc:
                self._finish(span, exc, started)
                raise
            self._finish(span, None, started)
            return result


MAX_LINKS = 32


def trace_projections(engine: ReadModels, tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Link projections to the dispatches that caused them.

    Each commit stores the current trace context with its events (the outbox keeps it, and every broker carries
    it in the ``Mediator-Meta`` header, so a consuming service's events keep it too); each projection batch
    records a span ``process <projection>`` (``messaging.system`` ``mediator``, ``messaging.operation.type``
    ``process``, ``messaging.destination.name`` the projection, ``messaging.batch.message_count``) linked to
    the spans of the commands whose events it applied (a projection runs later, in another thread or process,
    so a link rather than a parent), and its time in ``messaging.process.duration``.
    """
    tracer = _tracer(tracer_provider, "mediator.readmodels")
    duration = _histogram(_meter(meter_provider, "mediator.readmodels"), PROCESS_DURATION,
                          "How long a projection batch took, from its read to its commit")
    started: dict[str, float] = {}

    def context_of_commit() -> dict[str, str]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier

    def record(name: str, events: list[StoredEvent]) -> None:
        attributes = {SYSTEM: MEDIATOR, OPERATION_TYPE: "process", OPERATION_NAME: "process", DESTINATION: name}
        end = time.time_ns()
        begun = started.pop(name, None)
        span = tracer.start_span(f"process {name}", kind=SpanKind.CONSUMER, links=_links(events),
                                 start_time=None if begun is None else int(begun),
                                 attributes={**attributes, **_batch(events),
                                             "mediator.first_position": events[0].position,
                                             "mediator.last_position": events[-1].position})
        span.end(end_time=end)
        if begun is not None:
            duration.record((end - begun) / 1e9, attributes)

    def batch_started(name: str) -> None:
        started[name] = time.time_ns()

    engine.event_metadata.append(context_of_commit)
    engine.on_batch.append(record)
    engine.on_batch_start.append(batch_started)


# -- brokers: the relay's sends and a consumer's deliveries ------------------------------------------------------


class TracedPublisher:
    """A :class:`~mediator.relay.Publisher` that records each batch it publishes: a span ``send <destination>``
    (``messaging.operation.type`` ``send``, kind PRODUCER) linked to the commands that recorded its events, its
    time in ``messaging.client.operation.duration`` and its messages in ``messaging.client.sent.messages``.
    ``messaging.system`` and ``messaging.destination.name`` come from the publisher (its ``messaging_system`` and
    ``destination``: ``nats`` and the stream, ``rabbitmq`` and the exchange, ``redis`` and the stream)."""

    def __init__(self, publisher: Publisher, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.publisher = publisher
        self.system = str(getattr(publisher, "messaging_system", "unknown"))
        self.destination = str(getattr(publisher, "destination", "unknown"))
        self.tracer = _tracer(tracer_provider, "mediator.relay")
        meter = _meter(meter_provider, "mediator.relay")
        self.duration = _histogram(meter, OPERATION_DURATION, "How long publishing a batch took, to its acks")
        self.sent = meter.create_counter(SENT, unit="{message}", description="Messages the broker acknowledged")
        self.attributes = {SYSTEM: self.system, OPERATION_TYPE: "send", OPERATION_NAME: "send",
                           DESTINATION: self.destination}

    def publish(self, events: Sequence[StoredEvent]) -> None:
        attributes = self.attributes
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
                f"send {self.destination}", kind=SpanKind.PRODUCER, links=_links(events),
                attributes={**attributes, **_batch(events)}) as span:
            try:
                self.publisher.publish(events)
            except BaseException as exc:
                _failed(span, exc, self.duration, started, attributes)
                raise
        self.duration.record(time.perf_counter() - started, attributes)
        self.sent.add(len(events), attributes)

    def close(self) -> None:
        self.publisher.close()


def traced_delivery(deliver: Callable[[Sequence[NewEvent]], object], *, system: str, destination: str,
                    group: str | None = None, tracer_provider: Any = None,
                    meter_provider: Any = None) -> Callable[[Sequence[NewEvent]], object]:
    """``deliver`` (a consumer's, typically ``inbox.receive``) recording each batch: a span ``process
    <destination>`` (kind CONSUMER, ``messaging.operation.type`` ``process``) linked to the spans of the commands
    that recorded its events in the publishing service, its time in ``messaging.process.duration`` and its
    messages in ``messaging.client.consumed.messages``."""
    tracer = _tracer(tracer_provider, "mediator.relay")
    meter = _meter(meter_provider, "mediator.relay")
    duration = _histogram(meter, PROCESS_DURATION, "How long delivering a received batch took, to its commit")
    consumed = meter.create_counter(CONSUMED, unit="{message}", description="Messages handed to the consumer")
    attributes = {SYSTEM: system, OPERATION_TYPE: "process", OPERATION_NAME: "process", DESTINATION: destination}
    if group is not None:
        attributes[CONSUMER_GROUP] = group

    def traced(events: Sequence[NewEvent]) -> object:
        started = time.perf_counter()
        consumed.add(len(events), attributes)
        with tracer.start_as_current_span(f"process {destination}", kind=SpanKind.CONSUMER, links=_links(events),
                                          attributes={**attributes, **_batch(events)}) as span:
            try:
                result = deliver(events)
            except BaseException as exc:
                _failed(span, exc, duration, started, attributes)
                raise
        duration.record(time.perf_counter() - started, attributes)
        return result

    return traced


__all__ = ["TracedPublisher", "Tracing", "instrument", "trace_projections", "traced_delivery"]
