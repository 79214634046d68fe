"""Where a checkout's instructions go, CRUD beside CQRS, counted under callgrind (see :mod:`._instructions`).

Each figure is a difference of two processes that do the same set-up (the catalogue, a history of orders, warm-up
checkouts), so only the part named is left:

- ``crud``: a CRUD checkout (one transaction: stock, order, lines);
- ``write``: a CQRS ``send(PlaceOrder(...))`` with no projection running (the mediator, its behaviours, the
  handlers, the write model's SQL, event encoding and the log insert, the commit);
- ``logging``: the same with the shop's structured logging on, less ``write``;
- ``keyed``: ``write`` with an idempotency key on each checkout (the key looked up, the payload digested, the
  record kept in the checkout's transaction);
- ``apply:<name>``: catching one projection up with the events of the checkouts (the other projections are
  caught up in both processes, so only this one is counted; it finds the events they decoded and the stretches
  of the log they read, so the six figures add up to less than ``apply:all``);
- ``apply:all``: catching all six up together, as a worker does.

Run: ``python -m benchmarks._checkout_instructions`` (about twenty minutes on two cores); prints a table.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import _instructions

SEED = 11
HISTORY = 500
"""Orders loaded before anything is counted (both shops)."""
PROJECTIONS = ("order_details", "customer_orders", "catalog", "search", "inventory", "dashboard")


def _carts(count: int, seed: int = 7) -> list[tuple[str, tuple[tuple[str, int], ...]]]:
    from . import _shopdata as shopdata

    rng = random.Random(seed)
    data = shopdata.catalog(SEED)
    customers = [f"cus-{i:08d}" for i in range(HISTORY // shopdata.ORDERS_PER_CUSTOMER)]
    ids = [p.product_id for p in data.products]
    return [(rng.choice(customers), tuple((p, 1) for p in rng.sample(ids, rng.randint(1, 3)))) for _ in range(count)]


def _child(mode: str, n: int, work: bool) -> None:
    from adapters.shop_app import build_shop
    from domain.messages import OrderItem, PlaceOrder

    from . import _shopdata as shopdata
    from ._crudshop import CrudShop
    from .sync import quiet_logging

    data = shopdata.catalog(SEED)
    (block,) = shopdata.history(data, SEED, orders=HISTORY, parts=(1,))
    carts = _carts(50 + n)
    warm, counted = carts[:50], carts[50:] if work else []
    with quiet_logging(), tempfile.TemporaryDirectory(prefix="mediator-checkout-") as tmp:
        if mode == "crud":
            crud = CrudShop(Path(tmp) / "crud.db")
            crud.load_catalog(data)
            crud.load(data, block)
            for customer_id, items in warm + counted:
                crud.checkout(customer_id, items)
            crud.close()
            return
        # Checkpoints by SQLite's own rule, as CRUD's: counted inline on both sides, not by a thread's timer.
        shop = build_shop(Path(tmp) / "cqrs.db", logging=mode == "logging", checkpoint_every=None, fulfilment=False)
        loader = shopdata.CqrsLoader(shop, data)
        loader.load_catalog()
        loader.load(block)
        shop.engine.catch_up()
        send = shop.mediator.send
        applying = mode.startswith("apply:")
        if applying:  # the checkouts in both processes; the counted projection caught up only when working
            counted = carts[50:]
        keyed = mode == "keyed"
        for number, (customer_id, items) in enumerate(warm + counted):
            send(PlaceOrder(customer_id=customer_id, items=tuple(OrderItem(product_id=p, quantity=q) for p, q in items),
                            idempotency_key=f"checkout-{number}" if keyed else None))
        if applying:
            name = mode.split(":", 1)[1]
            projections = list(PROJECTIONS) if name == "all" else [name]
            others = [p for p in PROJECTIONS if p not in projections]
            if others:
                shop.engine.catch_up(only=others)
            if work:
                shop.engine.catch_up(only=projections)
        shop.close()


def count(mode: str, n: int) -> float:
    """Instructions per checkout of ``mode``."""
    def one(work: bool) -> int:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
             "benchmarks._checkout_instructions", mode, str(n), "work" if work else "idle"],
            capture_output=True, text=True, timeout=1800, check=False, cwd=Path(__file__).resolve().parents[1])
        if done.returncode != 0:
            raise RuntimeError(f"{mode}: {done.stderr[-1500:]}")
        return _instructions.refs(done.stderr)

    return (one(True) - one(False)) / n


MODES = ("crud", "write", "keyed", "logging", *(f"apply:{name}" for name in PROJECTIONS), "apply:all")


def breakdown(n: int = 200, modes: Sequence[str] = MODES) -> dict[str, float]:
    """Instructions per checkout of each of ``modes``, two valgrind processes at a time."""
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(modes, pool.map(lambda m: count(m, n), modes), strict=True))


if __name__ == "__main__":
    if len(sys.argv) == 4:
        _child(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "work")
    else:
        found = breakdown()
        crud = found["crud"]
        for mode, per in found.items():
            shown = per - found["write"] if mode == "logging" else per
            print(f"{mode:24} {shown / 1e3:9.1f}k  {shown / crud:5.2f}x crud")
        applied = found["apply:all"]
        print(f"{'cqrs write + apply:all':24} {(found['write'] + applied) / 1e3:9.1f}k  "
              f"{(found['write'] + applied) / crud:5.2f}x crud")
