"""Typed-field checks: a checker generated once per class refuses what the annotations (and storage) cannot hold."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import linecache
import math
import typing
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Literal, NewType

import attrs
import pytest

from mediator import Command, Registry, StreamQuery, Validation, ValidationError, WiringError
from mediator._errors import UnresolvedAnnotationsError
from mediator._fields import INT_MAX, INT_MIN, field_checker

Sku = NewType("Sku", str)
REF = uuid.UUID(int=1)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen(kw_only=True)
class Line:
    sku: Sku
    quantity: int


@attrs.frozen(kw_only=True)
class Everything:
    count: int = 1
    ratio: float = 0.5
    label: str = "a"
    flag: bool = True
    amount: Decimal = Decimal("1.5")
    at: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    day: dt.date = dt.date(2026, 1, 1)
    ref: uuid.UUID = REF
    colour: Colour = Colour.RED
    note: str | None = None
    sku: Sku = Sku("s")
    lines: tuple[Line, ...] = ()
    tags: frozenset[str] = frozenset()
    scores: list[int] = attrs.field(factory=list)
    pair: tuple[int, str] = (1, "a")
    totals: dict[str, Decimal] = attrs.field(factory=dict)
    mode: Literal["fast", "slow"] = "fast"
    either: int | str = 0
    anything: Any = None
    other: object = None


def problems(**fields: Any) -> dict[str, list[str]]:
    check = field_checker(Everything)
    assert check is not None
    found: dict[str, list[str]] = {}
    for field, problem in check(Everything(**fields)):
        found.setdefault(field, []).append(problem)
    return found


def deep_list(depth: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


def test_values_of_the_declared_types_pass() -> None:
    assert problems() == {}
    assert problems(count=INT_MIN, ratio=3, label="Ünïcödé 🎉", note="n", lines=(Line(sku=Sku("a"), quantity=INT_MAX),),
                    tags=frozenset({"x"}), scores=[1, 2], totals={"net": Decimal("2")}, mode="slow",
                    either="text") == {}


@pytest.mark.parametrize("value", [True, False, 1.0, 1.5, "1", None, Decimal(1)])
def test_a_whole_number_is_an_int_and_never_a_bool(value: Any) -> None:
    assert problems(count=value) == {"count": ["must be a whole number"]}


@pytest.mark.parametrize("value", [INT_MAX + 1, INT_MIN - 1, 10**400])
def test_a_whole_number_fits_in_64_bits(value: int) -> None:
    assert problems(count=value) == {"count": [f"must be between {INT_MIN} and {INT_MAX}"]}


def test_a_float_field_takes_an_int_but_not_a_bool() -> None:
    assert problems(ratio=2) == {}
    assert problems(ratio=True) == {"ratio": ["must be a number"]}
    assert problems(ratio=Decimal("1")) == {"ratio": ["must be a number"]}


@pytest.mark.parametrize(("field", "value"), [
    ("ratio", math.inf), ("ratio", -math.inf), ("ratio", math.nan),
    ("amount", Decimal("Infinity")), ("amount", Decimal("NaN")), ("amount", Decimal("sNaN")),
])
def test_floats_and_decimals_must_be_finite(field: str, value: Any) -> None:
    assert problems(**{field: value}) == {field: ["must be finite"]}


def test_a_decimal_field_takes_only_a_decimal() -> None:
    assert problems(amount="abc") == {"amount": ["must be a decimal number"]}
    assert problems(amount=1.5) == {"amount": ["must be a decimal number"]}


def test_text_has_no_nul_character() -> None:
    assert problems(label="a\x00b") == {"label": ["must not contain NUL characters"]}
    assert problems(label="é\x00") == {"label": ["must not contain NUL characters"]}


def test_text_has_no_lone_surrogate() -> None:
    assert problems(label="\ud800") == {"label": ["must not contain lone surrogate characters"]}
    assert problems(label="a\udfff\x00") == {
        "label": ["must not contain NUL characters", "must not contain lone surrogate characters"]}


def test_text_is_a_str() -> None:
    assert problems(label=b"bytes") == {"label": ["must be text"]}


def test_a_bool_is_true_or_false_only() -> None:
    assert problems(flag=1) == {"flag": ["must be true or false"]}


def test_dates_times_uuids_and_enums_are_instances_of_their_types() -> None:
    assert problems(at="2026-01-01") == {"at": ["must be a date and time"]}
    assert problems(day=dt.datetime(2026, 1, 1)) == {"day": ["must be a date"]}  # it would not read back as a date
    assert problems(ref=str(REF)) == {"ref": ["must be a UUID"]}
    assert problems(colour="red") == {"colour": ["must be a Colour ('red', 'blue')"]}


def test_an_optional_field_takes_none_and_checks_anything_else() -> None:
    assert problems(note=None) == {}
    assert problems(note=3) == {"note": ["must be text"]}
    assert problems(note="\x00") == {"note": ["must not contain NUL characters"]}


def test_a_new_type_is_checked_as_its_supertype() -> None:
    assert problems(sku=5) == {"sku": ["must be text"]}


def test_collections_are_checked_item_by_item_under_indexed_names() -> None:
    assert problems(scores=[1, "2", True]) == {"scores[1]": ["must be a whole number"],
                                               "scores[2]": ["must be a whole number"]}
    assert problems(tags=frozenset({3})) == {"tags[0]": ["must be text"]}
    assert problems(scores=(1,), lines=[]) == {"scores": ["must be a list"], "lines": ["must be a tuple"]}


def test_nested_attrs_classes_are_checked_under_dotted_names() -> None:
    lines = (Line(sku=Sku("a"), quantity=1), Line(sku=Sku("b"), quantity=True), "not a line")
    assert problems(lines=lines) == {"lines[1].quantity": ["must be a whole number"],
                                     "lines[2]": ["must be a Line"]}


def test_a_fixed_shape_tuple_and_a_dict_are_checked_by_position_and_key() -> None:
    assert problems(pair=(1, 2)) == {"pair[1]": ["must be text"]}
    assert problems(pair=(1,)) == {"pair": ["must be a tuple of 2 items"]}
    assert problems(totals={"net": 1.5, 3: Decimal(1)}) == {"totals['net']": ["must be a decimal number"],
                                                            "totals[3]": ["key must be text"]}


def test_a_literal_takes_only_its_values() -> None:
    assert problems(mode="medium") == {"mode": ["must be one of 'fast', 'slow'"]}


def test_a_union_takes_any_of_its_types() -> None:
    assert problems(either=1.5) == {"either": ["must be a whole number or text"]}


def test_any_object_and_unknown_types_are_not_checked() -> None:
    assert problems(anything=deep_list(3000), other=object()) == {}


def test_a_3000_deep_list_is_refused_by_the_type_check_without_recursion() -> None:
    deep = deep_list(3000)
    assert problems(count=deep, note=deep, scores=[deep], lines=(deep,)) == {
        "count": ["must be a whole number"], "note": ["must be text"], "scores[0]": ["must be a whole number"],
        "lines[0]": ["must be a Line"]}


@attrs.frozen(kw_only=True)
class Node:
    name: str
    children: tuple[Node, ...] = ()


def test_a_class_that_contains_itself_is_checked_at_every_level() -> None:
    check = field_checker(Node)
    assert check is not None
    leaf = Node(name=3)  # type: ignore[arg-type]
    assert check(Node(name="a", children=(Node(name="b", children=(leaf,)),))) == (
        ("children[0].children[0].name", "must be text"),)


def test_a_chain_deeper_than_the_stack_is_a_problem_not_a_recursion_error() -> None:
    node = Node(name="leaf")
    for _ in range(5000):
        node = Node(name="n", children=(node,))
    check = field_checker(Node)
    assert check is not None
    assert [problem for _, problem in check(node)] == ["is nested too deeply"]


def test_a_class_with_no_checked_field_has_no_checker() -> None:
    @attrs.frozen
    class Loose:
        anything: Any

    assert field_checker(Loose) is None
    assert field_checker(int) is None  # not attrs


def test_the_checker_is_generated_straight_line_code() -> None:
    check = field_checker(Line)
    assert check is not None
    source = "".join(linecache.getlines(check.__code__.co_filename))
    assert "v = instance.sku" in source
    assert "v = instance.quantity" in source
    assert "for " not in source
    assert field_checker(Line) is check  # compiled once per class


def test_annotations_that_cannot_be_resolved_are_named() -> None:
    @attrs.frozen
    class Broken:
        missing: Undefined  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(UnresolvedAnnotationsError, match="Broken"):
        field_checker(Broken)


# -- through the Validation behaviour ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Order(Command[int]):
    lines: tuple[Line, ...]
    note: str | None = None


@attrs.frozen(kw_only=True)
class Lines(StreamQuery[int]):
    up_to: int


class Plain(Command[int]):
    """Not an attrs class: its fields are nobody's to check."""

    def __init__(self, value: object) -> None:
        self.value = value


