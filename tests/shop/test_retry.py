"""RetryOnConflict reruns a command that lost a race, unless the caller named the version it expected."""

from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from domain.errors import ConcurrencyConflict
from handlers.retry import RetryOnConflict
from mediator import DispatchContext, Registry
from tests.mediator.sample import Add


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, command: Add, ctx: DispatchContext) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConcurrencyConflict("stock", "p1", 3, 4)
        return command.value


def mediator(handler: Callable[..., Any], attempts: int = 3) -> Any:
    registry = Registry()
    registry.behaviour(RetryOnConflict(attempts=attempts, pause=0))
    registry.handle(Add).by(handler)
    return registry.build()


def test_a_conflict_is_retried_until_it_succeeds() -> None:
    flaky = Flaky(failures=2)
    with capture_logs() as logs:
        assert mediator(flaky).send(Add(value=7)) == 7
    assert flaky.calls == 3
    assert [entry["attempt"] for entry in logs] == [1, 2]


def test_retries_are_bounded() -> None:
    flaky = Flaky(failures=5)
    with pytest.raises(ConcurrencyConflict):
        mediator(flaky, attempts=3).send(Add(value=1))
    assert flaky.calls == 3


def test_a_command_naming_its_expected_version_is_never_retried() -> None:
    import attrs

    from mediator import Command

    @attrs.frozen(kw_only=True)
    class Versioned(Command[int]):
        expected_version: int | None

    calls: list[int] = []

    def handler(command: Versioned) -> int:
        calls.append(1)
        raise ConcurrencyConflict("product", "p", 1, 2)

    registry = Registry()
    registry.behaviour(RetryOnConflict(pause=0))
    registry.handle(Versioned).by(handler)
    with pytest.raises(ConcurrencyConflict):
        registry.build().send(Versioned(expected_version=1))
    assert calls == [1]
