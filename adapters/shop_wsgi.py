"""The shop on the sync ``Mediator`` in a plain WSGI app: no web framework needed (Flask works the same way).

``ShopRoutes`` serves ``POST /orders``, ``GET /orders/<id>`` and (for staff) ``GET /dashboard``;
:class:`mediator.wsgi.MediatorWSGI` around it gives each request its dispatch scope (the principal from its bearer
token, as :mod:`adapters.shop_web` says), the ``X-Consistency-Token`` of its last command, read-your-writes with
``X-Consistent-With``, a body limit, and the JSON answers of errors, as the ASGI app has.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from adapters.shop_web import STATUS_OF, data, identity
from domain.errors import NotFound
from domain.messages import GetOrderDetails, GetSalesDashboard, OrderItem, PlaceOrder
from mediator import Mediator
from mediator.http import MAX_BODY, idempotency_key_of
from mediator.wsgi import MediatorWSGI, StartResponse


class MalformedBody(ValueError):
    """The request's body is not what the route takes."""


STATUS = {200: "200 OK", 201: "201 Created", 404: "404 Not Found"}


class ShopRoutes:
    """The routes, on the mediator; errors propagate to the middleware, which answers them."""

    def __init__(self, mediator: Mediator) -> None:
        self.mediator = mediator

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        status, body = self._route(environ)
        payload = json.dumps(body).encode()
        start_response(STATUS[status], [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]

    def _route(self, environ: dict[str, Any]) -> tuple[int, Any]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method == "POST" and path == "/orders":
            return 201, {"order_id": self.mediator.send(_order(environ))}
        if method == "GET" and path.startswith("/orders/"):
            order_id = path.removeprefix("/orders/")
            details = self.mediator.ask(GetOrderDetails(order_id=order_id))
            if details is None:
                raise NotFound("order", order_id)
            return 200, data(details)
        if method == "GET" and path == "/dashboard":
            return 200, data(self.mediator.ask(GetSalesDashboard()))
        return 404, {"error": "not_found", "detail": f"No route {method} {path}."}


def _order(environ: dict[str, Any]) -> PlaceOrder:
    """The ``PlaceOrder`` a request's JSON body asks for, with its ``Idempotency-Key``; :class:`MalformedBody` if it
    is not one."""
    try:
        # MediatorWSGI's input: the body's CONTENT_LENGTH bytes, or a chunked one's up to its limit, else none.
        body = json.loads(environ["wsgi.input"].read() or b"{}")
        items = tuple(OrderItem(product_id=str(i["product_id"]), quantity=_quantity(i["quantity"]))
                      for i in body["items"])
        address = body.get("shipping_address", "")
        if not isinstance(address, str):
            raise TypeError("A shipping_address is text.")
        customer_id = str(body["customer_id"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
        raise MalformedBody(f"The body is not an order: {type(exc).__name__}: {exc}") from exc
    return PlaceOrder(customer_id=customer_id, items=items, shipping_address=address,
                      idempotency_key=idempotency_key_of(environ.get("HTTP_IDEMPOTENCY_KEY")))


def _quantity(value: object) -> int:
    if type(value) is not int or not 1 <= value <= 1000:
        raise ValueError(f"A quantity is a whole number from 1 to 1000, not {value!r}.")
    return value


def wsgi_app(mediator: Mediator, head: Callable[[], int] | None = None, *, jwt_key: str | None = None,
             trust_headers: bool | None = None, max_body: int | None = MAX_BODY) -> MediatorWSGI:
    """The shop's WSGI application: its routes inside :class:`~mediator.wsgi.MediatorWSGI`.

    ``head`` (the log's last position, ``storage.head``) lets it refuse a token no read model could reach.
    ``jwt_key`` (else ``SHOP_JWT_KEY``) verifies the bearer tokens; ``trust_headers`` (else
    ``SHOP_TRUST_HEADERS=1``) takes identity from headers instead, for development only
    (:func:`adapters.shop_web.identity`). ``max_body`` is the largest request body, in bytes.
    """
    return MediatorWSGI(ShopRoutes(mediator), mediator, identity(jwt_key=jwt_key, trust_headers=trust_headers),
                        head=head, status_of={**STATUS_OF, MalformedBody: (400, "bad_request")}, max_body=max_body)
