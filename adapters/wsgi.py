"""Embedding the sync ``Mediator`` in a plain WSGI service (no framework needed; Flask works the same way).

``ShopWSGI`` serves a few of the shop's routes. Each request runs in one
``mediator.scope`` whose principal comes from the headers, returns the
request's commit position in ``X-Consistency-Token`` and honours
``X-Consistent-With`` on reads, like the ASGI middleware.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from adapters.fastapi import parse_token
from adapters.shop_http import data, principal_of
from domain.errors import ConcurrencyConflict, NotFound, RuleViolation
from domain.messages import GetOrderDetails, OrderItem, PlaceOrder
from handlers.authorization import Forbidden
from mediator import Mediator, ValidationError
from mediator.readmodels import ConsistencyTimeout, ReadModelUnavailable, consistent, last_token

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
STATUS = {200: "200 OK", 201: "201 Created", 400: "400 Bad Request", 403: "403 Forbidden", 404: "404 Not Found",
          409: "409 Conflict", 422: "422 Unprocessable Entity", 503: "503 Service Unavailable"}


class ShopWSGI:
    """``POST /orders`` and ``GET /orders/<id>`` of the shop, on the sync mediator.

    ``head`` (the log's last position, ``storage.head``) lets it refuse a token no read model could reach.
    """

    def __init__(self, mediator: Mediator, head: Callable[[], int] | None = None) -> None:
        self.mediator = mediator
        self.head = head

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        try:
            wanted = parse_token(headers.get("x-consistent-with"), self.head)
        except ValueError as exc:
            start_response(STATUS[400], [("Content-Type", "application/json")])
            return [json.dumps({"error": "bad_request", "detail": str(exc)}).encode()]
        before = last_token()
        waiting = consistent(wanted) if wanted else contextlib.nullcontext()
        with self.mediator.scope(principal=principal_of(headers)), waiting:
            status, body = self._route(environ)
        extra = [("Content-Type", "application/json")]
        token = last_token()
        if token is not None and token != before:
            extra.append(("X-Consistency-Token", str(token)))
        start_response(STATUS[status], extra)
        return [json.dumps(body).encode()]

    def _route(self, environ: dict[str, Any]) -> tuple[int, Any]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        try:
            if method == "POST" and path == "/orders":
                body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)) or b"{}")
                items = tuple(OrderItem(product_id=str(i["product_id"]), quantity=_quantity(i["quantity"]))
                              for i in body["items"])
                address = body.get("shipping_address", "")
                if not isinstance(address, str):
                    raise TypeError("A shipping_address is text.")
                return 201, {"order_id": self.mediator.send(PlaceOrder(customer_id=str(body["customer_id"]),
                                                                       items=items, shipping_address=address))}
            if method == "GET" and path.startswith("/orders/"):
                order_id = path.removeprefix("/orders/")
                details = self.mediator.ask(GetOrderDetails(order_id=order_id))
                if details is None:
                    raise NotFound("order", order_id)
                return 200, data(details)
            return 404, {"error": "not_found", "detail": f"No route {method} {path}."}
        except Exception as exc:
            for kinds, status, error in ERRORS:
                if isinstance(exc, kinds):
                    return status, {"error": error, "detail": str(exc) or type(exc).__name__}
            raise


# Most specific first: ValidationError and RuleViolation are ValueErrors, which alone mean a malformed body.
ERRORS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int, str], ...] = (
    (ValidationError, 422, "validation"),
    (NotFound, 404, "not_found"),
    (Forbidden, 403, "forbidden"),
    (ConcurrencyConflict, 409, "conflict"),
    (RuleViolation, 409, "rule_violation"),
    (ConsistencyTimeout, 503, "not_yet_consistent"),
    (ReadModelUnavailable, 503, "read_model_unavailable"),
    ((KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError), 400, "bad_request"),
)


def _quantity(value: object) -> int:
    if type(value) is not int or not 1 <= value <= 1000:
        raise ValueError(f"A quantity is a whole number from 1 to 1000, not {value!r}.")
    return value
