"""The shop with its order fulfilment and payment timeouts through SIGKILLs: two processes place and pay orders
and run the projections, the fulfilment's steps and the due timeouts, and are killed at random points.

After every kill: each acknowledged command's event is in the log; no order was paid, shipped or cancelled twice,
nor both shipped and cancelled; every fulfilment instance's state equals a replay of the events its checkpoint
passed. At the end, with every timeout due: each order ended exactly once (shipped once paid, or cancelled by its
timeout, never after the payment cancelled it), the stock reserved is back to nothing and on hand is what was
delivered less what was shipped, and nothing is left running, parked or scheduled. ``MEDIATOR_CRASH_ROUNDS``
sets how many rounds of kills (50 by default, and in CI).
"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.shop_app import Shop, build_shop
from domain.events import OrderPlaced
from domain.messages import GetProductInventory, UpdateProductStock
from domain.model import Order
from handlers.ports import WriteModel
from handlers.processes import AWAITING_PAYMENT, PAID, Fulfilment, timeout_id
from mediator.testing import Clock, settle
from tests import postgres
from tests.crashing import wait_for_progress

from .fulfilment_process import fast_clock
from .test_shop import stocked

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("MEDIATOR_CRASH_ROUNDS", "50"))
STOCK = 1_000_000


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    if request.param == "sqlite":
        yield request.param, {"SHOP_DB": str(tmp_path / "shop.db")}
        return
    schema = request.getfixturevalue("pg_schema")
    yield request.param, {"SHOP_POSTGRES": postgres.DSN, "SHOP_SCHEMA": schema}


def open_shop(where: dict[str, str], clock: Clock | None = None) -> Shop:
    if "SHOP_DB" in where:
        return build_shop(where["SHOP_DB"], logging=False, engine_clock=clock)
    return build_shop(postgres=where["SHOP_POSTGRES"], schema=where["SHOP_SCHEMA"], logging=False,
                      engine_clock=clock)


def replayed(events: list[tuple[str, Decimal]], order_id: str) -> Fulfilment | None:
    """The fulfilment's state after one order's events (name, the placed total), as the process reacts."""
    state: Fulfilment | None = None
    for name, total in events:
        if name == "OrderPlaced":
            state = Fulfilment(stage=AWAITING_PAYMENT, total=total, timeout=timeout_id(order_id))
        elif name == "OrderPaid" and state is not None and state.stage == AWAITING_PAYMENT:
            state = Fulfilment(stage=PAID, total=state.total, timeout=state.timeout)
        elif name in ("OrderShipped", "OrderCancelled"):
            state = None
    return state


def orders_of(shop: Shop, up_to: int | None = None,
              leaving: set[int] | frozenset[int] = frozenset()) -> dict[str, list[tuple[str, Decimal]]]:
    """Each order's events (name, and the total for OrderPlaced), in log order, up to position ``up_to``, but
    those at the positions ``leaving`` (steps parked, not taken yet)."""
    found: dict[str, list[tuple[str, Decimal]]] = {}
    for stored in shop.storage.events():
        if up_to is not None and stored.position > up_to:
            break
        if stored.position in leaving:
            continue
        name = stored.type_name.removeprefix("shop.")
        if not name.startswith("Order") or stored.key is None:
            continue
        total = Decimal(0)
        if name == "OrderPlaced":
            placed: OrderPlaced = shop.engine.types.decode(stored.type_name, stored.version, stored.data)
            total = placed.total
        found.setdefault(stored.key, []).append((name, total))
    return found


def test_sigkill_leaves_every_fulfilment_step_and_timeout_taking_effect_once(
        database: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    backend, where = database
    shop = open_shop(where)
    customer, _lamps, desk, floor = stocked(shop)
    for product in (desk, floor):
        shop.mediator.send(UpdateProductStock(product_id=product, delta=STOCK, reason="delivery"))
    delivered = {desk: 10 + STOCK, floor: 2 + STOCK}  # stocked() delivered 10 and 2
    epoch = time.time()
    env = {**os.environ, **where, "PYTHONPATH": str(ROOT), "SHOP_EPOCH": repr(epoch), "SHOP_CUSTOMER": customer,
           "SHOP_PRODUCTS": f"{desk},{floor}"}
    ack = tmp_path / "acks.txt"
    rng = random.Random(97)
    for _ in range(ROUNDS):
        acked_before = ack.stat().st_size if ack.exists() else 0
        children = [subprocess.Popen([sys.executable, "-m", "tests.shop.fulfilment_process", str(ack)], env=env,
                                     cwd=ROOT) for _ in range(2)]
        wait_for_progress(ack, acked_before, children)
        time.sleep(rng.uniform(0.0, 0.3))
        for child in children:
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        if backend == "postgres":
            postgres.wait_until_gone([child.pid for child in children])
        _check_after_a_kill(shop, ack)
    shop.close()
    clock = Clock(fast_clock(epoch) + 86_400)
    final = open_shop(where, clock)
    settle(final.engine)  # steps the children left undone schedule their timeouts now: a day on, those fire
    clock.advance(days=1)
    settle(final.engine)
    orders = orders_of(final)
    assert len(orders) > ROUNDS
    shipped: Counter[str] = Counter()
    for order_id, events in orders.items():
        names = [name for name, _total in events]
        ends = [name for name in names if name in ("OrderShipped", "OrderCancelled")]
        assert len(ends) == 1, (order_id, names)
        if ends == ["OrderShipped"]:
            assert names.count("OrderPaid") == 1, (order_id, names)
            order = final.inspect(functools.partial(_order, order_id))
            assert order is not None
            shipped.update({line.product_id: line.quantity for line in order.lines})
        else:
            assert "OrderPaid" not in names, (order_id, names)  # a timeout never fires after a payment
        assert final.engine.processes.instance("fulfilment", order_id) is None
    for product in (desk, floor):
        inventory = final.mediator.ask(GetProductInventory(product_id=product))
        assert inventory is not None
        assert (inventory.reserved, inventory.on_hand) == (0, delivered[product] - shipped[product])
    (status,) = final.engine.processes.status()
    assert (status.instances, status.parked, status.blocked, status.behind) == (0, 0, 0, 0)
    assert final.storage.scheduled() == []
    final.close()


def _order(order_id: str, model: WriteModel, tx: Any) -> Order | None:
    return model.order(tx, order_id)


def _check_after_a_kill(shop: Shop, ack: Path) -> None:
    orders = orders_of(shop)
    for line in ack.read_text().splitlines() if ack.exists() else ():
        what, order_id = line.split()
        names = [name for name, _total in orders[order_id]]
        assert ("OrderPlaced" if what == "placed" else "OrderPaid") in names, f"acknowledged {line}, not stored"
    for order_id, events in orders.items():
        names = [name for name, _total in events]
        for name in ("OrderPlaced", "OrderPaid", "OrderShipped", "OrderCancelled"):
            assert names.count(name) <= 1, (order_id, names)
        assert not {"OrderShipped", "OrderCancelled"} <= set(names), (order_id, names)
    (status,) = shop.engine.processes.status()
    # A step may be parked for a while (two processes' commands on one stock row conflict on PostgreSQL), with
    # its retry due: never for an operator.
    assert all(letter.retry_at is not None for letter in status.letters), status.letters
    waiting = {letter.position for letter in status.letters}
    for order_id, events in orders_of(shop, up_to=status.position, leaving=waiting).items():
        assert shop.engine.processes.instance("fulfilment", order_id) == replayed(events, order_id), order_id
