"""Retrying a command that lost a race, where that is safe.

A command that names the version it expects (``expected_version``) is the
caller's optimistic check: its conflict goes back to the caller. A command
without one has no such expectation, so when another writer changed the same
aggregate between its read and its write (possible with several database
connections, e.g. on PostgreSQL), running it again on fresh state is what the
caller wanted. ``RetryOnConflict`` does that, a bounded number of times, around
the whole transaction: register it before ``engine.install(registry)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from domain.errors import ConcurrencyConflict
from mediator import current_context

log = structlog.get_logger("shop.retry")


class RetryOnConflict:
    """Run a command again on ``ConcurrencyConflict`` if it carries no ``expected_version``."""

    needs_scope = True

    def __init__(self, attempts: int = 3, pause: float = 0.005) -> None:
        self.attempts = attempts
        self.pause = pause

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        if getattr(message, "expected_version", None) is not None or current_context().depth > 0:
            return next(message)  # the caller's own check, or a nested command inside someone's transaction
        for attempt in range(1, self.attempts + 1):
            try:
                return next(message)
            except ConcurrencyConflict as conflict:
                if attempt == self.attempts:
                    raise
                log.info("command retried after a conflict", message_type=type(message).__name__,
                         attempt=attempt, kind=conflict.kind)
                time.sleep(self.pause * attempt)
        raise AssertionError("unreachable")

    async def handle_async(self, message: Any, next: Callable[[Any], Any]) -> Any:
        import asyncio

        if getattr(message, "expected_version", None) is not None or current_context().depth > 0:
            return await next(message)
        for attempt in range(1, self.attempts + 1):
            try:
                return await next(message)
            except ConcurrencyConflict as conflict:
                if attempt == self.attempts:
                    raise
                log.info("command retried after a conflict", message_type=type(message).__name__,
                         attempt=attempt, kind=conflict.kind)
                await asyncio.sleep(self.pause * attempt)
        raise AssertionError("unreachable")