def at_least_one(command: Order) -> Iterator[tuple[str, str]]:
    if sum(line.quantity for line in command.lines) < 1:  # would raise TypeError on a str quantity
        yield "lines", "must order something"


def registry(check_types: bool = True) -> tuple[Registry, list[Order]]:
    handled: list[Order] = []

    def order(command: Order) -> int:
        handled.append(command)
        return len(command.lines)

    def lines(query: Lines) -> Iterator[int]:
        yield from range(query.up_to)

    reg = Registry()
    reg.behaviour(Validation(check_types=check_types))
    reg.validate(Order, at_least_one)
    reg.handle(Order).by(order)
    reg.handle(Lines).by(lines)
    reg.handle(Plain).by(lambda command: 1)
    return reg, handled


BAD = Order(lines=(Line(sku=Sku("a"), quantity=True), Line(sku=Sku("\x00"), quantity=1)), note=7)  # type: ignore[arg-type]
BAD_ERRORS = {"lines[0].quantity": ("must be a whole number",), "lines[1].sku": ("must not contain NUL characters",),
              "note": ("must be text",)}


def test_wrong_types_are_one_validation_error_naming_every_field_and_the_handler_never_runs() -> None:
    reg, handled = registry()
    with pytest.raises(ValidationError) as info:
        reg.build().send(BAD)
    assert info.value.errors == BAD_ERRORS
    assert handled == []


