"""OpenTelemetry for the mediator and the read-model engine (the optional ``otel`` extra).

``Tracing`` is a behaviour that opens a span per dispatch; ``trace_projections``
records projection batches as spans.

``instrument(engine)`` exports, per projection: lag in positions and in seconds
(observable gauges read when the exporter collects), the number of parked and
blocked events, a counter of events applied (throughput), and a counter of idempotent commands' repeats absorbed
(answered from their record without running the handler), and counters of process managers' steps and
compensations and of scheduled commands fired.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import current_context
from ._errors import MissingExtraError
from ._messages import kind_of, qualname
from .readmodels import Lag, ReadModels, StoredEvent

try:
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
    from opentelemetry.trace import Link, Status, StatusCode
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


class Tracing:
    """A behaviour that opens an OpenTelemetry span per dispatch: type, kind, correlation id, outcome.

    Nested dispatches become child spans (the span context travels in the same
    context variables as the dispatch context). Put it outermost, or right after
    ``Logging``, so the span covers the whole chain.
    """

    needs_scope = True

    def __init__(self, tracer_provider: Any = None) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer("mediator")
        self.name = ""
        self.attributes: dict[str, str] = {}

    def for_message(self, message_type: type, build: Any) -> Tracing:
        kind = kind_of(message_type)
        bound = Tracing.__new__(Tracing)
        bound.tracer = self.tracer
        bound.name = f"{kind.value if kind else 'message'} {message_type.__name__}"
        bound.attributes = {"mediator.message_type": qualname(message_type),
                            "mediator.kind": kind.value if kind else "?"}
        return bound

    def _start(self) -> Any:
        return self.tracer.start_as_current_span(self.name, attributes=self.attributes)

    @staticmethod
    def _finish(span: Any, exc: BaseException | None) -> None:
        span.set_attribute("mediator.correlation_id", current_context().correlation_id)
        if exc is None:
            span.set_attribute("mediator.outcome", "ok")
        else:
            span.set_attribute("mediator.outcome", "error")
            span.set_attribute("mediator.error_type", qualname(type(exc)))
            span.set_status(Status(StatusCode.ERROR, str(exc)))

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        with self._start() as span:
            try:
                result = next(message)
            except BaseException as exc:
                self._finish(span, exc)
                raise
            self._finish(span, None)
            return result

    async def handle_async(self, message: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        with self._start() as span:
            try:
                result = await next(message)
            except BaseException as exc:
                self._finish(span, exc)
                raise
            self._finish(span, None)
            return result


MAX_LINKS = 32


def trace_projections(engine: ReadModels, tracer_provider: Any = None) -> None:
    """Link projections to the dispatches that caused them.

    Each commit stores the current trace context with its events; each projection
    batch records a span linked to the spans of the commands whose events it
    applied (a projection runs later, in another thread or process, so a link
    rather than a parent).
    """
    tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("mediator.readmodels")

    def context_of_commit() -> dict[str, str]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier

    def record(name: str, events: list[StoredEvent]) -> None:
        links: list[Link] = []
        seen: set[int] = set()
        for event in events:
            meta = json.loads(event.meta or "{}")
            parent = trace.get_current_span(propagate.extract(meta)).get_span_context()
            if parent.is_valid and parent.span_id not in seen and len(links) < MAX_LINKS:
                seen.add(parent.span_id)
                links.append(Link(parent))
        span = tracer.start_span(f"projection {name}", links=links,
                                 attributes={"mediator.projection": name, "mediator.events": len(events),
                                             "mediator.first_position": events[0].position,
                                             "mediator.last_position": events[-1].position})
        span.end()

    engine.event_metadata.append(context_of_commit)
    engine.on_batch.append(record)


__all__ = ["Tracing", "instrument", "trace_projections"]
