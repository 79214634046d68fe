"""OpenTelemetry metrics for the read-model engine (the optional ``otel`` extra).

``instrument(engine)`` exports, per projection: lag in positions and in seconds
(observable gauges read when the exporter collects), the number of parked and
blocked events, and a counter of events applied (throughput).
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from mediator.readmodels import ReadModels

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
        return [Observation(row.positions_behind, _attributes(row.projection, row.generation, row.rebuilding))
                for row in engine.lag()]

    def lag_seconds(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(row.seconds_behind, _attributes(row.projection, row.generation, row.rebuilding))
                for row in engine.lag()]

    def parked(options: CallbackOptions) -> Iterable[Observation]:
        counts = dict.fromkeys(engine.projections, 0)
        for letter in engine.dead_letters():
            counts[letter.projection] = counts.get(letter.projection, 0) + 1
        return [Observation(count, {"projection": name}) for name, count in counts.items()]

    meter.create_observable_gauge("mediator.projection.lag.positions", [lag_positions], unit="{event}",
                                  description="Events between the head of the log and the projection's checkpoint")
    meter.create_observable_gauge("mediator.projection.lag.seconds", [lag_seconds], unit="s",
                                  description="Age of the oldest event the projection has not applied")
    meter.create_observable_gauge("mediator.projection.parked", [parked], unit="{event}",
                                  description="Parked and blocked events of the projection")
    return meter


def _attributes(projection: str, generation: int, rebuilding: bool) -> dict[str, str | int | bool]:
    return {"projection": projection, "generation": generation, "rebuilding": rebuilding}