def test_validators_see_only_well_typed_messages() -> None:
    reg, _ = registry()
    with pytest.raises(ValidationError) as info:  # at_least_one would raise on the text quantity
        reg.build().send(Order(lines=(Line(sku=Sku("a"), quantity="2"),)))  # type: ignore[arg-type]
    assert info.value.errors == {"lines[0].quantity": ("must be a whole number",)}


def test_well_typed_messages_still_meet_the_validators() -> None:
    reg, handled = registry()
    mediator = reg.build()
    with pytest.raises(ValidationError) as info:
        mediator.send(Order(lines=(Line(sku=Sku("a"), quantity=0),)))
    assert info.value.errors == {"lines": ("must order something",)}
    assert mediator.send(Order(lines=(Line(sku=Sku("a"), quantity=2),))) == 1
    assert len(handled) == 1


def test_types_are_not_checked_unless_asked() -> None:
    reg, handled = registry(check_types=False)
    reg.build().send(Order(lines=(Line(sku=Sku("\x00"), quantity=1),), note=7))  # type: ignore[arg-type]
    assert len(handled) == 1


def test_a_message_that_is_not_attrs_is_not_checked() -> None:
    reg, _ = registry()
    assert reg.build().send(Plain(value=object())) == 1


def test_the_checker_is_compiled_at_build_not_per_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    reg, _ = registry()
    mediator = reg.build()

    def no_reflection(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("annotations inspected during a dispatch")

    monkeypatch.setattr(typing, "get_type_hints", no_reflection)
    monkeypatch.setattr(attrs, "fields", no_reflection)
    assert mediator.send(Order(lines=(Line(sku=Sku("a"), quantity=1),))) == 1
    with pytest.raises(ValidationError) as info:
        mediator.send(BAD)
    assert info.value.errors == BAD_ERRORS


def test_the_async_mediator_checks_types_too() -> None:
    reg, handled = registry()
    mediator = reg.build_async()

    async def main() -> None:
        with pytest.raises(ValidationError) as info:
            await mediator.send(BAD)
        assert info.value.errors == BAD_ERRORS
        assert await mediator.send(Order(lines=(Line(sku=Sku("a"), quantity=1),))) == 1

    asyncio.run(main())
    assert len(handled) == 1


def test_a_stream_query_is_checked_before_its_first_item() -> None:
    reg, _ = registry()
    mediator = reg.build()
    assert list(mediator.stream(Lines(up_to=2))) == [0, 1]
    with pytest.raises(ValidationError, match="up_to: must be a whole number"):
        list(mediator.stream(Lines(up_to=2.0)))  # type: ignore[arg-type]


def test_annotations_that_cannot_be_resolved_are_a_wiring_problem() -> None:
    @attrs.frozen
    class Vague(Command[None]):
        value: Unknown  # type: ignore[name-defined]  # noqa: F821

    reg = Registry()
    reg.behaviour(Validation(check_types=True))
    reg.handle(Vague).by(lambda command: None)
    with pytest.raises(WiringError, match=r"annotations of .*Vague cannot be resolved"):
        reg.build()
