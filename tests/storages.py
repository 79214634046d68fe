"""The storage backends tests run on, by name: each opened fresh and closed (a PostgreSQL schema dropped) after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from mediator.readmodels import RoutedStorage, Storage
from mediator.readmodels.memory import MemoryStorage
from mediator.readmodels.sqlite import SqliteStorage
from tests import postgres, redis_server

KINDS = ("memory", "sqlite", "sqlite-two-files", "postgres", "sqlite+redis")
"""``sqlite+redis``: the log in SQLite and the ``balances`` projection's read models in Redis (a RoutedStorage)."""


@contextlib.contextmanager
def opened(kind: str, folder: Path) -> Iterator[Storage]:
    """A fresh storage of ``kind`` (files in ``folder``); PostgreSQL skips, or in CI fails, when absent."""
    backend: Storage
    drop_schema = empty_first = None
    if kind == "memory":
        backend = MemoryStorage()
    elif kind == "sqlite":
        backend = SqliteStorage(folder / "app.db")
    elif kind == "sqlite-two-files":
        backend = SqliteStorage(folder / "write.db", folder / "read.db")
    elif kind == "sqlite+redis":
        redis_server.require()
        from mediator.readmodels.redis import RedisReadStore

        redis = RedisReadStore(redis_server.URL, prefix=redis_server.new_prefix())
        backend = RoutedStorage(SqliteStorage(folder / "app.db"), {"balances": redis})
        empty_first = redis.drop_all
    else:
        postgres.require()
        from mediator.readmodels.postgres import PostgresStorage

        backend = on_postgres = PostgresStorage(postgres.DSN, schema=postgres.new_schema())
        drop_schema = on_postgres.drop_schema
    try:
        yield backend
    finally:
        if empty_first is not None:  # its keys go before its connections close
            empty_first()
        backend.close()
        if drop_schema is not None:
            drop_schema()


@contextlib.contextmanager
def shared_by_processes(kind: str, folder: Path, **environ: str) -> Iterator[tuple[dict[str, str], Storage]]:
    """A fresh SQLite file or PostgreSQL schema (``kind``), open here, and the environment that opens the same in
    a child process of ``tests.readmodels.bank_app`` (``BANK_DB``, or ``BANK_POSTGRES`` and ``BANK_SCHEMA``), with
    ``environ`` over it; closed (the schema dropped) after."""
    import os

    base = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **environ}
    storage: Storage
    if kind == "sqlite":
        db = folder / "bank.db"
        storage = SqliteStorage(db)
        env = {**base, "BANK_DB": str(db)}
    else:
        postgres.require()
        from mediator.readmodels.postgres import PostgresStorage

        schema = postgres.new_schema()
        storage = on_postgres = PostgresStorage(postgres.DSN, schema=schema)
        env = {**base, "BANK_POSTGRES": postgres.DSN, "BANK_SCHEMA": schema}
    try:
        yield env, storage
    finally:
        storage.close()
        if kind != "sqlite":
            on_postgres.drop_schema()
