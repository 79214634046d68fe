"""The shop with its order fulfilment running, for the SIGKILL test: ``python -m tests.shop.fulfilment_process
ACK_FILE`` places orders (paying most of them at once) and runs the projections, the fulfilment's steps and the
due payment timeouts until killed, on the database ``SHOP_DB`` or ``SHOP_POSTGRES`` + ``SHOP_SCHEMA`` names.

Its engine's clock runs ``SPEED`` times faster than the wall's from ``SHOP_EPOCH``, alike in every process, so a
15-minute payment timeout falls due in 1.5 s.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from decimal import Decimal

from adapters.shop_app import Shop, shop_from_env
from domain.errors import ConcurrencyConflict, IllegalTransition
from domain.messages import OrderItem, PayForOrder, PlaceOrder

SPEED = 600.0


def fast_clock(epoch: float) -> float:
    return epoch + (time.time() - epoch) * SPEED


def total_of(shop: Shop, order_id: str) -> Decimal:
    found = shop.inspect(lambda model, tx: model.order(tx, order_id))
    assert found is not None
    return found.total


def loop(ack: str) -> None:
    epoch = float(os.environ["SHOP_EPOCH"])
    shop = shop_from_env(logging=False, engine_clock=lambda: fast_clock(epoch))
    customer, products = os.environ["SHOP_CUSTOMER"], os.environ["SHOP_PRODUCTS"].split(",")
    shop.engine.start()
    rng = random.Random()
    with open(ack, "a") as acks:
        while True:
            items = tuple(OrderItem(product_id=p, quantity=1) for p in rng.sample(products, rng.randint(1, 2)))
            try:
                order = shop.mediator.send(PlaceOrder(customer_id=customer, items=items))
            except ConcurrencyConflict:  # the other process took the same stock rows each time it was retried
                continue
            acks.write(f"placed {order}\n")
            acks.flush()
            if rng.random() < 0.7:
                time.sleep(rng.random() * 0.01)
                with contextlib.suppress(ConcurrencyConflict, IllegalTransition):  # (expired meanwhile)
                    shop.mediator.send(PayForOrder(order_id=order, amount=total_of(shop, order)))
                    acks.write(f"paid {order}\n")
                    acks.flush()


if __name__ == "__main__":
    loop(sys.argv[1])
