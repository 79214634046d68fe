"""RetryOnConflict reruns a command that lost a race, unless the caller named the version it expected."""

import asyncio
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from structlog.testing import capture_logs

from adapters.shop_app import Shop
from domain.errors import ConcurrencyConflict
from domain.messages import GetCustomerOrders, OrderItem, PlaceOrder, UpdateProductStock
from domain.model import Stock
from handlers.retry import RetryOnConflict
from mediator import DispatchContext, Registry
from mediator.testing import settle
from tests.mediator.sample import Add

from .backends import shop_on
from .test_shop import stocked


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


# -- inside the built shop ----------------------------------------------------------------------------------


@pytest.fixture
def shop(backend: str, tmp_path: Path) -> Iterator[Shop]:
    with shop_on(backend, tmp_path, logging=False) as built:
        yield built


class Racing:
    """Another writer moves a product's stock on just after a command reads it, the first ``times`` reads.

    Its write goes into the command's own transaction, so it is rolled back with the attempt it spoils: what
    matters is that the stored version moved between the command's read and its write.
    """

    def __init__(self, shop: Shop, times: int = 1) -> None:
        self.model = shop.model
        self.real_stock = shop.model.stock
        self.times = times
        self.reads = 0

    def __call__(self, tx: Any, product_id: str) -> Stock:
        stock = self.real_stock(tx, product_id)
        self.reads += 1
        if self.reads <= self.times:
            theirs = attrs.evolve(stock)
            theirs.adjust(1, "their delivery")
            self.model.save_stock(tx, theirs, stock.version)
        return stock


def stock_of(shop: Shop, product_id: str) -> tuple[int, int, int]:
    stock = shop.inspect(lambda model, tx: model.stock(tx, product_id))
    return stock.on_hand, stock.reserved, stock.version


def retries(logs: Iterable[MutableMapping[str, Any]]) -> list[tuple[str, int]]:
    return [(e["message_type"], e["attempt"]) for e in logs if e["event"] == "command retried after a conflict"]


def test_a_stock_update_that_lost_a_race_is_run_again_on_fresh_state(shop: Shop,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _customer, _lamps, desk, _floor = stocked(shop)
    racing = Racing(shop)
    monkeypatch.setattr(shop.model, "stock", racing)
    head = shop.storage.head()
    with capture_logs() as logs:
        shop.mediator.send(UpdateProductStock(product_id=desk, delta=3, reason="delivery"))
    assert retries(logs) == [("UpdateProductStock", 1)]
    assert racing.reads == 2
    assert stock_of(shop, desk) == (13, 0, 2)  # applied once, on the second attempt
    assert shop.storage.head() == head + 1  # one StockAdjusted, none from the spoilt attempt


def test_the_async_mediator_retries_a_lost_race_too(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    _customer, _lamps, desk, _floor = stocked(shop)
    racing = Racing(shop)
    monkeypatch.setattr(shop.model, "stock", racing)
    mediator = shop.registry.build_async()
    with capture_logs() as logs:
        asyncio.run(mediator.send(UpdateProductStock(product_id=desk, delta=3, reason="delivery")))
    assert retries(logs) == [("UpdateProductStock", 1)]
    assert stock_of(shop, desk) == (13, 0, 2)


def test_a_command_naming_its_expected_version_gets_the_conflict_back(shop: Shop,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _customer, _lamps, desk, _floor = stocked(shop)
    racing = Racing(shop)
    monkeypatch.setattr(shop.model, "stock", racing)
    head = shop.storage.head()
    with capture_logs() as logs, pytest.raises(ConcurrencyConflict, match="at version 2, not 1"):
        shop.mediator.send(UpdateProductStock(product_id=desk, delta=3, reason="delivery", expected_version=1))
    assert retries(logs) == []
    assert racing.reads == 1
    assert stock_of(shop, desk) == (10, 0, 1)
    assert shop.storage.head() == head


def test_a_nested_command_is_not_retried_alone_but_with_its_whole_dispatch(shop: Shop,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # PlaceOrder reserves its stock through a nested ReserveStock in the same transaction. Rerunning only
    # ReserveStock there would find the order already marked reserved by the spoilt attempt; the whole
    # PlaceOrder is rerun instead.
    customer, _lamps, desk, _floor = stocked(shop)
    racing = Racing(shop)
    monkeypatch.setattr(shop.model, "stock", racing)
    with capture_logs() as logs:
        order = shop.mediator.send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=2),)))
    assert retries(logs) == [("PlaceOrder", 1)]
    assert stock_of(shop, desk) == (10, 2, 2)
    settle(shop.engine)
    assert [s.order_id for s in shop.mediator.ask(GetCustomerOrders(customer_id=customer))] == [order]


def test_the_shop_gives_up_after_three_lost_races(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    _customer, _lamps, desk, _floor = stocked(shop)
    racing = Racing(shop, times=10)
    monkeypatch.setattr(shop.model, "stock", racing)
    head = shop.storage.head()
    with capture_logs() as logs, pytest.raises(ConcurrencyConflict):
        shop.mediator.send(UpdateProductStock(product_id=desk, delta=3, reason="delivery"))
    assert retries(logs) == [("UpdateProductStock", 1), ("UpdateProductStock", 2)]
    assert racing.reads == 3
    assert stock_of(shop, desk) == (10, 0, 1)
    assert shop.storage.head() == head
