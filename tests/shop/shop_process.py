"""A process hammering one shared shop database with conflicting stock and order commands.

``python -m tests.shop.shop_process DB SEED COUNT`` sends COUNT random commands.
"""

from __future__ import annotations

import contextlib
import random
import sys

from adapters.shop_app import build_shop
from domain.errors import DomainError
from domain.messages import CancelOrder, OrderItem, PlaceOrder, UpdateProductStock
from mediator import ValidationError


def hammer(db: str, seed: int, count: int) -> None:
    shop = build_shop(db, logging=False, authorize=False)
    write = shop.storage._write()  # type: ignore[attr-defined]  # SQLite only here
    customer = write.execute("SELECT customer_id FROM customers").fetchone()[0]
    products = [row[0] for row in write.execute("SELECT product_id FROM products ORDER BY product_id")]
    rng = random.Random(seed)
    orders: list[str] = []
    for _ in range(count):
        roll = rng.random()
        with contextlib.suppress(DomainError, ValidationError):
            if roll < 0.3:
                shop.mediator.send(UpdateProductStock(product_id=rng.choice(products), delta=rng.randint(-3, 8),
                                                      reason="count"))
            elif roll < 0.85:
                items = tuple(OrderItem(product_id=p, quantity=rng.randint(1, 4))
                              for p in rng.sample(products, rng.randint(1, len(products))))
                orders.append(shop.mediator.send(PlaceOrder(customer_id=customer, items=items)))
            elif orders:
                shop.mediator.send(CancelOrder(order_id=orders.pop(rng.randrange(len(orders))), reason="changed"))
    shop.close()


if __name__ == "__main__":
    hammer(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
