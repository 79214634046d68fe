"""The scenario suite's shop data: generated from a seed, and bulk-loaded into the CQRS shop honestly.

The generator makes a catalogue (categories, products with their opening stock)
and then *blocks* of history: each block brings its own customers and their
orders, spread over the same 90 days, so a shop four times the size has four
times the customers and four times the orders a day, while each customer has
about as many orders as before. Everything is plain data, deterministic for a
seed, and knows nothing of either implementation.

:class:`CqrsLoader` puts that data into the reference shop without sending a
command per order (200,000 ``PlaceOrder`` dispatches would take longer than the
whole suite may run): it writes the write-model rows through the shop's own
:class:`~handlers.ports.WriteModel` port and appends, in the same transactions,
exactly the events the command handlers record, built by the same domain methods
(``Product.create``, ``Stock.adjust``, ``Order.place``, ``Stock.reserve``) and
encoded with the shop's registered event types. The real projections then build
every read model from the log.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import attrs

from adapters.shop_app import Shop, event_types
from domain import events, model
from mediator import Event
from mediator.readmodels import NewEvent, WriteSession, new_event_id

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAYS = 90
OPENING_STOCK = 10_000_000
"""Enough of every product for any size and every checkout the suite sends: no order is refused."""
ORDERS_PER_CUSTOMER = 10
WORDS = ("Brass", "Oak", "Linen", "Paper", "Steel", "Walnut", "Glass", "Wool", "Clay", "Cotton")
THINGS = ("lamp", "shade", "rug", "chair", "vase", "shelf", "table", "cushion", "mirror", "clock")
LINES_PER_ORDER = (1, 1, 2, 2, 3, 3)
QUANTITIES = (1, 1, 1, 2, 3)


@attrs.frozen
class Category:
    category_id: str
    name: str


@attrs.frozen
class Product:
    product_id: str
    category_id: str
    name: str
    description: str
    price_cents: int

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_cents).scaleb(-2)


@attrs.frozen
class Customer:
    customer_id: str
    name: str
    email: str


@attrs.frozen
class Order:
    order_id: str
    customer_id: str
    placed_at: dt.datetime
    items: tuple[tuple[str, int], ...]
    """``(product_id, quantity)`` per line, in the order the customer gave them."""


@attrs.frozen
class Catalog:
    categories: tuple[Category, ...]
    products: tuple[Product, ...]

    def product(self, product_id: str) -> Product:
        return self.products[int(product_id.rsplit("-", 1)[1])]


@attrs.frozen
class Block:
    """Customers and their orders, appended to a shop together."""

    customers: tuple[Customer, ...]
    orders: tuple[Order, ...]


def catalog(seed: int, *, categories: int = 20, per_category: int = 100) -> Catalog:
    """Categories and products, with prices from 1.00 to 200.00."""
    rng = random.Random(seed)
    cats = tuple(Category(f"cat-{i:04d}", f"{WORDS[i % len(WORDS)]} {THINGS[i // len(WORDS) % len(THINGS)]}s {i}")
                 for i in range(categories))
    products = []
    for i in range(categories * per_category):
        name = f"{rng.choice(WORDS)} {rng.choice(THINGS)} {i:05d}"
        products.append(Product(f"prd-{i:06d}", cats[i % categories].category_id, name, f"A {name.lower()}.",
                                rng.randrange(100, 20_001)))
    return Catalog(cats, tuple(products))


def block(shop: Catalog, seed: int, *, orders: int, first_order: int = 0, first_customer: int = 0) -> Block:
    """``orders`` orders, time-ordered over :data:`DAYS` days, by ``orders / 10`` new customers."""
    rng = random.Random(seed)
    customers = tuple(Customer(f"cus-{i:08d}", f"Customer {i}", f"customer{i}@example.com")
                      for i in range(first_customer, first_customer + max(orders // ORDERS_PER_CUSTOMER, 1)))
    times = sorted(rng.randrange(DAYS * 86_400) for _ in range(orders))
    ids = [product.product_id for product in shop.products]
    made = []
    for n, seconds in enumerate(times):
        picked: dict[str, int] = {}
        for _ in range(rng.choice(LINES_PER_ORDER)):
            picked.setdefault(ids[rng.randrange(len(ids))], rng.choice(QUANTITIES))  # a repeat makes one line less
        made.append(Order(f"ord-{first_order + n:09d}", customers[rng.randrange(len(customers))].customer_id,
                          START + dt.timedelta(seconds=seconds), tuple(picked.items())))
    return Block(customers, tuple(made))


def history(shop: Catalog, seed: int, *, orders: int, parts: Sequence[int]) -> list[Block]:
    """Blocks of ``orders * part / sum(parts)`` orders each, numbered on from each other."""
    blocks: list[Block] = []
    first_order = first_customer = 0
    for index, part in enumerate(parts):
        count = orders * part // sum(parts)
        made = block(shop, seed * 1_000 + index, orders=count, first_order=first_order,
                     first_customer=first_customer)
        blocks.append(made)
        first_order += len(made.orders)
        first_customer += len(made.customers)
    return blocks


def chunks(items: Sequence[Order], size: int) -> Iterator[Sequence[Order]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class CqrsLoader:
    """Write-model rows and their events, in the shop's own transactions, as the command handlers make them."""

    def __init__(self, shop: Shop, data: Catalog, *, orders_per_transaction: int = 5_000) -> None:
        self.shop = shop
        self.data = data
        self.types = event_types()
        self.per_transaction = orders_per_transaction
        self.stock: dict[str, model.Stock] = {}
        self.saved: dict[str, int] = {}  # the stock version each row has in the database

    def _append(self, session: WriteSession, recorded: Iterable[tuple[Event, str]], at: float) -> None:
        encode = self.types.encode
        # Ids made as the unit of work makes them (time-ordered), so the log's index is written as a service writes it.
        new = [NewEvent(new_event_id(), *encode(event), key, at) for event, key in recorded]
        session.append(new)

    def load_catalog(self) -> None:
        """``CreateCategory``, ``CreateProduct`` and ``UpdateProductStock`` (opening stock), for the catalogue."""
        session, store = self.shop.storage.begin(), self.shop.model
        recorded: list[tuple[Event, str]] = []
        for category in self.data.categories:
            store.add_category(session.handle, category.category_id, category.name)
            recorded.append((events.CategoryCreated(category_id=category.category_id, name=category.name),
                             category.category_id))
        for item in self.data.products:
            product, created = model.Product.create(item.product_id, item.category_id, item.name,
                                                    item.description, item.price)
            store.save_product(session.handle, product, 0)
            stock = self.stock[item.product_id] = model.Stock(item.product_id)
            recorded += [(created, item.product_id), (stock.adjust(OPENING_STOCK, "opening stock"), item.product_id)]
        self._append(session, recorded, START.timestamp())
        self._save_stock(session)
        session.commit()

    def load(self, part: Block) -> None:
        """``RegisterCustomer`` for each customer, then ``PlaceOrder`` (with its ``ReserveStock``) per order."""
        session, store = self.shop.storage.begin(), self.shop.model
        recorded: list[tuple[Event, str]] = []
        for customer in part.customers:
            store.add_customer(session.handle, customer.customer_id, customer.name, customer.email)
            recorded.append((events.CustomerRegistered(customer_id=customer.customer_id, name=customer.name,
                                                       email=customer.email), customer.customer_id))
        self._append(session, recorded, START.timestamp())
        session.commit()
        for orders in chunks(part.orders, self.per_transaction):
            session = self.shop.storage.begin()
            for order in orders:
                self._append(session, self._place(session.handle, order), order.placed_at.timestamp())
            self._save_stock(session)
            session.commit()

    def _place(self, handle: Any, order: Order) -> list[tuple[Event, str]]:
        """What ``place_order`` and the ``reserve_stock`` it triggers write and record, in their order."""
        lines = []
        for product_id, quantity in order.items:
            product = self.data.product(product_id)
            lines.append(events.OrderLine(product_id=product_id, product_name=product.name,
                                          category_id=product.category_id, quantity=quantity,
                                          unit_price=product.price))
        placed_order, placed = model.Order.place(order.order_id, order.customer_id, lines, order.placed_at)
        placed_order.mark_reserved()
        self.shop.model.save_order(handle, placed_order, 0)
        recorded: list[tuple[Event, str]] = [(placed, order.order_id)]
        for line in placed_order.lines:
            recorded.append((self.stock[line.product_id].reserve(order.order_id, line.quantity), line.product_id))
        return recorded

    def _save_stock(self, session: WriteSession) -> None:
        """Save every stock row that moved since it was last saved (once per transaction, not per line)."""
        handle = session.handle
        for product_id, stock in self.stock.items():
            if self.saved.get(product_id, 0) != stock.version:
                self.shop.model.save_stock(handle, stock, self.saved.get(product_id, 0))
                self.saved[product_id] = stock.version
