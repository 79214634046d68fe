"""The Validation behaviour: every failure in one error, handler untouched."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from mediator import Registry, Validation, ValidationError, ValidatorError
from mediator._context import _current

from .sample import Add, Pay, UnitOfWork, Unreachable


class Customers:
    """A validator dependency: which customers exist."""

    def __init__(self) -> None:
        self.known = {1, 2}


def positive(command: Add) -> Iterator[tuple[str, str]]:
    if command.value <= 0:
        yield "value", "must be positive"


def even(command: Add) -> Iterator[tuple[str, str]]:
    if command.value % 2:
        yield "value", "must be even"


class KnownCustomer:
    def __init__(self, customers: Customers) -> None:
        self.customers = customers

    def validate(self, command: Add) -> list[tuple[str, str]]:
        if command.value not in self.customers.known:
            return [("", f"customer {command.value} does not exist")]
        return []


def build(*validators: object, is_async: bool = False) -> tuple[object, list[int]]:
    ran: list[int] = []

    def handler(command: Add) -> int:
        ran.append(command.value)
        return command.value

    reg = Registry()
    reg.singleton(Customers)
    reg.behaviour(Validation())
    for validator in validators:
        reg.validate(Add, validator)  # type: ignore[arg-type]
    reg.handle(Add).by(handler)
    return (reg.build_async() if is_async else reg.build()), ran


def test_valid_message_reaches_the_handler() -> None:
    mediator, ran = build(positive, even)
    assert mediator.send(Add(value=2)) == 2  # type: ignore[attr-defined]
    assert ran == [2]


def test_all_failures_are_collected_per_field_and_the_handler_never_runs() -> None:
    mediator, ran = build(positive, even, KnownCustomer)
    with pytest.raises(ValidationError) as info:
        mediator.send(Add(value=-1))  # type: ignore[attr-defined]
    assert info.value.errors == {
        "value": ("must be positive", "must be even"),
        "": ("customer -1 does not exist",),
    }
    assert isinstance(info.value, ValueError)
    assert info.value.message == Add(value=-1)
    assert "tests.mediator.sample.Add is invalid: value: must be positive, must be even" in str(info.value)
    assert ran == []


def test_validator_with_a_dependency_uses_it() -> None:
    mediator, _ = build(KnownCustomer)
    assert mediator.send(Add(value=1)) == 1  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="customer 3 does not exist"):
        mediator.send(Add(value=3))  # type: ignore[attr-defined]


def test_a_validator_whose_dependency_fails_raises_validator_error() -> None:
    class Flaky:
        def __init__(self, customers: Customers) -> None:
            pass

        def validate(self, command: Add) -> list[tuple[str, str]]:
            raise TimeoutError("customer service timed out")

    mediator, ran = build(Flaky)
    with pytest.raises(ValidatorError, match="customer service timed out") as info:
        mediator.send(Add(value=2))  # type: ignore[attr-defined]
    assert isinstance(info.value.__cause__, TimeoutError)
    assert "Flaky" in info.value.validator
    assert ran == []


class Unconstructible:
    """A transient client whose construction fails."""

    def __init__(self) -> None:
        raise LookupError("no customer service is configured")


def needs_the_database(command: Add, uow: UnitOfWork, db: Unreachable) -> list[tuple[str, str]]:
    raise AssertionError("the validator cannot run without its connection")


def needs_the_service(command: Add, uow: UnitOfWork, service: Unconstructible) -> list[tuple[str, str]]:
    raise AssertionError("the validator cannot run without its client")


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("validator", "cause"),
    [(needs_the_database, ConnectionError), (needs_the_service, LookupError)],
    ids=["scoped dependency cannot be entered", "transient dependency cannot be built"],
)
def test_a_validator_whose_dependency_cannot_be_made_raises_validator_error(
    validator: Any, cause: type[Exception], is_async: bool
) -> None:
    UnitOfWork.instances.clear()
    ran: list[int] = []

    def handler(command: Add) -> int:
        ran.append(command.value)
        return command.value

    reg = Registry()
    reg.scoped(UnitOfWork)
    reg.scoped(Unreachable)
    reg.transient(Unconstructible)
    reg.behaviour(Validation())
    reg.validate(Add, validator)
    reg.handle(Add).by(handler)

    def check(error: ValidatorError) -> None:
        assert type(error.__cause__) is cause
        assert validator.__name__ in error.validator
        assert ran == []
        assert _current.get() is None
        (uow,) = UnitOfWork.instances
        assert (uow.outcome, uow.error) == ("rollback", error)

    if not is_async:
        with pytest.raises(ValidatorError) as info:
            reg.build().send(Add(value=1))
        check(info.value)
        return

    async def main() -> None:
        with pytest.raises(ValidatorError) as info:
            await reg.build_async().send(Add(value=1))
        check(info.value)

    asyncio.run(main())


def test_validators_of_a_base_class_apply_to_subclasses() -> None:
    def card_required(command: Pay) -> list[tuple[str, str]]:
        return [] if command.card_number else [("card_number", "required")]

    reg = Registry()
    reg.behaviour(Validation())
    reg.validate(Pay, card_required)
    reg.handle(Pay).by(lambda command: "paid")
    with pytest.raises(ValidationError) as info:
        reg.build().send(Pay(amount=1, card_number=""))
    assert info.value.errors == {"card_number": ("required",)}


def test_async_validators_sync_and_async_in_one_pipeline() -> None:
    async def slow_positive(command: Add) -> list[tuple[str, str]]:
        await asyncio.sleep(0)
        return [("value", "must be positive")] if command.value <= 0 else []

    async def streamed(command: Add) -> AsyncIterator[tuple[str, str]]:
        if command.value > 100:
            yield "value", "too large"

    mediator, ran = build(slow_positive, streamed, even, is_async=True)
    with pytest.raises(ValidationError) as info:
        asyncio.run(mediator.send(Add(value=-1)))  # type: ignore[attr-defined]
    assert info.value.errors == {"value": ("must be positive", "must be even")}
    with pytest.raises(ValidationError, match="too large"):
        asyncio.run(mediator.send(Add(value=102)))  # type: ignore[attr-defined]
    assert asyncio.run(mediator.send(Add(value=4))) == 4  # type: ignore[attr-defined]
    assert ran == [4]


def test_async_validator_in_the_sync_mediator_is_a_wiring_error() -> None:
    from mediator import WiringError

    async def check(command: Add) -> list[tuple[str, str]]:
        return []

    with pytest.raises(WiringError, match="is async; use build_async"):
        build(check)


def test_event_validators_run_once_per_publish_however_many_handlers() -> None:
    from .sample import Happened

    calls: list[str] = []

    def known(event: Happened) -> list[tuple[str, str]]:
        calls.append(event.what)
        return []

    reg = Registry()
    reg.behaviour(Validation())
    reg.validate(Happened, known)
    for _ in range(3):
        reg.handle(Happened).by(lambda event: None)
    reg.build().publish(Happened(what="x"))
    assert calls == ["x"]
