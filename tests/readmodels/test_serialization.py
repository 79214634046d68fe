"""Events to JSON and back by registered, versioned names; old versions upcast; bad data refused clearly."""

import datetime as dt
import decimal
import enum
import json
import math
import re
import uuid
from typing import Any, NewType

import attrs
import pytest
from hypothesis import event as event_
from hypothesis import given
from hypothesis import strategies as st

from mediator import Event
from mediator.readmodels import EventFieldError, EventRegistrationError, EventTypes, UndecodableEventError
from mediator.readmodels.memory import MemoryStorage

from .bank import Deposit, make_bank

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


@attrs.frozen(kw_only=True)
class NumberNoted(Event):
    count: int
    ratio: float
    amount: decimal.Decimal


def registry() -> EventTypes:
    types = EventTypes()
    types.register(NumberNoted, name="number.noted")
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
def test_any_text_storage_can_hold_round_trips_and_the_rest_is_refused(customer_id: str, full_name: str) -> None:
    types = registry()
    event = Renamed(customer_id=customer_id, full_name=full_name)
    holdable = not re.search("[\x00\ud800-\udfff]", customer_id + full_name)  # no NUL, no lone surrogate
    if holdable:
        assert types.decode(*types.encode(event)) == event
    else:
        with pytest.raises(EventFieldError):
            types.encode(event)


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


# -- nothing is stored that cannot be read back ------------------------------------------------------------------


def test_an_event_with_a_wrongly_typed_field_is_refused_at_encode_naming_it() -> None:
    types = registry()
    event = OrderPlaced(order_id=uuid.uuid4(), at=dt.datetime.now(dt.UTC), status=Status.OPEN,
                        lines=(Line(sku=Sku("a"), quantity=True, price=decimal.Decimal("NaN")),), note=3)  # type: ignore[arg-type]
    with pytest.raises(EventFieldError) as info:
        types.encode(event)
    assert info.value.errors == {"lines[0].quantity": ("must be a whole number",),
                                 "lines[0].price": ("must be finite",), "note": ("must be text",)}
    assert info.value.event is event
    assert isinstance(info.value, ValueError)
    assert "OrderPlaced cannot be stored: lines[0].quantity: must be a whole number" in str(info.value)


@pytest.mark.parametrize("amount", [1.5, True, math.inf, 2**63, decimal.Decimal(5)])
def test_a_command_recording_a_wrongly_typed_event_fails_and_writes_nothing(amount: Any) -> None:
    bank = make_bank(MemoryStorage())
    bank.mediator.send(Deposit(account="a", amount=5))
    bank.engine.catch_up()
    with pytest.raises(EventFieldError, match="amount"):
        bank.mediator.send(Deposit(account="b", amount=amount))
    assert bank.storage.head() == 1
    bank.engine.catch_up()
    assert bank.balances() == {"a": 5}
    assert bank.engine.dead_letters("balances") == []


def test_an_event_nested_too_deep_in_an_unchecked_field_is_refused_naming_it() -> None:
    @attrs.frozen(kw_only=True)
    class Noted(Event):
        payload: Any

    types = EventTypes()
    types.register(Noted)
    nested: list[Any] = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(EventFieldError) as info:
        types.encode(Noted(payload=nested))
    assert info.value.errors == {"payload": ("is nested too deeply to store",)}


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("name", "version", "data"),
    [
        pytest.param("customer.renamed", "3", '{"customer_id": "c", "full_name": "x"}', id="text version"),
        pytest.param("customer.renamed", None, '{"customer_id": "c", "full_name": "x"}', id="no version"),
        pytest.param("customer.renamed", 3.0, '{"customer_id": "c", "full_name": "x"}', id="float version"),
        pytest.param("customer.renamed", 0, '{"customer_id": "c", "full_name": "x"}', id="version 0"),
        pytest.param(None, 1, "{}", id="no type name"),
        pytest.param(["list"], 1, "{}", id="unhashable type name"),
        pytest.param("nobody.knows", 1, "{}", id="unknown type name"),
        pytest.param("customer.renamed", 3, '["c", "x"]', id="JSON list"),
        pytest.param("customer.renamed", 3, '"text"', id="JSON text"),
        pytest.param("customer.renamed", 3, "null", id="JSON null"),
        pytest.param("customer.renamed", 3, '{"customer_id": "c", "full_name": ', id="malformed JSON"),
        pytest.param("customer.renamed", 3, None, id="no data"),
        pytest.param("customer.renamed", 3, DEEP, id="deep nesting"),
        pytest.param("customer.renamed", 3, '{"customer_id": ' + DEEP + ', "full_name": "x"}', id="deep field"),
        pytest.param("customer.renamed", 3, '{"customer_id": ' + "9" * 5000 + ', "full_name": "x"}',
                     id="huge number"),
        pytest.param("customer.renamed", 3, '{"customer_id": 1e999, "full_name": "x"}', id="infinite number"),
        pytest.param("number.noted", 1, '{"count": ' + "9" * 400 + ', "ratio": 1.0, "amount": "1"}',
                     id="whole number beyond 64 bits"),
        pytest.param("number.noted", 1, '{"count": 1, "ratio": 1e400, "amount": "1"}', id="infinite float"),
        pytest.param("number.noted", 1, '{"count": 1, "ratio": NaN, "amount": "1"}', id="NaN float"),
        pytest.param("number.noted", 1, '{"count": 1, "ratio": ' + "9" * 400 + ', "amount": "1"}',
                     id="float field holding a whole number beyond 64 bits"),
        pytest.param("number.noted", 1, '{"count": 1, "ratio": 1.0, "amount": "NaN"}', id="NaN decimal"),
        pytest.param("number.noted", 1, '{"count": 1, "ratio": 1.0, "amount": "-Infinity"}', id="infinite decimal"),
        pytest.param("number.noted", 1, '{"count": true, "ratio": 1.0, "amount": "1"}', id="bool as a whole number"),
        pytest.param("customer.renamed", 3, '{"customer_id": 5, "full_name": "x"}', id="field of the wrong type"),
        pytest.param("customer.renamed", 1, '["c", "x"]', id="upcaster on a list"),
        pytest.param("order.placed", 1, '{"order_id": "not a uuid", "at": 5, "lines": {}, "status": "gone"}',
                     id="rich fields of the wrong types"),
        pytest.param("order.placed", 1, json.dumps({
            "order_id": str(uuid.uuid4()), "at": "2026-01-01T00:00:00", "status": "open",
            "lines": [{"sku": "a", "quantity": 1, "price": {"x": 1}}]}), id="nested field of the wrong type"),
    ],
)
def test_a_malformed_stored_row_is_undecodable_and_nothing_else(name: Any, version: Any, data: Any) -> None:
    types = registry()
    with pytest.raises(UndecodableEventError):
        types.decode(name, version, data)
    entry = types.entries().get(name) if isinstance(name, str) else None
    if entry is not None and type(version) is int and version == entry.version:
        with pytest.raises(UndecodableEventError):
            types.decoder(entry)(data)


