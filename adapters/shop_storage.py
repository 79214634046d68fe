"""The shop's SQL adapters raise the framework's storage errors, never the driver's.

A value the database refuses (a NUL character in PostgreSQL text, a number out of range, text SQLite cannot
encode, a duplicate key) is :class:`~mediator.readmodels.StorageDataError`, the input's fault (HTTP 422); a
database that is down or locked is :class:`~mediator.readmodels.StorageError` (HTTP 503, retry). What each
driver raises for which is the backend's ``classify`` function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from mediator.readmodels import StorageDataError, StorageError

T = TypeVar("T")

Classify = Callable[[BaseException], type[StorageError] | None]
"""The storage error a driver's exception becomes, or ``None`` to let it pass as it is."""


def translating(name: str, classify: Classify) -> Callable[[type[T]], type[T]]:
    """Wrap each public method of a class (inherited ones too) so the driver's errors become storage errors."""

    def decorate(cls: type[T]) -> type[T]:
        for attribute in dir(cls):
            method = getattr(cls, attribute)
            if not attribute.startswith("_") and callable(method) and not isinstance(method, type):
                setattr(cls, attribute, _translated(method, name, classify))
        return cls

    return decorate


def _translated(method: Callable[..., Any], name: str, classify: Classify) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except StorageError:
            raise
        except Exception as exc:
            kind = classify(exc)
            if kind is None:
                raise
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # DETAIL lines carry values
            raise kind(f"{name} failed in the {_part(method)} ({method.__name__}): {first_line}") from exc

    return call


def refused_or_down(refused: tuple[type[BaseException], ...], down: tuple[type[BaseException], ...],
                    passed: tuple[type[BaseException], ...] = ()) -> Classify:
    """A ``classify`` for a driver: ``refused`` errors are the input's fault, ``down`` ones the database's, and
    ``passed`` ones (a lost race the caller retries) go through unchanged, as does anything else."""

    def classify(exc: BaseException) -> type[StorageError] | None:
        if isinstance(exc, passed):
            return None
        if isinstance(exc, refused):
            return StorageDataError
        if isinstance(exc, down):
            return StorageError
        return None

    return classify


def _part(method: Callable[..., Any]) -> str:
    owner = method.__qualname__.split(".")[0]
    return "write model" if "WriteModel" in owner else "read views"
