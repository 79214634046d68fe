"""Typed domain errors: each says which rule was broken, about what, and keeps the objects involved."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Root of the business-rule errors of the reference shop."""


class NotFound(DomainError, LookupError):
    """A customer, category, product or order does not exist."""

    def __init__(self, kind: str, key: Any) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"No {kind} {key!r} exists.")


class RuleViolation(DomainError, ValueError):
    """A command would break a business rule."""


class InsufficientStock(RuleViolation):
    """Stock can never go negative: not enough is available to reserve or remove."""

    def __init__(self, product_id: str, wanted: int, available: int) -> None:
        self.product_id = product_id
        self.wanted = wanted
        self.available = available
        super().__init__(f"Product {product_id!r} has {available} available, {wanted} needed.")


class IllegalTransition(RuleViolation):
    """An order was asked to move to a status it cannot reach from its current one."""

    def __init__(self, order_id: str, current: str, action: str) -> None:
        self.order_id = order_id
        self.current = current
        self.action = action
        super().__init__(f"Order {order_id!r} is {current}; it cannot be {action}.")


class ConcurrencyConflict(DomainError):
    """Someone else changed the thing since it was read; reload and try again."""

    def __init__(self, kind: str, key: Any, expected: int, actual: int) -> None:
        self.kind = kind
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(f"{kind} {key!r} is at version {actual}, not {expected}: it changed meanwhile.")
