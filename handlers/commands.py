"""Command handlers: load aggregates, apply the domain's rules, save, record the events.

Stock is reserved by the inventory reacting to ``OrderPlaced`` with its own
``ReserveStock`` command, as seed 004 describes. It runs in the same dispatch
and the same transaction as ``PlaceOrder``, so an order whose stock cannot be
reserved is **rejected**: ``InsufficientStock`` rolls the whole command back,
and no order, no reservation and no event is stored. Compensation (placing the
order, then cancelling it) would be needed only if the reservation ran later
or elsewhere; here all-or-nothing is simpler and never shows a customer an
order that was never going to ship.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from domain.errors import NotFound, RuleViolation
from domain.events import (
    OrderLine,
    OrderPlaced,
    StockAdjusted,
    StockReleased,
    StockReserved,
    StockShipped,
)
from domain.messages import (
    CancelOrder,
    ChangePrice,
    ConfirmOrder,
    CreateCategory,
    CreateProduct,
    DiscontinueProduct,
    ExpireUnpaidOrder,
    PayForOrder,
    PlaceOrder,
    RegisterCustomer,
    ReserveStock,
    ShipOrder,
    UpdateProductStock,
)
from domain.model import Category, Customer, Order, OrderStatus, Product, Stock
from mediator import Mediator, Registry
from mediator.readmodels import UnitOfWork, new_event_id

from .ports import WriteModel

Clock = Callable[[], dt.datetime]
StockEvent = StockReserved | StockReleased | StockShipped


def new_id() -> str:
    """A new id for a customer, category, product or order: time-ordered, as the framework's event ids are.

    Random ids put each new order anywhere in every index keyed by it (the write model's orders, the read models'
    order details, a customer's orders, the dashboard's sales), so every insert dirties a page of its own and every
    commit writes them all to the WAL; ids that grow with time are appended at one end.
    """
    return new_event_id()


def _expect(actual: int, expected: int | None, kind: str, key: str) -> None:
    from domain.errors import ConcurrencyConflict

    if expected is not None and expected != actual:
        raise ConcurrencyConflict(kind, key, expected, actual)


class ShopCommands:
    """Every command handler of the shop, sharing the write model port and the clock."""

    def __init__(self, model: WriteModel, clock: Clock) -> None:
        self.model = model
        self.clock = clock

    def register_customer(self, command: RegisterCustomer, uow: UnitOfWork) -> str:
        customer, registered = Customer.register(new_id(), command.name, command.email)
        self.model.add_customer(uow.handle, customer.customer_id, customer.name, customer.email)
        uow.record(registered, key=customer.customer_id)
        return customer.customer_id

    def create_category(self, command: CreateCategory, uow: UnitOfWork) -> str:
        category, created = Category.create(new_id(), command.name)
        self.model.add_category(uow.handle, category.category_id, category.name)
        uow.record(created, key=category.category_id)
        return category.category_id

    def create_product(self, command: CreateProduct, uow: UnitOfWork) -> str:
        if not self.model.category_exists(uow.handle, command.category_id):
            raise NotFound("category", command.category_id)
        product, created = Product.create(new_id(), command.category_id, command.name, command.description,
                                          command.price)
        self.model.save_product(uow.handle, product, 0)
        uow.record(created, key=product.product_id)
        return product.product_id

    def _product(self, uow: UnitOfWork, product_id: str) -> Product:
        product = self.model.product(uow.handle, product_id)
        if product is None:
            raise NotFound("product", product_id)
        return product

    def change_price(self, command: ChangePrice, uow: UnitOfWork) -> None:
        product = self._product(uow, command.product_id)
        _expect(product.version, command.expected_version, "product", product.product_id)
        version = product.version
        event = product.change_price(command.new_price, command.reason)
        self.model.save_product(uow.handle, product, version)
        uow.record(event, key=product.product_id)

    def discontinue_product(self, command: DiscontinueProduct, uow: UnitOfWork) -> None:
        product = self._product(uow, command.product_id)
        version = product.version
        event = product.discontinue()
        self.model.save_product(uow.handle, product, version)
        uow.record(event, key=product.product_id)

    def update_stock(self, command: UpdateProductStock, uow: UnitOfWork) -> None:
        self._product(uow, command.product_id)
        stock = self.model.stock(uow.handle, command.product_id)
        _expect(stock.version, command.expected_version, "stock", stock.product_id)
        version = stock.version
        event: StockAdjusted = stock.adjust(command.delta, command.reason)
        self.model.save_stock(uow.handle, stock, version)
        uow.record(event, key=stock.product_id)

    def place_order(self, command: PlaceOrder, uow: UnitOfWork, mediator: Mediator) -> str:
        if self.model.customer_name(uow.handle, command.customer_id) is None:
            raise NotFound("customer", command.customer_id)
        lines = []
        for item in command.items:
            product = self._product(uow, item.product_id)
            if product.discontinued:
                raise RuleViolation(f"Product {product.product_id!r} is discontinued.")
            lines.append(OrderLine(product_id=product.product_id, product_name=product.name,
                                   category_id=product.category_id, quantity=item.quantity, unit_price=product.price))
        order, placed = Order.place(new_id(), command.customer_id, lines, self.clock(), command.shipping_address)
        self.model.save_order(uow.handle, order, 0)
        uow.identity_map["order", order.order_id] = order  # ReserveStock, in this transaction, need not read it back
        uow.record(placed, key=order.order_id)
        mediator.publish(placed)  # the inventory reacts in this same transaction (see the module docstring)
        return order.order_id

    def reserve_stock(self, command: ReserveStock, uow: UnitOfWork) -> None:
        order = self._order(uow, command.order_id)
        version = order.version
        order.mark_reserved()  # once per order, and only while it is placed: a repeat cannot leak stock
        self.model.save_order(uow.handle, order, version)
        self._each_line(uow, order, Stock.reserve)

    def _each_line(self, uow: UnitOfWork, order: Order, move: Callable[[Stock, str, int], StockEvent]) -> None:
        """Apply ``move`` (reserve, release or ship) to the stock of every line of ``order``, and record it."""
        for line in order.lines:
            stock = self.model.stock(uow.handle, line.product_id)
            version = stock.version
            event = move(stock, order.order_id, line.quantity)
            self.model.save_stock(uow.handle, stock, version)
            uow.record(event, key=stock.product_id)

    def _order(self, uow: UnitOfWork, order_id: str) -> Order:
        """The order, as this transaction last saved or read it, else from the write model."""
        known: Order | None = uow.identity_map.get(("order", order_id))
        if known is not None:
            return known
        order = self.model.order(uow.handle, order_id)
        if order is None:
            raise NotFound("order", order_id)
        uow.identity_map["order", order_id] = order
        return order

    def confirm_order(self, command: ConfirmOrder, uow: UnitOfWork) -> None:
        order = self._order(uow, command.order_id)
        _expect(order.version, command.expected_version, "order", order.order_id)
        version = order.version
        event = order.confirm()
        self.model.save_order(uow.handle, order, version)
        uow.record(event, key=order.order_id)

    def pay_for_order(self, command: PayForOrder, uow: UnitOfWork) -> None:
        order = self._order(uow, command.order_id)
        version = order.version
        paid, confirmed = order.pay(command.amount)
        self.model.save_order(uow.handle, order, version)
        uow.record(paid, key=order.order_id)
        uow.record(confirmed, key=order.order_id)

    def expire_unpaid_order(self, command: ExpireUnpaidOrder, uow: UnitOfWork) -> None:
        order = self._order(uow, command.order_id)
        if order.status is not OrderStatus.PLACED:
            return  # paid (confirmed), shipped or cancelled meanwhile: nothing to expire
        version = order.version
        event = order.cancel("not paid in time")
        self.model.save_order(uow.handle, order, version)
        uow.record(event, key=order.order_id)
        self._each_line(uow, order, Stock.release)

    def ship_order(self, command: ShipOrder, uow: UnitOfWork) -> None:
        order = self._order(uow, command.order_id)
        _expect(order.version, command.expected_version, "order", order.order_id)
        version = order.version
        event = order.ship()
        self.model.save_order(uow.handle, order, version)
        uow.record(event, key=order.order_id)
        self._each_line(uow, order, Stock.ship)

    def cancel_order(self, command: CancelOrder, uow: UnitOfWork) -> None:
        order = self._order(uow, command.order_id)
        _expect(order.version, command.expected_version, "order", order.order_id)
        version = order.version
        event = order.cancel(command.reason)
        self.model.save_order(uow.handle, order, version)
        uow.record(event, key=order.order_id)
        self._each_line(uow, order, Stock.release)  # the stock it held goes back on sale


def reserve_on_order_placed(event: OrderPlaced, mediator: Mediator) -> None:
    """The inventory's reaction to a placed order: reserve its stock, through its own command."""
    mediator.send(ReserveStock(order_id=event.order_id))


def register(registry: Registry, commands: ShopCommands) -> None:
    """Register every command handler and the inventory's event handler."""
    registry.handle(RegisterCustomer).by(commands.register_customer)
    registry.handle(CreateCategory).by(commands.create_category)
    registry.handle(CreateProduct).by(commands.create_product)
    registry.handle(ChangePrice).by(commands.change_price)
    registry.handle(DiscontinueProduct).by(commands.discontinue_product)
    registry.handle(UpdateProductStock).by(commands.update_stock)
    registry.handle(PlaceOrder).by(commands.place_order)
    registry.handle(ReserveStock).by(commands.reserve_stock)
    registry.handle(ConfirmOrder).by(commands.confirm_order)
    registry.handle(ShipOrder).by(commands.ship_order)
    registry.handle(CancelOrder).by(commands.cancel_order)
    registry.handle(PayForOrder).by(commands.pay_for_order)
    registry.handle(ExpireUnpaidOrder).by(commands.expire_unpaid_order)
    registry.handle(OrderPlaced).by(reserve_on_order_placed)
