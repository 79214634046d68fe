"""Every input through the shop's mediator either succeeds or raises an error of the framework's or the domain's
tree; a failed command writes nothing; an accepted command never leaves a dead letter behind.

``MEDIATOR_FUZZ_SIZE`` inputs per backend (1,000 by default; CI runs 10,000), drawn from a seeded generator
(``MEDIATOR_FUZZ_SEED``, 7 by default): each message of the shop with each field either a plausible value (the
ids the run made, sensible numbers and texts) or a hostile one (the wrong type, NUL characters, lone surrogates,
numbers out of every range, NaN, deep nesting, huge texts).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import tempfile
import types
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest

from domain import messages
from domain.errors import DomainError
from domain.messages import DiscontinueProduct, PlaceOrder, UpdateProductStock
from handlers.authorization import ANONYMOUS, Principal
from mediator import Command, MediatorError, Query
from mediator.testing import settle

from .backends import shop_on
from .test_read_models_agree import DAY, World, assert_agrees_with_the_write_model
from .test_shop import stocked

SIZE = int(os.environ.get("MEDIATOR_FUZZ_SIZE", "1000"))
SEED = int(os.environ.get("MEDIATOR_FUZZ_SEED", "7"))


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


HOSTILE: tuple[Any, ...] = (
    None, True, False, 0, -1, 2**63, -(2**63) - 1, 2**200, 1.5, float("nan"), float("inf"), -0.0,
    "", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "é", "😀" * 3, "x" * 5_000, "12.50", "abc", "1e400",
    b"bytes", [], [1], {"a": 1}, (), ("p",), Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"),
    Decimal("1e400"), Decimal("0.001"), Decimal("-5"), Decimal("0"), dt.date(2026, 1, 1),
    dt.datetime(2026, 1, 1, tzinfo=dt.UTC), _deep(3_000), object(),
)
MESSAGES: tuple[type[Any], ...] = tuple(
    cls for cls in vars(messages).values()
    if isinstance(cls, type) and attrs.has(cls) and issubclass(cls, Command | Query)
    and cls.__module__ == messages.__name__)

WEIGHTED = MESSAGES + (PlaceOrder,) * 3  # the command that feeds most read models, drawn four times as often


@attrs.define
class Fuzz:
    """The run: the shop, the ids its accepted commands made, and what went wrong."""

    world: World
    rng: random.Random
    outside: list[str] = attrs.Factory(list)
    partial: list[str] = attrs.Factory(list)
    accepted: int = 0
    hostility: float = 0.0

    def plausible(self, hint: Any, field: str = "") -> Any:
        world, rng = self.world, self.rng
        name = getattr(hint, "__name__", str(hint))
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(hint) if a is not type(None)]
            return None if rng.random() < 0.3 else self.plausible(rng.choice(options), field)
        if origin is tuple:
            (item, *_rest) = typing.get_args(hint)
            return tuple(self.plausible(item, field) for _ in range(rng.randint(1 if rng.random() < 0.9 else 0, 3)))
        if hint is int:
            wanted = {"quantity": [1, 1, 2, 3], "delta": [5, 20, -1], "page": [1, 2], "page_size": [10, 50],
                      "limit": [5, 20], "expected_version": [0, 1, 2]}.get(field)
            return rng.choice(wanted if wanted and rng.random() < 0.9 else [0, 1, 2, 3, 5, 10, 100, -1, -5])
        if hint is Decimal:
            return rng.choice([Decimal("1.00"), Decimal("9.99"), Decimal("25"), Decimal("0"), Decimal("-1")])
        if hint is dt.date:
            return rng.choice([DAY.date(), DAY.date() - dt.timedelta(days=3)])
        if hint is str:
            stocked_first = world.products[:2] if rng.random() < 0.8 else world.products  # the two with stock
            ids = {"customer_id": world.customers, "category_id": world.categories, "product_id": stocked_first,
                   "order_id": world.orders or ["missing"]}.get(field)
            if ids is not None and rng.random() < 0.9:
                return rng.choice(ids)
            if field == "email":
                return rng.choice(["ada@example.com", "bo@example.org"])
            if field == "idempotency_key":  # now and then a key used before: repeats and reused keys both happen
                return rng.choice(["retry-1", "retry-2"]) if rng.random() < 0.1 else f"key-{rng.getrandbits(64):x}"
            return rng.choice(["Lamps", "Reading lamp", "reason", "lamp", "shade", "missing"])
        if attrs.has(hint):
            return self.build(hint, self.hostility)
        raise AssertionError(f"no plausible value for {name}")

    def build(self, cls: type[Any], hostility: float) -> Any:
        hints = typing.get_type_hints(cls)
        values = {f.name: self.rng.choice(HOSTILE) if self.rng.random() < hostility
                  else self.plausible(hints[f.name], f.name) for f in attrs.fields(cls) if f.init}
        if cls is DiscontinueProduct and values["product_id"] in self.world.products[:2]:
            # The two stocked products stay on sale, so plausible orders go through for the whole run.
            values["product_id"] = self.rng.choice(self.world.products[2:] or ["missing"])
        return cls(**values)

    def one(self) -> None:
        world, rng = self.world, self.rng
        self.hostility = rng.choice([0.0, 0.0, 0.15, 0.5])  # half the messages plausible throughout
        message = self.build(rng.choice(WEIGHTED), self.hostility)
        principal = rng.choice([Principal(admin=True), Principal(admin=True),
                                Principal(customer_id=rng.choice(world.customers)), ANONYMOUS])
        shop = world.shop
        head = shop.storage.head()
        try:
            with shop.mediator.scope(principal=principal):
                if isinstance(message, Command):
                    made = shop.mediator.send(message)
                    self.accepted += 1
                    self.remember(message, made)
                else:
                    shop.mediator.ask(message)
        except (MediatorError, DomainError) as expected:
            if isinstance(message, Command) and shop.storage.head() != head:
                self.partial.append(f"{message!r} failed with {expected!r} and still appended events")
        except Exception as exc:
            self.outside.append(f"{type(message).__name__}: {type(exc).__module__}.{type(exc).__qualname__}: "
                                f"{str(exc)[:200]} <- {message!r}"[:600])

    def remember(self, message: Any, made: Any) -> None:
        world = self.world
        kind = type(message).__name__
        target = {"RegisterCustomer": world.customers, "CreateCategory": world.categories,
                  "CreateProduct": world.products, "PlaceOrder": world.orders}.get(kind)
        if target is not None and isinstance(made, str):
            target.append(made)


def test_the_message_types_fuzzed_cover_the_shop() -> None:
    assert {cls.__name__ for cls in MESSAGES} >= {"PlaceOrder", "UpdateProductStock", "GetOrderDetails",
                                                  "ListProductsByCategory", "GetSalesDashboard", "CreateProduct"}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_every_input_succeeds_or_raises_an_error_of_the_tree_and_writes_nothing_partial(backend: str) -> None:
    with (tempfile.TemporaryDirectory() as folder,
          shop_on(backend, Path(folder), clock=lambda: DAY, logging=False) as shop):
        customer, lamps, desk, floor = stocked(shop)
        for product in (desk, floor):  # enough stock that plausible orders go through for the whole run
            shop.mediator.send(UpdateProductStock(product_id=product, delta=100_000, reason="fuzz"))
        fuzz = Fuzz(World(shop, [customer], [lamps], [desk, floor]), random.Random(SEED))
        for _ in range(SIZE):
            fuzz.one()
        assert fuzz.outside == [], f"{len(fuzz.outside)} errors outside the tree, e.g.:\n" + "\n".join(
            fuzz.outside[:20])
        assert fuzz.partial == []
        assert fuzz.accepted > SIZE // 20  # the run reached the handlers, not only the validators
        assert len(fuzz.world.orders) >= SIZE // 100  # orders placed all along (stock reserved, dashboards fed)
        settle(shop.engine)
        letters = shop.engine.dead_letters()
        assert letters == [], [(d.projection, d.type_name, d.reason) for d in letters]
        assert_agrees_with_the_write_model(fuzz.world)

