"""OpenTelemetry spans per dispatch, nested as children, joined to an incoming HTTP request's trace."""

from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adapters.shop_app import build_shop
from domain.messages import OrderItem, PlaceOrder
from mediator.testing import settle

from .test_shop import stocked
from .tokens import ADMIN, KEY


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def test_a_span_per_dispatch_with_nested_dispatches_as_children(tmp_path: Path) -> None:
    tracer_provider, exporter = provider()
    shop = build_shop(tmp_path / "shop.db", logging=False, tracer_provider=tracer_provider)
    mediator = shop.mediator
    customer, _lamps, desk, _floor = stocked(shop)
    exporter.clear()
    mediator.send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=1),)))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    place, publish, reserve = spans["send PlaceOrder"], spans["publish OrderPlaced"], spans["send ReserveStock"]
    assert place.attributes is not None
    assert place.attributes["messaging.system"] == "mediator"
    assert place.attributes["messaging.operation.type"] == "process"
    assert place.attributes["messaging.operation.name"] == "send"
    assert place.attributes["messaging.destination.name"] == "domain.messages.PlaceOrder"
    assert "error.type" not in place.attributes
    assert publish.parent is not None
    assert publish.parent.span_id == place.context.span_id
    assert reserve.parent is not None
    assert reserve.parent.span_id == publish.context.span_id
    assert reserve.attributes is not None
    assert reserve.attributes["messaging.message.conversation_id"] == place.attributes[
        "messaging.message.conversation_id"]
    exporter.clear()
    settle(shop.engine)
    projections = [span for span in exporter.get_finished_spans() if span.name.startswith("process ")]
    assert projections
    linked = {link.context.span_id for span in projections for link in span.links}
    assert place.context.span_id in linked  # the OrderPlaced projections link back to the command's span
    shop.close()


def test_dispatch_spans_join_the_incoming_http_trace(tmp_path: Path) -> None:
    import httpx
    from opentelemetry import trace

    from adapters.shop_http import asgi

    tracer_provider, exporter = provider()
    shop = build_shop(tmp_path / "shop.db", logging=False, tracer_provider=tracer_provider)
    app = asgi(shop, jwt_key=KEY)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    transport = httpx.ASGITransport(app=app)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            return await client.post("/categories", json={"name": "Lamps"}, headers={
                **ADMIN, "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})

    import asyncio

    assert asyncio.run(call()).status_code == 201
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "send CreateCategory"]
    assert trace.format_trace_id(span.context.trace_id) == trace_id
    shop.close()
