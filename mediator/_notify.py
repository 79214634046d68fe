"""Publishing strategies: how the handlers of one event run, and how their failures surface."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ._messages import qualname

Handler = Callable[[Any], Any]


class PublishStrategy(enum.Enum):
    """How ``publish`` runs an event's handlers."""

    STOP_ON_FIRST_ERROR = "stop_on_first_error"
    """One after another; the first failure propagates and later handlers do not run."""
    RUN_ALL = "run_all"
    """One after another; every handler runs, failures are raised together as an ExceptionGroup."""
    CONCURRENT = "concurrent"
    """Async only: all at once; every handler runs, failures are raised as an ExceptionGroup."""

    def __repr__(self) -> str:
        return f"PublishStrategy.{self.name}"


def _group(event: object, errors: list[Exception], total: int) -> ExceptionGroup[Exception]:
    return ExceptionGroup(f"{len(errors)} of {total} handlers of {qualname(type(event))} failed", errors)


def run_all_sync(handlers: Sequence[Handler], event: object) -> None:
    errors: list[Exception] = []
    for handler in handlers:
        try:
            handler(event)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise _group(event, errors, len(handlers))


async def run_all_async(handlers: Sequence[Callable[[Any], Awaitable[Any]]], event: object) -> None:
    errors: list[Exception] = []
    for handler in handlers:
        try:
            await handler(event)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise _group(event, errors, len(handlers))


async def concurrent_async(handlers: Sequence[Callable[[Any], Awaitable[Any]]], event: object) -> None:
    results = await asyncio.gather(*(h(event) for h in handlers), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    fatal = [e for e in errors if not isinstance(e, Exception)]
    if fatal:
        raise fatal[0]
    if errors:
        raise _group(event, errors, len(handlers))  # type: ignore[arg-type]


# STOP_ON_FIRST_ERROR has no runner: it is compiled into straight-line calls at build.
SYNC_RUNNERS: dict[PublishStrategy, Callable[[Sequence[Handler], object], None]] = {
    PublishStrategy.RUN_ALL: run_all_sync,
}
ASYNC_RUNNERS: dict[PublishStrategy, Callable[[Sequence[Handler], object], Awaitable[None]]] = {
    PublishStrategy.RUN_ALL: run_all_async,
    PublishStrategy.CONCURRENT: concurrent_async,
}
