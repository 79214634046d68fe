"""What the shop's two HTTP embeddings share (FastAPI and WSGI), with no web framework: who is acting, how
answers become JSON, and the statuses of the domain's errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from domain.errors import ConcurrencyConflict, NotFound, RuleViolation
from handlers.authorization import ANONYMOUS, Forbidden, Principal
from mediator.http import StatusMap

STATUS_OF: StatusMap = {
    NotFound: (404, "not_found"),
    Forbidden: (403, "forbidden"),
    ConcurrencyConflict: (409, "conflict"),
    RuleViolation: (409, "rule_violation"),
}
"""The domain's errors and how each answers over HTTP."""


def principal_of(headers: Mapping[str, str]) -> Principal:
    """Who is acting, from the request's headers: ``X-Admin: 1`` for staff, ``X-Customer-Id`` for a customer."""
    if headers.get("x-admin") == "1":
        return Principal(admin=True)
    customer = headers.get("x-customer-id")
    return Principal(customer_id=customer) if customer else ANONYMOUS


def data(value: Any) -> Any:
    """Answers (attrs classes, decimals, dates) as JSON-friendly data."""
    if attrs.has(type(value)):
        return {f.name: data(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, tuple | list):
        return [data(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
