"""Events to JSON and back by registered, versioned names; old versions upcast; bad data refused clearly."""

import datetime as dt
import decimal
import enum
import uuid
from typing import NewType

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediator import Event
from mediator.readmodels import EventRegistrationError, EventTypes, UndecodableEventError

Sku = NewType("Sku", str)


class Status(enum.Enum):
    OPEN = "open"
    SHIPPED = "shipped"


@attrs.frozen(kw_only=True)
class Line:
    sku: Sku
    quantity: int
    price: decimal.Decimal


@attrs.frozen(kw_only=True)
class OrderPlaced(Event):
    order_id: uuid.UUID
    at: dt.datetime
    lines: tuple[Line, ...]
    status: Status
    note: str | None = None
    tags: frozenset[str] = frozenset()
    totals: dict[str, decimal.Decimal] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Renamed(Event):
    customer_id: str
    full_name: str


def registry() -> EventTypes:
    types = EventTypes()
    types.register(OrderPlaced, name="order.placed")
    types.register(
        Renamed, name="customer.renamed", version=3,
        upcasters={1: lambda d: {"customer_id": d["id"], "name": d["name"]},
                   2: lambda d: {"customer_id": d["customer_id"], "full_name": d["name"]}},
    )
    return types


def test_a_rich_event_survives_the_round_trip() -> None:
    event = OrderPlaced(
        order_id=uuid.uuid4(), at=dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC),
        lines=(Line(sku=Sku("a"), quantity=2, price=decimal.Decimal("9.99")),), status=Status.OPEN,
        tags=frozenset({"gift"}), totals={"net": decimal.Decimal("19.98")},
    )
    types = registry()
    name, version, data = types.encode(event)
    assert (name, version) == ("order.placed", 1)
    assert '"price":"9.99"' in data
    assert types.decode(name, version, data) == event


def test_old_versions_are_upcast_step_by_step() -> None:
    types = registry()
    assert types.decode("customer.renamed", 1, '{"id": "c1", "name": "Ada"}') == Renamed(
        customer_id="c1", full_name="Ada")
    assert types.decode("customer.renamed", 2, '{"customer_id": "c2", "name": "Bo"}') == Renamed(
        customer_id="c2", full_name="Bo")


@pytest.mark.parametrize(
    ("name", "version", "data", "reason"),
    [
        ("nobody.knows", 1, "{}", "no event type is registered under this name"),
        ("customer.renamed", 4, "{}", "newer than the registered version 3"),
        ("customer.renamed", 3, "not json", "JSONDecodeError"),
        ("customer.renamed", 3, '{"customer_id": "c"}', "KeyError"),
        ("customer.renamed", 3, '{"customer_id": 5, "full_name": "x"}', "expected str, got 5"),
    ],
)
def test_undecodable_data_is_refused_with_its_reason(name: str, version: int, data: str, reason: str) -> None:
    with pytest.raises(UndecodableEventError, match=reason) as info:
        registry().decode(name, version, data)
    assert isinstance(info.value, ValueError)
    assert info.value.type_name == name


def test_registration_mistakes_are_refused_at_once() -> None:
    types = EventTypes()
    with pytest.raises(EventRegistrationError, match="not an attrs Event class"):
        types.register(Line)
    with pytest.raises(ValueError, match=r"no upcaster from version\(s\) \[1\]"):
        types.register(Renamed, version=2)
    types.register(Renamed, name="x")
    with pytest.raises(ValueError, match="already used by"):
        types.register(OrderPlaced, name="x")
    with pytest.raises(LookupError, match="is not a registered event type"):
        types.encode(OrderPlaced(order_id=uuid.uuid4(), at=dt.datetime.now(dt.UTC), lines=(), status=Status.OPEN))


def test_values_that_json_cannot_carry_are_refused_when_recording() -> None:
    @attrs.frozen(kw_only=True)
    class Odd(Event):
        payload: object

    types = EventTypes()
    types.register(Odd)
    with pytest.raises(TypeError, match="Cannot store a object in an event"):
        types.encode(Odd(payload=object()))


@given(
    st.text(), st.text(),
)
def test_any_text_round_trips(customer_id: str, full_name: str) -> None:
    types = registry()
    event = Renamed(customer_id=customer_id, full_name=full_name)
    assert types.decode(*types.encode(event)) == event


def test_stored_data_with_whitespace_or_trailing_text_decodes_as_json_loads_says() -> None:
    @attrs.frozen(kw_only=True)
    class Noted(Event):
        text: str
        count: int = 0

    types = EventTypes()
    types.register(Noted, name="t.noted")
    decode = types.decoder(types.entry(Noted))
    assert decode('{"text": "a", "count": 2}') == Noted(text="a", count=2)
    assert decode('  {"text": "b"}\n') == Noted(text="b")  # written by hand or another tool: still JSON
    with pytest.raises(UndecodableEventError, match="Extra data"):
        decode('{"text": "c"} {"text": "d"}')
    with pytest.raises(UndecodableEventError, match="expected str"):
        decode('{"text": 3}')
