"""Who may do what: the ``Authorize`` and ``AuthorizeQueries`` behaviours.

Staff (an admin principal) may do anything. A customer may register, place
orders for themself, pay for and cancel their own orders and read their own orders;
everything else is staff work, the sales dashboard and daily sales included.
A denied command or query raises :class:`Forbidden` (:class:`SignInRequired`
when the caller is anonymous) before its handler runs and is logged with the
message type and the principal (the ``Logging`` behaviour, if outside, logs the
failed dispatch too, with the message's non-sensitive fields). Dispatches with no principal at all are
trusted in-process code (tests, scripts); the HTTP adapters always set one,
anonymous when nobody is signed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import structlog

from domain.errors import DomainError
from domain.messages import (
    CancelOrder,
    GetCustomerOrders,
    GetDailySales,
    GetOrderDetails,
    GetSalesDashboard,
    PayForOrder,
    PlaceOrder,
    RegisterCustomer,
    ReserveStock,
)
from mediator import Build, current_context
from mediator.readmodels import UnitOfWork

from .ports import WriteModel

log = structlog.get_logger("shop.authorization")

STAFF_QUERIES = (GetSalesDashboard, GetDailySales)
"""The queries only staff may send."""
QUERIES = (GetCustomerOrders, GetOrderDetails, *STAFF_QUERIES)
"""The queries ``AuthorizeQueries`` guards."""


@attrs.frozen
class Principal:
    """Who is acting: a customer (``customer_id``), staff (``admin``), or nobody (both empty)."""

    customer_id: str | None = None
    admin: bool = False


ANONYMOUS = Principal()
SYSTEM = Principal(admin=True)


class Forbidden(DomainError, PermissionError):
    """The acting principal may not send this command."""

    def __init__(self, message_type: type, principal: Principal) -> None:
        self.message_type = message_type
        self.principal = principal
        who = "an anonymous caller" if principal == ANONYMOUS else f"customer {principal.customer_id!r}"
        super().__init__(f"{who} may not send {message_type.__name__}"
                         + ("; sign in first." if principal == ANONYMOUS else "."))


class SignInRequired(Forbidden):
    """An anonymous caller sent what needs someone signed in (the HTTP adapters answer 401, not 403)."""


def denied(message_type: type, principal: Principal) -> Forbidden:
    """The error for ``principal`` denied ``message_type``: :class:`SignInRequired` when anonymous."""
    return (SignInRequired if principal == ANONYMOUS else Forbidden)(message_type, principal)


Rule = Callable[[Any, Principal, "Authorize"], bool]


def _anyone(message: Any, principal: Principal, auth: Authorize) -> bool:
    return True


def _own_order_placed(message: PlaceOrder, principal: Principal, auth: Authorize) -> bool:
    return principal.customer_id == message.customer_id


def _own_order_cancelled(message: CancelOrder, principal: Principal, auth: Authorize) -> bool:
    order = auth.model.order(auth.uow().handle, message.order_id)
    return order is not None and principal.customer_id == order.customer_id


def _own_order_paid(message: PayForOrder, principal: Principal, auth: Authorize) -> bool:
    order = auth.model.order(auth.uow().handle, message.order_id)
    return order is not None and principal.customer_id == order.customer_id


def _nested_only(message: Any, principal: Principal, auth: Authorize) -> bool:
    return current_context().depth > 0  # sent by the shop itself, while handling another message


RULES: dict[type, Rule] = {
    RegisterCustomer: _anyone,
    PlaceOrder: _own_order_placed,
    CancelOrder: _own_order_cancelled,
    PayForOrder: _own_order_paid,
    ReserveStock: _nested_only,
}


class Authorize:
    """The behaviour; commands only. Principals come from the dispatch scope (``mediator.scope(principal=...)``)."""

    needs_scope = True

    def __init__(self, model: WriteModel) -> None:
        self.model = model
        self.rule: Rule | None = None

    def for_message(self, message_type: type, build: Build) -> Authorize:
        bound = Authorize(self.model)
        bound.rule = RULES.get(message_type)
        return bound

    def uow(self) -> UnitOfWork:
        """The command's unit of work, which SyncReadModels (registered before this behaviour) has opened."""
        uow = current_context().scope._instances.get(UnitOfWork)
        if not isinstance(uow, UnitOfWork):
            raise LookupError("Authorize runs inside SyncReadModels: register it after engine.install(registry).")
        return uow

    def _check(self, message: Any) -> None:
        principal = current_context().principal
        if principal is None:  # no scope opened with a principal: trusted in-process code (tests, scripts)
            return
        if not isinstance(principal, Principal):
            raise TypeError(f"The dispatch principal must be a Principal, not {type(principal).__qualname__}.")
        if principal.admin or (self.rule is not None and self.rule(message, principal, self)):
            return
        log.warning("command denied", message_type=_type_name(message), customer_id=principal.customer_id,
                    admin=principal.admin)
        raise denied(type(message), principal)

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        self._check(message)
        return next(message)

    async def handle_async(self, message: Any, next: Callable[[Any], Any]) -> Any:
        self._check(message)
        return await next(message)



class AuthorizeQueries:
    """Reads of a customer's orders: only that customer or staff; someone else's order reads as missing. The
    sales figures (:data:`STAFF_QUERIES`): staff only."""

    needs_scope = True

    def _principal(self) -> Principal | None:
        principal = current_context().principal
        if principal is not None and not isinstance(principal, Principal):
            raise TypeError(f"The dispatch principal must be a Principal, not {type(principal).__qualname__}.")
        return principal

    def _filter(self, message: Any, result: Any) -> Any:
        principal = self._principal()
        if principal is None or principal.admin:
            return result
        if isinstance(message, GetCustomerOrders):
            return result
        owner = getattr(result, "customer_id", None)
        return result if owner is None or owner == principal.customer_id else None

    def _check(self, message: Any) -> None:
        principal = self._principal()
        if principal is None or principal.admin:
            return
        if isinstance(message, STAFF_QUERIES) or (
                isinstance(message, GetCustomerOrders) and principal.customer_id != message.customer_id):
            log.warning("query denied", message_type=_type_name(message), customer_id=principal.customer_id)
            raise denied(type(message), principal)

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        self._check(message)
        return self._filter(message, next(message))

    async def handle_async(self, message: Any, next: Callable[[Any], Any]) -> Any:
        self._check(message)
        return self._filter(message, await next(message))


def _type_name(message: object) -> str:
    """The message's class as ``module.Name``, as the mediator's own log lines name it."""
    return f"{type(message).__module__}.{type(message).__qualname__}"
