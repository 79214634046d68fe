"""OpenTelemetry by the messaging semantic conventions: dispatch and projection spans and their duration
histograms, and a command's trace context carried through the outbox and each broker, so that the relay's send,
the consumer's delivery and the consuming service's projection all link to the producing command's span. Read
with the SDK's in-memory exporter and reader."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from benchmarks.brokers import clean, consumer, publisher
from mediator import Registry
from mediator.otel import TracedPublisher, Tracing, trace_projections, traced_delivery
from mediator.readmodels import ReadModels
from mediator.readmodels.sqlite import SqliteStorage
from mediator.relay import Inbox, Relay
from tests.readmodels.bank import Balances, Deposit, deposit, event_types

from .test_kills import require


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self, prefix: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name.startswith(prefix)]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [point for resource in data.resource_metrics for scope in resource.scope_metrics
                for metric in scope.metrics if metric.name == name for point in metric.data.data_points]


def service(db: Path, telemetry: Telemetry) -> tuple[ReadModels, Any]:
    engine = ReadModels(SqliteStorage(db), event_types())
    engine.add(Balances())
    registry = Registry()
    registry.behaviour(Tracing(telemetry.tracer_provider, telemetry.meter_provider))
    trace_projections(engine, telemetry.tracer_provider, telemetry.meter_provider)
    engine.install(registry)
    registry.handle(Deposit).by(deposit)
    return engine, registry.build()


def linked_to(span: ReadableSpan, target: ReadableSpan) -> bool:
    return any(link.context.span_id == target.context.span_id for link in span.links)


def test_dispatch_and_projection_spans_and_durations_follow_the_conventions(tmp_path: Path) -> None:
    telemetry = Telemetry()
    engine, mediator = service(tmp_path / "app.db", telemetry)
    mediator.send(Deposit(account="a", amount=5))
    with pytest.raises(ValueError, match="positive"):
        mediator.send(Deposit(account="a", amount=-1))
    ok, failed = telemetry.spans("send Deposit")
    assert ok.kind is SpanKind.CONSUMER
    assert dict(ok.attributes or {}) == {
        "messaging.system": "mediator", "messaging.operation.type": "process", "messaging.operation.name": "send",
        "messaging.destination.name": "tests.readmodels.bank.Deposit",
        "messaging.message.conversation_id": (ok.attributes or {})["messaging.message.conversation_id"]}
    assert (failed.attributes or {})["error.type"] == "ValueError"
    assert failed.status.status_code is StatusCode.ERROR
    durations = {point.attributes.get("error.type"): point.count for point in telemetry.points(
        "messaging.process.duration") if point.attributes["messaging.system"] == "mediator"
        and point.attributes["messaging.operation.name"] == "send"}
    assert durations == {None: 1, "ValueError": 1}
    engine.catch_up()
    (batch,) = telemetry.spans("process balances")
    assert batch.kind is SpanKind.CONSUMER
    attributes = dict(batch.attributes or {})
    assert attributes["messaging.destination.name"] == "balances"
    assert attributes["messaging.operation.type"] == "process"
    assert "messaging.batch.message_count" not in attributes  # one event: its id instead
    assert attributes["messaging.message.id"]
    assert linked_to(batch, ok)
    projected = [point for point in telemetry.points("messaging.process.duration")
                 if point.attributes["messaging.destination.name"] == "balances"]
    assert sum(point.count for point in projected) == 1
    engine.storage.close()


@pytest.mark.parametrize("broker", ["nats", "rabbitmq", "redis"])
def test_the_trace_crosses_the_broker_to_the_consumers_projection(broker: str, tmp_path: Path) -> None:
    require(broker)
    topic = f"traced-{uuid.uuid4().hex[:10]}"
    telemetry = Telemetry()
    source, mediator = service(tmp_path / "source.db", telemetry)
    downstream, _ = service(tmp_path / "consumer.db", telemetry)
    inbox = Inbox(downstream.storage)
    taking = consumer(broker, topic, "downstream", traced_delivery(
        inbox.receive, system=broker, destination=topic, group="downstream",
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider))
    sending = TracedPublisher(publisher(broker, topic), telemetry.tracer_provider, telemetry.meter_provider)
    relay = Relay(source.storage, sending, leased=False)
    try:
        for account in ("a", "b", "a"):
            mediator.send(Deposit(account=account, amount=1))
        commands = telemetry.spans("send Deposit")
        assert relay.catch_up() == 3
        for _ in range(50):
            if inbox.received == 3:
                break
            taking.run_once(0.2)
        assert inbox.received == 3
        downstream.catch_up()
        (send,) = telemetry.spans(f"send {topic}")
        assert send.kind is SpanKind.PRODUCER
        assert dict(send.attributes or {})["messaging.system"] == broker
        assert dict(send.attributes or {})["messaging.operation.type"] == "send"
        deliveries = telemetry.spans(f"process {topic}")
        assert deliveries
        assert all(span.kind is SpanKind.CONSUMER for span in deliveries)
        assert (deliveries[0].attributes or {})["messaging.consumer.group.name"] == "downstream"
        projections = telemetry.spans("process balances")  # the consuming service's: the source ran none
        assert projections
        for command in commands:  # every hop links back to the command that recorded its event
            assert linked_to(send, command)
            assert any(linked_to(span, command) for span in deliveries)
            assert any(linked_to(span, command) for span in projections)
        sent = sum(p.value for p in telemetry.points("messaging.client.sent.messages"))
        consumed = sum(p.value for p in telemetry.points("messaging.client.consumed.messages"))
        assert (sent, consumed) == (3, 3)
        assert sum(p.count for p in telemetry.points("messaging.client.operation.duration")) == 1
    finally:
        taking.close()
        sending.close()
        source.storage.close()
        downstream.storage.close()
        clean(broker, topic, ["downstream"])
