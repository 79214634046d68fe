"""Whether a storage may create its database: a tool that only looks must never create one a typo named.

An application constructs its own storage (``SqliteStorage(path)`` at import time, or in a factory), so a tool
that loads the application cannot pass it a flag. It loads and runs the application inside
:func:`existing_only` instead, and the SQL storages look at :func:`may_create` where they would create the
file, the schema or the tables: outside the block they create them (a service's first start sets up its
database), inside it they raise :class:`~mediator.readmodels._errors.DatabaseNotFoundError`.

``python -m mediator.readmodels`` runs every command but ``worker`` inside :func:`existing_only`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_may_create: ContextVar[bool] = ContextVar("mediator.readmodels.may_create", default=True)


@contextlib.contextmanager
def existing_only() -> Iterator[None]:
    """Have storages opened in the block refuse to create their database or its tables.

    A context variable, so it holds for this thread (and the tasks it starts), not for threads started inside.

    >>> import pathlib, tempfile
    >>> from mediator.readmodels.sqlite import SqliteStorage
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "typo.db"
    >>> with existing_only():  # doctest: +ELLIPSIS
    ...     SqliteStorage(path)
    Traceback (most recent call last):
    ...
    mediator.readmodels.DatabaseNotFoundError: SQLite database '...typo.db' does not exist, ...
    >>> path.exists()
    False
    """
    token = _may_create.set(False)
    try:
        yield
    finally:
        _may_create.reset(token)


def may_create() -> bool:
    """Whether a storage opened now may create its database and tables (``False`` inside :func:`existing_only`)."""
    return _may_create.get()
