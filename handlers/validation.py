"""Validators of the shop's messages: pure checks of what a command or query carries, run before its handler.

``Validation(check_types=True)`` checks every field's type first, so these see only values of the declared
types; they add what a type alone cannot say. The limits are the HTTP layer's (:mod:`adapters.shop_http`), so a
message sent in process is held to what a request is. Rules that need the database (does the product exist, is
there stock enough) stay in the command handlers.

>>> from decimal import Decimal
>>> from domain.messages import CreateProduct
>>> list(create_product(CreateProduct(category_id="c", name=" ", price=Decimal("9.999"))))
[('name', 'must not be empty'), ('price', 'must have at most 2 decimal places')]
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal

from domain.messages import (
    CancelOrder,
    ChangePrice,
    ConfirmOrder,
    CreateCategory,
    CreateProduct,
    ListProductsByCategory,
    PayForOrder,
    PlaceOrder,
    RegisterCustomer,
    SearchProducts,
    ShipOrder,
    UpdateProductStock,
)
from mediator import Registry

Problems = Iterator[tuple[str, str]]

NAME_LENGTH = 200
"""Names, reasons and search text: at most this many characters."""
DESCRIPTION_LENGTH = 2000
ADDRESS_LENGTH = 500
EMAIL_LENGTH = 254
PRICE_LIMIT = Decimal("1e10")
"""Prices are below this: twelve digits, two of them after the point."""
QUANTITY_LIMIT = 1000
LINE_LIMIT = 100
STOCK_CHANGE_LIMIT = 1_000_000
PAGE_LIMIT = 10_000
PAGE_SIZE_LIMIT = 100
SEARCH_LIMIT = 100

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


def _text(field: str, value: str, *, at_most: int = NAME_LENGTH, required: bool = True) -> Problems:
    """Text compared as stored: without the whitespace around it."""
    value = value.strip()
    if required and not value:
        yield field, "must not be empty"
    if len(value) > at_most:
        yield field, f"must have at most {at_most} characters"


def _price(field: str, value: Decimal) -> Problems:
    if value <= 0:
        yield field, "must be positive"
    elif value >= PRICE_LIMIT:
        yield field, f"must be less than {PRICE_LIMIT:,.0f}"
    elif value != value.quantize(Decimal("0.01")):
        yield field, "must have at most 2 decimal places"


def _between(field: str, value: int, low: int, high: int) -> Problems:
    if not low <= value <= high:
        yield field, f"must be between {low:,} and {high:,}"


def _version(value: int | None, lowest: int) -> Problems:
    if value is not None and value < lowest:
        yield "expected_version", f"must be at least {lowest}"


def register_customer(command: RegisterCustomer) -> Problems:
    yield from _text("name", command.name)
    email = command.email.strip()
    if len(email) > EMAIL_LENGTH:
        yield "email", f"must have at most {EMAIL_LENGTH} characters"
    elif not _EMAIL.fullmatch(email):
        yield "email", "must be an e-mail address"


def create_category(command: CreateCategory) -> Problems:
    yield from _text("name", command.name)


def create_product(command: CreateProduct) -> Problems:
    yield from _text("name", command.name)
    yield from _text("description", command.description, at_most=DESCRIPTION_LENGTH, required=False)
    yield from _price("price", command.price)


def change_price(command: ChangePrice) -> Problems:
    yield from _price("new_price", command.new_price)
    yield from _text("reason", command.reason)
    yield from _version(command.expected_version, 1)


def update_product_stock(command: UpdateProductStock) -> Problems:
    if command.delta == 0:
        yield "delta", "must not be 0"
    else:
        yield from _between("delta", command.delta, -STOCK_CHANGE_LIMIT, STOCK_CHANGE_LIMIT)
    yield from _text("reason", command.reason)
    yield from _version(command.expected_version, 0)


def place_order(command: PlaceOrder) -> Problems:
    if not 1 <= len(command.items) <= LINE_LIMIT:
        yield "items", f"must have 1 to {LINE_LIMIT} lines"
    for index, item in enumerate(command.items):
        yield from _between(f"items[{index}].quantity", item.quantity, 1, QUANTITY_LIMIT)
    yield from _text("shipping_address", command.shipping_address, at_most=ADDRESS_LENGTH, required=False)


def confirm_order(command: ConfirmOrder) -> Problems:
    yield from _version(command.expected_version, 1)


def ship_order(command: ShipOrder) -> Problems:
    yield from _version(command.expected_version, 1)


def pay_for_order(command: PayForOrder) -> Problems:
    amount = command.amount
    if not amount.is_finite() or amount <= 0:
        yield "amount", "must be positive"
    elif amount != amount.quantize(Decimal("0.01")):
        yield "amount", "must have at most 2 decimal places"


def cancel_order(command: CancelOrder) -> Problems:
    yield from _text("reason", command.reason)
    yield from _version(command.expected_version, 1)


def list_products_by_category(query: ListProductsByCategory) -> Problems:
    yield from _between("page", query.page, 1, PAGE_LIMIT)
    yield from _between("page_size", query.page_size, 1, PAGE_SIZE_LIMIT)


def search_products(query: SearchProducts) -> Problems:
    if not 1 <= len(query.text) <= NAME_LENGTH:
        yield "text", f"must have 1 to {NAME_LENGTH} characters"
    yield from _between("limit", query.limit, 1, SEARCH_LIMIT)


def register(registry: Registry) -> None:
    """Register every validator of the shop (run by the ``Validation`` behaviour ``build_shop`` installs)."""
    registry.validate(RegisterCustomer, register_customer)
    registry.validate(CreateCategory, create_category)
    registry.validate(CreateProduct, create_product)
    registry.validate(ChangePrice, change_price)
    registry.validate(UpdateProductStock, update_product_stock)
    registry.validate(PlaceOrder, place_order)
    registry.validate(ConfirmOrder, confirm_order)
    registry.validate(ShipOrder, ship_order)
    registry.validate(CancelOrder, cancel_order)
    registry.validate(PayForOrder, pay_for_order)
    registry.validate(ListProductsByCategory, list_products_by_category)
    registry.validate(SearchProducts, search_products)
