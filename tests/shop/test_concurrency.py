"""Two processes send thousands of competing stock and order commands to one SQLite shop.

Afterwards stock was never negative (the schema's CHECK would have refused it), on hand equals
receipts minus write-offs, reserved equals what live orders hold, and every read model agrees with the
write model and with a fresh rebuild. (SQLite's single writer lock serialises the two processes' commands,
so they compete for stock but never hit a version conflict.)
``MEDIATOR_SHOP_COMMANDS`` sets the commands per process (1,500 by default, and in CI)."""

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from adapters.shop_app import build_shop
from domain.events import StockAdjusted
from domain.messages import CreateCategory, CreateProduct, GetProductInventory, RegisterCustomer
from mediator.testing import assert_settled, settle

from .test_read_models_agree import World, assert_agrees_with_the_write_model, snapshot

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = int(os.environ.get("MEDIATOR_SHOP_COMMANDS", "1500"))


def test_two_processes_never_oversell_and_the_read_models_agree(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    shop = build_shop(db, logging=False, authorize=False, retire_after=0)
    shop.mediator.send(RegisterCustomer(name="Ada", email="ada@example.com"))
    category = shop.mediator.send(CreateCategory(name="Lamps"))
    products = [shop.mediator.send(CreateProduct(category_id=category, name=f"Lamp {i}", price=Decimal("5")))
                for i in range(3)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-m", "tests.shop.shop_process", str(db), str(seed), str(COMMANDS)],
                                env=env, cwd=ROOT) for seed in (1, 2)]
    assert [w.wait(timeout=600) for w in workers] == [0, 0]

    write = shop.storage._write()  # type: ignore[attr-defined]  # SQLite only here
    adjustments: dict[str, int] = dict.fromkeys(products, 0)
    for stored in shop.storage.events():
        if stored.type_name == "shop.StockAdjusted":
            event = shop.engine.types.decode(stored.type_name, stored.version, stored.data)
            assert isinstance(event, StockAdjusted)
            adjustments[event.product_id] += event.delta
    live = dict(write.execute(
        "SELECT i.product_id, SUM(i.quantity) FROM order_items i JOIN orders o USING (order_id) "
        "WHERE o.status IN ('placed', 'confirmed') GROUP BY i.product_id").fetchall())
    orders = write.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
    assert orders > 100  # the processes really did place (and compete for stock with) orders
    settle(shop.engine)
    assert_settled(shop.engine)
    for product in products:
        on_hand, reserved = write.execute("SELECT on_hand, reserved FROM stock WHERE product_id = ?",
                                          (product,)).fetchone()
        assert on_hand >= 0
        assert 0 <= reserved <= on_hand
        assert on_hand == adjustments[product]
        assert reserved == live.get(product, 0)
        inventory = shop.mediator.ask(GetProductInventory(product_id=product))
        assert inventory is not None
        assert (inventory.on_hand, inventory.reserved) == (on_hand, reserved)
    # every read model agrees with the write model, and equals what a fresh rebuild from the log gives
    order_ids = [row[0] for row in write.execute("SELECT order_id FROM orders")]
    customer = write.execute("SELECT customer_id FROM customers").fetchone()[0]
    world = World(shop, [customer], [category], products, order_ids)
    assert_agrees_with_the_write_model(world)
    before = snapshot(world)
    for name in shop.engine.projections:
        shop.engine.rebuild(name)
    shop.engine.finish_rebuilds()
    assert snapshot(world) == before
    shop.close()