def test_a_stored_list_is_named_as_not_an_object() -> None:
    with pytest.raises(UndecodableEventError, match="the data is a JSON list, not an object"):
        registry().decode("customer.renamed", 3, '["c", "x"]')


def test_the_reason_of_an_undecodable_row_stays_short() -> None:
    with pytest.raises(UndecodableEventError) as info:
        registry().decode("customer.renamed", 3, json.dumps({"customer_id": list(range(100_000)), "full_name": "x"}))
    assert len(info.value.reason) < 200


@attrs.frozen(kw_only=True)
class Measured(Event):
    count: int
    ratio: float
    label: str
    flag: bool
    amount: decimal.Decimal
    at: dt.datetime
    day: dt.date
    status: Status
    note: str | None
    lines: tuple[Line, ...]
    tags: frozenset[str]


ANYTHING = st.one_of(  # no signalling NaN: it cannot be hashed into a frozenset
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.decimals(allow_nan=False), st.dates(),
    st.datetimes(), st.sampled_from(Status), st.binary(max_size=2),
)


def measured(wrong: bool) -> st.SearchStrategy[Measured]:
    """Events of ``Measured``: their fields of the declared types, or (``wrong``) as often of any type at all."""

    def fields_of(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(values, ANYTHING) if wrong else values

    return st.builds(
        Measured,
        count=fields_of(st.integers()), ratio=fields_of(st.floats()), label=fields_of(st.text()),
        flag=fields_of(st.booleans()), amount=fields_of(st.decimals()),
        at=fields_of(st.datetimes(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5))]))),
        day=fields_of(st.dates()), status=fields_of(st.sampled_from(Status)), note=fields_of(st.none() | st.text()),
        lines=fields_of(st.lists(st.builds(Line, sku=fields_of(st.text()), quantity=fields_of(st.integers()),
                                           price=fields_of(st.decimals())), max_size=3).map(tuple)),
        tags=fields_of(st.frozensets(fields_of(st.text()), max_size=3)),
    )


@given(st.booleans().flatmap(measured))
def test_any_event_that_encodes_decodes_back_equal(event: Measured) -> None:
    types = EventTypes()
    types.register(Measured, name="measured")
    try:
        stored = types.encode(event)
    except EventFieldError:
        event_("refused")
        return
    event_("stored")
    assert types.decode(*stored) == event
    assert types.decoder(types.entry(Measured))(stored[2]) == event


@attrs.frozen(kw_only=True)
class Tagged(Event):
    tags: tuple[str, ...]
    counts: list[int] = attrs.field(factory=list)


@pytest.mark.parametrize("data", ['{"tags": "abc"}', '{"tags": {"a": 1}}', '{"tags": [], "counts": "12"}'])
def test_a_collection_field_given_text_or_an_object_is_refused_not_read_as_its_letters(data: str) -> None:
    types = EventTypes()
    types.register(Tagged, name="tagged")
    assert types.decode("tagged", 1, '{"tags": ["a", "b"], "counts": [1]}') == Tagged(tags=("a", "b"), counts=[1])
    with pytest.raises(UndecodableEventError, match="expected an array"):
        types.decode("tagged", 1, data)
